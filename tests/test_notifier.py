"""The notifier against the real store, real aiohttp receivers and a real MLLP receiver on loopback.

Retries are driven by a controlled clock (the worker's schedule), never by sleeping; attempt timeouts are
a fraction of a second. Receivers are scripted: each event notification takes the next answer of the
plan (a status, (429, "Retry-After"), "hang", "close"), then the default.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from fhir.resources.R4B.bundle import Bundle
from pymongo import AsyncMongoClient
from receivers import ack, answer_frames, message_channel, rest_hook_channel, serve_http, serve_tcp, subscription_body

from services.intake.service import IntakeService
from services.mapper.service import MapperService
from services.mapper.worker import WorkerConfig
from services.notifier.channels.rri import control_id
from services.notifier.fanout import FanOut
from services.notifier.http import client_session
from services.notifier.model import Delivery
from services.notifier.notification import notification_event
from services.notifier.service import NotifierService
from services.notifier.signing import verify
from services.notifier.subscriptions import SubscriptionService
from services.notifier.topics import topic_url
from shared.auth import Caller
from shared.er7 import parse_message
from shared.settings import Settings
from shared.store import Document, Store

RBL = Caller("aos-rbl", "RBL")
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
NHS = "https://fhir.nhs.uk/Id/nhs-number"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings, with loopback http receivers allowed and retries quick enough to test."""
    return settings.model_copy(
        update=dict(
            notifier_allowed_hosts=["127.0.0.1"],
            notifier_allow_http=True,
            notifier_timeout_s=1.0,  # long enough for a loaded machine; the hang tests wait this long
            notifier_max_attempts=4,
            notifier_backoff_base_s=1.0,
            notifier_backoff_max_s=60.0,
            notifier_max_age_s=3600.0,
        )
    )


class Clock:
    """The notifier's clock: tests move it to make retries due."""

    def __init__(self) -> None:
        now = datetime.now(UTC)
        self.now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # MongoDB keeps milliseconds

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


# ---------------------------------------------------------------------------------------------------
# Receivers
# ---------------------------------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def bundle(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    def param(self, name: str) -> Any:
        for item in self.bundle["entry"][0]["resource"]["parameter"]:
            if item["name"] == name:
                return item
        return None

    @property
    def kind(self) -> str:
        return str(self.param("type")["valueCode"])

    @property
    def number(self) -> int:
        parts = {p["name"]: p for p in self.param("notification-event")["part"]}
        return int(parts["event-number"]["valueString"])


@dataclass
class Receiver:
    """A rest-hook receiver: aiohttp.web on 127.0.0.1, a free port."""

    plan: list[Any] = field(default_factory=list)
    default: Any = 200
    handshake: int = 200
    requests: list[Received] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)  # event numbers answered 2xx, in order
    release: asyncio.Event = field(default_factory=asyncio.Event)
    seen: asyncio.Event = field(default_factory=asyncio.Event)  # set at every request
    delivered: asyncio.Event = field(default_factory=asyncio.Event)  # set at every 2xx to an event
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        got = Received(dict(request.headers), await request.read())
        self.requests.append(got)
        self.seen.set()
        if got.kind != "event-notification":
            return web.Response(status=self.handshake)
        action = self.plan.pop(0) if self.plan else self.default
        if action == "hang":
            await self.release.wait()
            return web.Response(status=200)
        if action == "close":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=200)  # never written: the connection is gone
        status, retry_after = action if isinstance(action, tuple) else (action, None)
        if 200 <= status < 300:
            self.answered.append(got.number)
            self.delivered.set()
        headers = {"Retry-After": retry_after} if retry_after else {}
        return web.Response(status=status, text=f"answer {status}", headers=headers)

    def notifications(self) -> list[Received]:
        return [r for r in self.requests if r.kind == "event-notification"]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    async with serve_http(rec.handle) as base:
        rec.url = f"{base}/hook"
        yield rec
        rec.release.set()  # a handler still hanging must answer before the server can stop


@dataclass
class MllpReceiver:
    """An HL7v2 receiver over MLLP: answers each message with the next ACK code of the plan
    ("AA", "AE", "AR"), or "silent" (no answer), then the default."""

    plan: list[str] = field(default_factory=list)
    default: str = "AA"
    messages: list[bytes] = field(default_factory=list)
    port: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_frames(reader, writer, self._answer)

    async def _answer(self, message: bytes) -> str | None:
        self.messages.append(message)
        code = self.plan.pop(0) if self.plan else self.default
        if code == "silent":
            return None
        text = "PID-3 NHS number not recognised" if code != "AA" else ""
        return ack(message.decode(), code, f"A{len(self.messages)}", text)


