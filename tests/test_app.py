"""The intake HTTP application: CapabilityStatement (and that it claims only what exists), health, OpenAPI,
authentication refusals, and answers when the database cannot be reached (a real client to a closed port).
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B import get_fhir_model_class
from helpers import app_client
from pymongo import AsyncMongoClient

from services.api.app import create_app
from services.intake.service import IntakeService
from shared.settings import Settings
from shared.store import Document, Store

EXAMPLES = Path(__file__).parent / "corpus" / "fhir-r4b-core-examples" / "json"
FHIR_JSON = "application/fhir+json"
EXAMPLE_OF = {
    "ServiceRequest": "ServiceRequest-example.json",
    "Patient": "Patient-example.json",
    "Encounter": "Encounter-example.json",
    "CarePlan": "CarePlan-example.json",
    "QuestionnaireResponse": "QuestionnaireResponse-f201.json",
    "Questionnaire": "../../uk-core-r4/json-converted/UKCore-Questionnaire-EOLPlan-Example.json",
    "DiagnosticReport": "../../microsoft-fhir-converter/expected-fhir/LAB-ORU-1-expected.json#DiagnosticReport",
    "Subscription": "Subscription-example.json",
    "Task": "../../../fixtures/Task-referral-data.json",  # the hub's own data-quality Task; no upstream example
    "Condition": "../../microsoft-fhir-converter/expected-fhir/ADT-A04-01-expected.json#Condition",
    "AllergyIntolerance": "../../microsoft-fhir-converter/expected-fhir/ADT-A04-01-expected.json#AllergyIntolerance",
    "Procedure": "../../microsoft-fhir-converter/expected-fhir/ADT-A04-01-expected.json#Procedure",
    "AuditEvent": "../../../fixtures/AuditEvent-patient-read.json",  # the hub's own audit record (shared/audit.py)
}
# What this server implements; anything else claimed in the CapabilityStatement is a lie.
IMPLEMENTED = {"create", "read", "vread", "search-type", "history-instance", "history-type", "update", "delete"}
UPDATABLE = {"ServiceRequest", "Encounter", "CarePlan", "Subscription"}  # PUT with If-Match
CREATABLE = {"ServiceRequest", "Subscription"}


def _example(rtype: str) -> bytes:
    """A corpus example of ``rtype``: a file, or ``file#Type`` for the first such entry of a Bundle."""
    path, _, entry_type = EXAMPLE_OF[rtype].partition("#")
    data = (EXAMPLES / path).read_bytes()
    if not entry_type:
        return data
    bundle = json.loads(data)
    return json.dumps(
        next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == entry_type)
    ).encode()


def _referral(value: str = "APP-1") -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "https://mscc.example.nhs.uk/referral", "value": value}],
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/example"},
    }


async def _capability(http: httpx.AsyncClient, path: str) -> dict[str, Any]:
    response = await http.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    statement: dict[str, Any] = response.json()
    get_fhir_model_class("CapabilityStatement").model_validate(statement)
    return statement


def _by_type(statement: dict[str, Any]) -> dict[str, dict[str, Any]]:
    [rest] = statement["rest"]
    return {r["type"]: r for r in rest["resource"]}


@pytest.mark.parametrize("path", ["/metadata", "/fhir/metadata"])
async def test_capability_statement_is_valid_r4(path: str, http: httpx.AsyncClient, settings: Settings) -> None:
    statement = await _capability(http, path)

    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["kind"] == "instance"
    assert statement["status"] == "active"
    assert statement["implementation"]["url"] == f"{settings.base_url}/fhir"
    assert FHIR_JSON in statement["format"]
    assert not any("xml" in f for f in statement["format"])
    [rest] = statement["rest"]
    assert rest["mode"] == "server"
    [messaging] = statement["messaging"]
    assert messaging["endpoint"][0]["address"] == f"{settings.base_url}/fhir"
    service_request = _by_type(statement)["ServiceRequest"]
    assert {"code": "create"} in service_request["interaction"]
    assert service_request["conditionalCreate"] is True


