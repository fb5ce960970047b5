"""What a stored resource implies for the MSCC pathway, whichever way the referral arrived.

A referral ServiceRequest (FHIR or HL7v2) gives the assessment Encounter and the pathway CarePlan,
through the same patches the HL7v2 mapping uses (``hl7/mscc.py``): created once, then only moved
forward, the NICE clock never restarted. A Holistic Needs Assessment response gives its support plan.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .hl7.mscc import Pathway, assessment_patch, care_plan_patch
from .hl7.supporting import Neurological, neurological_reading, value_text
from .hna import support_plan
from .model import Patch, Resource

# ServiceRequest.status -> the assessment Encounter status the referral implies (only ever advanced).
_ENCOUNTER_STATUS = {
    "draft": "planned",
    "active": "planned",
    "on-hold": "planned",
    "completed": "finished",
    "revoked": "cancelled",
    "entered-in-error": "cancelled",
}
_PLAN_STATUS = {"draft", "active", "on-hold", "completed", "revoked", "entered-in-error"}
NEUROLOGICAL_CODE = "neurological-status"


def _start(value: Any) -> datetime | None:
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def neurological(request: Resource) -> Neurological:
    """Neurological status from contained Observations coded ``neurological-status`` (as the HL7v2
    mapping writes them), read by the same rules; any sign present wins; "unknown" otherwise, which
    takes the safe 24-hour window."""
    found: Neurological = "unknown"
    for item in request.get("contained") or []:
        codes = [c.get("code") for c in (item.get("code") or {}).get("coding") or []]
        if item.get("resourceType") != "Observation" or NEUROLOGICAL_CODE not in codes:
            continue
        value = next(((k, v) for k, v in item.items() if k.startswith("value")), None)
        reading = neurological_reading(value_text(value))
        if "present" in (found, reading):
            return "present"
        found = "absent" if "absent" in (found, reading) else found
    return found


def referral_patches(request: Resource) -> list[Patch]:
    """The episode and plan patches of a referral; none without a subject (both need a patient)."""
    if not request.get("subject"):
        return []
    status = str(request.get("status", "active"))
    pathway = Pathway(
        referral_id=request["id"],
        subject=request["subject"],
        encounter_status=_ENCOUNTER_STATUS.get(status, "planned"),
        plan_status=status if status in _PLAN_STATUS else "active",
        neurological=neurological(request),
        start=_start(request.get("authoredOn")),
    )
    return [assessment_patch(pathway), care_plan_patch(pathway)]


def derive(resource: Resource) -> tuple[list[Resource], list[Patch]]:
    """Everything a stored resource implies: resources it fully determines, and patches."""
    if resource.get("resourceType") == "ServiceRequest":
        return [], referral_patches(resource)
    if resource.get("resourceType") == "QuestionnaireResponse":
        return support_plan(resource), []
    return [], []
