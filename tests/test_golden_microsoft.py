"""Golden comparison with Microsoft FHIR-Converter's expected output for the same HL7v2 samples.

For every sample in tests/corpus/microsoft-fhir-converter/hl7v2 that has ``<name>-expected.json`` (a
batch Bundle) in expected-fhir, our Patient, Encounter (from PV1) and ServiceRequests are compared with
theirs on the fields both produce: identifiers (values only: our systems differ on purpose), names,
birthDate, gender, address (line/city/postalCode), encounter class/status/period, request
status/priority/requester. A list field is compared element by element over both sides' elements; a
field only one side produces is not compared (it is counted as a difference in kind, not in value).

The table (``pytest -s`` prints it; it is also in the failure message) gives agreeing / total
comparisons per file and overall. The test fails when the overall agreement drops below ``FLOOR``,
the figure reached when the mapping was written, rounded down. Deliberate differences are listed in
docs/mapping.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from services.mapper.hl7 import map_hl7v2
from services.mapper.model import MappingError, MappingResult
from services.pathway.plan import ASSESSMENT_NAMESPACE
from shared.ids import resource_id

CORPUS = Path(__file__).parent / "corpus" / "microsoft-fhir-converter"
FLOOR = 70  # percent, overall: 70.1% when written (324 of 462 comparisons), rounded down

Resource = dict[str, Any]


@dataclass
class Tally:
    """Comparisons of one file: (resource.field, theirs, ours, agreed)."""

    rows: list[tuple[str, Any, Any, bool]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def scalar(self, name: str, theirs: Any, ours: Any, same: Callable[[Any, Any], bool] | None = None) -> None:
        if theirs in (None, "", [], {}) or ours in (None, "", [], {}):
            return
        agreed = same(theirs, ours) if same else theirs == ours
        self.rows.append((name, theirs, ours, agreed))

    def elements(self, name: str, theirs: Iterable[Any], ours: Iterable[Any]) -> None:
        left, right = set(theirs), set(ours)
        if not left or not right:
            return
        for item in sorted(left | right, key=repr):
            self.rows.append(
                (name, item if item in left else None, item if item in right else None, item in left and item in right)
            )

    @property
    def agreed(self) -> int:
        return sum(1 for row in self.rows if row[3])


def _text(value: Any) -> str:
    return " ".join(str(value or "").upper().split())


def _instant(value: str) -> Any:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")) if "T" in value else value
    except ValueError:
        return value


def identifier_values(resource: Resource) -> set[str]:
    return {_text(i.get("value")) for i in resource.get("identifier", []) if str(i.get("value") or "").strip()}


def names(resource: Resource) -> set[tuple[str, ...]]:
    return {(_text(n.get("family")), *(_text(g) for g in n.get("given", []))) for n in resource.get("name", [])}


def addresses(resource: Resource) -> set[tuple[str, ...]]:
    """(all lines as one text, city, postalCode): how a street is split into lines is presentation."""
    found = {
        (_text(" ".join(a.get("line", []))), _text(a.get("city")), _text(a.get("postalCode")))
        for a in resource.get("address", [])
    }
    return {a for a in found if any(a)}


def compare_patient(tally: Tally, theirs: Resource, ours: Resource) -> None:
    tally.elements("Patient.identifier", identifier_values(theirs), identifier_values(ours))
    tally.elements("Patient.name", names(theirs), names(ours))
    tally.scalar("Patient.birthDate", theirs.get("birthDate"), ours.get("birthDate"))
    tally.scalar("Patient.gender", theirs.get("gender"), ours.get("gender"))
    tally.elements("Patient.address", addresses(theirs), addresses(ours))


def compare_encounter(tally: Tally, theirs: Resource, ours: Resource) -> None:
    tally.elements("Encounter.identifier", identifier_values(theirs), identifier_values(ours))
    tally.scalar("Encounter.class", theirs.get("class", {}).get("code"), ours.get("class", {}).get("code"))
    tally.scalar("Encounter.status", theirs.get("status"), ours.get("status"))
    for end in ("start", "end"):
        mine, other = ours.get("period", {}).get(end), theirs.get("period", {}).get(end)
        tally.scalar(f"Encounter.period.{end}", other, mine, lambda a, b: _instant(a) == _instant(b))


def _requester_names(request: Resource, bundle: dict[str, Resource]) -> str:
    """Their requester (PractitionerRole -> Practitioner) as the practitioner's family name."""
    target = bundle.get(str(request.get("requester", {}).get("reference", "")))
    if target and target["resourceType"] == "PractitionerRole":
        target = bundle.get(str(target.get("practitioner", {}).get("reference", "")))
    if not target:
        return ""
    return " ".join(_text(n.get("family")) for n in target.get("name", []))


def _our_requester(request: Resource) -> str:
    requester = request.get("requester", {})
    reference = str(requester.get("reference", ""))
    for contained in request.get("contained", []):
        if reference == f"#{contained['id']}":
            requester = contained.get("practitioner", {})
    return _text(requester.get("display"))


