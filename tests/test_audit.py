"""The audit trail: every read, search and write of patient data, and every refused attempt, leaves a FHIR
AuditEvent (IHE BALP) in MongoDB, searchable by the MSCC team only, kept for the configured time."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from helpers import app_client, serve_app

from services import audit_tools, cli
from services.api.app import create_app
from services.intake.service import IntakeService
from shared import audit_log
from shared.audit import ODS_SYSTEM, RECORD_SYSTEM, classify
from shared.clients import ClientRegistry
from shared.fhir import validate
from shared.nhs import NHS_NUMBER_SYSTEM
from shared.settings import Settings
from shared.store import Store

FHIR = {"Content-Type": "application/fhir+json"}
BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."


def referral(value: str, nhs_number: str = "9449305552") -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "https://mscc.example.nhs.uk/referral", "value": value}],
        "status": "active",
        "intent": "order",
        "subject": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": nhs_number}},
    }


async def create(http: httpx.AsyncClient, value: str, nhs_number: str = "9449305552") -> dict[str, Any]:
    response = await http.post("/fhir/ServiceRequest", json=referral(value, nhs_number), headers=FHIR)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def events(store: Store, **where: Any) -> list[dict[str, Any]]:
    """Stored AuditEvents, oldest first, each checked to be valid FHIR R4."""
    found = [doc["resource"] async for doc in store.audit.find(where).sort([("recorded", 1), ("_id", 1)])]
    for event in found:
        validate(event, "AuditEvent")
    return found


async def last(store: Store, code: str) -> dict[str, Any]:
    """The newest event of interaction ``code``."""
    matching = [e for e in await events(store) if e["subtype"][0]["code"] == code]
    assert matching, f"no {code} AuditEvent"
    return matching[-1]


def client_agent(event: dict[str, Any]) -> dict[str, Any]:
    [agent] = [a for a in event["agent"] if a["requestor"]]
    return agent


def refs(event: dict[str, Any]) -> list[str]:
    return [e["what"]["reference"] for e in event.get("entity", []) if "reference" in e.get("what", {})]


def role(event: dict[str, Any], ref: str) -> str:
    [entity] = [e for e in event["entity"] if e.get("what", {}).get("reference") == ref]
    return str(entity["role"]["code"])


def query_of(event: dict[str, Any]) -> str:
    [entity] = [e for e in event["entity"] if "query" in e]
    return base64.b64decode(entity["query"]).decode()


async def token(http: httpx.AsyncClient, store: Store, ods: str, scopes: list[str]) -> dict[str, str]:
    """A bearer token of a client registered now with ``scopes``, from the hub's own token endpoint."""
    record, secret = await ClientRegistry(store).add(f"client-{ods}-{len(scopes)}", ods, scopes)
    form = {"grant_type": "client_credentials", "client_id": record.client_id, "client_secret": str(secret)}
    answer = await http.post("/oauth2/token", data=form)
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


# -- what each request leaves -------------------------------------------------------------------------


async def test_a_read_names_the_client_the_resource_and_its_patient(
    http: httpx.AsyncClient, store: Store, settings: Settings
) -> None:
    created = await create(http, "AUD-1")
    patient = created["subject"]["reference"]
    assert patient.startswith("Patient/")
    assert (await http.get(f"/fhir/ServiceRequest/{created['id']}")).status_code == 200
    event = await last(store, "read")
    assert event["action"] == "R" and event["outcome"] == "0"
    assert event["type"]["code"] == "rest"
    assert event["meta"]["profile"] == [BALP + "PatientRead"]
    agent = client_agent(event)
    assert agent["who"]["identifier"] == {"system": ODS_SYSTEM, "value": settings.dev_client_ods}
    assert agent["altId"] == settings.dev_client_id
    assert agent["network"]["address"] == "127.0.0.1"
    assert event["source"]["observer"]["identifier"]["value"] == settings.receiving_application
    assert refs(event) == [f"ServiceRequest/{created['id']}", patient]
    assert role(event, patient) == "1" and role(event, f"ServiceRequest/{created['id']}") == "4"
    # Nothing of the patient beyond references: no name, birth date or NHS number in the event.
    assert "9449305552" not in json.dumps(event)


