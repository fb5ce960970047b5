"""Running the hub: the database it uses, and the parts it serves, in one process or one part each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import uvicorn

from shared.mongod import LocalMongod, find_mongod, read_state
from shared.settings import Settings
from shared.store import Store, connect

from .intake.app import create_app
from .intake.service import IntakeService

log = logging.getLogger(__name__)


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


async def serve(settings: Settings, *, demo: bool = False) -> None:
    """Serve intake (HTTP + MLLP) until SIGINT/SIGTERM; with ``demo``, send demo traffic once up."""
    async with database(settings) as uri:
        client = connect(uri)
        try:
            store = Store(client, settings.db_name)
            await store.ensure_schema()
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
                await server.serve()
            finally:
                if demo_task is not None:
                    demo_task.cancel()
                await service.stop()
        finally:
            await client.close()


async def _demo(settings: Settings, service: IntakeService, server: uvicorn.Server) -> None:
    from .demo import send_demo_traffic

    while not server.started:  # noqa: ASYNC110 - uvicorn offers no start event
        await asyncio.sleep(0.05)
    await send_demo_traffic(settings, service.mllp.port)
