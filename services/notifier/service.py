"""The notifier service: fan-out and delivery, woken by outbox inserts, until stopped.

``NotifierService(store, settings, session)`` takes the process's one ``aiohttp.ClientSession`` (made by
``http.client_session`` in the runner's start-up). ``run(stop)`` fans out and delivers until ``stop`` is
set; ``run(stop, burst=True)`` fans out and delivers everything due now, then returns (tests, ``mscc
notifier --burst``). A change stream on the outbox wakes the fan-out as soon as the mapper commits
(where the server supports change streams; polling every ``idle_poll_s`` otherwise), and the fan-out
wakes this process's delivery lanes directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from pymongo import ASCENDING, IndexModel
from pymongo.errors import OperationFailure, PyMongoError

from shared.settings import Settings
from shared.store import Store
from shared.supervision import Backoff, Heartbeat, TaskRegistry, supervise

from .delivery import DeliveryConfig, DeliveryStats, DeliveryWorker, first_of
from .fanout import FanOut
from .retry import RetryPolicy

log = logging.getLogger(__name__)
RETENTION_INDEX = "delivered_ttl"


@dataclass
class NotifierStats:
    events: int = 0
    deliveries: int = 0
    delivery: DeliveryStats | None = None
    fanout_failed: int = 0
    fanout_dead: int = 0

    def summary(self) -> str:
        d = self.delivery or DeliveryStats()
        return (
            f"events {self.events}, deliveries queued {self.deliveries}, delivered {d.delivered}, "
            f"retrying {d.retried}, dead-lettered {d.dead}, handshakes {d.handshakes}, "
            f"events the fan-out failed on {self.fanout_failed} (dead-lettered {self.fanout_dead})"
        )


class NotifierService:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        session: aiohttp.ClientSession,
        *,
        clock: Callable[[], datetime] | None = None,
        rng: random.Random | None = None,
        fanout_batch: int = 100,
        idle_poll_s: float = 0.25,
        **delivery: Any,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock or (lambda: datetime.now(UTC))
        self.idle_poll_s = idle_poll_s
        self.fanout = FanOut(
            store,
            self.clock,
            fanout_batch,
            max_attempts=settings.notifier_fanout_max_attempts,
            retry_s=settings.notifier_fanout_retry_s,
            service_ods=settings.receiving_facility,
        )
        config = DeliveryConfig.from_settings(settings, idle_poll_s=idle_poll_s, **delivery)
        self.delivery = DeliveryWorker(store, session, RetryPolicy.from_settings(settings, rng), config, self.clock)

    @property
    def stats(self) -> NotifierStats:
        return NotifierStats(
            self.fanout.dispatched, self.fanout.created, self.delivery.stats, self.fanout.failed, self.fanout.dead
        )

    async def prepare(self) -> None:
        """Delivered notifications are kept ``MSCC_NOTIFIER_RETENTION_DAYS`` (for ``$events``), then removed
        by a TTL index; pending and dead-lettered ones are kept until they are dealt with."""
        seconds = self.settings.notifier_retention_days * 86400
        index = IndexModel([("delivered_at", ASCENDING)], name=RETENTION_INDEX, expireAfterSeconds=seconds)
        try:
            await self.store.deliveries.create_indexes([index])
        except OperationFailure:  # the retention changed: adjust the existing index
            await self.store.db.command(
                {"collMod": "deliveries", "index": {"name": RETENTION_INDEX, "expireAfterSeconds": seconds}}
            )

    async def run_once(self) -> int:
        """Fan out everything ready, then run every due lane once; how much was done (0: nothing due)."""
        done = 0
        while (n := await self.fanout.run_once()) > 0:
            done += n
        return done + await self.delivery.run_once()

    async def run(
        self,
        stop: asyncio.Event,
        *,
        burst: bool = False,
        registry: TaskRegistry | None = None,
        backoff: Backoff | None = None,
    ) -> NotifierStats:
        """Work until ``stop`` (or, with ``burst``, until nothing is due now). Graceful: each lane finishes
        the attempt in hand and releases its subscription.

        With ``registry``, the fan-out and delivery loops run supervised (``shared/supervision.py``):
        registered as "notifier-fanout" and "notifier-delivery", restarted with ``backoff`` if they stop."""
        await self.prepare()
        log.info("notifier running", extra={"owner": self.delivery.owner, "burst": burst})
        if burst:
            while not stop.is_set() and await self.run_once():
                pass
            return self.stats
        outbox_woken = asyncio.Event()
        lanes_woken = asyncio.Event()
        registry = registry or TaskRegistry()

        def supervised(name: str, loop: Callable[[Heartbeat], Any], interval: float) -> asyncio.Task[None]:
            stale = self.settings.task_stall_factor * interval + self.settings.task_stall_margin_s
            return asyncio.create_task(
                supervise(name, loop, stop, registry, stale_after_s=stale, backoff=backoff), name=name
            )

        tasks = [
            asyncio.create_task(self._watch_outbox(stop, outbox_woken), name="notifier-watch"),
            supervised(
                "notifier-fanout", lambda hb: self._fan_out(stop, outbox_woken, lanes_woken, hb), self.idle_poll_s * 4
            ),
            supervised(
                "notifier-delivery",
                lambda hb: self.delivery.run(stop, lanes_woken, hb),
                self.delivery.config.idle_poll_s,
            ),
        ]
        try:
            await stop.wait()
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self.stats

    async def _fan_out(
        self, stop: asyncio.Event, woken: asyncio.Event, lanes: asyncio.Event, heartbeat: Heartbeat | None = None
    ) -> None:
        heartbeat = heartbeat or Heartbeat.none()
        while not stop.is_set():
            woken.clear()
            try:
                done = await self.fanout.run_once()
                heartbeat.beat()
            except Exception as exc:  # the database, or a bug: say so, pause, and try again (nothing is half done).
                # One event the fan-out fails on does not come here: it is recorded on its outbox event.
                log.exception("notifier fan-out failed; pausing before the next batch")
                heartbeat.failed(exc)
                done = 0
            if done:
                lanes.set()
                if done >= self.fanout.batch_size:
                    continue  # more may be ready; otherwise an insert during this batch has set ``woken``
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(first_of(stop, woken), self.idle_poll_s * 4)

    async def _watch_outbox(self, stop: asyncio.Event, woken: asyncio.Event) -> None:
        """Set ``woken`` on every outbox insert; returns quietly (polling remains) where the server
        has no change streams."""
        while not stop.is_set():
            try:
                async with await self.store.outbox.watch(
                    [{"$match": {"operationType": "insert"}}], max_await_time_ms=250
                ) as stream:
                    while not stop.is_set():
                        if await stream.try_next() is not None:
                            woken.set()
            except OperationFailure as exc:
                log.info("no change streams on this server; the notifier polls", extra={"reason": str(exc)})
                return
            except PyMongoError:
                log.warning("outbox change stream interrupted; reopening", exc_info=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
