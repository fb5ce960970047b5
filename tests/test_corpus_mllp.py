"""Every file of the HL7v2 corpus (tests/corpus/manifest.json) through intake's MLLP listener on a real socket.

For each file the test checks the reply on the wire (MSA-1, and the ERR error code of a rejection) and
the record kept in MongoDB: the exact bytes that were sent, and status "ready" or "rejected" with a reason.

Reading the manifest: ``expect.ack`` (and ``expect_each[].ack``) is the outcome in original
acknowledgement mode, AA (accepted) or AR (rejected); the stored record's ``ack.code`` must equal it
exactly. On the wire, HL7 v2 (section 2.9, table 0155) answers a message whose MSH-15 or MSH-16 is valued
in enhanced mode: a commit ACK (CA/CR) instead of AA/AR, sent only when MSH-15 asks for it (AL always, NE
never, ER on errors only, SU on success only). The wire checks follow that rule, reading MSH-15/16 from
the file itself.

Every conversation writes all its bytes, half-closes the socket and reads replies until the listener
closes the connection, so a missing reply and an extra reply are both seen without waiting on a timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from services.intake.service import IntakeService
from shared.er7 import UTF8_BOM, segment_spans, split_message_log
from shared.mllp import CARRIAGE_RETURN, END_BLOCK, START_BLOCK, Frame, FrameDecoder, frame
from shared.store import Document, Store

CORPUS = Path(__file__).parent / "corpus"
MANIFEST: list[dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text(encoding="utf-8"))
CORPUS_SUFFIXES = {".hl7", ".mllp", ".txt"}
HOST = "127.0.0.1"
REPLY_TIMEOUT_S = 10.0
LEFTOVER_WAIT_S = 5.0
COMMIT_FORM = {"AA": "CA", "AE": "CE", "AR": "CR"}


def entries(kind: str) -> list[Any]:
    return [pytest.param(entry, id=entry["path"]) for entry in MANIFEST if entry["kind"] == kind]


def corpus_bytes(entry: dict[str, Any]) -> bytes:
    return (CORPUS / str(entry["path"])).read_bytes()


@pytest.fixture(scope="module")
async def corpus_store(mongo_client: AsyncMongoClient[Document]) -> AsyncIterator[Store]:
    store = Store(mongo_client, f"test_corpus_{uuid.uuid4().hex[:12]}")
    await store.ensure_schema()
    yield store
    await mongo_client.drop_database(store.db.name)


@pytest.fixture
async def store(corpus_store: Store) -> Store:
    """Overrides conftest's ``store`` (a database per test) for speed: one database for this module, its
    schema built once, emptied before each test, so every test still starts from an empty store."""
    for collection in (corpus_store.messages, corpus_store.resources, corpus_store.history):
        await collection.delete_many({})
    return corpus_store


# --- the sender's side: what a file says about the reply it should get -------------------------------


@dataclass(frozen=True)
class SentHeader:
    """MSH-1..n of a message as sent (index 0 is MSH-1); None-safe accessors for short headers."""

    fields: tuple[str, ...]

    def get(self, number: int) -> str:
        return self.fields[number - 1] if number <= len(self.fields) else ""


def sent_header(data: bytes) -> SentHeader | None:
    """The first MSH of ``data`` with usable separators (HL7 v2 2.5.4: MSH-1 not alphanumeric, MSH-2 four
    distinct characters, five with '#'; a doubled escape character is read as one), else None."""
    for span in segment_spans(data):
        text = data[span.start : span.end].removeprefix(UTF8_BOM).lstrip(b" \t").decode("latin-1")
        if not text.startswith("MSH"):
            continue
        if len(text) < 4 or text[3].isalnum() or text[3].isspace():
            return None
        fs = text[3]
        fields = text[4:].split(fs)
        enc = fields[0]
        if len(enc) == 5 and enc[2] == enc[3] and enc[4] != "#":
            enc = enc[:3] + enc[4]
        if len(enc) not in (4, 5) or (len(enc) == 5 and enc[4] != "#") or len(set(enc + fs)) != len(enc) + 1:
            return None
        return SentHeader((fs, *fields))
    return None


def control_id_of(header: SentHeader | None) -> str:
    return header.get(10) if header else ""


@dataclass(frozen=True)
class WireExpectation:
    """What the reply to one message should look like: its MSA-1, and whether it is sent at all."""

    code: str
    sent: bool


def wire_expectation(original: str, header: SentHeader | None) -> WireExpectation:
    """MSA-1 on the wire for ``original`` (AA/AR), given the message's MSH-15/16 (see module docstring)."""
    if header is None:
        return WireExpectation(original, True)
    # Only HL7 table 0155 codes select enhanced mode; blanks and junk leave original mode.
    table_0155 = ("AL", "NE", "ER", "SU")
    accept, application = (header.get(n).strip().upper() for n in (15, 16))
    accept, application = (v if v in table_0155 else "" for v in (accept, application))
    if not accept and not application:
        return WireExpectation(original, True)
    code = COMMIT_FORM[original]
    # A refusal is always answered; an acceptance as MSH-15 asks (NE and ER stay silent).
    sent = code != "CA" or accept in ("", "AL", "SU")
    return WireExpectation(code, sent)


