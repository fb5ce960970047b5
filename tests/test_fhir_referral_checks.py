"""FHIR referrals: the data-quality Task reads the referral's Patient, and a referral naming no trust is
flagged on its record.

End to end through the FHIR API, the mapper and the real store; resources are found by search.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from services.intake.service import IntakeService
from services.mapper.service import MapperService

FHIR_JSON = {"Content-Type": "application/fhir+json"}
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
WIRRAL_PAS = "https://fhir.wirral.example.nhs.uk/Id/pas-number"
WIRRAL_REFERRAL = "https://fhir.wirral.example.nhs.uk/Id/referral"


def patient(*identifiers: dict[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": list(identifiers),
        "name": [{"family": "Roberts", "given": ["Alan"]}],
        "gender": "male",
        "birthDate": "1951-06-30",
    }


def referral(number: str, subject: dict[str, Any], requester: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": WIRRAL_REFERRAL, "value": number}],
        "status": "active",
        "intent": "order",
        "priority": "urgent",
        "subject": subject,
        "reasonCode": [{"text": "Suspected MSCC"}],
        "authoredOn": "2026-11-25T08:00:00+00:00",
    }
    if requester is not None:
        out["requester"] = requester
    return out


RBL = {"type": "Organization", "identifier": {"system": ODS, "value": "RBL"}}


async def drain(intake: IntakeService) -> None:
    await MapperService(intake.store).run(asyncio.Event(), burst=True)


async def transaction(http: httpx.AsyncClient, *entries: tuple[str, dict[str, Any]]) -> list[str]:
    """POST a transaction creating ``entries`` (fullUrl, resource); the ids the receipt gives them."""
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": url, "resource": res, "request": {"method": "POST", "url": res["resourceType"]}}
            for url, res in entries
        ],
    }
    answer = await http.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert answer.status_code in (200, 202), answer.text
    return [e["response"]["location"].split("/")[1] for e in answer.json()["entry"]]


async def task_of(http: httpx.AsyncClient, request_id: str) -> dict[str, Any]:
    found = (await http.get("/fhir/Task", params={"focus": f"ServiceRequest/{request_id}"})).json()
    [entry] = found["entry"]
    task: dict[str, Any] = entry["resource"]
    return task


def missing(task: dict[str, Any]) -> list[str]:
    return [entry["type"]["coding"][0]["code"] for entry in task.get("input", [])]


async def test_a_referral_to_a_stored_patient_with_an_nhs_number_is_not_asked_for_it(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    [patient_id] = await transaction(
        http, ("urn:uuid:7d0c7a4e-3c1b-4d0e-9a55-1f2f2b0c1a01", patient({"system": NHS, "value": "9434765919"}))
    )
    await drain(intake)
    created = await http.post(
        "/fhir/ServiceRequest",
        json=referral("WR-6001", {"reference": f"Patient/{patient_id}"}, RBL),
        headers=FHIR_JSON,
    )
    assert created.status_code == 201, created.text
    await drain(intake)
    task = await task_of(http, created.json()["id"])
    assert "nhs-number" not in missing(task)
    assert missing(task) == ["referrer-contact", "primary-cancer", "neurological-status"]


async def test_a_referral_to_a_patient_in_the_same_bundle_is_not_asked_for_its_nhs_number(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    url = "urn:uuid:2b51e0de-95a4-4f7c-8d59-6c0b0e6a9f11"
    _, request_id = await transaction(
        http,
        (url, patient({"system": NHS, "value": "9434765919"})),
        ("urn:uuid:5a7b8c9d-0e1f-4a2b-8c3d-4e5f6a7b8c9d", referral("WR-6002", {"reference": url}, RBL)),
    )
    await drain(intake)
    task = await task_of(http, request_id)
    assert "nhs-number" not in missing(task)


async def test_a_referral_to_a_patient_without_an_nhs_number_is_still_asked_for_it(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    [patient_id] = await transaction(
        http, ("urn:uuid:0f9e8d7c-6b5a-4c3d-2e1f-0a9b8c7d6e5f", patient({"system": WIRRAL_PAS, "value": "X100234"}))
    )
    url = "urn:uuid:1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d"
    # A failed NHS number in the Bundle's Patient is demoted, never counted.
    _, in_bundle = await transaction(
        http,
        (url, patient({"system": NHS, "value": "9434765918"})),
        ("urn:uuid:6f5e4d3c-2b1a-4f9e-8d7c-6b5a4f3e2d1c", referral("WR-6004", {"reference": url}, RBL)),
    )
    created = await http.post(
        "/fhir/ServiceRequest",
        json=referral("WR-6003", {"reference": f"Patient/{patient_id}"}, RBL),
        headers=FHIR_JSON,
    )
    assert created.status_code == 201, created.text
    await drain(intake)
    assert "nhs-number" in missing(await task_of(http, created.json()["id"]))
    assert "nhs-number" in missing(await task_of(http, in_bundle))


async def record_issues(intake: IntakeService, referral_number: str) -> list[dict[str, Any]]:
    """The processing issues of the record whose body carries ``referral_number``."""
    async for doc in intake.store.messages.find({"processing.status": "mapped"}):
        raw = doc.get("raw")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        if referral_number in text:
            issues: list[dict[str, Any]] = doc["processing"]["issues"]
            return issues
    raise AssertionError(f"no mapped record carries {referral_number}")


async def test_a_fhir_referral_naming_no_trust_is_flagged_on_its_record(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    subject = {"identifier": {"system": NHS, "value": "9449305552"}}
    # No requester at all; a contained PractitionerRole without an organisation; and, for contrast, a
    # contained PractitionerRole of RBL.
    bare = referral("WR-7001", subject)
    role_only = {
        **referral("WR-7002", subject, {"reference": "#requester"}),
        "contained": [
            {
                "resourceType": "PractitionerRole",
                "id": "requester",
                "practitioner": {"display": "Dr Okafor (SpR oncology)"},
                "telecom": [{"system": "phone", "value": "0151 678 5111"}],
            }
        ],
    }
    named = {
        **referral("WR-7003", subject, {"reference": "#requester"}),
        "contained": [{**role_only["contained"][0], "organization": RBL}],
    }
    for body in (bare, role_only):
        created = await http.post("/fhir/ServiceRequest", json=body, headers=FHIR_JSON)
        assert created.status_code == 201, created.text
    await transaction(http, ("urn:uuid:9e8d7c6b-5a4f-4e3d-8c1b-0a9f8e7d6c5b", named))
    await drain(intake)

    for number in ("WR-7001", "WR-7002"):
        flagged = [i for i in await record_issues(intake, number) if "referring organisation" in i["diagnostics"]]
        assert [i["severity"] for i in flagged] == ["warning"], number
        assert flagged[0]["expression"] == ["ServiceRequest.requester"]
    assert not [i for i in await record_issues(intake, "WR-7003") if "referring organisation" in i["diagnostics"]]


async def test_relative_references_between_entries_name_the_hubs_ids(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    # The sender's engine refers to the Patient by the id it carries in the Bundle ("Patient/pas-7731")
    # and by its absolute fullUrl; the hub stores the Patient under an id of its own, so both references
    # must be rewritten: left as sent, they would name whatever the hub holds as Patient/pas-7731.
    sender_patient = {**patient({"system": WIRRAL_PAS, "value": "7731"}), "id": "pas-7731"}
    first = referral("W-7731-1", {"reference": "Patient/pas-7731"}, RBL)
    second = referral("W-7731-2", {"reference": "https://fhir.wirral.example.nhs.uk/fhir/Patient/pas-7731"}, RBL)
    patient_id, first_id, second_id = await transaction(
        http,
        ("https://fhir.wirral.example.nhs.uk/fhir/Patient/pas-7731", sender_patient),
        ("urn:uuid:6d1c5a9e-2f1e-4e53-9d3c-1f8b6a0c7e21", first),
        ("urn:uuid:0b7f3e55-8c1d-4a6e-a2f4-5d9c2e8b1a37", second),
    )
    assert patient_id != "pas-7731"
    await drain(intake)
    for request_id in (first_id, second_id):
        stored = (await http.get(f"/fhir/ServiceRequest/{request_id}")).json()
        assert stored["subject"]["reference"] == f"Patient/{patient_id}"
    listed = (await http.get("/fhir/ServiceRequest", params={"patient": patient_id})).json()
    assert listed["total"] == 2
