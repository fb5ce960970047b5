"""FHIR intake over HTTP against a real mongod: create, Bundles, rejections, conditional create, reads, $validate.

Every test posts real bytes through the FastAPI app and then looks at what MongoDB holds: accepted bodies
must be stored byte for byte with status "ready", refused ones with status "rejected" and a reason, and
every stored resource must still be valid FHIR.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B import get_fhir_model_class
from helpers import app_client
from pymongo import AsyncMongoClient

from services.intake.fhir_intake import business_id
from shared.settings import Settings
from shared.store import Document, Store

CORPUS = Path(__file__).parent / "corpus"
MANIFEST: list[dict[str, Any]] = json.loads((CORPUS / "fhir_manifest.json").read_text())
FHIR_JSON = "application/fhir+json"
SMALL_LIMIT = 1024
DEV_ODS = str(Settings.model_fields["dev_client_ods"].default)  # the caller every test request has


def request_id(value: str, system: str | None = None) -> str:
    """The id intake gives a ServiceRequest with this identifier, posted by the development client."""
    return business_id("ServiceRequest", {"identifier": [{"system": system or SYSTEM, "value": value}]}, DEV_ODS)


@pytest.fixture(scope="module")
async def module_db(mongo_client: AsyncMongoClient[Document]) -> AsyncIterator[str]:
    """One database (schema made once) for this module: creating and dropping one per test costs ~0.2 s."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    await Store(mongo_client, name).ensure_schema()
    yield name
    await mongo_client.drop_database(name)


@pytest.fixture
def settings(settings: Settings, module_db: str) -> Settings:
    return settings.model_copy(update={"db_name": module_db})


@pytest.fixture
async def store(mongo_client: AsyncMongoClient[Document], settings: Settings) -> AsyncIterator[Store]:
    """The module's database, emptied after each test (every test still starts with no documents)."""
    store = Store(mongo_client, settings.db_name)
    yield store
    for collection in (store.messages, store.resources, store.history, store.outbox):
        await collection.delete_many({})


def _entries(endpoint: str, expect: str = "accept") -> list[Any]:
    return [
        pytest.param(entry, id=Path(entry["path"]).name)
        for entry in MANIFEST
        if entry["endpoint"] == endpoint and entry["expect"] == expect
    ]


SERVICE_REQUESTS = _entries("ServiceRequest")
BUNDLES = _entries("Bundle")
XML_IN_JSON = next(e for e in MANIFEST if e["endpoint"] == "Bundle" and e["expect"] == "reject")


def _body(entry: dict[str, Any]) -> bytes:
    path: str = entry["path"]
    return (CORPUS / path).read_bytes()


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def referral(value: str = "MSCC-0001", **extra: Any) -> dict[str, Any]:
    """A small valid ServiceRequest with a business identifier."""
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "https://mscc.example.nhs.uk/referral", "value": value}],
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/example"},
        "code": {"text": "MSCC assessment"},
    }
    resource.update(extra)
    return resource


def message_bundle(header_id: str = "4f8d0b7c-0000-4000-8000-000000000001") -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": "msg-1",
        "type": "message",
        "timestamp": "2026-01-01T12:00:00Z",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{header_id}",
                "resource": {
                    "resourceType": "MessageHeader",
                    "id": header_id,
                    "eventCoding": {"system": "https://mscc.example.nhs.uk/events", "code": "referral"},
                    "source": {"endpoint": "https://sender.example.nhs.uk/fhir"},
                    "focus": [{"reference": "urn:uuid:8b9a3c11-0000-4000-8000-000000000002"}],
                },
            },
            {"fullUrl": "urn:uuid:8b9a3c11-0000-4000-8000-000000000002", "resource": referral()},
        ],
    }


def assert_valid_fhir(resource: dict[str, Any]) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def path_of(location: str, settings: Settings) -> str:
    assert location.startswith(settings.base_url + "/fhir/"), location
    return location[len(settings.base_url) :]


async def post_sr(
    http: httpx.AsyncClient, body: bytes, content_type: str = FHIR_JSON, **headers: str
) -> httpx.Response:
    return await http.post("/fhir/ServiceRequest", content=body, headers={"Content-Type": content_type, **headers})


