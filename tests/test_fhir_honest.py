"""Honest answers to FHIR clients: nothing is acknowledged that the hub does not carry out.

A transaction holding an entry the hub would not carry out (DELETE, GET, conditional requests,
operations, a type it does not store, a malformed URL, a code outside its required value set) is refused
whole, named entry by entry, and kept as rejected; a batch answers each such entry with its own error
status while the others are mapped end to end; a message Bundle names what it will not store.
``$validate`` and create check the required bindings of FHIR R4 (status, intent, priority, gender...).
Everything runs through the real app, store and mapper.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import httpx
import pytest

from services.intake.service import IntakeService
from services.mapper.service import MapperService
from services.mapper.worker import WorkerConfig
from shared.bindings import binding_issues, required_bindings
from shared.fhir import validate
from shared.nhs import NHS_NUMBER_SYSTEM
from shared.store import Store

FHIR = {"Content-Type": "application/fhir+json"}
NHS_NUMBER = "9449305552"
OTHER_NHS_NUMBER = "9449305560"


async def burst(store: Store) -> None:
    await MapperService(store, WorkerConfig()).run(asyncio.Event(), burst=True)


async def stored_count(store: Store) -> int:
    """Resources written from what was posted (the mapper publishes the HNA Questionnaire itself)."""
    return await store.resources.count_documents({"type": {"$ne": "Questionnaire"}})


def patient(nhs_number: str = NHS_NUMBER, local: str = "X100234", trust: str = "RBL") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [
            {"system": NHS_NUMBER_SYSTEM, "value": nhs_number},
            {"system": f"https://{trust.lower()}.nhs.uk/Id/pas-number", "value": local},
        ],
        "name": [{"use": "official", "family": "HOLLOWAY", "given": ["Margaret"]}],
        "gender": "female",
        "birthDate": "1970-03-14",
    }


def referral(number: str = "500001", trust: str = "RBL", **extra: Any) -> dict[str, Any]:
    """A referral as an acute trust's EPR sends it: requester a contained PractitionerRole, free text."""
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "contained": [
            {
                "resourceType": "PractitionerRole",
                "id": "referrer",
                "organization": {
                    "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": trust}
                },
                "telecom": [{"system": "phone", "value": "01632 960123", "use": "work"}],
            }
        ],
        "identifier": [{"system": f"https://{trust.lower()}.nhs.uk/Id/ice-referral", "value": number}],
        "status": "active",
        "intent": "order",
        "priority": "urgent",
        "code": {"text": "MSCC assessment"},
        "subject": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": NHS_NUMBER}},
        "requester": {"reference": "#referrer"},
        "authoredOn": "2026-11-25T02:40:00+00:00",
        "note": [{"text": "known ca breast, new thoracic back pain 3/52, legs feel heavy tonight ?MSCC pls review"}],
    }
    resource.update(extra)
    return resource


