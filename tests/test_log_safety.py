"""Logs carry no names, dates of birth or free text from messages, whatever a database error quotes.

Each worker (mapper, notifier, pathway) is made to meet a real database error that quotes patient data:
a unique index is planted in the test database so that the worker's own write collides on a value taken
from a message (the patient's name and birth date, a receiver's answer naming the patient, the free text of
a referral). The logs are configured as the hub configures them (``shared.logging.configure``), with
pytest's capture behind the hub's handler; the planted values must appear in no record: message,
arguments, extra fields or traceback. The hub's own handler output is checked too.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiohttp import web
from bson.errors import InvalidDocument
from pymongo.errors import AutoReconnect, BulkWriteError
from receivers import (
    RBL_REFERRALS,
    loopback_settings,
    notification_type,
    post_subscription,
    rest_hook_channel,
    serve_http,
    subscription_body,
)

from services.intake.service import IntakeService
from services.mapper.service import MapperService
from services.notifier.fanout import FanOutConflict
from services.notifier.http import client_session
from services.notifier.service import NotifierService
from services.pathway.reports import ReportFollower
from shared.log_safety import PatientSafeFilter, summary
from shared.logging import configure
from shared.settings import Settings
from shared.store import Store

NAME, BORN, BORN_HL7 = "PLANTEDNAME", "1956-11-04", "19561104"
HL7 = {"Content-Type": "application/hl7-v2"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return loopback_settings(settings, notifier_timeout_s=2.0, notifier_max_attempts=2)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture, settings: Settings) -> Iterator[Any]:
    """The hub's logging (``configure``; its handler writing to a buffer here), with pytest's capture
    after the hub's handler; yields a check that no record, and nothing the hub's handler wrote, holds
    any of the given texts."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    configure(settings)
    [hub] = root.handlers
    output = io.StringIO()
    assert isinstance(hub, logging.StreamHandler)
    hub.setStream(output)
    root.addHandler(caplog.handler)

    def clean(*texts: str, expect: str, traceback: bool = True) -> None:
        records = [r for r in caplog.records if expect in r.getMessage()]
        assert records, f"no record {expect!r}: {[r.getMessage() for r in caplog.records]}"
        assert any(r.exc_info for r in records) or not traceback  # a traceback was logged, and checked below
        written = output.getvalue()
        assert expect in written
        for record in caplog.records:
            seen = [record.getMessage(), caplog.handler.format(record), str(vars(record))]
            for text in texts:
                assert not any(text in s for s in seen), f"{text!r} logged in {record.getMessage()!r}"
        for text in texts:
            assert text not in written

    try:
        yield clean
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def referral(control: str, nhs_number: str, *, note: str | None = None) -> bytes:
    lines = [
        f"MSH|^~\\&|ICE|RBL|MSCC-HUB|REN|20261125093000||REF^I12^REF_I12|{control}|P|2.5",
        f"RF1|A^Accepted|S^STAT|MSCC^Metastatic spinal cord compression||R^Referral|{control}|||Suspected MSCC",
        "PRD|RP|ONCOLOGY^ACUTE||^^^RBL",
        f"PID|1||{nhs_number}^^^NHS^NH~{control}^^^RBL^MR||{NAME}^DAVID||{BORN_HL7}|M",
        "PV1|1|I|Ward 5^^^RBL",
        *([f"NTE|1||{note}"] if note else []),
    ]
    return ("\r".join(lines) + "\r").encode()


async def send(http: httpx.AsyncClient, message: bytes) -> None:
    answer = await http.post("/hl7v2", content=message, headers=HL7)
    assert "MSA|AA" in answer.text, answer.text


async def test_the_mapper_logs_no_patient_data_from_a_duplicate_key(
    http: httpx.AsyncClient, store: Store, logs: Any
) -> None:
    # A unique index on the Patient's family name and birth date, and a patient already holding them.
    await store.resources.create_index(
        [("resource.name.family", 1), ("resource.birthDate", 1)],
        unique=True,
        partialFilterExpression={"type": "Patient"},
        name="planted",
    )
    planted = {"name": [{"family": NAME}], "birthDate": BORN, "resourceType": "Patient", "id": "planted"}
    await store.resources.insert_one({"_id": "Patient/planted", "type": "Patient", "resource": planted})
    await send(http, referral("LOG-MAP-1", "9449305552"))
    await MapperService(store).run(asyncio.Event(), burst=True)
    record = await store.messages.find_one({"header.control_id": "LOG-MAP-1"})
    assert record is not None and record["processing"]["status"] == "retrying"  # it met the database error
    logs(NAME, BORN, expect="writing resources gave up", traceback=False)


async def test_the_notifier_logs_no_patient_data_from_a_duplicate_key(
    http: httpx.AsyncClient, intake: IntakeService, logs: Any
) -> None:
    store, settings = intake.store, intake.settings
    said = f"{NAME} born {BORN} is not known here"

    async def receiver(request: web.Request) -> web.Response:
        if notification_type(await request.json()) == "handshake":
            return web.Response(status=200)
        return web.Response(status=500, text=said)

    # The receiver's answer names the patient; a delivery already holds the error it makes, uniquely.
    await store.deliveries.create_index(
        "last_error", unique=True, partialFilterExpression={"last_error": {"$type": "string"}}, name="planted"
    )
    error = f"HTTP 500 Internal Server Error: {said}"
    await store.deliveries.insert_one({"_id": "planted", "subscription_id": "none", "last_error": error})
    async with serve_http(receiver) as base:
        body = subscription_body(
            settings, rest_hook_channel(f"{base}/hook"), topic="referral-status", reason="AOS", filters=[RBL_REFERRALS]
        )
        await post_subscription(http, body)
        await send(http, referral("LOG-NOT-1", "9434765919"))
        await MapperService(store).run(asyncio.Event(), burst=True)
        async with client_session(settings) as session:
            await NotifierService(store, settings, session).run(asyncio.Event(), burst=True)
    logs(NAME, BORN, expect="notifier lane: database error")


