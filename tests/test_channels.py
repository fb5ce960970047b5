"""Notification channels as a seam: a channel is one module implementing the protocol plus one registration.

The channel below lives only in this file: it sends each notification as one JSON line over a real TCP
connection to a receiver on loopback, which answers ``OK <key>``, ``BUSY <seconds>`` or ``NO <reason>``.
Nothing else in the notifier knows about it, yet subscriptions on it are checked, handshaken, delivered
in event order, retried after the receiver's wait and dead-lettered with the receiver's reason. A channel
type nobody registered is refused at subscription time with an OperationOutcome.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import pytest
from receivers import RBL_REFERRALS, loopback_settings, message_channel, serve_tcp, subscription_body

from services.notifier.channels import (
    Answer,
    Needs,
    Payload,
    Sender,
    Transport,
    Verdict,
    codes,
    register,
    unregister,
)
from services.notifier.endpoints import EndpointPolicy, Resolve, check_host
from services.notifier.http import client_session
from services.notifier.model import Delivery, PayloadContent, SendResult, Subscription
from services.notifier.service import NotifierService
from services.notifier.subscriptions import SubscriptionService
from shared.auth import Caller
from shared.fhir import FhirError, Resource
from shared.settings import Settings
from shared.store import Document, Store

RBL = Caller("aos-rbl", "RBL")
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
FHIR = {"Content-Type": "application/fhir+json"}


# ---------------------------------------------------------------------------------------------------
# A third channel, in one place: settings, connection, and the protocol's methods
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineConfig:
    host: str
    port: int
    kind: str = "json-line"

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def to_doc(self) -> Document:
        return {"kind": self.kind, "host": self.host, "port": self.port}


class LineConnection:
    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, payload: Payload) -> Answer:
        started = time.perf_counter()
        try:
            if self.streams is None:
                opening = asyncio.open_connection(self.host, self.port)
                self.streams = await asyncio.wait_for(opening, self.timeout_s)
            reader, writer = self.streams
            writer.write(payload.body)
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), self.timeout_s)
        except (OSError, TimeoutError) as exc:
            await self.close()
            return Answer("connection", (time.perf_counter() - started) * 1000, failure=repr(exc))
        if not line:
            await self.close()
            return Answer("connection", (time.perf_counter() - started) * 1000, failure="the receiver hung up")
        return Answer("reply", (time.perf_counter() - started) * 1000, line)

    async def close(self) -> None:
        streams, self.streams = self.streams, None
        if streams is not None:
            streams[1].close()


class LineChannel:
    code = "json-line"
    handshake_first = True

    def parse(self, element: Resource, trust: str) -> LineConfig:
        parts = urlsplit(str(element.get("endpoint", "")))
        if parts.scheme != "tcp" or not parts.hostname or not parts.port:
            raise FhirError(
                400,
                "value",
                "the json-line channel needs tcp://host:port",
                expression=["Subscription.channel.endpoint"],
            )
        return LineConfig(parts.hostname, parts.port)

    async def validate_endpoint(
        self, config: LineConfig, endpoint: str, policy: EndpointPolicy, resolve: Resolve
    ) -> LineConfig:
        await check_host(config.host, config.port, policy, resolve)
        return config

    def from_doc(self, doc: Document) -> LineConfig:
        return LineConfig(doc["host"], int(doc["port"]))

    def content(self, config: LineConfig) -> PayloadContent:
        return "id-only"

    def needs(self, config: LineConfig) -> Needs:
        return "focus"

    def handshake(self, config: LineConfig, subscription: Subscription, sender: Sender) -> Payload:
        return Payload(_line({"type": "handshake", "subscription": subscription.id}), key="handshake")

    def prepare(
        self,
        config: LineConfig,
        subscription: Subscription,
        delivery: Delivery,
        resources: dict[str, Resource],
        sender: Sender,
    ) -> Payload:
        focus = resources[delivery.event.focus.reference]
        line = {
            "type": "event",
            "number": delivery.event_number,
            "id": delivery.event_id,
            "focus": delivery.event.focus.reference,
            "status": focus["status"],
            "from": sender.sending_facility,
        }
        return Payload(_line(line), key=str(delivery.event_number))

    def connect(self, config: LineConfig, transport: Transport, timeout_s: float) -> LineConnection:
        return LineConnection(config.host, config.port, timeout_s)

    def interpret(self, answer: Answer, payload: Payload, now: datetime) -> Verdict:
        if answer.failure is not None:
            return Verdict(SendResult(False, answer.code, answer.latency_ms, answer.failure))
        word, _, rest = answer.body.decode().strip().partition(" ")
        if word == "OK" and rest == payload.key:
            return Verdict(SendResult(True, "OK", answer.latency_ms))
        if word == "BUSY":
            return Verdict(SendResult(False, "BUSY", answer.latency_ms, "receiver busy", float(rest)))
        if word == "NO":
            return Verdict(SendResult(False, "NO", answer.latency_ms, rest, permanent=True))
        return Verdict(SendResult(False, "?", answer.latency_ms, f"unexpected answer {rest!r}"), reconnect=True)


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


# ---------------------------------------------------------------------------------------------------
# Its receiver, the clock, fixtures
# ---------------------------------------------------------------------------------------------------


@dataclass
class LineReceiver:
    """Answers each event line with the next answer of the plan (``BUSY 30``, ``NO reason``), else OK."""

    plan: list[str] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while raw := await reader.readline():
                line = json.loads(raw)
                self.lines.append(line)
                key = "handshake" if line["type"] == "handshake" else str(line["number"])
                answer = self.plan.pop(0) if line["type"] == "event" and self.plan else f"OK {key}"
                writer.write(answer.encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    def events(self) -> list[int]:
        return [line["number"] for line in self.lines if line["type"] == "event"]


class Clock:
    def __init__(self) -> None:
        now = datetime.now(UTC)
        self.now = now.replace(microsecond=now.microsecond // 1000 * 1000)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return loopback_settings(settings, notifier_timeout_s=2.0)


@pytest.fixture
def line_channel() -> Iterator[LineChannel]:
    channel = LineChannel()
    register(channel)  # the one registration line a new channel needs
    yield channel
    unregister(channel.code)


@pytest.fixture
async def line_receiver() -> AsyncIterator[LineReceiver]:
    receiver = LineReceiver()
    async with serve_tcp(receiver.serve) as port:
        receiver.port = port
        yield receiver


def line_subscription(settings: Settings, endpoint: str, code: str = "json-line") -> dict[str, Any]:
    reason = "RBL acute oncology: MSCC referral updates to the ward board"
    channel = message_channel(settings, endpoint, code)
    return subscription_body(settings, channel, topic="referral-status", reason=reason, filters=[RBL_REFERRALS])


def referral(rid: str, version: int, status: str, note: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": rid,
        "meta": {"versionId": str(version)},
        "status": status,
        "intent": "order",
        "subject": {"identifier": {"system": NHS, "value": "9434765919"}},
        "requester": {"identifier": {"system": ODS, "value": "RBL"}},
        "note": [{"text": note}],
    }


async def change(store: Store, clock: Clock, resource: dict[str, Any]) -> None:
    """A resource version and its outbox event, as the hub's writer stores them (visible to RBL)."""
    rtype, rid, version = resource["resourceType"], resource["id"], int(resource["meta"]["versionId"])
    key, now = f"{rtype}/{rid}", clock()
    doc = {"type": rtype, "id": rid, "version": version, "last_updated": now, "resource": resource, "trusts": ["RBL"]}
    await store.history.insert_one({"_id": f"{key}/_history/{version}", **doc})
    await store.resources.replace_one({"_id": key}, {"_id": key, **doc}, upsert=True)
    await store.outbox.insert_one(
        {
            "_id": f"{key}/_history/{version}",
            "type": rtype,
            "id": rid,
            "version": version,
            "kind": "created" if version == 1 else "updated",
            "created_at": now,
            "message_id": None,
            "status": "ready",
        }
    )