async def post_bundle(http: httpx.AsyncClient, body: bytes, content_type: str = FHIR_JSON) -> httpx.Response:
    return await http.post("/fhir", content=body, headers={"Content-Type": content_type})


def assert_outcome(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    outcome: dict[str, Any] = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "error"
    assert outcome["issue"][0]["diagnostics"]
    assert_valid_fhir(outcome)
    return outcome


async def assert_rejected_kept(store: Store, body: bytes, status: int) -> dict[str, Any]:
    docs = await store.messages.find({}).to_list()
    assert len(docs) == 1, docs
    doc = docs[0]
    assert doc["status"] == "rejected"
    assert doc["raw"] == body
    assert doc["protocol"] == "fhir"
    assert doc["http_status"] == status
    assert isinstance(doc["reason"], str) and doc["reason"]
    assert doc["issues"] and doc["issues"][0]["severity"] == "error"
    assert "dedup_key" not in doc
    assert await store.resources.count_documents({}) == 0
    return doc


# 1. The corpus: every ServiceRequest and Bundle meant for intake is accepted and stored exactly.


@pytest.mark.parametrize("entry", SERVICE_REQUESTS)
async def test_corpus_service_request_is_created_stored_and_readable(
    entry: dict[str, Any], http: httpx.AsyncClient, store: Store, settings: Settings
) -> None:
    body = _body(entry)
    sent = json.loads(body)

    response = await post_sr(http, body)

    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    assert response.headers["etag"] == 'W/"1"'
    assert "last-modified" in response.headers
    created = response.json()
    rid = created["id"]
    assert created["meta"]["versionId"] == "1"
    assert created["meta"]["lastUpdated"]
    location = response.headers["location"]
    assert location == f"{settings.base_url}/fhir/ServiceRequest/{rid}/_history/1"
    assert {k: v for k, v in created.items() if k not in ("id", "meta")} == {
        k: v for k, v in sent.items() if k not in ("id", "meta")
    }
    if sent.get("meta", {}).get("tag"):
        assert created["meta"]["tag"] == sent["meta"]["tag"]  # the sender's meta is kept, not replaced

    read = await http.get(path_of(location, settings))
    assert read.status_code == 200
    assert read.headers["etag"] == 'W/"1"'
    assert read.json() == created
    current = await http.get(f"/fhir/ServiceRequest/{rid}")
    assert current.status_code == 200
    assert current.json() == created

    [record] = await store.messages.find({}).to_list()
    assert record["status"] == "ready"
    assert record["raw"] == body
    assert record["fhir"]["resources"] == [f"ServiceRequest/{rid}"]
    stored = await store.resources.find_one({"_id": f"ServiceRequest/{rid}"})
    assert stored is not None
    assert stored["resource"] == created
    assert_valid_fhir(stored["resource"])
    history = await store.history.find({"id": rid}).to_list()
    assert [h["version"] for h in history] == [1]
    assert_valid_fhir(history[0]["resource"])


@pytest.mark.parametrize("entry", BUNDLES)
async def test_corpus_bundle_is_acknowledged_and_stored(
    entry: dict[str, Any], http: httpx.AsyncClient, store: Store
) -> None:
    body = _body(entry)
    sent = json.loads(body)

    response = await post_bundle(http, body)

    assert response.headers["content-type"].startswith(FHIR_JSON)
    reply = response.json()
    assert_valid_fhir(reply)
    assert reply["resourceType"] == "Bundle"
    if sent["type"] == "message":
        assert response.status_code == 200, response.text
        assert reply["type"] == "message"
        header = reply["entry"][0]["resource"]
        assert header["resourceType"] == "MessageHeader"
        assert header["response"]["code"] == "ok"
        assert header["response"]["identifier"] == sent["entry"][0]["resource"]["id"]
    else:
        assert response.status_code == 202, response.text
        assert reply["type"] == f"{sent['type']}-response"
        assert len(reply["entry"]) == len(sent["entry"])
        # Each entry answered with what happens to it: 202 when carried out, else its own error status.
        expected = entry.get("entry_statuses") or [202] * len(sent["entry"])
        assert [int(e["response"]["status"].split()[0]) for e in reply["entry"]] == expected
        for answer in reply["entry"]:
            assert answer["response"]["status"].startswith("202") or answer["response"]["outcome"]["issue"]

    [record] = await store.messages.find({}).to_list()
    assert record["status"] == "ready"
    assert record["raw"] == body
    assert record["_id"] == response.headers["x-message-id"]
    assert record["fhir"]["bundle_type"] == sent["type"]
    assert len(record["fhir"]["entries"]) == len(sent["entry"])
    assert record["reply"]["body"] == reply
    assert "x-duplicate" not in response.headers


REFUSED_BUNDLES = _entries("Bundle", "refuse")


@pytest.mark.parametrize("entry", REFUSED_BUNDLES)
async def test_corpus_bundle_the_hub_cannot_carry_out_is_refused_and_kept(
    entry: dict[str, Any], http: httpx.AsyncClient, store: Store
) -> None:
    """Valid FHIR the hub would not carry out (manifest ``expect: refuse``, with a DECISION note) is refused
    with the manifest's status, never acknowledged, and kept as a rejected record."""
    body = _body(entry)
    outcome = assert_outcome(await post_bundle(http, body), entry["http_status"])
    assert all(i["expression"][0].startswith("Bundle.entry") for i in outcome["issue"])
    await assert_rejected_kept(store, body, entry["http_status"])


async def test_batch_receipt_locations_use_the_ids_the_hub_assigns(http: httpx.AsyncClient) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": referral("TX-1"), "request": {"method": "POST", "url": "ServiceRequest"}},
            {
                "resource": {"resourceType": "Patient", "id": "p1"},
                "request": {"method": "PUT", "url": "Patient/p1"},
            },
            {"request": {"method": "DELETE", "url": "Patient/p2"}},
        ],
    }
    response = await post_bundle(http, _json(bundle))
    assert response.status_code == 202, response.text
    responses = [e["response"] for e in response.json()["entry"]]
    sr_id = request_id("TX-1", "https://mscc.example.nhs.uk/referral")
    assert responses[0]["location"] == f"ServiceRequest/{sr_id}"
    assert responses[1]["location"] == "Patient/p1"
    assert "location" not in responses[2]
    assert responses[2]["status"] == "405 Method Not Allowed"  # a DELETE is not carried out


