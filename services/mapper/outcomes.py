"""What the writer records on each message it wrote: the per-resource facts and the processing outcome.

``Written`` is what one message did to one resource; ``mapped_outcome`` and ``held_outcome`` are the
message record's ``processing`` (``shared.records.MessageOutcome``) when its resources were written,
or when it was held for review because its patient conflicts with the stored one (nothing written but
the review Task).

An outcome always fits its message record: each list (unmapped content, resources written, issues)
keeps its first items (``shared.limits.bounded``) and says how many it left out, in ``omitted`` and in
an information issue, so a message of thousands of unmapped segments is still recorded as mapped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import UpdateOne

from shared.limits import OUTCOME_ISSUES, bounded
from shared.records import MessageOutcome
from shared.review import NEEDS_REVIEW
from shared.review_task import review_task_id

from .model import MappingResult, OutcomeIssue, issue


@dataclass(frozen=True)
class Written:
    """What one message did to one resource."""

    type: str
    id: str
    version: int
    changed: bool
    stale: bool = False

    def to_doc(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id, "version": self.version, "changed": self.changed, "stale": self.stale}


def outcome_update(
    message_id: str,
    mapping: MappingResult,
    written: list[Written],
    now: datetime,
    notes: list[OutcomeIssue],
    conflicts: list[OutcomeIssue] | None,
) -> UpdateOne:
    """The update of one message record: mapped (what was written), or held for review when
    ``conflicts`` (the patient conflicts that held it) is not None."""
    if conflicts is None:
        resources, unmapped, issues, extra = bounded_lists([w.to_doc() for w in written], mapping, notes)
        mapped = MessageOutcome("mapped", now, resources, unmapped, issues, extra=extra)
        return UpdateOne({"_id": message_id}, {"$set": {"processing": mapped.to_doc()}})
    held = issue(
        "error",
        "conflict",
        "held for review: the message's patient conflicts with the stored patient; nothing from it was "
        "written. Apply it ('mscc messages apply') or reject it ('mscc messages reject').",
    )
    _, unmapped, issues, extra = bounded_lists([], mapping, notes)
    processing = MessageOutcome(
        NEEDS_REVIEW,
        now,
        (),
        unmapped,
        issues,
        {"resourceType": "OperationOutcome", "issue": bounded_issues([held, *conflicts])},
        extra,
    )
    update = {
        "status": NEEDS_REVIEW,
        "processing": processing.to_doc(),
        "review.status": "pending",
        "review.held_at": now,
        "review.task": f"Task/{review_task_id(message_id)}",
    }
    return UpdateOne({"_id": message_id}, {"$set": update})


def bounded_lists(
    resources: list[dict[str, Any]], mapping: MappingResult, notes: list[OutcomeIssue]
) -> tuple[tuple[Any, ...], tuple[str, ...], tuple[OutcomeIssue, ...], dict[str, Any]]:
    """The outcome's lists, each bounded, and ``{"omitted": {list: count}}`` when any was cut; an
    information issue then says what was left out."""
    kept_resources, resources_left = bounded(resources)
    unmapped, unmapped_left = bounded(mapping.unmapped)
    issues, issues_left = bounded([*mapping.issues, *notes], OUTCOME_ISSUES)
    left = {"resources": resources_left, "unmapped": unmapped_left, "issues": issues_left}
    omitted = {name: count for name, count in left.items() if count}
    if omitted:
        listed = ", ".join(f"{count} more {name}" for name, count in omitted.items())
        issues.append(issue("information", "informational", f"the outcome lists only their first items: {listed}"))
    return tuple(kept_resources), tuple(unmapped), tuple(issues), ({"omitted": omitted} if omitted else {})


def bounded_issues(issues: list[OutcomeIssue]) -> list[OutcomeIssue]:
    """An OperationOutcome's issues, bounded; the last one says how many were left out."""
    kept, left = bounded(issues, OUTCOME_ISSUES)
    if left:
        kept.append(issue("information", "informational", f"{left} more issues were left out"))
    return kept
