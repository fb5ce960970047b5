"""``/readyz`` answers within a second when the database goes down, naming what is not ready."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from test_graceful_stop import CACHE

from services.api.app import create_app
from services.intake.service import IntakeService
from shared.mongod import LocalMongod, find_mongod
from shared.settings import Settings
from shared.store import Store, connect
from shared.supervision import Heartbeat, TaskRegistry, supervise


@pytest.fixture
async def own_mongod(tmp_path: Path) -> AsyncIterator[LocalMongod]:
    """A mongod of this test's own, which the test stops."""
    server = LocalMongod(find_mongod(Path(CACHE)), tmp_path / "db")
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def test_readyz_answers_within_a_second_when_the_database_is_down(
    settings: Settings, own_mongod: LocalMongod
) -> None:
    client = connect(own_mongod.uri)
    store = Store(client, settings.db_name)
    await store.ensure_schema()
    registry = TaskRegistry()
    stop = asyncio.Event()

    async def steady(heartbeat: Heartbeat) -> None:
        while not stop.is_set():
            heartbeat.beat()
            await asyncio.sleep(0.01)

    scanner = asyncio.create_task(supervise("pathway", steady, stop, registry, stale_after_s=60))
    service = IntakeService(settings, store)
    await service.start(mllp=False)
    try:
        transport = httpx.ASGITransport(app=create_app(service, registry))
        async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as http:
            await asyncio.sleep(0.05)
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["dependencies"] == {"database": "ok"}

            await asyncio.to_thread(own_mongod.stop)
            scanner.cancel()  # and a background task dies
            await asyncio.gather(scanner, return_exceptions=True)
            for _ in range(3):  # each time, not just the first
                started = time.monotonic()
                answer = await http.get("/readyz")
                took = time.monotonic() - started
                assert took < 1.0, took
                assert answer.status_code == 503
                body = answer.json()
                # refused at once, or no answer within MSCC_READYZ_TIMEOUT_S: either way, said at once
                database = body["dependencies"]["database"]
                assert database.startswith(("does not answer", "no answer within")), database
                assert body["reason"].startswith(f"database: {database}")
                assert "pathway: dead" in body["reason"] and body["unhealthy_tasks"] == ["pathway"]
    finally:
        stop.set()
        await asyncio.gather(scanner, return_exceptions=True)
        # Nothing is left to write: the committer stops at once.
        await service.stop()
        await client.close()