async def burst(store: Store, settings: Settings, session: aiohttp.ClientSession, clock: Clock) -> None:
    await NotifierService(store, settings, session, clock=clock, rng=random.Random(3)).run(asyncio.Event(), burst=True)


# ---------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------


async def test_a_channel_registered_in_one_module_gets_every_event_in_order(
    store: Store, settings: Settings, line_channel: LineChannel, line_receiver: LineReceiver
) -> None:
    clock = Clock()
    assert "json-line" in codes() and {"rest-hook", "mllp"} <= set(codes())
    written = await SubscriptionService(store, settings, clock).create(
        line_subscription(settings, f"tcp://127.0.0.1:{line_receiver.port}"), RBL
    )
    sub_id = str(written.resource["id"])
    assert written.resource["status"] == "requested"  # the channel asked for a handshake first
    stored = await store.subscriptions.find_one({"_id": sub_id})
    assert stored is not None and stored["channel"] == {
        "kind": "json-line",
        "host": "127.0.0.1",
        "port": line_receiver.port,
    }
    assert written.resource["channel"]["endpoint"] == f"tcp://127.0.0.1:{line_receiver.port}"  # as sent

    line_receiver.plan = ["OK 1", "BUSY 30"]  # event 2: the receiver asks for half a minute
    await change(store, clock, referral("mscc-rbl-0412", 1, "active", "back pain worse overnight, L leg weak"))
    await change(store, clock, referral("mscc-rbl-0412", 2, "on-hold", "MRI booked 14:00, pt on dex 16mg"))
    await change(store, clock, referral("mscc-rbl-0413", 1, "active", "?cord compression T10, known prostate ca"))
    async with client_session(settings) as session:
        await burst(store, settings, session, clock)
        assert [line["type"] for line in line_receiver.lines][:1] == ["handshake"]
        assert line_receiver.events() == [1, 2]  # 3 waits behind 2
        queued = {d["event_number"]: d async for d in store.deliveries.find({"subscription_id": sub_id})}
        assert queued[1]["status"] == "delivered"
        assert queued[2]["status"] == "pending" and queued[2]["attempts"][-1]["retry_after_s"] == 30.0
        assert queued[3]["status"] == "pending" and not queued[3].get("attempts")

        clock.now += timedelta(seconds=31)
        line_receiver.plan = ["OK 2", "OK 3", "NO patient not known on RBL PAS"]
        await change(
            store,
            clock,
            referral("mscc-rbl-0414", 1, "on-hold", "pt c/o band-like pain, no neuro deficit, awaiting MRI"),
        )
        await change(store, clock, referral("mscc-rbl-0414", 2, "active", "now urinary retention - pls expedite"))
        await burst(store, settings, session, clock)

    assert line_receiver.events() == [1, 2, 2, 3, 4]  # in order; 5 waits behind the dead letter
    events = [line for line in line_receiver.lines if line["type"] == "event"]
    assert [e["focus"] for e in events][-3:] == [
        "ServiceRequest/mscc-rbl-0412/_history/2",
        "ServiceRequest/mscc-rbl-0413/_history/1",
        "ServiceRequest/mscc-rbl-0414/_history/1",
    ]
    assert events[1]["status"] == "on-hold" and all(e["id"] == f"{sub_id}:{e['number']}" for e in events)
    final = {d["event_number"]: d async for d in store.deliveries.find({"subscription_id": sub_id})}
    assert [final[n]["status"] for n in range(1, 6)] == ["delivered", "delivered", "delivered", "dead", "pending"]
    sub = await store.subscriptions.find_one({"_id": sub_id})
    assert sub is not None and sub["status"] == "error" and "patient not known on RBL PAS" in sub["error"]


