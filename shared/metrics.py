"""The hub's Prometheus metrics: one registry per process, counted where things happen, read at scrape time.

Counted as they happen (cheap: an increment, no I/O, nothing on the ACK path but that):

    mscc_messages_received_total{sender,type,channel,status}   intake: every inbound message record
    mscc_ack_seconds{channel}                                   intake: receipt to answer (mllp, http, fhir)
    mscc_mapper_messages_total{outcome}                         mapper: mapped, needs-review, failed, retried, dead
    mscc_notifier_deliveries_total{subscription,channel,outcome}  notifier: delivered, retrying, dead
    mscc_http_requests_total{method,route,status}               API: by route template, never the raw path

Read at scrape time (``Scrape``): the depths and ages of the queues from the database (each query and
the whole read bounded by ``MSCC_METRICS_TIMEOUT_S``, so a scrape never waits long on a slow database:
``mscc_metrics_database_up`` 0 says they could not be read), and every background task of the process
from its ``TaskRegistry`` (last completed cycle, restarts, health).

The HTTP process serves them on ``/metrics``; a process without the HTTP API (``mscc mapper``, ``mscc
notifier``) serves them on ``MSCC_METRICS_PORT`` with the standard library's small server, in a thread
(``shared/metrics_http.py``: ``/metrics`` and nothing else), which runs the database reads on the
process's event loop. ``docs/operations.md`` lists every metric.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from wsgiref.simple_server import WSGIServer

import prometheus_client
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from pymongo.errors import PyMongoError

from .metrics_http import serve
from .store import Store
from .supervision import TaskRegistry

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# One series per counter, not two: the ``_created`` timestamps add nothing a scraper needs.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry()
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    # The standard process metrics (CPU, memory, open files, GC) in this registry too.
    REGISTRY.register(_collector)


class Bounded:
    """The values of a label a sender chooses (MSH-4, MSH-9), bounded: the first ``limit`` distinct
    values are kept (each cut to ``width`` characters), later ones are counted as "other", so a sender
    that varies them cannot grow the number of series without end."""

    def __init__(self, limit: int = 200, width: int = 64) -> None:
        self._seen: set[str] = set()
        self._limit = limit
        self._width = width

    def __call__(self, value: str | None) -> str:
        value = (value or "").strip()[: self._width] or "unknown"
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return "other"
        self._seen.add(value)
        return value


SENDERS = Bounded()
MESSAGE_TYPES = Bounded()

MetricT = TypeVar("MetricT", bound=MetricWrapperBase)


class Children(Generic[MetricT]):
    """The children of a labelled metric, each kept once made: ``labels()`` checks and copies the label
    values on every call, a child kept here costs one dictionary lookup (once per message on intake's
    ACK path). It keeps no more children than the metric itself does."""

    def __init__(self, metric: MetricT) -> None:
        self._metric = metric
        self._made: dict[tuple[str, ...], MetricT] = {}

    def __call__(self, *values: str) -> MetricT:
        child = self._made.get(values)
        if child is None:
            child = self._made[values] = self._metric.labels(*values)
        return child


MESSAGES_RECEIVED = Counter(
    "mscc_messages_received",
    "Inbound messages stored by intake (or not), by sender (MSH-4, or the caller's ODS code for FHIR), "
    "type (MSH-9, or the FHIR resource or Bundle type), channel (mllp, http, fhir) and status "
    "(accepted, rejected, duplicate, not_stored)",
    ["sender", "type", "channel", "status"],
    registry=REGISTRY,
)
RECEIVED = Children(MESSAGES_RECEIVED)  # MESSAGES_RECEIVED's child for (sender, type, channel, status)
ACK_SECONDS = Histogram(
    "mscc_ack_seconds",
    "Seconds from receiving a message to its answer being ready: the ACK (mllp, http) or the FHIR answer (fhir)",
    ["channel"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
MAPPER_OUTCOMES = ("mapped", "needs-review", "failed", "retried", "dead")
MAPPER_MESSAGES = Counter(
    "mscc_mapper_messages",
    "Messages the mapper finished with, by outcome (mapped; needs-review: held for review, nothing written; "
    "failed, retried, dead)",
    ["outcome"],
    registry=REGISTRY,
)
for _outcome in MAPPER_OUTCOMES:
    # Every outcome's series exists from the start at 0, so the first increase of a rare one (a message
    # held for review, dead-lettered) is seen by ``increase()`` and alerts.
    MAPPER_MESSAGES.labels(_outcome)
DELIVERIES = Counter(
    "mscc_notifier_deliveries",
    "Notification attempts by subscription id, channel (rest-hook, mllp) and outcome (delivered, retrying, dead)",
    ["subscription", "channel", "outcome"],
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "mscc_http_requests",
    "HTTP requests answered, by method, route template (unmatched: no route) and status",
    ["method", "route", "status"],
    registry=REGISTRY,
)

_ACK = {channel: ACK_SECONDS.labels(channel) for channel in ("mllp", "http", "fhir")}


def ack_timer(channel: str) -> Callable[[object], None]:
    """Start timing one message's answer now; the callable returned (a task's done callback, say)
    records the seconds elapsed when it is called."""
    histogram = _ACK[channel]
    started = time.perf_counter()

    def answered(_: object = None) -> None:
        histogram.observe(time.perf_counter() - started)

    return answered


@dataclass(frozen=True)
class Scrape:
    """What is read when metrics are scraped: the queues in the database and this process's tasks."""

    store: Store
    tasks: TaskRegistry | None
    timeout_s: float

    async def families(self) -> list[Metric]:
        return [*self._tasks(), *await self._database()]

    def _tasks(self) -> list[Metric]:
        last = GaugeMetricFamily(
            "mscc_task_last_cycle_timestamp_seconds",
            "When each background task of this process last completed a cycle (Unix time; absent before its first)",
            labels=["task"],
        )
        restarts = CounterMetricFamily(
            "mscc_task_restarts", "Restarts of each background task of this process after it stopped", labels=["task"]
        )
        healthy = GaugeMetricFamily(
            "mscc_task_healthy",
            "1 while a background task runs and completes its cycles in time (/readyz)",
            labels=["task"],
        )
        if self.tasks is not None:
            problems = self.tasks.problems()
            for name in self.tasks.names():
                health = self.tasks.health(name)
                if health.last_cycle_wall is not None:
                    last.add_metric([name], health.last_cycle_wall.timestamp())
                restarts.add_metric([name], health.restarts)
                healthy.add_metric([name], 0 if name in problems else 1)
        return [last, restarts, healthy]

    async def _database(self) -> list[Metric]:
        up = GaugeMetricFamily(
            "mscc_metrics_database_up", "1 when the queue depths below could be read within MSCC_METRICS_TIMEOUT_S"
        )
        try:
            depths = await asyncio.wait_for(self._depths(), self.timeout_s)
        except (TimeoutError, PyMongoError) as exc:
            log.warning("metrics: queue depths not read", extra={"reason": type(exc).__name__})
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [up, *depths]

    async def _depths(self) -> list[Metric]:
        ms = max(1, round(self.timeout_s * 1000))
        store, now = self.store, datetime.now(UTC)

        async def count(collection: Any, query: dict[str, Any]) -> int:
            return int(await collection.count_documents(query, maxTimeMS=ms))

        async def age(collection: Any, query: dict[str, Any], field: str) -> float:
            doc = await collection.find_one(query, {field: 1}, sort=[(field, 1)], max_time_ms=ms)
            when = doc.get(field) if doc else None
            return max(0.0, (now - when).total_seconds()) if isinstance(when, datetime) else 0.0

        ready, lag, outbox, oldest, pending = await asyncio.gather(
            count(store.messages, {"status": "ready"}),
            age(store.messages, {"status": "ready"}, "received_at"),
            count(store.outbox, {"status": "ready"}),
            age(store.outbox, {"status": "ready"}, "created_at"),
            count(store.deliveries, {"status": "pending"}),
        )
        return [
            _gauge("mscc_mapper_queue_depth", "Messages ready for the mapper (its queue)", ready),
            _gauge("mscc_mapper_queue_lag_seconds", "Age of the oldest message ready for the mapper (0: none)", lag),
            _gauge("mscc_outbox_depth", "Outbox events not yet fanned out to subscriptions", outbox),
            _gauge("mscc_outbox_oldest_pending_seconds", "Age of the oldest outbox event not fanned out", oldest),
            _gauge("mscc_notifier_deliveries_pending", "Notifications waiting to be delivered", pending),
        ]


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class _Fixed:
    """Metric families already read, as a collector ``generate_latest`` can render."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


async def render(scrape: Scrape) -> bytes:
    """The text exposition: this process's counters, then what ``scrape`` reads now."""
    return generate_latest(REGISTRY) + generate_latest(_Fixed(await scrape.families()))


