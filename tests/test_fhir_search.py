"""FHIR search and history over what intake and the mapper stored: parameters, paging, refusals."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fhir.resources.R4B import get_fhir_model_class

from services.intake.service import IntakeService
from services.mapper.service import MapperService
from services.mapper.worker import WorkerConfig

FHIR = {"Content-Type": "application/fhir+json"}
NHS = "https://fhir.nhs.uk/Id/nhs-number"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"


def patient(nhs: str, family: str, given: str, born: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": NHS, "value": nhs}],
        "name": [{"family": family, "given": [given]}],
        "birthDate": born,
    }


def referral(value: str, patient_ref: str, status: str, ods: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "status": status,
        "intent": "order",
        "identifier": [{"system": "https://example.org/referral", "value": value}],
        "subject": {"reference": patient_ref},
        "requester": {"identifier": {"system": ODS, "value": ods}},
    }


@pytest.fixture
async def seeded(http: httpx.AsyncClient, intake: IntakeService) -> dict[str, str]:
    """Three patients and five referrals, stored through intake and mapped."""
    people = [
        patient("9449305552", "Smith", "Alex", "1958-02-14"),
        patient("9434765919", "Smithson", "Bo", "1960-07-01"),
        patient("9434765870", "Jones", "Cy", "1975-12-31"),
    ]
    entries = [
        {
            "fullUrl": f"urn:uuid:00000000-0000-4000-8000-00000000000{i}",
            "resource": p,
            "request": {"method": "POST", "url": "Patient"},
        }
        for i, p in enumerate(people)
    ]
    receipt = await http.post(
        "/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries}, headers=FHIR
    )
    ids = {
        p["name"][0]["family"]: e["response"]["location"] for p, e in zip(people, receipt.json()["entry"], strict=True)
    }
    for n, (who, status, ods) in enumerate(
        [
            ("Smith", "active", "RBL"),
            ("Smith", "completed", "RBL"),
            ("Smithson", "active", "RJR"),
            ("Jones", "active", "RBL"),
            ("Jones", "revoked", "REM"),
        ]
    ):
        created = await http.post("/fhir/ServiceRequest", json=referral(f"R{n}", ids[who], status, ods), headers=FHIR)
        assert created.status_code == 201
    await MapperService(intake.store, WorkerConfig()).run(asyncio.Event(), burst=True)
    return ids


async def search(http: httpx.AsyncClient, path: str, **params: str) -> dict[str, Any]:
    response = await http.get(path, params=params)
    assert response.status_code == 200, response.text
    bundle: dict[str, Any] = response.json()
    get_fhir_model_class("Bundle").model_validate(bundle)
    assert bundle["type"] == "searchset"
    return bundle


def ids_of(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


async def test_patient_by_identifier_name_and_birthdate(http: httpx.AsyncClient, seeded: dict[str, str]) -> None:
    smith = seeded["Smith"].split("/")[1]
    assert ids_of(await search(http, "/fhir/Patient", identifier=f"{NHS}|9449305552")) == [smith]
    assert ids_of(await search(http, "/fhir/Patient", identifier="9449305552")) == [smith]
    assert (await search(http, "/fhir/Patient", identifier="https://other.example|9449305552"))["total"] == 0
    assert (await search(http, "/fhir/Patient", name="smi"))["total"] == 2  # Smith and Smithson, any case
    assert (await search(http, "/fhir/Patient", given="cy"))["total"] == 1
    assert (await search(http, "/fhir/Patient", birthdate="1958"))["total"] == 1
    assert (await search(http, "/fhir/Patient", birthdate="1960-07"))["total"] == 1
    assert (await search(http, "/fhir/Patient", birthdate="ge1960-07-01"))["total"] == 2
    assert (await search(http, "/fhir/Patient", birthdate="lt1960-07-01"))["total"] == 1


async def test_referrals_by_patient_status_and_requester(http: httpx.AsyncClient, seeded: dict[str, str]) -> None:
    assert (await search(http, "/fhir/ServiceRequest", patient=seeded["Smith"]))["total"] == 2
    assert (await search(http, "/fhir/ServiceRequest", patient=seeded["Smith"].split("/")[1]))["total"] == 2
    assert (await search(http, "/fhir/ServiceRequest", status="active"))["total"] == 3
    assert (await search(http, "/fhir/ServiceRequest", status="completed,revoked"))["total"] == 2
    assert (await search(http, "/fhir/ServiceRequest", requester="Organization/RBL"))["total"] == 3
    by_identifier = await search(http, "/fhir/ServiceRequest", **{"requester:identifier": f"{ODS}|REM"})
    assert by_identifier["total"] == 1
    both = await search(http, "/fhir/ServiceRequest", requester="Organization/RBL", status="active")
    assert both["total"] == 2
    # the mapper's episodes and plans are found by patient too
    assert (await search(http, "/fhir/Encounter", patient=seeded["Jones"]))["total"] == 2
    assert (await search(http, "/fhir/CarePlan", subject=seeded["Jones"], status="revoked"))["total"] == 1


async def test_paging_visits_every_match_once(http: httpx.AsyncClient, seeded: dict[str, str]) -> None:
    page = await search(http, "/fhir/ServiceRequest", _count="2")
    assert page["total"] == 5 and len(page["entry"]) == 2
    seen = ids_of(page)
    while (nxt := next((link["url"] for link in page["link"] if link["relation"] == "next"), None)) is not None:
        parts = urlsplit(nxt)
        response = await http.get(f"{parts.path}?{parts.query}")
        page = response.json()
        assert any(link["relation"] == "previous" for link in page["link"])
        seen += ids_of(page)
    assert len(seen) == len(set(seen)) == 5


async def test_last_updated_and_id(http: httpx.AsyncClient, seeded: dict[str, str]) -> None:
    assert (await search(http, "/fhir/Patient", _lastUpdated="ge2000-01-01"))["total"] == 3
    assert (await search(http, "/fhir/Patient", _lastUpdated="lt2000-01-01"))["total"] == 0
    jones = seeded["Jones"].split("/")[1]
    assert ids_of(await search(http, "/fhir/Patient", _id=jones)) == [jones]


async def test_search_by_post_form(http: httpx.AsyncClient, seeded: dict[str, str]) -> None:
    response = await http.post(
        "/fhir/Patient/_search", content="family=Jones", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 200 and response.json()["total"] == 1


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ({"colour": "red"}, "colour"),
        ({"name:exact": "Smith"}, "name:exact"),
        ({"birthdate": "yesterday"}, "not a date"),
        ({"_count": "101"}, "_count"),  # _count=0 asks for the total alone (test_fhir_conventions.py)
        ({"_count": "many"}, "whole number"),
        ({"identifier": ""}, "no value"),
    ],
)
async def test_unsupported_or_malformed_parameters_are_refused(
    http: httpx.AsyncClient, intake: IntakeService, query: dict[str, str], words: str
) -> None:
    response = await http.get("/fhir/Patient", params=query)
    assert response.status_code == 400
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome" and words in outcome["issue"][0]["diagnostics"]


async def test_history_lists_versions_newest_first(http: httpx.AsyncClient, seeded: dict[str, str]) -> None:
    found = await search(http, "/fhir/ServiceRequest", patient=seeded["Jones"], status="active")
    rid = ids_of(found)[0]
    # A second version: the referral as created (version 1, normalised at intake), then updated.
    read = await http.get(f"/fhir/ServiceRequest/{rid}")
    changed = {**read.json(), "note": [{"text": "second version"}]}
    headers = {"Content-Type": "application/fhir+json", "If-Match": read.headers["ETag"]}
    assert (await http.put(f"/fhir/ServiceRequest/{rid}", json=changed, headers=headers)).status_code == 200
    response = await http.get(f"/fhir/ServiceRequest/{rid}/_history")
    assert response.status_code == 200
    bundle = response.json()
    get_fhir_model_class("Bundle").model_validate(bundle)
    versions = [e["resource"]["meta"]["versionId"] for e in bundle["entry"]]
    assert versions == ["2", "1"]
    assert bundle["entry"][0]["response"]["etag"] == 'W/"2"'
    assert (await http.get(f"/fhir/ServiceRequest/{rid}/_history", params={"_count": "1"})).json()["entry"][0][
        "resource"
    ]["meta"]["versionId"] == "2"
    missing = await http.get("/fhir/ServiceRequest/nope/_history")
    assert missing.status_code == 404


async def test_published_hna_questionnaire_can_be_read_and_searched(
    http: httpx.AsyncClient, seeded: dict[str, str]
) -> None:
    response = await http.get("/fhir/Questionnaire/mscc-hna")
    assert response.status_code == 200 and response.json()["status"] == "active"
    assert (await search(http, "/fhir/Questionnaire", status="active"))["total"] == 1