@pytest.fixture
async def mllp_receiver() -> AsyncIterator[MllpReceiver]:
    rec = MllpReceiver()
    async with serve_tcp(rec.serve) as port:
        rec.port = port
        yield rec


# ---------------------------------------------------------------------------------------------------
# Subscriptions, changes and the notifier
# ---------------------------------------------------------------------------------------------------


def subscription(
    settings: Settings,
    endpoint: str,
    *,
    topic: str = "referral-status",
    trust: str = "RBL",
    content: str | None = "id-only",
    filters: list[str] | None = None,
) -> dict[str, Any]:
    channel = (
        rest_hook_channel(endpoint, content) if content is not None else {"type": "rest-hook", "endpoint": endpoint}
    )
    criteria = [f"ServiceRequest?requester=Organization/{trust}", *(filters or [])]
    return subscription_body(settings, channel, topic=topic, reason="Acute Oncology updates", filters=criteria)


def mllp_subscription(settings: Settings, port: int) -> dict[str, Any]:
    sub = subscription(settings, "", content=None)
    sub["channel"] = message_channel(settings, f"mllp://127.0.0.1:{port}", header=["MSH-5: AOS", "MSH-6: RBL"])
    return sub


async def subscribe(store: Store, settings: Settings, clock: Clock, body: dict[str, Any]) -> tuple[str, str]:
    written = await SubscriptionService(store, settings, clock).create(body, RBL)
    assert written.secret is not None
    return str(written.resource["id"]), written.secret


def referral(rid: str, version: int, status: str = "active", requester: str = "RBL", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": rid,
        "meta": {"versionId": str(version)},
        "status": status,
        "intent": "order",
        "subject": {"reference": extra.pop("subject", "Patient/p1")},
        "requester": {"identifier": {"system": ODS, "value": requester}},
        **extra,
    }


async def change(store: Store, clock: Clock, resource: dict[str, Any], kind: str | None = None, **event: Any) -> str:
    """Store a version of ``resource`` and its outbox event, as the mapper's writer does: visible to the
    trust of its requester (RBL when it names none), as the writer's ``trusts`` would make it."""
    rtype, rid, version = resource["resourceType"], resource["id"], int(resource["meta"]["versionId"])
    key, now = f"{rtype}/{rid}", clock()
    trust = ((resource.get("requester") or {}).get("identifier") or {}).get("value", "RBL")
    doc = {"type": rtype, "id": rid, "version": version, "last_updated": now, "resource": resource, "trusts": [trust]}
    await store.history.insert_one({"_id": f"{key}/_history/{version}", **doc})
    await store.resources.replace_one({"_id": key}, {"_id": key, **doc}, upsert=True)
    outbox_id = str(event.pop("_id", f"{key}/_history/{version}"))
    await store.outbox.insert_one(
        {
            "_id": outbox_id,
            "type": rtype,
            "id": rid,
            "version": version,
            "kind": kind or ("created" if version == 1 else "updated"),
            "created_at": now,
            "message_id": None,
            "status": "ready",
            **event,
        }
    )
    return outbox_id


def notifier(store: Store, settings: Settings, session: aiohttp.ClientSession, clock: Clock) -> NotifierService:
    return NotifierService(store, settings, session, clock=clock, rng=random.Random(7))


async def burst(service: NotifierService) -> None:
    await service.run(asyncio.Event(), burst=True)


async def deliveries(store: Store, sub_id: str) -> list[Document]:
    return [d async for d in store.deliveries.find({"subscription_id": sub_id}).sort("event_number", 1)]


# ---------------------------------------------------------------------------------------------------
# Rest-hook
# ---------------------------------------------------------------------------------------------------