def compare_request(tally: Tally, theirs: Resource, ours: Resource, bundle: dict[str, Resource]) -> None:
    tally.elements("ServiceRequest.identifier", identifier_values(theirs), identifier_values(ours))
    tally.scalar("ServiceRequest.status", theirs.get("status"), ours.get("status"))
    tally.scalar("ServiceRequest.priority", theirs.get("priority"), ours.get("priority"))
    family = _requester_names(theirs, bundle)
    tally.scalar("ServiceRequest.requester", family, _our_requester(ours), lambda a, b: a in b)


def _theirs(name: str) -> tuple[dict[str, list[Resource]], dict[str, Resource]]:
    bundle = json.loads((CORPUS / "expected-fhir" / f"{name}-expected.json").read_text(encoding="utf-8"))
    by_type: dict[str, list[Resource]] = {}
    by_ref: dict[str, Resource] = {}
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        by_type.setdefault(resource["resourceType"], []).append(resource)
        by_ref[f"{resource['resourceType']}/{resource.get('id')}"] = resource
    return by_type, by_ref


def _ours(result: MappingResult) -> dict[str, list[Resource]]:
    produced = [*result.resources, *(patch.apply(None) for patch in result.patches)]
    by_type: dict[str, list[Resource]] = {}
    for resource in produced:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    return by_type


def _visit_encounters(ours: dict[str, list[Resource]]) -> list[Resource]:
    """Our PV1 encounters (not the MSCC assessment episode, which Microsoft has no counterpart for)."""
    return [
        e
        for e in ours.get("Encounter", [])
        if not any(
            b.get("reference", "").startswith("ServiceRequest/")
            and e["id"] == resource_id("Encounter", ASSESSMENT_NAMESPACE, b["reference"].split("/", 1)[1])
            for b in e.get("basedOn", [])
        )
    ]


def compare_file(name: str) -> Tally:
    tally = Tally()
    text = (CORPUS / "hl7v2" / f"{name}.hl7").read_bytes().decode("utf-8-sig")
    try:
        result = map_hl7v2(text)
    except MappingError as exc:
        tally.notes.append(f"not mapped: {str(exc).split(' (supported', 1)[0]}")
        return tally
    theirs, refs = _theirs(name)
    ours = _ours(result)
    if theirs.get("Patient") and ours.get("Patient"):
        compare_patient(tally, theirs["Patient"][0], ours["Patient"][0])
    visits = _visit_encounters(ours)
    if theirs.get("Encounter") and visits:
        compare_encounter(tally, theirs["Encounter"][0], visits[0])
    for mine in ours.get("ServiceRequest", []):
        match = next(
            (t for t in theirs.get("ServiceRequest", []) if identifier_values(t) & identifier_values(mine)), None
        )
        if match is not None:
            compare_request(tally, match, mine, refs)
    for kind in ("Patient", "Encounter", "ServiceRequest"):
        missing = len(theirs.get(kind, [])) - len(visits if kind == "Encounter" else ours.get(kind, []))
        if missing > 0:
            tally.notes.append(f"{missing} {kind} only in theirs")
    return tally


def golden_files() -> list[str]:
    return sorted(
        path.name.removesuffix("-expected.json")
        for path in (CORPUS / "expected-fhir").glob("*-expected.json")
        if (CORPUS / "hl7v2" / f"{path.name.removesuffix('-expected.json')}.hl7").exists()
    )


def agreement_table(results: dict[str, Tally]) -> tuple[str, float]:
    lines = [f"{'file':<40} {'agree':>6} {'total':>6} {'%':>6}  notes", "-" * 100]
    agreed = total = 0
    for name, tally in results.items():
        share = f"{100 * tally.agreed / len(tally.rows):.1f}" if tally.rows else "-"
        lines.append(f"{name:<40} {tally.agreed:>6} {len(tally.rows):>6} {share:>6}  {'; '.join(tally.notes)}")
        agreed += tally.agreed
        total += len(tally.rows)
    overall = 100 * agreed / total if total else 0.0
    lines += ["-" * 100, f"{'overall':<40} {agreed:>6} {total:>6} {overall:>6.1f}"]
    disagreements = [
        f"  {name}: {row[0]} theirs={row[1]!r} ours={row[2]!r}"
        for name, tally in results.items()
        for row in tally.rows
        if not row[3]
    ]
    return "\n".join([*lines, "", "disagreements:", *disagreements]), overall


def test_golden_agreement_with_microsoft() -> None:
    results = {name: compare_file(name) for name in golden_files()}
    table, overall = agreement_table(results)
    print("\n" + table)
    assert results, "no golden files found"
    assert overall >= FLOOR, f"overall agreement {overall:.1f}% is below the floor {FLOOR}%\n{table}"
