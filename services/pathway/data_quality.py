"""Referral data quality: what the MSCC team needs to triage a referral, and the Task asking the referrer.

A referral without the minimum data is never refused or lost: it is mapped as usual, and a FHIR
``Task`` ("Complete referral data") tracks what is missing until a later message (REF^I13, a FHIR
update) supplies it. The items are data (``data/referral_minimum_data.json``); each names the rule below
that decides whether the referral has it. The rules read only the referral itself and its Patient (on
the HL7v2 route the Patient mapped from the same message; on the FHIR route the Patient its subject
refers to, stored or in the same Bundle, which the writer hands to the Task's patch, see
``referral_task_parts``), so the functions are pure and give the same answer on every route.

The Task (one per referral, id derived from the referral id):
- ``status`` "requested" while something is missing, "completed" when nothing is; "cancelled" when the
  referral is revoked, completed or entered in error with items still missing (nobody needs them now);
- ``input``: one entry per missing item, in plain words; ``description`` lists them on one line;
- ``focus`` and ``basedOn`` the referral (a ServiceRequest subscription filter reaches the Task through
  ``basedOn``), ``for`` its patient;
- ``owner`` the referring organisation (by ODS code), absent when the referral names none (that is
  itself a missing item); ``requester`` the MSCC service, so the MSCC team can follow every Task.

A referral that has everything gets a completed Task, never a notification: the check is on record.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.ids import resource_id
from shared.nhs import NHS_NUMBER_SYSTEM, ODS_ORGANIZATION_SYSTEM, is_valid_nhs_number
from shared.patches import Patch, Resource

from . import data_files
from .neurological import Neurological, neurological_keys
from .table import service_ods

Json = dict[str, Any]
NEUROLOGICAL_ITEM = "neurological-status"
PRIMARY_CANCER_ITEM = "primary-cancer"
# Referral statuses after which nobody needs the missing data any more.
_CLOSED_REFERRAL = frozenset({"revoked", "completed", "entered-in-error"})


@dataclass(frozen=True)
class Item:
    """One item of the minimum data set (a row of the data file)."""

    key: str
    rule: str
    display: str
    ask: str


@dataclass(frozen=True)
class MinimumData:
    system: str
    task_code: str
    task_text: str
    namespace: str
    items: tuple[Item, ...]
    cancer_names: tuple[re.Pattern[str], ...]
    cancer_not: tuple[re.Pattern[str], ...]
    primary_icd10: re.Pattern[str]


@functools.cache
def minimum_data() -> MinimumData:
    """The minimum data set; a missing or malformed file fails loudly (a broken deployment)."""
    data = data_files.load("referral_minimum_data")
    cancer = data["primary_cancer"]
    items = tuple(Item(row["key"], row["rule"], row["display"], row["ask"]) for row in data["items"])
    unknown = {item.rule for item in items} - set(RULES)
    if unknown:
        raise ValueError(f"referral_minimum_data.json names rules that do not exist: {sorted(unknown)}")
    return MinimumData(
        system=data["system"],
        task_code=data["task"]["code"],
        task_text=data["task"]["text"],
        namespace=data["task"]["namespace"],
        items=items,
        cancer_names=tuple(re.compile(p, re.IGNORECASE) for p in cancer["names"]),
        cancer_not=tuple(re.compile(p, re.IGNORECASE) for p in cancer["not"]),
        primary_icd10=re.compile(cancer["primary_icd10"], re.IGNORECASE),
    )


def task_id(referral_id: str) -> str:
    """The data-quality Task of a referral (one per referral, whichever message made it)."""
    return resource_id("Task", minimum_data().namespace, referral_id)


# --- reading the referral ---------------------------------------------------------------------------


def _contained(request: Resource, reference: Any) -> Resource | None:
    ref = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    return next((c for c in request.get("contained") or [] if isinstance(c, dict) and c.get("id") == ref[1:]), None)


def _ods_reference(organization: Any) -> Json | None:
    """An Organization reference naming an ODS code (identifier, or ``Organization/<code>``)."""
    if not isinstance(organization, dict):
        return None
    ident = organization.get("identifier")
    if isinstance(ident, dict) and ident.get("system") == ODS_ORGANIZATION_SYSTEM and ident.get("value"):
        out: Json = {"type": "Organization", "identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": ident["value"]}}
        if organization.get("display"):
            out["display"] = organization["display"]
        return out
    ref = organization.get("reference")
    if isinstance(ref, str) and ref.startswith("Organization/"):
        return {"reference": ref}
    return None


def requester_organisation(request: Resource) -> Json | None:
    """The referring organisation: the requester itself when it names one, else the organisation of a
    contained requester (PractitionerRole.organization, an Organization's ODS identifier)."""
    requester = request.get("requester")
    direct = _ods_reference(requester)
    if direct:
        return direct
    role = _contained(request, requester)
    if role is None:
        return None
    if role.get("resourceType") == "Organization":
        for ident in role.get("identifier") or []:
            found = _ods_reference({"identifier": ident, "display": role.get("name")})
            if found:
                return found
        return None
    return _ods_reference(role.get("organization"))


def _codes(concept: Any) -> list[str]:
    # Defensive: ``code`` is a CodeableConcept on some resources and a list of them on others
    # (PractitionerRole.code); only a CodeableConcept is read here, anything else has no codes.
    if not isinstance(concept, dict):
        return []
    return [str(c.get("code") or "") for c in concept.get("coding") or [] if isinstance(c, dict)]


def _texts(concept: Any) -> list[str]:
    if not isinstance(concept, dict):
        return []
    texts = [str(concept.get("text") or "")]
    texts += [str(c.get("display") or "") for c in concept.get("coding") or [] if isinstance(c, dict)]
    return [t for t in texts if t.strip()]


def _items(request: Resource, key: str) -> list[Resource]:
    """Contained Observations coded as the referral-information item ``key`` (see ``items.py``)."""
    return [
        c
        for c in request.get("contained") or []
        if isinstance(c, dict) and c.get("resourceType") == "Observation" and key in _codes(c.get("code"))
    ]


def _has_value(observation: Resource) -> bool:
    """Whether an Observation carries a value (any value[x] that is not empty)."""
    return any(k.startswith("value") and v not in (None, "", {}, []) for k, v in observation.items())


# --- the rules: None when the referral has the item, else what to ask for ---------------------------


@dataclass(frozen=True)
class Referral:
    """What the rules read: the referral, the Patient mapped with it (HL7v2: from the same message's
    PID; None on the FHIR route), and its neurological status as the pathway reads it."""

    request: Resource
    patient: Resource | None = None
    neurological: Neurological = "unknown"


Rule = Callable[[Referral, Item], str | None]


def nhs_number(referral: Referral, item: Item) -> str | None:
    """A valid NHS number on the referral's subject, or on the Patient mapped with it."""
    subject = referral.request.get("subject") or {}
    identifiers = [subject.get("identifier"), *((referral.patient or {}).get("identifier") or [])]
    valid = (
        isinstance(ident, dict)
        and ident.get("system") == NHS_NUMBER_SYSTEM
        and is_valid_nhs_number(str(ident.get("value") or ""))
        for ident in identifiers
    )
    return None if any(valid) else item.ask


def referring_organisation(referral: Referral, item: Item) -> str | None:
    return None if requester_organisation(referral.request) else item.ask


def referrer_contact(referral: Referral, item: Item) -> str | None:
    """A telephone number or email on the requester (the PRD-5 of the HL7v2 referring provider)."""
    request = referral.request
    requester = _contained(request, request.get("requester")) or {}
    telecom = [t for t in requester.get("telecom") or [] if isinstance(t, dict) and t.get("value")]
    return None if telecom else item.ask


def _names_primary(concept: Any) -> bool:
    table = minimum_data()
    if any(table.primary_icd10.match(code) for code in _codes(concept)):
        return True
    return any(
        any(p.search(text) for p in table.cancer_names) and not any(p.search(text) for p in table.cancer_not)
        for text in _texts(concept)
    )


def primary_cancer(referral: Referral, item: Item) -> str | None:
    """A reason or a diagnosis of the referral that names a primary cancer (a secondary in bone does
    not), or a primary-cancer item (OBX) with a value. A linked diagnosis (``reasonReference``) is
    read by its display; one without a display cannot be read here and is trusted as given."""
    request = referral.request
    concepts = list(request.get("reasonCode") or [])
    concepts += [
        c.get("code")
        for c in request.get("contained") or []
        if isinstance(c, dict) and c.get("resourceType") == "Condition"
    ]
    if any(_names_primary(concept) for concept in concepts):
        return None
    for ref in request.get("reasonReference") or []:
        display = ref.get("display") if isinstance(ref, dict) else None
        if not display or _names_primary({"text": display}):
            return None
    if any(_has_value(obs) for obs in _items(request, PRIMARY_CANCER_ITEM)):
        return None
    return item.ask


def _neurological_keys() -> frozenset[str]:
    """The referral-information items that say something about the neurological status (those with
    rules in ``data/neurological-rules.json``; at least the overall status)."""
    return frozenset({NEUROLOGICAL_ITEM, *neurological_keys()})


def neurological_status(referral: Referral, item: Item) -> str | None:
    """A neurological finding the pathway can read as present or absent. One that is sent but reads
    as "unknown" (which also takes the 24-hour window) is asked for again, saying why."""
    if referral.neurological != "unknown":
        return None
    keys = _neurological_keys()
    sent = [
        c
        for c in referral.request.get("contained") or []
        if isinstance(c, dict) and c.get("resourceType") == "Observation" and keys & set(_codes(c.get("code")))
    ]
    if sent:
        return f"{item.ask}: what was sent could not be read as signs present or absent"
    return item.ask


RULES: dict[str, Rule] = {
    "nhs_number": nhs_number,
    "referring_organisation": referring_organisation,
    "referrer_contact": referrer_contact,
    "primary_cancer": primary_cancer,
    "neurological_status": neurological_status,
}


@dataclass(frozen=True)
class Missing:
    item: Item
    ask: str


def missing(referral: Referral) -> list[Missing]:
    """The minimum-data items the referral lacks, in the data file's order."""
    out = []
    for item in minimum_data().items:
        ask = RULES[item.rule](referral, item)
        if ask:
            out.append(Missing(item, ask))
    return out


# --- the Task -----------------------------------------------------------------------------------------


def _service() -> Json:
    return {"type": "Organization", "identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": service_ods()}}


