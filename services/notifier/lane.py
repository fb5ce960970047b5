"""A lane: one claimed subscription's deliveries, sent in event-number order through its channel.

In a lane:

- status "requested": the channel's handshake first (rest-hook: a ``handshake`` Bundle; its success
  makes the subscription "active"; failures are retried like events, then the subscription goes to
  "error"). A channel without a handshake (MLLP) is "active" from the start;
- only the lowest-numbered delivery not yet delivered is ever sent, so event n+1 never goes before n is
  delivered, dead-lettered or skipped; delivered ones are recorded in batches (at-least-once: a crash
  between sending and recording sends them again, with the same event id);
- a failure is recorded and retried later (``RetryPolicy``), and the lane stops until then;
- past the attempt or age limit (or at once when the channel says the receiver refused the content) the
  delivery is dead-lettered: it stays at the head, the subscription's status becomes "error" with the
  reason, and later events wait until an operator redelivers or skips it (``$redeliver``, ``$skip``).

Releasing a lane re-reads nothing: it is guarded by the subscription's ``wake`` counter, which every
change that should wake the lane increments (new events, redelivery, skip, update), so a lane never
goes to sleep over work that arrived while it was finishing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pymongo import UpdateOne
from pymongo.errors import PyMongoError

from shared import correlation
from shared.fhir import Resource
from shared.metrics import DELIVERIES
from shared.store import Document

from .attempts import dead_reason, delivered_update, failed_update, pending_guard
from .channels import Channel, ChannelConfig, Connection, Payload, Sender, channel
from .model import DELIVERING, Delivery, SendResult, Subscription
from .payload import load_resources

if TYPE_CHECKING:
    from .delivery import DeliveryWorker

log = logging.getLogger(__name__)


@dataclass
class _Batch:
    """Delivered events waiting to be recorded."""

    updates: list[UpdateOne] = field(default_factory=list)
    last: Document | None = None


class Lane:
    """One claimed subscription, delivered in order until it has nothing due, is blocked, or its slice ends.
    ``KeyError``/``ValueError`` if the subscription document cannot be read (its channel unknown too)."""

    def __init__(self, worker: DeliveryWorker, doc: Document) -> None:
        self.w = worker
        self.token: str = doc["lane"]["owner"]
        self.sub = Subscription.from_doc(doc)
        self.doc = doc
        channel(self.sub.spec.channel.kind)  # a channel no longer registered: the lane cannot run
        self.connection: Connection | None = None
        self.connected: tuple[ChannelConfig, float] | None = None  # what the connection was opened with
        self.last_delivery: Document | None = None  # written with the next lease renewal or the release
        self.renewed = time.monotonic()

    @property
    def channel(self) -> Channel[Any]:
        # Looked up per use: an update may give the subscription another channel while its lane runs.
        return channel(self.sub.spec.channel.kind)

    async def run(self, stop: asyncio.Event | None = None) -> int:
        """Deliver; the number of attempts made. A database error ends the lane (its lease expires and
        another worker takes the subscription over)."""
        attempts = 0
        try:
            async with self.w.leases.holding(self.token):
                attempts = await self._run(stop)
        except PyMongoError:
            log.exception("notifier lane: database error; the lease will expire", extra={"subscription": self.sub.id})
        finally:
            if self.connection is not None:
                await self.connection.close()
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
        """Handshake (if the channel has one) and make the subscription active; False when the lane must stop."""
        now = self.w.clock()
        result = SendResult(True, "none", 0.0)
        payload = self.channel.handshake(self.sub.spec.channel, self.sub, self._sender())
        if payload is not None:
            result = await self._attempt(payload)
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

    def _sender(self) -> Sender:
        config = self.w.config
        return Sender(config.base_url, config.sending_application, config.sending_facility, self.w.clock())

    async def _resources(self, batch: list[Delivery]) -> dict[str, Resource]:
        """What the channel builds the batch's notifications from, by reference."""
        needs = self.channel.needs(self.sub.spec.channel)
        if needs == "nothing":
            return {}
        return await load_resources(self.w.store, batch, patients=needs == "focus-and-patient")

    async def _send(self, delivery: Delivery, resources: dict[str, Resource]) -> SendResult:
        """One attempt. A notification that cannot even be built (unexpected content, a bug) is a
        permanent failure: dead-lettered with the reason, never retried in a loop."""
        with correlation.bound(delivery.event.correlation_id):  # what the attempt logs names the message
            try:
                payload = self.channel.prepare(self.sub.spec.channel, self.sub, delivery, resources, self._sender())
            except Exception as exc:
                log.exception("notification could not be built", extra={"subscription": self.sub.id})
                why = f"the notification could not be built: {exc!r}"
                return SendResult(False, "unbuildable", 0.0, why, None, True)
            return await self._attempt(payload)

    async def _attempt(self, payload: Payload) -> SendResult:
        """Send over the lane's connection (opened on first use) and let the channel judge the answer."""
        config = self.sub.spec.channel
        wanted = (config, self.sub.spec.timeout_s or self.w.config.default_timeout_s)
        if self.connection is not None and self.connected != wanted:
            await self.connection.close()  # the subscription was updated meanwhile: its new endpoint
            self.connection = None
        if self.connection is None:
            self.connection = self.channel.connect(config, self.w.transport, wanted[1])
            self.connected = wanted
        answer = await self.connection.send(payload)
        verdict = self.channel.interpret(answer, payload, self.w.clock())
        if verdict.reconnect:
            await self.connection.close()
        return verdict.result

    # -- recording ------------------------------------------------------------------------------

    def _delivered(self, batch: _Batch, delivery: Delivery, result: SendResult) -> None:
        update, batch.last = delivered_update(delivery, result, self.w.clock())
        batch.updates.append(update)
        self.w.stats.delivered += 1
        self._counted("delivered")
        extra = {"subscription": self.sub.id, "event": delivery.event_number, "code": result.code}
        log.info("notification delivered", extra={**extra, **_traced(delivery)})

    def _counted(self, outcome: str) -> None:
        DELIVERIES.labels(self.sub.id, self.sub.spec.channel.kind, outcome).inc()

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
        next_at = (
            None
            if result.permanent
            else self.w.policy.next_attempt(delivery.attempt_count + 1, delivery.age_from, now, result.retry_after_s)
        )
        await self.w.store.deliveries.update_one(pending_guard(delivery), failed_update(result, now, next_at))
        if next_at is not None:
            self.w.stats.retried += 1
            self._counted("retrying")
            log.info(
                "notification failed; will retry",
                extra={
                    "subscription": self.sub.id,
                    "event": delivery.event_number,
                    "code": result.code,
                    "retry_at": next_at.isoformat(),
                    **_traced(delivery),
                },
            )
            return next_at
        await self.w.store.subscriptions.update_one(
            {"_id": self.sub.id, "status": {"$in": list(DELIVERING)}},
            {"$set": {"status": "error", "error": dead_reason(delivery, result)}},
        )
        self.w.stats.dead += 1
        self._counted("dead")
        log.warning(
            "notification dead-lettered; subscription in error",
            extra={"subscription": self.sub.id, "event": delivery.event_number, **_traced(delivery)},
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


def _traced(delivery: Delivery) -> dict[str, str]:
    """The correlation id of a delivery's event, for its log lines (nothing when it carries none)."""
    cause = delivery.event.correlation_id
    return {correlation.FIELD: cause} if cause else {}
