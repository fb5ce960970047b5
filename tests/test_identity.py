"""Identity: local identifiers scoped by the trust that assigned them, patient matching with review,
updates that merge instead of wiping, and message times from the future.

End to end where it matters: HL7v2 over MLLP (and HTTP), stored by intake, mapped by the worker, read
back through the FHIR API and the operator commands. Two trusts that both run ICE and a PAS (RBL and
RJR) send colliding local numbers throughout.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.intake.service import IntakeService
from services.mapper.hl7 import map_hl7v2
from services.mapper.hl7.config import MappingConfig
from services.mapper.hl7.datatypes.identifiers import Systems, cx_identifier, ei_identifier
from services.mapper.hl7.reader import Composite
from services.mapper.hl7.segments.common import id_from
from services.mapper.matching import Candidates, conflicts, merge_patient, resolve
from services.mapper.model import MappingResult
from services.mapper.service import MapperService
from services.mapper.worker import MapperWorker
from shared.er7 import DEFAULT_SEPARATORS
from shared.ids import local_system, scoped_system
from shared.mllp import MllpClient
from shared.nhs import NHS_NUMBER_SYSTEM
from shared.settings import Settings
from shared.store import Store

NHS = "9449305552"  # valid (modulus 11)
OTHER_NHS = "9434765919"  # valid, another person
Resource = dict[str, Any]


# --- traffic ----------------------------------------------------------------------------------------


def referral(
    trust: str,
    control_id: str,
    pid: str,
    *,
    when: str = "20261125080000",
    referral_id: str = "500001^ICE",
    clinician: str = "JONES^SARAH^^^DR",
) -> bytes:
    """A REF^I12 as trusts' ICE installations send it: PRD with the referrer, PV1, a tired clinician's OBX."""
    lines = [
        f"MSH|^~\\&|ICE|{trust}|MSCC-HUB|REN|{when}||REF^I12^REF_I12|{control_id}|P|2.5",
        f"RF1|P^Pending|S^STAT|MSCC^Metastatic spinal cord compression||R^Referral|{referral_id}|{when[:8]}|||"
        "Suspected MSCC",
        f"PRD|RP|{clinician}|^^^{trust}||^WPN^PH^^^^^^^^^0151 678 5111",
        pid,
        f"PV1|1|I|AMU^BED 4^^{trust}||||||||||||||||V{control_id}^^^PAS^VN",
        "OBX|1|TX|NEURO^Neurological status||back pain 3/52, legs heavy since last night ?cord||||||F",
    ]
    return ("\r".join(lines) + "\r").encode()


def adt(trust: str, control_id: str, pid: str, *, when: str = "20261125090000", pd1: str = "") -> bytes:
    lines = [f"MSH|^~\\&|PAS|{trust}|MSCC-HUB|REN|{when}||ADT^A08|{control_id}|P|2.4", f"EVN|A08|{when}", pid]
    if pd1:
        lines.append(pd1)
    lines.append(f"PV1|1|I|WARD 3^BED 2^^{trust}||||||||||||||||V{control_id}^^^PAS^VN")
    return ("\r".join(lines) + "\r").encode()


def oru(trust: str, control_id: str, pid: str, *, when: str = "20261126101500") -> bytes:
    lines = [
        f"MSH|^~\\&|CRIS|{trust}|MSCC-HUB|REN|{when}||ORU^R01|{control_id}|P|2.4",
        pid,
        f"OBR|1|ORD{control_id}^EPR|RAD{control_id}^CRIS|MRWSP^MRI whole spine|||{when}|||||||||||||||{when}||MR|F",
        "OBX|1|TX|MRWSP^MRI whole spine||Cord compression at T10 with signal change.||||||F",
    ]
    return ("\r".join(lines) + "\r").encode()


MARGARET = f"PID|1||{NHS}^^^NHS^NH~X100234^^^PAS^MR||HUGHES^MARGARET||19700312|F"
ROBERT_LOCAL = "PID|1||X100234^^^PAS^MR||DAVIES^ROBERT||19400102|M"
MARGARET_LOCAL = "PID|1||X100234^^^PAS^MR||HUGHES^MARGARET||19700312|F"


async def send(intake: IntakeService, *messages: bytes) -> None:
    client = await MllpClient.connect("127.0.0.1", intake.mllp.port, timeout_s=30)
    try:
        for message in messages:
            reply = await client.send(message)
            assert b"MSA|AA|" in reply, reply
    finally:
        await client.close()


async def drain(intake: IntakeService) -> None:
    await MapperService(intake.store).run(asyncio.Event(), burst=True)


async def record(intake: IntakeService, control_id: str) -> dict[str, Any]:
    found = await intake.store.messages.find_one({"header.control_id": control_id})
    assert found is not None
    return found


async def resource(intake: IntakeService, rtype: str, rid: str) -> Resource:
    found = await intake.store.resources.find_one({"_id": f"{rtype}/{rid}"})
    assert found is not None, f"{rtype}/{rid}"
    out: Resource = found["resource"]
    return out


def referral_id(trust: str, value: str = "500001", authority: str = "ICE") -> str:
    """The ServiceRequest id production gives RF1-6 ``value^authority`` sent by ``trust``."""
    systems = Systems("urn:mscc:id:{authority}", trust)
    ident = ei_identifier(Composite((value, authority), DEFAULT_SEPARATORS), systems)
    assert ident is not None
    return id_from("ServiceRequest", ident)


# --- scoping: pure ------------------------------------------------------------------------------------


def comp(text: str) -> Composite:
    return Composite(tuple(text.split("^")), DEFAULT_SEPARATORS)


def test_application_namespaces_are_scoped_by_the_sending_trust() -> None:
    rbl, rjr = (
        Systems("urn:mscc:id:{authority}", "RBL", frozenset({"RBL", "RJR"})),
        Systems("urn:mscc:id:{authority}", "RJR", frozenset({"RBL", "RJR"})),
    )
    # ICE and PAS are applications many trusts run: the same number from two trusts is two things
    for text in ("500001^^^ICE", "X100234^^^PAS^MR", "V1^^^EPR^VN"):
        a, b = cx_identifier(comp(text), rbl), cx_identifier(comp(text), rjr)
        assert a is not None and b is not None and a["system"] != b["system"]
    # a number assigned by an organisation (its ODS code) is the same number whoever forwards it
    a, b = cx_identifier(comp("X1^^^RBL^MR"), rbl), cx_identifier(comp("X1^^^RBL^MR"), rjr)
    assert a is not None and b is not None and a["system"] == b["system"] == local_system("RBL", "RBL")
    # ids of identifiers scoped by the trust itself did not change: no authority, or the facility
    assert cx_identifier(comp("X1"), rbl) == {"system": "urn:mscc:id:RBL", "value": "X1"}
    assert referral_id("RBL") != referral_id("RJR")


def test_ods_shaped_application_names_are_not_organisations() -> None:
    # "RIS" is shaped like a trust code but is a radiology system: scoped, not global
    systems = Systems("urn:mscc:id:{authority}", "RBL", frozenset({"RBL"}))
    ident = cx_identifier(comp("77^^^RIS"), systems)
    assert ident is not None and ident["system"] == local_system("RIS", "RBL")


def test_configured_organisation_oids_stay_global() -> None:
    config = MappingConfig.from_dict({"senders": {"RJR": {"organisation_oids": ["2.16.840.1.113883.2.1.3.99"]}}})
    assert config.for_sender("RJR").organisation_oids == frozenset({"2.16.840.1.113883.2.1.3.99"})
    text = (
        "MSH|^~\\&|PAS|RJR|MSCC-HUB|REN|20261125080000||ADT^A08|C1|P|2.5\r"
        "PID|1||777^^^PAS&2.16.840.1.113883.2.1.3.99&ISO^MR~888^^^EMIS&1.2.3&ISO^MR||LEWIS^OWEN||19511111|M\r"
    )
    patient = map_hl7v2(text, config).resources[0]
    systems = [i["system"] for i in patient["identifier"]]
    assert systems == ["urn:oid:2.16.840.1.113883.2.1.3.99", local_system("urn:oid:1.2.3", "RJR")]


def test_scoped_system_for_other_routes() -> None:
    assert scoped_system("https://example.org/referral", "RBL") != scoped_system("https://example.org/referral", "RJR")
    assert local_system("ICE", "RBL").startswith("urn:mscc:id:RBL:")


# --- matching: pure -----------------------------------------------------------------------------------


def patient(**content: Any) -> Resource:
    return {"resourceType": "Patient", "id": "p", **content}


def named(family: str, given: str) -> Resource:
    return {"name": [{"family": family, "given": [given]}]}


@pytest.mark.parametrize(
    ("stored", "incoming"),
    [
        (named("O'Neill", "Siobhán"), named("ONEILL", "Siobhan")),
        (named("Smith-Jones", "Ann"), named("smith jones", "Jo")),
        (named("Hughes", "Margaret"), named("Evans", "Margaret")),
        ({"gender": "female"}, {"gender": "unknown"}),
        ({"birthDate": "1970"}, {"birthDate": "1970-03-12"}),
        ({}, {"birthDate": "1940-01-02", "gender": "male"}),
    ],
    ids=["apostrophe-accent-case", "hyphen-space", "married-name", "unknown-sex", "year-precision", "nothing-stored"],
)
def test_what_is_not_a_conflict(stored: Resource, incoming: Resource) -> None:
    assert conflicts(patient(**stored), patient(**incoming)) == []


def test_conflicts_name_fields_with_masked_values() -> None:
    stored = patient(
        identifier=[{"system": NHS_NUMBER_SYSTEM, "value": NHS}],
        name=[{"family": "Hughes", "given": ["Margaret"]}],
        birthDate="1970-03-12",
        gender="female",
    )
    incoming = patient(
        identifier=[{"system": NHS_NUMBER_SYSTEM, "value": OTHER_NHS}],
        name=[{"family": "Davies", "given": ["Robert"]}],
        birthDate="1940-01-02",
        gender="male",
    )
    found = conflicts(stored, incoming)
    assert [c.field for c in found] == ["identifier", "birthDate", "gender", "name"]
    text = " ".join(c.diagnostics() for c in found)
    for secret in ("Hughes", "HUGHES", "Davies", "Margaret", "1970-03-12", "1940-01-02", NHS, OTHER_NHS):
        assert secret not in text


def test_local_identifier_of_a_patient_with_another_nhs_number_is_a_conflict() -> None:
    stored = patient(identifier=[{"system": NHS_NUMBER_SYSTEM, "value": OTHER_NHS}])
    incoming = patient(identifier=[{"system": NHS_NUMBER_SYSTEM, "value": NHS}])
    match = resolve(incoming, Candidates(by_local=[stored]))
    assert match.target == "p" and [c.field for c in match.conflicts] == ["identifier"]


def test_merge_keeps_what_a_sparse_message_leaves_out() -> None:
    stored = patient(
        identifier=[{"system": NHS_NUMBER_SYSTEM, "value": NHS}, {"system": "urn:mscc:id:RBL", "value": "X1"}],
        telecom=[{"system": "phone", "value": "0151 555 0101"}],
        address=[{"postalCode": "CH41 5AB"}],
        generalPractitioner=[{"display": "Dr Patel"}],
        gender="female",
        deceasedBoolean=False,
    )
    merged = merge_patient(stored, patient(identifier=[{"system": "urn:mscc:id:RBL", "value": "X1"}], gender="female"))
    assert merged["identifier"][0] == {"system": NHS_NUMBER_SYSTEM, "value": NHS}
    assert merged["telecom"] == stored["telecom"] and merged["address"] == stored["address"]
    assert merged["generalPractitioner"] == stored["generalPractitioner"]
    assert merge_patient(patient(birthDate="1970-03-12"), patient(birthDate="1970"))["birthDate"] == "1970-03-12"
    died = merge_patient(stored, patient(deceasedDateTime="2026-11-27T10:00:00+00:00"))
    assert "deceasedBoolean" not in died and died["deceasedDateTime"].startswith("2026-11-27")


# --- end to end -----------------------------------------------------------------------------------------


async def test_two_trusts_colliding_ice_and_pas_numbers_stay_two_referrals_and_two_patients(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    margaret = referral("RBL", "RBL0001", MARGARET_LOCAL)
    robert = referral("RJR", "RJR0001", ROBERT_LOCAL, clinician="OKAFOR^CHIDI^^^DR")
    await send(intake, margaret, robert)
    await drain(intake)
    for control_id in ("RBL0001", "RJR0001"):
        assert (await record(intake, control_id))["status"] == "mapped"
    patients = (await http.get("/fhir/Patient", params={"identifier": "X100234"})).json()
    assert patients["total"] == 2
    first, second = (
        await resource(intake, "ServiceRequest", referral_id("RBL")),
        await resource(intake, "ServiceRequest", referral_id("RJR")),
    )
    assert first["subject"] != second["subject"]
    hers = await resource(intake, "Patient", first["subject"]["reference"].removeprefix("Patient/"))
    his = await resource(intake, "Patient", second["subject"]["reference"].removeprefix("Patient/"))
    assert (hers["gender"], hers["birthDate"]) == ("female", "1970-03-12")
    assert (his["gender"], his["birthDate"]) == ("male", "1940-01-02")
    assert first["meta"]["versionId"] == second["meta"]["versionId"] == "1"  # neither overwrote the other


async def test_same_nhs_number_with_conflicting_demographics_is_held_then_decided(
    http: httpx.AsyncClient, intake: IntakeService, settings: Settings, mongodb_uri: str
) -> None:
    await send(intake, referral("RBL", "RBL0002", MARGARET))
    await drain(intake)
    stored = await only_patient(http)
    # RJR sends the same NHS number for a man born in 1940 (a mistyped number): held, nothing written
    rjr_pid = f"PID|1||{NHS}^^^NHS^NH~R88812^^^PAS^MR||DAVIES^ROBERT||19400102|M"
    await send(intake, referral("RJR", "RJR0002", rjr_pid), adt("RJR", "RJR0003", rjr_pid))
    await drain(intake)
    held = await record(intake, "RJR0002")
    assert held["status"] == "needs-review"
    outcome = held["processing"]["outcome"]
    expressions = {e for i in outcome["issue"] for e in i.get("expression", [])}
    assert {"Patient.birthDate", "Patient.gender", "Patient.name"} <= expressions
    assert "19400102" not in str(outcome) and "DAVIES" not in str(outcome) and "1940-01-02" not in str(outcome)
    assert (await only_patient(http))["meta"]["versionId"] == stored["meta"]["versionId"]
    assert await intake.store.resources.count_documents({"_id": f"ServiceRequest/{referral_id('RJR')}"}) == 0

    listed = (await http.get("/admin/messages", params={"status": "needs-review"})).json()
    assert {m["id"] for m in listed["messages"]} == {held["_id"], (await record(intake, "RJR0003"))["_id"]}
    assert all(m["conflicts"] for m in listed["messages"])

    # the CLI lists them too, then rejects one with a reason
    cli = cli_env(settings, mongodb_uri)
    shown = run_cli(cli, "messages", "review")
    assert shown.returncode == 0 and held["_id"] in shown.stdout and "DAVIES" not in shown.stdout
    adt_id = (await record(intake, "RJR0003"))["_id"]
    refused = run_cli(cli, "messages", "reject", adt_id)
    assert refused.returncode == 2  # a reason is required
    rejected = run_cli(cli, "messages", "reject", adt_id, "--reason", "wrong NHS number, RJR asked to resend")
    assert rejected.returncode == 0, rejected.stderr
    doc = await record(intake, "RJR0003")
    assert doc["status"] == "review-rejected" and doc["review"]["reason"].startswith("wrong NHS number")

    # the operator applies the referral after checking with RJR: written, who and when recorded
    applied = await http.post(f"/admin/messages/{held['_id']}/apply")
    assert applied.status_code == 200, applied.text
    assert (await http.post(f"/admin/messages/{held['_id']}/apply")).status_code == 409  # decided once
    await drain(intake)
    done = await record(intake, "RJR0002")
    assert done["status"] == "mapped" and done["review"]["decision"] == "apply" and done["review"]["by"]
    assert isinstance(done["review"]["at"], datetime)
    assert await intake.store.resources.count_documents({"_id": f"ServiceRequest/{referral_id('RJR')}"}) == 1
    # the rejected ADT stays rejected: a drain never picks it up
    assert (await record(intake, "RJR0003"))["status"] == "review-rejected"


async def test_different_nhs_number_for_a_known_hospital_number_is_held(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    await send(intake, adt("RBL", "RBL0010", MARGARET))
    await drain(intake)
    other = f"PID|1||{OTHER_NHS}^^^NHS^NH~X100234^^^PAS^MR||HUGHES^MARGARET||19700312|F"
    await send(intake, adt("RBL", "RBL0011", other, when="20261125100000"))
    await drain(intake)
    held = await record(intake, "RBL0011")
    assert held["status"] == "needs-review"
    assert any("NHS number" in i["diagnostics"] for i in held["processing"]["outcome"]["issue"])
    assert OTHER_NHS not in str(held["processing"])
    # rejected over the API: a reason is required, the decision is final, unknown records are 404
    assert (await http.post(f"/admin/messages/{held['_id']}/reject", json={"reason": ""})).status_code == 422
    decided = await http.post(f"/admin/messages/{held['_id']}/reject", json={"reason": "RBL: NHS number mistyped"})
    assert decided.status_code == 200 and decided.json()["status"] == "review-rejected"
    assert (await http.post(f"/admin/messages/{held['_id']}/apply")).status_code == 409
    assert (await http.post("/admin/messages/0123/apply")).status_code == 404
    await drain(intake)
    assert (await record(intake, "RBL0011"))["status"] == "review-rejected"


async def test_sparse_oru_keeps_the_nhs_number_telecom_address_and_gp(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    full = (
        f"PID|1||{NHS}^^^NHS^NH~X100234^^^PAS^MR||HUGHES^MARGARET||19700312|F|||"
        "12 Church Road^^Birkenhead^^CH41 5AB||0151 555 0101"
    )
    await send(intake, adt("RBL", "RBL0020", full, pd1="PD1|||Riverside Surgery^^N81001|G1234567^PATEL^ANIL"))
    await drain(intake)
    before = await only_patient(http)
    # the radiology system knows the hospital number only
    await send(intake, oru("RBL", "RBL0021", "PID|1||X100234^^^PAS^MR||HUGHES^MARGARET"))
    await drain(intake)
    assert (await record(intake, "RBL0021"))["status"] == "mapped"
    after = await only_patient(http)
    assert after["id"] == before["id"]
    assert {"system": NHS_NUMBER_SYSTEM, "value": NHS} in after["identifier"]
    for kept in ("telecom", "address", "generalPractitioner", "birthDate", "gender"):
        assert after[kept] == before[kept], kept
    report = (await http.get("/fhir/DiagnosticReport", params={"patient": f"Patient/{before['id']}"})).json()
    assert report["total"] == 1  # the report is filed on her record, not on a new one


async def test_future_message_time_warns_and_later_messages_still_apply(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y%m%d%H%M%S+0000")
    await send(intake, adt("RBL", "RBL0030", MARGARET, when=future))
    await drain(intake)
    first = await record(intake, "RBL0030")
    assert first["status"] == "mapped"
    assert any("ahead of the hub's clock" in i["diagnostics"] for i in first["processing"]["issues"])
    # a minute later by the sender's (right) clock: MSH-7 has whole seconds, the arrival time does not
    now = (datetime.now(UTC) + timedelta(minutes=1)).strftime("%Y%m%d%H%M%S+0000")
    renamed = MARGARET.replace("HUGHES^MARGARET", "HUGHES-EVANS^MARGARET")
    # over HTTP this time: the same intake, the same mapper
    reply = await http.post(
        "/hl7v2", content=adt("RBL", "RBL0031", renamed, when=now), headers={"Content-Type": "application/hl7-v2"}
    )
    assert b"MSA|AA|" in reply.content
    await drain(intake)
    later = await record(intake, "RBL0031")
    assert later["status"] == "mapped"
    assert not any(r["stale"] for r in later["processing"]["resources"])
    assert (await only_patient(http))["name"][0]["family"] == "HUGHES-EVANS"


# --- helpers for the end-to-end tests ---------------------------------------------------------------


async def only_patient(http: httpx.AsyncClient) -> Resource:
    bundle = (await http.get("/fhir/Patient", params={"identifier": f"{NHS_NUMBER_SYSTEM}|{NHS}"})).json()
    assert bundle["total"] == 1, bundle
    out: Resource = bundle["entry"][0]["resource"]
    return out


def cli_env(settings: Settings, mongodb_uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSCC_") and k != "MONGODB_URI"}
    env.update(MONGODB_URI=mongodb_uri, MSCC_DB_NAME=settings.db_name, MSCC_STATE_DIR=str(settings.state_dir))
    return env


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).parent.parent,
    )


def test_a_failed_nhs_number_alone_is_scoped_by_the_sending_trust() -> None:
    # two trusts mistype the same number: it identifies nobody, so it must not make one patient of two
    def patient_of(trust: str) -> Resource:
        text = (
            f"MSH|^~\\&|PAS|{trust}|MSCC-HUB|REN|20261125080000||ADT^A08|C1|P|2.5\r"
            "PID|1||9449305553^^^NHS^NH||EVANS^GARETH||19620505|M\r"
        )
        return map_hl7v2(text, MappingConfig()).resources[0]

    assert patient_of("RBL")["id"] != patient_of("RJR")["id"]


async def test_a_hospital_number_patient_gains_the_nhs_number_without_a_duplicate(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    # the PAS registers her by hospital number; the referral that follows carries the NHS number too
    await send(intake, adt("RBL", "RBL0040", MARGARET_LOCAL, when="20261125070000"))
    await send(intake, referral("RBL", "RBL0041", MARGARET))
    await drain(intake)
    patients = (await http.get("/fhir/Patient", params={"identifier": "X100234"})).json()
    assert patients["total"] == 1
    her = patients["entry"][0]["resource"]
    assert {"system": NHS_NUMBER_SYSTEM, "value": NHS} in her["identifier"]
    request = await resource(intake, "ServiceRequest", referral_id("RBL"))
    assert request["subject"]["reference"] == f"Patient/{her['id']}"
    # and the NHS number now finds her from any trust
    assert (await only_patient(http))["id"] == her["id"]


async def test_a_future_time_already_stored_does_not_make_later_messages_stale(store: Store) -> None:
    # a Patient last changed by a message dated two days ahead, stored before such times were caught
    # (written here by a writer whose clock agreed with it)
    now = datetime.now(UTC)

    def mapper(record: dict[str, Any]) -> MappingResult:
        content = {"resourceType": "Patient", "id": "p-future", "gender": record["gender"]}
        return MappingResult(resources=[content], source_time=record["source_time"])

    def message(n: int, gender: str, when: datetime) -> dict[str, Any]:
        return {
            "_id": f"{n:032x}",
            "received_at": now,
            "protocol": "test",
            "status": "ready",
            "gender": gender,
            "source_time": when,
        }

    await store.messages.insert_one(message(1, "female", now + timedelta(days=2)))
    ahead = MapperWorker(store, mapper, clock=lambda: now + timedelta(days=3))
    await ahead.run(asyncio.Event(), burst=True)
    await store.messages.insert_one(message(2, "unknown", now))
    await MapperWorker(store, mapper).run(asyncio.Event(), burst=True)
    later = await store.messages.find_one({"_id": f"{2:032x}"})
    assert later is not None and later["processing"]["resources"][0]["stale"] is False
    stored = await store.resources.find_one({"_id": "Patient/p-future"})
    assert stored is not None and stored["resource"]["gender"] == "unknown"


async def test_after_a_merge_the_old_hospital_number_reaches_the_survivor(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    # RBL's PAS held her twice; A40 merges X100999 into X100234 (PID-3 lists both, as many PAS do)
    duplicate = "PID|1||X100999^^^PAS^MR||HUGHES^MARGARET||19700312|F"
    await send(intake, adt("RBL", "RBL0050", MARGARET), adt("RBL", "RBL0051", duplicate))
    await drain(intake)
    merge = (
        "MSH|^~\\&|PAS|RBL|MSCC-HUB|REN|20261125100000||ADT^A40|RBL0052|P|2.4\r"
        "EVN|A40|20261125100000\r"
        f"PID|1||{NHS}^^^NHS^NH~X100234^^^PAS^MR~X100999^^^PAS^MR||HUGHES^MARGARET||19700312|F\r"
        "MRG|X100999^^^PAS^MR\r"
    ).encode()
    await send(intake, merge)
    await drain(intake)
    assert (await record(intake, "RBL0052"))["status"] == "mapped"  # a merge is not a conflict
    survivor = await only_patient(http)
    # radiology missed the merge and reports under the old number: filed on the survivor
    await send(intake, oru("RBL", "RBL0053", "PID|1||X100999^^^PAS^MR||HUGHES^MARGARET"))
    await drain(intake)
    assert (await record(intake, "RBL0053"))["status"] == "mapped"
    report = (await http.get("/fhir/DiagnosticReport", params={"patient": f"Patient/{survivor['id']}"})).json()
    assert report["total"] == 1
