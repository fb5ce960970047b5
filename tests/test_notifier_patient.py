"""The patient in HL7v2 notifications (RRI^I12 PID-3): filed by the receiving engine, or not sent.

A real MLLP receiver on a loopback socket, the real mapper and notifier against a real mongod.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import httpx
import pytest
from receivers import (
    RBL_REFERRALS,
    ack,
    answer_frames,
    loopback_settings,
    message_channel,
    serve_tcp,
    subscription_body,
)

from services.intake.service import IntakeService
from services.mapper.service import MapperService
from services.notifier.channels.rri import PatientNumber, patient_numbers
from services.notifier.service import NotifierService
from services.notifier.subscriptions import SubscriptionService
from shared.auth import Caller
from shared.nhs import INVALID_NHS_NUMBER_SYSTEM, NHS_NUMBER_SYSTEM, ODS_ORGANIZATION_SYSTEM
from shared.settings import Settings
from shared.store import Store

RBL = Caller("aos-rbl", "RBL")
NHS = "9449305552"


class MllpReceiver:
    """An Acute Oncology engine: keeps every message and answers AA."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_frames(reader, writer, self._answer)

    async def _answer(self, message: bytes) -> str:
        text = message.decode()
        self.messages.append(text)
        return ack(text)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings, with the loopback receiver allowed."""
    return loopback_settings(settings, http=False, notifier_timeout_s=2.0)


@pytest.fixture
async def mllp_receiver() -> AsyncIterator[MllpReceiver]:
    receiver = MllpReceiver()
    async with serve_tcp(receiver.serve) as port:
        receiver.port = port
        yield receiver


async def subscribe_mllp(store: Store, settings: Settings, port: int) -> str:
    channel = message_channel(settings, f"mllp://127.0.0.1:{port}", header=["MSH-5: AOS", "MSH-6: RBL"])
    reason = "Acute Oncology updates for Wirral"
    body = subscription_body(settings, channel, topic="referral-status", reason=reason, filters=[RBL_REFERRALS])
    written = await SubscriptionService(store, settings, lambda: datetime.now(UTC)).create(body, RBL)
    return str(written.resource["id"])


def pid_3(message: str) -> str:
    pid = next(s for s in message.split("\r") if s.startswith("PID|"))
    return pid.split("|")[3]


async def test_rri_from_a_fhir_referral_carries_the_nhs_number_in_pid_3(
    http: httpx.AsyncClient, intake: IntakeService, session: aiohttp.ClientSession, mllp_receiver: MllpReceiver
) -> None:
    store, settings = intake.store, intake.settings
    await subscribe_mllp(store, settings, mllp_receiver.port)
    referral = {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "https://fhir.wirral.nhs.uk/Id/mscc-referral", "value": "WUTH-MSCC-000501"}],
        "status": "active",
        "intent": "order",
        "priority": "urgent",
        "subject": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": NHS}},
        "contained": [
            {
                "resourceType": "PractitionerRole",
                "id": "aos",
                "organization": {"identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": "RBL"}},
                "code": [{"text": "Acute oncology CNS"}],
            }
        ],
        "requester": {"reference": "#aos"},
        "authoredOn": "2026-11-25T21:40:00+00:00",
    }
    created = await http.post(
        "/fhir/ServiceRequest", content=json.dumps(referral), headers={"Content-Type": "application/fhir+json"}
    )
    assert created.status_code == 201, created.text
    await MapperService(store).run(asyncio.Event(), burst=True)
    await NotifierService(store, settings, session).run(asyncio.Event(), burst=True)
    assert mllp_receiver.messages, "no RRI^I12 was sent"
    for message in mllp_receiver.messages:
        assert pid_3(message).split("~")[0] == f"{NHS}^^^NHS^NH"
        assert "^^^^PI" not in message
    async for delivery in store.deliveries.find({}):
        assert delivery["status"] == "delivered", delivery


def test_pid_3_holds_the_nhs_number_and_only_the_receiving_trusts_own_numbers() -> None:
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [
            {
                "system": "urn:mscc:id:RJR:PAS",
                "value": "X100234",
                "type": {"coding": [{"code": "MR"}]},
            },
            {"system": INVALID_NHS_NUMBER_SYSTEM, "value": "9449305553"},
            {
                "system": "urn:mscc:id:RBL:PAS",
                "value": "RBL4471203",
                "type": {"coding": [{"code": "MR"}]},
            },
            {"system": NHS_NUMBER_SYSTEM, "value": NHS},
        ],
    }
    assert patient_numbers(patient, None, "RBL") == [
        PatientNumber(NHS, "NHS", "NH"),
        PatientNumber("RBL4471203", "PAS", "MR"),
    ]
    # Another trust's number (the same "PAS" namespace) never goes to RBL; RJR gets its own.
    assert PatientNumber("X100234", "PAS", "MR") in patient_numbers(patient, None, "RJR")
    # Without a stored Patient, a subject given by NHS number still names the patient.
    focus = {"subject": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": NHS}}}
    assert patient_numbers(None, focus, "RBL") == [PatientNumber(NHS, "NHS", "NH")]


async def test_a_patient_without_any_fileable_identifier_is_not_sent_and_the_delivery_says_why(
    store: Store, settings: Settings, session: aiohttp.ClientSession, mllp_receiver: MllpReceiver
) -> None:
    sub_id = await subscribe_mllp(store, settings, mllp_receiver.port)
    now = datetime.now(UTC)
    patient = {
        "resourceType": "Patient",
        "id": "p-unknown",
        "meta": {"versionId": "1"},
        "identifier": [{"system": INVALID_NHS_NUMBER_SYSTEM, "value": "123"}],
        "name": [{"family": "UNKNOWN", "given": ["MALE"]}],
    }
    request = {
        "resourceType": "ServiceRequest",
        "id": "sr-unknown",
        "meta": {"versionId": "1"},
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p-unknown"},
        "requester": {"identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": "RBL"}},
    }
    for resource in (patient, request):
        key = f"{resource['resourceType']}/{resource['id']}"
        doc = {"type": resource["resourceType"], "id": resource["id"], "version": 1, "last_updated": now}
        visible = {"resource": resource, "trusts": ["RBL"]}
        await store.history.insert_one({"_id": f"{key}/_history/1", **doc, **visible})
        await store.resources.insert_one({"_id": key, **doc, **visible})
        await store.outbox.insert_one(
            {
                "_id": f"{key}/_history/1",
                **doc,
                "kind": "created",
                "created_at": now,
                "message_id": None,
                "status": "ready",
            }
        )
    await NotifierService(store, settings, session).run(asyncio.Event(), burst=True)
    assert mllp_receiver.messages == []
    [delivery] = [d async for d in store.deliveries.find({"subscription_id": sub_id})]
    assert delivery["status"] == "dead"
    assert "PID-3" in delivery["last_error"] and "no valid NHS number" in delivery["last_error"]
