"""One outbox event the fan-out cannot dispatch never holds up the others' notifications.

Real traffic: HL7v2 referrals from Wirral (RBL) through intake and the mapper into the real store, a
poisonous outbox event planted between them (a focus version of a shape no topic can read, as a damaged
or hand-edited history document would be), and the notifier running against a real aiohttp receiver.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from receivers import Receiver, loopback_settings, receiving, subscribe_rest_hook

from services.intake.service import IntakeService
from services.mapper.service import MapperService
from services.mapper.worker import WorkerConfig
from services.notifier.fanout import DEAD, FAILED
from services.notifier.http import client_session
from services.notifier.service import NotifierService
from shared.settings import Settings
from shared.store import Store
from shared.supervision import TaskRegistry


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return loopback_settings(
        settings, notifier_timeout_s=2.0, notifier_fanout_max_attempts=3, notifier_fanout_retry_s=0.05
    )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as rec:
        yield rec


async def subscribe(http: httpx.AsyncClient, settings: Settings, url: str) -> None:
    await subscribe_rest_hook(http, settings, url, reason="Wirral Acute Oncology: referral status")


def referral(control: str, referral_number: str, hospital_number: str, nhs_number: str, name: str) -> str:
    segments = [
        f"MSH|^~\\&|ICE|RBL|MSCC-HUB|REN|20261125093000||REF^I12^REF_I12|{control}|P|2.5",
        f"RF1|A|S^Urgent|ONC^Oncology||R|{referral_number}^ICE|20261125090000",
        "PRD|RP|OKAFOR^ADAEZE^^^Dr||||^WPN^PH^^^0151^6785432|||||^^^^^^^^^RBL",
        f"PID|1||{hospital_number}^^^PAS^MR~{nhs_number}^^^NHS^NH||{name}||19561104|M",
        "PV1|1|I|Ward 5^^^RBL||||C3344^Patel^Ravi^^^Dr",
        "OBX|1|TX|MSCC-NEURO^Neurological status||can't weight bear since yesterday, legs heavy||||||F",
    ]
    return "\r".join(segments) + "\r"


async def send_and_map(http: httpx.AsyncClient, intake: IntakeService, message: str) -> None:
    answer = await http.post("/hl7v2", content=message, headers={"Content-Type": "application/hl7-v2"})
    assert "MSA|AA" in answer.text, answer.text
    await MapperService(intake.store, WorkerConfig()).run(asyncio.Event(), burst=True)


async def plant_unreadable_update(store: Store, resource_id: str, *, created_at: datetime) -> str:
    """An update event whose focus version is not a resource (a list): every topic that compares it
    with the version before fails on it. Version 1 was announced already (dispatched)."""
    key = f"ServiceRequest/{resource_id}"
    first = {"resourceType": "ServiceRequest", "id": resource_id, "status": "active", "intent": "order"}
    await store.history.insert_many(
        [
            {"_id": f"{key}/_history/1", "type": "ServiceRequest", "id": resource_id, "version": 1, "resource": first},
            {"_id": f"{key}/_history/2", "type": "ServiceRequest", "id": resource_id, "version": 2, "resource": ["?"]},
        ]
    )
    base = {"type": "ServiceRequest", "id": resource_id, "created_at": created_at}
    await store.outbox.insert_many(
        [
            {**base, "_id": f"{key}/_history/1", "version": 1, "kind": "created", "status": "dispatched"},
            {**base, "_id": f"{key}/_history/2", "version": 2, "kind": "updated", "status": "ready"},
        ]
    )
    return f"{key}/_history/2"


async def wait_for(check: Any) -> None:
    for _ in range(400):  # 20 s
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def test_a_poisonous_outbox_event_is_dead_lettered_and_the_others_are_delivered_in_order(
    http: httpx.AsyncClient, intake: IntakeService, receiver: Receiver
) -> None:
    store, settings = intake.store, intake.settings
    await subscribe(http, settings, receiver.url)
    await send_and_map(http, intake, referral("RBL-7001", "500001", "X100234", "9449305552", "JONES^DAVID"))
    poison = await plant_unreadable_update(store, "damaged", created_at=datetime.now(UTC))
    await send_and_map(http, intake, referral("RBL-7002", "500002", "X100777", "9434765919", "ROBERTS^ALAN"))

    registry, stop = TaskRegistry(), asyncio.Event()
    async with client_session(settings) as session:
        notifier = NotifierService(store, settings, session, idle_poll_s=0.02)
        running = asyncio.create_task(notifier.run(stop, registry=registry))
        try:

            async def settled() -> bool:
                doc = await store.outbox.find_one({"_id": poison})
                return len(receiver.focus()) >= 2 and doc is not None and doc["status"] == DEAD

            await wait_for(settled)
            # The loop is still running and healthy: the poison did not stall the fan-out.
            report = registry.report()["notifier-fanout"]
            assert report["healthy"] and report["state"] == "running"
            cycles = report["cycles"]
            await send_and_map(http, intake, referral("RBL-7003", "500003", "X100999", "9000000009", "HUGHES^PAT"))

            async def third() -> bool:
                return len(receiver.focus()) >= 3

            await wait_for(third)
            assert registry.report()["notifier-fanout"]["cycles"] > cycles
        finally:
            stop.set()
            await asyncio.wait_for(running, 10)

    assert len(receiver.focus()) == 3
    for focus, number in zip(receiver.focus(), ["500001", "500002", "500003"], strict=True):
        assert number in json.dumps(focus["identifier"])
    doc = await store.outbox.find_one({"_id": poison})
    assert doc is not None
    assert doc["fanout"]["attempts"] == settings.notifier_fanout_max_attempts
    assert "AttributeError" in doc["fanout"]["error"]
    [found] = doc["fanout"]["outcome"]["issue"]
    assert found["severity"] == "error" and "dead-lettered" in found["diagnostics"]
    assert not await store.deliveries.find_one({"event.outbox_id": poison})


async def test_a_failed_event_is_retried_and_later_versions_of_its_resource_wait_behind_it(
    http: httpx.AsyncClient, intake: IntakeService, receiver: Receiver
) -> None:
    """Version 2 fails, version 3 of the same referral waits (still "ready"); another referral's event
    is delivered meanwhile. Once version 2 can be read again (repaired), 2 then 3 are delivered, in order."""
    store = intake.store
    settings = intake.settings.model_copy(update={"notifier_fanout_retry_s": 2.0})
    await subscribe(http, settings, receiver.url)
    poison = await plant_unreadable_update(store, "held", created_at=datetime.now(UTC))
    key = "ServiceRequest/held"
    third = {"resourceType": "ServiceRequest", "id": "held", "status": "revoked", "intent": "order"}
    await store.history.insert_one(
        {"_id": f"{key}/_history/3", "type": "ServiceRequest", "id": "held", "version": 3, "resource": third}
    )
    await store.outbox.insert_one(
        {
            "_id": f"{key}/_history/3",
            "type": "ServiceRequest",
            "id": "held",
            "version": 3,
            "kind": "updated",
            "created_at": datetime.now(UTC),
            "status": "ready",
        }
    )
    # The held referral names RBL from version 2 on (and RBL may see it), so the subscription's filter
    # passes both versions.
    requester = {
        "type": "Organization",
        "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RBL"},
    }
    await store.history.update_one(
        {"_id": f"{key}/_history/3"}, {"$set": {"resource.requester": requester, "trusts": ["RBL"]}}
    )
    await send_and_map(http, intake, referral("RBL-7101", "500101", "X200001", "9449305552", "JONES^DAVID"))

    async with client_session(settings) as session:
        notifier = NotifierService(store, settings, session)
        await notifier.run(asyncio.Event(), burst=True)
        first = await store.outbox.find_one({"_id": poison})
        assert first is not None and first["status"] == FAILED and first["fanout"]["attempts"] >= 1
        assert first["fanout"]["outcome"]["issue"][0]["severity"] == "warning"
        later = await store.outbox.find_one({"_id": f"{key}/_history/3"})
        assert later is not None and later["status"] == "ready"
        assert [f["id"] for f in receiver.focus() if f["id"] == "held"] == []
        assert len(receiver.focus()) == 1  # the other referral was not held up

        second = {
            "resourceType": "ServiceRequest",
            "id": "held",
            "status": "on-hold",
            "intent": "order",
            "requester": requester,
        }
        await store.history.update_one({"_id": poison}, {"$set": {"resource": second, "trusts": ["RBL"]}})
        await asyncio.sleep(settings.notifier_fanout_retry_s + 0.2)
        await notifier.run(asyncio.Event(), burst=True)

    assert [(f["id"], f["status"]) for f in receiver.focus() if f["id"] == "held"] == [
        ("held", "on-hold"),
        ("held", "revoked"),
    ]
    assert (await store.outbox.find_one({"_id": poison}) or {})["status"] == "dispatched"
