"""Delivery: one lane per subscription, events in number order, every attempt recorded.

A worker claims a subscription's *lane* (``lane: {owner, until}`` on the subscription, claim-and-lease:
an expired lease is claimable again) when its ``due_at`` has come, and delivers that subscription's
deliveries strictly in event-number order: only the lowest-numbered one not yet delivered is ever sent,
so event n+1 never goes before n is delivered, dead-lettered or skipped. Many lanes run at once (one
per subscription, up to ``lanes``), in any number of processes.

In a lane:

- status "requested": the handshake first (rest-hook: a ``handshake`` Bundle; 2xx makes the
  subscription "active"; failures are retried like events, then the subscription goes to "error").
  MLLP has no handshake in HL7v2: the subscription is "active" from the start.
- the head delivery is sent; delivered ones are recorded in batches (at-least-once: a crash between
  sending and recording sends them again, with the same event id);
- a failure is recorded and retried later (``RetryPolicy``), and the lane stops until then;
- past the attempt or age limit (or at once for an HL7 AE) the delivery is dead-lettered: it stays at the
  head, the subscription's status becomes "error" with the reason, and later events wait until an
  operator redelivers or skips it (``$redeliver``, ``$skip``).

Releasing a lane re-reads nothing: it is guarded by the subscription's ``wake`` counter, which every
change that should wake the lane increments (new events, redelivery, skip, update), so a lane never
goes to sleep over work that arrived while it was finishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import PyMongoError

from shared.fhir import FHIR_JSON, Resource
from shared.settings import Settings
from shared.store import Document, Store
from shared.supervision import Heartbeat

from .channels import MllpLink, RestHookSender
from .hl7 import build_message, control_id
from .model import DELIVERING, Attempt, Delivery, Mllp, RestHook, SendResult, Subscription
from .notification import StatusView, notification_bundle, stable_uuid
from .retry import RetryPolicy
from .signing import EVENT_ID_HEADER, EVENT_NUMBER_HEADER, SIGNATURE_HEADER, SUBSCRIPTION_HEADER, sign

log = logging.getLogger(__name__)
KEPT_ATTEMPTS = 50  # attempts kept on one delivery record (the newest)


@dataclass(frozen=True)
class DeliveryConfig:
    base_url: str
    sending_application: str = "MSCC-HUB"
    sending_facility: str = "REN"
    lanes: int = 32
    lane_batch: int = 50  # deliveries read at once by a lane
    lane_slice_s: float = 5.0  # a busy lane gives way after this long (others may be waiting)
    lease_s: float = 150.0  # longer than the longest attempt (timeouts are at most 60 s)
    default_timeout_s: float = 10.0
    idle_poll_s: float = 0.25

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> DeliveryConfig:
        values: dict[str, Any] = {
            "base_url": settings.base_url,
            "sending_application": settings.receiving_application,
            "sending_facility": settings.receiving_facility,
            "lanes": settings.notifier_lanes,
            "default_timeout_s": settings.notifier_timeout_s,
        }
        values.update(overrides)
        return cls(**values)


@dataclass
class DeliveryStats:
    attempts: int = 0
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    handshakes: int = 0
    lanes: int = 0


@dataclass
class _Batch:
    """Delivered events waiting to be recorded."""

    updates: list[UpdateOne] = field(default_factory=list)
    last: Document | None = None


class DeliveryWorker:
    def __init__(
        self,
        store: Store,
        session: aiohttp.ClientSession,
        policy: RetryPolicy,
        config: DeliveryConfig,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.policy = policy
        self.config = config
        self.clock = clock
        self.rest = RestHookSender(session, clock)
        self.owner = f"notifier-{uuid.uuid4().hex[:12]}"
        self.stats = DeliveryStats()

    def _claimable(self, now: datetime) -> dict[str, Any]:
        return {
            "due_at": {"$lte": now},
            "status": {"$in": list(DELIVERING)},
            "$or": [{"lane": {"$exists": False}}, {"lane.until": {"$lt": now}}],
        }

    async def claim(self, limit: int, busy: set[str] | frozenset[str] = frozenset()) -> list[Document]:
        """Claim up to ``limit`` lanes whose work is due, earliest first; the subscriptions won."""
        now = self.clock()
        query = self._claimable(now)
        ids = [
            d["_id"]
            async for d in self.store.subscriptions.find(query, {"_id": 1}).sort("due_at", 1).limit(limit + len(busy))
            if d["_id"] not in busy
        ][:limit]
        won = []
        for sub_id in ids:
            lease = {
                "owner": f"{self.owner}:{uuid.uuid4().hex[:8]}",
                "until": now + timedelta(seconds=self.config.lease_s),
            }
            doc = await self.store.subscriptions.find_one_and_update(
                {"_id": sub_id, **query}, {"$set": {"lane": lease}}, return_document=ReturnDocument.AFTER
            )
            if doc is not None:
                won.append(doc)
        self.stats.lanes += len(won)
        return won

    async def run_once(self) -> int:
        """Claim every due lane (up to ``lanes``) and run them to the end; the number of lanes run."""
        docs = await self.claim(self.config.lanes)
        lanes = [lane for doc in docs if (lane := await self._lane(doc)) is not None]
        results = await asyncio.gather(*(lane.run() for lane in lanes), return_exceptions=True)
        for lane, result in zip(lanes, results, strict=True):
            if isinstance(result, Exception):
                await self.set_aside(lane.sub.id, lane.token, result)
            elif isinstance(result, BaseException):
                raise result
        return len(docs)

    async def run(self, stop: asyncio.Event, wake: asyncio.Event, heartbeat: Heartbeat | None = None) -> None:
        """Run lanes until ``stop``; ``wake`` (set by the fan-out) claims new work at once. On stop,
        running lanes finish the attempt in hand and release their subscriptions. A failed claim (the
        database, or a subscription document the lane cannot read) is logged and recorded on
        ``heartbeat``, and the loop goes on; ``heartbeat`` beats after every completed claim."""
        heartbeat = heartbeat or Heartbeat.none()
        running: dict[str, asyncio.Task[int]] = {}
        tokens: dict[str, str] = {}
        while not stop.is_set():
            wake.clear()
            free = self.config.lanes - len(running)
            try:
                if free > 0:
                    for doc in await self.claim(free, set(running)):
                        lane = await self._lane(doc)
                        if lane is None:
                            continue
                        task = asyncio.create_task(lane.run(stop), name=f"lane-{doc['_id']}")
                        task.add_done_callback(lambda _t: wake.set())
                        running[doc["_id"]] = task
                        tokens[doc["_id"]] = lane.token
                heartbeat.beat()
            except Exception as exc:
                log.exception("notifier: claiming lanes failed; pausing")
                heartbeat.failed(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(first_of(stop, wake), self.config.idle_poll_s)
            for sub_id, task in list(running.items()):
                if task.done():
                    del running[sub_id]
                    token = tokens.pop(sub_id, "")
                    failure = None if task.cancelled() else task.exception()
                    if isinstance(failure, Exception):
                        await self.set_aside(sub_id, token, failure)
        if running:
            await asyncio.gather(*running.values(), return_exceptions=True)

    async def _lane(self, doc: Document) -> Lane | None:
        """The lane of a claimed subscription; None (and the subscription set aside) if its document
        cannot be read."""
        try:
            return Lane(self, doc)
        except Exception as exc:
            await self.set_aside(str(doc.get("_id")), str((doc.get("lane") or {}).get("owner")), exc)
            return None

    async def set_aside(self, sub_id: str, token: str, exc: Exception) -> None:
        """A subscription the notifier failed on unexpectedly (a document it cannot read, a bug in its
        lane) goes to status "error" with the exception, logged with its id: neither claimed again for
        ever nor silent. Its events keep queueing; ``$redeliver`` resumes it once the cause is fixed.
        A database failure here is logged (the lease then expires and the lane is claimed again)."""
        reason = f"the notifier failed on this subscription: {type(exc).__name__}: {exc}"[:500]
        log.error("notifier lane failed; subscription set to error", exc_info=exc, extra={"subscription": sub_id})
        try:
            await self.store.subscriptions.update_one(
                {"_id": sub_id, "lane.owner": token},
                {"$set": {"status": "error", "error": reason}, "$unset": {"lane": ""}},
            )
        except PyMongoError:
            log.exception("could not record the lane failure", extra={"subscription": sub_id})


def patient_reference(resource: Resource | None) -> str | None:
    """``Patient/id`` the resource is about: its ``subject``, or a Task's ``for`` (the data-quality Task)."""
    for key in ("subject", "for"):
        value = (resource or {}).get(key)
        ref = value.get("reference") if isinstance(value, dict) else None
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return ref
    return None


