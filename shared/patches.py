"""What domain code hands to a resource writer: resources, changes to stored resources (``Patch``), and
processing issues.

Both the mapper (HL7v2 and FHIR mapping) and the MSCC pathway (the assessment Encounter, the pathway
CarePlan, the data-quality Task, the support plan) build these with pure functions; the mapper's writer
turns them into versions, history and outbox events. They live here, below both, so the pathway needs
nothing from the mapper. Nothing here does I/O or raises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .fhir import Resource as Resource  # re-exported: the same plain dict as everywhere else
from .fhir import issue as _fhir_issue

OutcomeIssue = dict[str, Any]  # an OperationOutcome.issue: severity, code, diagnostics, expression


def issue(severity: str, code: str, diagnostics: str, expression: str | None = None) -> OutcomeIssue:
    """An OperationOutcome issue naming at most one ``expression`` (a FHIRPath or an HL7v2 location)."""
    return _fhir_issue(severity, code, diagnostics, [expression] if expression else None)


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
    # Keys ("Type/id") of other resources the patch reads (a FHIR referral's data-quality Task reads the
    # stored Patient its subject names). The writer loads them with the rest of the batch (their content
    # as this batch leaves them, so a Patient in the same Bundle counts) and calls ``apply_with``
    # (current content, {key: content} of those that exist) instead of ``apply``.
    reads: tuple[str, ...] = ()
    apply_with: Callable[[Resource | None, Mapping[str, Resource]], Resource] | None = None