async def test_capability_statement_claims_only_what_exists(http: httpx.AsyncClient) -> None:
    statement = await _capability(http, "/fhir/metadata")
    resources = _by_type(statement)
    assert set(resources) == set(EXAMPLE_OF)
    for rtype, resource in resources.items():
        codes = {i["code"] for i in resource["interaction"]}
        assert codes <= IMPLEMENTED, (rtype, codes)
        assert "patch" not in codes
        assert "update" not in codes or rtype in UPDATABLE, rtype
        assert "delete" not in codes or rtype == "Subscription", rtype
        for flag in ("conditionalUpdate", "conditionalDelete", "updateCreate"):
            assert resource.get(flag) in (None, False, "not-supported"), (rtype, flag)
        # If-None-Match and If-Modified-Since on read (tests/test_fhir_conventions.py).
        assert resource.get("conditionalRead") in (None, "not-supported", "full-support"), rtype
        assert not resource.get("searchInclude"), rtype
        if rtype not in CREATABLE:
            assert "create" not in codes
        if rtype != "ServiceRequest":
            assert not resource.get("conditionalCreate")
    [rest] = statement["rest"]
    assert {i["code"] for i in rest["interaction"]} <= {"transaction", "batch"}
    assert not rest.get("searchParam")


async def test_every_claimed_interaction_answers(http: httpx.AsyncClient, settings: Settings) -> None:
    """Call each claimed interaction: a missing route would answer 404/405 ``not-supported``, not these."""
    statement = await _capability(http, "/fhir/metadata")
    for rtype, resource in _by_type(statement).items():
        codes = {i["code"] for i in resource["interaction"]}
        example = _example(rtype)
        assert json.loads(example)["resourceType"] == rtype
        if "read" in codes:
            response = await http.get(f"/fhir/{rtype}/not-there")
            assert response.status_code == 404 and response.json()["issue"][0]["code"] == "not-found", rtype
        if "search-type" in codes:
            for param in resource.get("searchParam", []):
                value = {"date": "ge2000-01-01", "reference": "Patient/x"}.get(param["type"], "x")
                response = await http.get(f"/fhir/{rtype}", params={param["name"]: value})
                assert response.status_code == 200, (rtype, param, response.text)
                assert response.json()["type"] == "searchset"
        if "history-instance" in codes:
            response = await http.get(f"/fhir/{rtype}/not-there/_history")
            assert response.status_code == 404 and response.json()["issue"][0]["code"] == "not-found", rtype
        if "history-type" in codes:
            response = await http.get(f"/fhir/{rtype}/_history")
            assert response.status_code == 200 and response.json()["type"] == "history", rtype
        if "vread" in codes:
            response = await http.get(f"/fhir/{rtype}/not-there/_history/1")
            assert response.status_code == 404 and response.json()["issue"][0]["code"] == "not-found", rtype
        for operation in resource.get("operation", []):
            name = operation["name"]
            if name == "validate":
                response = await http.post(
                    f"/fhir/{rtype}/$validate", content=example, headers={"Content-Type": FHIR_JSON}
                )
                assert response.status_code == 200, (rtype, response.text)
                assert response.json()["issue"][0]["severity"] == "information"
                continue
            # Instance operations on an unknown id: served (404 not-found), not missing (404 not-supported).
            method = "GET" if name in ("status", "events") else "POST"
            response = await http.request(
                method,
                f"/fhir/{rtype}/not-there/${name}",
                json={"resourceType": "Parameters", "parameter": [{"name": "step", "valueCode": "triaged-accepted"}]},
                headers={"Content-Type": FHIR_JSON},
            )
            assert response.status_code == 404, (rtype, name, response.text)
            assert response.json()["issue"][0]["code"] == "not-found", (rtype, name, response.text)
        if "update" in codes:
            response = await http.put(f"/fhir/{rtype}/not-there", content=example, headers={"Content-Type": FHIR_JSON})
            assert response.status_code in (400, 404, 405, 412, 422, 428), (rtype, response.status_code)
            assert response.json()["resourceType"] == "OperationOutcome"
        if rtype == "Subscription":
            continue  # creation needs an allowed endpoint: tests/test_subscriptions.py covers it
        if "create" in codes:
            response = await http.post(f"/fhir/{rtype}", content=example, headers={"Content-Type": FHIR_JSON})
            assert response.status_code == 201, (rtype, response.text)
            rid = response.json()["id"]
            assert (await http.get(f"/fhir/{rtype}/{rid}")).status_code == 200
            assert (await http.get(f"/fhir/{rtype}/{rid}/_history/1")).status_code == 200
        else:
            response = await http.post(f"/fhir/{rtype}", content=example, headers={"Content-Type": FHIR_JSON})
            assert response.status_code in (404, 405), (rtype, response.status_code)
    for messaging in statement.get("messaging", []):
        for endpoint in messaging["endpoint"]:
            assert endpoint["address"] == f"{settings.base_url}/fhir"
        message = {
            "resourceType": "Bundle",
            "type": "message",
            "entry": [
                {
                    "resource": {
                        "resourceType": "MessageHeader",
                        "id": "cap-check-1",
                        "eventUri": "urn:mscc:event:referral",
                        "source": {"endpoint": "https://sender.example/fhir"},
                    }
                },
                # A message must carry something the hub stores: a header alone is refused (422).
                {"resource": _referral("message")},
            ],
        }
        response = await http.post("/fhir", json=message, headers={"Content-Type": FHIR_JSON})
        assert response.status_code == 200, response.text
        assert response.json()["entry"][0]["resource"]["response"]["code"] == "ok"
    [rest] = statement["rest"]
    for code in (i["code"] for i in rest["interaction"]):
        bundle = {
            "resourceType": "Bundle",
            "type": code,
            "entry": [{"resource": _referral(code), "request": {"method": "POST", "url": "ServiceRequest"}}],
        }
        response = await http.post("/fhir", json=bundle, headers={"Content-Type": FHIR_JSON})
        assert response.status_code == 202, (code, response.text)
        assert response.json()["type"] == f"{code}-response"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/fhir/Patient/x"),  # update of a type that is never updated
        ("PATCH", "/fhir/ServiceRequest/x"),  # patch
        ("DELETE", "/fhir/ServiceRequest/x"),  # delete
        ("GET", "/fhir/_history"),  # history-system
        ("POST", "/fhir/Patient"),  # create of a read-only type
    ],
)
async def test_unclaimed_interactions_are_not_served(method: str, path: str, http: httpx.AsyncClient) -> None:
    response = await http.request(method, path, content=b"{}", headers={"Content-Type": FHIR_JSON})
    assert response.status_code in (404, 405), response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    assert response.json()["resourceType"] == "OperationOutcome"
    if response.status_code == 405:
        assert "allow" in response.headers


