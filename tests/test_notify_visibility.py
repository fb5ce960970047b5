"""Defence in depth in the notifier: an event goes to a subscription only when the subscriber's trust may
see its focus, whatever the subscription's criteria say; ``$events`` never shows a trust another trust's
events.

Real traffic: an HL7v2 referral from Wirral (RBL) through intake and the mapper into the real store; a
subscription of Bolton (RJR) is planted with criteria that match RBL's referrals (as a damaged or
hand-edited subscription document would be: the API refuses to create one); the notifier runs against
real aiohttp receivers on loopback.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from receivers import loopback_settings, receiving, subscribe_rest_hook
from trusts import client_as

from services.intake.service import IntakeService
from services.mapper.service import MapperService
from services.mapper.worker import WorkerConfig
from services.notifier.http import client_session
from services.notifier.service import NotifierService
from shared.settings import Settings
from shared.store import Store

REFERRAL = "\r".join(
    [
        "MSH|^~\\&|ICE|RBL|MSCC-HUB|REN|20261125093000||REF^I12^REF_I12|RBL-VIS-1|P|2.5",
        "RF1|A|S^Urgent|ONC^Oncology||R|700001^ICE|20261125090000",
        "PRD|RP|OKAFOR^ADAEZE^^^Dr||||^WPN^PH^^^0151^6785432|||||^^^^^^^^^RBL",
        "PID|1||X700001^^^PAS^MR~9449305552^^^NHS^NH||JONES^DAVID||19561104|M",
        "PV1|1|I|Ward 5^^^RBL||||C3344^Patel^Ravi^^^Dr",
    ]
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return loopback_settings(settings, notifier_timeout_s=2.0)


async def subscribe(http: httpx.AsyncClient, settings: Settings, url: str) -> str:
    return await subscribe_rest_hook(http, settings, url, reason="Acute Oncology")


async def referred(http: httpx.AsyncClient, store: Store) -> str:
    """Send RBL's referral and map it; the id of the referral ServiceRequest."""
    answer = await http.post(
        "/hl7v2", content=REFERRAL.encode() + b"\r", headers={"Content-Type": "application/hl7-v2"}
    )
    assert "MSA|AA" in answer.text, answer.text
    await MapperService(store, WorkerConfig()).run(asyncio.Event(), burst=True)
    [referral] = [d async for d in store.resources.find({"type": "ServiceRequest"})]
    assert referral["trusts"] == ["RBL"]
    return str(referral["id"])


async def notify(store: Store, settings: Settings) -> NotifierService:
    async with client_session(settings) as session:
        notifier = NotifierService(store, settings, session)
        await notifier.run(asyncio.Event(), burst=True)
    return notifier


async def test_a_subscription_of_another_trust_gets_nothing_even_when_its_criteria_match(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    store, settings = intake.store, intake.settings
    async with receiving() as rbl, receiving() as rjr:
        mine = await subscribe(http, settings, rbl.url)
        planted = await subscribe(http, settings, rjr.url)
        # Planted: RJR's subscription whose criteria name RBL's referrals (the API refuses to create it).
        await store.subscriptions.update_one({"_id": planted}, {"$set": {"trust": "RJR"}})
        referral_id = await referred(http, store)
        notifier = await notify(store, settings)

    assert rbl.kinds.count("event-notification") == 1 and referral_id in rbl.ids()  # RBL's own: delivered
    assert "event-notification" not in rjr.kinds and referral_id not in rjr.ids()
    assert await store.deliveries.count_documents({"subscription_id": planted}) == 0
    assert await store.deliveries.count_documents({"subscription_id": mine}) == 1
    planted_doc = await store.subscriptions.find_one({"_id": planted})
    assert planted_doc is not None and planted_doc["events_since_start"] == 0  # never numbered either
    assert notifier.fanout.withheld == 1


async def test_events_never_lists_an_event_the_subscriptions_trust_may_not_see(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    store, settings = intake.store, intake.settings
    async with receiving() as rbl, receiving() as rjr:
        mine = await subscribe(http, settings, rbl.url)
        planted = await subscribe(http, settings, rjr.url)
        referral_id = await referred(http, store)
        await notify(store, settings)
    # A delivery of RBL's referral recorded for RJR's subscription (as one written before the rule, or
    # a subscription moved to another trust, would be).
    [delivered] = [d async for d in store.deliveries.find({"subscription_id": mine})]
    copy = {**delivered, "_id": f"{planted}:{delivered['event']['outbox_id']}", "subscription_id": planted}
    await store.deliveries.delete_many({"subscription_id": planted})
    await store.deliveries.insert_one(copy)
    await store.subscriptions.update_one({"_id": planted}, {"$set": {"trust": "RJR", "events_since_start": 1}})

    def events(answer: httpx.Response) -> list[Any]:
        assert answer.status_code == 200, answer.text
        [status] = [e["resource"] for e in answer.json()["entry"][:1]]
        return [p for p in status["parameter"] if p["name"] == "notification-event"]

    async with client_as(http, "RJR", ["system/Subscription.rs"]) as rjr:
        for content in ("id-only", "full-resource"):
            own = await http.get(f"/fhir/Subscription/{mine}/$events", params={"content": content})
            assert len(events(own)) == 1 and referral_id in own.text
            other = await rjr.get(f"/fhir/Subscription/{planted}/$events", params={"content": content})
            assert events(other) == [] and referral_id not in other.text
            # The MSCC team sees every event: what was recorded for RJR's subscription is there to find.
            seen = await http.get(f"/fhir/Subscription/{planted}/$events", params={"content": content})
            assert len(events(seen)) == 1 and referral_id in seen.text
