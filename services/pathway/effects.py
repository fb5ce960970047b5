"""What a step does to the three pathway resources: pure functions from current content to new content.

- the referral ServiceRequest: its pathway extensions (``record.py``) and the status the step implies;
- the assessment Encounter: the step's status; ``period.start`` when work starts, ``period.end`` when
  it finishes;
- the pathway CarePlan: the step's status; the MRI / MDT / plan activities' statuses from every step
  reached (``steps.activity_status``); ``period.end`` when the pathway ends. Activities are matched by
  the descriptions in the pathway table (``table.py``, ``data/mscc-pathway.json``).
"""

from __future__ import annotations

import copy
import functools
from datetime import datetime

from shared.fhir import Resource

from .record import Entry, fhir_time, parse_time, with_pathway
from .steps import ACTIVITIES, STEPS, activity_status
from .table import pathway_table


@functools.cache
def activity_keys() -> dict[str, str]:
    """CarePlan activity description -> its key (mri, mdt, plan)."""
    return {row["description"]: row["key"] for row in pathway_table()["activities"] if row["key"] in ACTIVITIES}


def request_after(request: Resource, entries: list[Entry]) -> Resource:
    """The referral at the last step of ``entries``: extensions and status."""
    code = entries[-1].step
    out = with_pathway(request, code, entries)
    out["status"] = STEPS[code].request_status
    return out


def encounter_after(encounter: Resource, code: str, at: datetime) -> Resource:
    """The assessment Encounter at step ``code`` reached at ``at``."""
    out = copy.deepcopy(encounter)
    row = STEPS[code]
    out["status"] = row.encounter_status
    period = dict(out.get("period") or {})
    if row.encounter_status in ("in-progress", "finished") and "start" not in period:
        period["start"] = fhir_time(at)
    if row.encounter_status == "finished" and "end" not in period and _not_before(at, period.get("start")):
        period["end"] = fhir_time(at)
    if period:
        out["period"] = period
    return out


def expected_activities(reached: list[str]) -> dict[str, str]:
    """Activity key -> the status the steps reached imply."""
    return {key: activity_status(key, reached) for key in ACTIVITIES}


def care_plan_after(plan: Resource, reached: list[str], at: datetime) -> Resource:
    """The pathway CarePlan after ``reached`` (the last is current), at ``at``."""
    out = copy.deepcopy(plan)
    row = STEPS[reached[-1]]
    out["status"] = row.plan_status
    statuses = expected_activities(reached)
    keys = activity_keys()
    for activity in out.get("activity") or []:
        detail = activity.get("detail")
        key = keys.get(str((detail or {}).get("description")))
        if key:
            detail["status"] = statuses[key]
    period = out.get("period")
    if row.final and isinstance(period, dict) and "end" not in period and _not_before(at, period.get("start")):
        period["end"] = fhir_time(at)
    return out


def plan_activity_statuses(plan: Resource) -> dict[str, str]:
    """Activity key -> status, as the CarePlan says."""
    keys = activity_keys()
    out: dict[str, str] = {}
    for activity in plan.get("activity") or []:
        detail = activity.get("detail") or {}
        key = keys.get(str(detail.get("description")))
        if key:
            out[key] = str(detail.get("status"))
    return out


def _not_before(at: datetime, start: object) -> bool:
    begun = parse_time(start)
    return begun is None or at >= begun
