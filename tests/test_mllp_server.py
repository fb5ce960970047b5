"""The MLLP listener over real sockets against the real store: commit-then-ACK, duplicates, pipelining,
concurrency, timeouts, oversize, enhanced acknowledgement mode, sender policy, database outage."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from services.intake.service import IntakeService
from shared.mllp import MllpClient, frame
from shared.settings import Settings
from shared.store import Store


def adt(
    control_id: str, *, msh15: str = "", msh16: str = "", event: str = "A01", code: str = "ADT", facility: str = "FAC"
) -> bytes:
    return (
        f"MSH|^~\\&|SEND|{facility}|HUB|REN|20260101120000||{code}^{event}|{control_id}|P|2.5|||{msh15}|{msh16}\r"
        f"PID|1||{control_id}^^^FAC^MR||TEST^PATIENT\r"
    ).encode()


def msa(reply: bytes) -> list[str]:
    segment = next(s for s in reply.split(b"\r") if s.startswith(b"MSA"))
    return segment.decode().split("|")


@contextlib.asynccontextmanager
async def running(settings: Settings, store: Store) -> AsyncIterator[IntakeService]:
    service = IntakeService(settings, store)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@contextlib.asynccontextmanager
async def connection(port: int, timeout_s: float = 30.0) -> AsyncIterator[MllpClient]:
    client = await MllpClient.connect("127.0.0.1", port, timeout_s=timeout_s)
    try:
        yield client
    finally:
        await client.close()


async def records(store: Store, query: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [doc async for doc in store.messages.find(query or {})]


async def test_duplicate_is_stored_once_and_answered_with_the_original_ack(intake: IntakeService) -> None:
    message = adt("DUP1")
    async with connection(intake.mllp.port) as first:
        ack1 = await first.send(message)
    async with connection(intake.mllp.port) as second:
        ack2 = await second.send(message)
    assert ack1 == ack2
    stored = await records(intake.store, {"header.control_id": "DUP1"})
    assert len(stored) == 1
    assert stored[0]["duplicates"] == 1


async def test_concurrent_duplicates_converge_on_one_record(intake: IntakeService) -> None:
    message = adt("RACE1")

    async def send() -> bytes:
        async with connection(intake.mllp.port) as client:
            return await client.send(message)

    acks = await asyncio.gather(*(send() for _ in range(10)))
    assert len(set(acks)) == 1
    assert msa(acks[0])[1] == "AA"
    assert len(await records(intake.store, {"header.control_id": "RACE1"})) == 1


async def test_pipelined_messages_are_answered_in_order(intake: IntakeService) -> None:
    ids = [f"PIPE{i:03d}" for i in range(100)]
    async with connection(intake.mllp.port) as client:
        replies = await client.send_many([adt(i) for i in ids])
    assert [msa(r)[2] for r in replies] == ids
    assert all(msa(r)[1] == "AA" for r in replies)
    assert len(await records(intake.store, {"status": "ready"})) == 100


async def test_many_concurrent_connections(intake: IntakeService) -> None:
    async def sender(n: int) -> list[str]:
        async with connection(intake.mllp.port) as client:
            return [msa(await client.send(adt(f"C{n:02d}-{i:02d}")))[1] for i in range(20)]

    results = await asyncio.gather(*(sender(n) for n in range(32)))
    assert all(code == "AA" for codes in results for code in codes)
    assert await intake.store.messages.count_documents({"status": "ready"}) == 640
    assert intake.mllp.stats.frames == 640


async def test_idle_connection_is_closed(settings: Settings, store: Store) -> None:
    async with running(settings.model_copy(update={"mllp_idle_timeout_s": 0.3}), store) as service:
        reader, writer = await asyncio.open_connection("127.0.0.1", service.mllp.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_unfinished_frame_times_out_is_kept_and_never_acknowledged(settings: Settings, store: Store) -> None:
    async with running(settings.model_copy(update={"mllp_frame_timeout_s": 0.3}), store) as service:
        reader, writer = await asyncio.open_connection("127.0.0.1", service.mllp.port)
        partial = b"\x0b" + adt("PART1")[:40]
        writer.write(partial)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing acknowledged
        writer.close()
        kept = await records(store, {"raw": partial})
        assert len(kept) == 1
        assert kept[0]["status"] == "rejected" and "unfinished" in kept[0]["reason"]


async def test_close_inside_a_frame_keeps_the_bytes(intake: IntakeService) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", intake.mllp.port)
    writer.write(frame(adt("WHOLE1")) + b"\x0b" + adt("CUT1")[:30])
    await writer.drain()
    assert msa(await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 5))[2] == "WHOLE1"
    writer.close()
    for _ in range(50):
        kept = await records(intake.store, {"status": "rejected"})
        if kept:
            break
        await asyncio.sleep(0.1)
    assert kept and "connection closed" in kept[0]["reason"]
    assert kept[0]["raw"].startswith(b"\x0bMSH|")


async def test_bytes_between_frames_are_reported_and_kept(intake: IntakeService) -> None:
    async with connection(intake.mllp.port) as client:
        await client.send_raw(b"HELLO?\r")
        assert msa(await client.send(adt("AFTERJUNK")))[1] == "AA"
    junk = await records(intake.store, {"raw": b"HELLO?\r"})
    assert len(junk) == 1 and "outside an MLLP frame" in junk[0]["reason"]


async def test_oversize_message_is_refused_with_its_head_kept(settings: Settings, store: Store) -> None:
    big = adt("BIG1") + b"NTE|1||" + b"x" * 5000 + b"\r"
    async with running(settings.model_copy(update={"mllp_max_message_bytes": 1024}), store) as service:
        async with connection(service.mllp.port) as client:
            reply = await client.send(big)
            assert msa(reply)[1:3] == ["AR", "BIG1"]
            assert b"exceeds the limit of 1024 bytes" in reply
            assert msa(await client.send(adt("SMALL1")))[1] == "AA"  # the connection goes on
    [kept] = await records(store, {"status": "rejected"})
    assert kept["truncated"] is True and kept["size"] == len(big) and kept["raw"] == big[:1024]


async def test_enhanced_mode_commit_acks(intake: IntakeService) -> None:
    async with connection(intake.mllp.port) as client:
        assert msa(await client.send(adt("ENH1", msh15="AL", msh16="NE")))[1:3] == ["CA", "ENH1"]
        # MSH-15 NE: no accept acknowledgement at all; the next reply is the next message's.
        await client.send_raw(frame(adt("ENH2", msh15="NE", msh16="AL")))
        assert msa(await client.send(adt("ENH3")))[1:3] == ["AA", "ENH3"]
        # MSH-15 ER: only errors are acknowledged.
        bad = b"MSH|^~\\&|S|F|H|R|2026||ADT^A01|ENH4|P|2.999|||ER|AL\rPID|1\r"
        assert msa(await client.send(bad))[1:3] == ["CR", "ENH4"]
    assert await intake.store.messages.count_documents({"header.control_id": "ENH2", "status": "ready"}) == 1


async def test_sender_policy_rejects_types_it_does_not_allow(settings: Settings, store: Store, tmp_path: Path) -> None:
    senders = tmp_path / "senders.json"
    senders.write_text(json.dumps({"senders": [{"facility": "RBL", "message_types": ["ADT^A01", "REF^*"]}]}))
    async with running(settings.model_copy(update={"senders_file": senders}), store) as service:
        async with connection(service.mllp.port) as client:
            assert msa(await client.send(adt("P1", facility="RBL")))[1] == "AA"
            assert msa(await client.send(adt("P2", facility="RBL", code="REF", event="I12")))[1] == "AA"
            wrong_event = await client.send(adt("P3", facility="RBL", event="A08"))
            wrong_type = await client.send(adt("P4", facility="RBL", code="ORU", event="R01"))
            other_sender = await client.send(adt("P5", facility="RJR", code="ORU", event="R01"))
    assert msa(wrong_event)[1] == "AR" and b"201^Unsupported event code" in wrong_event
    assert msa(wrong_type)[1] == "AR" and b"200^Unsupported message type" in wrong_type
    assert msa(other_sender)[1] == "AA"  # no rule for RJR: the default allows every type
    rejected = await records(store, {"status": "rejected"})
    assert {r["header"]["control_id"] for r in rejected} == {"P3", "P4"}


async def test_database_outage_is_answered_ae_and_nothing_is_acknowledged(settings: Settings) -> None:
    dead: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300&connectTimeoutMS=300"
    )
    try:
        async with running(settings, Store(dead, "unreachable")) as service, connection(service.mllp.port) as client:
            reply = await client.send(adt("DOWN1"))
    finally:
        await dead.close()
    assert msa(reply)[1:3] == ["AE", "DOWN1"]
    assert b"207^Application internal error" in reply and b"resend" in reply


async def test_rejected_message_can_be_reprocessed_after_a_policy_change(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    from services.intake.reprocess import Reprocessor
    from shared.messages import MessageRecord

    senders = tmp_path / "senders.json"
    senders.write_text(json.dumps({"senders": [{"facility": "FAC", "message_types": ["ORU^R01"]}]}))
    strict = settings.model_copy(update={"senders_file": senders})
    async with running(strict, store) as service, connection(service.mllp.port) as client:
        assert msa(await client.send(adt("RE1")))[1] == "AR"
    [rejected] = await records(store, {"status": "rejected"})
    async with Reprocessor(settings, store, "an operator") as reprocessor:  # default policy: every type allowed
        assert (await reprocessor.run(MessageRecord.from_doc(rejected))).done
    ready = await records(store, {"status": "ready"})
    assert len(ready) == 1 and ready[0]["raw"] == rejected["raw"]
    updated = await store.messages.find_one({"_id": rejected["_id"]})
    assert updated is not None and updated["reprocessed"]["records"] == [ready[0]["_id"]]


async def test_reused_control_id_with_other_content_is_a_new_message(intake: IntakeService) -> None:
    first = adt("REUSED")
    other = first.replace(b"TEST^PATIENT", b"OTHER^PATIENT")
    async with connection(intake.mllp.port) as client:
        assert msa(await client.send(first))[1] == "AA"
        assert msa(await client.send(other))[1] == "AA"
    stored = await records(intake.store, {"header.control_id": "REUSED"})
    assert sorted(doc["raw"] for doc in stored) == sorted([first, other])


async def test_resend_with_new_timestamp_and_line_endings_is_a_duplicate(intake: IntakeService) -> None:
    original = adt("RESEND1")
    resent = original.replace(b"20260101120000", b"20260101120500").replace(b"\r", b"\r\n")
    async with connection(intake.mllp.port) as client:
        ack1 = await client.send(original)
        ack2 = await client.send(resent)
    assert ack1 == ack2
    assert len(await records(intake.store, {"header.control_id": "RESEND1"})) == 1


async def test_a_version_int_cannot_read_is_refused_and_kept(intake: IntakeService) -> None:
    """MSH-12 "²" (byte B2): a digit to ``str.isdigit`` but no number to ``int()``; answered AR, kept."""
    message = adt("VER1").replace(b"|P|2.5|", b"|P|\xb2|")
    async with connection(intake.mllp.port) as client:
        reply = await client.send(message)
    assert msa(reply)[1:3] == ["AR", "VER1"]
    (kept,) = await records(intake.store)
    assert kept["status"] == "rejected" and "is not an HL7 v2 version" in kept["reason"]
