"""Reading the neurological status, fail-safe (NICE NG234: any sign means MRI within 24 hours).

The phrasings and their expected readings are data beside the rules
(``services/pathway/data/neurological-phrasings.json``); this module checks every one, then follows
whole referrals (HL7v2 REF^I12 and FHIR ServiceRequest) through intake and the mapper to the pathway
CarePlan's deadline, and through the SLA scanner.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.mapper.service import MapperService
from services.pathway.items import items
from services.pathway.neurological import (
    Neurological,
    combine,
    neurological_keys,
    observation_reading,
    read_item,
    read_text,
    referral_reading,
)
from services.pathway.sla import scan_sla
from shared.fhir import validate
from shared.store import Document, Store

PHRASINGS = json.loads(
    (Path(__file__).parent.parent / "services/pathway/data/neurological-phrasings.json").read_text("utf-8")
)
HL7 = {"Content-Type": "application/hl7-v2"}
FHIR = {"Content-Type": "application/fhir+json"}
# Thursday 15 January 2026, in service hours (London time is UTC in January).
FIRST_CONTACT = datetime(2026, 1, 15, 9, 55, tzinfo=UTC)


# --- the phrasings table ---------------------------------------------------------------------------------


def test_the_table_holds_enough_real_phrasings_of_every_reading() -> None:
    readings = [case["expected"] for case in PHRASINGS["texts"]]
    assert len(readings) >= 40
    assert {"present", "absent", "unknown"} <= set(readings)
    assert len({case["text"] for case in PHRASINGS["texts"]}) == len(readings)  # no duplicates


def test_free_text_rules_are_lower_case() -> None:
    # they run on lower-cased text without re.IGNORECASE (much faster): an upper-case rule never matches
    rules = json.loads(
        (Path(__file__).parent.parent / "services/pathway/data/neurological-rules.json").read_text("utf-8")
    )["free_text"]
    text = json.dumps({k: v for k, v in rules.items() if k != "_note"})
    without_escapes = re.sub(r"\\\\[A-Za-z]", "", text)  # escapes (\\b, \\S) are not letters of a rule
    assert without_escapes == without_escapes.lower()


def test_every_item_rule_names_a_referral_information_item() -> None:
    # The per-item rules (neurological-rules.json) and the items (mscc-supporting-info.json) are two files:
    # a rule under a key no item has would never be applied, and a misspelt key would read that item as
    # free text only. The phrasings' items must name ruled items too.
    keys = {item.key for item in items()}
    assert neurological_keys() <= keys
    assert {"neurological-status", "motor-power", "sensory-level", "sphincter-function"} <= neurological_keys()
    assert {case["key"] for case in PHRASINGS["items"]} <= neurological_keys()


@pytest.mark.parametrize("case", PHRASINGS["texts"], ids=lambda c: c["text"][:50] or "<empty>")
def test_free_text_phrasing_is_read_as_expected(case: dict[str, str]) -> None:
    assert read_text(case["text"]) == case["expected"], case.get("why", "")


@pytest.mark.parametrize("case", PHRASINGS["items"], ids=lambda c: f"{c['key']}={c['value']}")
def test_structured_item_is_read_by_what_it_measures(case: dict[str, str]) -> None:
    assert read_item(case["key"], case["value"]) == case["expected"], case.get("why", "")


@pytest.mark.parametrize(
    ("readings", "expected"),
    [
        ([], "unknown"),
        (["absent", "absent"], "absent"),
        (["absent", "unknown"], "unknown"),  # one item not assessed is not an all-clear
        (["absent", "unknown", "present"], "present"),
    ],
)
def test_readings_combine_towards_the_safe_window(readings: list[Neurological], expected: str) -> None:
    assert combine(readings) == expected


def test_odd_values_read_unknown_and_never_raise() -> None:
    assert read_text(None) == "unknown"  # type: ignore[arg-type]
    assert read_item("sensory-level", 10) == "unknown"  # type: ignore[arg-type]
    assert read_text("\x00\ufffd|^~\\&") == "unknown"


# --- FHIR: contained resources of any shape --------------------------------------------------------------


PRACTITIONER_ROLE: dict[str, Any] = {
    "resourceType": "PractitionerRole",
    "id": "requester",
    "code": [{"coding": [{"system": "http://snomed.info/sct", "code": "158965000"}], "text": "Doctor"}],
    "organization": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RJR"}},
}


def observation(code: dict[str, Any], **value: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": f"obs{len(value)}", "status": "final", "code": code, **value}


def test_contained_practitioner_role_and_malformed_content_do_not_raise() -> None:
    # the mapping of any PRD is a contained PractitionerRole whose ``code`` is a list
    request = {
        "resourceType": "ServiceRequest",
        "contained": [
            PRACTITIONER_ROLE,
            "not a resource",
            {"resourceType": "Observation", "code": "weakness", "valueString": 7},
            {"resourceType": "Observation", "code": {"coding": "x", "text": ["y"]}, "valueQuantity": "4"},
            {"resourceType": "Observation", "code": {"coding": [None, 3]}},
        ],
    }
    assert referral_reading(request) == "unknown"
    assert referral_reading({"resourceType": "ServiceRequest", "contained": {"not": "a list"}}) == "unknown"
    assert observation_reading(PRACTITIONER_ROLE) is None


def test_fhir_observations_are_read_by_their_code() -> None:
    local = "urn:mscc:code:referral-information"
    sensory = observation({"text": "Sensory level"}, valueString="T10")
    motor = observation({"coding": [{"system": local, "code": "motor-power"}]}, valueInteger=5)
    sphincter = observation({"coding": [{"system": local, "code": "sphincter-function"}]}, valueString="Normal")
    neuro_absent = observation({"coding": [{"system": local, "code": "neurological-status"}]}, valueBoolean=False)
    unstated = observation({"coding": [{"system": local, "code": "sphincter-function"}]})
    mobility = observation({"text": "Mobility"}, valueString="unsteady on feet, walking with frame")
    performance = observation({"text": "WHO performance status"}, valueString="Yes")

    def status(*items: dict[str, Any]) -> str:
        return referral_reading({"resourceType": "ServiceRequest", "contained": [PRACTITIONER_ROLE, *items]})

    assert status(motor, sensory, sphincter) == "present"  # T10 is a sign, though it names none
    assert status(motor, sphincter, neuro_absent) == "absent"
    assert status(motor, sphincter, unstated) == "unknown"  # not stated is not normal
    assert status(motor, sphincter, mobility) == "present"  # a sign in another item still counts
    assert status(motor, sphincter, performance) == "absent"  # a bare "Yes" elsewhere is no sign


# --- whole referrals: HL7v2 -------------------------------------------------------------------------------


def ref_i12(trust: str, control: str, nhs: str, local: str, *obx: str) -> bytes:
    """A REF^I12 as a trust's ICE sends it: RF1, PRD (referring consultant), PID, OBX, PV1."""
    lines = [
        f"MSH|^~\\&|ICE|{trust}|MSCC-HUB|REN|20260115100000||REF^I12^REF_I12|{control}|P|2.5",
        "RF1|P^Pending^HL70283|S^STAT^HL70280|MSCC^Metastatic spinal cord compression^L||R^Referral"
        "|500001^ICE|20260115095500|||MSCC^Suspected MSCC^L",
        f"PRD|RP|OKAFOR^NGOZI^^^DR||^^^{trust}^^^^^Acute Oncology|^WPN^PH^^^^^^^^^0151 604 7000",
        f"PID|1||{nhs}^^^NHS^NH~{local}^^^PAS^MR||JONES^MARY^ANN||19700304|F",
        *(f"OBX|{n}|{spec}||||||F" for n, spec in enumerate(obx, start=1)),
        f"PV1|1|E|AE^^^{trust}||||C1234567^SMITH^JANE^^^DR|||||||||||VIS{control}^^^{trust}^VN",
    ]
    return ("\r".join(lines) + "\r").encode()


