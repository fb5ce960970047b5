"""The HL7v2 -> FHIR mapping (services/mapper/hl7): datatypes, segments, messages, and the whole corpus.

No database: the mapping is pure. Each test names its edge case in one comment.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.mapper.hl7 import MESSAGES, MappingConfig, SenderConfig, map_hl7v2
from services.mapper.hl7 import tables as code_tables
from services.mapper.hl7.datatypes.codes import cwe_concept
from services.mapper.hl7.datatypes.demographics import xad_address, xpn_name, xtn_contact
from services.mapper.hl7.datatypes.identifiers import Systems, cx_identifier
from services.mapper.hl7.datatypes.references import xcn_reference, xon_reference
from services.mapper.hl7.datatypes.times import InvalidValue, parse_ts
from services.mapper.hl7.reader import Composite
from services.mapper.model import MappingError, MappingResult
from services.pathway.plan import assessment_id, care_plan_id
from shared.er7 import DEFAULT_SEPARATORS, parse_message, segment_spans, split_message_log
from shared.fhir import validate
from shared.ids import local_system
from shared.mllp import Frame, FrameDecoder
from shared.nhs import (
    GMC_NUMBER_SYSTEM,
    INVALID_NHS_NUMBER_SYSTEM,
    NHS_NUMBER_SYSTEM,
    ODS_ORGANIZATION_SYSTEM,
    VERIFICATION_STATUS_URL,
    format_nhs_number,
    is_valid_nhs_number,
    looks_like_ods_code,
    nhs_check_digit,
    normalise_nhs_number,
    redact_nhs_number,
)

CORPUS = Path(__file__).parent / "corpus"
LONDON = ZoneInfo("Europe/London")
SYSTEMS = Systems("urn:mscc:id:{authority}", "RBL", frozenset({"REN"}))
NHS = "9449305552"

Resource = dict[str, Any]


# --- building messages ------------------------------------------------------------------------------


def seg(name: str, fields: dict[int, str]) -> str:
    """One segment from {field number: value}; the fields in between are empty."""
    return "|".join([name, *(fields.get(n, "") for n in range(1, max(fields) + 1))])


def msh(kind: str, control: str = "CTRL0001", when: str = "20240301101500", version: str = "2.4") -> str:
    return f"MSH|^~\\&|EPR|RBL|MSCCHUB|REN|{when}||{kind}|{control}|P|{version}"


def message(*segments: str, separator: str = "\r") -> str:
    return separator.join(segments) + separator


def pid(extra: dict[int, str] | None = None) -> str:
    return seg(
        "PID",
        {
            1: "1",
            3: f"{NHS}^^^NHS^NH~RBL123456^^^RBL^MR",
            5: "JONES^Mary^Ann^^Mrs^^L",
            7: "19560412",
            8: "F",
            11: "12 Church Road^Flat 2^Birkenhead^Merseyside^CH41 2AB^GBR^H",
            13: "0151 123 4567^PRN^PH~^NET^Internet^mary@example.org",
            14: "^WPN^CP^^^^^^^^^07700 900123",
            32: "NSTS01",
            **(extra or {}),
        },
    )


PD1 = seg("PD1", {3: "Riverside Surgery^^N85001", 4: "G1234567^Patel^Raj^^^Dr"})
PV1 = seg("PV1", {1: "1", 2: "I", 3: "WARD 5^BAY 2^BED 3^RBL", 19: "VIS987^^^RBL^VN", 44: "20240229080000"})


def rf1(status: str = "P") -> str:
    return seg(
        "RF1",
        {
            1: f"{status}^Pending^HL70283",
            2: "S^STAT^HL70280",
            3: "ONC^Oncology^L",
            6: "REF12345^RBL",
            7: "20240301101000",
            10: "MSCC^Suspected MSCC^L",
            11: "EXT-77^REN",
        },
    )


PRD_RP = seg(
    "PRD",
    {
        1: "RP^Referring Provider^HL70286",
        2: "Smith^Jane^^^Dr",
        4: "^^^RBL^^^^^Wirral University Teaching Hospital",
        5: "^WPN^PH^^^^^^^^^0151 678 5111",
        7: "C1234567^GMC",
    },
)
PRD_RT = seg("PRD", {1: "RT^Referred to Provider^HL70286", 2: "Team^MSCC", 4: "^^^REN^^^^^Clatterbridge"})


def obx(number: int, kind: str, code: str, value: str) -> str:
    return seg("OBX", {1: str(number), 2: kind, 3: code, 5: value, 11: "F"})


def ref(event: str = "I12", status: str = "P", neuro: str = "Weakness both legs, sensory level T10", **kw: str) -> str:
    return message(
        msh(f"REF^{event}^REF_I12", kw.get("control", "CTRL0001"), kw.get("when", "20240301101500")),
        rf1(status),
        PRD_RP,
        PRD_RT,
        pid(),
        PD1,
        seg("IN1", {1: "1", 2: "NHS"}),
        seg("DG1", {1: "1", 3: "C79.5^Secondary malignant neoplasm of bone^I10"}),
        obx(1, "ST", "MSCC-NEURO^Neurological status^L", neuro),
        seg("NTE", {1: "1", 3: "Onset two days ago"}),
        obx(2, "NM", "WHOPS^WHO performance status^L", "2"),
        obx(3, "CWE", "STER^Dexamethasone given^L", "Y^Yes^HL70136"),
        PV1,
        seg("NTE", {1: "2", 3: "Dexamethasone 16 mg given at 09:00\\.br\\Family aware"}),
        seg("ZU1", {1: "1", 2: "local stuff"}),
    )


def by_type(result: MappingResult, resource_type: str) -> list[Resource]:
    return [r for r in result.resources if r["resourceType"] == resource_type]


def patched(result: MappingResult, resource_type: str, current: Resource | None = None) -> Resource:
    patch = next(p for p in result.patches if p.resource_type == resource_type)
    return patch.apply(current)


def all_content(result: MappingResult) -> list[Resource]:
    return [*result.resources, *(p.apply(None) for p in result.patches)]


# --- shared/nhs.py ----------------------------------------------------------------------------------


def test_nhs_number_modulus_11() -> None:
    # the worked example in docs/domain.md is valid; a changed last digit is not
    assert is_valid_nhs_number(NHS)
    assert not is_valid_nhs_number("9449305553")


def test_nhs_number_check_digit_ten_means_invalid() -> None:
    # remainder 1 gives check digit 10: no valid number starts with these nine digits
    nine = next(f"{n:09d}" for n in range(100000000, 100001000) if nhs_check_digit(f"{n:09d}") is None)
    assert not any(is_valid_nhs_number(nine + str(d)) for d in range(10))


def test_nhs_number_shapes() -> None:
    # spaces and hyphens are a written form, not part of the number; letters and lengths fail
    assert normalise_nhs_number("944 930 5552") == NHS
    assert normalise_nhs_number("944-930-5552") == NHS
    assert not is_valid_nhs_number("944 930 5552")
    assert not is_valid_nhs_number("94493055521")
    assert not is_valid_nhs_number("944930555X")
    assert format_nhs_number(NHS) == "944 930 5552"
    assert redact_nhs_number(NHS) == "*******552"


def test_ods_code_shapes() -> None:
    # trusts (R + 2), trust sites (R + 4), GP practices (letter + 5 digits); configured codes always
    assert looks_like_ods_code("RBL") and looks_like_ods_code("RBL01") and looks_like_ods_code("N85001")
    assert not looks_like_ods_code("EPIC") and not looks_like_ods_code("GOOD HEALTH HOSPITAL")
    assert looks_like_ods_code("XYZ9", frozenset({"XYZ9"}))


# --- datatypes --------------------------------------------------------------------------------------


def comp(text: str) -> Composite:
    return Composite(tuple(text.split("^")), DEFAULT_SEPARATORS)


def test_cx_with_oid_authority() -> None:
    # an ISO universal id (CX.4.2/CX.4.3) the sender's configuration names as its own is global
    systems = Systems("urn:mscc:id:{authority}", "RBL", frozenset({"REN"}), frozenset({"2.16.840.1.1"}))
    ident = cx_identifier(comp("123^^^Hosp&2.16.840.1.1&ISO^MR"), systems)
    assert ident == {
        "system": "urn:oid:2.16.840.1.1",
        "value": "123",
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                    "code": "MR",
                    "display": "Medical record number",
                }
            ]
        },
    }


def test_cx_with_an_unconfigured_oid_is_scoped_by_the_sending_facility() -> None:
    # a vendor's OID is shared by every trust that runs the product: it names no organisation
    ident = cx_identifier(comp("123^^^Hosp&2.16.840.1.1&ISO^MR"), SYSTEMS)
    assert ident is not None and ident["system"] == local_system("urn:oid:2.16.840.1.1", "RBL")
    assert ident["system"].startswith("urn:mscc:id:RBL:")


def test_cx_without_authority_is_qualified_by_the_sending_facility() -> None:
    # no CX.4: the local pattern with the sending facility
    assert cx_identifier(comp("123"), SYSTEMS) == {"system": "urn:mscc:id:RBL", "value": "123"}


def test_cx_ods_authority_becomes_the_assigner() -> None:
    # an ODS-like authority: local system plus Identifier.assigner by ODS code
    ident = cx_identifier(comp("123^^^REN^MR"), SYSTEMS)
    assert ident is not None and ident["system"] == "urn:mscc:id:REN"
    assert ident["assigner"] == {"identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": "REN"}}


def test_cx_unknown_type_and_empty_value() -> None:
    # a CX.5 outside table 0203 is kept as text; an empty CX.1 is no identifier at all
    ident = cx_identifier(comp("123^^^X^WEIRD TYPE"), SYSTEMS)
    assert ident is not None and ident["type"] == {"text": "WEIRD TYPE"}
    assert cx_identifier(comp("^^^X^MR"), SYSTEMS) is None


def test_xpn_with_empty_components_and_escapes() -> None:
    # empty middle components are skipped; \T\ is a literal '&', not a subcomponent separator
    assert xpn_name(comp("Smith\\T\\Jones^Anne^^^Dr^^L")) == {
        "family": "Smith&Jones",
        "given": ["Anne"],
        "prefix": ["Dr"],
        "use": "official",
    }
    assert xpn_name(comp("^^^^^^L")) is None


def test_xpn_surname_subcomponent_and_null() -> None:
    # FN.1 surname is the first subcomponent; HL7 '""' means null
    assert xpn_name(comp('Everyman&&&&Aniston^""')) == {"family": "Everyman"}


def test_xad_joins_split_street_and_maps_type() -> None:
    # SAD split into number & street name: both kept once; M (mailing) is a postal address
    address = xad_address(comp("1000&Hospital Lane^Ste. 123^Ann Arbor^MI^99999^USA^M"))
    assert address == {
        "line": ["1000 Hospital Lane", "Ste. 123"],
        "city": "Ann Arbor",
        "district": "MI",
        "postalCode": "99999",
        "country": "USA",
        "type": "postal",
    }


def test_xtn_email_mobile_and_use_only() -> None:
    # email in XTN.4; CP is a mobile; a use code without a number is nothing
    assert xtn_contact(comp("^NET^Internet^a@b.uk")) == {"system": "email", "value": "a@b.uk"}
    assert xtn_contact(comp("^WPN^CP^^^^^^^^^07700 900123")) == {
        "system": "phone",
        "value": "07700 900123",
        "use": "mobile",
    }
    assert xtn_contact(comp("^PRN^PH")) is None


def ts(value: str) -> str:
    parsed = parse_ts(value, LONDON)
    assert parsed is not None
    return parsed.value


def test_ts_precision_is_kept() -> None:
    # year, month, day stay partial; a time gets seconds (FHIR needs them) and the London offset
    assert [ts("2024"), ts("202403"), ts("20240301")] == ["2024", "2024-03", "2024-03-01"]
    assert ts("202403011015") == "2024-03-01T10:15:00+00:00"
    assert ts("20240701101500") == "2024-07-01T10:15:00+01:00"


def test_ts_offsets_and_fractions() -> None:
    # an explicit offset wins over the zone; fractional seconds are kept as sent
    parsed = parse_ts("20220120112600.25+0215", LONDON)
    assert parsed is not None and parsed.value == "2022-01-20T11:26:00.25+02:15"
    assert parsed.moment == datetime(2022, 1, 20, 9, 11, tzinfo=UTC)
    assert parse_ts("", LONDON) is None


@pytest.mark.parametrize("value", ["20230230", "20231301", "202403011060", "20240301+2500", "2024-03-01", "abc"])
def test_ts_invalid_dates(value: str) -> None:
    # impossible dates, times and offsets, and non-HL7 shapes
    with pytest.raises(InvalidValue):
        parse_ts(value, LONDON)


def test_cwe_systems_and_text_only() -> None:
    # LN -> LOINC, HL7nnnn -> THO v2 tables, unknown names -> a local system; text alone stays text
    concept = cwe_concept(comp("1234-5^Thing^LN^Y^Yes^HL70136^^^Original"))
    assert concept == {
        "coding": [
            {"code": "1234-5", "system": "http://loinc.org", "display": "Thing"},
            {"code": "Y", "system": "http://terminology.hl7.org/CodeSystem/v2-0136", "display": "Yes"},
        ],
        "text": "Original",
    }
    local = cwe_concept(comp("X1^Local thing^99ZZ"))
    assert local is not None and local["coding"][0]["system"] == "urn:mscc:code-system:99ZZ"
    assert cwe_concept(comp("^Free text only")) == {"text": "Free text only"}


def test_xcn_reference() -> None:
    # identifier with the person's authority, display assembled from prefix, given names and family
    assert xcn_reference(comp("C123^Smith^Jane^Q^^Dr^^^GMC"), SYSTEMS) == {
        "type": "Practitioner",
        "identifier": {"system": GMC_NUMBER_SYSTEM, "value": "C123"},
        "display": "Dr Jane Q Smith",
    }


def test_xon_reference_by_ods_code_in_either_version() -> None:
    # v2.5+ puts the code in XON.10, v2.3/2.4 in XON.3
    expected = {
        "type": "Organization",
        "identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": "N85001"},
        "display": "Riverside Surgery",
    }
    assert xon_reference(comp("Riverside Surgery^^^^^^^^^N85001"), SYSTEMS) == expected
    assert xon_reference(comp("Riverside Surgery^^N85001"), SYSTEMS) == expected


# --- segments: PID / PD1 ----------------------------------------------------------------------------


def adt(event: str, *segments: str, separator: str = "\r") -> str:
    return message(
        msh(f"ADT^{event}^ADT_A01"), seg("EVN", {1: event, 2: "20240301101500"}), *segments, separator=separator
    )


def test_patient_from_pid_and_pd1() -> None:
    # NHS number with its verification status, local MRN assigned by an ODS-coded trust, GP by ODS
    result = map_hl7v2(adt("A01", pid(), PD1, PV1))
    patient = by_type(result, "Patient")[0]
    nhs, mrn = patient["identifier"]
    assert nhs["system"] == NHS_NUMBER_SYSTEM and nhs["value"] == NHS
    assert nhs["extension"][0]["url"] == VERIFICATION_STATUS_URL
    assert nhs["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "01"
    assert mrn["system"] == "urn:mscc:id:RBL" and mrn["assigner"]["identifier"]["value"] == "RBL"
    assert patient["name"] == [{"family": "JONES", "given": ["Mary", "Ann"], "prefix": ["Mrs"], "use": "official"}]
    assert (patient["birthDate"], patient["gender"]) == ("1956-04-12", "female")
    assert patient["address"][0]["postalCode"] == "CH41 2AB" and patient["address"][0]["use"] == "home"
    assert {t["system"] for t in patient["telecom"]} == {"phone", "email"}
    practice, doctor = patient["generalPractitioner"]
    assert practice["identifier"] == {"system": ODS_ORGANIZATION_SYSTEM, "value": "N85001"}
    assert doctor["display"] == "Dr Raj Patel"
    assert patient["meta"]["profile"] == ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient"]
    validate(patient)


def test_verification_status_omitted_when_not_sent() -> None:
    # no PID-32: UK Core's extension is left out rather than guessed
    patient = by_type(map_hl7v2(adt("A01", pid({32: ""}), PV1)), "Patient")[0]
    assert "extension" not in patient["identifier"][0]


def test_invalid_nhs_number_is_kept_locally_and_flagged() -> None:
    # modulus 11 fails: warning, local system, never the NHS system, never dropped
    result = map_hl7v2(adt("A01", pid({3: "9449305553^^^NHS^NH~RBL123456^^^RBL^MR"}), PV1))
    patient = by_type(result, "Patient")[0]
    assert {"system": INVALID_NHS_NUMBER_SYSTEM, "value": "9449305553"}.items() <= patient["identifier"][0].items()
    assert all(i["system"] != NHS_NUMBER_SYSTEM for i in patient["identifier"])
    warning = next(i for i in result.issues if i["severity"] == "warning")
    assert "modulus 11" in warning["diagnostics"] and "9449305553" not in warning["diagnostics"]
    # the id comes from the first usable PID-3 identifier, not the failed NHS number
    same = by_type(map_hl7v2(adt("A01", pid({3: "RBL123456^^^RBL^MR"}), PV1)), "Patient")[0]
    assert patient["id"] == same["id"]


def test_nhs_number_location_per_sender() -> None:
    # one trust sends the NHS number in PID-2, another in PID-3 with the local type NHSNMBR
    config = MappingConfig(
        senders={"RBL": SenderConfig(nhs_number_location="PID-2")},
        default=SenderConfig(nhs_number_location="PID-3 NHSNMBR"),
    )
    in_pid2 = by_type(map_hl7v2(adt("A01", pid({2: NHS, 3: "RBL123456^^^RBL^MR"}), PV1), config), "Patient")[0]
    assert (in_pid2["identifier"][0]["system"], in_pid2["identifier"][0]["value"]) == (NHS_NUMBER_SYSTEM, NHS)
    assert in_pid2["identifier"][1]["value"] == "RBL123456"
    other = adt("A01", pid({3: f"{NHS}^^^X^NHSNMBR"}), PV1).replace("|RBL|", "|RXX|", 1)
    in_pid3 = by_type(map_hl7v2(other, config), "Patient")[0]
    assert in_pid3["identifier"][0]["system"] == NHS_NUMBER_SYSTEM


def test_patient_id_from_nhs_number_else_first_pid3() -> None:
    # the same NHS number with different local numbers is the same Patient
    one = by_type(map_hl7v2(adt("A01", pid(), PV1)), "Patient")[0]
    two = by_type(map_hl7v2(adt("A01", pid({3: f"{NHS}^^^NHS^NH~OTHER1^^^RBL^MR"}), PV1)), "Patient")[0]
    assert one["id"] == two["id"]


def test_patient_without_any_identifier_is_message_scoped() -> None:
    # nothing to identify the patient: kept (a referral is never lost) with a warning
    result = map_hl7v2(adt("A01", pid({3: ""}), PV1))
    assert by_type(result, "Patient")[0]["id"]
    assert any("message only" in i["diagnostics"] for i in result.issues)


def test_invalid_birth_date_is_left_out_with_a_warning() -> None:
    # 30 February: no birthDate, a warning naming PID-7
    result = map_hl7v2(adt("A01", pid({7: "19560230"}), PV1))
    assert "birthDate" not in by_type(result, "Patient")[0]
    assert any(i.get("expression") == ["PID-7"] for i in result.issues)


# --- segments: PV1 and ADT events -------------------------------------------------------------------


def test_pv1_encounter_class_status_period_identifier() -> None:
    # A01: in-progress; class I -> IMP; PV1-19 visit number qualified by its authority
    encounter = by_type(map_hl7v2(adt("A01", pid(), PV1)), "Encounter")[0]
    assert encounter["status"] == "in-progress"
    assert encounter["class"]["code"] == "IMP"
    assert encounter["period"] == {"start": "2024-02-29T08:00:00+00:00"}
    assert encounter["identifier"][0]["value"] == "VIS987"
    assert encounter["subject"]["reference"].startswith("Patient/")
    # the sending facility (MSH-4 RBL) is an ODS code: it runs the visit
    assert encounter["serviceProvider"]["identifier"] == {"system": ODS_ORGANIZATION_SYSTEM, "value": "RBL"}
    validate(encounter)


def test_a03_discharge_finishes_the_same_encounter() -> None:
    # same PV1-19 -> same id; PV1-45 empty -> the end comes from EVN-2
    admit = by_type(map_hl7v2(adt("A01", pid(), PV1)), "Encounter")[0]
    result = map_hl7v2(adt("A03", pid(), PV1))
    discharge = by_type(result, "Encounter")[0]
    assert discharge["id"] == admit["id"]
    assert discharge["status"] == "finished"
    assert discharge["period"]["end"] == "2024-03-01T10:15:00+00:00"


def test_a08_derives_status_from_discharge_time() -> None:
    # A08 has no status of its own: PV1-45 present means finished
    pv1 = seg("PV1", {1: "1", 2: "O", 19: "VIS987^^^RBL^VN", 44: "202402290800", 45: "202402291200"})
    encounter = by_type(map_hl7v2(adt("A08", pid(), pv1)), "Encounter")[0]
    assert (encounter["status"], encounter["class"]["code"]) == ("finished", "AMB")


def test_missing_pv1_gives_no_encounter_and_a_warning() -> None:
    # ADT without PV1: the Patient is still mapped
    result = map_hl7v2(adt("A01", pid()))
    assert by_type(result, "Encounter") == [] and by_type(result, "Patient")
    assert any(i["expression"] == ["PV1"] for i in result.issues)


def test_discharge_before_admission_drops_the_end() -> None:
    # PV1-45 earlier than PV1-44 is impossible: the end is left out with a warning
    pv1 = seg("PV1", {1: "1", 2: "I", 19: "V1", 44: "202403011200", 45: "202402011200"})
    result = map_hl7v2(adt("A08", pid(), pv1))
    assert "end" not in by_type(result, "Encounter")[0]["period"]


# --- segments: the referral -------------------------------------------------------------------------


def referral_of(result: MappingResult) -> Resource:
    return next(r for r in by_type(result, "ServiceRequest"))


def test_rf1_referral_fields() -> None:
    # status from 0283 (P pending -> active), priority from 0280, identifiers RF1-6 (PLAC) and RF1-11
    request = referral_of(map_hl7v2(ref()))
    assert (request["status"], request["intent"], request["priority"]) == ("active", "order", "stat")
    assert [i["value"] for i in request["identifier"]] == ["REF12345", "EXT-77"]
    assert request["identifier"][0]["system"] == "urn:mscc:id:RBL"
    assert request["authoredOn"] == "2024-03-01T10:10:00+00:00"
    assert request["category"][0]["coding"][0]["code"] == "ONC"
    reasons = [c["coding"][0]["code"] for c in request["reasonCode"]]
    assert reasons == ["C79.5", "MSCC"]  # the diagnoses (DG1-3) first, then RF1-10's administrative reason
    assert request["meta"]["profile"] == ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-ServiceRequest"]
    validate(request)


def test_prd_requester_and_performer_with_ods_codes() -> None:
    # RP -> requester, RT -> performer: contained PractitionerRoles carrying the organisation's ODS code
    request = referral_of(map_hl7v2(ref()))
    contained = {c["id"]: c for c in request["contained"]}
    requester = contained[request["requester"]["reference"][1:]]
    assert requester["organization"]["identifier"] == {"system": ODS_ORGANIZATION_SYSTEM, "value": "RBL"}
    assert requester["practitioner"]["display"] == "Dr Jane Smith"
    assert requester["telecom"][0]["value"] == "0151 678 5111"
    performer = contained[request["performer"][0]["reference"][1:]]
    assert performer["organization"]["identifier"]["value"] == "REN"


def test_nte_notes_with_escapes() -> None:
    # \.br\ is a line break inside one note; an NTE after an OBX belongs to that observation
    request = referral_of(map_hl7v2(ref()))
    assert request["note"] == [{"text": "Dexamethasone 16 mg given at 09:00\nFamily aware"}]
    neuro = next(c for c in request["contained"] if c["resourceType"] == "Observation")
    assert neuro["note"] == [{"text": "Onset two days ago"}]


def test_supporting_information_as_contained_observations() -> None:
    # every OBX becomes a contained Observation; MSCC items get a LOCAL coding (never SNOMED)
    request = referral_of(map_hl7v2(ref()))
    observations = [c for c in request["contained"] if c["resourceType"] == "Observation"]
    assert len(observations) == len(request["supportingInfo"]) == 3
    keys = [
        next(c["code"] for c in o["code"]["coding"] if c["system"].startswith("urn:mscc:code:")) for o in observations
    ]
    assert keys == ["neurological-status", "who-performance-status", "steroids"]
    assert all("snomed" not in json.dumps(o) for o in observations)
    assert observations[1]["valueQuantity"] == {"value": 2}
    assert observations[2]["valueCodeableConcept"]["coding"][0]["code"] == "Y"
    assert request["supportingInfo"][0]["display"].startswith("Neurological status: Weakness")


def test_referral_without_rf1_is_kept_with_a_warning() -> None:
    # no RF1: a ServiceRequest identified by MSH-10, and warnings saying so
    text = message(msh("REF^I12^REF_I12"), pid(), PV1)
    result = map_hl7v2(text)
    assert referral_of(result)["status"] == "active"
    assert {tuple(i.get("expression", [])) for i in result.issues} >= {("RF1",), ("RF1-6",)}


# --- the MSCC pathway -------------------------------------------------------------------------------


def test_pathway_with_neurological_signs_is_due_in_24_hours() -> None:
    # weakness -> signs present -> MRI and plan within 24 hours of RF1-7
    result = map_hl7v2(ref())
    request = referral_of(result)
    encounter = patched(result, "Encounter")
    plan = patched(result, "CarePlan")
    assert encounter["id"] == assessment_id(request["id"]) and encounter["status"] == "planned"
    assert encounter["basedOn"] == [{"reference": f"ServiceRequest/{request['id']}"}]
    assert plan["id"] == care_plan_id(request["id"])
    assert (plan["status"], plan["intent"]) == ("active", "plan")
    mri, mdt, treatment = (a["detail"] for a in plan["activity"])
    assert mri["description"] == "Whole-spine MRI" and mdt["description"] == "MDT discussion"
    assert mri["scheduledPeriod"] == {"start": "2024-03-01T10:10:00+00:00", "end": "2024-03-02T10:10:00+00:00"}
    assert treatment["scheduledPeriod"]["end"] == "2024-03-02T10:10:00+00:00"
    assert "present" in plan["description"]
    validate(encounter)
    validate(plan)


def test_pathway_without_neurological_signs_is_due_in_7_days() -> None:
    # "no neurological deficit" is read as absent (not as "deficit")
    plan = patched(map_hl7v2(ref(neuro="No neurological deficit")), "CarePlan")
    assert plan["activity"][0]["detail"]["scheduledPeriod"]["end"] == "2024-03-08T10:10:00+00:00"
    assert "7 days" in plan["description"]


def test_pathway_with_unknown_neurological_status_takes_24_hours() -> None:
    # a value no rule reads: unknown, and the safe 24 hour window
    plan = patched(map_hl7v2(ref(neuro="see letter")), "CarePlan")
    assert "unknown" in plan["description"]
    assert plan["activity"][0]["detail"]["scheduledPeriod"]["end"] == "2024-03-02T10:10:00+00:00"


def test_sender_codes_for_supporting_information() -> None:
    # a sender's own OBX-3 code, configured, is read as the neurological status
    text = ref(neuro="Normal").replace("MSCC-NEURO^Neurological status^L", "Z99^Exam^L")
    config = MappingConfig(default=SenderConfig(supporting_info_codes={"Z99": "neurological-status"}))
    assert "No neurological signs" in patched(map_hl7v2(text, config), "CarePlan")["description"]
    assert "unknown" in patched(map_hl7v2(text), "CarePlan")["description"]
    # an OBX the hub cannot classify still counts when its text names a sign (never as an all-clear)
    signs = ref().replace("MSCC-NEURO^Neurological status^L", "Z99^Exam^L")
    assert "present" in patched(map_hl7v2(signs), "CarePlan")["description"]


def test_ref_i12_i13_i14_same_ids_changed_status() -> None:
    # one referral's life: new (pending), accepted update a day later, cancel; ids never change
    new = map_hl7v2(ref("I12", "P"))
    update = map_hl7v2(ref("I13", "A", neuro="No neurological deficit", control="CTRL0002", when="20240302101500"))
    cancel = map_hl7v2(ref("I14", "A", control="CTRL0003", when="20240303101500"))
    requests = [referral_of(r) for r in (new, update, cancel)]
    assert len({r["id"] for r in requests}) == 1
    assert [r["status"] for r in requests] == ["active", "active", "revoked"]
    assert len({p.resource_id for r in (new, update, cancel) for p in r.patches}) == 2
    plan = patched(new, "CarePlan")
    encounter = patched(new, "Encounter")
    plan = patched(update, "CarePlan", plan)
    encounter = patched(update, "Encounter", encounter)
    # the update keeps the clock (first contact) and recomputes the deadline from the new status
    assert plan["period"]["start"] == "2024-03-01T10:10:00+00:00"
    assert plan["activity"][0]["detail"]["scheduledPeriod"]["end"] == "2024-03-08T10:10:00+00:00"
    assert encounter["status"] == "in-progress"
    plan["activity"][0]["detail"]["status"] = "completed"  # the MRI was done in the meantime
    plan = patched(cancel, "CarePlan", plan)
    encounter = patched(cancel, "Encounter", encounter)
    assert plan["status"] == "revoked" and encounter["status"] == "cancelled"
    assert [a["detail"]["status"] for a in plan["activity"]] == ["completed", "cancelled", "cancelled"]


def test_resend_does_not_restart_the_clock() -> None:
    # the same referral re-sent later with a new MSH-7 and no time in RF1-7: the first contact stays
    first = patched(map_hl7v2(ref().replace("20240301101000", "20240301")), "CarePlan")
    again = map_hl7v2(ref(when="20240305090000").replace("20240301101000", "20240301"))
    assert patched(again, "CarePlan", first)["period"]["start"] == "2024-03-01T10:15:00+00:00"
    assert patched(again, "CarePlan")["period"]["start"] == "2024-03-05T09:00:00+00:00"


def test_assessment_never_goes_backwards() -> None:
    # a finished assessment stays finished when a later I13 says "pending"
    update = map_hl7v2(ref("I13", "P"))
    current = {**patched(update, "Encounter"), "status": "finished"}
    assert patched(update, "Encounter", current)["status"] == "finished"


# --- orders and results -----------------------------------------------------------------------------

ORM = message(
    msh("ORM^O01^ORM_O01", "ORM0001", "20240301120000"),
    pid(),
    PV1,
    seg(
        "ORC",
        {
            1: "NW",
            2: "ORD555^EPR",
            4: "GRP1^EPR",
            9: "20240301115500",
            12: "C1234567^Smith^Jane^^^Dr",
            21: "Wirral University Teaching Hospital^^RBL",
        },
    ),
    seg("OBR", {1: "1", 2: "ORD555^EPR", 4: "MRWSP^MRI whole spine^L", 27: "^^^^^S", 31: "MSCC^Suspected MSCC^L"}),
    seg("NTE", {1: "1", 3: "Urgent: suspected cord compression"}),
)

ORU = message(
    "MSH|^~\\&|RIS|RBL|MSCCHUB|REN|20240301170000||ORU^R01^ORU_R01|ORU0001|P|2.5.1",
    pid(),
    seg("ORC", {1: "RE", 2: "ORD555^EPR", 3: "RIS777^RIS", 5: "CM"}),
    seg(
        "OBR",
        {
            1: "1",
            2: "ORD555^EPR",
            3: "RIS777^RIS",
            4: "MRWSP^MRI whole spine^L",
            7: "20240301150000",
            22: "20240301170000",
            24: "RAD",
            25: "F",
        },
    ),
    obx(1, "TX", "REP^Report^L", "Cord compression at T10."),
    obx(2, "TX", "REP^Report^L", "No other lesions."),
    obx(3, "NM", "SIZE^Lesion size^L", "12"),
)


def test_orm_imaging_order() -> None:
    # ORC/OBR -> ServiceRequest with placer and group numbers, priority from OBR-27, orderer with ODS
    result = map_hl7v2(ORM)
    request = next(r for r in result.resources if r["resourceType"] == "ServiceRequest")
    assert [(i["value"], i["type"]["coding"][0]["code"]) for i in request["identifier"]] == [
        ("ORD555", "PLAC"),
        ("GRP1", "PGN"),
    ]
    assert (request["status"], request["priority"]) == ("active", "stat")
    assert request["code"]["coding"][0]["code"] == "MRWSP"
    assert request["reasonCode"][0]["coding"][0]["code"] == "MSCC"
    assert request["note"] == [{"text": "Urgent: suspected cord compression"}]
    role = request["contained"][0]
    assert role["organization"]["identifier"] == {"system": ODS_ORGANIZATION_SYSTEM, "value": "RBL"}
    assert request["encounter"]["reference"].startswith("Encounter/")
    validate(request)


def test_oru_report_completes_the_order() -> None:
    # the report is based on the order's id (same placer number), final -> the order is completed
    order = next(r for r in map_hl7v2(ORM).resources if r["resourceType"] == "ServiceRequest")
    result = map_hl7v2(ORU)
    report = by_type(result, "DiagnosticReport")[0]
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{order['id']}"}]
    assert report["status"] == "final"
    assert report["conclusion"] == "Cord compression at T10.\nNo other lesions."
    assert report["issued"] == "2024-03-01T17:00:00+00:00"
    assert report["category"][0]["coding"][0]["code"] == "RAD"
    completed = patched(result, "ServiceRequest", order)
    assert completed["status"] == "completed"
    assert completed["note"] == order["note"] and completed["requester"] == order["requester"]
    assert {i["value"] for i in completed["identifier"]} == {"ORD555", "GRP1", "RIS777"}
    assert "OBX[3]" in result.unmapped  # a numeric OBX is not report text
    validate(report)


def test_preliminary_report_leaves_the_order_open() -> None:
    # OBR-25 P: preliminary report, the order keeps its status
    order = next(r for r in map_hl7v2(ORM).resources if r["resourceType"] == "ServiceRequest")
    result = map_hl7v2(ORU.replace("|RAD|F", "|RAD|P"))
    assert by_type(result, "DiagnosticReport")[0]["status"] == "preliminary"
    assert patched(result, "ServiceRequest", order)["status"] == "active"


# --- merges -----------------------------------------------------------------------------------------


def test_a40_merge_patches_the_old_patient() -> None:
    # survivor "replaces" the old record; the old one is kept, inactive, "replaced-by" (never deleted)
    text = message(
        msh("ADT^A40^ADT_A39"),
        seg("EVN", {1: "A40", 2: "20240301101500"}),
        pid(),
        seg("MRG", {1: "RBL999999^^^RBL^MR"}),
    )
    result = map_hl7v2(text)
    survivor = by_type(result, "Patient")[0]
    (patch,) = result.patches
    assert survivor["link"] == [{"other": {"reference": f"Patient/{patch.resource_id}"}, "type": "replaces"}]
    fresh = patch.apply(None)
    assert fresh["active"] is False and fresh["identifier"][0]["value"] == "RBL999999"
    existing = {"resourceType": "Patient", "id": patch.resource_id, "name": [{"family": "OLD"}], "active": True}
    merged = patch.apply(existing)
    assert merged["name"] == [{"family": "OLD"}] and merged["active"] is False
    assert merged["link"] == [{"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}]
    validate(merged)


def test_a40_within_one_patient_changes_nothing() -> None:
    # MRG names the same NHS number: both records are one Patient resource; no patch, an information
    text = message(msh("ADT^A40^ADT_A39"), pid(), seg("MRG", {1: f"{NHS}^^^NHS^NH"}))
    result = map_hl7v2(text)
    assert result.patches == [] and "link" not in by_type(result, "Patient")[0]


# --- message level ----------------------------------------------------------------------------------


def test_unmapped_segments_and_fields_are_listed() -> None:
    # IN1 and the Z-segment were not read; PID-16 (marital status) is a field nobody maps
    result = map_hl7v2(ref())
    assert {"IN1[1]", "ZU1[1]"} <= set(result.unmapped)
    with_marital = map_hl7v2(adt("A01", pid({16: "M"}), PV1))
    assert "PID-16" in with_marital.unmapped and "PID-5" not in with_marital.unmapped


def test_z_segments_by_configuration() -> None:
    # one sender's ZU1 is noted on the referral; another's ignored (and said so), never silently
    noted = map_hl7v2(ref(), MappingConfig(default=SenderConfig(z_segments={"ZU1": "note"})))
    assert "ZU1[1]" not in noted.unmapped
    assert referral_of(noted)["note"][-1] == {"text": "ZU1: 1 | local stuff"}
    ignored = map_hl7v2(ref(), MappingConfig(default=SenderConfig(z_segments={"ZU1": "ignore"})))
    assert "ZU1[1]" not in ignored.unmapped
    assert any("ZU1[1] ignored" in i["diagnostics"] for i in ignored.issues)


@pytest.mark.parametrize("separator", ["\r\n", "\n"])
def test_crlf_and_lf_separators(separator: str) -> None:
    # senders end segments with CR LF or LF: the same resources as with CR
    assert map_hl7v2(ref()).resources == map_hl7v2(ref().replace("\r", separator)).resources


def test_replay_is_deterministic() -> None:
    # the same message mapped twice: identical resources, patches, unmapped list and issues
    one, two = map_hl7v2(ref()), map_hl7v2(ref())
    assert one.resources == two.resources
    assert [(p.resource_type, p.resource_id, p.apply(None)) for p in one.patches] == [
        (p.resource_type, p.resource_id, p.apply(None)) for p in two.patches
    ]
    assert (one.unmapped, one.issues, one.source_time) == (two.unmapped, two.issues, two.source_time)


def test_source_time_is_timezone_aware() -> None:
    # naive MSH-7 is read as Europe/London (BST in July); an explicit offset is kept
    assert map_hl7v2(ref(when="20240701101500")).source_time == datetime(2024, 7, 1, 9, 15, tzinfo=UTC)
    assert map_hl7v2(ref(when="20240301101500+0200")).source_time == datetime(2024, 3, 1, 8, 15, tzinfo=UTC)


def test_unsupported_type_names_itself() -> None:
    # SIU is not mapped: MappingError not-supported naming the type
    with pytest.raises(MappingError) as caught:
        map_hl7v2(message(msh("SIU^S12^SIU_S12"), pid()))
    assert caught.value.issues[0]["code"] == "not-supported" and "SIU^S12" in str(caught.value)


def test_versions() -> None:
    # 2.2 is refused; 2.8 is read with an information issue; an empty version with a warning
    with pytest.raises(MappingError) as caught:
        map_hl7v2(adt("A01", pid(), PV1).replace("|P|2.4", "|P|2.2"))
    assert caught.value.issues[0]["code"] == "not-supported"
    newer = map_hl7v2(adt("A01", pid(), PV1).replace("|P|2.4", "|P|2.8"))
    assert any(i["severity"] == "information" and "2.8" in i["diagnostics"] for i in newer.issues)
    empty = map_hl7v2(adt("A01", pid(), PV1).replace("|P|2.4", "|P|"))
    assert any(i["expression"] == ["MSH-12"] and i["severity"] == "warning" for i in empty.issues)


def test_not_a_message() -> None:
    # text without MSH: MappingError structure
    with pytest.raises(MappingError) as caught:
        map_hl7v2("PID|1||123")
    assert caught.value.issues[0]["code"] == "structure"


def test_adt_trigger_from_evn_when_msh9_has_none() -> None:
    # v2.3 senders that put the trigger only in EVN-1
    text = message(msh("ADT"), seg("EVN", {1: "A03", 2: "20240301101500"}), pid(), PV1)
    assert by_type(map_hl7v2(text), "Encounter")[0]["status"] == "finished"


def test_code_tables_are_documented_data() -> None:
    # every table file has its _source note
    folder = Path(code_tables.__file__).parent.parent / "tables"
    for path in folder.glob("*.json"):
        assert json.loads(path.read_text(encoding="utf-8")).get("_source"), path.name


def test_config_from_dict() -> None:
    # sender entries override the defaults key by key; unknown keys fail loudly
    config = MappingConfig.from_dict(
        {"default": {"z_segments": {"ZU1": "ignore"}}, "senders": {"RBL": {"nhs_number_location": "PID-2"}}}
    )
    sender = config.for_sender("RBL")
    assert sender.nhs_number_location == "PID-2" and sender.z_segments == {"ZU1": "ignore"}
    assert config.for_sender("RXX").nhs_number_location == "PID-3"
    with pytest.raises(ValueError):
        MappingConfig.from_dict({"senders": {"RBL": {"nhs_location": "PID-2"}}})
    with pytest.raises(ValueError):
        MappingConfig.from_dict({"default": {"z_segments": {"PID": "note"}}})


# --- the corpus -------------------------------------------------------------------------------------

MANIFEST: list[dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text(encoding="utf-8"))
ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252")


def _messages(data: bytes) -> list[bytes]:
    """Each MSH up to the next, batch and file envelopes (FHS/BHS/BTS/FTS) left out."""
    out: list[bytes] = []
    for chunk in split_message_log(data):
        current: list[Any] | None = None
        for span in segment_spans(chunk):
            name = chunk[span.start : span.start + 3]
            if name == b"MSH":
                current = [span]
                out.append(b"")
            elif name in ENVELOPE:
                current = None
            elif current is not None:
                current.append(span)
            if current is not None:
                out[-1] = chunk[current[0].start : current[-1].end]
    return out


def corpus_messages(entry: dict[str, Any]) -> list[str]:
    """The messages of a manifest entry that intake accepts (expected ack not AR)."""
    data = (CORPUS / entry["path"]).read_bytes()
    if entry["kind"] == "mllp_stream":
        units = [e.data for e in FrameDecoder(1 << 24).feed(data) if isinstance(e, Frame)]
    elif entry["kind"] in ("loose_file", "batch"):
        units = [data]
    else:
        units = [data] if (entry.get("expect") or {}).get("ack") != "AR" else []
    acks = [e.get("ack") for e in entry.get("expect_each") or []]
    found: list[str] = []
    for number, unit in enumerate(units):
        messages = _messages(unit) if entry["kind"] != "message" else [unit]
        for index, text in enumerate(messages):
            position = number if entry["kind"] == "mllp_stream" else index
            if position < len(acks) and acks[position] != "AA":
                continue
            found.append(_decode(text))
    return found


def _message_type(text: str) -> str:
    header = parse_message(text).segments[0]
    kind = header.components(9)
    return "^".join(kind[:2]).upper() if len(kind) > 1 else (kind[0].upper() if kind else "")


@pytest.mark.parametrize("entry", [pytest.param(e, id=e["path"]) for e in MANIFEST if e["kind"] != "not_message"])
def test_corpus_message_maps_or_is_refused(entry: dict[str, Any]) -> None:
    # every accepted corpus message: supported types map and validate, others are not-supported
    for text in corpus_messages(entry):
        try:
            result = map_hl7v2(text)
        except MappingError as exc:
            code = exc.issues[0]["code"]
            if code == "not-supported":
                kind = _message_type(text)
                assert kind not in MESSAGES or "version" in str(exc)
                assert kind.split("^")[0] in str(exc) or "version" in str(exc)
            else:
                # no type, or no PID to attach resources to: a permanent, explained failure
                assert code == "required", exc
            continue
        assert result.resources, entry["path"]
        for resource in all_content(result):
            validate(resource)


def test_damaged_messages_map_or_fail_cleanly() -> None:
    # every truncation and every one-character deletion of a referral: a valid result or a MappingError
    base = ref()
    for cut in range(0, len(base), 3):
        for text in (base[:cut], base[:cut] + base[cut + 1 :]):
            try:
                result = map_hl7v2(text)
            except MappingError:
                continue
            for resource in all_content(result):
                validate(resource)