async def test_a_search_records_the_query_and_the_resources_returned(http: httpx.AsyncClient, store: Store) -> None:
    first = await create(http, "AUD-2")
    second = await create(http, "AUD-3", "9434765919")
    found = await http.get("/fhir/ServiceRequest", params={"status": "active", "_count": "10"})
    assert found.status_code == 200 and found.json()["total"] == 2
    event = await last(store, "search-type")
    assert event["action"] == "E" and event["outcome"] == "0"
    assert event["meta"]["profile"] == [BALP + "PatientQuery"]
    assert query_of(event) == "GET /fhir/ServiceRequest?status=active&_count=10"
    [query] = [e for e in event["entity"] if "query" in e]
    assert query["role"]["code"] == "24" and {"type": "results", "valueString": "2"} in query["detail"]
    assert set(refs(event)) == {
        f"ServiceRequest/{first['id']}",
        f"ServiceRequest/{second['id']}",
        first["subject"]["reference"],
        second["subject"]["reference"],
    }


async def test_create_and_update_name_what_they_wrote(http: httpx.AsyncClient, store: Store) -> None:
    created = await create(http, "AUD-4")
    url = f"/fhir/ServiceRequest/{created['id']}"
    event = await last(store, "create")
    assert event["action"] == "C" and event["outcome"] == "0"
    assert refs(event) == [f"ServiceRequest/{created['id']}", created["subject"]["reference"]]
    assert event["meta"]["profile"] == [BALP + "PatientCreate"]
    updated = await http.put(url, json={**created, "priority": "asap"}, headers={**FHIR, "If-Match": 'W/"1"'})
    assert updated.status_code == 200, updated.text
    event = await last(store, "update")
    assert event["action"] == "U" and event["outcome"] == "0"
    assert refs(event)[0] == f"ServiceRequest/{created['id']}"


async def test_hl7v2_names_the_stored_message_record(http: httpx.AsyncClient, store: Store) -> None:
    message = b"MSH|^~\\&|PAS|RBL|MSCC-HUB|REN|20260101120000||ADT^A01|AUD0001|P|2.5\rPID|1||X1^^^RBL^MR||TEST^A\r"
    answer = await http.post("/hl7v2", content=message, headers={"Content-Type": "application/hl7-v2"})
    assert answer.status_code == 200 and answer.headers["x-ack-code"] == "AA"
    [event] = await events(store)
    assert event["type"]["code"] == "110110" and event["action"] == "C" and event["outcome"] == "0"
    [entity] = event["entity"]
    assert entity["what"]["identifier"] == {"system": RECORD_SYSTEM, "value": answer.headers["x-message-id"]}


async def test_refused_attempts_are_recorded_with_the_reason(
    http: httpx.AsyncClient, store: Store, settings: Settings
) -> None:
    missing = await http.get("/fhir/Patient/not-there")
    assert missing.status_code == 404
    event = await last(store, "read")
    assert event["outcome"] == "4" and "Patient/not-there is not known" in event["outcomeDesc"]
    assert refs(event) == ["Patient/not-there"] and "profile" not in event["meta"]
    # A client whose scopes do not cover the route: 403, with the scope it lacks.
    created = await create(http, "AUD-5")
    headers = await token(http, store, "RBL", ["system/Patient.rs"])
    refused = await http.get(f"/fhir/ServiceRequest/{created['id']}", headers=headers)
    assert refused.status_code == 403
    event = await last(store, "read")
    assert event["outcome"] == "4" and "system/ServiceRequest.r" in event["outcomeDesc"]
    assert client_agent(event)["who"]["identifier"]["value"] == "RBL"
    assert refs(event) == [f"ServiceRequest/{created['id']}"]
    # A token that is not valid: 401, the caller unidentified, its address kept.
    bad = await http.get("/fhir/Patient", headers={"Authorization": "Bearer not-a-token"})
    assert bad.status_code == 401
    event = await last(store, "search-type")
    assert event["outcome"] == "4" and "not a JWT" in event["outcomeDesc"]
    assert client_agent(event)["who"] == {"display": "unidentified caller"}
    assert client_agent(event)["network"]["address"] == "127.0.0.1"


# -- who may read the audit trail ----------------------------------------------------------------------


async def test_a_trust_may_not_search_the_audit_trail(settings: Settings, store: Store) -> None:
    async with app_client(settings.model_copy(update={"dev_client_ods": "RBL"}), store) as trust:
        answer = await trust.get("/fhir/AuditEvent")
        assert answer.status_code == 403
        assert answer.json()["resourceType"] == "OperationOutcome"
        assert (await trust.get("/fhir/AuditEvent/anything")).status_code == 403
    refused = await events(store)
    assert [(e["subtype"][0]["code"], e["outcome"]) for e in refused] == [("search-type", "4"), ("read", "4")]
    assert all("MSCC team" in e["outcomeDesc"] for e in refused)
    assert all(client_agent(e)["who"]["identifier"]["value"] == "RBL" for e in refused)


