"""HL7v2 identifiers longer than an index key can be: refused before the ACK, as on the FHIR side.

Over real MLLP and HTTP against a real mongod: a message whose identifier would be over
``MAX_KEY_BYTES`` once mapped is answered AR naming the field and the limit, kept as rejected with the
reason (and reprocessable); one just under is acknowledged and mapped. And the list of fields intake
looks at (``shared/hl7_identifiers.py``) is checked against what the mapper makes from messages in
which every component holds a mark naming its place: every identifier value it produces comes from a
listed component, and every listed component gives one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from helpers import mllp_reply

from services.intake.reprocess import plan
from services.intake.service import IntakeService
from services.mapper.hl7 import map_hl7v2
from services.mapper.service import MapperService
from shared.er7 import DEFAULT_SEPARATORS, segment_spans
from shared.hl7_identifiers import IDENTIFIER_COMPONENTS, long_identifier
from shared.ids import MAX_KEY_BYTES
from shared.messages import MessageRecord
from shared.nhs import looks_like_ods_code
from shared.store import Store

NHS = "9449305552"


def referral(control_id: str, *, pid3: str = "RBL123", visit: str = "V1", rf1_6: str = "RBL-REF-77") -> bytes:
    """A REF^I12 as a trust sends it: referrer and referred-to providers, the patient, the visit."""
    lines = [
        f"MSH|^~\\&|WIRRAL-PAS|RBL|MSCC-HUB|REN|20260301101500||REF^I12^REF_I12|{control_id}|P|2.5",
        f"RF1|A^Accepted|S^STAT|MSCC^Metastatic spinal cord compression||R^Referral|{rf1_6}|20260301|||Suspected MSCC",
        "PRD|RP|JONES^SARAH^^^DR|^^^RBL^^^^^Clatterbridge Oncology|||C1234567^GMC",
        "PRD|RT|SPINAL^TEAM|^^^REN^^^^^Walton Centre",
        f"PID|1||{NHS}^^^NHS^NH~{pid3}^^^RBL^MR||DEMO^ALEX||19580214|M|||1 HIGH ST^^LIVERPOOL^^L1 1AA",
        "|".join(["PV1", "1", "I", "WARD1^BED2^^RBL", "", "", "", "C1234567^JONES^SARAH", *[""] * 11, visit])
        + "|" * 25
        + "20260301080000",
        "DG1|1||C795^Secondary malignant neoplasm of bone^I10||20260301|F",
        "OBX|1|ST|NEURO^Neurological status||Bilateral leg weakness||||||F",
    ]
    return ("\r".join(lines) + "\r").encode()


def msa(reply: bytes) -> list[str]:
    return next(s for s in reply.split(b"\r") if s.startswith(b"MSA")).decode().split("|")


def err(reply: bytes) -> list[str]:
    return next(s for s in reply.split(b"\r") if s.startswith(b"ERR")).decode("latin-1").split("|")


async def rejected(store: Store) -> list[dict[str, Any]]:
    return await store.messages.find({"status": "rejected"}).to_list()


def assert_refused_at(reply: bytes, segment: str, number: int, size: int) -> None:
    assert msa(reply)[1] == "AR", reply
    fields = err(reply)
    assert fields[2] == f"{segment}^1^{number}" and fields[3].startswith("102^"), fields
    assert f"{segment}-{number}" in fields[8] and f"{size} bytes" in fields[8] and f"{MAX_KEY_BYTES} bytes" in fields[8]


# --- over MLLP and HTTP ---------------------------------------------------------------------------------


async def test_a_1500_byte_patient_identifier_is_refused_naming_the_field_and_kept(
    intake: IntakeService, store: Store
) -> None:
    message = referral("LONG-PID", pid3="P" * 1500)
    reply = await mllp_reply(intake, message)
    assert_refused_at(reply, "PID", 3, 1500)
    assert "PID-3" in msa(reply)[3]  # MSA-3 too, before v2.7
    [kept] = await rejected(store)
    assert kept["raw"] == message
    assert "PID-3" in kept["reason"] and "1500 bytes" in kept["reason"] and f"{MAX_KEY_BYTES} bytes" in kept["reason"]
    assert kept["issues"][0]["location"] == "PID-3" and kept["issues"][0]["code"] == 102
    assert plan(MessageRecord.from_doc(kept)).action == "intake"  # reprocessable, like every refusal
    assert await store.messages.count_documents({"status": "ready"}) == 0


async def test_a_500_byte_identifier_is_accepted_and_mapped(intake: IntakeService, store: Store) -> None:
    local = "P" * 500
    reply = await mllp_reply(intake, referral("OK-PID", pid3=local, visit="V" * 500))
    assert msa(reply)[1] == "AA", reply
    await MapperService(intake.store).run(asyncio.Event(), burst=True)
    [record] = await store.messages.find({}).to_list()
    assert record["status"] == "mapped", record.get("processing")
    patient = await store.resources.find_one({"type": "Patient", "resource.identifier.value": local})
    assert patient is not None and NHS in [i["value"] for i in patient["resource"]["identifier"]]
    assert await store.resources.find_one({"type": "Encounter", "resource.identifier.value": "V" * 500})


@pytest.mark.parametrize(
    ("message", "segment", "number", "size"),
    [
        (referral("LONG-VN", visit="V" * 1500), "PV1", 19, 1500),
        (referral("LONG-REF", rf1_6="R" * 600), "RF1", 6, 600),
    ],
)
async def test_a_long_visit_number_or_referral_id_is_refused(
    message: bytes, segment: str, number: int, size: int, intake: IntakeService, store: Store
) -> None:
    reply = await mllp_reply(intake, message)
    assert_refused_at(reply, segment, number, size)
    [kept] = await rejected(store)
    assert kept["raw"] == message and f"{segment}-{number}" in kept["reason"]


async def test_over_http_the_same_refusal(http: httpx.AsyncClient, store: Store) -> None:
    message = referral("LONG-HTTP", visit="V" * 1500)
    response = await http.post("/hl7v2", content=message, headers={"Content-Type": "application/hl7-v2"})
    assert response.status_code == 200 and response.headers["X-Ack-Code"] == "AR"
    assert_refused_at(response.content, "PV1", 19, 1500)
    [kept] = await rejected(store)
    assert kept["raw"] == message


async def test_the_size_is_of_utf8_after_decoding(intake: IntakeService, store: Store) -> None:
    # 300 bytes of ISO 8859-1 (MSH-18) are 600 bytes of UTF-8, as the identifier would be stored: refused.
    latin = referral("LATIN", pid3="\u00e9" * 300).replace(b"|P|2.5", b"|P|2.5||||||8859/1").decode()
    reply = await mllp_reply(intake, latin.encode("latin-1"))
    assert_refused_at(reply, "PID", 3, 600)
    [kept] = await rejected(store)
    assert kept["header"]["charset"] == "8859/1"


def test_the_size_is_measured_after_unescaping_and_in_every_repetition() -> None:
    seps = DEFAULT_SEPARATORS
    escaped = "\\X41\\" * 200  # 1,000 bytes that unescape to 200
    for pid3, found in [(escaped, None), (f"OK~{'A' * 513}", (2, 513)), (f"{'A' * 512}^^^RBL", None)]:
        data = f"MSH|^~\\&|A|RBL|B|REN|20260101||ADT^A01|1|P|2.5\rPID|1||{pid3}\r".encode()
        long = long_identifier(data, segment_spans(data), seps, "utf-8")
        assert (None if long is None else (long.repetition, long.size)) == found, pid3


# --- the fields intake looks at are the ones the mapper makes identifiers of --------------------------

Fields = dict[int, dict[int, str] | str]  # a segment's fields: a string, or components by number
Omitted = frozenset[tuple[str, int]]  # (segment, field) left empty
FIELDS, COMPONENTS = 60, 14  # more than any segment mapped has (PV1: 52; XCN: 13 components used)
MARK = re.compile(r"X([A-Z][A-Z0-9]{2})-(\d+)\.(\d+)")
# The mapper reads some fields only when another is empty (XON.3 without XON.10; OBR-2 without ORC-2;
# OBR-16 without ORC-12; PRD-4 without PRD-10): each variant leaves out the ones that hide the others.
VARIANTS: tuple[Omitted, ...] = (
    frozenset(),
    frozenset({("ORC", 2), ("ORC", 3), ("ORC", 12)}),
    frozenset({("PRD", 10)}),
    frozenset({("XON", 10)}),
)


def segment(name: str, given: Fields, omit: Omitted) -> str:
    """One segment in which every field and component not ``given`` holds a mark naming where it is
    (``XPID-3.1``, its subcomponents ``...&XPID-3.1s2&...``), whether or not the list names it: an
    identifier the mapper makes from any other place shows up. A given string stays as it is (a code,
    a date); given components are kept and the rest of the field marked. Fields in ``omit`` are empty,
    and so are the XON.10 components when XON.3 is looked for (``("XON", 10)`` in ``omit``)."""

    def component(number: int, index: int) -> str:
        if ("XON", 10) in omit and index == 10:
            return ""
        mark = f"X{name}-{number}.{index}"
        return "&".join([mark, f"{mark}s2", f"{mark}s3"])

    def field(number: int) -> str:
        value = given.get(number, {})
        if (name, number) in omit:
            return ""
        if isinstance(value, str):
            return value
        return "^".join(value[i] if i in value else component(number, i) for i in range(1, COMPONENTS + 1))

    return "|".join([name, *(field(n) for n in range(1, FIELDS + 1))])


def messages(omit: Omitted) -> Iterator[str]:
    """Every message type the mapper reads identifiers from, every segment it reads fully valued."""

    def build(kind: str, *segments: tuple[str, Fields]) -> str:
        msh = f"MSH|^~\\&|PAS|RBL|MSCC-HUB|REN|20260301101500||{kind}|C-{kind[4:7]}|P|2.5"
        return "\r".join([msh, *(segment(name, fields, omit) for name, fields in segments)]) + "\r"

    coded = {3: "I10", 9: ""}  # a code's system, no original text
    parts: dict[str, Fields] = {
        "EVN": {1: "A01", 2: "20260301101500", 6: "20260301101500"},
        "PID": {1: "1", 7: "19580214", 8: "M", 29: "", 30: "N", 32: ""},
        "PD1": {},
        "PV1": {1: "1", 2: "I", 44: "20260301080000", 45: ""},
        "PV2": {},
        "RF1": {1: "A", 2: "S", 7: "20260301"},
        "DG1": {1: "1", 3: {1: "C795", 2: "Bone metastases", **coded}, 5: "20260301", 6: "F"},
        "PR1": {1: "1", 3: {1: "X67", 2: "Radiotherapy", **coded}, 5: "20251201"},
        "AL1": {1: "1", 2: "DA", 3: {1: "PEN", 2: "Penicillin", **coded}, 4: "MO", 6: "20200101"},
        "ORC": {1: "NW", 5: "SC", 7: "", 9: "20260301"},
        "OBR": {1: "1", 7: "20260301", 22: "20260302101500+0000", 25: "F", 27: ""},
        "OBX": {1: "1", 2: "TX", 5: "Report text", 11: "F", 14: "20260301"},
        "MRG": {},
        "NTE": {1: "1", 6: "20260301"},
    }
    pid, pd1, pv1, pv2, rf1, dg1, pr1, al1, orc, obr, obx, mrg, nte = (
        (name, parts[name]) for name in parts if name != "EVN"
    )
    evn = ("EVN", parts["EVN"])
    prds: list[tuple[str, Fields]] = [("PRD", {1: role}) for role in ("RP", "RT")]
    yield build("REF^I12^REF_I12", pid, pd1, pv1, pv2, rf1, *prds, dg1, nte, pr1, al1, obx, nte)
    yield build("ADT^A01", evn, pid, pd1, pv1, pv2, dg1, pr1, al1)
    yield build("ADT^A40", evn, pid, mrg)
    yield build("ORM^O01", pid, pd1, pv1, orc, obr, dg1, nte)
    yield build("ORU^R01", pid, pv1, orc, obr, obx, nte)


def identifier_values(node: Any) -> Iterator[str]:
    """Every ``identifier.value`` in a resource, at any depth (references, contained resources)."""
    if isinstance(node, dict):
        ident = node.get("identifier")
        for item in ident if isinstance(ident, list) else [ident]:
            if isinstance(item, dict) and isinstance(item.get("value"), str):
                yield item["value"]
        for value in node.values():
            yield from identifier_values(value)
    elif isinstance(node, list):
        for value in node:
            yield from identifier_values(value)


def test_every_identifier_the_mapper_makes_comes_from_a_listed_component_and_each_gives_one() -> None:
    listed = {(name, number, component) for name, pairs in IDENTIFIER_COMPONENTS.items() for number, component in pairs}
    seen: set[tuple[str, int, int]] = set()
    others: set[str] = set()
    for omit in VARIANTS:
        for text in messages(omit):
            result = map_hl7v2(text)
            outputs = [*result.resources, *(patch.apply(None) for patch in result.patches)]
            for value in identifier_values(outputs):
                mark = MARK.fullmatch(value)
                if mark:
                    seen.add((mark.group(1), int(mark.group(2)), int(mark.group(3))))
                else:
                    others.add(value)
    assert seen - listed == set(), "identifiers from components intake does not check"
    assert listed - seen == set(), "components listed that the mapper makes no identifier of"
    # Anything else is an ODS code (a few characters: its shape, or configuration), never sender text.
    assert others and all(looks_like_ods_code(v) for v in others), others
