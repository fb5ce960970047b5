"""No input stalls the others: a large input is read in intake's parse pool (services/intake/offload.py)
while small messages on other connections are still acknowledged, and the pooled reading gives exactly
what the inline one gives, for the whole corpus.

The timing tests compare the order and the relative size of latencies, never absolute milliseconds:
read inline, a large input holds the event loop for seconds, so a small message sent meanwhile waits
as long as the large one; read in the pool, it is answered long before the large one.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import running
from pymongo import AsyncMongoClient, monitoring

from services.api.app import create_app
from services.intake.committer import GroupCommitter
from services.intake.fhir_parse import BundleArrival, read_bundle, read_create
from services.intake.hl7_scan import header_of, scan_frame
from services.intake.offload import OffloadError, ParsePool
from services.intake.service import IntakeService
from shared.auth import Caller, caller_for_mllp
from shared.limits import Limits
from shared.mllp import MllpClient
from shared.settings import Settings
from shared.store import Document, Store

CORPUS = Path(__file__).parent / "corpus"


def _present(manifest: str) -> list[dict[str, Any]]:
    """The manifest's entries whose file is in the corpus."""
    entries: list[dict[str, Any]] = json.loads((CORPUS / manifest).read_text(encoding="utf-8"))
    return [entry for entry in entries if (CORPUS / entry["path"]).is_file()]


HL7_CORPUS = _present("manifest.json")
FHIR_CORPUS = _present("fhir_manifest.json")
RAISED = {  # the highest limits the settings take: a 4 MB frame of tiny segments is read in full
    "limit_segments": 1_000_000,
    "limit_field_repetitions": 1_000_000,
    "limit_document_bytes": 16 * 1024 * 1024,
    "limit_transaction_bytes": 64 * 1024 * 1024,
}
SMALL = b"MSH|^~\\&|SEND|RBL|HUB|REN|20260101120000||ADT^A01|{id}|P|2.5\rPID|1||{id}^^^RBL^MR||TEST^PATIENT\r"
CHARSETS = ("utf-8", "latin-1", None)


def small(control_id: str) -> bytes:
    return SMALL.replace(b"{id}", control_id.encode())


def tiny_segments(size: int) -> bytes:
    """An HL7v2 message of ``size`` bytes made of tiny NTE segments."""
    head = small("LARGE-1")
    return head + b"NTE|1\r" * ((size - len(head)) // 6)


def many_objects() -> bytes:
    """A FHIR ServiceRequest of 300,000 small objects (seconds to validate)."""
    return json.dumps(
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/1"},
            "note": [{"text": "x"} for _ in range(300_000)],
        },
        separators=(",", ":"),
    ).encode()


def msa(reply: bytes) -> str:
    return next(s for s in reply.split(b"\r") if s.startswith(b"MSA")).decode().split("|")[1]


async def acknowledged(port: int, data: bytes) -> tuple[bytes, float]:
    """The ACK to ``data`` sent on a new connection, and when it arrived (``time.monotonic``)."""
    client = await MllpClient.connect("127.0.0.1", port, timeout_s=120)
    try:
        reply = await client.send(data)
        return reply, time.monotonic()
    finally:
        await client.close()


async def small_while(port: int, large: asyncio.Task[Any], received: Callable[[], bool]) -> tuple[float, bool]:
    """Once the large input is being read (``received()``), send a small message on another connection:
    its latency, and whether the large one was still being processed when it was answered."""
    while not received():
        assert not large.done(), "the large input was answered before it was seen arriving"
        await asyncio.sleep(0.005)
    sent = time.monotonic()
    reply, at = await acknowledged(port, small(f"SMALL-{uuid.uuid4().hex[:8]}"))
    assert msa(reply) == "AA"
    return at - sent, not large.done()


@pytest.fixture
async def pooled(settings: Settings, store: Store) -> AsyncIterator[IntakeService]:
    """Intake under raised limits with a parse pool of one worker."""
    service = IntakeService(settings.model_copy(update={**RAISED, "intake_parse_pool": 1}), store)
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def pooled_defaults(settings: Settings, store: Store) -> AsyncIterator[IntakeService]:
    """Intake under the default limits with a parse pool of one worker."""
    service = IntakeService(settings.model_copy(update={"intake_parse_pool": 1}), store)
    await service.start()
    yield service
    await service.stop()