async def test_the_mscc_team_searches_by_entity_agent_and_date_with_paging(
    http: httpx.AsyncClient, settings: Settings, store: Store
) -> None:
    start = datetime.now(UTC) - timedelta(seconds=1)
    created = await create(http, "AUD-6")
    patient = created["subject"]["reference"]
    for _ in range(4):
        assert (await http.get(f"/fhir/ServiceRequest/{created['id']}")).status_code == 200
    async with app_client(settings.model_copy(update={"dev_client_ods": "RBL", "dev_client_id": "rbl"}), store) as rbl:
        own = await create(rbl, "AUD-RBL", "9434765919")
        assert (await rbl.get(f"/fhir/ServiceRequest/{own['id']}")).status_code == 200

    by_entity = (await http.get("/fhir/AuditEvent", params={"entity": patient, "_count": "100"})).json()
    assert by_entity["total"] == 5  # the create and the four reads name the patient
    assert {e["resource"]["action"] for e in by_entity["entry"]} == {"C", "R"}
    recorded = [e["resource"]["recorded"] for e in by_entity["entry"]]
    assert recorded == sorted(recorded, reverse=True)  # newest first
    bare_id = (await http.get("/fhir/AuditEvent", params={"entity": created["id"]})).json()
    assert bare_id["total"] == 5

    by_agent = (await http.get("/fhir/AuditEvent", params={"agent": "rbl"})).json()
    assert by_agent["total"] == 2
    assert all(client_agent(e["resource"])["who"]["identifier"]["value"] == "RBL" for e in by_agent["entry"])
    assert (await http.get("/fhir/AuditEvent", params={"agent": "RBL"})).json()["total"] == 2

    since = start.strftime("%Y-%m-%dT%H:%M:%SZ")
    window = [("date", f"ge{since}"), ("date", f"lt{(start + timedelta(hours=1)).strftime('%Y-%m-%dT%H:%M:%SZ')}")]
    in_window = (await http.get("/fhir/AuditEvent", params=[*window, ("agent", settings.dev_client_id)])).json()
    assert in_window["total"] >= 5
    tomorrow = (start + timedelta(days=1)).date().isoformat()
    assert (await http.get("/fhir/AuditEvent", params={"date": f"ge{tomorrow}"})).json()["total"] == 0

    # Paging: two at a time, following next links, gives every match once, in order.
    seen: list[str] = []
    url: str | None = "/fhir/AuditEvent?entity=" + patient + "&_count=2"
    while url is not None:
        page = (await http.get(url)).json()
        assert len(page.get("entry", [])) <= 2
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert seen == [e["resource"]["id"] for e in by_entity["entry"]]

    one = by_entity["entry"][0]["resource"]
    read = await http.get(f"/fhir/AuditEvent/{one['id']}")
    assert read.status_code == 200 and read.json() == one
    wrong = await http.get("/fhir/AuditEvent", params={"date": "yesterday"})
    assert wrong.status_code == 400 and "is not a date" in wrong.json()["issue"][0]["diagnostics"]
    assert (await http.get("/fhir/AuditEvent", params={"patient": patient})).status_code == 400


# -- retention, capability, nothing lost ---------------------------------------------------------------


async def test_retention_index_takes_the_configured_time(store: Store) -> None:
    assert Settings.model_fields["audit_retention_days"].default == audit_log.AUDIT_RETENTION_DAYS
    assert await audit_log.retention_seconds(store.audit) == audit_log.AUDIT_RETENTION_DAYS * 86400
    await store.ensure_schema(audit_retention_days=30)
    assert await audit_log.retention_seconds(store.audit) == 30 * 86400
    await store.ensure_schema()  # a process that does not know the setting changes nothing
    assert await audit_log.retention_seconds(store.audit) == 30 * 86400
    await store.ensure_schema(audit_retention_days=365)
    assert await audit_log.retention_seconds(store.audit) == 365 * 86400


async def test_the_capability_statement_lists_audit_event(http: httpx.AsyncClient) -> None:
    statement = (await http.get("/fhir/metadata")).json()
    [entry] = [r for r in statement["rest"][0]["resource"] if r["type"] == "AuditEvent"]
    assert [i["code"] for i in entry["interaction"]] == ["read", "search-type"]
    assert {p["name"] for p in entry["searchParam"]} == {"entity", "agent", "date"}


