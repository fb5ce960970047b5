"""Hostile input: every malformed, oversized or impossible input gets a clear 4xx answer (or an HL7v2
AR), never a 500 or a 503 "try again" for something that can never succeed; the refused input is kept;
keys built from long identifiers always fit MongoDB's indexes; the log carries no patient data."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fhir_referrals import referral as trust_referral
from pymongo import AsyncMongoClient
from pymongo.errors import (
    AutoReconnect,
    DocumentTooLarge,
    DuplicateKeyError,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    WriteError,
)

from services.api.app import create_app
from services.intake.hl7_keys import control_key
from services.intake.service import IntakeService
from shared.auth import Caller
from shared.db_errors import database_failure, is_transient, safe_summary
from shared.fhir import FHIR_JSON, FhirError, parse_json
from shared.ids import MAX_KEY_BYTES, fitting_key
from shared.settings import Settings
from shared.store import Document, Store

FHIR = {"Content-Type": FHIR_JSON}
HL7 = {"Content-Type": "application/hl7-v2"}
ENGINE = Caller("mllp:engine", "", frozenset({"system/hl7v2.c"}))


def referral(number: str, **extra: Any) -> dict[str, Any]:
    return trust_referral(number, "RBL", **extra)


@pytest.fixture
async def client(intake: IntakeService) -> AsyncIterator[httpx.AsyncClient]:
    """The app in process; a server error is answered as the client would see it (a 500), not raised."""
    transport = httpx.ASGITransport(app=create_app(intake), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as http:
        yield http


def assert_outcome(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith(FHIR_JSON)
    outcome: dict[str, Any] = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "error"
    assert "retry-after" not in response.headers
    return outcome


async def rejected(store: Store) -> list[dict[str, Any]]:
    return await store.messages.find({"status": "rejected"}).to_list()


# --- JSON bodies -----------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["/fhir/ServiceRequest", "/fhir", "/fhir/ServiceRequest/$validate"])
async def test_a_5000_digit_integer_is_refused_not_crashed(
    endpoint: str, client: httpx.AsyncClient, store: Store
) -> None:
    body = json.dumps(referral("HUGE-INT")).encode()[:-1] + b', "x": ' + b"7" * 5000 + b"}"
    response = await client.post(endpoint, content=body, headers=FHIR)
    outcome = assert_outcome(response, 400)
    assert "digits" in outcome["issue"][0]["diagnostics"]
    if endpoint != "/fhir/ServiceRequest/$validate":
        [kept] = await rejected(store)
        assert kept["raw"] == body and kept["http_status"] == 400


@pytest.mark.parametrize("endpoint", ["/fhir/ServiceRequest", "/fhir"])
async def test_a_duplicate_json_key_is_refused_naming_it_and_kept(
    endpoint: str, client: httpx.AsyncClient, store: Store
) -> None:
    body = json.dumps(referral("DUP-KEY")).encode()[:-1] + b', "status": "revoked"}'
    response = await client.post(endpoint, content=body, headers=FHIR)
    outcome = assert_outcome(response, 400)
    assert "'status'" in outcome["issue"][0]["diagnostics"]
    [kept] = await rejected(store)
    assert kept["raw"] == body and "status" in kept["reason"]
    assert await store.resources.count_documents({}) == 0


def test_duplicate_keys_are_found_at_any_depth() -> None:
    with pytest.raises(FhirError) as caught:
        parse_json(b'{"resourceType": "Patient", "name": [{"family": "A", "family": "B"}]}')
    assert caught.value.status == 400
    assert caught.value.issues[0]["expression"] == ["Patient.name[0].family"]


@pytest.mark.parametrize("char", ["\u0000", "\u0001", "\u001b", "\u007f"])
async def test_control_characters_in_fhir_strings_are_refused_naming_the_path(
    char: str, client: httpx.AsyncClient, store: Store
) -> None:
    resource = referral("CTRL", note=[{"text": f"back pain{char}legs weak"}])
    body = json.dumps(resource).encode()
    response = await client.post("/fhir/ServiceRequest", content=body, headers=FHIR)
    outcome = assert_outcome(response, 400)
    assert outcome["issue"][0]["expression"] == ["ServiceRequest.note[0].text"]
    [kept] = await rejected(store)
    assert kept["raw"] == body


async def test_tab_cr_and_lf_are_allowed_in_fhir_strings(client: httpx.AsyncClient) -> None:
    resource = referral("WS", note=[{"text": "line one\r\nline two\tindented"}])
    response = await client.post("/fhir/ServiceRequest", content=json.dumps(resource), headers=FHIR)
    assert response.status_code == 201, response.text


def test_a_control_character_in_a_key_is_refused() -> None:
    with pytest.raises(FhirError) as caught:
        parse_json(b'{"resourceType": "Patient", "a\\u0000b": 1}')
    assert caught.value.status == 400


async def test_an_identifier_longer_than_an_index_key_is_refused_and_kept(
    client: httpx.AsyncClient, store: Store
) -> None:
    body = json.dumps(referral("R" * 2000)).encode()
    response = await client.post("/fhir/ServiceRequest", content=body, headers=FHIR)
    outcome = assert_outcome(response, 422)
    assert outcome["issue"][0]["expression"] == ["ServiceRequest.identifier[0].value"]
    [kept] = await rejected(store)
    assert kept["raw"] == body and kept["http_status"] == 422


async def test_a_long_identifier_system_still_gives_keys_that_fit(client: httpx.AsyncClient, store: Store) -> None:
    resource = referral("SHORT")
    resource["identifier"][0]["system"] = "https://example.org/" + "s" * 1500
    body = json.dumps(resource)
    response = await client.post("/fhir/ServiceRequest", content=body, headers=FHIR)
    assert response.status_code == 201, response.text
    again = await client.post("/fhir/ServiceRequest", content=body, headers=FHIR)
    assert again.status_code == 200 and again.json()["id"] == response.json()["id"]
    doc = await store.resources.find_one({"type": "ServiceRequest"})
    assert doc is not None and doc["resource"]["identifier"][0]["system"] == resource["identifier"][0]["system"]
    assert all(len(key.encode()) <= MAX_KEY_BYTES for key in doc["identifier_keys"])
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "identifier": {"system": "https://example.org/" + "b" * 1500, "value": "B1"},
        "entry": [{"resource": referral("IN-BATCH"), "request": {"method": "POST", "url": "ServiceRequest"}}],
    }
    first = await client.post("/fhir", content=json.dumps(bundle), headers=FHIR)
    assert first.status_code == 202, first.text
    resent = await client.post("/fhir", content=json.dumps(bundle), headers=FHIR)
    assert resent.headers.get("x-duplicate") == "true"


def test_short_keys_are_unchanged_and_long_ones_become_a_digest() -> None:
    assert fitting_key("hl7v2|PAS|RBL|MSG0001") == "hl7v2|PAS|RBL|MSG0001"
    long = "hl7v2|PAS|RBL|" + "9" * 3000
    key = fitting_key(long)
    assert len(key.encode()) <= MAX_KEY_BYTES and key.startswith("hl7v2|PAS|RBL|999")
    assert key != fitting_key(long + "0") and key == fitting_key(long)
    wide = "é" * 600  # 1200 bytes of UTF-8
    assert len(fitting_key(wide).encode()) <= MAX_KEY_BYTES


# --- search and paths ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "birthdate=2026-02-30",
        "birthdate=9999-12-31T24:00",
        "birthdate=0000-01-01",
        "birthdate=2026-13",
        "_lastUpdated=gt10000-01-01",
        "_lastUpdated=2026-02-30",
        "_lastUpdated=le9999-12-31T23:59:60Z",
    ],
)
async def test_impossible_dates_in_search_are_400(query: str, client: httpx.AsyncClient) -> None:
    response = await client.get(f"/fhir/Patient?{query}")
    outcome = assert_outcome(response, 400)
    assert query.split("=", 1)[0] in outcome["issue"][0]["diagnostics"]


async def test_possible_dates_in_search_still_work(client: httpx.AsyncClient) -> None:
    for query in (
        "birthdate=2024-02-29",
        "birthdate=ge1958",
        "birthdate=9999-12-31",
        "birthdate=gt9999",
        "_lastUpdated=gt2026-01-05T09:30:00Z",
        "_lastUpdated=2026",
        "_lastUpdated=le9999-12-31",
        "_lastUpdated=gt9999",
        "_lastUpdated=9999-12",
    ):
        response = await client.get(f"/fhir/Patient?{query}")
        assert response.status_code == 200, (query, response.text)


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/Patient?_offset=" + "9" * 25,
        "/fhir/Patient?_count=18446744073709551616",
        "/fhir/Patient?_count=" + "9" * 5000,
        "/fhir/Patient/_history?_count=" + "9" * 5000,
        "/fhir/Patient/_history?_offset=" + "9" * 5000,
        "/fhir/Patient/_history?_count=%C2%B2",
    ],
)
async def test_paging_beyond_64_bits_is_400(path: str, client: httpx.AsyncClient) -> None:
    assert_outcome(await client.get(path), 400)


@pytest.mark.parametrize("value", ["%00", "a%00b", "x%01", "%1F", "smith%7F"])
@pytest.mark.parametrize("name", ["name", "identifier", "_id", "family"])
async def test_control_characters_in_a_search_value_are_400(name: str, value: str, client: httpx.AsyncClient) -> None:
    outcome = assert_outcome(await client.get(f"/fhir/Patient?{name}={value}"), 400)
    assert name in outcome["issue"][0]["diagnostics"]


async def test_huge_elements_list_is_refused(client: httpx.AsyncClient) -> None:
    names = ",".join(f"e{i}" for i in range(5000))
    assert_outcome(await client.get(f"/fhir/Patient?_elements={names}"), 400, 413)
    form = {"_elements": names}
    assert_outcome(await client.post("/fhir/Patient/_search", data=form), 400, 413)


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/Patient/" + "a" * 65,
        "/fhir/Patient/a%20b",
        "/fhir/Patient/a%00b",
        "/fhir/Patient/%E2%98%83",
        "/fhir/Patient/abc/_history/1%00",
        "/fhir/Patient/" + "a" * 5000 + "/_history",
        "/fhir/ServiceRequest/a%0Ab/$transition",
    ],
)
async def test_path_ids_with_odd_characters_or_too_long_are_400(path: str, client: httpx.AsyncClient) -> None:
    method = "POST" if path.endswith("$transition") else "GET"
    outcome = assert_outcome(await client.request(method, path), 400)
    assert "id" in outcome["issue"][0]["diagnostics"]


async def test_a_put_on_an_odd_id_is_400(client: httpx.AsyncClient) -> None:
    body = json.dumps(referral("PUT"))
    assert_outcome(await client.put("/fhir/ServiceRequest/a%09b", content=body, headers=FHIR), 400)


# --- HL7v2 keys ------------------------------------------------------------------------------------


def _hl7(control_id: str, sender: str = "PAS", facility: str = "RBL", name: str = "TEST^PATIENT") -> bytes:
    return (
        f"MSH|^~\\&|{sender}|{facility}|MSCC-HUB|REN|20260101120000||ADT^A01|{control_id}|P|2.5\r"
        f"PID|1||9449305552^^^NHS^NH||{name}||19580214|F\r"
    ).encode()


@pytest.mark.parametrize(
    ("control_id", "sender", "facility"),
    [
        pytest.param("C" * 1100, "PAS", "RBL", id="long-control-id"),
        pytest.param("C1", "P" * 1500, "RBL", id="long-msh3"),
        pytest.param("C2", "PAS", "F" * 1500, id="long-msh4"),
    ],
)
async def test_long_hl7v2_keys_are_stored_and_acknowledged(
    control_id: str, sender: str, facility: str, client: httpx.AsyncClient, store: Store
) -> None:
    message = _hl7(control_id, sender, facility)
    response = await client.post("/hl7v2", content=message, headers=HL7)
    assert response.status_code == 200, response.text
    assert response.headers["x-ack-code"] == "AA", response.text
    assert f"MSA|AA|{control_id}\r" in response.text
    doc = await store.messages.find_one({"_id": response.headers["x-message-id"]})
    assert doc is not None and doc["raw"] == message and doc["status"] == "ready"
    assert len(doc["dedup_key"].encode()) <= MAX_KEY_BYTES
    assert len(doc["header"]["control_id"].encode()) <= MAX_KEY_BYTES
    assert doc["control_key"] == f"hl7v2|{sender}|{facility}|{control_id}"  # the full value kept
    # A resend is still recognised: the original ACK again, the original record counted.
    again = await client.post("/hl7v2", content=message, headers=HL7)
    assert again.content == response.content
    assert await store.messages.count_documents({"protocol": "hl7v2"}) == 1


async def test_a_header_no_index_takes_is_refused_not_resent_and_its_bytes_kept(
    client: httpx.AsyncClient, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A header field an index of the deployment cannot take (here an extra index on MSH-3) fails for
    ever: AR (never AE "resend", which a sender would repeat for ever), and the bytes kept without it.
    The input caused it, not an outage: one warning names the record kept and what to do, no error."""
    await store.messages.create_index([("header.sending_application", 1)], name="operator_extra")
    message = _hl7("C3", "P" * 1500)
    with caplog.at_level(logging.INFO):
        response = await client.post("/hl7v2", content=message, headers=HL7)
    assert response.status_code == 200 and response.headers["x-ack-code"] == "AR", response.text
    assert "sending it again will not help" in response.text
    record_id = response.headers["x-message-id"]
    doc = await store.messages.find_one({"_id": record_id})
    assert doc is not None and doc["raw"] == message and doc["status"] == "rejected"
    assert "KeyTooLong" in doc["reason"] or "17280" in doc["reason"]
    # The record as stored: every field, in order, the header left out.
    assert list(doc) == [
        "_id", "received_at", "protocol", "channel", "peer", "caller", "raw", "size", "attempts", "status",
        "reason", "header", "text", "charset", "issues", "ack", "correlation_id",
    ]  # fmt: skip
    assert doc["header"] is None and doc["text"] == message.decode("latin-1") and doc["size"] == len(message)
    assert doc["issues"] == [{"severity": "E", "code": 207, "text": doc["reason"], "location": ""}]
    assert doc["ack"]["code"] == "AR" and "MSA|AR|C3|" in doc["ack"]["text"]
    assert doc["correlation_id"] == record_id and doc["attempts"] == 0
    assert_one_warning(caplog, record_id, "index")


