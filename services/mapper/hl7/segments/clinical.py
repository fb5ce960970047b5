"""The clinical content that decides treatment: AL1 -> AllergyIntolerance, PR1 -> Procedure, DG1 -> Condition.

One function per segment, as in the other modules of ``segments/``; each returns a UK Core resource
(or None when the segment names nothing) and marks what it read. ``clinical_content`` maps every AL1,
PR1 and DG1 of a message (or of a patient group) at once, with the NTEs that follow each segment as
its notes.

Ids are deterministic, so a resend or a REF^I13 converges on the same resources:
- the sender's own identifier when there is one (DG1-20, PR1-19: EI, named the same way as every
  other local identifier, so scoped by the sending trust);
- otherwise the patient and what the resource is about: the allergen (AL1-3), the diagnosis (DG1-3,
  else DG1-4), the procedure (PR1-3, else PR1-4) and its date (PR1-5). A code is compared by system
  and code, a text ignoring case and spacing. Two trusts reporting the same allergen of one patient
  (one NHS number) therefore describe one AllergyIntolerance: it is one fact about the patient.

Nothing here fails: a value that cannot be read is a warning on the context and is left out; an
AL1 that says "no known allergies" gives no AllergyIntolerance (an information issue says so).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from shared.ids import resource_id

from ...model import Resource
from .. import tables
from ..context import Context
from ..datatypes import Json
from ..datatypes.codes import cwe_concept
from ..datatypes.identifiers import ei_identifier
from ..datatypes.references import xcn_reference
from ..reader import Seg
from .common import id_from, profile
from .notes import note

ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_SPACES = re.compile(r"\s+")
CLINICAL_SEGMENTS = ("AL1", "PR1", "DG1")


def _coding(system: str, code: str, display: str | None = None) -> Json:
    return {"coding": [{"system": system, "code": code, **({"display": display} if display else {})}]}


@functools.cache
def _rules() -> dict[str, Any]:
    return tables.load("mscc-clinical")


@functools.cache
def _patterns(name: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in _rules()[name])


@functools.cache
def _procedure_categories() -> tuple[tuple[Json, tuple[re.Pattern[str], ...]], ...]:
    system = str(_rules()["procedure_category_system"])
    return tuple(
        (
            {"system": system, "code": row["code"], "display": row["display"]},
            tuple(re.compile(p, re.IGNORECASE) for p in row["patterns"]),
        )
        for row in _rules()["procedure_categories"]
    )


def _matches(patterns: tuple[re.Pattern[str], ...], texts: list[str]) -> bool:
    return any(p.search(t) for p in patterns for t in texts if t)


def _key(concept: Json) -> str:
    """What a concept is about, for an id: its first coding (system|code), else its text normalised."""
    codings = concept.get("coding") or []
    if codings:
        first = codings[0]
        return f"{first.get('system', '')}|{first['code']}"
    return _SPACES.sub(" ", str(concept.get("text", ""))).strip().casefold()


def _patient_scoped_id(resource_type: str, subject: Json, *parts: str) -> str:
    return resource_id(resource_type, f"urn:mscc:{resource_type}:{subject['reference']}", "|".join(parts))


def _described(concept: Json | None, description: str) -> tuple[Json | None, str | None]:
    """The concept with the sender's description as its text (kept even when a code is present); a
    different original text (CWE.9) is returned to be kept as a note rather than lost."""
    if not description:
        return concept, None
    if concept is None:
        return {"text": description}, None
    previous = concept.get("text")
    concept = {**concept, "text": description}
    return concept, (f"Coded text as sent: {previous}" if previous and previous != description else None)


def _notes(texts: list[str | None], ntes: list[Seg], ctx: Context) -> list[Json]:
    found: list[Json] = [{"text": t} for t in texts if t]
    found += [a for a in (note(n, ctx) for n in ntes) if a]
    return found


def _when(seg: Seg, number: int, ctx: Context) -> str | None:
    parsed = ctx.time(seg, number)
    return parsed.value if parsed else None


# --- AL1: allergies -----------------------------------------------------------------------------------


def _no_known_allergy(concept: Json | None) -> bool:
    if concept is None:
        return False
    texts = [str(concept.get("text", ""))] + [str(c.get("display", "")) for c in concept.get("coding", [])]
    texts += [str(c.get("code", "")) for c in concept.get("coding", [])]
    return _matches(_patterns("no_known_allergy_patterns"), texts)


def _severity(al1: Seg, ctx: Context) -> dict[str, str]:
    code = al1.value(4)
    entry = tables.lookup("v2-0128-allergy-severity", code)
    if code and not isinstance(entry, dict):
        ctx.warn(f"AL1-4 {code!r} is not in table 0128; severity left out", "AL1-4")
    return dict(entry) if isinstance(entry, dict) else {}


def _allergen_type(al1: Seg, ctx: Context) -> dict[str, str]:
    code = al1.value(2)
    entry = tables.lookup("v2-0127-allergen-type", code)
    if code and not isinstance(entry, dict):
        ctx.warn(f"AL1-2 {code!r} is not in table 0127; category left out", "AL1-2")
    return dict(entry) if isinstance(entry, dict) else {}


def allergy(al1: Seg, ctx: Context, subject: Json, ntes: list[Seg] | None = None) -> Resource | None:
    """AL1 -> UK Core AllergyIntolerance: code AL1-3, category/type AL1-2 (table 0127), severity AL1-4
    (table 0128) on the reaction and as criticality, reaction manifestations AL1-5 (text), onset AL1-6
    (identification date, as the v2-to-FHIR guide maps it). Clinical status active, verification
    unconfirmed (AL1 cannot say it was confirmed). A reaction or allergen reading as anaphylaxis makes
    the criticality high. None for an empty allergen or "no known allergies" (information issue)."""
    ctx.take(al1)
    code = cwe_concept(al1.composite(3))
    if code is None:
        ctx.warn("AL1-3 names no allergen: no AllergyIntolerance", "AL1-3")
        return None
    if _no_known_allergy(code):
        ctx.info("AL1 says no known allergies: no AllergyIntolerance is recorded for it", "AL1-3")
        return None
    kind, severity = _allergen_type(al1, ctx), _severity(al1, ctx)
    reactions = [r for r in (al1.text(5).split("\n") if al1.has(5) else []) if r.strip()]
    criticality = severity.get("criticality")
    anaphylaxis = [*reactions, str(code.get("text", "")), al1.composite(4).c(2)]
    if _matches(_patterns("anaphylaxis_patterns"), anaphylaxis):
        criticality = "high"
    reaction: Json = {"manifestation": [{"text": r.strip()} for r in reactions]}
    if severity.get("severity"):
        reaction["severity"] = severity["severity"]
    resource: Resource = {
        "resourceType": "AllergyIntolerance",
        "id": _patient_scoped_id("AllergyIntolerance", subject, _key(code)),
        "meta": profile("AllergyIntolerance"),
        "clinicalStatus": _coding(ALLERGY_CLINICAL, "active", "Active"),
        "verificationStatus": _coding(ALLERGY_VERIFICATION, "unconfirmed", "Unconfirmed"),
        "code": code,
        "patient": subject,
    }
    optional: dict[str, Any] = {
        "type": kind.get("type"),
        "category": [kind["category"]] if kind.get("category") else [],
        "criticality": criticality,
        "onsetDateTime": _when(al1, 6, ctx),
        # R4 requires a manifestation on every reaction: without AL1-5 the severity lives in criticality.
        "reaction": [reaction] if reactions else [],
        "note": _notes([], ntes or [], ctx),
    }
    resource.update({k: v for k, v in optional.items() if v})
    return resource


# --- PR1: procedures (prior radiotherapy) -------------------------------------------------------------


def _performers(pr1: Seg, ctx: Context) -> list[Json]:
    # PR1-11 surgeon, PR1-12 procedure practitioner (XCN, repeating).
    out: list[Json] = []
    for number, function in ((11, "Surgeon"), (12, "Procedure practitioner")):
        for xcn in pr1.composites(number):
            actor = xcn_reference(xcn, ctx.systems)
            if actor:
                out.append({"function": {"text": function}, "actor": actor})
    return out


def procedure(pr1: Seg, ctx: Context, subject: Json, ntes: list[Seg] | None = None) -> Resource | None:
    """PR1 -> UK Core Procedure (status completed): code PR1-3 with the description PR1-4 as its text,
    performed PR1-5, performers PR1-11/PR1-12, reason PR1-15, identifier PR1-19 (v2.6+), notes from the
    NTEs after it. PR1 has no dose or site field: where a sender writes them in PR1-4 or an NTE the text
    is kept as written. A radiotherapy procedure (tables/mscc-clinical.json patterns over its texts) gets
    the local category "radiotherapy". None when PR1 names no procedure."""
    ctx.take(pr1)
    code, other_text = _described(cwe_concept(pr1.composite(3)), pr1.text(4))
    if code is None:
        ctx.warn("PR1-3 and PR1-4 name no procedure: no Procedure", "PR1-3")
        return None
    performed = _when(pr1, 5, ctx)
    notes = _notes([other_text], ntes or [], ctx)
    ident = ei_identifier(pr1.composite(19), ctx.systems)
    texts = [str(code.get("text", "")), *(str(c.get("display", "")) for c in code.get("coding", []))]
    texts += [str(n["text"]) for n in notes]
    categories = [{"coding": [coding]} for coding, patterns in _procedure_categories() if _matches(patterns, texts)]
    rid = (
        id_from("Procedure", ident) if ident else _patient_scoped_id("Procedure", subject, _key(code), performed or "")
    )
    resource: Resource = {
        "resourceType": "Procedure",
        "id": rid,
        "meta": profile("Procedure"),
        "status": "completed",
        "code": code,
        "subject": subject,
    }
    optional: dict[str, Any] = {
        "identifier": [ident] if ident else [],
        "category": categories[0] if categories else None,
        "performedDateTime": performed,
        "performer": _performers(pr1, ctx),
        "reasonCode": [c for c in (cwe_concept(x) for x in pr1.composites(15)) if c],
        "note": notes,
    }
    resource.update({k: v for k, v in optional.items() if v})
    return resource


# --- DG1: diagnoses -----------------------------------------------------------------------------------


def _verification(dg1: Seg, ctx: Context) -> Json | None:
    code = dg1.value(6)
    status = tables.text("v2-0052-diagnosis-type", code)
    if code and status is None:
        ctx.warn(f"DG1-6 {code!r} is not in table 0052 (A, W, F); verification status left out", "DG1-6")
    return _coding(CONDITION_VERIFICATION, status, status.capitalize()) if status else None


def condition(dg1: Seg, ctx: Context, subject: Json, ntes: list[Seg] | None = None) -> Resource | None:
    """DG1 -> UK Core Condition (category encounter-diagnosis): code DG1-3 with the description DG1-4
    as its text (kept when a code is present), onset DG1-5 (as the v2-to-FHIR guide maps it),
    verificationStatus from DG1-6 (table 0052: F confirmed, W and A provisional, empty left out),
    identifier DG1-20. None when DG1 names no diagnosis."""
    ctx.take(dg1)
    code, other_text = _described(cwe_concept(dg1.composite(3)), dg1.text(4))
    if code is None:
        return None
    ident = ei_identifier(dg1.composite(20), ctx.systems)
    resource: Resource = {
        "resourceType": "Condition",
        "id": id_from("Condition", ident) if ident else _patient_scoped_id("Condition", subject, _key(code)),
        "meta": profile("Condition"),
        "category": [_coding(CONDITION_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis")],
        "code": code,
        "subject": subject,
    }
    optional: dict[str, Any] = {
        "identifier": [ident] if ident else [],
        "verificationStatus": _verification(dg1, ctx),
        "onsetDateTime": _when(dg1, 5, ctx),
        "note": _notes([other_text], ntes or [], ctx),
    }
    resource.update({k: v for k, v in optional.items() if v})
    return resource


# --- all of them ----------------------------------------------------------------------------------------


@dataclass
class Clinical:
    """The clinical resources of a message (or patient group), by kind, in message order."""

    allergies: list[Resource] = field(default_factory=list)
    procedures: list[Resource] = field(default_factory=list)
    conditions: list[Resource] = field(default_factory=list)

    @property
    def resources(self) -> list[Resource]:
        return _unique([*self.conditions, *self.allergies, *self.procedures])


def _unique(resources: list[Resource]) -> list[Resource]:
    # Two segments describing one thing (the same allergen twice) give one resource: the last wins,
    # as a later message would.
    by_key: dict[tuple[str, str], Resource] = {}
    for resource in resources:
        by_key[(resource["resourceType"], resource["id"])] = resource
    return list(by_key.values())


def _followed_by_notes(segs: list[Seg]) -> list[tuple[Seg, list[Seg]]]:
    """Each AL1, PR1 and DG1 with the NTEs directly after it."""
    out: list[tuple[Seg, list[Seg]]] = []
    owner: tuple[Seg, list[Seg]] | None = None
    for seg in segs:
        if seg.name in CLINICAL_SEGMENTS:
            owner = (seg, [])
            out.append(owner)
        elif seg.name == "NTE" and owner is not None:
            owner[1].append(seg)
        else:
            owner = None
    return out


def clinical_content(ctx: Context, subject: Json, segs: list[Seg]) -> Clinical:
    """Every AL1, PR1 and DG1 of ``segs`` not yet consumed, mapped."""
    functions = {"AL1": allergy, "PR1": procedure, "DG1": condition}
    found = Clinical()
    lists = {"AL1": found.allergies, "PR1": found.procedures, "DG1": found.conditions}
    for seg, ntes in _followed_by_notes(segs):
        if seg.index in ctx.consumed:
            continue
        resource = functions[seg.name](seg, ctx, subject, ntes)
        if resource is not None:
            lists[seg.name].append(resource)
    for name in lists:
        lists[name][:] = _unique(lists[name])
    return found