async def test_an_unknown_channel_type_is_refused_with_an_operation_outcome(
    http: httpx.AsyncClient, store: Store, settings: Settings
) -> None:
    body = line_subscription(settings, "tcp://127.0.0.1:2575", code="carrier-pigeon")
    answer = await http.post("/fhir/Subscription", json=body, headers=FHIR)
    assert answer.status_code == 400, answer.text
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    [issue] = outcome["issue"]
    assert issue["code"] == "not-supported" and issue["expression"] == ["Subscription.channel.type"]
    assert "'carrier-pigeon'" in issue["diagnostics"] and "rest-hook" in issue["diagnostics"]
    assert await store.subscriptions.count_documents({}) == 0


async def test_a_registered_channel_checks_its_own_endpoint(
    store: Store, settings: Settings, line_channel: LineChannel
) -> None:
    service = SubscriptionService(store, settings, Clock())
    with pytest.raises(FhirError) as malformed:
        await service.create(line_subscription(settings, "udp://127.0.0.1:9"), RBL)
    assert malformed.value.issues[0]["expression"] == ["Subscription.channel.endpoint"]
    with pytest.raises(FhirError) as private:  # the hub's address rules hold for every channel
        await service.create(line_subscription(settings, "tcp://10.20.30.40:9"), RBL)
    assert "private" in private.value.issues[0]["diagnostics"]
    assert await store.subscriptions.count_documents({}) == 0


async def test_a_subscription_whose_channel_is_no_longer_registered_is_set_aside(
    store: Store, settings: Settings, line_channel: LineChannel, line_receiver: LineReceiver
) -> None:
    clock = Clock()
    written = await SubscriptionService(store, settings, clock).create(
        line_subscription(settings, f"tcp://127.0.0.1:{line_receiver.port}"), RBL
    )
    unregister(line_channel.code)  # e.g. a release that dropped the channel
    async with client_session(settings) as session:
        await burst(store, settings, session, clock)
    sub = await store.subscriptions.find_one({"_id": written.resource["id"]})
    assert sub is not None and sub["status"] == "error" and "lane" not in sub
    assert "json-line" in sub["error"] and line_receiver.lines == []
    # The API still answers for it: its past events, with the content every channel can show.
    events = await SubscriptionService(store, settings, clock).events(str(sub["_id"]), RBL, None, None, None)
    assert events["resourceType"] == "Bundle" and events["type"] == "history"