# --- the reply: a lean ER7 reader that uses the reply's own separators -------------------------------


@dataclass(frozen=True)
class AckMessage:
    """One acknowledgement message: its segments split into fields (``["MSA", "AA", "ID"]``)."""

    segments: list[list[str]]
    component: str
    subcomponent: str

    def first(self, name: str) -> list[str] | None:
        return next((seg for seg in self.segments if seg[0] == name), None)

    def msh(self, number: int) -> str:
        """MSH-n (MSH-1 is the field separator, so ``segments[0][n - 1]`` is MSH-n for n >= 2)."""
        fields = self.segments[0]
        return fields[number - 1] if number - 1 < len(fields) else ""

    @property
    def msa_code(self) -> str:
        msa = self.first("MSA")
        assert msa is not None, f"no MSA segment in the reply: {self.segments}"
        return msa[1] if len(msa) > 1 else ""

    @property
    def msa_control_id(self) -> str:
        msa = self.first("MSA")
        assert msa is not None, f"no MSA segment in the reply: {self.segments}"
        return msa[2] if len(msa) > 2 else ""

    @property
    def version(self) -> tuple[int, ...]:
        match = re.match(r"\d+(?:\.\d+)*", self.msh(12).split(self.component, 1)[0].strip())
        return tuple(int(p) for p in match.group().split(".")) if match else ()

    @property
    def err_code(self) -> int | None:
        """The error code of the first ERR: ERR-3.1 from v2.5 on, ERR-1.4.1 before (v2.4 and older)."""
        err = self.first("ERR")
        if err is None:
            return None
        if self.version and self.version < (2, 5):
            value = err[1] if len(err) > 1 else ""
            components = value.split(self.component)
            value = components[3].split(self.subcomponent, 1)[0] if len(components) > 3 else ""
        else:
            value = err[3].split(self.component, 1)[0] if len(err) > 3 else ""
        return int(value) if value.strip().isdigit() else None


@dataclass(frozen=True)
class Reply:
    """A reply frame: its envelope segments (FHS/BHS/BTS/FTS) and its acknowledgement messages."""

    envelope: list[str]
    messages: list[AckMessage]

    @property
    def single(self) -> AckMessage:
        assert not self.envelope and len(self.messages) == 1, f"expected one plain ACK, got {self}"
        return self.messages[0]