# 2. Broken inputs: an OperationOutcome with a fitting status, and the body kept as "rejected".


@pytest.mark.parametrize(
    ("body", "expression"),
    [
        pytest.param(_json({k: v for k, v in referral().items() if k != "resourceType"}), "resourceType", id="missing"),
        pytest.param(_json({**referral(), "resourceType": "Patient"}), "resourceType", id="wrong-type"),
        pytest.param(_json({**referral(), "resourceType": "NoSuchThing"}), "resourceType", id="unknown-type"),
        pytest.param(_json({**referral(), "resourceType": 7}), "resourceType", id="type-not-string"),
        pytest.param(_json(referral(status=5)), "ServiceRequest.status", id="status-number"),
        pytest.param(_json(referral(subject="x")), "ServiceRequest.subject", id="subject-string"),
        pytest.param(_json(referral(authoredOn="2026-13-45")), "ServiceRequest.authoredOn", id="bad-date"),
        pytest.param(_json(referral(bogus=1)), "ServiceRequest.bogus", id="unknown-element"),
        pytest.param(
            _json({k: v for k, v in referral().items() if k != "subject"}), "ServiceRequest.subject", id="no-subject"
        ),
    ],
)
async def test_invalid_service_request_is_refused_with_expression_and_kept(
    body: bytes, expression: str, http: httpx.AsyncClient, store: Store
) -> None:
    outcome = assert_outcome(await post_sr(http, body), 400)
    assert any(expression in i.get("expression", []) for i in outcome["issue"]), outcome
    doc = await assert_rejected_kept(store, body, 400)
    assert doc["header"]["interaction"] == "create"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"this is not json", id="text"),
        pytest.param(b'{"resourceType": "ServiceRequest",', id="truncated"),
        pytest.param(b"[1, 2]", id="array"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"resourceType": "ServiceRequest", "status": "\xff\xfe"}', id="not-utf8"),
        pytest.param(b'{"resourceType": "ServiceRequest", "x": NaN}', id="nan"),
    ],
)
async def test_not_json_is_refused_and_kept(body: bytes, http: httpx.AsyncClient, store: Store) -> None:
    assert_outcome(await post_sr(http, body), 400)
    await assert_rejected_kept(store, body, 400)