async def test_events_arrive_in_order_signed_and_shaped_as_the_backport_says(
    store: Store, settings: Settings, session: aiohttp.ClientSession, clock: Clock, receiver: Receiver
) -> None:
    sub_id, secret = await subscribe(
        store, settings, clock, subscription(settings, receiver.url, content="full-resource")
    )
    await change(store, clock, referral("sr1", 1))
    await change(store, clock, referral("sr2", 1))
    await change(store, clock, referral("sr1", 2, status="completed"))
    await burst(notifier(store, settings, session, clock))

    assert receiver.requests[0].kind == "handshake"
    sent = receiver.notifications()
    assert [r.number for r in sent] == [1, 2, 3]
    expected = [("sr1", 1, "active"), ("sr2", 1, "active"), ("sr1", 2, "completed")]
    for got, (rid, version, status) in zip(sent, expected, strict=True):
        assert verify(got.body, secret, got.headers["X-Signature"])
        assert not verify(got.body + b" ", secret, got.headers["X-Signature"])
        assert got.headers["X-Event-Id"] == f"{sub_id}:{got.number}"
        assert got.headers["Content-Type"].startswith("application/fhir+json")
        Bundle.model_validate(got.bundle)
        bundle = got.bundle
        assert bundle["type"] == "history"
        status_entry, focus_entry = bundle["entry"]
        assert status_entry["request"] == {"method": "GET", "url": f"Subscription/{sub_id}/$status"}
        assert status_entry["response"]["status"] == "200"
        assert got.param("subscription")["valueReference"]["reference"].endswith(f"/fhir/Subscription/{sub_id}")
        assert got.param("topic")["valueCanonical"] == topic_url(settings.base_url, "referral-status")
        assert got.param("status")["valueCode"] == "active"
        assert int(got.param("events-since-subscription-start")["valueString"]) == 3
        parts = {p["name"]: p for p in got.param("notification-event")["part"]}
        assert parts["focus"]["valueReference"]["reference"].endswith(f"/ServiceRequest/{rid}/_history/{version}")
        assert parts["timestamp"]["valueInstant"].endswith("Z")
        assert focus_entry["fullUrl"].endswith(f"/fhir/ServiceRequest/{rid}")
        assert focus_entry["resource"]["meta"]["versionId"] == str(version)  # the version of the event
        assert focus_entry["resource"]["status"] == status
    assert [d["status"] for d in await deliveries(store, sub_id)] == ["delivered"] * 3
    doc = await store.subscriptions.find_one({"_id": sub_id})
    assert doc is not None and doc["status"] == "active" and doc["last_delivery"]["event_number"] == 3
    assert await store.outbox.count_documents({"status": "dispatched"}) == 3


async def test_empty_and_id_only_payloads(
    store: Store, settings: Settings, session: aiohttp.ClientSession, clock: Clock, receiver: Receiver
) -> None:
    await subscribe(store, settings, clock, subscription(settings, receiver.url, content="empty"))
    await subscribe(store, settings, clock, subscription(settings, receiver.url, content="id-only"))
    await change(store, clock, referral("sr1", 1))
    await burst(notifier(store, settings, session, clock))
    by_content = {len(r.bundle["entry"]): r for r in receiver.notifications()}
    empty, id_only = by_content[1], by_content[2]
    for got in (empty, id_only):
        Bundle.model_validate(got.bundle)
    assert [p["name"] for p in empty.param("notification-event")["part"]] == ["event-number", "timestamp"]
    entry = id_only.bundle["entry"][1]
    assert entry["fullUrl"].endswith("/fhir/ServiceRequest/sr1") and "resource" not in entry
    assert entry["request"] == {"method": "POST", "url": "ServiceRequest"}


async def test_a_receiver_failing_twice_gets_every_event_in_order(
    store: Store, settings: Settings, session: aiohttp.ClientSession, clock: Clock, receiver: Receiver
) -> None:
    sub_id, _ = await subscribe(store, settings, clock, subscription(settings, receiver.url))
    receiver.plan = [500, 500]
    await change(store, clock, referral("sr1", 1))
    await change(store, clock, referral("sr2", 1))
    service = notifier(store, settings, session, clock)
    await burst(service)
    first = (await deliveries(store, sub_id))[0]
    assert first["attempt_count"] == 1 and first["status"] == "pending"
    delay = (first["next_attempt_at"] - clock.now).total_seconds()
    assert 0.5 <= delay <= 1.0  # base 1 s, jitter 0.5-1
    await burst(service)  # not due yet: nothing is sent, event 2 waits behind event 1
    assert [r.number for r in receiver.notifications()] == [1]
    clock.advance(1.0)
    await burst(service)
    clock.advance(2.0)
    await burst(service)
    assert [r.number for r in receiver.notifications()] == [1, 1, 1, 2]
    assert receiver.answered == [1, 2]
    one, two = await deliveries(store, sub_id)
    assert [a["code"] for a in one["attempts"]] == ["500", "500", "200"]
    assert "HTTP 500" in one["attempts"][0]["error"] and one["attempts"][0]["latency_ms"] > 0
    assert one["status"] == two["status"] == "delivered"