def parse_reply(body: bytes) -> Reply:
    text = body.decode("latin-1")
    assert text[:3] in ("MSH", "FHS", "BHS") and len(text) > 8, f"reply does not start with a header: {body!r}"
    fs = text[3]
    lines = [line for line in text.split("\r") if line]  # CR ends a segment (HL7 v2 2.5.3)
    encoding = lines[0].split(fs)[1]
    component = encoding[0]
    subcomponent = encoding[3] if len(encoding) > 3 else "&"
    envelope: list[str] = []
    messages: list[list[list[str]]] = []
    for line in lines:
        fields = line.split(fs)
        if fields[0] in ("FHS", "BHS", "BTS", "FTS"):
            envelope.append(fields[0])
        elif fields[0] == "MSH":
            messages.append([fields])
        else:
            assert messages, f"segment {fields[0]!r} before any MSH in the reply: {body!r}"
            messages[-1].append(fields)
    return Reply(envelope, [AckMessage(m, component, subcomponent) for m in messages])


# --- talking to the listener -------------------------------------------------------------------------


async def converse(intake: IntakeService, payload: bytes) -> list[bytes]:
    """Write ``payload`` on a fresh connection, half-close it, and return every reply frame until the
    listener closes the connection (it finishes its replies first)."""
    reader, writer = await asyncio.open_connection(HOST, intake.mllp.port)
    decoder = FrameDecoder(1 << 26)
    replies: list[bytes] = []
    try:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        async with asyncio.timeout(REPLY_TIMEOUT_S):
            while chunk := await reader.read(1 << 16):
                replies += [event.data for event in decoder.feed(chunk) if isinstance(event, Frame)]
    finally:
        writer.close()
        await writer.wait_closed()
    assert not decoder.pending(), f"the listener left an unfinished reply frame: {decoder.pending()!r}"
    return replies


def split_stream(data: bytes) -> tuple[list[bytes], bytes]:
    """The payloads of the complete MLLP frames in ``data`` and the leftover (an unfinished frame)."""
    payloads: list[bytes] = []
    pos = 0
    while (start := data.find(START_BLOCK, pos)) >= 0:
        end = data.find(END_BLOCK + CARRIAGE_RETURN, start)
        if end < 0:
            return payloads, data[start:]
        payloads.append(data[start + 1 : end])
        pos = end + 2
    return payloads, b""


# --- the store -----------------------------------------------------------------------------------------


async def records_with_raw(intake: IntakeService, raw: bytes) -> list[dict[str, Any]]:
    return [doc async for doc in intake.store.messages.find({"raw": raw})]


async def record_for(intake: IntakeService, raw: bytes, ack: AckMessage | None) -> dict[str, Any]:
    """The one record holding exactly ``raw``; when there is an ACK, its MSH-10 must name that record."""
    found = await records_with_raw(intake, raw)
    assert len(found) == 1, f"expected one record with the exact bytes sent, found {len(found)}: {raw[:120]!r}"
    record = found[0]
    if ack is not None:
        assert ack.msh(10) and record["_id"].startswith(ack.msh(10)), (
            f"ACK MSH-10 {ack.msh(10)!r} does not name the record {record['_id']!r}"
        )
    return record


def check_record(record: dict[str, Any], expected: dict[str, Any]) -> None:
    assert record["protocol"] == "hl7v2"
    assert record["ack"]["code"] == expected["ack"], f"stored ACK code {record['ack']['code']}: {record['ack']}"
    if expected["ack"] == "AA":
        assert record["status"] == "ready", f"status {record['status']!r}: {record.get('reason')!r}"
    else:
        assert record["status"] == "rejected", f"status {record['status']!r}"
        assert isinstance(record.get("reason"), str) and record["reason"].strip(), f"no reason: {record}"


def check_ack(ack: AckMessage, expected: dict[str, Any], wire: WireExpectation) -> None:
    assert ack.msa_code == wire.code, f"MSA-1 {ack.msa_code!r}, expected {wire.code!r} ({expected['reason']})"
    if expected["ack"] == "AR":
        assert ack.err_code == expected["err_code"], (
            f"ERR code {ack.err_code!r}, expected {expected['err_code']!r}: {ack.first('ERR')}"
        )


