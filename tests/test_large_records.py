"""A large message is kept once: its text stands for its bytes when it encodes back to them exactly.

Every HL7v2 record keeps the message's text beside its bytes; for a large message that doubled what
was written, journaled and replicated, and the database's work on it held up the small records
committed meanwhile. These tests send real messages over MLLP and check that the bytes come back
exact (``MessageRecord.from_doc``, ``kept_bytes``, reprocessing), that the stored document is about the
message's size rather than twice it, and that bytes the text cannot give back are still stored as they
came.
"""

from __future__ import annotations

import asyncio

import bson
from helpers import mllp_reply

from services.intake.reprocess import Reprocessor
from services.intake.service import IntakeService
from services.mapper.service import MapperService
from shared.messages import RAW_FROM_TEXT_BYTES, MessageRecord, kept_bytes
from shared.settings import Settings
from shared.store import Document, Store

NOTE = "Pt c/o worsening back pain T10, o/e power 4/5 both legs, sensory level ? T12. Café staff bring meals."


def referral(control_id: str, notes: int, charset: str = "UNICODE UTF-8") -> bytes:
    """A REF^I12 with PRD and PV1 and ``notes`` NTE lines of a tired clinician's free text."""
    lines = [
        f"MSH|^~\\&|ICE|RBL|MSCC-HUB|REN|20261129080000||REF^I12^REF_I12|{control_id}|P|2.5|||||GBR|{charset}",
        "RF1|P^Pending|U^Urgent|MSCC^Metastatic spinal cord compression||R^Referral|RBL-REF-9001|20261129",
        "PRD|RP|ONCOLOGY^ACUTE||^^^RBL|||C1234567^^^GMC",
        "PID|1||9449305552^^^NHS^NH~RBL4471^^^RBL^MR||PATIENT^SAM||19580214|F",
        "PV1|1|I|AMU^BAY3^BED2||||C1234567^ONC^DR|||||||||||RBL-V-0042",
    ]
    lines += [f"NTE|{i}||{NOTE} ({i})" for i in range(1, notes + 1)]
    return ("\r".join(lines) + "\r").encode("utf-8")


async def only_record(store: Store) -> Document:
    docs = [doc async for doc in store.messages.find({"protocol": "hl7v2"})]
    assert len(docs) == 1, [d.get("status") for d in docs]
    return docs[0]


async def test_a_large_accepted_message_is_stored_once_and_read_back_exact(intake: IntakeService, store: Store) -> None:
    data = referral("LARGE-UTF8", notes=1500)
    assert len(data) > 2 * RAW_FROM_TEXT_BYTES
    assert b"MSA|AA|" in await mllp_reply(intake, data)
    doc = await only_record(store)
    assert "raw" not in doc and doc["raw_from_text"] == "utf-8"
    assert len(bson.encode(doc)) < 1.2 * len(data)  # once, not bytes and text
    assert doc["size"] == len(data)
    assert kept_bytes(doc) == data
    record = MessageRecord.from_doc(doc)
    assert record.raw == data
    assert bson.encode(record.to_doc()) == bson.encode(doc)  # a round trip writes what was read
    await MapperService(store).run(asyncio.Event(), burst=True)
    mapped = await store.messages.find_one({"_id": doc["_id"]})
    assert mapped is not None and mapped["status"] == "mapped", (mapped or {}).get("processing")
    assert await store.resources.count_documents({"type": "Patient"}) == 1


async def test_a_small_message_keeps_its_bytes_as_they_came(intake: IntakeService, store: Store) -> None:
    data = referral("SMALL-1", notes=3)
    assert b"MSA|AA|" in await mllp_reply(intake, data)
    doc = await only_record(store)
    assert doc["raw"] == data and "raw_from_text" not in doc


async def test_bytes_the_text_cannot_give_back_are_stored_as_they_came(intake: IntakeService, store: Store) -> None:
    data = b"\xef\xbb\xbf" + referral("LARGE-BOM", notes=1500)  # a byte order mark: not part of the text
    assert b"MSA|AA|" in await mllp_reply(intake, data)
    doc = await only_record(store)
    assert doc["raw"] == data and "raw_from_text" not in doc
    assert MessageRecord.from_doc(doc).raw == data


async def test_a_large_refused_message_keeps_its_text_and_is_reprocessed_exactly(
    settings: Settings, intake: IntakeService, store: Store
) -> None:
    data = referral("LARGE-REFUSED", notes=12_000)  # over the default 10,000 segments
    assert b"MSA|AR|" in await mllp_reply(intake, data)
    doc = await only_record(store)
    assert doc["status"] == "rejected" and "raw" not in doc and doc["raw_from_text"] == "latin-1"
    assert len(bson.encode(doc)) < 1.2 * len(data)
    record = MessageRecord.from_doc(doc)
    assert record.raw == data
    raised = settings.model_copy(  # as the bench raises them: read in full and accepted this time
        update={"limit_segments": 20_000, "limit_transaction_bytes": 64 * 1024 * 1024}
    )
    async with Reprocessor(raised, store, by="test") as reprocessor:
        outcome = await reprocessor.run(record)
    assert outcome.done and outcome.answer == "ACK AA" and len(outcome.new_records) == 1, outcome
    again = await store.messages.find_one({"_id": outcome.new_records[0]})
    assert again is not None and again["status"] == "ready"
    assert MessageRecord.from_doc(again).raw == data
