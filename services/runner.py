"""Running the hub: the database it uses, and the parts it serves, in one process or one part each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import uvicorn

from shared import heap
from shared.metrics import MetricsServer, Scrape
from shared.mongod import clear_state, read_state, start_owned, stop_daemon
from shared.settings import Settings
from shared.store import Store, connect
from shared.supervision import Backoff, Loop, TaskRegistry, supervise

from .api.app import create_app
from .intake.service import IntakeService
from .mapper.service import MapperService, load_mapping
from .mapper.worker import WorkerConfig, WorkerStats
from .notifier.http import client_session
from .notifier.service import NotifierService, NotifierStats
from .pathway.scanner import SlaScanner
from .serving import QuietServer
from .signals import stop_on_signals

log = logging.getLogger(__name__)
T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run the hub's event loop: uvloop where it is installed (Linux, macOS; about a fifth less CPU per
    message in intake), the standard loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[str]:
    """The MongoDB URI to use: ``MONGODB_URI``; else the local mongod already running for this state
    folder (``mscc db start``, or another hub process's, which this one uses and leaves running); else a
    local mongod started now in ``MSCC_STATE_DIR`` (one left behind by a killed hub process is taken over)
    and stopped on exit, after everything that uses it."""
    if settings.mongodb_uri:
        yield settings.mongodb_uri
        return
    running = read_state(settings.state_dir)
    if running is not None and not running.orphaned:
        log.info("using the local MongoDB already running", extra={"port": running.port, "pid": running.pid})
        yield running.uri
        return
    if running is not None:
        log.warning("taking over the local MongoDB a stopped hub process left running", extra={"port": running.port})
        try:
            yield running.uri
        finally:
            await asyncio.to_thread(stop_daemon, settings.state_dir)
            log.info("stopped the local MongoDB")
        return
    mongod = await asyncio.to_thread(
        start_owned,
        settings.state_dir,
        settings.cache_dir,
        settings.mongod_cache_gb,
        os.getpid(),
        settings.mongod_transaction_lifetime_s,
    )
    log.info("started a local MongoDB", extra={"port": mongod.port, "dbpath": str(mongod.dbpath)})
    pid = mongod.state().pid
    try:
        yield mongod.uri
    finally:
        await asyncio.to_thread(mongod.stop)
        clear_state(settings.state_dir, pid)
        log.info("stopped the local MongoDB")


PARTS = ("intake", "mapper", "notifier")


@contextlib.asynccontextmanager
async def opened_store(settings: Settings) -> AsyncIterator[Store]:
    """The store on the database ``database()`` chooses, its schema ensured; closed on exit."""
    async with database(settings) as uri:
        client = connect(uri, max_commit_ms=round(settings.transaction_max_commit_s * 1000))
        try:
            store = Store(client, settings.db_name)
            await store.ensure_schema(audit_retention_days=settings.audit_retention_days)
            yield store
        finally:
            await client.close()


def stale_after(settings: Settings, interval_s: float) -> float:
    """How long a task of this cycle interval may go without completing a cycle before it counts as
    stalled (``/readyz`` 503): ``MSCC_TASK_STALL_FACTOR`` x the interval + ``MSCC_TASK_STALL_MARGIN_S``."""
    return settings.task_stall_factor * interval_s + settings.task_stall_margin_s


async def serve(
    settings: Settings,
    *,
    parts: tuple[str, ...] = PARTS,
    demo: bool = False,
    registry: TaskRegistry | None = None,
    settle_heap: bool = True,
) -> None:
    """Serve the given parts until SIGINT/SIGTERM; with ``demo``, play the demo (``services/demo/``) once
    intake is up. Once started, the process's heap is settled (``shared/heap.py``) unless ``settle_heap``
    is false (a caller that is not a process of its own, such as a test).

    Every background loop (mapper worker, SLA scanner and report follower, notifier fan-out and delivery)
    runs supervised (``shared/supervision.py``): restarted with backoff if it stops, its cycles recorded
    in ``registry`` (one per process), which the API's ``/readyz`` reports on.

    Stopping (``docs/operations.md``): intake stops accepting (HTTP and MLLP at once), answers what is in
    flight and keeps what is half read; the mapper finishes or releases the batch in hand, the notifier
    the attempts in hand; each has ``MSCC_STOP_TIMEOUT_S``, and whatever still runs a little after that
    is cancelled (open transactions are aborted as their sessions end), so the process exits in bounded
    time.
    """
    if demo:  # the demo's receiver is on loopback: allow its callbacks (in development only)
        from .demo import demo_settings

        settings = demo_settings(settings)
    mapping = load_mapping(settings.mapping_file) if "mapper" in parts else None
    registry = registry or TaskRegistry()
    backoff = Backoff(settings.task_restart_base_s, settings.task_restart_max_s)
    async with opened_store(settings) as store, contextlib.AsyncExitStack() as stack:
        stop = asyncio.Event()
        workers: list[asyncio.Task[object]] = []

        def supervised(name: str, loop: Loop, interval_s: float) -> None:
            task = supervise(
                name, loop, stop, registry, stale_after_s=stale_after(settings, interval_s), backoff=backoff
            )
            workers.append(asyncio.create_task(task, name=name))

        if "mapper" in parts:
            config = WorkerConfig.from_settings(settings)
            mapper = MapperService(store, config, mapping=mapping)
            supervised("mapper", lambda hb: mapper.run(stop, heartbeat=hb), config.idle_poll_s)
            # SLA clocks and MRI-report follow-up run beside the mapper (any number may run: idempotent).
            scanner = SlaScanner.from_settings(store, settings)
            interval = settings.sla_scan_interval_s
            supervised("pathway", lambda hb: scanner.run(stop, interval, hb), interval)
        if "notifier" in parts:
            session = await stack.enter_async_context(client_session(settings))  # closed after the workers
            notifier = NotifierService(store, settings, session)
            notifier_run = notifier.run(stop, registry=registry, backoff=backoff)  # supervises its own loops
            workers.append(asyncio.create_task(notifier_run, name="notifier"))
        if "intake" not in parts and settings.metrics_port is not None:
            # No HTTP API in this process: /metrics on its own port (MSCC_METRICS_PORT), stopped on exit.
            scrape = Scrape(store, registry, settings.metrics_timeout_s)
            stack.push_async_callback(MetricsServer.start(settings.metrics_host, settings.metrics_port, scrape).stop)
        stop_on_signals(stop)
        try:
            if "intake" in parts:
                await _serve_intake(settings, store, demo, registry, stop, settle_heap)
            else:
                if settle_heap:
                    heap.settle()
                await stop.wait()
        finally:
            stop.set()
            await _stop_workers(workers, settings.stop_timeout_s + STOP_GRACE_S)
        log.info("stopped", extra={"parts": ",".join(parts)})


STOP_GRACE_S = 2.0  # beyond MSCC_STOP_TIMEOUT_S: what the workers need to release what they cut


async def _stop_workers(workers: list[asyncio.Task[object]], timeout_s: float) -> None:
    """Wait for the workers to stop by themselves; cancel any still running after ``timeout_s``."""
    if not workers:
        return
    _, late = await asyncio.wait(workers, timeout=timeout_s)
    if late:
        log.warning(
            "stopping: background tasks still running were cancelled",
            extra={"tasks": ",".join(sorted(t.get_name() for t in late)), "count": len(late)},
        )
        for task in late:
            task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)


async def drain(settings: Settings) -> WorkerStats:
    """``mscc mapper --burst``: map everything that is ready, then return."""
    mapping = load_mapping(settings.mapping_file)  # a bad file fails before any database work
    async with opened_store(settings) as store:
        config = WorkerConfig.from_settings(settings)
        return await MapperService(store, config, mapping=mapping).run(asyncio.Event(), burst=True)


async def drain_notifier(settings: Settings) -> NotifierStats:
    """``mscc notifier --burst``: fan out what is ready and deliver what is due now, then return."""
    async with opened_store(settings) as store, client_session(settings) as session:
        return await NotifierService(store, settings, session).run(asyncio.Event(), burst=True)


async def _serve_intake(
    settings: Settings, store: Store, demo: bool, registry: TaskRegistry, stop: asyncio.Event, settle_heap: bool
) -> None:
    """HTTP and MLLP until ``stop``: then both stop accepting at once; HTTP finishes the requests in
    flight, and the MLLP listener answers what it has committed and keeps what it has not (within
    ``MSCC_STOP_TIMEOUT_S``), before the workers are stopped."""
    service = IntakeService(settings, store)
    await service.start()
    log.info(
        "intake ready",
        extra={
            "http": f"{settings.http_host}:{settings.http_port}",
            "mllp": f"{settings.mllp_host}:{service.mllp.port}",
        },
    )
    config = uvicorn.Config(
        create_app(service, registry),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=max(1, round(settings.stop_timeout_s)),
    )
    server = QuietServer(config)
    if settle_heap:  # everything this process keeps is made: full collections skip it from now on
        heap.settle()
    demo_task = asyncio.create_task(_demo(settings, service, server)) if demo else None
    mllp_stopping = asyncio.create_task(_stop_mllp_on(stop, service), name="mllp-stop")
    try:
        await server.serve_until(stop)
    finally:
        stop.set()
        if demo_task is not None:
            demo_task.cancel()
            await asyncio.gather(demo_task, return_exceptions=True)
        await mllp_stopping
        await service.stop()


async def _stop_mllp_on(stop: asyncio.Event, service: IntakeService) -> None:
    """Stop the MLLP listener as soon as ``stop`` is set, while HTTP finishes its own requests."""
    await stop.wait()
    await service.mllp.stop(service.settings.stop_timeout_s)


async def _demo(settings: Settings, service: IntakeService, server: uvicorn.Server) -> None:
    from .demo import run_demo

    while not server.started:  # noqa: ASYNC110 - uvicorn offers no start event
        await asyncio.sleep(0.05)
    http_port = server.servers[0].sockets[0].getsockname()[1] if server.servers else settings.http_port
    await run_demo(settings, service.store, http_port, service.mllp.port)
