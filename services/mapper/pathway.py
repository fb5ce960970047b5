"""What a stored resource implies for the MSCC pathway, whichever way the referral arrived.

A referral ServiceRequest (FHIR or HL7v2) gives the assessment Encounter and the pathway CarePlan,
through the same patches the HL7v2 mapping uses (``hl7/mscc.py``): created once, then only moved
forward, the NICE clock never restarted. A Holistic Needs Assessment response gives its support plan.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .data_quality import referral_task
from .hl7.mscc import Pathway, assessment_patch, care_plan_patch
from .hl7.neurological import combine
from .hl7.supporting import Neurological, observation_reading
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


def _start(value: Any) -> datetime | None:
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def neurological(request: Resource) -> Neurological:
    """Neurological status from the referral's contained Observations, read by the rules the HL7v2
    mapping uses (``hl7/supporting.py``): the neurological items (coded ``neurological-status``,
    ``motor-power``, ``sensory-level``, ``sphincter-function``, or named so) by what they measure, any
    other Observation only when it names a sign. Any sign wins, then anything unclear; "unknown" (the
    safe 24-hour window) when nothing says. Other contained resources (a PractitionerRole requester)
    are skipped, and no shape of contained content can make this raise."""
    contained = request.get("contained")
    found = [observation_reading(item) for item in (contained if isinstance(contained, list) else [])]
    return combine(r for r in found if r is not None)


def referral_patches(request: Resource, received: datetime | None = None) -> list[Patch]:
    """The episode and plan patches of a referral; none without a subject (both need a patient).

    The clock starts at ``authoredOn`` when it carries a time of day, else when the hub received the
    referral (``received``), as the HL7v2 mapping falls back to MSH-7: a FHIR referral without a
    timed ``authoredOn`` still gets its deadlines.
    """
    if not request.get("subject"):
        return []
    status = str(request.get("status", "active"))
    pathway = Pathway(
        referral_id=request["id"],
        subject=request["subject"],
        encounter_status=_ENCOUNTER_STATUS.get(status, "planned"),
        plan_status=status if status in _PLAN_STATUS else "active",
        neurological=neurological(request),
        start=_start(request.get("authoredOn")) or received,
    )
    return [assessment_patch(pathway), care_plan_patch(pathway)]


def derive(resource: Resource, received: datetime | None = None) -> tuple[list[Resource], list[Patch]]:
    """Everything a stored resource implies: resources it fully determines, and patches (``received``:
    when the hub received the message, the clock start of a referral without a timed authoredOn)."""
    if resource.get("resourceType") == "ServiceRequest":
        return [referral_task(resource, None, neurological(resource))], referral_patches(resource, received)
    if resource.get("resourceType") == "QuestionnaireResponse":
        return support_plan(resource), []
    return [], []
