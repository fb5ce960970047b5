"""Acknowledged means processable: each limit refused before the ACK over real MLLP and HTTP (AR or 413,
the input kept, the limit named) and the case just under it accepted and mapped; bounded outcomes; a
message too large to write failing alone while its batch is mapped in the same cycle; the estimates
staying above what mapping really writes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bson
import httpx
import pytest

from services.api.app import create_app
from services.intake.service import IntakeService
from services.mapper.dispatch import make_mapper
from services.mapper.hl7 import map_hl7v2
from services.mapper.model import MappingError, MappingResult
from services.mapper.service import MapperService
from services.mapper.worker import MapperWorker, WorkerConfig
from shared.limits import (
    DEFAULT_LIMITS,
    OUTCOME_LIST_ITEMS,
    Limits,
    fhir_write_bytes,
    header_bytes,
    hl7_record_bytes,
    hl7_write_bytes,
    repetition_count,
    text_bytes,
)
from shared.messages import kept_bytes
from shared.mllp import MllpClient
from shared.settings import Settings
from shared.store import Document, Store

CORPUS = Path(__file__).parent / "corpus"
HL7 = {"Content-Type": "application/hl7-v2"}
FHIR = {"Content-Type": "application/fhir+json"}


def ref(control_id: str, *, note: str = "referral", segments: str = "", pid3: str = "") -> bytes:
    """A REF^I12 referral that maps (RF1, PID, NTE), with extra ``segments`` before the NTE."""
    pid3 = pid3 or "9449305552^^^NHS^NH"
    return (
        f"MSH|^~\\&|ICE|RBL|MSCC-HUB|REN|20260101120000||REF^I12^REF_I12|{control_id}|P|2.5\r"
        f"RF1|A|R||||{control_id}\rPID|1||{pid3}||TEST^PATIENT||19500101|F\r{segments}NTE|1||{note}\r"
    ).encode()


@contextlib.asynccontextmanager
async def hub(
    settings: Settings, store: Store, **update: Any
) -> AsyncIterator[tuple[IntakeService, httpx.AsyncClient]]:
    """Intake with these settings, on a real MLLP port, and an HTTP client for its application."""
    service = IntakeService(settings.model_copy(update=update), store)
    await service.start()
    transport = httpx.ASGITransport(app=create_app(service))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as client:
            yield service, client
    finally:
        await service.stop()


async def send_mllp(service: IntakeService, message: bytes) -> str:
    client = await MllpClient.connect("127.0.0.1", service.mllp.port, timeout_s=30)
    try:
        return (await client.send(message)).decode()
    finally:
        await client.close()


def msa(ack: str) -> list[str]:
    return next(s for s in ack.split("\r") if s.startswith("MSA")).split("|")


async def map_all(store: Store, limits: Limits = DEFAULT_LIMITS) -> None:
    await MapperService(store, WorkerConfig(limits=limits)).run(asyncio.Event(), burst=True)


async def record(store: Store, control_id: str) -> Document:
    doc = await store.messages.find_one({"header.control_id": control_id})
    assert doc is not None, f"no record of {control_id}"
    return doc


async def assert_refused(service: IntakeService, http: httpx.AsyncClient, message: bytes, setting: str) -> None:
    """Over MLLP and over HTTP: AR naming ``setting`` in MSA-3 and ERR, the bytes kept with the reason."""
    control_id = message.split(b"|")[9].decode()
    ack = await send_mllp(service, message)
    assert msa(ack)[1] == "AR" and setting in msa(ack)[3]
    assert any(s.startswith("ERR") and setting in s for s in ack.split("\r"))
    kept = await record(service.store, control_id)
    assert kept["status"] == "rejected" and setting in kept["reason"] and kept_bytes(kept) == message
    resent = message.replace(control_id.encode(), control_id.lower().encode())  # as long: the same estimates
    reply = await http.post("/hl7v2", content=resent, headers=HL7)
    assert reply.status_code == 200 and reply.headers["x-ack-code"] == "AR" and setting in reply.text
    kept = await record(service.store, control_id.lower())
    assert kept["status"] == "rejected" and setting in kept["reason"] and kept_bytes(kept) == resent


async def assert_accepted_and_mapped(
    service: IntakeService, http: httpx.AsyncClient, message: bytes, limits: Limits
) -> None:
    control_id = message.split(b"|")[9].decode()
    assert msa(await send_mllp(service, message))[1:3] == ["AA", control_id]
    resent = message.replace(control_id.encode(), control_id.lower().encode())  # as long: the same estimates
    reply = await http.post("/hl7v2", content=resent, headers=HL7)
    assert reply.headers["x-ack-code"] == "AA"
    await map_all(service.store, limits)
    for cid in (control_id, control_id.lower()):
        assert (await record(service.store, cid))["status"] == "mapped"


# --- HL7v2: each limit, refused and just under it -----------------------------------------------------


async def test_segments_over_the_limit_are_refused_and_at_the_limit_mapped(settings: Settings, store: Store) -> None:
    async with hub(settings, store, limit_segments=40) as (service, http):
        limits = Limits.from_settings(service.settings)
        at_limit = ref("SEG40", segments="NTE|1||line\r" * 36)  # MSH RF1 PID + 36 + NTE = 40
        await assert_accepted_and_mapped(service, http, at_limit, limits)
        await assert_refused(service, http, ref("SEG41", segments="NTE|1||line\r" * 37), "MSCC_LIMIT_SEGMENTS")


async def test_line_feeds_inside_a_field_do_not_count_as_segments(settings: Settings, store: Store) -> None:
    async with hub(settings, store, limit_segments=10) as (service, _):
        wrapped = ref("LF1", note="\n".join(f"line {i}" for i in range(30)))
        assert msa(await send_mllp(service, wrapped))[1] == "AA"


async def test_a_million_segments_are_refused_without_a_parse(intake: IntakeService) -> None:
    message = ref("MILLION", segments="ZZZ\r" * 1_000_000)
    assert len(message) > 3_900_000
    started = time.monotonic()
    ack = await send_mllp(intake, message)
    elapsed = time.monotonic() - started
    assert msa(ack)[1] == "AR" and "MSCC_LIMIT_SEGMENTS" in ack
    assert elapsed < 3, f"answered after {elapsed:.1f}s"  # a full read took over 4 s
    kept = await record(intake.store, "MILLION")
    assert kept["status"] == "rejected" and kept_bytes(kept) == message


async def test_repetitions_over_the_limit_are_refused_naming_the_field(settings: Settings, store: Store) -> None:
    async with hub(settings, store, limit_field_repetitions=20) as (service, http):
        limits = Limits.from_settings(service.settings)
        ids = [f"X{i}^^^RBL^MR" for i in range(21)]
        await assert_accepted_and_mapped(service, http, ref("REP20", pid3="~".join(ids[:20])), limits)
        over = ref("REP21", pid3="~".join(ids))
        await assert_refused(service, http, over, "MSCC_LIMIT_FIELD_REPETITIONS")
        assert (await record(store, "REP21"))["issues"][0]["location"] == "PID-3"


def estimates(message: bytes) -> tuple[int, int]:
    """The record and write estimates intake makes for ``message`` (ASCII, CR-separated)."""
    text = message.decode()
    segments = len([s for s in text.split("\r") if s])
    written = hl7_write_bytes(text_bytes(text), segments, repetition_count(message), header_bytes(message))
    return hl7_record_bytes(len(message), text_bytes(text)), written


async def test_the_estimated_write_over_the_limit_is_refused(settings: Settings, store: Store) -> None:
    at_limit = ref("TXN1", note="n" * 400_000)
    _, written = estimates(at_limit)
    over = ref("TXN2", note="n" * 400_000)
    async with hub(settings, store, limit_transaction_bytes=written) as (service, http):
        await assert_accepted_and_mapped(service, http, at_limit, Limits.from_settings(service.settings))
    async with hub(settings, store, limit_transaction_bytes=written - 1) as (service, http):
        await assert_refused(service, http, over, "MSCC_LIMIT_TRANSACTION_BYTES")


async def test_the_estimated_record_over_the_document_limit_is_refused(settings: Settings, store: Store) -> None:
    at_limit = ref("DOC1", note="d" * 200_000)
    size, _ = estimates(at_limit)
    async with hub(settings, store, limit_document_bytes=size) as (service, http):
        await assert_accepted_and_mapped(service, http, at_limit, Limits.from_settings(service.settings))
    async with hub(settings, store, limit_document_bytes=size - 1) as (service, http):
        await assert_refused(service, http, ref("DOC2", note="d" * 200_000), "MSCC_LIMIT_DOCUMENT_BYTES")


async def test_a_message_of_four_megabytes_of_notes_is_refused_by_default(intake: IntakeService) -> None:
    ack = await send_mllp(intake, ref("BIG39", note="y" * 3_900_000))
    assert msa(ack)[1] == "AR" and "MSCC_LIMIT_TRANSACTION_BYTES" in ack
    assert (await record(intake.store, "BIG39"))["status"] == "rejected"


async def test_a_message_over_the_byte_limit_is_refused_and_its_head_kept(settings: Settings, store: Store) -> None:
    async with hub(settings, store, mllp_max_message_bytes=64 * 1024) as (service, http):
        over = ref("BYTES1", note="b" * 70_000)
        ack = await send_mllp(service, over)
        assert msa(ack)[1] == "AR" and "MSCC_MLLP_MAX_MESSAGE_BYTES" in ack
        reply = await http.post("/hl7v2", content=over, headers=HL7)
        assert reply.status_code == 413 and "exceeds the limit" in reply.text
        kept = [d async for d in store.messages.find({"status": "rejected"})]
        assert len(kept) == 2 and all(over.startswith(kept_bytes(d) or b"-") and d["size"] == len(over) for d in kept)
        under = ref("BYTES2", note="b" * 60_000)
        await assert_accepted_and_mapped(service, http, under, Limits.from_settings(service.settings))


# --- FHIR ----------------------------------------------------------------------------------------------


def patient_entry(i: int) -> dict[str, Any]:
    return {
        "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}",
        "resource": {
            "resourceType": "Patient",
            "identifier": [{"system": "https://example.org/mrn", "value": f"P{i}"}],
        },
        "request": {"method": "POST", "url": "Patient"},
    }


def transaction(count: int, start: int = 0) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [patient_entry(start + i) for i in range(count)]}


def service_request(value: str, *, contained: int = 0, note: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "identifier": [{"system": "https://example.org/referral", "value": value}],
        "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9449305552"}},
    }
    if contained:
        body["contained"] = [
            {"resourceType": "Observation", "id": f"o{i}", "status": "final", "code": {"text": "obs"}}
            for i in range(contained)
        ]
    if note:
        body["note"] = [{"text": note}]
    return body


async def assert_fhir_refused(store: Store, reply: httpx.Response, setting: str, body: bytes) -> None:
    assert reply.status_code == 413, reply.text
    outcome = reply.json()
    assert outcome["resourceType"] == "OperationOutcome" and setting in outcome["issue"][0]["diagnostics"]
    kept = await store.messages.find_one({"status": "rejected", "raw": body})
    assert kept is not None and setting in kept["reason"]


async def test_bundle_entries_over_the_limit_are_refused(settings: Settings, store: Store) -> None:
    async with hub(settings, store, limit_bundle_entries=5) as (service, http):
        body = json.dumps(transaction(6)).encode()
        await assert_fhir_refused(
            store, await http.post("/fhir", content=body, headers=FHIR), "MSCC_LIMIT_BUNDLE_ENTRIES", body
        )
        accepted = await http.post("/fhir", content=json.dumps(transaction(5, 10)).encode(), headers=FHIR)
        assert accepted.status_code == 202
        await map_all(store, Limits.from_settings(service.settings))
        assert (await store.messages.find_one({"_id": accepted.headers["x-message-id"]}) or {})["status"] == "mapped"


async def test_a_bundle_of_twenty_thousand_entries_is_refused_before_validation(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    entry = {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}
    body = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [entry] * 20_000}).encode()
    assert len(body) < intake.settings.mllp_max_message_bytes
    started = time.monotonic()
    reply = await http.post("/fhir", content=body, headers=FHIR)
    assert time.monotonic() - started < 5
    await assert_fhir_refused(intake.store, reply, "MSCC_LIMIT_BUNDLE_ENTRIES", body)


async def test_contained_resources_over_the_limit_are_refused(settings: Settings, store: Store) -> None:
    async with hub(settings, store, limit_contained_resources=2) as (service, http):
        body = json.dumps(service_request("C3", contained=3)).encode()
        reply = await http.post("/fhir/ServiceRequest", content=body, headers=FHIR)
        await assert_fhir_refused(store, reply, "MSCC_LIMIT_CONTAINED_RESOURCES", body)
        created = await http.post(
            "/fhir/ServiceRequest", content=json.dumps(service_request("C2", contained=2)), headers=FHIR
        )
        assert created.status_code == 201
        await map_all(store, Limits.from_settings(service.settings))
        assert await store.messages.count_documents({"protocol": "fhir", "status": "mapped"}) == 1


async def test_a_fhir_body_over_the_estimated_write_is_refused(settings: Settings, store: Store) -> None:
    at_limit = json.dumps(service_request("W1", note="w" * 300_000)).encode()
    written = fhir_write_bytes(len(at_limit), 0, 1)
    async with hub(settings, store, limit_transaction_bytes=written) as (service, http):
        assert (await http.post("/fhir/ServiceRequest", content=at_limit, headers=FHIR)).status_code == 201
        await map_all(store, Limits.from_settings(service.settings))
        assert await store.messages.count_documents({"protocol": "fhir", "status": "mapped"}) == 1
    over = json.dumps(service_request("W2", note="w" * 300_000)).encode()
    async with hub(settings, store, limit_transaction_bytes=written - 1) as (_, http):
        reply = await http.post("/fhir/ServiceRequest", content=over, headers=FHIR)
        await assert_fhir_refused(store, reply, "MSCC_LIMIT_TRANSACTION_BYTES", over)


# --- the mapper ----------------------------------------------------------------------------------------


async def test_thousands_of_unmapped_segments_give_a_bounded_outcome_with_counts(intake: IntakeService) -> None:
    message = ref("UNMAPPED", segments="".join(f"ZZ{i % 10}|{i}\r" for i in range(3000)))
    assert msa(await send_mllp(intake, message))[1] == "AA"
    stored = await record(intake.store, "UNMAPPED")
    unmapped = make_mapper()(stored).unmapped
    assert len(unmapped) >= 3000
    await map_all(intake.store)
    done = await record(intake.store, "UNMAPPED")
    assert done["status"] == "mapped"
    processing = done["processing"]
    assert processing["unmapped"] == unmapped[:OUTCOME_LIST_ITEMS]
    assert processing["omitted"] == {"unmapped": len(unmapped) - OUTCOME_LIST_ITEMS}
    said = [i["diagnostics"] for i in processing["issues"] if "first items" in i["diagnostics"]]
    assert said == [f"the outcome lists only their first items: {len(unmapped) - OUTCOME_LIST_ITEMS} more unmapped"]
    assert len(bson.encode(done)) < len(message) * 2 + 1024 * 1024


async def test_a_message_too_large_to_write_fails_alone_and_its_batch_maps_in_the_same_cycle(
    intake: IntakeService, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(4):
        assert msa(await send_mllp(intake, ref(f"GOOD{i}")))[1] == "AA"
    # Planted as if accepted before the limits: a diagnosis text copied three times into one Condition
    # makes a document over MongoDB's 16 MiB.
    template = await record(intake.store, "GOOD0")
    text = template["text"].replace("NTE|1||referral", f"DG1|1||C80^{'q' * 6_000_000}^I10|x|||W")
    planted = {
        **template,
        "_id": "planted",
        "text": text,
        "raw": b"",
        "header": {**template["header"], "control_id": "PLANTED"},
    }
    planted.pop("dedup_key", None)
    planted.pop("control_key", None)
    await intake.store.messages.insert_one(planted)
    worker = MapperWorker(intake.store, make_mapper(), WorkerConfig())
    with caplog.at_level(logging.INFO):
        assert await worker.run_once() == 5  # one cycle
    # The message's own size, not an outage: one warning naming it and what to do, never an error.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    [warned] = [r for r in caplog.records if "because of the input" in r.getMessage()]
    assert warned.levelno == logging.WARNING and warned.__dict__["record"] == "planted" and warned.exc_info is None
    assert "MSCC_LIMIT_" in warned.getMessage()  # the setting that keeps such messages out at intake
    failed = await record(intake.store, "PLANTED")
    assert failed["status"] == "failed" and "next_attempt_at" not in failed
    assert failed["processing"]["outcome"]["issue"][0]["code"] == "too-costly"
    for i in range(4):
        good = await record(intake.store, f"GOOD{i}")
        assert good["status"] == "mapped" and good["map_attempts"] == 1
    assert worker.stats.retried == 0 and worker.stats.failed == 1 and worker.stats.mapped == 4


async def test_a_batch_is_written_in_transactions_within_the_limit(intake: IntakeService) -> None:
    for i in range(6):
        assert msa(await send_mllp(intake, ref(f"PACK{i}", note="p" * 150_000)))[1] == "AA"
    # Each is estimated near 1 MiB: a 2 MiB transaction limit writes the six in three transactions.
    worker = MapperWorker(intake.store, make_mapper(), WorkerConfig(limits=Limits(transaction_bytes=2 * 1024 * 1024)))
    assert await worker.run_once() == 6
    assert worker.stats.mapped == 6 and worker.stats.failed == 0
    assert await intake.store.messages.count_documents({"status": "mapped"}) == 6


# --- the estimates stay above what mapping writes ------------------------------------------------------


def mapped_bytes(result: MappingResult) -> int:
    """What writing ``result`` into an empty database stores: each version as current and history."""
    total = sum(len(bson.encode(r)) for r in result.resources)
    for patch in result.patches:
        out = patch.apply(None) if patch.apply_with is None else patch.apply_with(None, {})
        total += len(bson.encode(out))
    return 2 * total


def corpus_messages() -> list[bytes]:
    found = []
    for path in sorted((CORPUS).rglob("*.hl7")):
        raw = path.read_bytes()
        if raw.startswith(b"MSH"):
            found.append(raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r"))
    return found


def worst_cases() -> list[bytes]:
    return [
        ref("W1", segments="".join(f"DG1|{i}||C{i}^Diagnosis {i}^I10|{'t' * 50}|||W\r" for i in range(300))),
        ref("W2", segments="".join(f"AL1|{i}|DA|A{i}^Allergen {i}|SV|rash\r" for i in range(300))),
        ref("W3", pid3="~".join(f"X{i}^^^RBL^MR" for i in range(900))),
        ref("W4", segments=f"DG1|1||C80^{'q' * 200_000}^I10|{'r' * 200_000}|||W\r"),
        ref("W5").replace(b"|ICE|RBL|", b"|ICE|" + b"R" * 5000 + b"|"),
    ]


@pytest.mark.parametrize("source", ["corpus", "worst"])
def test_the_write_estimate_stays_above_what_mapping_writes(source: str) -> None:
    messages = corpus_messages() if source == "corpus" else worst_cases()
    checked = 0
    for message in messages:
        text = message.decode("latin-1")
        try:
            result = map_hl7v2(text)
        except MappingError:
            continue
        segments = len([s for s in message.split(b"\r") if s.strip()])
        estimate = hl7_write_bytes(text_bytes(text), segments, repetition_count(message), header_bytes(message))
        assert mapped_bytes(result) <= estimate, message[:80]
        checked += 1
    assert checked >= (50 if source == "corpus" else 5)


def test_the_limits_defaults_are_the_settings_defaults() -> None:
    assert Limits.from_settings(Settings(_env_file=None)) == DEFAULT_LIMITS  # type: ignore[call-arg]
