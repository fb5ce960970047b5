"""What the writer records on each message it wrote: the per-resource facts and the processing outcome.

``Written`` is what one message did to one resource; ``mapped_outcome`` and ``held_outcome`` are the
message record's ``processing`` (``shared.records.MessageOutcome``) when its resources were written,
or when it was held for review because its patient conflicts with the stored one (nothing written but
the review Task).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import UpdateOne

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
    issues = [*mapping.issues, *notes]
    if conflicts is None:
        mapped = MessageOutcome(
            "mapped", now, tuple(w.to_doc() for w in written), tuple(mapping.unmapped), tuple(issues)
        )
        return UpdateOne({"_id": message_id}, {"$set": {"processing": mapped.to_doc()}})
    held = issue(
        "error",
        "conflict",
        "held for review: the message's patient conflicts with the stored patient; nothing from it was "
        "written. Apply it ('mscc messages apply') or reject it ('mscc messages reject').",
    )
    processing = MessageOutcome(
        NEEDS_REVIEW,
        now,
        (),
        tuple(mapping.unmapped),
        tuple(issues),
        {"resourceType": "OperationOutcome", "issue": [held, *conflicts]},
    )
    update = {
        "status": NEEDS_REVIEW,
        "processing": processing.to_doc(),
        "review.status": "pending",
        "review.held_at": now,
        "review.task": f"Task/{review_task_id(message_id)}",
    }
    return UpdateOne({"_id": message_id}, {"$set": update})