class _OnLoop:
    """The collector of prometheus_client's server thread: the counters, and ``scrape`` run on the
    process's event loop (where its database client lives), waited for a little beyond its own limit."""

    def __init__(self, scrape: Scrape, loop: asyncio.AbstractEventLoop) -> None:
        self._scrape = scrape
        self._loop = loop

    def collect(self) -> Iterable[Metric]:
        future = None
        try:
            future = asyncio.run_coroutine_threadsafe(self._scrape.families(), self._loop)
            read = future.result(self._scrape.timeout_s + 1.0)
        except Exception as exc:  # the loop is busy or stopping: the counters alone, and say so
            if future is not None:
                future.cancel()
            log.warning("metrics: scrape-time values not read", extra={"reason": type(exc).__name__})
            read = [_gauge("mscc_metrics_database_up", "1 when the queue depths could be read", 0)]
        return [*REGISTRY.collect(), *read]


class MetricsServer:
    """``/metrics`` on its own port for a process without the HTTP API (``MSCC_METRICS_PORT``)."""

    def __init__(self, server: WSGIServer) -> None:
        self._server = server

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @classmethod
    def start(cls, host: str, port: int, scrape: Scrape) -> MetricsServer:
        """Listen now (port 0: a free one); call from the event loop that ``scrape`` reads on."""
        server = serve(host, port, _OnLoop(scrape, asyncio.get_running_loop()))
        log.info("metrics listening", extra={"host": host, "port": int(server.server_address[1])})
        return cls(server)

    async def stop(self) -> None:
        await asyncio.to_thread(self._server.shutdown)
        self._server.server_close()
