"""What a stored resource implies for the MSCC pathway, whichever way the referral arrived.

A referral ServiceRequest (FHIR or HL7v2) gives the assessment Encounter and the pathway CarePlan,
through the same patches the HL7v2 mapping uses (``plan.py``): created once, then only moved forward,
the NICE clock never restarted; and its data-quality Task (``data_quality.py``). A Holistic Needs
Assessment response gives its support plan (``hna.py``). The mapper calls ``derive`` on every FHIR
resource it stores; nothing here does I/O.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.patches import Patch, Resource

from .data_quality import referral_task_parts
from .hna import support_plan
from .neurological import referral_reading
from .plan import Pathway, assessment_patch, care_plan_patch

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
        neurological=referral_reading(request),
        start=_start(request.get("authoredOn")) or received,
    )
    return [assessment_patch(pathway), care_plan_patch(pathway)]


def derive(resource: Resource, received: datetime | None = None) -> tuple[list[Resource], list[Patch]]:
    """Everything a stored resource implies: resources it fully determines, and patches (``received``:
    when the hub received the message, the clock start of a referral without a timed authoredOn)."""
    if resource.get("resourceType") == "ServiceRequest":
        tasks, task_patches = referral_task_parts(resource, referral_reading(resource))
        return tasks, [*task_patches, *referral_patches(resource, received)]
    if resource.get("resourceType") == "QuestionnaireResponse":
        return support_plan(resource), []
    return [], []
