"""The MSCC team's Task for a message held for review: "Review patient match".

A message whose patient conflicts with the stored patient is held (``shared/review.py``): nothing from
it is written, so an urgent referral in it is not on the pathway and no clock runs for it. This Task
makes the hold visible to the MSCC team through the FHIR API and the ``patient-review`` topic (the
notifier), not only in the operators' review list. Pure functions: the mapper's writer creates it in the
transaction that records the hold; ``shared/review.py`` closes it with the operator's decision.

- id derived from the held message record's id (one Task per held message, whatever retries happen);
- ``status`` requested, ``priority`` urgent; ``owner`` and ``requester`` the MSCC service (the hub's own
  organisation, by ODS code), so only the MSCC team's subscriptions can match it;
- ``identifier`` and an ``input`` carry the held record's id (``mscc messages show <id>``);
- ``description`` and ``input`` name the conflicting fields with masked values only (the conflict
  diagnostics of ``services/mapper/matching.py``): no names, birth dates or NHS numbers;
- decided: ``completed`` (applied) or ``rejected``, with who decided, when, and the reason, in ``note``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .ids import resource_id
from .nhs import ODS_ORGANIZATION_SYSTEM

Resource = dict[str, Any]

TASK_SYSTEM = "urn:mscc:code:task"
REVIEW_CODE = "patient-review"
REVIEW_TEXT = "Review patient match"
RECORD_SYSTEM = "urn:mscc:id:message-record"
_NAMESPACE = "urn:mscc:patient-review"
_PROFILE = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-Task"


def review_task_id(record_id: str) -> str:
    """The review Task of a held message record (deterministic: the same for every attempt)."""
    return resource_id("Task", _NAMESPACE, record_id)


def is_review_task(task: Any) -> bool:
    """Whether ``task`` is a "Review patient match" Task (and not, say, a data-quality Task)."""
    if not isinstance(task, dict) or task.get("resourceType") != "Task":
        return False
    code = task.get("code")
    codings = code.get("coding") if isinstance(code, dict) else None
    return any(
        isinstance(c, dict) and c.get("system") == TASK_SYSTEM and c.get("code") == REVIEW_CODE for c in codings or []
    )


def _instant(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _organisation(ods: str) -> Resource:
    return {"type": "Organization", "identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": ods}}


def _what(header: dict[str, Any]) -> str:
    """Which message, in words an operator can find it by (no patient data)."""
    parts = [str(header.get(k)) for k in ("message_type", "interaction") if header.get(k)][:1]
    if header.get("sending_facility"):
        parts.append(f"from {header['sending_facility']}")
    if header.get("control_id"):
        parts.append(f"control id {header['control_id']}")
    return " ".join(parts) or "a message"


def review_task(
    record_id: str, header: dict[str, Any], conflicts: list[str], service_ods: str, now: datetime
) -> Resource:
    """The Task for the held record ``record_id``. ``conflicts``: the conflict diagnostics, whose values
    are already masked; ``header``: the record's header (message type, sender, control id)."""
    what = _what(header)
    description = (
        f"{what} is held: its patient conflicts with the stored patient, so nothing from it is on the "
        f"pathway until it is applied or rejected (mscc messages review). Conflicts: "
        + ("; ".join(conflicts) if conflicts else "see the record")
    )
    record = {"system": RECORD_SYSTEM, "value": record_id}
    task: Resource = {
        "resourceType": "Task",
        "id": review_task_id(record_id),
        "meta": {"profile": [_PROFILE]},
        "identifier": [record],
        "status": "requested",
        "intent": "order",
        "priority": "urgent",
        "code": {"coding": [{"system": TASK_SYSTEM, "code": REVIEW_CODE, "display": REVIEW_TEXT}], "text": REVIEW_TEXT},
        "description": description,
        "authoredOn": _instant(now),
        "requester": _organisation(service_ods),
        "owner": _organisation(service_ods),
        "input": [
            {"type": {"text": "Held message record"}, "valueString": record_id},
            *({"type": {"text": "Conflict"}, "valueString": text} for text in conflicts),
        ],
    }
    return task


def decided(task: Resource, decision: str, by: str, now: datetime, reason: str | None = None) -> Resource:
    """``task`` closed by an operator's ``decision`` ("apply": completed, "reject": rejected)."""
    applied = decision == "apply"
    text = (
        f"Applied by {by}: the message is written onto the matched patient"
        if applied
        else f"Rejected by {by}: nothing from the message is written. Reason: {reason or 'not given'}"
    )
    out = {k: v for k, v in task.items() if k not in ("meta", "id")}
    out["status"] = "completed" if applied else "rejected"
    out["lastModified"] = _instant(now)
    out["businessStatus"] = {"text": "applied after review" if applied else "rejected after review"}
    if not applied:
        out["statusReason"] = {"text": reason or "rejected after review"}
    out["note"] = [*(task.get("note") or []), {"authorString": by, "time": _instant(now), "text": text}]
    return {"resourceType": "Task", "id": task["id"], "meta": {"profile": [_PROFILE]}, **out}
