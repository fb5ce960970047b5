"""Running the hub: the database it uses, and the parts it serves, in one process or one part each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import uvicorn

from shared.mongod import LocalMongod, find_mongod, read_state
from shared.settings import Settings
from shared.store import Store, connect

from .intake.app import create_app
from .intake.service import IntakeService
from .mapper.service import MapperService, load_mapping
from .mapper.worker import WorkerStats
from .notifier.http import client_session
from .notifier.service import NotifierService, NotifierStats
from .pathway.scanner import SlaScanner

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
    """The MongoDB URI to use: ``MONGODB_URI``, else the running ``mscc db start`` server, else a local
    mongod started now (in ``MSCC_STATE_DIR``) and stopped on exit."""
    if settings.mongodb_uri:
        yield settings.mongodb_uri
        return
    running = read_state(settings.state_dir)
    if running is not None:
        log.info("using the local MongoDB started by 'mscc db start'", extra={"port": running.port})
        yield running.uri
        return
    binary = await asyncio.to_thread(find_mongod, settings.cache_dir)
    mongod = LocalMongod(binary, settings.state_dir / "mongodb", cache_gb=settings.mongod_cache_gb)
    await asyncio.to_thread(mongod.start)
    log.info("started a local MongoDB", extra={"port": mongod.port, "dbpath": str(mongod.dbpath)})
    try:
        yield mongod.uri
    finally:
        await asyncio.to_thread(mongod.stop)
        log.info("stopped the local MongoDB")


PARTS = ("intake", "mapper", "notifier")


@contextlib.asynccontextmanager
async def opened_store(settings: Settings) -> AsyncIterator[Store]:
    """The store on the database ``database()`` chooses, its schema ensured; closed on exit."""
    async with database(settings) as uri:
        client = connect(uri)
        try:
            store = Store(client, settings.db_name)
            await store.ensure_schema()
            yield store
        finally:
            await client.close()


async def serve(settings: Settings, *, parts: tuple[str, ...] = PARTS, demo: bool = False) -> None:
    """Serve the given parts until SIGINT/SIGTERM; with ``demo``, send demo traffic once intake is up.

    The mapper finishes the batch in hand, and the notifier the attempts in hand, before the process exits.
    """
    mapping = load_mapping(settings.mapping_file) if "mapper" in parts else None
    async with opened_store(settings) as store, contextlib.AsyncExitStack() as stack:
        stop = asyncio.Event()
        workers: list[asyncio.Task[object]] = []
        if "mapper" in parts:
            mapper = MapperService(store, mapping=mapping)
            workers.append(asyncio.create_task(mapper.run(stop), name="mapper"))
            # SLA clocks and MRI-report follow-up run beside the mapper (any number may run: idempotent).
            scanner = SlaScanner.from_settings(store, settings)
            workers.append(asyncio.create_task(scanner.run(stop, settings.sla_scan_interval_s), name="pathway"))
        if "notifier" in parts:
            session = await stack.enter_async_context(client_session(settings))  # closed after the workers
            notifier = NotifierService(store, settings, session)
            workers.append(asyncio.create_task(notifier.run(stop), name="notifier"))
        try:
            if "intake" in parts:
                await _serve_intake(settings, store, demo)
            else:
                await _wait_for_signal(stop)
        finally:
            stop.set()
            await asyncio.gather(*workers)


async def drain(settings: Settings) -> WorkerStats:
    """``mscc mapper --burst``: map everything that is ready, then return."""
    mapping = load_mapping(settings.mapping_file)  # a bad file fails before any database work
    async with opened_store(settings) as store:
        return await MapperService(store, mapping=mapping).run(asyncio.Event(), burst=True)


async def drain_notifier(settings: Settings) -> NotifierStats:
    """``mscc notifier --burst``: fan out what is ready and deliver what is due now, then return."""
    async with opened_store(settings) as store, client_session(settings) as session:
        return await NotifierService(store, settings, session).run(asyncio.Event(), burst=True)


async def _wait_for_signal(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve_intake(settings: Settings, store: Store, demo: bool) -> None:
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
        create_app(service),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        lifespan="off",
        access_log=False,
    )
    server = uvicorn.Server(config)
    demo_task = asyncio.create_task(_demo(settings, service, server)) if demo else None
    try:
        await server.serve()  # returns on SIGINT/SIGTERM
    finally:
        if demo_task is not None:
            demo_task.cancel()
        await service.stop()


async def _demo(settings: Settings, service: IntakeService, server: uvicorn.Server) -> None:
    from .demo import send_demo_traffic

    while not server.started:  # noqa: ASYNC110 - uvicorn offers no start event
        await asyncio.sleep(0.05)
    await send_demo_traffic(settings, service.mllp.port)
