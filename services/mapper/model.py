"""What mapping produces: typed results between the pure mapping functions and the resource writer.

Mapping functions are pure: a stored message in, a ``MappingResult`` out, no I/O. The writer turns the
result into versions, history and outbox events. Errors:

    MappingError      the message cannot be mapped as it is (permanent until fixed): status "failed"
    TransientError    something outside the message failed (database): retried with backoff, then "dead"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

# Defined in shared/ (the pathway builds them too); re-exported: the mapper's names for them.
from shared.patches import OutcomeIssue as OutcomeIssue
from shared.patches import Patch as Patch
from shared.patches import Resource as Resource
from shared.patches import issue as issue

# A failure that a later attempt may not meet (the database, a timeout): the hub's one such error.
from shared.retry import TransientError as TransientError


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


@dataclass
class MappingResult:
    """Resources a message describes (complete content, ids set), patches, and what was left over."""

    resources: list[Resource] = field(default_factory=list)
    patches: list[Patch] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    issues: list[OutcomeIssue] = field(default_factory=list)
    source_time: datetime | None = None
