"""What an MSCC referral implies: the assessment episode (Encounter) and the pathway plan (CarePlan).

Both are derived from the referral ServiceRequest, with ids derived from its id, so every message about
the same referral converges on the same two resources. The MRI activity's deadline follows NICE NG234:
24 hours from referral where neurological signs are present (or not known: the safe assumption),
7 days otherwise. The windows are configuration (``PathwayWindows``), these values the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.ids import resource_id

from .hna import support_plan
from .model import Resource

UK_CORE = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-"
MSCC_SERVICE_ODS = "REN"
# ServiceRequest.status -> (Encounter.status, CarePlan.status)
_STATUS = {
    "draft": ("planned", "draft"),
    "active": ("in-progress", "active"),
    "on-hold": ("onleave", "on-hold"),
    "revoked": ("cancelled", "revoked"),
    "completed": ("finished", "completed"),
    "entered-in-error": ("entered-in-error", "entered-in-error"),
    "unknown": ("unknown", "unknown"),
}


@dataclass(frozen=True)
class PathwayWindows:
    with_neurological_signs: timedelta = timedelta(hours=24)
    without_neurological_signs: timedelta = timedelta(days=7)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def neurological_signs(request: Resource) -> bool | None:
    """True/False where the referral says so (a supporting note or extension), None when unknown."""
    for item in request.get("supportingInfo") or []:
        display = str(item.get("display", "")).lower()
        if "no neurological" in display:
            return False
        if "neurological" in display:
            return True
    return None


def assessment_encounter(request: Resource) -> Resource:
    """The MSCC assessment episode for a referral: status follows the referral, period from authoredOn."""
    encounter_status, _ = _STATUS.get(request.get("status", "unknown"), ("unknown", "unknown"))
    encounter: Resource = {
        "resourceType": "Encounter",
        "id": resource_id("Encounter", "urn:mscc:assessment", request["id"]),
        "meta": {"profile": [f"{UK_CORE}Encounter"]},
        "status": encounter_status,
        # MSCC is an oncological emergency: the assessment is handled as emergency care.
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER", "display": "emergency"},
        "type": [{"text": "MSCC assessment episode"}],
        "basedOn": [{"reference": f"ServiceRequest/{request['id']}"}],
        "serviceProvider": {
            "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": MSCC_SERVICE_ODS}
        },
    }
    if request.get("subject"):
        encounter["subject"] = request["subject"]
    if request.get("authoredOn"):
        encounter["period"] = {"start": request["authoredOn"]}
    return encounter


def pathway_care_plan(request: Resource, windows: PathwayWindows | None = None) -> Resource | None:
    """The MSCC pathway plan: whole-spine MRI within the NICE window, MDT discussion, treatment plan.

    None when the referral names no patient (CarePlan.subject is required).
    """
    if not request.get("subject"):
        return None
    windows = windows or PathwayWindows()
    _, plan_status = _STATUS.get(request.get("status", "unknown"), ("unknown", "unknown"))
    signs = neurological_signs(request)
    window = windows.without_neurological_signs if signs is False else windows.with_neurological_signs
    label = "24 hours" if window == timedelta(hours=24) else f"{window.days} days" if window.days else str(window)
    mri: dict[str, Any] = {"status": "not-started", "description": f"Whole-spine MRI within {label} of referral"}
    start = _parse_time(request.get("authoredOn"))
    if start is not None:
        mri["scheduledPeriod"] = {"start": request["authoredOn"], "end": (start + window).isoformat()}
    return {
        "resourceType": "CarePlan",
        "id": resource_id("CarePlan", "urn:mscc:pathway", request["id"]),
        "meta": {"profile": [f"{UK_CORE}CarePlan"]},
        "status": plan_status,
        "intent": "plan",
        "title": "MSCC pathway",
        "subject": request["subject"],
        "activity": [
            {"detail": {**mri}},
            {"detail": {"status": "not-started", "description": "MDT discussion"}},
            {"detail": {"status": "not-started", "description": "Definitive treatment plan agreed"}},
        ],
        "supportingInfo": [{"reference": f"ServiceRequest/{request['id']}"}],
    }


def derive(resource: Resource) -> list[Resource]:
    """Everything a stored resource implies: for a referral its episode and plan; for an HNA its plan."""
    if resource.get("resourceType") == "ServiceRequest":
        plan = pathway_care_plan(resource)
        return [assessment_encounter(resource), *([plan] if plan else [])]
    if resource.get("resourceType") == "QuestionnaireResponse":
        return support_plan(resource)
    return []