async def first_of(*events: asyncio.Event) -> None:
    """Return when any of ``events`` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class Lane:
    """One claimed subscription, delivered in order until it has nothing due, is blocked, or its slice ends."""

    def __init__(self, worker: DeliveryWorker, doc: Document) -> None:
        self.w = worker
        self.token: str = doc["lane"]["owner"]
        self.sub = Subscription.from_doc(doc)
        self.doc = doc
        self.link: MllpLink | None = None
        self.last_delivery: Document | None = None  # written with the next lease renewal or the release
        self.renewed = time.monotonic()

    async def run(self, stop: asyncio.Event | None = None) -> int:
        """Deliver; the number of attempts made. A database error ends the lane (its lease expires and
        another worker takes the subscription over)."""
        attempts = 0
        try:
            attempts = await self._run(stop)
        except PyMongoError:
            log.exception("notifier lane: database error; the lease will expire", extra={"subscription": self.sub.id})
        finally:
            if self.link is not None:
                await self.link.close()
        return attempts

    async def _run(self, stop: asyncio.Event | None) -> int:
        started = time.monotonic()
        attempts = 0
        if self.sub.status == "requested":
            attempts += 1
            if not await self._activate():
                return attempts
        doc: Document | None = self.doc  # as claimed: read again only after something changed it
        while True:
            if doc is None:
                doc = await self.w.store.subscriptions.find_one({"_id": self.sub.id, "lane.owner": self.token})
            if doc is None:
                return attempts  # deleted, or the lease was lost: nothing more to do here
            self.sub = Subscription.from_doc(doc)
            self.doc, doc = doc, None
            if self.sub.status != "active":
                if await self._release(None):
                    return attempts
                continue
            cursor = (
                self.w.store.deliveries.find({"subscription_id": self.sub.id, "status": {"$in": ["pending", "dead"]}})
                .sort("event_number", 1)
                .limit(self.w.config.lane_batch)
            )
            batch = [Delivery.from_doc(d) async for d in cursor]
            if not batch:
                if await self._release(None):
                    return attempts
                continue
            resources = await self._resources(batch)
            done = _Batch()
            wait_until: datetime | None = None
            stopped = False
            for delivery in batch:
                if delivery.status == "dead":
                    stopped = True  # blocked behind a dead letter until an operator acts
                    break
                if delivery.next_attempt_at > self.w.clock():
                    wait_until, stopped = delivery.next_attempt_at, True
                    break
                result = await self._send(delivery, resources)
                attempts += 1
                self.w.stats.attempts += 1
                if result.delivered:
                    self._delivered(done, delivery, result)
                    if stop is not None and stop.is_set():
                        break
                    continue
                await self._record(done)
                wait_until = await self._failed(delivery, result)
                stopped = True
                break
            await self._record(done)
            if (
                stopped
                or (stop is not None and stop.is_set())
                or time.monotonic() - started > self.w.config.lane_slice_s
            ):
                due = wait_until if stopped else self.w.clock()
                if await self._release(due):
                    return attempts
            elif len(batch) < self.w.config.lane_batch and await self._release(None):
                return attempts  # all delivered, and nothing was added since the batch was read (wake)

    # -- handshake ------------------------------------------------------------------------------

    async def _activate(self) -> bool:
        """Handshake (rest-hook) and make the subscription active; False when the lane must stop."""
        channel = self.sub.spec.channel
        now = self.w.clock()
        result = SendResult(True, "none", 0.0)
        if isinstance(channel, RestHook):
            view = StatusView(self.sub.id, self.sub.spec.topic, "requested", self.sub.events_since_start)
            bundle = notification_bundle(
                view, self.w.config.base_url, "handshake", [], {}, channel.content, now, str(uuid.uuid4())
            )
            result = await self._post(channel, _body(bundle), {})
            self.w.stats.handshakes += 1
        record = {"at": now, "code": result.code, "latency_ms": round(result.latency_ms, 2), "error": result.error}
        subs = self.w.store.subscriptions
        mine = {"_id": self.sub.id, "lane.owner": self.token, "status": "requested"}
        if result.delivered:
            await subs.update_one(
                mine,
                {
                    "$set": {"status": "active", "activated_at": now, "handshake": {"attempts": 0, "last": record}},
                    "$unset": {"error": ""},
                },
            )
            self.doc = {**self.doc, "status": "active", "activated_at": now}
            self.sub = Subscription.from_doc(self.doc)
            return True
        attempts = int((self.doc.get("handshake") or {}).get("attempts", 0)) + 1
        since = self.doc.get("requested_at") or self.doc["updated_at"]
        next_at = self.w.policy.next_attempt(attempts, since, now, result.retry_after_s)
        update: dict[str, Any] = {"handshake": {"attempts": attempts, "last": record}}
        if next_at is None:
            update.update(status="error", error=f"handshake failed after {attempts} attempt(s): {result.error}")
            log.warning("subscription handshake failed; status error", extra={"subscription": self.sub.id})
        await subs.update_one(mine, {"$set": update})
        await self._release(next_at, guarded=False)
        return False

    # -- sending --------------------------------------------------------------------------------

    async def _resources(self, batch: list[Delivery]) -> dict[str, Resource]:
        """The focus versions (and, for MLLP, the patients) the batch needs, by reference."""
        channel = self.sub.spec.channel
        if isinstance(channel, RestHook) and channel.content != "full-resource":
            return {}
        refs = sorted({d.event.focus.reference for d in batch if d.status == "pending"})
        versioned = [r for r in refs if "/_history/" in r]
        found: dict[str, Resource] = {
            d["_id"]: d["resource"] async for d in self.w.store.history.find({"_id": {"$in": versioned}})
        }
        current = [r for r in refs if "/_history/" not in r]
        if current:
            found.update(
                {d["_id"]: d["resource"] async for d in self.w.store.resources.find({"_id": {"$in": current}})}
            )
        if isinstance(channel, Mllp):
            patients = sorted({ref for r in found.values() if (ref := patient_reference(r))})
            async for d in self.w.store.resources.find({"_id": {"$in": patients}}):
                found[d["_id"]] = d["resource"]
        return found

    async def _send(self, delivery: Delivery, resources: dict[str, Resource]) -> SendResult:
        """One attempt. A notification that cannot even be built (unexpected content, a bug) is a
        permanent failure: dead-lettered with the reason, never retried in a loop."""
        channel = self.sub.spec.channel
        try:
            if isinstance(channel, Mllp):
                payload = self._message(channel, delivery, resources)
            else:
                payload = self._bundle(channel, delivery, resources)
        except Exception as exc:
            log.exception("notification could not be built", extra={"subscription": self.sub.id})
            return SendResult(False, "unbuildable", 0.0, f"the notification could not be built: {exc!r}", None, True)
        if isinstance(channel, RestHook):
            headers = {EVENT_ID_HEADER: delivery.event_id, EVENT_NUMBER_HEADER: str(delivery.event_number)}
            return await self._post(channel, payload, headers)
        if self.link is None:
            self.link = MllpLink(channel.host, channel.port, self._timeout())
        return await self.link.send(payload, control_id(delivery.event_id))

    def _message(self, channel: Mllp, delivery: Delivery, resources: dict[str, Resource]) -> bytes:
        focus = resources.get(delivery.event.focus.reference)
        subject = patient_reference(focus)
        patient = resources.get(subject) if subject else None
        return build_message(
            delivery,
            channel,
            topic=self.sub.spec.topic,
            focus=focus,
            patient=patient,
            sending_application=self.w.config.sending_application,
            sending_facility=self.w.config.sending_facility,
            now=self.w.clock(),
        )

    def _bundle(self, channel: RestHook, delivery: Delivery, resources: dict[str, Resource]) -> bytes:
        view = StatusView(self.sub.id, self.sub.spec.topic, "active", self.sub.events_since_start)
        bundle = notification_bundle(
            view,
            self.w.config.base_url,
            "event-notification",
            [delivery],
            resources,
            channel.content,
            self.w.clock(),
            stable_uuid(delivery.event_id),
        )
        return _body(bundle)

    def _timeout(self) -> float:
        return self.sub.spec.timeout_s or self.w.config.default_timeout_s

    async def _post(self, channel: RestHook, body: bytes, extra: dict[str, str]) -> SendResult:
        headers = dict(channel.headers)
        headers.update(extra)
        headers["Content-Type"] = FHIR_JSON
        headers[SUBSCRIPTION_HEADER] = self.sub.id
        headers[SIGNATURE_HEADER] = sign(body, self.sub.secret)
        return await self.w.rest.post(channel.endpoint, body, headers, self._timeout())

    # -- recording ------------------------------------------------------------------------------

    def _delivered(self, batch: _Batch, delivery: Delivery, result: SendResult) -> None:
        now = self.w.clock()
        attempt = Attempt(now, "delivered", result.code, result.latency_ms).to_doc()
        batch.updates.append(
            UpdateOne(
                {"_id": delivery.id, "status": "pending"},
                {
                    "$set": {"status": "delivered", "delivered_at": now},
                    "$unset": {"next_attempt_at": "", "last_error": ""},
                    "$push": {"attempts": {"$each": [attempt], "$slice": -KEPT_ATTEMPTS}},
                    "$inc": {"attempt_count": 1},
                },
            )
        )
        batch.last = {"event_number": delivery.event_number, "event_id": delivery.event_id, **attempt}
        self.w.stats.delivered += 1

    async def _record(self, batch: _Batch) -> None:
        """Record delivered events; renew the lane's lease when a third of it has gone."""
        if not batch.updates:
            return
        await self.w.store.deliveries.bulk_write(batch.updates, ordered=False)
        self.last_delivery = batch.last
        batch.updates, batch.last = [], None
        if time.monotonic() - self.renewed > self.w.config.lease_s / 3:
            lease_until = self.w.clock() + timedelta(seconds=self.w.config.lease_s)
            await self.w.store.subscriptions.update_one(
                {"_id": self.sub.id, "lane.owner": self.token},
                {"$set": {"last_delivery": self.last_delivery, "lane.until": lease_until}},
            )
            self.renewed, self.last_delivery = time.monotonic(), None

    async def _failed(self, delivery: Delivery, result: SendResult) -> datetime | None:
        """Record a failed attempt: retry later (when), or dead-letter (None) and put the subscription in error."""
        now = self.w.clock()
        attempts = delivery.attempt_count + 1
        next_at = (
            None
            if result.permanent
            else self.w.policy.next_attempt(attempts, delivery.age_from, now, result.retry_after_s)
        )
        attempt = Attempt(
            now, "retry" if next_at else "dead", result.code, result.latency_ms, result.error, result.retry_after_s
        ).to_doc()
        push = {"attempts": {"$each": [attempt], "$slice": -KEPT_ATTEMPTS}}
        error = result.error or result.code
        if next_at is not None:
            await self.w.store.deliveries.update_one(
                {"_id": delivery.id, "status": "pending"},
                {
                    "$set": {"next_attempt_at": next_at, "last_error": error},
                    "$push": push,
                    "$inc": {"attempt_count": 1},
                },
            )
            self.w.stats.retried += 1
            log.info(
                "notification failed; will retry",
                extra={
                    "subscription": self.sub.id,
                    "event": delivery.event_number,
                    "code": result.code,
                    "retry_at": next_at.isoformat(),
                },
            )
            return next_at
        reason = (
            f"event {delivery.event_number} ({delivery.event.focus.reference}) dead-lettered after {attempts} "
            f"attempt(s): {error}"
        )
        await self.w.store.deliveries.update_one(
            {"_id": delivery.id, "status": "pending"},
            {
                "$set": {"status": "dead", "dead_at": now, "last_error": error},
                "$push": push,
                "$inc": {"attempt_count": 1},
                "$unset": {"next_attempt_at": ""},
            },
        )
        await self.w.store.subscriptions.update_one(
            {"_id": self.sub.id, "status": {"$in": list(DELIVERING)}}, {"$set": {"status": "error", "error": reason}}
        )
        self.w.stats.dead += 1
        log.warning(
            "notification dead-lettered; subscription in error",
            extra={"subscription": self.sub.id, "event": delivery.event_number},
        )
        return None

    async def _release(self, due_at: datetime | None, *, guarded: bool = True) -> bool:
        """Give the lane up, due again at ``due_at`` (None: when woken). False when something woke it
        since it was read (the lane goes on)."""
        query: dict[str, Any] = {"_id": self.sub.id, "lane.owner": self.token}
        if guarded:
            query["wake"] = self.sub.wake
        update: dict[str, Any] = {"$unset": {"lane": ""}, "$set": {}}
        if due_at is None:
            update["$unset"]["due_at"] = ""
        else:
            update["$set"]["due_at"] = due_at
        if self.last_delivery is not None:
            update["$set"]["last_delivery"] = self.last_delivery
        if not update["$set"]:
            del update["$set"]
        result = await self.w.store.subscriptions.update_one(query, update)
        if result.matched_count:
            self.last_delivery = None
            return True
        still_mine = await self.w.store.subscriptions.count_documents({"_id": self.sub.id, "lane.owner": self.token})
        return still_mine == 0


def _body(bundle: Resource) -> bytes:
    return json.dumps(bundle, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