async def test_429_retry_after_is_honoured(
    store: Store, settings: Settings, session: aiohttp.ClientSession, clock: Clock, receiver: Receiver
) -> None:
    sub_id, _ = await subscribe(store, settings, clock, subscription(settings, receiver.url))
    receiver.plan = [(429, "7")]
    await change(store, clock, referral("sr1", 1))
    service = notifier(store, settings, session, clock)
    await burst(service)
    [pending] = await deliveries(store, sub_id)
    assert pending["next_attempt_at"] == clock.now + timedelta(seconds=7)
    assert pending["attempts"][0]["retry_after_s"] == 7
    clock.advance(6)
    await burst(service)
    assert len(receiver.notifications()) == 1
    clock.advance(1)
    await burst(service)
    assert receiver.answered == [1]


@pytest.mark.parametrize(("failure", "code"), [("hang", "timeout"), ("close", "connection"), (503, "503")])
async def test_timeouts_closed_connections_and_5xx_are_retried(
    store: Store,
    settings: Settings,
    session: aiohttp.ClientSession,
    clock: Clock,
    receiver: Receiver,
    failure: Any,
    code: str,
) -> None:
    sub_id, _ = await subscribe(store, settings, clock, subscription(settings, receiver.url))
    receiver.plan = [failure]
    await change(store, clock, referral("sr1", 1))
    service = notifier(store, settings, session, clock)
    await burst(service)
    [pending] = await deliveries(store, sub_id)
    assert pending["status"] == "pending" and pending["attempts"][0]["code"] == code
    clock.advance(1.0)
    await burst(service)
    [done] = await deliveries(store, sub_id)
    assert done["status"] == "delivered" and receiver.answered == [1]


async def test_dead_letter_blocks_later_events_until_redelivered(
    store: Store, settings: Settings, session: aiohttp.ClientSession, clock: Clock, receiver: Receiver
) -> None:
    sub_id, _ = await subscribe(store, settings, clock, subscription(settings, receiver.url))
    api = SubscriptionService(store, settings, clock)
    receiver.default = 500
    await change(store, clock, referral("sr1", 1))
    await change(store, clock, referral("sr2", 1))
    service = notifier(store, settings, session, clock)
    for _ in range(4):  # max attempts
        await burst(service)
        clock.advance(60)
    one, two = await deliveries(store, sub_id)
    assert one["status"] == "dead" and one["attempt_count"] == 4 and two["status"] == "pending"
    assert {r.number for r in receiver.notifications()} == {1}  # event 2 never went before event 1
    sub = await store.subscriptions.find_one({"_id": sub_id})
    assert sub is not None and sub["status"] == "error" and "HTTP 500" in sub["error"]
    status = (await api.status(sub_id, RBL))["entry"][0]["resource"]
    names = {p["name"]: p for p in status["parameter"]}
    assert names["status"]["valueCode"] == "error" and "HTTP 500" in names["error"]["valueCodeableConcept"]["text"]
    dead = {p["name"]: p for p in names["mscc-dead-letter"]["part"]}
    assert dead["event-number"]["valueString"] == "1" and dead["attempts"]["valueUnsignedInt"] == 4
    await change(store, clock, referral("sr3", 1))  # still queued while in error
    await burst(service)
    assert {r.number for r in receiver.notifications()} == {1}

    receiver.default = 200
    result = await api.redeliver(sub_id, RBL, None)
    assert {p["name"]: p for p in result["parameter"]}["redelivered"]["valueUnsignedInt"] == 1
    await burst(service)
    assert receiver.answered == [1, 2, 3]
    sub = await store.subscriptions.find_one({"_id": sub_id})
    assert sub is not None and sub["status"] == "active" and "error" not in sub
    one = (await deliveries(store, sub_id))[0]
    assert [a["outcome"] for a in one["attempts"]] == ["retry", "retry", "retry", "dead", "delivered"]


