"""FHIR referrals join the same world as HL7v2 ones, and NHS numbers are checked on every route.

Against a real mongod, through the HTTP app and the MLLP listener, mapped by the real worker:
- a UK-style FHIR referral (contained PractitionerRole requester, contained Organization performer,
  subject by NHS number) is mapped and gets its assessment Encounter and pathway CarePlan;
- the subject's NHS number resolves to the Patient every route gives that number (created when absent,
  never overwritten), so ``?patient=`` finds HL7v2 and FHIR referrals of one patient together;
- an NHS number failing the modulus 11 check is never filed under the NHS number system (FHIR create,
  Bundles, contained Patients, HL7v2) and the sender is told (OperationOutcome, ERR severity W);
- FHIR business identifiers are scoped by the caller's organisation.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from helpers import app_client

from services.intake.fhir_intake import business_id, legacy_id
from services.intake.service import IntakeService
from services.mapper.hl7.segments import patients
from services.mapper.service import MapperService
from services.pathway.sla import scan_sla
from shared.fhir import validate
from shared.mllp import MllpClient
from shared.nhs import INVALID_NHS_NUMBER_SYSTEM, NHS_NUMBER_SYSTEM, nhs_patient_id
from shared.settings import Settings
from shared.store import Store

FHIR_JSON = {"Content-Type": "application/fhir+json"}
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
NHS = "9449305552"  # valid (modulus 11)
BAD_NHS = "9449305553"  # the same number with the wrong check digit
REFERRAL_SYSTEM = "https://fhir.wirral.nhs.uk/Id/mscc-referral"


def referred_by(body: dict[str, Any], trust: str) -> dict[str, Any]:
    """``body`` with ``trust`` as its referring organisation (a trust creates referrals in its own name)."""
    out = copy.deepcopy(body)
    for item in out["contained"]:
        if item["resourceType"] == "Organization" and item["id"] == "rbl":
            item["identifier"][0]["value"] = trust
        elif item["resourceType"] == "PractitionerRole":
            item["organization"]["identifier"]["value"] = trust
    return out


def fhir_referral(number: str = "WUTH-MSCC-000417", nhs: str = NHS, **extra: Any) -> dict[str, Any]:
    """A referral as a UK trust's EPR posts it: requester a contained PractitionerRole (whose ``code`` is
    a list), the referring trust and the MSCC centre as contained Organizations."""
    body: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": REFERRAL_SYSTEM, "value": number}],
        "status": "active",
        "intent": "order",
        "priority": "urgent",
        "category": [{"text": "Metastatic spinal cord compression"}],
        "code": {"text": "Referral to MSCC coordinator"},
        "subject": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": nhs}},
        "authoredOn": "2026-11-25T02:14:00+00:00",
        "contained": [
            {
                "resourceType": "Organization",
                "id": "rbl",
                "identifier": [{"system": ODS, "value": "RBL"}],
                "name": "Wirral University Teaching Hospital",
            },
            {
                "resourceType": "Organization",
                "id": "ren",
                "identifier": [{"system": ODS, "value": "REN"}],
                "name": "Clatterbridge Cancer Centre",
            },
            {
                "resourceType": "PractitionerRole",
                "id": "aos",
                "organization": {"reference": "#rbl", "identifier": {"system": ODS, "value": "RBL"}},
                "code": [{"text": "Acute oncology nurse specialist"}],
                "telecom": [{"system": "phone", "value": "0151 678 5111 ext 2456"}],
            },
        ],
        "requester": {"reference": "#aos"},
        "performer": [{"reference": "#ren"}],
        "reasonCode": [{"text": "breast ca w/ known bony mets, new thoracic back pain, legs feel heavy since last nt"}],
    }
    body.update(extra)
    return body


def ref_i12(control_id: str, *, nhs: str = NHS, local: str = "RBL4471203", priority: str = "S^STAT") -> bytes:
    lines = [
        f"MSH|^~\\&|ICE|RBL|MSCC-HUB|REN|20261125081500||REF^I12^REF_I12|{control_id}|P|2.5",
        f"RF1|A^Accepted|{priority}|MSCC^Metastatic spinal cord compression||R^Referral|500001^ICE|20261125081500|||"
        "?MSCC - ca prostate, back pain + bilat leg weakness",
        "PRD|RP|OKAFOR^CHIDI^^^DR|Arrowe Park Hospital^^Wirral^^CH49 5PE|^^^RBL|0151 678 5111|||||RBL",
        f"PID|1||{nhs}^^^NHS^NH~{local}^^^RBL^MR||HUGHES^BRENDA^M||19520611|F|||12 Park Rd^^Wirral^^CH43 1AA",
        "PV1|1|I|WARD 23^BED 4^^RBL||||C4412^PATEL^ANIL|||||||||||V20261125-88",
        "OBX|1|ST|NEURO^Neurological status||Reduced power both legs, sensory level T10||||||F",
    ]
    return ("\r".join(lines) + "\r").encode()


async def post_sr(http: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> httpx.Response:
    return await http.post("/fhir/ServiceRequest", content=json.dumps(body), headers={**FHIR_JSON, **headers})


async def post_bundle(http: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await http.post("/fhir", content=json.dumps(body), headers=FHIR_JSON)


async def send_hl7(intake: IntakeService, message: bytes) -> bytes:
    client = await MllpClient.connect("127.0.0.1", intake.mllp.port, timeout_s=30)
    try:
        reply: bytes = await client.send(message)
        return reply
    finally:
        await client.close()


async def drain(store: Store) -> None:
    await MapperService(store).run(asyncio.Event(), burst=True)


async def search(http: httpx.AsyncClient, rtype: str, **params: str) -> list[dict[str, Any]]:
    bundle = (await http.get(f"/fhir/{rtype}", params=params)).json()
    assert bundle["resourceType"] == "Bundle", bundle
    return [entry["resource"] for entry in bundle.get("entry", [])]


async def all_mapped(store: Store) -> None:
    async for doc in store.messages.find({"status": {"$ne": "rejected"}}):
        assert doc["status"] == "mapped", doc.get("processing")
    async for doc in store.resources.find({}):
        validate(doc["resource"])


async def nhs_filed(store: Store, value: str) -> int:
    """How many stored resources hold ``value`` under the NHS number system anywhere (current or history)."""
    needle = json.dumps({"system": NHS_NUMBER_SYSTEM, "value": value})[1:-1]
    count = 0
    for collection in (store.resources, store.history):
        async for doc in collection.find({}):
            count += needle in json.dumps(doc["resource"])
    return count


# --- contained requesters and performers, subject by NHS number --------------------------------------


async def test_fhir_referral_with_contained_practitioner_role_is_mapped_with_its_pathway(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    created = await post_sr(http, fhir_referral())
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    await drain(intake.store)
    await all_mapped(intake.store)
    patient_ref = f"Patient/{nhs_patient_id(NHS)}"
    stored = (await http.get(f"/fhir/ServiceRequest/{rid}")).json()
    assert stored["subject"]["reference"] == patient_ref
    assert stored["requester"] == {"reference": "#aos"} and stored["performer"] == [{"reference": "#ren"}]
    [encounter] = await search(http, "Encounter", patient=patient_ref)
    assert encounter["basedOn"] == [{"reference": f"ServiceRequest/{rid}"}]
    [plan] = await search(http, "CarePlan", patient=patient_ref)
    assert plan["supportingInfo"] == [{"reference": f"ServiceRequest/{rid}"}]
    # The clock starts at authoredOn; "legs feel heavy" is not structured, so the safe 24-hour window.
    assert plan["period"]["start"].startswith("2026-11-25T02:14")
    assert "24 hours" in plan["description"]
    # The referring trust is found through the contained PractitionerRole, as for HL7v2 PRD.
    assert [r["id"] for r in await search(http, "ServiceRequest", requester="Organization/RBL")] == [rid]


async def test_fhir_referral_without_a_timed_authored_on_starts_its_clock_at_receipt(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    before = datetime.now(UTC)
    body = fhir_referral("WUTH-MSCC-000418", authoredOn="2026-11-25")
    assert (await post_sr(http, body)).status_code == 201
    await drain(intake.store)
    [plan] = await search(http, "CarePlan", patient=f"Patient/{nhs_patient_id(NHS)}")
    start = datetime.fromisoformat(plan["period"]["start"])
    assert abs((start - before).total_seconds()) < 60
    assert "scheduledPeriod" in plan["activity"][0]["detail"]  # whole-spine MRI, with its deadline


async def test_subject_by_nhs_number_creates_the_patient_hl7v2_would_and_never_overwrites_one(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    # The id is the one the HL7v2 mapping derives for this NHS number.
    expected = patients.patient_id([{"system": NHS_NUMBER_SYSTEM, "value": NHS}])
    assert expected == nhs_patient_id(NHS)
    assert (await post_sr(http, fhir_referral())).status_code == 201
    await drain(intake.store)
    patient = (await http.get(f"/fhir/Patient/{expected}")).json()
    assert patient["identifier"] == [{"system": NHS_NUMBER_SYSTEM, "value": NHS}]
    # An ADT with demographics fills the patient in; a later FHIR referral does not wipe them.
    ack = await send_hl7(intake, ref_i12("ICE000311"))
    assert b"MSA|AA|" in ack
    await drain(intake.store)
    filled = (await http.get(f"/fhir/Patient/{expected}")).json()
    assert filled["birthDate"] == "1952-06-11"
    assert (await post_sr(http, fhir_referral("WUTH-MSCC-000419"))).status_code == 201
    await drain(intake.store)
    again = (await http.get(f"/fhir/Patient/{expected}")).json()
    assert again["meta"]["versionId"] == filled["meta"]["versionId"] and again["birthDate"] == "1952-06-11"


async def test_hl7v2_and_fhir_referrals_of_one_nhs_number_share_one_patient(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    assert b"MSA|AA|" in await send_hl7(intake, ref_i12("ICE000312"))
    assert (await post_sr(http, fhir_referral())).status_code == 201
    await drain(intake.store)
    await all_mapped(intake.store)
    [patient] = await search(http, "Patient", identifier=f"{NHS_NUMBER_SYSTEM}|{NHS}")
    assert patient["id"] == nhs_patient_id(NHS)
    referrals = await search(http, "ServiceRequest", patient=f"Patient/{patient['id']}")
    assert len(referrals) == 2
    assert {r["subject"]["reference"] for r in referrals} == {f"Patient/{patient['id']}"}
    # Each referral has its own pathway, both on the one patient.
    assert len(await search(http, "CarePlan", patient=patient["id"])) == 2
    assert len(await search(http, "Encounter", patient=patient["id"])) >= 2


async def test_subject_as_a_reference_to_a_patient_in_the_same_bundle_still_links(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    referral = fhir_referral("WUTH-MSCC-000420")
    referral["subject"] = {"reference": patient_url}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_url,
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [
                        {"system": "https://fhir.wirral.nhs.uk/Id/hospital-number", "value": "RBL4471203"},
                        {"system": NHS_NUMBER_SYSTEM, "value": NHS},
                    ],
                    "name": [{"family": "Hughes", "given": ["Brenda"]}],
                    "gender": "female",
                    "birthDate": "1952-06-11",
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": referral,
                "request": {"method": "POST", "url": "ServiceRequest"},
            },
        ],
    }
    response = await post_bundle(http, bundle)
    assert response.status_code == 202, response.text
    # A Patient with a valid NHS number gets the id every route gives that number, whatever comes first.
    assert response.json()["entry"][0]["response"]["location"] == f"Patient/{nhs_patient_id(NHS)}"
    await drain(intake.store)
    await all_mapped(intake.store)
    [request] = await search(http, "ServiceRequest", patient=nhs_patient_id(NHS))
    assert request["subject"] == {"reference": f"Patient/{nhs_patient_id(NHS)}"}
    assert (await http.get(f"/fhir/Patient/{nhs_patient_id(NHS)}")).json()["name"][0]["family"] == "Hughes"


# --- NHS numbers failing the check ------------------------------------------------------------------------


async def test_fhir_create_with_an_invalid_nhs_number_keeps_it_local_and_warns(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    created = await post_sr(http, fhir_referral(nhs=BAD_NHS))
    assert created.status_code == 201, created.text  # an urgent referral is never refused for the number
    subject = created.json()["subject"]["identifier"]
    assert subject["system"] == INVALID_NHS_NUMBER_SYSTEM and subject["value"] == BAD_NHS
    # Asked for an OperationOutcome, the client gets the warning as the body, with what was created.
    again = await post_sr(http, fhir_referral(nhs=BAD_NHS), Prefer="return=OperationOutcome")
    assert again.status_code == 200, again.text
    outcome = again.json()
    assert outcome["resourceType"] == "OperationOutcome"
    [warning] = [i for i in outcome["issue"] if i["severity"] == "warning"]
    assert warning["expression"] == ["ServiceRequest.subject.identifier"]
    assert "modulus 11" in warning["diagnostics"] and BAD_NHS not in warning["diagnostics"]
    record = await intake.store.messages.find_one({"status": "ready"})
    assert record is not None and record["issues"][0]["expression"] == ["ServiceRequest.subject.identifier"]
    await drain(intake.store)
    await all_mapped(intake.store)
    assert await nhs_filed(intake.store, BAD_NHS) == 0
    # No patient is made up from a number that is not one.
    assert await search(http, "Patient") == []
    mapped = await intake.store.messages.find_one({"_id": record["_id"]})
    assert mapped is not None and any(i["severity"] == "warning" for i in mapped["processing"]["issues"])


async def test_prefer_operation_outcome_on_a_clean_create_says_what_was_created(http: httpx.AsyncClient) -> None:
    created = await post_sr(http, fhir_referral("WUTH-MSCC-000421"), Prefer="return=OperationOutcome")
    assert created.status_code == 201 and created.headers["Location"]
    [info] = created.json()["issue"]
    assert info["severity"] == "information" and "created" in info["diagnostics"]


async def test_bundles_with_invalid_nhs_numbers_warn_per_entry_and_never_file_them(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    contained = fhir_referral("WUTH-MSCC-000422", nhs=NHS)
    contained["contained"].append(
        {"resourceType": "Patient", "id": "pat", "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "944 930 555"}]}
    )
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [
                        {"system": NHS_NUMBER_SYSTEM, "value": BAD_NHS},
                        {"system": "https://fhir.cheshire.nhs.uk/Id/hospital-number", "value": "X100234"},
                    ],
                    "name": [{"family": "Jones", "given": ["Gareth"]}],
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            {"resource": contained, "request": {"method": "POST", "url": "ServiceRequest"}},
        ],
    }
    response = await post_bundle(http, batch)
    assert response.status_code == 202, response.text
    first, second = (e["response"] for e in response.json()["entry"])
    assert first["outcome"]["issue"][0]["expression"] == ["Bundle.entry[0].resource.identifier[0]"]
    assert second["outcome"]["issue"][0]["expression"] == ["Bundle.entry[1].resource.contained[3].identifier[0]"]
    await drain(intake.store)
    await all_mapped(intake.store)
    assert await nhs_filed(intake.store, BAD_NHS) == 0 and await nhs_filed(intake.store, "944930555") == 0
    [jones] = await search(http, "Patient", family="Jones")
    assert jones["identifier"][0]["system"] == INVALID_NHS_NUMBER_SYSTEM

    message = {
        "resourceType": "Bundle",
        "type": "message",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {
                    "resourceType": "MessageHeader",
                    "id": str(uuid.uuid4()),
                    "eventCoding": {
                        "system": "https://fhir.nhs.uk/CodeSystem/message-event",
                        "code": "servicerequest-request",
                    },
                    "source": {"endpoint": "https://ice.rjr.nhs.uk/fhir"},
                },
            },
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": fhir_referral("COCH-77812", nhs=BAD_NHS)},
        ],
    }
    answered = await post_bundle(http, message)
    assert answered.status_code == 200, answered.text
    header, outcome = (e["resource"] for e in answered.json()["entry"])
    assert header["response"]["code"] == "ok"
    assert header["response"]["details"]["reference"] == answered.json()["entry"][1]["fullUrl"]
    assert outcome["issue"][0]["severity"] == "warning"


async def test_hl7v2_invalid_nhs_number_is_acknowledged_aa_with_a_warning_naming_pid_3(intake: IntakeService) -> None:
    ack = (await send_hl7(intake, ref_i12("ICE000313", nhs=BAD_NHS))).decode()
    segments_ = ack.strip("\r").split("\r")
    assert segments_[1].startswith("MSA|AA|ICE000313")  # an urgent referral is never refused for it
    [err] = [s for s in segments_ if s.startswith("ERR")]
    fields = err.split("|")
    assert fields[2] == "PID^1^3" and fields[4] == "W" and "modulus 11" in fields[8]
    assert BAD_NHS not in err
    # Enhanced mode: the commit ACK is CA, with the same warning.
    enhanced = ref_i12("ICE000314", nhs=BAD_NHS).replace(b"|P|2.5\r", b"|P|2.5|||AL|NE\r", 1)
    reply = (await send_hl7(intake, enhanced)).decode()
    assert "MSA|CA|ICE000314" in reply and "|W|" in reply
    # A valid number gives no warning.
    clean = (await send_hl7(intake, ref_i12("ICE000315"))).decode()
    assert "ERR" not in clean
    await drain(intake.store)
    assert await nhs_filed(intake.store, BAD_NHS) == 0


# --- business identifiers scoped by the caller -----------------------------------------------------------


async def test_two_trusts_posting_the_same_identifier_get_two_referrals(settings: Settings, store: Store) -> None:
    # Both trusts' EPRs number referrals from 1 under the same vendor system.
    body = fhir_referral("1")
    async with app_client(settings.model_copy(update={"dev_client_ods": "RBL"}), store) as rbl:
        one = await post_sr(rbl, body)
    rjr_body = referred_by(fhir_referral("1", nhs="9434765919"), "RJR")
    async with app_client(settings.model_copy(update={"dev_client_ods": "RJR"}), store) as rjr:
        two = await post_sr(rjr, rjr_body)
        # If-None-Exist looks only in the caller's own scope: RJR's referral, not RBL's.
        found = await post_sr(rjr, rjr_body, **{"If-None-Exist": f"identifier={REFERRAL_SYSTEM}|1"})
    assert one.status_code == 201 and two.status_code == 201, (one.text, two.text)
    assert one.json()["id"] != two.json()["id"]
    assert found.status_code == 200 and found.json()["id"] == two.json()["id"]
    assert one.json()["id"] == business_id("ServiceRequest", body, "RBL")
    await drain(store)
    first = await store.resources.find_one({"_id": f"ServiceRequest/{one.json()['id']}"})
    assert first is not None and first["resource"]["subject"]["reference"] == f"Patient/{nhs_patient_id(NHS)}"


async def test_a_referral_stored_before_scoping_still_answers_its_own_trust(settings: Settings, store: Store) -> None:
    body = fhir_referral("WUTH-MSCC-000100")
    old = legacy_id("ServiceRequest", body)
    assert old is not None and old != business_id("ServiceRequest", body, "RBL")
    # As an earlier release stored it: version 1 under the unscoped id, from a message of RBL.
    message_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    resource = {
        **copy.deepcopy(body),
        "id": old,
        "meta": {"versionId": "1", "source": f"urn:uuid:{uuid.UUID(message_id)}"},
    }
    key = f"ServiceRequest/{old}"
    await store.messages.insert_one(
        {"_id": message_id, "status": "mapped", "caller": {"ods_code": "RBL"}, "received_at": now}
    )
    doc = {"type": "ServiceRequest", "id": old, "version": 1, "last_updated": now, "resource": resource}
    await store.history.insert_one({"_id": f"{key}/_history/1", **doc})
    await store.resources.insert_one(
        {"_id": key, **doc, "identifier_keys": [f"ServiceRequest|{REFERRAL_SYSTEM}|WUTH-MSCC-000100"]}
    )
    async with app_client(settings.model_copy(update={"dev_client_ods": "RBL"}), store) as rbl:
        resent = await post_sr(rbl, body)
        matched = await post_sr(rbl, body, **{"If-None-Exist": f"identifier={REFERRAL_SYSTEM}|WUTH-MSCC-000100"})
    assert resent.status_code == 200 and resent.json()["id"] == old
    assert matched.status_code == 200 and matched.json()["id"] == old
    async with app_client(settings.model_copy(update={"dev_client_ods": "RJR"}), store) as rjr:
        other = await post_sr(rjr, referred_by(body, "RJR"))
    assert other.status_code == 201 and other.json()["id"] == business_id("ServiceRequest", body, "RJR")


async def test_the_same_referral_resent_after_mapping_is_still_the_same_resource(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    # The mapper has since linked the patient and added the profile: the resend is still no new referral.
    first = await post_sr(http, fhir_referral("WUTH-MSCC-000423"))
    await drain(intake.store)
    again = await post_sr(http, fhir_referral("WUTH-MSCC-000423"))
    assert first.status_code == 201 and again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["subject"]["reference"] == f"Patient/{nhs_patient_id(NHS)}"
    changed = await post_sr(http, fhir_referral("WUTH-MSCC-000423", priority="stat"))
    assert changed.status_code == 409


async def test_an_update_never_files_an_invalid_nhs_number_either(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    created = await post_sr(http, fhir_referral("WUTH-MSCC-000424"))
    await drain(intake.store)
    current = (await http.get(f"/fhir/ServiceRequest/{created.json()['id']}")).json()
    body = copy.deepcopy(current)
    body["subject"]["identifier"]["value"] = BAD_NHS  # a typo in the corrected referral
    updated = await http.put(
        f"/fhir/ServiceRequest/{current['id']}",
        content=json.dumps(body),
        headers={**FHIR_JSON, "If-Match": f'W/"{current["meta"]["versionId"]}"'},
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["subject"]["identifier"]["system"] == INVALID_NHS_NUMBER_SYSTEM
    assert await nhs_filed(intake.store, BAD_NHS) == 0


async def test_a_fhir_referral_gets_the_sla_events_an_hl7v2_one_gets(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    night = datetime(2026, 1, 15, 3, 0, tzinfo=UTC)  # a Thursday, 03:00 London time: out of hours
    created = await post_sr(http, fhir_referral("WUTH-MSCC-000425", authoredOn=night.isoformat()))
    rid = created.json()["id"]
    await drain(intake.store)
    [out_of_hours] = await scan_sla(intake.store, night + timedelta(minutes=5))
    assert out_of_hours["_id"] == f"sla:{rid}:out-of-hours"
    [at_risk] = await scan_sla(intake.store, night + timedelta(hours=18))
    [breached] = await scan_sla(intake.store, night + timedelta(hours=24))
    assert (at_risk["sla_event"], breached["sla_event"]) == ("at-risk", "breached")