async def test_xml_in_a_json_file_is_refused_and_kept(http: httpx.AsyncClient, store: Store) -> None:
    body = _body(XML_IN_JSON)
    assert body.lstrip().startswith(b"<Bundle")
    assert_outcome(await post_bundle(http, body), 400)
    await assert_rejected_kept(store, body, 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "application/fhir+xml", ""])
@pytest.mark.parametrize("endpoint", ["/fhir/ServiceRequest", "/fhir"])
async def test_wrong_content_type_is_415_and_kept(
    content_type: str, endpoint: str, http: httpx.AsyncClient, store: Store
) -> None:
    body = _json(referral()) if endpoint.endswith("ServiceRequest") else _json(message_bundle())
    headers = {"Content-Type": content_type} if content_type else {}
    response = await http.post(endpoint, content=body, headers=headers)
    assert_outcome(response, 415)
    await assert_rejected_kept(store, body, 415)


async def test_json_content_type_variants_are_accepted(http: httpx.AsyncClient) -> None:
    for n, content_type in enumerate(
        ["application/json", "application/fhir+json; fhirVersion=4.0; charset=utf-8", "Application/FHIR+JSON"]
    ):
        response = await post_sr(http, _json(referral(f"CT-{n}")), content_type)
        assert response.status_code == 201, (content_type, response.text)


@pytest.mark.parametrize("bundle_type", ["collection", "document", "searchset", "history", "transaction-response"])
async def test_bundle_of_unaccepted_type_is_refused(bundle_type: str, http: httpx.AsyncClient, store: Store) -> None:
    body = _json({"resourceType": "Bundle", "type": bundle_type, "entry": [{"resource": referral()}]})
    outcome = assert_outcome(await post_bundle(http, body), 400)
    assert outcome["issue"][0]["expression"] == ["Bundle.type"]
    doc = await assert_rejected_kept(store, body, 400)
    assert doc["header"]["interaction"] == "bundle"


@pytest.mark.parametrize(
    "entries",
    [
        pytest.param([{"resource": referral()}], id="first-not-header"),
        pytest.param([], id="no-entries"),
        pytest.param([{"fullUrl": "urn:uuid:1d2c1a5e-0000-4000-8000-000000000003"}], id="entry-without-resource"),
    ],
)
async def test_message_bundle_without_leading_message_header_is_refused(
    entries: list[dict[str, Any]], http: httpx.AsyncClient, store: Store
) -> None:
    body = _json({"resourceType": "Bundle", "type": "message", "entry": entries})
    outcome = assert_outcome(await post_bundle(http, body), 400)
    assert "MessageHeader" in outcome["issue"][0]["diagnostics"]
    await assert_rejected_kept(store, body, 400)


async def test_resource_that_is_not_a_bundle_posted_to_base_is_refused(http: httpx.AsyncClient, store: Store) -> None:
    body = _json(referral())
    assert_outcome(await post_bundle(http, body), 400)
    await assert_rejected_kept(store, body, 400)


async def test_bundle_with_invalid_entry_resource_is_refused(http: httpx.AsyncClient, store: Store) -> None:
    bundle = message_bundle()
    bundle["entry"][1]["resource"]["status"] = 5
    body = _json(bundle)
    assert_outcome(await post_bundle(http, body), 400)
    await assert_rejected_kept(store, body, 400)