def entry(resource: dict[str, Any] | None, method: str, url: str, **request: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        item["resource"] = resource
    return item


def bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def good_referral_entry() -> dict[str, Any]:
    return entry(referral(), "POST", "ServiceRequest")


# Entries the hub does not carry out, each with the status a batch answers it with and a word the
# diagnostics must contain (the "why").
NOT_CARRIED_OUT = [
    pytest.param(entry(None, "DELETE", "Patient/7f1c"), 405, "DELETE", id="delete"),
    pytest.param(entry(None, "GET", "Patient?name=holloway"), 405, "GET", id="get-search"),
    pytest.param(entry(None, "GET", "ServiceRequest/abc"), 405, "GET", id="get-read"),
    pytest.param(entry(None, "PATCH", "Patient/7f1c"), 405, "PATCH", id="patch"),
    pytest.param(
        entry(patient(), "PUT", f"Patient?identifier={NHS_NUMBER_SYSTEM}|{NHS_NUMBER}"),
        400,
        "conditional",
        id="cond-put",
    ),
    pytest.param(
        entry(patient(), "POST", "Patient", ifNoneExist=f"identifier={NHS_NUMBER_SYSTEM}|{NHS_NUMBER}"),
        400,
        "ifNoneExist",
        id="cond-create",
    ),
    pytest.param(entry({**patient(), "id": "p1"}, "PUT", "Patient/p1", ifMatch='W/"3"'), 400, "ifMatch", id="if-match"),
    pytest.param(entry(patient(), "PUT", "Patient/$x"), 400, "operation", id="put-dollar"),
    pytest.param(entry(patient(), "POST", "Patient/$match"), 400, "operation", id="post-operation"),
    pytest.param(entry(referral(), "PUT", "ServiceRequest/../x"), 400, "relative URL", id="dot-dot"),
    pytest.param(entry(referral(), "PUT", "ServiceRequest/.."), 400, "relative URL", id="dots-only-id"),
    pytest.param(
        entry(patient(), "PUT", "https://ehr.rbl.nhs.uk/fhir/Patient/1"), 400, "relative URL", id="absolute-url"
    ),
    pytest.param(entry(referral(), "POST", "Patient"), 400, "relative URL", id="url-names-other-type"),
    pytest.param(entry({**patient(), "id": "p2"}, "PUT", "Patient/p1"), 400, "'p2'", id="put-id-mismatch"),
    pytest.param(
        entry(
            {"resourceType": "Observation", "status": "final", "code": {"text": "MRI whole spine"}},
            "POST",
            "Observation",
        ),
        422,
        "not a type this hub stores",
        id="unsupported-type",
    ),
    pytest.param({"resource": patient()}, 400, "request is required", id="no-request"),
    pytest.param(entry(referral(status="bogus"), "POST", "ServiceRequest"), 400, "request-status", id="bogus-status"),
    pytest.param(entry(referral(intent="bogus"), "POST", "ServiceRequest"), 400, "request-intent", id="bogus-intent"),
    pytest.param(
        entry(referral(priority="U"), "POST", "ServiceRequest"), 400, "request-priority", id="local-priority-code"
    ),
    pytest.param(entry({**patient(), "gender": "F"}, "POST", "Patient"), 400, "administrative-gender", id="gender-F"),
]


# 1. Transactions: all or nothing, and the answer says which entries and why.


@pytest.mark.parametrize(("bad", "status", "why"), NOT_CARRIED_OUT)
async def test_transaction_with_an_entry_not_carried_out_is_refused_whole_and_kept(
    bad: dict[str, Any], status: int, why: str, http: httpx.AsyncClient, intake: IntakeService
) -> None:
    body = json.dumps(bundle("transaction", good_referral_entry(), bad)).encode()

    response = await http.post("/fhir", content=body, headers=FHIR)

    assert response.status_code == 400, response.text
    outcome = response.json()
    validate(outcome, "OperationOutcome")
    summary, *named = outcome["issue"]
    assert "Bundle.entry[1]" in summary["diagnostics"] and "nothing applied" in summary["diagnostics"]
    assert named and all(i["expression"][0].startswith("Bundle.entry[1]") for i in named)
    assert any(why in i["diagnostics"] for i in named), named
    [record] = await intake.store.messages.find({}).to_list()
    assert record["status"] == "rejected" and record["raw"] == body and record["http_status"] == 400
    assert record["issues"] == outcome["issue"]
    await burst(intake.store)
    assert await stored_count(intake.store) == 0  # not even the good referral


async def test_transaction_names_every_offending_entry(http: httpx.AsyncClient, intake: IntakeService) -> None:
    sent = bundle(
        "transaction",
        entry(patient(), "POST", "Patient"),
        entry(None, "DELETE", "Patient/7f1c"),
        good_referral_entry(),
        entry(None, "GET", "Patient?name=holloway"),
        entry(referral("500002", status="bogus", priority="bogus"), "POST", "ServiceRequest"),
    )
    response = await http.post("/fhir", json=sent, headers=FHIR)
    assert response.status_code == 400
    expressions = [i["expression"][0] for i in response.json()["issue"][1:]]
    assert expressions == [
        "Bundle.entry[1].request.method",
        "Bundle.entry[3].request.method",
        "Bundle.entry[4].resource.status",
        "Bundle.entry[4].resource.priority",
    ]


async def test_transaction_of_creates_and_updates_by_id_is_still_accepted_and_mapped(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    sent = bundle(
        "transaction",
        {**entry(patient(), "POST", "Patient"), "fullUrl": "urn:uuid:0d8a2c1e-5b7f-4c2a-9f1e-000000000001"},
        entry({**patient(OTHER_NHS_NUMBER, "X100234", "RJR"), "id": "rjr-p1"}, "PUT", "Patient/rjr-p1"),
        entry(
            referral(subject={"reference": "urn:uuid:0d8a2c1e-5b7f-4c2a-9f1e-000000000001"}), "POST", "ServiceRequest"
        ),
    )
    response = await http.post("/fhir", json=sent, headers=FHIR)
    assert response.status_code == 202, response.text
    answers = [e["response"] for e in response.json()["entry"]]
    assert [a["status"] for a in answers] == ["202 Accepted"] * 3
    await burst(intake.store)
    for answer in answers:
        assert await intake.store.resources.find_one({"_id": answer["location"]}) is not None, answer


# 2. Batches: each entry its own answer; the good ones mapped, the bad ones never applied.


@pytest.mark.parametrize(("bad", "status", "why"), NOT_CARRIED_OUT)
async def test_batch_entry_not_carried_out_gets_its_own_error_status(
    bad: dict[str, Any], status: int, why: str, http: httpx.AsyncClient, intake: IntakeService
) -> None:
    response = await http.post("/fhir", json=bundle("batch", good_referral_entry(), bad), headers=FHIR)

    assert response.status_code == 202, response.text
    good, refused = (e["response"] for e in response.json()["entry"])
    assert good["status"] == "202 Accepted" and good["location"].startswith("ServiceRequest/")
    assert refused["status"].startswith(f"{status} ") and "location" not in refused
    issues = refused["outcome"]["issue"]
    assert all(i["severity"] == "error" and i["expression"][0].startswith("Bundle.entry[1]") for i in issues)
    assert any(why in i["diagnostics"] for i in issues), issues
    [record] = await intake.store.messages.find({}).to_list()
    assert record["status"] == "ready"
    assert record["fhir"]["entries"][1]["id"] is None
    assert record["fhir"]["entries"][1]["refused"]["status"] == status


async def test_batch_mixing_good_and_bad_entries_maps_only_the_good_ones(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    # A Patient the hub already holds, which the later batch tries to delete.
    first = await http.post("/fhir", json=bundle("batch", entry(patient(), "POST", "Patient")), headers=FHIR)
    [held] = [e["response"]["location"] for e in first.json()["entry"]]
    await burst(intake.store)
    held_before = await intake.store.resources.find_one({"_id": held})
    assert held_before is not None

    patient_url = "urn:uuid:0d8a2c1e-5b7f-4c2a-9f1e-0000000000a1"
    bogus = referral("500009", trust="REM", status="bogus")
    sent = bundle(
        "batch",
        {**entry(patient(OTHER_NHS_NUMBER, "X100234", "RJR"), "POST", "Patient"), "fullUrl": patient_url},
        entry(referral("500001", trust="RJR", subject={"reference": patient_url}), "POST", "ServiceRequest"),
        entry(None, "DELETE", held),
        entry(None, "GET", "Patient?name=holloway"),
        entry(patient(), "PUT", f"Patient?identifier={NHS_NUMBER_SYSTEM}|{NHS_NUMBER}"),
        entry({"resourceType": "Observation", "status": "final", "code": {"text": "MRI"}}, "POST", "Observation"),
        entry({**patient(), "gender": "male", "birthDate": "1940-01-01"}, "PUT", "Patient/$x"),
        entry(bogus, "POST", "ServiceRequest"),
        entry(referral("500010", trust="REM"), "PUT", "ServiceRequest/../x"),
    )
    response = await http.post("/fhir", json=sent, headers=FHIR)

    assert response.status_code == 202, response.text
    answers = [e["response"] for e in response.json()["entry"]]
    statuses = [int(a["status"].split()[0]) for a in answers]
    assert statuses == [202, 202, 405, 405, 400, 422, 400, 400, 400]
    patient_location, sr_location = answers[0]["location"], answers[1]["location"]
    assert all("location" not in a for a in answers[2:])

    await burst(intake.store)

    record = await intake.store.messages.find_one({"_id": response.headers["x-message-id"]})
    assert record is not None and record["status"] == "mapped", record
    sr = await intake.store.resources.find_one({"_id": sr_location})
    assert sr is not None and sr["resource"]["subject"]["reference"] == patient_location
    assert await intake.store.resources.find_one({"_id": patient_location}) is not None
    # The refused entries were never applied: the held Patient is as it was, nothing else was written.
    assert await intake.store.resources.find_one({"_id": held}) == held_before
    assert await intake.store.resources.count_documents({"type": "Observation"}) == 0
    assert await intake.store.resources.count_documents({"id": "$x"}) == 0
    assert await intake.store.resources.count_documents({"type": "ServiceRequest"}) == 1
    assert await intake.store.resources.count_documents({"resource.status": "bogus"}) == 0


async def test_batch_with_nothing_carried_out_still_answers_each_entry(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    sent = bundle("batch", entry(None, "DELETE", "Patient/1"), entry(None, "GET", "Patient/2"))
    response = await http.post("/fhir", json=sent, headers=FHIR)
    assert response.status_code == 202
    assert [e["response"]["status"] for e in response.json()["entry"]] == ["405 Method Not Allowed"] * 2
    await burst(intake.store)
    assert await stored_count(intake.store) == 0


# 3. Message Bundles: a message is taken as a unit; what it holds that the hub does not store is named.


def message(*resources: dict[str, Any]) -> dict[str, Any]:
    header = {
        "resourceType": "MessageHeader",
        "id": "5c3e8a2b-1d4f-4e6a-8b9c-00000000000a",
        "eventCoding": {"system": "https://mscc.example.nhs.uk/events", "code": "referral"},
        "source": {"endpoint": "https://ehr.rbl.nhs.uk/fhir"},
    }
    return {
        "resourceType": "Bundle",
        "type": "message",
        "timestamp": "2026-11-25T02:41:00Z",
        "entry": [{"resource": header}, *({"resource": r} for r in resources)],
    }


async def test_message_names_the_entries_the_hub_does_not_store(http: httpx.AsyncClient, intake: IntakeService) -> None:
    gp = {"resourceType": "Practitioner", "name": [{"family": "PATEL"}], "gender": "female"}
    response = await http.post("/fhir", json=message(referral(), gp), headers=FHIR)

    assert response.status_code == 200, response.text
    reply = response.json()
    header = reply["entry"][0]["resource"]
    assert header["response"]["code"] == "ok"
    details = header["response"]["details"]["reference"]
    [outcome] = [e["resource"] for e in reply["entry"] if e.get("fullUrl") == details]
    [warning] = outcome["issue"]
    assert warning["severity"] == "warning" and warning["expression"] == ["Bundle.entry[2].resource"]
    assert "Practitioner is not a type this hub stores" in warning["diagnostics"]
    record = await intake.store.messages.find_one({"_id": response.headers["x-message-id"]})
    assert record is not None and warning in record["issues"]


async def test_message_with_nothing_the_hub_stores_is_refused_and_kept(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "MRI whole spine"}}
    response = await http.post("/fhir", json=message(observation), headers=FHIR)
    assert response.status_code == 422, response.text
    assert "nothing would be done" in response.json()["issue"][0]["diagnostics"]
    [record] = await intake.store.messages.find({}).to_list()
    assert record["status"] == "rejected" and record["http_status"] == 422


async def test_message_with_a_code_outside_its_value_set_is_refused(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    response = await http.post("/fhir", json=message(referral(status="bogus")), headers=FHIR)
    assert response.status_code == 400, response.text
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.status"]
    await burst(intake.store)
    assert await stored_count(intake.store) == 0


# 4. Required bindings: $validate and create.


BOGUS_CODES = [
    pytest.param("ServiceRequest", referral(status="bogus"), "ServiceRequest.status", "revoked", id="sr-status"),
    pytest.param("ServiceRequest", referral(intent="bogus"), "ServiceRequest.intent", "original-order", id="sr-intent"),
    pytest.param("ServiceRequest", referral(priority="bogus"), "ServiceRequest.priority", "asap", id="sr-priority"),
    pytest.param("ServiceRequest", referral(priority="U"), "ServiceRequest.priority", "urgent", id="sr-priority-U"),
    pytest.param(
        "ServiceRequest",
        {**referral(), "contained": [{"resourceType": "Patient", "id": "pt", "gender": "F"}]},
        "ServiceRequest.contained[0].gender",
        "female",
        id="contained-gender",
    ),
    pytest.param(
        "ServiceRequest",
        {
            **referral(),
            "contained": [
                {"resourceType": "PractitionerRole", "id": "r", "telecom": [{"system": "bleep", "value": "4411"}]}
            ],
        },
        "ServiceRequest.contained[0].telecom[0].system",
        "pager",
        id="contained-telecom",
    ),
]
BOGUS_CODES_OTHER_TYPES = [
    pytest.param("Patient", {**patient(), "gender": "bogus"}, "Patient.gender", "unknown", id="patient-gender"),
    pytest.param(
        "Encounter",
        {"resourceType": "Encounter", "status": "bogus", "class": {"code": "AMB"}},
        "Encounter.status",
        "in-progress",
        id="encounter-status",
    ),
    pytest.param(
        "CarePlan",
        {"resourceType": "CarePlan", "status": "active", "intent": "bogus", "subject": {"reference": "Patient/p"}},
        "CarePlan.intent",
        "proposal",
        id="careplan-intent",
    ),
    pytest.param(
        "QuestionnaireResponse",
        {"resourceType": "QuestionnaireResponse", "status": "bogus"},
        "QuestionnaireResponse.status",
        "completed",
        id="qr-status",
    ),
]


@pytest.mark.parametrize(
    ("resource_type", "resource", "expression", "allowed"), [*BOGUS_CODES, *BOGUS_CODES_OTHER_TYPES]
)
async def test_validate_refuses_a_code_outside_its_required_value_set(
    resource_type: str, resource: dict[str, Any], expression: str, allowed: str, http: httpx.AsyncClient
) -> None:
    response = await http.post(f"/fhir/{resource_type}/$validate", json=resource, headers=FHIR)
    assert response.status_code == 400, response.text
    [problem] = response.json()["issue"]
    assert problem["code"] == "code-invalid" and problem["expression"] == [expression]
    assert allowed in problem["diagnostics"] and "4.0.1" in problem["diagnostics"]


@pytest.mark.parametrize(("resource_type", "resource", "expression", "allowed"), BOGUS_CODES)
async def test_create_refuses_a_code_outside_its_required_value_set_and_keeps_it(
    resource_type: str,
    resource: dict[str, Any],
    expression: str,
    allowed: str,
    http: httpx.AsyncClient,
    intake: IntakeService,
) -> None:
    body = json.dumps(resource).encode()
    response = await http.post(f"/fhir/{resource_type}", content=body, headers=FHIR)
    assert response.status_code == 400, response.text
    assert response.json()["issue"][0]["expression"] == [expression]
    [record] = await intake.store.messages.find({}).to_list()
    assert record["status"] == "rejected" and record["raw"] == body
    assert await stored_count(intake.store) == 0


@pytest.mark.parametrize(
    ("resource_type", "resource"),
    [
        pytest.param("ServiceRequest", referral(), id="referral"),
        pytest.param("ServiceRequest", referral(status="draft", intent="proposal", priority="stat"), id="draft"),
        pytest.param("Patient", patient(), id="patient"),
        pytest.param(
            "Encounter", {"resourceType": "Encounter", "status": "planned", "class": {"code": "LOCAL"}}, id="enc"
        ),
    ],
)
async def test_valid_codes_still_pass_validate(
    resource_type: str, resource: dict[str, Any], http: httpx.AsyncClient
) -> None:
    response = await http.post(f"/fhir/{resource_type}/$validate", json=resource, headers=FHIR)
    assert response.status_code == 200, response.text


async def test_valid_referral_is_still_created(http: httpx.AsyncClient) -> None:
    response = await http.post("/fhir/ServiceRequest", json=referral(), headers=FHIR)
    assert response.status_code == 201, response.text


# 5. The binding table and checker themselves.


def test_every_binding_names_a_r4_value_set_with_codes() -> None:
    table = required_bindings()
    assert {"ServiceRequest", "Patient", "Encounter", "CarePlan", "QuestionnaireResponse", "Condition"} <= set(table)
    for bindings in table.values():
        for binding in bindings:
            assert binding.value_set.url.endswith("|4.0.1") and binding.value_set.codes


@pytest.mark.parametrize(
    ("resource", "expressions"),
    [
        pytest.param(
            {
                "resourceType": "Condition",
                "clinicalStatus": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
                },
                "verificationStatus": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}
                    ]
                },
            },
            [],
            id="condition-ok",
        ),
        pytest.param(
            {
                "resourceType": "Condition",
                "clinicalStatus": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "bogus"}]
                },
                "verificationStatus": {"coding": [{"system": "http://snomed.info/sct", "code": "410605003"}]},
            },
            ["Condition.clinicalStatus", "Condition.verificationStatus"],
            id="condition-bogus-and-other-system",
        ),
        pytest.param(
            {"resourceType": "Condition", "verificationStatus": {"text": "working diagnosis"}},
            ["Condition.verificationStatus"],
            id="condition-text-only",
        ),
        pytest.param(
            {
                "resourceType": "AllergyIntolerance",
                "type": "allergy",
                "category": ["medication", "drug"],
                "criticality": "high",
                "reaction": [{"severity": "severe"}, {"severity": "SV"}],
            },
            ["AllergyIntolerance.category[1]", "AllergyIntolerance.reaction[1].severity"],
            id="allergy",
        ),
        pytest.param({"resourceType": "Procedure", "status": "done"}, ["Procedure.status"], id="procedure"),
        pytest.param({"resourceType": "Observation", "status": "F"}, ["Observation.status"], id="observation"),
        pytest.param(
            {
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [{"resource": {"resourceType": "Patient", "gender": "M"}}],
            },
            ["Bundle.entry[0].resource.gender"],
            id="bundle-entry",
        ),
    ],
)
def test_binding_checker(resource: dict[str, Any], expressions: list[str]) -> None:
    assert [i["expression"][0] for i in binding_issues(copy.deepcopy(resource))] == expressions


