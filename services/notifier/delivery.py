"""Delivery: the worker that claims lanes (one per subscription) and runs them, supervised.

A worker claims a subscription's *lane* (``lane: {owner, until}`` on the subscription, claim-and-lease:
an expired lease is claimable again) when its ``due_at`` has come, and runs it (``lane.Lane``): that
subscription's deliveries strictly in event-number order, through its channel (``channels``). Many lanes
run at once (one per subscription, up to ``lanes``), in any number of processes. A lane that fails
unexpectedly sets its subscription aside (status "error", logged); the others go on.

The lease is short (``MSCC_NOTIFIER_LEASE_S``) and renewed every ``MSCC_LEASE_HEARTBEAT_S`` while the
lane runs, attempts in hand included (``shared/leases.py``): a killed process's lanes are claimable
again within one lease, and a claim of an expired lane is logged as a takeover. On stop, each lane
finishes the attempt in hand and releases its subscription; a lane still running ``stop_timeout_s``
later is cancelled and its lease cleared with the subscription due at once, so another process
delivers it (the cut attempt is sent again, with the same event id: at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from pymongo import ReturnDocument
from pymongo.errors import PyMongoError

from shared.leases import LeaseKeeper
from shared.settings import Settings
from shared.store import Document, Store
from shared.supervision import Heartbeat

from .channels import Transport
from .endpoints import EndpointPolicy
from .lane import Lane
from .model import DELIVERING
from .retry import RetryPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryConfig:
    base_url: str
    sending_application: str = "MSCC-HUB"
    sending_facility: str = "REN"
    lanes: int = 32
    lane_batch: int = 50  # deliveries read at once by a lane
    lane_slice_s: float = 5.0  # a busy lane gives way after this long (others may be waiting)
    lease_s: float = 10.0  # renewed every heartbeat_s while the lane runs
    default_timeout_s: float = 10.0
    idle_poll_s: float = 0.25
    heartbeat_s: float = 3.0
    stop_timeout_s: float = 8.0  # lanes still running this long after stop are cut and released
    # The callback host rule, checked again when a channel connects (endpoints.py).
    endpoint_policy: EndpointPolicy = field(default_factory=EndpointPolicy)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> DeliveryConfig:
        values: dict[str, Any] = {
            "base_url": settings.base_url,
            "sending_application": settings.receiving_application,
            "sending_facility": settings.receiving_facility,
            "lanes": settings.notifier_lanes,
            "default_timeout_s": settings.notifier_timeout_s,
            "lease_s": settings.notifier_lease_s,
            "heartbeat_s": settings.lease_heartbeat_s,
            "stop_timeout_s": settings.stop_timeout_s,
            "endpoint_policy": EndpointPolicy.from_settings(settings),
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
    taken_over: int = 0  # lanes claimed after another worker's lease expired
    released: int = 0  # lanes cut at stop and released


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
        self.transport = Transport(session, clock, config.endpoint_policy)
        self.leases = LeaseKeeper(store.subscriptions, "lane", config.lease_s, config.heartbeat_s, clock)
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
        found = [
            d
            async for d in self.store.subscriptions.find(query, {"_id": 1, "lane": 1})
            .sort("due_at", 1)
            .limit(limit + len(busy))
            if d["_id"] not in busy
        ][:limit]
        won = []
        taken = 0
        for sub in found:
            lease = {
                "owner": f"{self.owner}:{uuid.uuid4().hex[:8]}",
                "until": now + timedelta(seconds=self.config.lease_s),
            }
            doc = await self.store.subscriptions.find_one_and_update(
                {"_id": sub["_id"], **query}, {"$set": {"lane": lease}}, return_document=ReturnDocument.AFTER
            )
            if doc is not None:
                won.append(doc)
                taken += "lane" in sub
        self.stats.lanes += len(won)
        if taken:
            self.stats.taken_over += taken
            log.warning(
                "took over lanes whose lease expired (the worker delivering them stopped)",
                extra={"lanes": taken, "taken_over_total": self.stats.taken_over},
            )
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
            await self._stop_lanes(running, tokens)

    async def _stop_lanes(self, running: dict[str, asyncio.Task[int]], tokens: dict[str, str]) -> None:
        """Give the running lanes ``stop_timeout_s`` to finish the attempt in hand and release their
        subscriptions; cut the rest and release them, due now, for another process to take at once."""
        _, late = await asyncio.wait(running.values(), timeout=self.config.stop_timeout_s)
        if not late:
            return
        cut = [sub_id for sub_id, task in running.items() if task in late]
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        try:
            result = await self.store.subscriptions.update_many(
                {"_id": {"$in": cut}, "lane.owner": {"$in": [tokens[s] for s in cut if s in tokens]}},
                {"$unset": {"lane": ""}, "$set": {"due_at": self.clock()}},
            )
            released = int(result.modified_count)
        except PyMongoError:
            log.exception("stopping: could not release the lanes cut; their leases will expire")
            return
        self.stats.released += released
        log.warning(
            "stopping: lanes still delivering were cut and released",
            extra={"lanes": released, "stop_timeout_s": self.config.stop_timeout_s},
        )

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


async def first_of(*events: asyncio.Event) -> None:
    """Return when any of ``events`` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