async def test_skipping_a_dead_letter_lets_later_events_flow_and_events_replays_it(
    store: Store, settings: Settings, session: aiohttp.ClientSession, clock: Clock, receiver: Receiver
) -> None:
    sub_id, _ = await subscribe(store, settings, clock, subscription(settings, receiver.url))
    api = SubscriptionService(store, settings, clock)
    receiver.plan = [410] * 4
    await change(store, clock, referral("sr1", 1))
    await change(store, clock, referral("sr2", 1))
    service = notifier(store, settings, session, clock)
    for _ in range(4):
        await burst(service)
        clock.advance(60)
    await api.skip(sub_id, RBL, "1")
    await burst(service)
    assert receiver.answered == [2]
    replay = await api.events(sub_id, RBL, "1", "2", None)
    Bundle.model_validate(replay)
    status = {p["name"]: p for p in replay["entry"][0]["resource"]["parameter"] if p["name"] != "notification-event"}
    assert status["type"]["valueCode"] == "query-event" and status["status"]["valueCode"] == "active"
    numbers = [
        p["part"][0]["valueString"]
        for p in replay["entry"][0]["resource"]["parameter"]
        if p["name"] == "notification-event"
    ]
    assert numbers == ["1", "2"] and len(replay["entry"]) == 3


async def test_a_failed_handshake_puts_the_subscription_in_error_until_redelivered(
    store: Store, settings: Settings, session: aiohttp.ClientSession, clock: Clock, receiver: Receiver
) -> None:
    sub_id, _ = await subscribe(store, settings, clock, subscription(settings, receiver.url))
    receiver.handshake = 401
    await change(store, clock, referral("sr1", 1))
    service = notifier(store, settings, session, clock)
    for _ in range(4):
        await burst(service)
        clock.advance(60)
    assert [r.kind for r in receiver.requests] == ["handshake"] * 4 and receiver.notifications() == []
    sub = await store.subscriptions.find_one({"_id": sub_id})
    assert (
        sub is not None and sub["status"] == "error" and "handshake failed after 4 attempt(s): HTTP 401" in sub["error"]
    )
    [queued] = await deliveries(store, sub_id)
    assert queued["status"] == "pending"  # the event waits for the subscription
    receiver.handshake = 200
    await SubscriptionService(store, settings, clock).redeliver(sub_id, RBL, None)
    await burst(service)
    assert receiver.answered == [1]
    sub = await store.subscriptions.find_one({"_id": sub_id})
    assert sub is not None and sub["status"] == "active"


async def test_subscriptions_get_only_events_recorded_while_they_listen(
    store: Store, settings: Settings, session: aiohttp.ClientSession, clock: Clock, receiver: Receiver
) -> None:
    await change(store, clock, referral("sr0", 1))  # before any subscription
    clock.advance(1)
    listening, _ = await subscribe(store, settings, clock, subscription(settings, receiver.url))
    body = subscription(settings, receiver.url)
    body["status"] = "off"
    paused, _ = await subscribe(store, settings, clock, body)
    await change(store, clock, referral("sr1", 1))
    await burst(notifier(store, settings, session, clock))
    assert [d["event"]["outbox_id"] for d in await deliveries(store, listening)] == ["ServiceRequest/sr1/_history/1"]
    assert await deliveries(store, paused) == []
    assert receiver.answered == [1] and len(receiver.requests) == 2  # one handshake: the paused one has none


async def test_no_event_is_lost_or_reordered_across_random_failures(
    store: Store, settings: Settings, session: aiohttp.ClientSession, clock: Clock, receiver: Receiver
) -> None:
    settings = settings.model_copy(update={"notifier_max_attempts": 50})
    sub_id, secret = await subscribe(store, settings, clock, subscription(settings, receiver.url))
    rng = random.Random(11)
    receiver.plan = [rng.choice([200, 200, 500, "close", (429, "1")]) for _ in range(80)]
    for n in range(30):
        await change(store, clock, referral(f"sr{n}", 1))
    service = notifier(store, settings, session, clock)
    for _ in range(100):
        await burst(service)
        if len(receiver.answered) == 30:
            break
        clock.advance(30)
    assert receiver.answered == list(range(1, 31))
    sent = [got.number for got in receiver.notifications()]
    assert sent == sorted(sent)  # retried until delivered, never overtaken by the next event
    assert all(verify(got.body, secret, got.headers["X-Signature"]) for got in receiver.notifications())
    assert all(d["status"] == "delivered" for d in await deliveries(store, sub_id))


# ---------------------------------------------------------------------------------------------------
# Matching and fan-out
# ---------------------------------------------------------------------------------------------------