async def check_exchanged_messages(
    intake: IntakeService, messages: list[bytes], expectations: list[dict[str, Any]], replies: list[bytes]
) -> None:
    """``messages`` were sent as separate frames in order and drew ``replies``: check both sides."""
    assert len(messages) == len(expectations), f"{len(messages)} messages but {len(expectations)} expectations"
    wires = [wire_expectation(e["ack"], sent_header(m)) for m, e in zip(messages, expectations, strict=True)]
    answered = [i for i, wire in enumerate(wires) if wire.sent]
    assert len(replies) == len(answered), (
        f"{len(replies)} replies for {len(messages)} messages, expected {len(answered)} "
        f"(MSA-1 of the replies: {[parse_reply(r).messages[0].msa_code for r in replies]})"
    )
    acks: dict[int, AckMessage] = {i: parse_reply(r).single for i, r in zip(answered, replies, strict=True)}
    for index, (message, expected) in enumerate(zip(messages, expectations, strict=True)):
        ack = acks.get(index)
        if ack is not None:
            check_ack(ack, expected, wires[index])
        check_record(await record_for(intake, message, ack), expected)


# --- the tests -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", entries("message"))
async def test_message(intake: IntakeService, entry: dict[str, Any]) -> None:
    data = corpus_bytes(entry)
    replies = await converse(intake, frame(data))
    await check_exchanged_messages(intake, [data], [entry["expect"]], replies)


def batch_messages(data: bytes) -> list[bytes]:
    """Each message of a batch file, from its MSH line up to the next MSH or envelope segment."""
    starts = [m.start() for m in re.finditer(rb"(?:^|(?<=[\r\n]))(?:MSH|BHS|BTS|FHS|FTS)", data)]
    bounds = [*starts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if data[a : a + 3] == b"MSH"]


def is_envelope_rejection(expect_each: list[dict[str, Any]]) -> bool:
    return len(expect_each) == 1 and expect_each[0]["ack"] == "AR" and "envelope rejected" in expect_each[0]["reason"]


@pytest.mark.parametrize("entry", entries("batch"))
async def test_batch(intake: IntakeService, entry: dict[str, Any]) -> None:
    data = corpus_bytes(entry)
    expect_each: list[dict[str, Any]] = entry["expect_each"]
    replies = await converse(intake, frame(data))
    assert len(replies) == 1, f"{len(replies)} replies to one batch frame"
    reply = parse_reply(replies[0])
    if is_envelope_rejection(expect_each):
        # One ACK for the whole frame, which is kept whole. The envelope has no MSH-15/16 of its own (those
        # of a message inside it govern that message's ACK), so the answer is in original mode.
        expected = expect_each[0]
        check_ack(reply.single, expected, WireExpectation("AR", sent=True))
        check_record(await record_for(intake, data, reply.single), expected)
        return
    assert reply.envelope[:1] in (["FHS"], ["BHS"]) and "BHS" in reply.envelope and "BTS" in reply.envelope, (
        f"not a batch ACK: envelope segments {reply.envelope}"
    )
    messages = batch_messages(data)
    assert len(reply.messages) == len(expect_each) == len(messages), (
        f"{len(reply.messages)} ACKs, {len(expect_each)} expectations, {len(messages)} messages in the file"
    )
    for ack, message, expected in zip(reply.messages, messages, expect_each, strict=True):
        check_ack(ack, expected, wire_expectation(expected["ack"], sent_header(message)))
        assert ack.msa_control_id == control_id_of(sent_header(message)), "batch ACKs out of order"
        check_record(await record_for(intake, message, None), expected)
    envelopes = [doc async for doc in intake.store.messages.find({"protocol": "hl7v2-batch"})]
    assert len(envelopes) == 1, f"{len(envelopes)} envelope records"
    assert envelopes[0]["raw"] == data


