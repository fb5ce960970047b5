"""What decides treatment: AL1 -> AllergyIntolerance, PR1 -> Procedure, DG1 -> Condition, local priority
codes, GMC numbers; mapped, linked from the referral, stored and readable through the FHIR API.

Messages look like the traffic the MSCC service gets: several trusts (RBL, RJR, REM) whose local
numbers collide, PRD and PV1 in every referral, free text as clinicians write it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from services.intake.service import IntakeService
from services.mapper.hl7 import MappingConfig, map_hl7v2
from services.mapper.model import MappingResult
from services.mapper.service import MapperService
from shared.fhir import validate
from shared.mllp import MllpClient

Resource = dict[str, Any]
NHS = "9449305552"  # valid modulus 11
OTHER_NHS = "9434765919"
GMC_SYSTEM = "https://fhir.hl7.org.uk/Id/gmc-number"
RADIOTHERAPY = "urn:mscc:code:procedure-category|radiotherapy"


def msh(facility: str = "RBL", control: str = "RBL-0001", event: str = "I12", when: str = "20261125083000") -> str:
    return f"MSH|^~\\&|ICE|{facility}|MSCC-HUB|REN|{when}||REF^{event}^REF_{event}|{control}|P|2.5"


def referral(
    *,
    facility: str = "RBL",
    control: str = "RBL-0001",
    event: str = "I12",
    priority: str = "U^Urgent^L",
    nhs: str = NHS,
    local: str = "X100234",
    working: str = "W",
    final: str = "F",
    extra: tuple[str, ...] = (),
) -> str:
    lines = [
        msh(facility, control, event),
        f"RF1|P^Pending^HL70283|{priority}|ONC^Oncology^L||R^Referral|500001^ICE|20261125082500|||"
        "ADM^Admin - referral to MSCC service^L",
        f"PRD|RP|Okafor^Chidi^^^Dr||^^^{facility}^^^^^Acute Oncology|^WPN^PH^^^^^^^^^0151 678 5111||C1234567^GMC",
        f"PID|1||{nhs}^^^NHS^NH~{local}^^^PAS^MR||HUGHES^Margaret^^^Mrs||19700314|F",
        f"PV1|1|I|WARD 12^BAY 3^BED 4^{facility}||||C7654321^Patel^Raj^^^Dr^^^GMC||||||||||||VIS2201^^^{facility}^VN",
        f"DG1|1||C61^Malignant neoplasm of prostate^I10|Metastatic prostate ca - known bone mets T-spine|20240611|"
        f"{final}",
        f"DG1|2||^^|?MSCC T10 - back pain, numb legs since yest||{working}",
        "AL1|1|DA|PEN^Penicillin^L|SV|Anaphylaxis~urticaria|20150302",
        "PR1|1||RTSPINE^Palliative radiotherapy spine^L|Palliative RT T8-T12 20Gy/5# Jan 25|20250120",
        "NTE|1||Treated at Clatterbridge 20 Gy in 5 fractions T8-T12. ?further RT - discuss w/ clin onc",
        *extra,
    ]
    return "\r".join(lines) + "\r"


def by_type(result: MappingResult, resource_type: str) -> list[Resource]:
    return [r for r in result.resources if r["resourceType"] == resource_type]


def the(result: MappingResult, resource_type: str) -> Resource:
    [found] = by_type(result, resource_type)
    return found


def the_referral(result: MappingResult) -> Resource:
    return the(result, "ServiceRequest")


def codes(concept: Resource) -> list[str]:
    return [c["code"] for c in concept.get("coding", [])]


# --- the whole referral ---------------------------------------------------------------------------


def test_referral_maps_diagnoses_allergy_and_prior_radiotherapy_linked_from_the_referral() -> None:
    result = map_hl7v2(referral())
    request = the_referral(result)
    conditions = by_type(result, "Condition")
    [allergy] = by_type(result, "AllergyIntolerance")
    [procedure] = by_type(result, "Procedure")
    assert len(conditions) == 2
    for resource in result.resources:
        validate(resource)
    # diagnoses are the referral's reasons, by reference; allergies and procedures support it
    assert [r["reference"] for r in request["reasonReference"]] == [f"Condition/{c['id']}" for c in conditions]
    supporting = {r["reference"] for r in request["supportingInfo"]}
    assert {f"AllergyIntolerance/{allergy['id']}", f"Procedure/{procedure['id']}"} <= supporting
    assert all(r["subject"] == request["subject"] for r in [*conditions, procedure])
    assert allergy["patient"] == request["subject"]
    # nothing of AL1, PR1 or DG1 is left unmapped (set ids aside)
    assert not [u for u in result.unmapped if u.startswith(("AL1", "PR1", "DG1"))], result.unmapped


def test_diagnoses_come_before_the_administrative_reason() -> None:
    request = the_referral(map_hl7v2(referral()))
    texts = [c.get("text") or c["coding"][0].get("display") for c in request["reasonCode"]]
    assert texts == [
        "Metastatic prostate ca - known bone mets T-spine",
        "?MSCC T10 - back pain, numb legs since yest",
        "Admin - referral to MSCC service",
    ]


# --- DG1 -> Condition ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status"),
    [("W", "provisional"), ("F", "confirmed"), ("A", "provisional"), ("", None)],
)
def test_diagnosis_type_gives_the_verification_status(kind: str, status: str | None) -> None:
    result = map_hl7v2(referral(working=kind))
    working = next(c for c in by_type(result, "Condition") if c["code"]["text"].startswith("?MSCC"))
    found = working.get("verificationStatus")
    assert (found["coding"][0]["code"] if found else None) == status


def test_unknown_diagnosis_type_is_a_warning_not_a_guess() -> None:
    result = map_hl7v2(referral(working="P"))
    working = next(c for c in by_type(result, "Condition") if c["code"]["text"].startswith("?MSCC"))
    assert "verificationStatus" not in working
    assert any("DG1-6" in i["diagnostics"] for i in result.issues)


def test_diagnosis_description_is_kept_beside_its_code() -> None:
    result = map_hl7v2(referral())
    coded = next(c for c in by_type(result, "Condition") if codes(c["code"]))
    assert codes(coded["code"]) == ["C61"] and coded["code"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/icd-10"
    assert coded["code"]["text"] == "Metastatic prostate ca - known bone mets T-spine"
    assert coded["onsetDateTime"] == "2024-06-11"
    assert coded["category"][0]["coding"][0]["code"] == "encounter-diagnosis"


def test_a_different_original_text_becomes_a_note() -> None:
    dg1 = "DG1|1||C79.5^Secondary malignant neoplasm of bone^I10^^^^^^Bone mets|Spinal mets L2, L4||F"
    text = referral().replace(next(s for s in referral().split("\r") if s.startswith("DG1|1")), dg1)
    [coded] = [c for c in by_type(map_hl7v2(text), "Condition") if codes(c["code"])]
    assert coded["code"]["text"] == "Spinal mets L2, L4"
    assert coded["note"] == [{"text": "Coded text as sent: Bone mets"}]


def test_sender_diagnosis_identifier_gives_the_id_and_stays_with_the_trust() -> None:
    # DG1-20 (v2.5 diagnosis identifier): the same number from two trusts is two diagnoses
    dg1 = "DG1|3||C50.9^Breast cancer^I10|Breast ca||F" + "|" * 14 + "D-77^EPR"
    rbl = the_only_coded(map_hl7v2(referral(extra=(dg1,))), "C50.9")
    rjr = the_only_coded(map_hl7v2(referral(facility="RJR", control="RJR-1", nhs=OTHER_NHS, extra=(dg1,))), "C50.9")
    assert rbl["identifier"][0]["value"] == "D-77"
    assert rbl["id"] != rjr["id"]


def the_only_coded(result: MappingResult, code: str) -> Resource:
    [found] = [c for c in by_type(result, "Condition") if code in codes(c["code"])]
    return found


# --- AL1 -> AllergyIntolerance ----------------------------------------------------------------------


def test_penicillin_anaphylaxis_is_a_high_criticality_drug_allergy() -> None:
    allergy = the(map_hl7v2(referral()), "AllergyIntolerance")
    assert allergy["code"]["coding"][0]["display"] == "Penicillin"
    assert allergy["category"] == ["medication"] and allergy["type"] == "allergy"
    assert allergy["criticality"] == "high"
    assert allergy["reaction"] == [
        {"manifestation": [{"text": "Anaphylaxis"}, {"text": "urticaria"}], "severity": "severe"}
    ]
    assert allergy["clinicalStatus"]["coding"][0]["code"] == "active"
    assert allergy["verificationStatus"]["coding"][0]["code"] == "unconfirmed"
    assert allergy["onsetDateTime"] == "2015-03-02"


@pytest.mark.parametrize(
    ("al1", "criticality"),
    [
        ("AL1|1|DA|^co-amoxiclav|MI|anaphylactic reaction 2019", "high"),  # the reaction outranks the code
        ("AL1|1|DA|^Co-amoxiclav|MO|rash", "low"),
        ("AL1|1|FA|^Peanuts|U", "unable-to-assess"),
        ("AL1|1|DA|^Morphine||nausea", None),
    ],
)
def test_criticality_from_severity_and_reaction(al1: str, criticality: str | None) -> None:
    text = referral().replace("AL1|1|DA|PEN^Penicillin^L|SV|Anaphylaxis~urticaria|20150302", al1)
    allergy = the(map_hl7v2(text), "AllergyIntolerance")
    validate(allergy)
    assert allergy.get("criticality") == criticality


def test_allergy_without_a_reaction_has_no_reaction_element() -> None:
    # R4 requires a manifestation on every reaction: the severity then lives in criticality only
    text = referral().replace("AL1|1|DA|PEN^Penicillin^L|SV|Anaphylaxis~urticaria|20150302", "AL1|1|DA|^Latex|SV")
    allergy = the(map_hl7v2(text), "AllergyIntolerance")
    assert "reaction" not in allergy and allergy["criticality"] == "high"
    validate(allergy)


@pytest.mark.parametrize("allergen", ["^NKDA", "^No known allergies", "NKA^No known allergies^L"])
def test_no_known_allergies_records_no_allergy(allergen: str) -> None:
    text = referral().replace("PEN^Penicillin^L|SV|Anaphylaxis~urticaria|20150302", f"{allergen}")
    result = map_hl7v2(text)
    assert not by_type(result, "AllergyIntolerance")
    assert any("no known allergies" in i["diagnostics"] for i in result.issues)


def test_same_allergen_of_two_patients_at_two_trusts_are_two_allergies() -> None:
    rbl = the(map_hl7v2(referral()), "AllergyIntolerance")
    rem = the(map_hl7v2(referral(facility="REM", control="REM-9", nhs=OTHER_NHS)), "AllergyIntolerance")
    assert rbl["id"] != rem["id"] and rbl["patient"] != rem["patient"]


# --- PR1 -> Procedure -----------------------------------------------------------------------------


def test_prior_spinal_radiotherapy_keeps_dose_and_site_as_written() -> None:
    procedure = the(map_hl7v2(referral()), "Procedure")
    assert procedure["status"] == "completed"
    assert procedure["performedDateTime"] == "2025-01-20"
    assert procedure["code"]["text"] == "Palliative RT T8-T12 20Gy/5# Jan 25"
    assert procedure["note"] == [
        {"text": "Treated at Clatterbridge 20 Gy in 5 fractions T8-T12. ?further RT - discuss w/ clin onc"}
    ]
    system, code = RADIOTHERAPY.split("|")
    assert procedure["category"]["coding"] == [{"system": system, "code": code, "display": "Radiotherapy"}]
    assert "snomed" not in str(procedure).lower()  # a local code, never an invented SNOMED one


@pytest.mark.parametrize(
    ("pr1", "radiotherapy"),
    [
        ("PR1|1||^SABR L1 30Gy/3#|20240901", True),
        ("PR1|1||^DXT to lumbar spine|2023", True),
        ("PR1|1||^Single fraction 8 Gy T10|20250301", True),
        ("PR1|1||^Rt hip replacement|20190505", False),  # "Rt" is right, not radiotherapy
        ("PR1|1||^Vertebroplasty T12 #|20240101", False),  # "#" is a fracture here
        ("PR1|1||W8712^Laminectomy^OPCS4|20220202", False),
    ],
)
def test_radiotherapy_is_recognised_from_the_text(pr1: str, radiotherapy: bool) -> None:
    line = "PR1|1||RTSPINE^Palliative radiotherapy spine^L|Palliative RT T8-T12 20Gy/5# Jan 25|20250120"
    text = referral().replace(line, pr1).replace("NTE|1||Treated at Clatterbridge", "NTE|1||Seen at Clatterbridge")
    text = text.replace("20 Gy in 5 fractions T8-T12. ?further RT - discuss", "clinic review - discuss")
    procedure = the(map_hl7v2(text), "Procedure")
    validate(procedure)
    assert ("category" in procedure) is radiotherapy


def test_procedure_surgeon_with_a_gmc_number() -> None:
    pr1 = "PR1|1||W8712^Laminectomy^OPCS4||20220202||||||C2222222^Khan^Omar^^^Mr^^^GMC"
    text = referral().replace(next(s for s in referral().split("\r") if s.startswith("PR1")), pr1)
    [performer] = the(map_hl7v2(text), "Procedure")["performer"]
    assert performer["actor"]["identifier"] == {"system": GMC_SYSTEM, "value": "C2222222"}
    assert performer["function"] == {"text": "Surgeon"}


# --- priority ---------------------------------------------------------------------------------------


def test_local_urgent_priority_is_urgent_for_every_sender() -> None:
    for facility in ("RBL", "RJR", "REM"):
        result = map_hl7v2(referral(facility=facility, control=f"{facility}-1"))
        assert the_referral(result)["priority"] == "urgent"
        assert not any("RF1-2" in i["diagnostics"] for i in result.issues)


def test_sender_priority_codes_override() -> None:
    config = MappingConfig.from_dict({"senders": {"RJR": {"priority_codes": {"1": "stat", "2": "urgent"}}}})
    rjr = map_hl7v2(referral(facility="RJR", control="RJR-1", priority="1^Cat 1^L"), config)
    assert the_referral(rjr)["priority"] == "stat"
    # the code is RJR's: another trust sending "1" is not understood
    rbl = map_hl7v2(referral(priority="1^Cat 1^L"), config)
    assert any("RF1-2" in i["diagnostics"] for i in rbl.issues)


def test_unknown_priority_is_never_dropped() -> None:
    # an unknown code reads as urgent (an MSCC referral is an emergency), warned and kept as sent
    result = map_hl7v2(referral(priority="P1^Within 4 hours^LOCAL"))
    request = the_referral(result)
    assert request["priority"] == "urgent"
    warning = next(i for i in result.issues if "RF1-2" in i["diagnostics"])
    assert warning["severity"] == "warning" and "'P1'" in warning["diagnostics"]
    assert any("P1" in n["text"] and "Within 4 hours" in n["text"] for n in request["note"])


def test_priority_word_in_the_text_is_understood() -> None:
    assert the_referral(map_hl7v2(referral(priority="^URGENT")))["priority"] == "urgent"


def test_priority_codes_must_be_fhir_request_priorities() -> None:
    with pytest.raises(ValueError, match=r"very-urgent.*is not one of"):
        MappingConfig.from_dict({"senders": {"RBL": {"priority_codes": {"U": "very-urgent"}}}})


# --- GMC numbers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("prd7", ["C1234567^GMC", "C1234567^^^GMC", "C1234567^gmc"])
def test_prd7_gmc_number_gets_the_national_system(prd7: str) -> None:
    text = referral().replace("||C1234567^GMC", f"||{prd7}")
    request = the_referral(map_hl7v2(text))
    requester = next(c for c in request["contained"] if c["id"] == "requester")
    assert requester["practitioner"]["identifier"] == {"system": GMC_SYSTEM, "value": "C1234567"}


def test_xcn_gmc_number_by_authority_or_type() -> None:
    encounter = next(e for e in by_type(map_hl7v2(referral()), "Encounter") if e.get("participant"))
    assert encounter["participant"][0]["individual"]["identifier"] == {"system": GMC_SYSTEM, "value": "C7654321"}
    by_kind = referral().replace("C7654321^Patel^Raj^^^Dr^^^GMC", "C7654321^Patel^Raj^^^Dr^^^^^^^GMC")
    encounter = next(e for e in by_type(map_hl7v2(by_kind), "Encounter") if e.get("participant"))
    assert encounter["participant"][0]["individual"]["identifier"]["system"] == GMC_SYSTEM


def test_a_local_staff_number_stays_local() -> None:
    text = referral().replace("||C1234567^GMC", "||D44^PRN")
    requester = next(c for c in the_referral(map_hl7v2(text))["contained"] if c["id"] == "requester")
    assert requester["practitioner"]["identifier"]["system"] != GMC_SYSTEM


# --- convergence ------------------------------------------------------------------------------------


def clinical_ids(result: MappingResult) -> set[str]:
    kinds = ("Condition", "AllergyIntolerance", "Procedure")
    return {f"{r['resourceType']}/{r['id']}" for r in result.resources if r["resourceType"] in kinds}


def test_resend_and_update_converge_on_the_same_resources() -> None:
    first = map_hl7v2(referral())
    resent = map_hl7v2(referral(control="RBL-0002"))
    # REF^I13: the working diagnosis is now final; same Condition, confirmed
    update = map_hl7v2(referral(control="RBL-0003", event="I13", working="F"))
    assert clinical_ids(first) == clinical_ids(resent) == clinical_ids(update)
    working = next(c for c in by_type(update, "Condition") if c["code"]["text"].startswith("?MSCC"))
    assert working["verificationStatus"]["coding"][0]["code"] == "confirmed"


def test_the_same_allergen_twice_in_one_message_is_one_allergy() -> None:
    result = map_hl7v2(referral(extra=("AL1|2|DA|PEN^Penicillin^L|SV|Anaphylaxis",)))
    assert len(by_type(result, "AllergyIntolerance")) == 1
    [reference] = [r for r in the_referral(result)["supportingInfo"] if r["reference"].startswith("Allergy")]
    assert reference["display"] == "Allergy: Penicillin"


def test_adt_maps_allergies_and_diagnoses_too() -> None:
    text = "\r".join(
        [
            "MSH|^~\\&|PAS|RJR|MSCC-HUB|REN|20261125090000||ADT^A01|RJR-A1|P|2.4",
            "EVN|A01|20261125090000",
            f"PID|1||{NHS}^^^NHS^NH~X100234^^^PAS^MR||HUGHES^Margaret||19700314|F",
            "PV1|1|I|WARD 3^^^RJR||||||||||||||||V555^^^RJR^VN",
            "DG1|1||C61^Prostate ca^I10|Prostate ca with spinal mets||F",
            "AL1|1|DA|^Penicillin|SV|Anaphylaxis",
        ]
    )
    result = map_hl7v2(text + "\r")
    assert {r["resourceType"] for r in result.resources} >= {"Condition", "AllergyIntolerance"}
    for resource in result.resources:
        validate(resource)


# --- end to end: worker, store, read API ---------------------------------------------------------------


async def send(intake: IntakeService, *messages: str) -> None:
    client = await MllpClient.connect("127.0.0.1", intake.mllp.port, timeout_s=30)
    try:
        for message in messages:
            reply = await client.send(message.encode())
            assert b"MSA|AA|" in reply, reply
    finally:
        await client.close()


async def drain(intake: IntakeService) -> None:
    await MapperService(intake.store).run(asyncio.Event(), burst=True)


async def search(http: httpx.AsyncClient, resource_type: str, **params: str) -> list[Resource]:
    response = await http.get(f"/fhir/{resource_type}", params=params)
    assert response.status_code == 200, response.text
    bundle = response.json()
    return [e["resource"] for e in bundle.get("entry", [])]


async def test_clinical_content_is_stored_and_searchable_by_patient(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    await send(intake, referral())
    await drain(intake)
    [patient] = await search(http, "Patient", identifier=f"https://fhir.nhs.uk/Id/nhs-number|{NHS}")
    subject = f"Patient/{patient['id']}"
    conditions = await search(http, "Condition", patient=subject)
    [allergy] = await search(http, "AllergyIntolerance", patient=subject)
    [procedure] = await search(http, "Procedure", patient=subject, category=RADIOTHERAPY)
    assert len(conditions) == 2 and allergy["criticality"] == "high"
    assert await search(http, "AllergyIntolerance", patient=subject, criticality="high", category="medication")
    assert not await search(http, "AllergyIntolerance", patient=subject, category="food")
    [confirmed] = await search(http, "Condition", patient=subject, **{"verification-status": "confirmed"})
    assert "C61" in codes(confirmed["code"])
    # the referral's references resolve through the read API
    [request] = await search(http, "ServiceRequest", patient=subject)
    for reference in [*request["reasonReference"], *request["supportingInfo"]]:
        if reference["reference"].startswith("#"):
            continue
        read = await http.get(f"/fhir/{reference['reference']}")
        assert read.status_code == 200, reference
    assert request["priority"] == "urgent"
    assert procedure["note"][0]["text"].startswith("Treated at Clatterbridge 20 Gy")

    # a resend and an update converge: no duplicates, the working diagnosis becomes confirmed
    await send(intake, referral(control="RBL-0002"), referral(control="RBL-0003", event="I13", working="F"))
    await drain(intake)
    conditions = await search(http, "Condition", patient=subject)
    assert len(conditions) == 2
    assert {c["verificationStatus"]["coding"][0]["code"] for c in conditions} == {"confirmed"}
    assert len(await search(http, "AllergyIntolerance", patient=subject)) == 1
    assert len(await search(http, "Procedure", patient=subject)) == 1
    async for doc in intake.store.resources.find({}):
        validate(doc["resource"])


async def test_fhir_bundle_carries_conditions_allergies_and_procedures(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    patient_url = "urn:uuid:0d6c3a8e-0000-4000-8000-000000000001"
    subject = {"reference": patient_url}
    entries = [
        {"resourceType": "Patient", "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS}]},
        {"resourceType": "Condition", "subject": subject, "code": {"text": "Lung ca, spinal mets"}},
        {"resourceType": "AllergyIntolerance", "patient": subject, "code": {"text": "Penicillin"}},
        {"resourceType": "Procedure", "status": "completed", "subject": subject, "code": {"text": "RT 8Gy/1# T10"}},
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                **({"fullUrl": patient_url} if r["resourceType"] == "Patient" else {}),
                "resource": r,
                "request": {"method": "POST", "url": r["resourceType"]},
            }
            for r in entries
        ],
    }
    receipt = await http.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"})
    assert receipt.status_code in (200, 202), receipt.text
    await drain(intake)
    [patient] = await search(http, "Patient", identifier=f"https://fhir.nhs.uk/Id/nhs-number|{NHS}")
    for resource_type in ("Condition", "AllergyIntolerance", "Procedure"):
        assert len(await search(http, resource_type, patient=f"Patient/{patient['id']}")) == 1, resource_type


async def test_capability_statement_lists_the_clinical_types(http: httpx.AsyncClient) -> None:
    statement = (await http.get("/fhir/metadata")).json()
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    for resource_type in ("Condition", "AllergyIntolerance", "Procedure"):
        params = {p["name"] for p in resources[resource_type]["searchParam"]}
        assert "patient" in params and "category" in params