async def test_a_small_message_is_answered_while_a_4_mb_frame_of_tiny_segments_is_read(
    pooled: IntakeService,
) -> None:
    port = pooled.mllp.port
    started = time.monotonic()
    large = asyncio.create_task(acknowledged(port, tiny_segments(4 * 1024 * 1024 - 64)))
    latency, before = await small_while(port, large, lambda: pooled.pool.submitted >= 1)
    reply, finished = await large
    assert before, "the small message was answered only after the large one"
    assert latency < (finished - started) / 4, (latency, finished - started)
    assert msa(reply) == "AR"  # read in full, then over the (estimated) transaction limit: kept, refused
    assert pooled.pool.offloaded >= 1


async def test_a_small_message_is_answered_while_a_fhir_body_of_300000_objects_is_validated(
    pooled_defaults: IntakeService, store: Store
) -> None:
    pooled = pooled_defaults
    body = many_objects()
    assert len(body) < pooled.settings.mllp_max_message_bytes
    transport = httpx.ASGITransport(app=create_app(pooled))
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test", timeout=120) as http:
        started = time.monotonic()
        post = http.post("/fhir/ServiceRequest", content=body, headers={"Content-Type": "application/fhir+json"})
        large = asyncio.create_task(post)
        latency, before = await small_while(pooled.mllp.port, large, lambda: pooled.pool.submitted >= 1)
        answer = await large
        finished = time.monotonic()
    assert before, "the small message was answered only after the large body"
    assert latency < (finished - started) / 4, (latency, finished - started)
    assert answer.status_code == 413  # validated in full, then over the (estimated) transaction limit
    kept = await store.messages.find_one({"protocol": "fhir", "status": "rejected"})
    assert kept is not None and kept["http_status"] == 413


async def test_a_create_larger_than_a_database_transaction_is_413_and_kept(pooled: IntakeService, store: Store) -> None:
    """Limits raised past what MongoDB 4.0 takes in one transaction (16 MiB): the database refuses the
    write, and the answer is a 413 naming the setting, never a 500, with the body kept."""
    body = many_objects()
    assert (await store.db.command("buildInfo"))["versionArray"][:2] == [4, 0]  # the suite's pinned mongod
    transport = httpx.ASGITransport(app=create_app(pooled))
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test", timeout=120) as http:
        answer = await http.post(
            "/fhir/ServiceRequest", content=body, headers={"Content-Type": "application/fhir+json"}
        )
    assert answer.status_code == 413, answer.text
    assert "MSCC_LIMIT_TRANSACTION_BYTES" in answer.text
    kept = await store.messages.find_one({"protocol": "fhir", "status": "rejected"})
    assert kept is not None and kept["http_status"] == 413 and kept["raw"] == body
    assert await store.resources.count_documents({"type": "ServiceRequest"}) == 0


async def test_the_pool_reads_every_corpus_input_as_the_loop_does() -> None:
    """The pure reading functions give the same value in a worker as inline, for every input of the
    HL7v2 and FHIR corpora (threshold 0: everything goes to the pool)."""
    pool = ParsePool(1, 0)
    limits = Limits()
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    caller = Caller("a-client", "RBL", frozenset({"system/ServiceRequest.c"}))
    assert len(HL7_CORPUS) > 250 and len(FHIR_CORPUS) > 100
    try:
        for entry in HL7_CORPUS:
            data = (CORPUS / entry["path"]).read_bytes()
            assert await pool.run(scan_frame, data, CHARSETS, limits, size=0) == scan_frame(data, CHARSETS, limits), (
                entry["path"]
            )
            assert await pool.run(header_of, data, size=0) == header_of(data), entry["path"]
        for entry in FHIR_CORPUS:
            body = (CORPUS / entry["path"]).read_bytes()
            args = (body, "application/fhir+json", entry["endpoint"], limits)
            if entry["endpoint"] != "Bundle":
                assert await pool.run(read_create, *args, size=0) == read_create(*args), entry["path"]
                continue
            arrival = BundleArrival(caller, "127.0.0.1:1", "a" * 32, now, "http://hub.test/fhir", "REN")
            bundle = (body, "application/fhir+json", limits, arrival)
            assert _ids_masked(await pool.run(read_bundle, *bundle, size=0)) == _ids_masked(read_bundle(*bundle)), (
                entry["path"]
            )
        assert pool.offloaded == 2 * len(HL7_CORPUS) + len(FHIR_CORPUS)
        with pytest.raises(OffloadError, match="ZeroDivisionError"):
            await pool.run(divmod, 1, 0, size=0)  # an unexpected failure comes back, the pool survives
        assert await pool.run(divmod, 7, 2, size=0) == (3, 1)
    finally:
        await pool.shutdown()


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def _ids_masked(value: Any) -> str:
    """A Bundle's record with the random ids of entries that have no id of their own masked."""
    return _UUID.sub("<random>", json.dumps(value, default=repr, sort_keys=True))