@pytest.mark.parametrize(
    "number",
    [
        pytest.param("1" + "0" * 30, id="integer-beyond-int64"),
        pytest.param("1e400", id="float-overflow"),
        pytest.param("-1" + "0" * 25, id="negative-beyond-int64"),
    ],
)
@pytest.mark.parametrize("endpoint", ["/fhir/ServiceRequest", "/fhir"])
async def test_numbers_mongodb_cannot_store_are_refused_not_crashed(
    number: str, endpoint: str, http: httpx.AsyncClient, store: Store
) -> None:
    """A FHIR decimal written as a huge integer is valid JSON and passes the models but has no BSON form."""
    resource = referral(quantityQuantity={"value": 0})
    template = message_bundle() if endpoint == "/fhir" else resource
    if endpoint == "/fhir":
        template["entry"][1]["resource"] = resource
    body = _json(template).replace(b'"value": 0}', f'"value": {number}}}'.encode())
    assert number.encode() in body
    response = await http.post(endpoint, content=body, headers={"Content-Type": FHIR_JSON})
    assert_outcome(response, 400)
    await assert_rejected_kept(store, body, 400)
    # The intake still works afterwards (nothing wedged by the bad body).
    ok = await post_sr(http, _json(referral("AFTER")))
    assert ok.status_code == 201, ok.text


def _nested_extension(depth: int) -> dict[str, Any]:
    extension: dict[str, Any] = {"url": "https://x.example/e", "valueString": "leaf"}
    for _ in range(depth):
        extension = {"url": "https://x.example/e", "extension": [extension]}
    return extension


async def test_deeply_nested_but_reasonable_resource_is_accepted(http: httpx.AsyncClient, store: Store) -> None:
    # 48 nested extensions: 99 levels of objects and arrays, the deepest accepted.
    response = await post_sr(http, _json(referral("DEEP-OK", extension=[_nested_extension(48)])))
    assert response.status_code == 201, response.text
    stored = await store.resources.find_one({})
    assert stored is not None
    assert_valid_fhir(stored["resource"])


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_json(referral(extension=[_nested_extension(49)])), id="101-levels"),
        pytest.param(_json(referral(extension=[_nested_extension(120)])), id="mongodb-cannot-store"),
        pytest.param(
            b'{"resourceType": "ServiceRequest", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            id="parser-recursion",
        ),
    ],
)
async def test_too_deeply_nested_body_is_refused_and_kept(body: bytes, http: httpx.AsyncClient, store: Store) -> None:
    outcome = assert_outcome(await post_sr(http, body), 400)
    assert "deeper" in outcome["issue"][0]["diagnostics"]
    await assert_rejected_kept(store, body, 400)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "latin-1"])
async def test_body_not_in_utf8_is_refused_and_kept(encoding: str, http: httpx.AsyncClient, store: Store) -> None:
    body = json.dumps(referral("Çé"), ensure_ascii=False).encode(encoding)
    assert_outcome(await post_sr(http, body), 400)
    await assert_rejected_kept(store, body, 400)


async def test_utf8_with_byte_order_mark_is_accepted_and_kept_exactly(http: httpx.AsyncClient, store: Store) -> None:
    body = b"\xef\xbb\xbf" + json.dumps(referral("BOM-Çé"), ensure_ascii=False).encode()
    response = await post_sr(http, body)
    assert response.status_code == 201, response.text
    assert response.json()["identifier"][0]["value"] == "BOM-Çé"
    [doc] = await store.messages.find({}).to_list()
    assert doc["raw"] == body