async def test_the_pathway_logs_no_free_text_from_a_duplicate_key(
    http: httpx.AsyncClient, store: Store, settings: Settings, logs: Any
) -> None:
    # The referral's free text (an NTE) names the patient. The MRI report follower writes the referral's
    # "mri-reported" version, which repeats it, and a planted unique index on it refuses the write.
    await send(http, referral("LOG-PW-1", "9449305552", note=f"{NAME} born {BORN} fell at home"))
    await MapperService(store).run(asyncio.Event(), burst=True)
    [request] = [d async for d in store.resources.find({"type": "ServiceRequest"})]
    at = datetime.now(UTC) - timedelta(hours=3)
    for step in ("triaged-accepted", "mri-requested"):
        at += timedelta(minutes=30)
        moved = await http.post(
            f"/fhir/ServiceRequest/{request['id']}/$transition",
            json={
                "resourceType": "Parameters",
                "parameter": [{"name": "step", "valueCode": step}, {"name": "time", "valueDateTime": at.isoformat()}],
            },
            headers={"Content-Type": "application/fhir+json"},
        )
        assert moved.status_code == 200, moved.text
    reported = {"type": "ServiceRequest", "resource.extension.valueCode": "mri-reported"}
    await store.history.create_index(
        "resource.note.text", unique=True, partialFilterExpression=reported, name="planted"
    )
    planted = {"note": [{"text": request["resource"]["note"][0]["text"]}], "extension": [{"valueCode": "mri-reported"}]}
    await store.history.insert_one(
        {"_id": "ServiceRequest/planted/_history/1", "type": "ServiceRequest", "resource": planted}
    )
    await send(http, oru("LOG-PW-2", "9449305552", datetime.now(UTC) - timedelta(hours=1)))
    await MapperService(store).run(asyncio.Event(), burst=True)
    [outcome] = await ReportFollower(store, settings.pathway_mri_pattern).run_once(datetime.now(UTC))
    assert outcome.outcome == "refused"  # it met the database error: the move was not written
    logs(NAME, BORN, expect=f"moving ServiceRequest/{request['id']} gave up", traceback=False)


def oru(control: str, nhs_number: str, when: datetime) -> bytes:
    stamp = when.strftime("%Y%m%d%H%M%S") + "+0000"
    lines = [
        f"MSH|^~\\&|RIS|REN|MSCC-HUB|REN|{stamp}||ORU^R01^ORU_R01|{control}|P|2.5.1",
        f"PID|1||{nhs_number}^^^NHS^NH||{NAME}^DAVID||{BORN_HL7}|M",
        f"ORC|RE|MRI-{control}^RIS|ACC-{control}^RIS||CM",
        f"OBR|1|MRI-{control}^RIS|ACC-{control}^RIS|MRWSP^MRI whole spine^L|||{stamp}|||||||||||||||{stamp}||RAD|F",
        "OBX|1|TX|REP^Report^L||Cord compression at T10.||||||F",
    ]
    return ("\r".join(lines) + "\r").encode()


def test_every_place_a_database_error_can_hide_in_a_record_is_cleaned() -> None:
    document = {"name": [{"family": NAME}], "birthDate": BORN}
    bulk = BulkWriteError({"writeErrors": [{"index": 0, "code": 11000, "errmsg": f"dup key: {NAME}", "op": document}]})
    try:
        try:
            raise bulk
        except BulkWriteError as exc:
            raise FanOutConflict(f"another notifier dispatched first: {exc}") from exc
    except FanOutConflict as exc:
        chained = exc
    unencodable = InvalidDocument(f"cannot encode object: {BORN!r}, of type: <class 'date'>")
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed: %s %r", (bulk, unencodable), None)
    record.exc_info = (FanOutConflict, chained, chained.__traceback__)
    record.reason = str(bulk)[:300]  # as ``extra={"reason": ...}`` leaves it
    record.cut = f'E11000 duplicate key error index: x dup key: {{ : "{NAME}"'  # a text cut short
    assert PatientSafeFilter().filter(record)
    formatted = logging.Formatter().format(record)
    for text in (NAME, BORN):
        assert text not in formatted and text not in str(vars(record))
    assert "BulkWriteError (code 11000)" in formatted and "FanOutConflict" in formatted
    assert record.exc_info is not None and type(record.exc_info[1]) is FanOutConflict
    assert summary(bulk) == "BulkWriteError (code 11000)"
    # A connection failure names servers, never a document: its text stays for the operator.
    kept = logging.LogRecord("x", logging.ERROR, __file__, 1, "%s", (AutoReconnect("db1:27017: refused"),), None)
    PatientSafeFilter().filter(kept)
    assert "db1:27017: refused" in kept.getMessage()
