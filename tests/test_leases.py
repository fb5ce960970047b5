"""Short leases kept alive by a heartbeat, taken over within seconds when their holder dies, and
transactions that neither a killed process nor a stuck commit can hold open for long."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from receivers import loopback_settings, serve_http
from test_graceful_stop import CACHE, SlowReceiver, part, part_env, subscription_with_one_event, wait_for_line

from services.mapper.model import MappingResult
from services.mapper.worker import MapperWorker, WorkerConfig
from services.notifier.http import client_session
from services.notifier.service import NotifierService
from shared.mongod import LocalMongod, find_mongod
from shared.retry import Conflict, TransactionRetry, run_transaction
from shared.settings import Settings
from shared.store import Document, Store, connect

LEASE_S = 1.0
HEARTBEAT_S = 0.25


def _message(n: int) -> Document:
    return {"_id": f"m{n:04d}", "n": n, "status": "ready", "received_at": datetime.now(UTC)}


def _slow_mapper(seconds: float) -> Any:
    def mapper(record: Document) -> MappingResult:
        time.sleep(seconds)  # CPU-bound mapping, as the real mapper's
        return MappingResult(resources=[{"resourceType": "Patient", "id": f"lease-{record['n']}"}])

    return mapper


async def test_a_batch_outlasting_its_lease_keeps_it_by_the_heartbeat(store: Store) -> None:
    await store.messages.insert_many([_message(n) for n in range(40)])
    config = WorkerConfig(batch_size=40, lease_s=LEASE_S, heartbeat_s=HEARTBEAT_S)
    slow = MapperWorker(store, _slow_mapper(0.08), config)  # about 3.2 s of mapping: over two leases
    rival = MapperWorker(store, _slow_mapper(0), config)
    started = time.monotonic()
    batch = asyncio.create_task(slow.run_once())
    while not await store.messages.count_documents({"status": "mapping"}):  # noqa: ASYNC110 - the database says
        await asyncio.sleep(0.01)
    stolen = 0
    while not batch.done():
        stolen += len(await rival.claim())
        await asyncio.sleep(0.1)
    assert await batch == 40
    assert time.monotonic() - started > 2 * LEASE_S
    assert stolen == 0 and rival.stats.taken_over == 0
    assert slow._leases.renewals >= 2
    assert await store.messages.count_documents({"status": "mapped"}) == 40


async def test_a_dead_workers_batch_is_taken_over_within_a_lease_and_logged(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await store.messages.insert_many([_message(n) for n in range(30)])
    config = WorkerConfig(batch_size=30, lease_s=LEASE_S, heartbeat_s=HEARTBEAT_S)
    dying = MapperWorker(store, _slow_mapper(0.1), config)
    batch = asyncio.create_task(dying.run_once())
    while not await store.messages.count_documents({"status": "mapping"}):  # noqa: ASYNC110 - the database says
        await asyncio.sleep(0.01)
    batch.cancel()  # the worker dies holding its batch: no release, no more renewals
    with pytest.raises(asyncio.CancelledError):
        await batch
    died = time.monotonic()
    heir = MapperWorker(store, _slow_mapper(0), config)
    with caplog.at_level(logging.WARNING, logger="services.mapper.worker"):
        while not await heir.run_once():  # noqa: ASYNC110 - polling the database, as a worker does
            await asyncio.sleep(0.05)
    assert time.monotonic() - died < LEASE_S + 1.0
    assert heir.stats.taken_over == 30 and heir.stats.mapped == 30
    taken = [r for r in caplog.records if "took over" in r.getMessage()]
    assert taken and taken[0].messages == 30  # type: ignore[attr-defined]


async def test_a_lane_is_renewed_while_its_attempt_runs_and_taken_over_after_kill_9(
    mongodb_uri: str, settings: Settings, store: Store
) -> None:
    receiver = SlowReceiver(delay_s=60)
    settings = loopback_settings(settings)
    async with serve_http(receiver.handle) as base:
        try:
            sub_id = await subscription_with_one_event(store, settings, f"{base}/hook")
            env = part_env(
                mongodb_uri,
                settings,
                MSCC_NOTIFIER_ALLOWED_HOSTS="127.0.0.1",
                MSCC_NOTIFIER_ALLOW_HTTP="true",
                MSCC_NOTIFIER_TIMEOUT_S="60",
                MSCC_NOTIFIER_LEASE_S=str(LEASE_S * 2),
                MSCC_LEASE_HEARTBEAT_S=str(HEARTBEAT_S * 2),
            )
            with part(env, "notifier") as process:
                await wait_for_line(process, "notifier running")
                await asyncio.wait_for(receiver.event_seen.wait(), 30)
                first = await store.subscriptions.find_one({"_id": sub_id})
                assert first is not None
                await asyncio.sleep(LEASE_S * 3)  # three leases into one attempt: still held, renewed
                later = await store.subscriptions.find_one({"_id": sub_id})
                assert later is not None and later["lane"]["owner"] == first["lane"]["owner"]
                assert later["lane"]["until"] > first["lane"]["until"]
                process.send_signal(signal.SIGKILL)
                await asyncio.to_thread(process.wait, 30)
            killed = time.monotonic()
            receiver.delay_s = 0
            async with client_session(settings) as session:
                service = NotifierService(store, settings, session)
                while not await service.delivery.claim(1):  # noqa: ASYNC110 - polling, as a worker does
                    await asyncio.sleep(0.05)
                took = time.monotonic() - killed
                assert service.delivery.stats.taken_over == 1
        finally:
            receiver.release.set()
    assert took < LEASE_S * 2 + 1.0


@pytest.fixture
async def short_lived_mongod(tmp_path: Path) -> AsyncIterator[LocalMongod]:
    """A mongod of its own whose transactions live 2 s (the hub's local mongod: MSCC_MONGOD_TRANSACTION_LIFETIME_S)."""
    server = LocalMongod(find_mongod(Path(CACHE)), tmp_path / "db", transaction_lifetime_s=2)
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


OPEN_AND_HANG = textwrap.dedent(
    """
    import sys, time
    from pymongo import MongoClient
    client = MongoClient(sys.argv[1])
    coll = client.leases.docs
    session = client.start_session()
    session.start_transaction()
    coll.update_one({"_id": 1}, {"$set": {"by": "killed"}}, session=session)
    print("open", flush=True)
    time.sleep(600)
    """
)


async def test_a_transaction_left_open_by_a_killed_process_is_aborted_by_the_server(
    short_lived_mongod: LocalMongod,
) -> None:
    uri = short_lived_mongod.uri
    sync: MongoClient[Document] = MongoClient(uri)
    try:
        parameter = sync.admin.command({"getParameter": 1, "transactionLifetimeLimitSeconds": 1})
        assert parameter["transactionLifetimeLimitSeconds"] == 2
        sync.leases.docs.insert_one({"_id": 1, "by": "nobody"})
        holder = await asyncio.create_subprocess_exec(sys.executable, "-c", OPEN_AND_HANG, uri, stdout=subprocess.PIPE)
        try:
            assert holder.stdout is not None
            assert (await asyncio.wait_for(holder.stdout.readline(), 30)).strip() == b"open"
        finally:
            holder.kill()  # kill -9 inside the transaction
            await holder.communicate()
        killed = time.monotonic()
        # A write to the document the dead transaction holds waits until the server aborts it.
        await asyncio.to_thread(sync.leases.docs.update_one, {"_id": 1}, {"$set": {"by": "heir"}})
        took = time.monotonic() - killed
    finally:
        sync.close()
    assert took < 2 * 2 + 1.0  # the lifetime, plus the server's look for expired ones (half a lifetime)


async def test_every_transaction_has_a_commit_time_limit(mongodb_uri: str) -> None:
    client = connect(mongodb_uri, max_commit_ms=1500)
    try:
        await client.get_database("leases_commit").create_collection("docs")  # none is created in a transaction
        async with client.start_session() as session:
            options = session.options.default_transaction_options
            assert options is not None and options.max_commit_time_ms == 1500
            async with await session.start_transaction():
                await client.get_database("leases_commit").docs.insert_one({"x": 1}, session=session)
            # the server took maxTimeMS on the commit (MongoDB 4.0 accepts it as on any command)
        assert await client.get_database("leases_commit").docs.count_documents({}) == 1
    finally:
        await client.drop_database("leases_commit")
        await client.close()


async def test_retried_transactions_are_logged_with_their_count(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def conflicting_twice() -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise Conflict("another writer")
        return "done"

    with caplog.at_level(logging.WARNING, logger="shared.retry"):
        assert await run_transaction(conflicting_twice, TransactionRetry(low_s=0, high_s=0), what="probe") == "done"
    record = next(r for r in caplog.records if "probe" in r.getMessage())
    assert record.levelno == logging.WARNING and record.retries == 2  # type: ignore[attr-defined]


def test_a_heartbeat_slower_than_half_a_lease_is_refused() -> None:
    with pytest.raises(ValueError, match="MSCC_LEASE_HEARTBEAT_S"):
        Settings(_env_file=None, mapper_lease_s=4, lease_heartbeat_s=3)  # type: ignore[call-arg]
    assert Settings(_env_file=None, mapper_lease_s=10, lease_heartbeat_s=3).mapper_lease_s == 10  # type: ignore[call-arg]