@pytest.fixture
async def inline_store(mongo_client: AsyncMongoClient[Document]) -> AsyncIterator[Store]:
    store = Store(mongo_client, f"test_inline_{uuid.uuid4().hex[:12]}")
    await store.ensure_schema()
    yield store
    await mongo_client.drop_database(store.db.name)


async def test_pooled_and_inline_intake_answer_and_store_the_corpus_alike(
    settings: Settings, store: Store, inline_store: Store
) -> None:
    """Every HL7v2 corpus input through the whole intake, read in the pool and inline: the same ACK
    codes, and the same records once the ids and times of each run are set aside."""
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    pooled = IntakeService(settings.model_copy(update={"intake_offload_bytes": 0}), store, lambda: now)
    inline = IntakeService(settings.model_copy(update={"intake_parse_pool": 0}), inline_store, lambda: now)
    caller = caller_for_mllp(settings, "127.0.0.1:1")
    await pooled.start(mllp=False)
    await inline.start(mllp=False)
    seen: tuple[dict[str, int], dict[str, int]] = ({}, {})  # each run's record ids, in order
    try:
        for entry in HL7_CORPUS:
            data = (CORPUS / entry["path"]).read_bytes()
            answers = []
            for service, kept, ids in ((pooled, store, seen[0]), (inline, inline_store, seen[1])):
                reply = await service.hl7.receive(data, channel="mllp", peer="127.0.0.1:1", caller=caller)
                records = [await kept.messages.find_one({"_id": rid}) for rid in reply.record_ids]
                ids.update((rid, len(ids)) for rid in reply.record_ids if rid not in ids)
                answers.append((reply.code, reply.send, _canonical(ids, reply.body, records)))
            assert answers[0] == answers[1], entry["path"]
        assert pooled.pool.offloaded == len(HL7_CORPUS)
        assert inline.pool.offloaded == 0
    finally:
        await pooled.stop()
        await inline.stop()


def _canonical(ids: dict[str, int], body: bytes, records: list[Document | None]) -> str:
    """The reply and records as text, each record id of the run (a duplicate is answered with an earlier
    record's ACK) named by its place in the run."""
    text = json.dumps([body.decode("latin-1"), records], default=repr, sort_keys=True)
    for rid, place in ids.items():
        text = text.replace(rid, f"<record {place}>").replace(rid[:20], f"<record {place}>")
    return text


class _Inserts(monitoring.CommandListener):
    """How many documents each ``insert`` command carried."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "insert":
            self.sizes.append(len(event.command.get("documents", [])))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_a_large_record_is_written_alone_and_the_small_ones_together(mongodb_uri: str, store: Store) -> None:
    """Megabytes written and journaled in the group commit of small records would hold up their ACKs."""
    inserts = _Inserts()
    client: AsyncMongoClient[Document] = AsyncMongoClient(mongodb_uri, event_listeners=[inserts])
    try:
        committer = GroupCommitter(client[store.db.name]["messages"], max_concurrent=1, large_bytes=64 * 1024)
        await committer.start()
        large = {"_id": "large", "dedup_key": "large", "channel": "mllp", "raw": b"x" * (64 * 1024)}
        small = [{"_id": f"small-{i}", "dedup_key": f"small-{i}", "channel": "mllp", "raw": b"MSH"} for i in range(6)]
        done = await asyncio.gather(*(committer.commit([doc]) for doc in [*small[:3], large, *small[3:]]))
        assert all(result.inserted for [result] in done)
        [again] = await committer.commit([{**large, "_id": "large-again"}])  # a resend: the stored original
        assert not again.inserted and again.document["_id"] == "large"
        await committer.stop()
    finally:
        await client.close()
    assert committer.written_alone == 2
    assert sorted(inserts.sizes) == [1, 1, 6], inserts.sizes  # the large twice alone, the small ones together


async def test_the_pool_workers_start_with_intake_when_asked(settings: Settings, store: Store) -> None:
    """Started on the first large input, the workers' start-up would compete with every sender's ACK."""
    warm = settings.model_copy(update={"intake_parse_pool": 2, "intake_parse_pool_warm": True})
    service = IntakeService(warm, store)
    await service.start()
    try:
        assert service.pool.warmed and service.pool.submitted == 0
        assert all(running(pid) for pid in service.pool.warmed)
        wide = small("WARM-1") + (b"NTE|1||" + b"x" * 500 + b"\r") * 140  # 70 KB: read in the pool
        reply, _ = await acknowledged(service.mllp.port, wide)
        assert msa(reply) == "AA" and service.pool.offloaded == 1
    finally:
        await service.stop()
    assert not [pid for pid in service.pool.warmed if running(pid)]
