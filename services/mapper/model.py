"""What mapping produces: typed results between the pure mapping functions and the resource writer.

Mapping functions are pure: a stored message in, a ``MappingResult`` out, no I/O. The writer turns the
result into versions, history and outbox events. Errors:

    MappingError      the message cannot be mapped as it is (permanent until fixed): status "failed"
    TransientError    something outside the message failed (database): retried with backoff, then "dead"
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

Resource = dict[str, Any]
OutcomeIssue = dict[str, Any]  # an OperationOutcome.issue: severity, code, diagnostics, expression


def issue(severity: str, code: str, diagnostics: str, expression: str | None = None) -> OutcomeIssue:
    item: OutcomeIssue = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        item["expression"] = [expression]
    return item


class MappingError(Exception):
    """The message cannot be mapped; ``issues`` say why (as OperationOutcome issues)."""

    def __init__(
        self,
        diagnostics: str,
        *,
        code: str = "processing",
        expression: str | None = None,
        issues: list[OutcomeIssue] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.issues = issues or [issue("error", code, diagnostics, expression)]


class TransientError(Exception):
    """A failure that a later attempt may not meet (the database, a timeout)."""


@dataclass(frozen=True)
class Patch:
    """A change to a resource that the message does not fully describe (e.g. the patient merged away by
    ADT^A40): ``apply`` gets the current content (or None) and returns the new content."""

    resource_type: str
    resource_id: str
    apply: Callable[[Resource | None], Resource]
    reason: str
    # False for a patch that only creates what is missing (a Patient named by NHS number in a FHIR
    # referral): it does not stamp the message's time on the resource, so a fuller message dated
    # earlier (an ADT queued at the trust) is still applied rather than reported as stale.
    ordered: bool = True


@dataclass
class MappingResult:
    """Resources a message describes (complete content, ids set), patches, and what was left over."""

    resources: list[Resource] = field(default_factory=list)
    patches: list[Patch] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    issues: list[OutcomeIssue] = field(default_factory=list)
    source_time: datetime | None = None