async def test_healthz(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_with_the_real_store(http: httpx.AsyncClient) -> None:
    response = await http.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"


async def test_openapi_lists_the_apis(http: httpx.AsyncClient) -> None:
    response = await http.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/hl7v2", "/fhir/ServiceRequest", "/fhir", "/fhir/metadata", "/metadata", "/healthz", "/readyz"):
        assert path in paths, path
    assert "post" in paths["/fhir/ServiceRequest"]
    assert "post" in paths["/fhir"]
    assert "post" in paths["/hl7v2"]


def _unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def down_http(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app over an intake whose MongoDB client points at a loopback port nobody listens on."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        f"mongodb://127.0.0.1:{_unused_port()}/?directConnection=true",
        serverSelectionTimeoutMS=300,
        connectTimeoutMS=300,
        tz_aware=True,
    )
    service = IntakeService(settings, Store(client, settings.db_name))
    await service.start(mllp=False)
    try:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as http:
            yield http
    finally:
        await service.stop()
        await client.close()  # a monitor cancelled mid-connect closes its socket (shared/mongo_sockets.py)


async def test_readyz_is_503_when_the_store_is_unreachable(down_http: httpx.AsyncClient) -> None:
    response = await down_http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    health = await down_http.get("/healthz")
    assert health.status_code == 200  # alive, just not ready


async def test_fhir_answers_503_outcome_when_the_store_is_unreachable(down_http: httpx.AsyncClient) -> None:
    """Nothing may be acknowledged as stored: create, Bundles and reads answer 503 with Retry-After."""
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"resource": _referral(), "request": {"method": "POST", "url": "ServiceRequest"}}],
    }
    responses = [
        await down_http.post("/fhir/ServiceRequest", json=_referral(), headers={"Content-Type": FHIR_JSON}),
        await down_http.post("/fhir", json=bundle, headers={"Content-Type": FHIR_JSON}),
        await down_http.get("/fhir/ServiceRequest/abc"),
    ]
    for response in responses:
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith(FHIR_JSON)
        assert response.headers["retry-after"]
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] == "transient"
        assert "$clusterTime" not in outcome["issue"][0]["diagnostics"]


@pytest.fixture
async def locked_http(settings: Settings, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    """The app with the development client disabled and no authentication: every caller is refused."""
    async with app_client(settings.model_copy(update={"allow_dev_client": False}), store) as http:
        yield http


async def test_unauthenticated_callers_are_refused(locked_http: httpx.AsyncClient, store: Store) -> None:
    fhir = await locked_http.post("/fhir/ServiceRequest", json=_referral(), headers={"Content-Type": FHIR_JSON})
    assert fhir.status_code == 401
    assert fhir.json()["resourceType"] == "OperationOutcome"
    assert fhir.json()["issue"][0]["code"] == "login"
    hl7 = await locked_http.post(
        "/hl7v2", content=b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|X1|P|2.5\r", headers={"Content-Type": "text/plain"}
    )
    assert hl7.status_code == 401
    assert await store.messages.count_documents({}) == 0
    assert await store.resources.count_documents({}) == 0