def assert_one_warning(caplog: pytest.LogCaptureFixture, record_id: str, action: str) -> None:
    """A refusal the input caused: one warning in one line naming the record and what to do; no error
    (an operator's alerting keys on errors)."""
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, [r.getMessage() for r in warned]
    [line] = warned
    assert line.__dict__.get("record") == record_id, vars(line)
    assert "because of the input" in line.getMessage() and action in line.getMessage(), line.getMessage()
    assert line.exc_info is None and "\n" not in line.getMessage()


async def test_a_fhir_body_no_index_takes_is_refused_kept_and_logged_as_a_warning(
    client: httpx.AsyncClient, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A resource's free text that an index added to the deployment cannot take: 422, kept, a warning."""
    await store.resources.create_index([("resource.note.text", 1)], name="operator_extra")
    body = json.dumps(referral("LONG-NOTE", note=[{"text": "n" * 1500}])).encode()
    with caplog.at_level(logging.INFO):
        response = await client.post("/fhir/ServiceRequest", content=body, headers=FHIR)
    assert_outcome(response, 422)
    [kept] = await rejected(store)
    assert kept["raw"] == body and kept["http_status"] == 422
    assert_one_warning(caplog, kept["_id"], "index")


async def test_a_database_outage_is_still_logged_as_an_error(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """No server to write to (a real client, nothing listening): an outage, logged as an error."""
    dead: AsyncMongoClient[Document] = AsyncMongoClient(
        "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300&connectTimeoutMS=300"
    )
    service = IntakeService(settings, Store(dead, "unreachable"))
    await service.start(mllp=False)
    try:
        with caplog.at_level(logging.INFO):
            reply = await service.hl7.receive(_hl7("DOWN1"), channel="http", peer="test", caller=ENGINE)
    finally:
        await service.stop()
        await dead.close()
    assert reply.code == "AE" and not reply.stored
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == ["inbound records not stored"], [r.getMessage() for r in caplog.records]
    assert errors[0].__dict__["error"] == "ServerSelectionTimeoutError"
    assert not [r for r in caplog.records if "because of the input" in r.getMessage()]


def test_short_hl7v2_keys_do_not_change() -> None:
    from services.intake.header import read_header_fields

    header = read_header_fields(_hl7("MSG0001").decode().split("\r")[0])
    assert control_key(header) == "hl7v2|PAS|RBL|MSG0001"
    assert header.to_doc()["control_id"] == "MSG0001"


# --- database errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        AutoReconnect("connection reset"),
        NotPrimaryError("not primary"),
        NetworkTimeout("timed out"),
        OperationFailure("write conflict", code=112),
    ],
)
def test_transient_database_errors_ask_for_a_resend(exc: Exception) -> None:
    assert is_transient(exc)
    error = database_failure(exc, "Patient/1 not read")
    assert error.status == 503


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (DocumentTooLarge("BSON document too large"), 413),
        (OperationFailure("Total size of all transaction operations must be less than 16793600", code=257), 413),
        (WriteError("key too large to index, failing 1040 { : 'SMITH' }", code=17280), 422),
        (DuplicateKeyError("E11000 duplicate key dup key: { : 'SMITH' }", code=11000), 409),
        (WriteError("Document failed validation", code=121, details={"op": {"name": "SMITH"}}), 422),
        (OperationFailure("bad regex SMITH", code=51091), 400),
    ],
)
def test_permanent_database_errors_are_never_try_again(exc: Exception, status: int) -> None:
    assert not is_transient(exc)
    error = database_failure(exc, "ServiceRequest not stored")
    assert error.status == status
    assert "SMITH" not in json.dumps(error.outcome())
    assert "SMITH" not in json.dumps(safe_summary(exc))