async def send_and_map(http: httpx.AsyncClient, store: Store, *messages: bytes) -> None:
    for message in messages:
        ack = await http.post("/hl7v2", content=message, headers=HL7)
        assert b"MSA|AA|" in ack.content, ack.content
    await MapperService(store).run(asyncio.Event(), burst=True)
    failed = [d["_id"] async for d in store.messages.find({"status": {"$nin": ["mapped"]}})]
    assert failed == [], "every referral is mapped"


async def plan_of(store: Store, trust: str) -> Document:
    """The pathway CarePlan of the one referral requested by ``trust`` (found by search, not by id)."""
    async for request in store.resources.find({"type": "ServiceRequest"}):
        if trust in json.dumps(request["resource"].get("contained", [])):
            key = f"ServiceRequest/{request['id']}"
            plan = await store.resources.find_one(
                {"type": "CarePlan", "resource.supportingInfo.reference": key, "resource.title": "MSCC pathway"}
            )
            assert plan is not None, key
            return plan
    raise AssertionError(f"no referral from {trust}")


def mri_window(plan: Document) -> timedelta:
    period = plan["resource"]["activity"][0]["detail"]["scheduledPeriod"]
    return datetime.fromisoformat(period["end"]) - datetime.fromisoformat(period["start"])


async def test_hl7_free_text_with_a_sign_after_a_negative_gets_24_hours(http: httpx.AsyncClient, store: Store) -> None:
    # the phrase that gave 7 days: "no ... weakness" was read first and won
    phrase = "No new weakness but numbness and tingling in both legs, unsteady gait"
    await send_and_map(
        http,
        store,
        ref_i12("RBL", "RBL00017", "9449305552", "X100234", f"TX|MSCC-NEURO^Neurological status^L||{phrase}"),
        ref_i12("RJR", "RJR00042", "9434765919", "X100234", "TX|MSCC-NEURO^Neuro status^L||Neurologically intact"),
    )
    rbl, rjr = await plan_of(store, "RBL"), await plan_of(store, "RJR")
    assert mri_window(rbl) == timedelta(hours=24)
    assert rbl["resource"]["description"].startswith("Neurological signs present")
    assert mri_window(rjr) == timedelta(days=7)  # an explicit all-clear still gets the week
    validate(rbl["resource"])