def _status(request: Resource, gaps: list[Missing]) -> str:
    if not gaps:
        return "completed"
    return "cancelled" if request.get("status") in _CLOSED_REFERRAL else "requested"


def build_task(request: Resource, gaps: list[Missing]) -> Resource:
    """The data-quality Task of ``request`` listing ``gaps`` (none: completed)."""
    table = minimum_data()
    referral = {"reference": f"ServiceRequest/{request['id']}"}
    task: Resource = {
        "resourceType": "Task",
        "id": task_id(request["id"]),
        "meta": {"profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Task"]},
        "status": _status(request, gaps),
        "intent": "order",
        "code": {"coding": [{"system": table.system, "code": table.task_code}], "text": table.task_text},
        "description": (
            "Missing from the referral: " + "; ".join(g.item.display for g in gaps)
            if gaps
            else "The referral carries the MSCC minimum data"
        ),
        "focus": referral,
        "basedOn": [referral],
        "requester": _service(),
    }
    if request.get("subject"):
        task["for"] = request["subject"]
    owner = requester_organisation(request)
    if owner:
        task["owner"] = owner
    if gaps:
        task["input"] = [
            {
                "type": {
                    "coding": [{"system": table.system, "code": g.item.key, "display": g.item.display}],
                    "text": g.item.display,
                },
                "valueString": g.ask,
            }
            for g in gaps
        ]
    return task