async def test_topics_and_filters_decide_who_gets_what(
    store: Store, settings: Settings, session: aiohttp.ClientSession, clock: Clock, receiver: Receiver
) -> None:
    url = receiver.url
    status_rbl, _ = await subscribe(store, settings, clock, subscription(settings, url))
    status_rbl_urgent, _ = await subscribe(
        store, settings, clock, subscription(settings, url, filters=["ServiceRequest?status=completed"])
    )
    status_rjr = (
        await SubscriptionService(store, settings, clock).create(
            subscription(settings, url, trust="RJR"), Caller("aos-rjr", "RJR")
        )
    ).resource["id"]
    hna_rbl, _ = await subscribe(store, settings, clock, subscription(settings, url, topic="hna-completed"))
    sla_rbl, _ = await subscribe(store, settings, clock, subscription(settings, url, topic="sla"))

    await change(store, clock, referral("sr1", 1))
    await change(store, clock, referral("sr2", 1, requester="RJR", subject="Patient/p2"))
    profiled = referral("sr1", 2, meta={"versionId": "2", "profile": ["https://example.org/p"]})
    await change(store, clock, profiled)  # no status change: nobody
    await change(store, clock, referral("sr1", 3, status="completed"))
    # HNA: the event follows the support plan (a CarePlan naming its response), never the response alone
    qr = {"resourceType": "QuestionnaireResponse", "status": "completed", "subject": {"reference": "Patient/p1"}}
    plan = {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "Patient/p1"},
        "supportingInfo": [{"reference": "QuestionnaireResponse/qr1"}],
    }
    await change(store, clock, {**qr, "id": "qr1", "meta": {"versionId": "1"}})  # no plan yet: nobody
    await change(store, clock, {**plan, "id": "hna1", "meta": {"versionId": "1"}})  # p1 was referred by RBL
    elsewhere = {"subject": {"reference": "Patient/p9"}}
    await change(store, clock, {**plan, "id": "hna2", "meta": {"versionId": "1"}, **elsewhere})
    await change(store, clock, {**plan, "id": "hna3", "meta": {"versionId": "1"}, "status": "draft"})
    sla = {
        "type": "ServiceRequest",
        "id": "sr1",
        "version": 3,
        "kind": "sla",
        "sla_event": "breached",
        "focus": "ServiceRequest/sr1/_history/3",
        "at": clock.now,
    }
    await store.outbox.insert_one({"_id": "sla:sr1:breached", **sla, "created_at": clock.now, "status": "ready"})
    step = {"step": "mri-requested", "previous_step": "triaged-accepted", "at": clock.now}
    await change(store, clock, referral("sr1", 4, status="completed"), kind="transition", **step)
    await change(store, clock, referral("sr2", 2, status="on-hold", subject="Patient/p2"))  # now requested by RBL

    await NotifierService(store, settings, session, clock=clock).fanout.run_once()
    got = {
        sub: [d["event"]["outbox_id"] for d in await deliveries(store, sub)]
        for sub in (status_rbl, status_rbl_urgent, status_rjr, hna_rbl, sla_rbl)
    }
    sr1 = [f"ServiceRequest/sr1/_history/{v}" for v in (1, 3, 4)]
    assert got[status_rbl] == [*sr1, "ServiceRequest/sr2/_history/2"]  # filters see each event's version
    assert got[status_rbl_urgent] == sr1[1:]
    assert got[status_rjr] == ["ServiceRequest/sr2/_history/1"]
    assert got[hna_rbl] == ["CarePlan/hna1/_history/1"]
    assert got[sla_rbl] == ["sla:sr1:breached"]
    [transition] = [d for d in await deliveries(store, status_rbl) if d["event"]["kind"] == "transition"]
    assert transition["event"]["detail"] == {"step": "mri-requested", "previous_step": "triaged-accepted"}
    assert [d["event_number"] for d in await deliveries(store, status_rbl)] == [1, 2, 3, 4]


async def test_out_of_hours_notification_tells_when_the_team_picks_the_referral_up(
    store: Store, settings: Settings, clock: Clock, receiver: Receiver
) -> None:
    sla_rbl, _ = await subscribe(store, settings, clock, subscription(settings, receiver.url, topic="sla"))
    await change(store, clock, referral("sr1", 1))
    pickup = datetime(2026, 11, 26, 7, 30, tzinfo=UTC)
    event = {
        "type": "ServiceRequest",
        "id": "sr1",
        "version": 1,
        "kind": "sla",
        "sla_event": "out-of-hours",
        "focus": "ServiceRequest/sr1/_history/1",
        "at": clock.now,
        "pickup": pickup,
    }
    await store.outbox.insert_one({"_id": "sla:sr1:out-of-hours", **event, "created_at": clock.now, "status": "ready"})
    await FanOut(store, clock).run_once()
    [delivery] = [d for d in await deliveries(store, sla_rbl) if d["event"]["kind"] == "sla"]
    item = notification_event(Delivery.from_doc(delivery), settings.base_url, "id-only")
    [detail] = item["extension"]
    assert {"url": "pickup", "valueDateTime": "2026-11-26T07:30:00.000Z"} in detail["extension"]
    assert {"url": "sla-event", "valueCode": "out-of-hours"} in detail["extension"]