async def test_a_burst_of_reads_leaves_every_event_after_a_clean_stop(intake: IntakeService, store: Store) -> None:
    """200 concurrent reads over a real socket, then the server is stopped at once: every answered read
    has its AuditEvent (the writes still in flight finish before the server stops)."""
    async with serve_app(create_app(intake)) as url, httpx.AsyncClient(base_url=url) as client:
        created = (await client.post("/fhir/ServiceRequest", json=referral("AUD-BURST"), headers=FHIR)).json()
        answers = await asyncio.gather(*(client.get(f"/fhir/ServiceRequest/{created['id']}") for _ in range(200)))
    assert [a.status_code for a in answers] == [200] * 200
    stored = await store.audit.count_documents(
        {"entity_keys": f"ServiceRequest/{created['id']}", "resource.subtype.code": "read"}
    )
    assert stored == 200


ADT_FOR_UI = (
    b"MSH|^~\\&|PAS|RBL|MSCC-HUB|REN|20261129120000||ADT^A01|UI-AUDIT-1|P|2.5\r"
    b"PID|1||9449305552^^^NHS^NH~X1^^^RBL^MR||DOE^JANE||19700101|F\r"
)


def test_interactions_are_classified_from_the_path() -> None:
    cases = {
        ("GET", "/fhir/Patient/1"): ("read", "R"),
        ("HEAD", "/fhir/Patient/1/_history/2"): ("vread", "R"),
        ("GET", "/fhir/Patient/1/_history"): ("history-instance", "R"),
        ("GET", "/fhir/Patient/_history"): ("history-type", "R"),
        ("POST", "/fhir/ServiceRequest/_search"): ("search-type", "E"),
        ("POST", "/fhir/ServiceRequest"): ("create", "C"),
        ("PUT", "/fhir/CarePlan/1"): ("update", "U"),
        ("DELETE", "/fhir/Subscription/1"): ("delete", "D"),
        ("POST", "/fhir/ServiceRequest/1/$transition"): ("operation", "U"),
        ("POST", "/fhir/ServiceRequest/$validate"): ("operation", "E"),
        ("POST", "/fhir"): ("transaction", "E"),
        ("POST", "/hl7v2"): ("create", "C"),
        ("GET", "/admin/messages"): ("search-type", "E"),
        ("POST", "/admin/messages/abc/apply"): ("update", "U"),
        ("GET", "/ui"): ("search-type", "E"),
        ("GET", "/ui/messages/abc"): ("read", "R"),
        ("POST", "/ui/messages/abc/reprocess"): ("update", "U"),
        ("POST", "/ui/dead-letters/skip"): ("update", "U"),
    }
    for (method, path), expected in cases.items():
        found = classify(method, path)
        assert found is not None and (found.code, found.action) == expected, (method, path)
    assert classify("GET", "/fhir/metadata") is None and classify("GET", "/healthz") is None
    assert classify("GET", "/ui/static/ui.css") is None and classify("POST", "/ui/login") is None
    assert classify("GET", "/ui/messages/abc").path_reference() == "urn:mscc:message-record|abc"  # type: ignore[union-attr]


async def test_a_dashboard_view_of_a_message_is_audited(http: httpx.AsyncClient, store: Store) -> None:
    """The dashboard shows message content (NHS numbers masked, names not): each view is an AuditEvent
    naming the record, as an operator route's access is."""
    sent = await http.post("/hl7v2", content=ADT_FOR_UI, headers={"content-type": "x-application/hl7-v2+er7"})
    record = sent.headers["x-message-id"]
    assert (await http.get(f"/ui/messages/{record}")).status_code == 200
    event = await store.audit.find_one({"entity_keys": record, "resource.action": "R"})
    assert event is not None and event["resource"]["outcome"] == "0"


async def test_cli_search_prints_a_table_or_json(
    http: httpx.AsyncClient, settings: Settings, mongodb_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    created = await create(http, "AUD-CLI")
    assert (await http.get(f"/fhir/ServiceRequest/{created['id']}")).status_code == 200
    settings = settings.model_copy(update={"mongodb_uri": mongodb_uri})

    def mscc(*argv: str) -> int:
        """``mscc audit ...`` as the CLI parses it, on this test's database (its own event loop)."""
        return audit_tools.command(cli._parser().parse_args(argv), settings)

    args = ["audit", "search", "--entity", f"ServiceRequest/{created['id']}", "--since", "2020-01-01"]
    assert await asyncio.to_thread(mscc, *args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "recorded",
        "action",
        "interaction",
        "outcome",
        "client",
        "ods",
        "peer",
        "entities",
        "reason",
    ]
    assert [line.split()[1:3] for line in lines[1:3]] == [["R", "read"], ["C", "create"]]
    assert lines[-1] == "2 of 2 event(s), newest first"
    assert await asyncio.to_thread(mscc, *args, "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    assert [e["action"] for e in printed] == ["R", "C"]
    assert await asyncio.to_thread(mscc, "audit", "search", "--since", "last week") == 2
    assert "not a date" in capsys.readouterr().err