def referral_task(
    request: Resource, patient: Resource | None = None, neurological: Neurological = "unknown"
) -> Resource:
    """The data-quality Task of a referral: wholly derived from the referral's latest content, so each
    message about the referral replaces it. ``patient``: the Patient mapped from the same message;
    ``neurological``: the referral's neurological status as the pathway reads it."""
    return build_task(request, missing(Referral(request, patient, neurological)))


def subject_patient(request: Resource) -> str | None:
    """The key ("Patient/id") of the Patient the referral's subject refers to, when it refers to one by
    a plain reference (not a contained one, not by identifier alone)."""
    subject = request.get("subject")
    ref = subject.get("reference") if isinstance(subject, dict) else None
    if not isinstance(ref, str) or not ref.startswith("Patient/"):
        return None
    return ref if ref.count("/") == 1 and len(ref) > len("Patient/") else None


def _task_with_patient(
    request: Resource, neurological: Neurological, key: str, current: Resource | None, context: Mapping[str, Resource]
) -> Resource:
    return referral_task(request, context.get(key), neurological)


def _task_alone(request: Resource, neurological: Neurological, current: Resource | None) -> Resource:
    return referral_task(request, None, neurological)


def referral_task_parts(request: Resource, neurological: Neurological) -> tuple[list[Resource], list[Patch]]:
    """The data-quality Task of a FHIR referral: a resource when the referral alone says all there is,
    or, when its subject is a reference to a Patient (stored, or in the same Bundle), a patch that the
    writer applies with that Patient's content, so the Patient's NHS number counts as the referral's."""
    key = subject_patient(request)
    if key is None:
        return [referral_task(request, None, neurological)], []
    patch = Patch(
        "Task",
        task_id(request["id"]),
        functools.partial(_task_alone, request, neurological),
        "data-quality Task of a referral, read with the Patient its subject names",
        reads=(key,),
        apply_with=functools.partial(_task_with_patient, request, neurological, key),
    )
    return [], [patch]