@pytest.mark.parametrize("entry", entries("mllp_stream"))
async def test_mllp_stream(intake: IntakeService, entry: dict[str, Any]) -> None:
    data = corpus_bytes(entry)
    expect_each: list[dict[str, Any]] = entry["expect_each"]
    leftover_expected = [e for e in expect_each if e.get("leftover")]
    answered = [e for e in expect_each if not e.get("leftover")]
    payloads, leftover = split_stream(data)
    assert bool(leftover) == bool(leftover_expected), f"leftover {leftover!r} vs manifest {leftover_expected}"
    replies = await converse(intake, data)  # the file already holds its framing
    await check_exchanged_messages(intake, payloads, answered, replies)
    if leftover:
        assert leftover.startswith(START_BLOCK)
        record = await wait_for_record(intake, leftover)
        assert record["status"] == "rejected"
        assert "unfinished frame" in record["reason"], record["reason"]
        assert record["ack"] is None


async def wait_for_record(intake: IntakeService, raw: bytes) -> dict[str, Any]:
    deadline = time.monotonic() + LEFTOVER_WAIT_S
    while not (found := await records_with_raw(intake, raw)):
        assert time.monotonic() < deadline, f"no record of the leftover bytes {raw!r} after {LEFTOVER_WAIT_S}s"
        await asyncio.sleep(0.05)
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("entry", entries("loose_file"))
async def test_loose_file(intake: IntakeService, entry: dict[str, Any]) -> None:
    messages = split_message_log(corpus_bytes(entry))
    replies = await converse(intake, b"".join(frame(m) for m in messages))
    await check_exchanged_messages(intake, messages, entry["expect_each"], replies)


async def test_all_messages_pipelined_on_one_connection(intake: IntakeService) -> None:
    """Every single-message file written at once on one connection: replies in order, every message kept."""
    singles = [e for e in MANIFEST if e["kind"] == "message"]
    messages = [corpus_bytes(e) for e in singles]
    headers = [sent_header(m) for m in messages]
    wires = [wire_expectation(e["expect"]["ack"], h) for e, h in zip(singles, headers, strict=True)]
    replies = await converse(intake, b"".join(frame(m) for m in messages))
    answered = [i for i, wire in enumerate(wires) if wire.sent]
    assert len(replies) == len(answered), f"{len(replies)} replies, expected {len(answered)}"
    mismatched = []
    for index, body in zip(answered, replies, strict=True):
        ack = parse_reply(body).single
        control_id = control_id_of(headers[index])
        if (control_id and ack.msa_control_id != control_id) or ack.msa_code != wires[index].code:
            mismatched.append(
                f"{singles[index]['path']}: MSA {ack.msa_code}|{ack.msa_control_id}, "
                f"expected {wires[index].code}|{control_id}"
            )
    # The corpus holds one message twice, once with CR and once with CRLF line ends (HL7 v2-to-FHIR's
    # MDM^T02): the same sender, control id and content, so the second is a duplicate, stored once.
    resent = {"hl7-v2-to-fhir/hl7v2/MDM_T02__test_conversions.hl7"}
    missing = [
        e["path"]
        for e, m in zip(singles, messages, strict=True)
        if e["path"] not in resent and not await records_with_raw(intake, m)
    ]
    stored = await intake.store.messages.count_documents({})
    problems = [f"reply out of order or wrong: {m}" for m in mismatched]
    if stored != len(messages) - len(resent) or missing:
        problems.append(f"{stored} records for {len(messages)} messages sent")
        problems += [f"not stored byte-exact: {path}" for path in missing]
    assert not problems, "\n".join(problems)


def test_manifest_covers_every_corpus_file() -> None:
    on_disk = {
        path.relative_to(CORPUS).as_posix()
        for path in CORPUS.rglob("*")
        if path.is_file() and path.suffix in CORPUS_SUFFIXES
    }
    listed = [entry["path"] for entry in MANIFEST]
    assert len(listed) == len(set(listed)), "a file is listed twice in the manifest"
    assert sorted(on_disk - set(listed)) == [], "corpus files missing from manifest.json"
    # "not_message" entries record upstream files deliberately not copied; every other entry is sent.
    sent = {entry["path"] for entry in MANIFEST if entry["kind"] != "not_message"}
    assert sorted(sent - on_disk) == [], "manifest.json lists files to send that do not exist"
