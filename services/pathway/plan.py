"""The MSCC pathway a referral starts: the assessment Encounter and the pathway CarePlan.

Ids derive from the referral ServiceRequest id, whichever route the referral came by (an HL7v2 REF^I12
mapped by ``services/mapper/hl7/steps.py``, a FHIR referral through ``derive.py``), so every message about
one referral converges on the same two resources.

Both are delivered as ``Patch``es, not complete resources: once created they belong to the pathway,
and a later message (a resend of REF^I12, a REF^I13 update, a REF^I14 cancel) moves them forward but
never resets them:
- the Encounter's status only advances (planned -> in-progress -> finished / cancelled);
- the CarePlan's clock (``CarePlan.period.start``, the first contact) never restarts; deadlines are
  recomputed from the latest neurological status; activity statuses set since are kept.

Timings (``table.py``, ``data/mscc-pathway.json``, NICE NG234; the SLA scanner reads the same windows):
whole-spine MRI and the definitive treatment plan are due 24 hours after first contact with neurological
signs, 7 days without; unknown takes 24 hours.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.ids import resource_id
from shared.nhs import ODS_ORGANIZATION_SYSTEM
from shared.patches import Patch, Resource

from .neurological import Neurological, reading_text
from .table import pathway_table, window, window_label

Json = dict[str, Any]
# UK Core profiles, as on every resource the mapper builds (services/mapper/hl7/segments/common.py).
UK_CORE = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-"
ASSESSMENT_NAMESPACE = "urn:mscc:assessment"
PATHWAY_NAMESPACE = "urn:mscc:pathway"
# Encounter statuses in pathway order: a message may move the assessment forward, never back.
_ENCOUNTER_RANK = {"planned": 0, "in-progress": 1, "finished": 2, "cancelled": 2}


def _profile(resource_type: str) -> Json:
    return {"profile": [f"{UK_CORE}{resource_type}"]}


def _ref(resource_type: str, rid: str) -> Json:
    return {"reference": f"{resource_type}/{rid}"}


def assessment_id(referral_id: str) -> str:
    return resource_id("Encounter", ASSESSMENT_NAMESPACE, referral_id)


def care_plan_id(referral_id: str) -> str:
    return resource_id("CarePlan", PATHWAY_NAMESPACE, referral_id)


@dataclass(frozen=True)
class Pathway:
    """What one referral message says about the pathway."""

    referral_id: str
    subject: Json
    encounter_status: str
    plan_status: str
    neurological: Neurological
    start: datetime | None


def _assessment(pathway: Pathway) -> Resource:
    table = pathway_table()
    return {
        "resourceType": "Encounter",
        "id": assessment_id(pathway.referral_id),
        "meta": _profile("Encounter"),
        "status": pathway.encounter_status,
        "class": dict(table["assessment"]["class"]),
        "type": [{"text": table["assessment"]["type_text"]}],
        "subject": pathway.subject,
        "basedOn": [_ref("ServiceRequest", pathway.referral_id)],
        "serviceProvider": {"identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": table["service_ods"]}},
    }


def _advance_assessment(pathway: Pathway, current: Resource | None) -> Resource:
    fresh = _assessment(pathway)
    if current is None:
        return fresh
    out = copy.deepcopy(current)
    now = str(out.get("status"))
    # Unknown or later statuses (set by the service) are kept: the message only moves it forward.
    if now in _ENCOUNTER_RANK and _ENCOUNTER_RANK[fresh["status"]] > _ENCOUNTER_RANK[now]:
        out["status"] = fresh["status"]
    return out


def assessment_patch(pathway: Pathway) -> Patch:
    """The assessment Encounter: created planned/in-progress (or cancelled), then only advanced."""
    return Patch(
        "Encounter",
        assessment_id(pathway.referral_id),
        functools.partial(_advance_assessment, pathway),
        "MSCC assessment episode of the referral",
    )


def build_care_plan(pathway: Pathway, start: datetime | None) -> Resource:
    """The pathway CarePlan with deadlines counted from ``start`` (none when the start is unknown)."""
    span = window(pathway.neurological)
    detail_status = "cancelled" if pathway.plan_status == "revoked" else "not-started"
    activities = []
    for row in pathway_table()["activities"]:
        detail: Json = {"status": detail_status, "description": row["description"]}
        if row["deadline"] and start is not None:
            detail["scheduledPeriod"] = {"start": start.isoformat(), "end": (start + span).isoformat()}
        activities.append({"detail": detail})
    plan: Resource = {
        "resourceType": "CarePlan",
        "id": care_plan_id(pathway.referral_id),
        "meta": _profile("CarePlan"),
        "status": pathway.plan_status,
        "intent": "plan",
        "title": "MSCC pathway",
        # The reading and why the window follows from it are on the record, for the team and for audit.
        "description": f"{reading_text(pathway.neurological)}. Whole-spine MRI and definitive treatment "
        f"plan due within {window_label(span)} of first contact.",
        "subject": pathway.subject,
        "encounter": _ref("Encounter", assessment_id(pathway.referral_id)),
        "supportingInfo": [_ref("ServiceRequest", pathway.referral_id)],
        "activity": activities,
    }
    if start is not None:
        plan["period"] = {"start": start.isoformat()}
    return plan


def _clock(current: Resource | None) -> datetime | None:
    start = ((current or {}).get("period") or {}).get("start")
    try:
        return datetime.fromisoformat(str(start).replace("Z", "+00:00")) if start else None
    except ValueError:
        return None


def _replan(pathway: Pathway, current: Resource | None) -> Resource:
    plan = build_care_plan(pathway, _clock(current) or pathway.start)
    if current is None:
        return plan
    kept = {
        a["detail"].get("description"): a["detail"].get("status")
        for a in current.get("activity", [])
        if isinstance(a.get("detail"), dict)
    }
    for activity in plan["activity"]:
        previous = kept.get(activity["detail"]["description"])
        # Progress recorded since (e.g. MRI completed) survives updates; a cancel keeps completed work.
        if previous and (pathway.plan_status != "revoked" or previous == "completed"):
            activity["detail"]["status"] = previous
    return plan


def care_plan_patch(pathway: Pathway) -> Patch:
    """The pathway CarePlan: created on the first message, its clock kept on every later one."""
    return Patch(
        "CarePlan",
        care_plan_id(pathway.referral_id),
        functools.partial(_replan, pathway),
        "MSCC pathway plan of the referral",
    )