async def test_hl7_structured_items_with_a_sensory_level_get_24_hours(http: httpx.AsyncClient, store: Store) -> None:
    # motor Normal, sensory level T10, sphincter Normal gave 7 days: "T10" holds no sign word
    await send_and_map(
        http,
        store,
        ref_i12(
            "REM",
            "REM-77812",
            "4010232137",
            "500001",
            "CWE|MSCC-MOTOR^Motor power^L||N^Normal^L",
            "ST|^Sensory level||T10",
            "ST|^Sphincter function||Normal",
        ),
        ref_i12(
            "RBL",
            "RBL00018",
            "9449306605",
            "500001",
            "CWE|MSCC-MOTOR^Motor power^L||N^Normal^L",
            "ST|^Sensory level||not assessed",
            "ST|^Sphincter function||Normal",
        ),
    )
    rem, rbl = await plan_of(store, "REM"), await plan_of(store, "RBL")
    assert mri_window(rem) == timedelta(hours=24)
    assert "present" in rem["resource"]["description"]
    assert mri_window(rbl) == timedelta(hours=24)  # one item not assessed: the safe window, said so
    assert "unknown or unclear: the safe 24 hour window" in rbl["resource"]["description"]


async def test_sla_scanner_reads_referrals_that_carry_a_prd(http: httpx.AsyncClient, store: Store) -> None:
    # a REF^I12 with a PRD has a contained PractitionerRole: the scanner's read of it raised
    await send_and_map(
        http, store, ref_i12("RBL", "RBL00019", "9449305552", "X100234", "ST|^Neurological status||weak legs")
    )
    written = await scan_sla(store, FIRST_CONTACT + timedelta(hours=24))
    assert {e["sla_event"] for e in written} >= {"at-risk", "breached"}
    assert {e["neurological"] for e in written} == {"present"}  # read, not defaulted after an error


# --- whole referrals: FHIR --------------------------------------------------------------------------------


def fhir_referral(value: str, *observations: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "https://rjr.example.nhs.uk/Id/referral", "value": value}],
        "status": "active",
        "intent": "order",
        "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}},
        "authoredOn": "2026-01-15T09:55:00+00:00",
        "requester": {"reference": "#requester"},
        "contained": [PRACTITIONER_ROLE, *observations],
        "supportingInfo": [{"reference": f"#{o['id']}"} for o in observations],
    }


async def test_fhir_referral_with_contained_practitioner_role_maps_and_is_read(
    http: httpx.AsyncClient, store: Store
) -> None:
    # the usual UK pattern failed mapping: the PractitionerRole's code is a list
    local = "urn:mscc:code:referral-information"
    neuro = {**observation({"coding": [{"system": local, "code": "neurological-status"}]}), "id": "neuro"}
    sensory = {**observation({"text": "Sensory level"}), "id": "sensory"}
    bodies = [
        fhir_referral("R-3001", {**neuro, "valueString": "no new weakness, pt c/o numbness L foot"}),
        fhir_referral("R-3002", {**neuro, "valueString": "No neurological deficit"}, {**sensory, "valueString": "T10"}),
        fhir_referral("R-3003", {**neuro, "valueString": "neuro intact, sphincters normal"}),
    ]
    ids = []
    for body in bodies:
        created = await http.post("/fhir/ServiceRequest", json=body, headers=FHIR)
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
    await MapperService(store).run(asyncio.Event(), burst=True)
    statuses = [d["status"] async for d in store.messages.find({"protocol": "fhir"})]
    assert statuses == ["mapped"] * 3
    windows = []
    for rid in ids:
        plan = await store.resources.find_one(
            {"type": "CarePlan", "resource.supportingInfo.reference": f"ServiceRequest/{rid}"}
        )
        assert plan is not None
        windows.append(mri_window(plan))
    assert windows == [timedelta(hours=24), timedelta(hours=24), timedelta(days=7)]