async def test_update_refuses_a_code_outside_its_required_value_set(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    created = await http.post("/fhir/ServiceRequest", json=referral(), headers=FHIR)
    await burst(intake.store)
    path = f"/fhir/ServiceRequest/{created.json()['id']}"
    read = await http.get(path)
    body = {**read.json(), "priority": "U", "note": [{"text": "pt now unable to weight bear, pls expedite"}]}
    response = await http.put(path, json=body, headers=FHIR | {"If-Match": read.headers["ETag"]})
    assert response.status_code == 400, response.text
    assert response.json()["issue"][0]["expression"] == ["ServiceRequest.priority"]
    after = await http.get(path)
    assert after.headers["ETag"] == read.headers["ETag"] and after.json()["priority"] == "urgent"


async def test_batch_entry_referring_to_a_refused_entry_is_refused_too(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    patient_url = "urn:uuid:0d8a2c1e-5b7f-4c2a-9f1e-0000000000b1"
    sent = bundle(
        "batch",
        {**entry({**patient(), "gender": "F"}, "POST", "Patient"), "fullUrl": patient_url},
        entry(referral("500003", subject={"reference": patient_url}), "POST", "ServiceRequest"),
        entry(referral("500004", trust="RJR"), "POST", "ServiceRequest"),
    )
    response = await http.post("/fhir", json=sent, headers=FHIR)
    answers = [e["response"] for e in response.json()["entry"]]
    assert [a["status"] for a in answers] == ["400 Bad Request", "424 Failed Dependency", "202 Accepted"]
    assert "Bundle.entry[0]" in answers[1]["outcome"]["issue"][0]["diagnostics"]
    await burst(intake.store)
    [stored] = await intake.store.resources.find({"type": "ServiceRequest"}).to_list()
    assert stored["_id"] == answers[2]["location"]  # never a referral whose subject points at nothing