@pytest.fixture
async def small_limit_http(settings: Settings, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    """An intake whose size limit (``mllp_max_message_bytes``) is the smallest allowed."""
    async with app_client(settings.model_copy(update={"mllp_max_message_bytes": SMALL_LIMIT}), store) as client:
        yield client


@pytest.mark.parametrize("endpoint", ["/fhir/ServiceRequest", "/fhir"])
async def test_body_over_the_size_limit_is_413_and_its_head_kept(
    endpoint: str, small_limit_http: httpx.AsyncClient, store: Store
) -> None:
    body = _json(referral(note=[{"text": "x" * (2 * SMALL_LIMIT)}]))
    response = await small_limit_http.post(endpoint, content=body, headers={"Content-Type": FHIR_JSON})
    outcome = assert_outcome(response, 413)
    assert str(SMALL_LIMIT) in outcome["issue"][0]["diagnostics"]
    [doc] = await store.messages.find({}).to_list()
    assert doc["status"] == "rejected"
    assert doc["http_status"] == 413
    assert doc["reason"]
    assert doc["raw"] == body[:SMALL_LIMIT]
    assert doc["size"] == len(body)
    assert doc["truncated"] is True
    assert await store.resources.count_documents({}) == 0


async def test_validate_over_the_size_limit_is_413(small_limit_http: httpx.AsyncClient, store: Store) -> None:
    body = _json(referral(note=[{"text": "x" * (2 * SMALL_LIMIT)}]))
    response = await small_limit_http.post(
        "/fhir/ServiceRequest/$validate", content=body, headers={"Content-Type": FHIR_JSON}
    )
    assert_outcome(response, 413)
    assert await store.messages.count_documents({}) == 0


async def test_body_at_the_size_limit_is_accepted(small_limit_http: httpx.AsyncClient, store: Store) -> None:
    body = _json(referral())
    body = body[:-1] + b" " * (SMALL_LIMIT - len(body)) + b"}"
    assert len(body) == SMALL_LIMIT
    response = await small_limit_http.post("/fhir/ServiceRequest", content=body, headers={"Content-Type": FHIR_JSON})
    assert response.status_code == 201, response.text
    [doc] = await store.messages.find({}).to_list()
    assert doc["raw"] == body


# 3. Conditional and idempotent create.

SYSTEM = "https://mscc.example.nhs.uk/referral"


async def test_if_none_exist_returns_the_existing_resource(http: httpx.AsyncClient, store: Store) -> None:
    first = await post_sr(http, _json(referral("C-1")))
    assert first.status_code == 201

    again = await post_sr(
        http, _json(referral("C-1", priority="urgent")), **{"If-None-Exist": f"identifier={SYSTEM}|C-1"}
    )

    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert again.headers["etag"] == 'W/"1"'
    assert await store.resources.count_documents({}) == 1
    assert await store.history.count_documents({}) == 1


async def test_if_none_exist_without_a_match_creates(http: httpx.AsyncClient, store: Store) -> None:
    response = await post_sr(http, _json(referral("C-2")), **{"If-None-Exist": f"identifier={SYSTEM}|C-2"})
    assert response.status_code == 201, response.text
    assert response.json()["id"] == request_id("C-2")
    assert await store.resources.count_documents({}) == 1


@pytest.mark.parametrize(
    "criteria",
    [
        "status=active",
        "identifier=C-3",
        f"identifier={SYSTEM}|",
        "identifier=|C-3",
        f"identifier={SYSTEM}|C-3&status=active",
        "_id=abc",
        pytest.param("", id="empty"),  # present but empty: still a condition, not an unconditional create
        pytest.param(" ", id="blank"),
    ],
)
async def test_unsupported_if_none_exist_is_400(criteria: str, http: httpx.AsyncClient, store: Store) -> None:
    body = _json(referral("C-3"))
    assert_outcome(await post_sr(http, body, **{"If-None-Exist": criteria}), 400)
    await assert_rejected_kept(store, body, 400)


async def test_identical_create_twice_is_idempotent(http: httpx.AsyncClient, store: Store) -> None:
    body = _json(referral("I-1"))
    first = await post_sr(http, body)
    second = await post_sr(http, body)

    assert first.status_code == 201
    assert second.status_code == 200, second.text
    assert second.json() == first.json()
    assert first.json()["id"] == request_id("I-1")
    assert await store.resources.count_documents({}) == 1
    assert await store.history.count_documents({}) == 1


async def test_same_identifier_other_content_is_409(http: httpx.AsyncClient, store: Store) -> None:
    assert (await post_sr(http, _json(referral("I-2")))).status_code == 201
    changed = _json(referral("I-2", priority="stat"))

    assert_outcome(await post_sr(http, changed), 409)

    stored = await store.resources.find_one({})
    assert stored is not None and "priority" not in stored["resource"]
    assert await store.history.count_documents({}) == 1
    rejected = await store.messages.find_one({"status": "rejected"})
    assert rejected is not None and rejected["raw"] == changed and rejected["http_status"] == 409


async def test_concurrent_identical_creates_make_one_resource(http: httpx.AsyncClient, store: Store) -> None:
    body = _json(referral("RACE-1"))
    responses = await asyncio.gather(*(post_sr(http, body) for _ in range(10)))

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 9 + [201], [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert len({r.json()["meta"]["lastUpdated"] for r in responses}) == 1
    assert await store.resources.count_documents({}) == 1
    assert await store.history.count_documents({}) == 1
    assert await store.messages.count_documents({"status": "ready"}) == 1


async def test_resource_without_business_identifier_gets_a_new_id_each_time(
    http: httpx.AsyncClient, store: Store
) -> None:
    resource = referral()
    del resource["identifier"]
    first = await post_sr(http, _json(resource))
    second = await post_sr(http, _json(resource))
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"]
    assert await store.resources.count_documents({}) == 2


async def test_client_supplied_id_and_meta_version_are_replaced(http: httpx.AsyncClient) -> None:
    response = await post_sr(
        http, _json(referral("I-3", id="client-chosen", meta={"versionId": "7", "profile": ["https://x.example/p"]}))
    )
    assert response.status_code == 201
    created = response.json()
    assert created["id"] == request_id("I-3")
    assert created["meta"]["versionId"] == "1"
    # The client's profile is kept; the UK Core profile is added at intake (version 1 is normalised).
    assert created["meta"]["profile"] == [
        "https://x.example/p",
        "https://fhir.hl7.org.uk/StructureDefinition/UKCore-ServiceRequest",
    ]


# 4. Duplicate Bundles.


async def test_same_message_bundle_twice_is_answered_from_the_first(http: httpx.AsyncClient, store: Store) -> None:
    body = _json(message_bundle())
    first = await post_bundle(http, body)
    second = await post_bundle(http, body)

    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert second.json() == first.json()
    assert "x-duplicate" not in first.headers
    assert second.headers["x-duplicate"] == "true"
    assert second.headers["x-message-id"] == first.headers["x-message-id"]
    assert await store.messages.count_documents({}) == 1


async def test_same_transaction_bundle_identifier_twice_is_a_duplicate(http: httpx.AsyncClient, store: Store) -> None:
    bundle = {
        "resourceType": "Bundle",
        "identifier": {"system": "https://sender.example/bundles", "value": "B-1"},
        "type": "transaction",
        "entry": [{"resource": referral(), "request": {"method": "POST", "url": "ServiceRequest"}}],
    }
    first = await post_bundle(http, _json(bundle))
    second = await post_bundle(http, _json(bundle))
    assert first.status_code == second.status_code == 202
    assert second.json() == first.json()
    assert second.headers["x-duplicate"] == "true"
    assert await store.messages.count_documents({}) == 1


async def test_concurrent_duplicate_message_bundles_store_one(http: httpx.AsyncClient, store: Store) -> None:
    body = _json(message_bundle())
    responses = await asyncio.gather(*(post_bundle(http, body) for _ in range(5)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert sum(r.headers.get("x-duplicate") == "true" for r in responses) == 4
    assert await store.messages.count_documents({}) == 1


async def test_different_message_bundles_are_both_kept(http: httpx.AsyncClient, store: Store) -> None:
    one = await post_bundle(http, _json(message_bundle("4f8d0b7c-0000-4000-8000-00000000000a")))
    two = await post_bundle(http, _json(message_bundle("4f8d0b7c-0000-4000-8000-00000000000b")))
    assert one.status_code == two.status_code == 200
    assert "x-duplicate" not in two.headers
    assert one.json()["id"] != two.json()["id"]
    assert await store.messages.count_documents({"status": "ready"}) == 2


# 5. Reads.


async def test_read_unknown_id_is_404(http: httpx.AsyncClient) -> None:
    assert_outcome(await http.get("/fhir/ServiceRequest/does-not-exist"), 404)
    assert_outcome(await http.get("/fhir/Patient/does-not-exist"), 404)


async def test_vread_versions(http: httpx.AsyncClient) -> None:
    created = await post_sr(http, _json(referral("V-1")))
    rid = created.json()["id"]

    v1 = await http.get(f"/fhir/ServiceRequest/{rid}/_history/1")
    assert v1.status_code == 200
    assert v1.json() == created.json()
    assert v1.headers["etag"] == 'W/"1"'
    assert v1.headers["last-modified"] == created.headers["last-modified"]
    assert_outcome(await http.get(f"/fhir/ServiceRequest/{rid}/_history/2"), 404)
    assert_outcome(await http.get(f"/fhir/ServiceRequest/{rid}/_history/0"), 404)
    assert_outcome(await http.get(f"/fhir/ServiceRequest/{rid}/_history/abc"), 404)


@pytest.mark.parametrize("path", ["/fhir/Observation/1", "/fhir/NoSuchType/1", "/fhir/Observation/1/_history/1"])
async def test_read_unsupported_type_is_404(path: str, http: httpx.AsyncClient) -> None:
    outcome = assert_outcome(await http.get(path), 404)
    assert outcome["issue"][0]["code"] == "not-supported"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/fhir/no/such/route/here", 404),
        ("PATCH", "/fhir/ServiceRequest", 405),
        ("DELETE", "/fhir/ServiceRequest/abc", 405),
        ("PUT", "/fhir/ServiceRequest/abc", 405),
        ("GET", "/fhir", 405),
    ],
)
async def test_unknown_route_under_fhir_is_an_operation_outcome(
    method: str, path: str, status: int, http: httpx.AsyncClient
) -> None:
    assert_outcome(await http.request(method, path), status)


# 6. $validate.


async def test_validate_valid_resource_is_information(http: httpx.AsyncClient, store: Store) -> None:
    response = await http.post(
        "/fhir/ServiceRequest/$validate", content=_json(referral()), headers={"Content-Type": FHIR_JSON}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(FHIR_JSON)
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert [i["severity"] for i in outcome["issue"]] == ["information"]
    assert_valid_fhir(outcome)
    assert await store.messages.count_documents({}) == 0
    assert await store.resources.count_documents({}) == 0


async def test_validate_parameters_wrapper(http: httpx.AsyncClient) -> None:
    params = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": referral()}]}
    response = await http.post(
        "/fhir/ServiceRequest/$validate", content=_json(params), headers={"Content-Type": FHIR_JSON}
    )
    assert response.status_code == 200
    assert response.json()["issue"][0]["severity"] == "information"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(_json(referral(status=5)), 400, id="invalid"),
        pytest.param(_json({**referral(), "resourceType": "Patient"}), 400, id="wrong-type"),
        pytest.param(b"not json", 400, id="not-json"),
        pytest.param(_json({"resourceType": "Parameters", "parameter": []}), 400, id="parameters-without-resource"),
        pytest.param(
            _json({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": referral(status=5)}]}),
            400,
            id="parameters-invalid-resource",
        ),
        pytest.param(_json({"resourceType": "Parameters", "parameter": "x"}), 400, id="parameters-malformed"),
    ],
)
async def test_validate_invalid_resource_is_400(
    body: bytes, status: int, http: httpx.AsyncClient, store: Store
) -> None:
    response = await http.post("/fhir/ServiceRequest/$validate", content=body, headers={"Content-Type": FHIR_JSON})
    assert_outcome(response, status)
    assert await store.messages.count_documents({}) == 0


async def test_validate_unsupported_type_or_content_type(http: httpx.AsyncClient) -> None:
    body = _json(referral())
    assert_outcome(
        await http.post("/fhir/Observation/$validate", content=body, headers={"Content-Type": FHIR_JSON}), 404
    )
    assert_outcome(
        await http.post("/fhir/ServiceRequest/$validate", content=body, headers={"Content-Type": "text/plain"}), 415
    )


async def test_created_resources_validate_in_the_store(http: httpx.AsyncClient, store: Store) -> None:
    """A resource with a contained resource, extensions and meta survives the round trip as valid FHIR."""
    resource = referral(
        "S-1",
        contained=[{"resourceType": "Patient", "id": "p", "name": [{"family": "Smith"}]}],
        subject={"reference": "#p"},
        extension=[{"url": "https://x.example/ext", "valueBoolean": True}],
        _status={"extension": [{"url": "https://x.example/why", "valueString": "triaged"}]},
        meta={"profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-ServiceRequest"]},
    )
    response = await post_sr(http, _json(resource))
    assert response.status_code == 201, response.text
    stored = await store.resources.find_one({})
    assert stored is not None
    assert_valid_fhir(stored["resource"])
    expected = copy.deepcopy(resource)
    expected.update(id=stored["id"], meta={**resource["meta"], **stored["resource"]["meta"]})
    assert stored["resource"] == expected
    assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", stored["resource"]["meta"]["source"])