async def test_concurrent_fan_out_numbers_every_event_once_in_outbox_order(
    store: Store, settings: Settings, clock: Clock, receiver: Receiver
) -> None:
    subs = [(await subscribe(store, settings, clock, subscription(settings, receiver.url)))[0] for _ in range(3)]
    for n in range(120):
        await change(store, clock, referral(f"sr{n % 7}", n // 7 + 1, status=["active", "on-hold"][n // 7 % 2]))
        clock.advance(0.001)
    workers = [FanOut(store, clock, batch_size=25) for _ in range(3)]

    async def drain(worker: FanOut) -> None:
        while await worker.run_once():
            pass

    await asyncio.gather(*(drain(w) for w in workers))
    order = [d["_id"] async for d in store.outbox.find({}).sort("created_at", 1)]
    for sub_id in subs:
        items = await deliveries(store, sub_id)
        assert [d["event_number"] for d in items] == list(range(1, 121))
        assert [d["event"]["outbox_id"] for d in items] == order
    assert sum(w.created for w in workers) == 360
    assert await store.outbox.count_documents({"status": "dispatched"}) == 120
    await drain(workers[0])  # re-running changes nothing
    assert await store.deliveries.count_documents({}) == 360


async def test_a_referral_from_the_api_reaches_the_callback_through_the_mapper(
    http: httpx.AsyncClient,
    intake: IntakeService,
    session: aiohttp.ClientSession,
    receiver: Receiver,
) -> None:
    settings = intake.settings
    body = subscription(settings, receiver.url, content="full-resource")
    created = await http.post("/fhir/Subscription", json=body, headers={"Content-Type": "application/fhir+json"})
    assert created.status_code == 201, created.text
    sub_id, secret = created.json()["id"], created.headers["X-Subscription-Secret"]
    request = {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "https://example.org/referral", "value": "R-77"}],
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "requester": {"identifier": {"system": ODS, "value": "RBL"}},
        "authoredOn": "2026-11-25T08:00:00+00:00",
    }
    assert (
        await http.post("/fhir/ServiceRequest", json=request, headers={"Content-Type": "application/fhir+json"})
    ).status_code == 201
    await MapperService(intake.store, WorkerConfig()).run(asyncio.Event(), burst=True)
    await NotifierService(intake.store, settings, session).run(asyncio.Event(), burst=True)
    [got] = receiver.notifications()
    assert verify(got.body, secret, got.headers["X-Signature"])
    resource = got.bundle["entry"][1]["resource"]
    assert resource["resourceType"] == "ServiceRequest" and resource["identifier"][0]["value"] == "R-77"
    status = await http.get(f"/fhir/Subscription/{sub_id}/$status")
    params = {p["name"]: p for p in status.json()["entry"][0]["resource"]["parameter"]}
    assert params["events-since-subscription-start"]["valueString"] == "1"
    assert params["mscc-last-delivery"]["part"][0]["valueString"] == "1"
    events = await http.get(f"/fhir/Subscription/{sub_id}/$events", params={"eventsSinceNumber": "1"})
    assert events.status_code == 200 and len(events.json()["entry"]) == 2