async def test_a_permanent_database_error_reaching_the_app_is_not_503(client: httpx.AsyncClient, store: Store) -> None:
    """A failure the routes did not turn into an answer: the app's handler tells permanent from transient."""
    # Force every insert into resources to fail validation: a permanent error, never "try again".
    await store.db.command("collMod", "resources", validator={"never": {"$exists": True}})
    body = json.dumps(referral("VALIDATOR"))
    response = await client.post("/fhir/ServiceRequest", content=body, headers=FHIR)
    assert_outcome(response, 422)


async def test_database_errors_do_not_put_patient_data_in_the_log(
    client: httpx.AsyncClient, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A duplicate key's error text includes the key, here the whole message text with the patient's name."""
    await store.messages.create_index("text", unique=True, name="hostile_text")
    message = _hl7("", name="ZANZIBAR-QUEST^OPHELIA")  # no control id: no dedup key, so only the index refuses
    first = await client.post("/hl7v2", content=message, headers=HL7)
    assert first.headers["x-ack-code"] == "AA", first.text
    # INFO and up, as the hub logs (shared.logging keeps the driver's own DEBUG command log off).
    with caplog.at_level(logging.INFO):
        await client.post("/hl7v2", content=message, headers=HL7)
    assert caplog.records, "the failure was not logged at all"
    for record in caplog.records:
        text = json.dumps(vars(record), default=str)
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        assert "ZANZIBAR" not in text and "19580214" not in text, text


# --- partial bodies --------------------------------------------------------------------------------


async def _send_partial(
    app: Any, path: str, content_type: str, head: bytes, *, trickle_s: float | None = None
) -> list[dict[str, Any]]:
    """Send ``head`` as the start of a longer body, then disconnect (as a client that went away), or,
    with ``trickle_s``, go on sending a byte every ``trickle_s`` seconds and never finish."""
    events: list[dict[str, Any]] = [
        {"type": "http.request", "body": head, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if trickle_s is not None and len(events) < 2:
            await asyncio.sleep(trickle_s)
            return {"type": "http.request", "body": b" ", "more_body": True}
        message: dict[str, Any] = events.pop(0) if events else {"type": "http.disconnect"}
        return message

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(head) * 3).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("hub.test", 80),
    }
    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize(
    ("path", "content_type", "head", "protocol"),
    [
        ("/fhir/ServiceRequest", FHIR_JSON, b'{"resourceType": "ServiceRequest", "stat', "fhir"),
        ("/fhir", FHIR_JSON, b'{"resourceType": "Bundle", "type": "bat', "fhir"),
        ("/hl7v2", "application/hl7-v2", _hl7("PART1")[:40], "hl7v2"),
    ],
)
async def test_a_body_cut_short_is_kept_and_logged_in_one_line(
    path: str,
    content_type: str,
    head: bytes,
    protocol: str,
    intake: IntakeService,
    store: Store,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(intake)
    with caplog.at_level(logging.INFO):
        sent = await _send_partial(app, path, content_type, head)
    assert not any(m.get("status", 0) >= 500 for m in sent if m["type"] == "http.response.start")
    [kept] = await rejected(store)
    assert kept["raw"] == head and kept["protocol"] == protocol
    assert "cut short" in kept["reason"]
    # One warning says what happened (the per-message "message received" line is information only).
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    noted = [r for r in warned if "cut short" in json.dumps(vars(r), default=str)]
    assert len(noted) == 1 and noted[0].exc_info is None, [r.getMessage() for r in warned]
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


async def test_a_body_trickled_past_the_read_timeout_is_answered_408_and_kept(settings: Settings, store: Store) -> None:
    """One deadline for the whole body: a sender adding a byte every 0.1 s cannot hold the request open
    beyond MSCC_HTTP_BODY_TIMEOUT_S; it gets 408 and what came is kept."""
    slow = settings.model_copy(update={"http_body_timeout_s": 0.6})
    service = IntakeService(slow, store)
    await service.start()
    try:
        head = b'{"resourceType": "ServiceRequest", "stat'
        started = asyncio.get_running_loop().time()
        sent = await _send_partial(create_app(service), "/fhir/ServiceRequest", FHIR_JSON, head, trickle_s=0.1)
        took = asyncio.get_running_loop().time() - started
    finally:
        await service.stop()
    [start] = [m for m in sent if m["type"] == "http.response.start"]
    assert start["status"] == 408 and took < 5
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "timeout"
    [kept] = await rejected(store)
    assert kept["raw"].startswith(head) and "MSCC_HTTP_BODY_TIMEOUT_S" in kept["reason"]
