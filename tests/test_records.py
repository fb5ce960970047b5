"""Typed message records against the documents real intake, the mapper and the operators store.

Every kind of ``messages`` document the hub writes (HL7v2 accepted, rejected, a duplicate's original,
a batch and its envelope, bytes kept unanswered, an oversize frame; FHIR create, Bundle, a refused
body, an oversize body; a pathway step applied or refused; held for review, decided, mapped,
reprocessed) is made here by the real code
against the real mongod, read back, and must survive ``MessageRecord`` unchanged: the same BSON bytes,
field order included. The notifier reads outbox events through ``OutboxEvent``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import bson
import httpx
import pytest

from services.intake.reprocess import Reprocessor
from services.intake.service import IntakeService
from services.mapper.service import MapperService
from services.notifier.model import ChangeEvent
from shared import review
from shared.auth import DEV_SCOPES, Caller
from shared.messages import FHIR, HL7V2, HL7V2_BATCH, Hl7Header, MessageRecord
from shared.records import OutboxEvent
from shared.settings import DEV_CLIENT_ID
from shared.store import Document, Store

HL7 = {"Content-Type": "application/hl7-v2"}
FHIR_JSON = {"Content-Type": "application/fhir+json"}
NHS = "9449305552"
PEER = "127.0.0.1:5000"
MARGARET = f"PID|1||{NHS}^^^NHS^NH~X100234^^^PAS^MR||HUGHES^MARGARET^ANN||19700312|F|||12 Beach Rd^^Wirral^^CH41 1AA"
ROBERT = f"PID|1||{NHS}^^^NHS^NH~R88812^^^PAS^MR||DAVIES^ROBERT||19400102|M|||3 Mill Lane^^Liverpool^^L9 7AL"
REFERRAL = {
    "resourceType": "ServiceRequest",
    "identifier": [{"system": "https://example.org/referral", "value": "R-REC-1"}],
    "status": "active",
    "intent": "order",
    "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS}},
    "authoredOn": "2026-11-25T08:00:00+00:00",
}
# The fields of an accepted HL7v2 record, in the order intake has always written them.
ACCEPTED_FIELDS = [
    "_id",
    "received_at",
    "protocol",
    "channel",
    "peer",
    "caller",
    "raw",
    "size",
    "attempts",
    "status",
    "header",
    "text",
    "charset",
    "issues",
    "control_key",
    "ack",
    "dedup_key",
    "trusts",  # who may see what it writes (shared/visibility.py)
    "correlation_id",  # follows it to its resources and deliveries (shared/correlation.py)
]


def referral(trust: str, control_id: str, pid: str) -> bytes:
    lines = [
        f"MSH|^~\\&|ICE|{trust}|MSCC-HUB|REN|20261125080000||REF^I12^REF_I12|{control_id}|P|2.5",
        "RF1|P^Pending|S^STAT|MSCC^Metastatic spinal cord compression||R^Referral|500001^ICE|20261125|||Suspected MSCC",
        f"PRD|RP|JONES^SARAH^^^DR|^^^{trust}||^WPN^PH^^^^^^^^^0151 678 5111|||||^^^^^^^^^{trust}",
        pid,
        f"PV1|1|I|AMU^BED 4^^{trust}||||||||||||||||V{control_id}^^^PAS^VN",
    ]
    return ("\r".join(lines) + "\r").encode()


def same_bson(doc: Document) -> None:
    """``doc`` read as a record and written back is the same document, byte for byte."""
    again = MessageRecord.from_doc(doc).to_doc()
    assert bson.encode(again) == bson.encode(doc), (list(doc), list(again))


async def all_records(store: Store) -> list[Document]:
    return [doc async for doc in store.messages.find().sort("received_at", 1)]


async def map_all(store: Store) -> None:
    await MapperService(store).run(asyncio.Event(), burst=True)


@pytest.fixture
def caller() -> Caller:
    return Caller(DEV_CLIENT_ID, "REN", DEV_SCOPES)


async def hl7_intake(http: httpx.AsyncClient, intake: IntakeService, caller: Caller) -> None:
    """Every HL7v2 record intake writes: accepted, a resend, refused, a batch, unanswered, oversize."""
    accepted = await http.post("/hl7v2", content=referral("RBL", "REC1", MARGARET), headers=HL7)
    assert "MSA|AA" in accepted.text
    resend = await http.post("/hl7v2", content=referral("RBL", "REC1", MARGARET), headers=HL7)
    assert resend.text == accepted.text  # a duplicate: the original counts it
    refused = await http.post("/hl7v2", content=b"PID|1||123\r", headers=HL7)
    assert "MSA|AR" in refused.text
    batch = b"BHS|^~\\&|ICE|RBL\r" + referral("RBL", "REC2", MARGARET) + b"MSH|^~\\&|ICE\rBTS|2\r"
    assert "BHS" in (await http.post("/hl7v2", content=batch, headers=HL7)).text
    kept = await intake.hl7.keep_unacknowledged(
        b"stray", "bytes outside a frame", channel="mllp", peer=PEER, caller=caller
    )
    assert kept is not None
    head = referral("RBL", "REC3", MARGARET)[:40]
    await intake.hl7.receive_oversize(head, 9000, 40, channel="mllp", peer=PEER, caller=caller)


async def fhir_intake(http: httpx.AsyncClient, intake: IntakeService, caller: Caller) -> None:
    """Every FHIR record intake writes: a create, a Bundle, a refused body, an oversize body."""
    created = await http.post("/fhir/ServiceRequest", json=REFERRAL, headers=FHIR_JSON)
    assert created.status_code == 201, created.text
    bundle = {
        "resourceType": "Bundle",
        "identifier": {"system": "https://example.org/bundle", "value": "B-REC-1"},
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:0b7c3c1e-0000-4000-8000-000000000001",
                "resource": {**REFERRAL, "identifier": [{"system": "https://example.org/referral", "value": "R-2"}]},
                "request": {"method": "POST", "url": "ServiceRequest"},
            }
        ],
    }
    posted = await http.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert posted.status_code == 202, posted.text
    refused = await http.post("/fhir/ServiceRequest", content=b"{not json", headers=FHIR_JSON)
    assert refused.status_code == 400
    header = {"interaction": "create", "resource_type": "ServiceRequest"}
    await intake.fhir.refuse_oversize(b'{"resourceType"', 9000, 15, caller, "127.0.0.1", header)


async def test_every_intake_record_survives_a_round_trip_unchanged(
    http: httpx.AsyncClient, intake: IntakeService, caller: Caller
) -> None:
    await hl7_intake(http, intake, caller)
    await fhir_intake(http, intake, caller)
    docs = await all_records(intake.store)
    statuses = {(d["protocol"], d["status"]) for d in docs}
    assert statuses == {
        (HL7V2, "ready"),
        (HL7V2, "rejected"),
        (HL7V2_BATCH, "split"),
        (FHIR, "ready"),
        (FHIR, "rejected"),
    }
    assert any(d.get("duplicates") == 1 for d in docs)
    assert any(d.get("truncated") for d in docs if d["protocol"] == HL7V2)
    assert any(d.get("truncated") for d in docs if d["protocol"] == FHIR)
    assert any(d.get("ack", 0) is None for d in docs)  # bytes kept without an answer
    for doc in docs:
        same_bson(doc)


async def test_an_accepted_hl7v2_record_keeps_its_shape_and_reads_typed(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    answer = await http.post("/hl7v2", content=referral("RBL", "REC9", MARGARET), headers=HL7)
    assert "MSA|AA" in answer.text
    doc = await intake.store.messages.find_one({"header.control_id": "REC9"})
    assert doc is not None and list(doc) == ACCEPTED_FIELDS
    record = MessageRecord.from_doc(doc)
    header = record.hl7v2_header
    assert isinstance(header, Hl7Header)
    assert (header.sending_facility, header.message_type, header.control_id) == ("RBL", "REF^I12", "REC9")
    assert record.fhir_header is None and record.what == "REF^I12"
    assert record.ack is not None and record.ack["code"] == "AA"
    assert record.raw == referral("RBL", "REC9", MARGARET) and record.size == len(record.raw)


async def test_mapped_held_decided_and_reprocessed_records_survive_a_round_trip(
    http: httpx.AsyncClient, intake: IntakeService, caller: Caller
) -> None:
    await hl7_intake(http, intake, caller)
    await fhir_intake(http, intake, caller)
    await map_all(intake.store)
    # The same NHS number from another trust for another person: held for review.
    assert "MSA|AA" in (await http.post("/hl7v2", content=referral("RJR", "REC4", ROBERT), headers=HL7)).text
    await map_all(intake.store)
    held = await intake.store.messages.find_one({"header.control_id": "REC4"})
    assert held is not None and held["status"] == review.NEEDS_REVIEW
    same_bson(held)
    summary = review.summary(held)
    assert summary["control_id"] == "REC4" and summary["sender"] == "RJR" and summary["conflicts"]
    await review.apply(intake.store, held["_id"], "an operator")
    await map_all(intake.store)
    # A pathway step keeps its body as an "applied" record; a refused one as a rejected record.
    created = await intake.store.messages.find_one({"header.interaction": "create", "status": "mapped"})
    assert created is not None
    step = {"resourceType": "Parameters", "parameter": [{"name": "step", "valueCode": "triaged-accepted"}]}
    moved = await http.post(f"/fhir/ServiceRequest/{created['header']['id']}/$transition", json=step, headers=FHIR_JSON)
    assert moved.status_code == 200, moved.text
    missing = await http.post("/fhir/ServiceRequest/nope/$transition", json=step, headers=FHIR_JSON)
    assert missing.status_code == 404
    refused = await intake.store.messages.find_one({"protocol": HL7V2, "status": "rejected", "size": 11})
    assert refused is not None
    async with Reprocessor(intake.settings, intake.store, "an operator") as reprocessor:
        assert (await reprocessor.run(MessageRecord.from_doc(refused))).done

    docs = await all_records(intake.store)
    statuses = {d["status"] for d in docs}
    assert {"mapped", "rejected", "split", "applied"} <= statuses
    assert any((d.get("header") or {}).get("operation") == "$transition" and d["status"] == "rejected" for d in docs)
    decided = next(d for d in docs if d["_id"] == held["_id"])
    assert decided["review"]["decision"] == "apply" and decided["status"] == "mapped"
    assert any("reprocessed" in d for d in docs)
    for doc in docs:
        same_bson(doc)
        record = MessageRecord.from_doc(doc)
        if record.status == "mapped":
            assert record.processing is not None and record.processing.status == "mapped"
            assert record.lease is None and record.map_attempts


async def test_fhir_records_read_typed(http: httpx.AsyncClient, intake: IntakeService, caller: Caller) -> None:
    await fhir_intake(http, intake, caller)
    records = [MessageRecord.from_doc(d) for d in await all_records(intake.store)]
    created = next(
        r for r in records if r.status == "ready" and r.fhir_header and r.fhir_header.interaction == "create"
    )
    assert created.fhir_header is not None and created.fhir_header.resource_type == "ServiceRequest"
    assert created.fhir is not None and created.fhir["resources"] == [f"ServiceRequest/{created.fhir_header.id}"]
    bundle = next(r for r in records if r.fhir_header and r.fhir_header.interaction == "bundle" and r.fhir)
    assert bundle.fhir is not None and bundle.fhir_header is not None
    assert bundle.fhir_header.bundle_type == "transaction" and len(bundle.fhir["entries"]) == 1
    assert bundle.reply is not None and bundle.dedup_key
    refused = [r for r in records if r.status == "rejected"]
    assert {r.http_status for r in refused} == {400, 413}
    assert all(r.ack is None and r.hl7v2_header is None for r in records)


def test_a_projected_read_is_a_record_too() -> None:
    doc = {"_id": "r1", "received_at": datetime(2026, 1, 1, tzinfo=UTC), "protocol": HL7V2, "status": "ready"}
    record = MessageRecord.from_doc(doc)
    assert record.raw is None and record.text is None and record.hl7v2_header is None
    with pytest.raises(KeyError):
        MessageRecord.from_doc({"_id": "r2", "protocol": HL7V2})


async def test_the_notifier_reads_outbox_events_as_the_hub_writes_them(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    created = await http.post("/fhir/ServiceRequest", json=REFERRAL, headers=FHIR_JSON)
    assert created.status_code == 201
    doc = await intake.store.outbox.find_one({"_id": f"ServiceRequest/{created.json()['id']}/_history/1"})
    assert doc is not None
    event = ChangeEvent.from_outbox(doc)
    assert event is not None and event.kind == "created"
    assert (event.focus.type, event.focus.id, event.focus.version) == ("ServiceRequest", created.json()["id"], 1)
    assert event == ChangeEvent.from_event(OutboxEvent.from_doc(doc))
    with pytest.raises(KeyError):  # not an event the hub wrote: the fan-out holds it as failed
        ChangeEvent.from_outbox({"_id": "x", "kind": "sla", "focus": "ServiceRequest/sr1"})