async def test_a_running_notifier_calls_back_within_moments_of_a_change(
    store: Store, settings: Settings, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    real = Clock()
    real_clock = lambda: datetime.now(UTC)  # noqa: E731 - the running service uses real time
    await subscribe(store, settings, real, subscription(settings, receiver.url))
    service = NotifierService(store, settings, session, clock=real_clock, idle_poll_s=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(receiver.seen.wait(), 5)  # the handshake
        real.now = datetime.now(UTC)
        started = asyncio.get_running_loop().time()
        await change(store, real, referral("sr1", 1))
        await asyncio.wait_for(receiver.delivered.wait(), 5)
        assert receiver.answered == [1]
        assert asyncio.get_running_loop().time() - started < 2.0
    finally:
        stop.set()
        await task


async def test_the_session_refuses_names_that_resolve_to_loopback(tmp_path: Path, receiver: Receiver) -> None:
    strict = Settings(_env_file=None, state_dir=tmp_path, notifier_allow_http=True)
    async with client_session(strict) as guarded:
        from services.notifier.channels import RestHookSender

        result = await RestHookSender(guarded, lambda: datetime.now(UTC)).post(
            receiver.url.replace("127.0.0.1", "localhost"), b"{}", {}, 1.0
        )
    assert not result.delivered and result.code == "connection"
    assert "may not call" in (result.error or "")
    assert receiver.requests == []


# ---------------------------------------------------------------------------------------------------
# MLLP
# ---------------------------------------------------------------------------------------------------


async def test_mllp_channel_sends_rri_i12_and_an_ae_is_dead_lettered_with_the_reason(
    store: Store, settings: Settings, session: aiohttp.ClientSession, clock: Clock, mllp_receiver: MllpReceiver
) -> None:
    written = await SubscriptionService(store, settings, clock).create(
        mllp_subscription(settings, mllp_receiver.port), RBL
    )
    sub_id = written.resource["id"]
    assert written.resource["status"] == "active"  # no handshake in HL7v2
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"versionId": "1"},
        "identifier": [{"system": NHS, "value": "9449305552"}],
        "name": [{"family": "Smith", "given": ["Ann"]}],
    }
    await change(store, clock, patient)
    mllp_receiver.plan = ["AE"]
    await change(store, clock, referral("sr1", 1))
    await change(store, clock, referral("sr1", 2, status="on-hold"))
    service = notifier(store, settings, session, clock)
    await burst(service)
    one, two = await deliveries(store, sub_id)
    assert one["status"] == "dead" and one["attempt_count"] == 1 and two["status"] == "pending"
    sub = await store.subscriptions.find_one({"_id": sub_id})
    assert sub is not None and sub["status"] == "error" and "PID-3 NHS number not recognised" in sub["error"]
    await SubscriptionService(store, settings, clock).redeliver(sub_id, RBL, None)
    await burst(service)
    assert [d["status"] for d in await deliveries(store, sub_id)] == ["delivered", "delivered"]
    first, again, second = (parse_message(m.decode()) for m in mllp_receiver.messages)
    control_ids = []
    for message in (first, again, second):
        msh = message.first("MSH")
        assert msh is not None and msh.value(9, 1) == "RRI" and msh.value(9, 2) == "I12"
        assert msh.value(5) == "AOS" and msh.value(6) == "RBL"
        control_ids.append(msh.field(10))
        pid = message.first("PID")
        assert pid is not None and pid.value(3) == "9449305552" and pid.value(5) == "Smith"
    assert control_ids[0] == control_ids[1] == control_id(f"{sub_id}:1")  # the same event, the same MSH-10
    rf1 = second.first("RF1")
    assert rf1 is not None and rf1.value(1) == "P" and rf1.value(1, 4) == "on-hold"


async def test_mllp_no_answer_and_ar_are_retried(
    store: Store, settings: Settings, session: aiohttp.ClientSession, clock: Clock, mllp_receiver: MllpReceiver
) -> None:
    sub_id = (
        await SubscriptionService(store, settings, clock).create(mllp_subscription(settings, mllp_receiver.port), RBL)
    ).resource["id"]
    mllp_receiver.plan = ["silent", "AR"]
    patient = {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "1"}}
    await change(store, clock, {**patient, "identifier": [{"system": NHS, "value": "9449305552"}]})
    await change(store, clock, referral("sr1", 1))
    service = notifier(store, settings, session, clock)
    await burst(service)
    clock.advance(1)
    await burst(service)
    clock.advance(3)
    await burst(service)
    [done] = await deliveries(store, sub_id)
    assert [a["code"] for a in done["attempts"]] == ["timeout", "AR", "AA"]
    assert done["status"] == "delivered" and len(mllp_receiver.messages) == 3


async def test_mscc_notifier_burst_runs_and_reports(
    tmp_path: Path, mongodb_uri: str, mongo_client: AsyncMongoClient[Document]
) -> None:
    db_name = f"cli_{uuid.uuid4().hex[:10]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSCC_")}
    env.update(MONGODB_URI=mongodb_uri, MSCC_DB_NAME=db_name, MSCC_STATE_DIR=str(tmp_path))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "notifier",
        "--burst",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await mongo_client.drop_database(db_name)
    assert process.returncode == 0, err.decode()
    assert "events 0, deliveries queued 0, delivered 0" in out.decode()
