"""The pure, CPU-heavy part of FHIR intake: a body's limits, strict JSON parse and validation, and what is
built from it before anything is read from or written to the database.

Validating a body of 300,000 small objects takes seconds, and a 20,000-entry Bundle's entry plan most
of one; ``FhirIntake`` runs these functions in its parse pool for large bodies (``offload.py``) and
inline for small ones. Each is a function of its arguments alone and returns a value that pickles: a
refusal comes back as ``Refused`` (an exception with keyword arguments does not survive pickling), which
``FhirIntake`` keeps as a rejected record before answering with it. A Bundle comes back as its message
record only, never as the parsed Bundle, so that what crosses back to the event loop stays small.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.auth import Caller
from shared.fhir import FhirError, Resource
from shared.limits import Limits
from shared.store import Document

from .fhir_accepted import bundle_record, prepared_create, read_body
from .limits_check import checked_fhir_body, checked_fhir_resource


@dataclass(frozen=True)
class Refused:
    """A ``FhirError`` as data: the status and the OperationOutcome's issues."""

    status: int
    issues: list[dict[str, Any]]

    @classmethod
    def of(cls, error: FhirError) -> Refused:
        return cls(error.status, error.issues)

    def error(self) -> FhirError:
        first = self.issues[0] if self.issues else {}
        return FhirError(self.status, str(first.get("code", "")), str(first.get("diagnostics", "")), issues=self.issues)


def checked(body: bytes, content_type: str | None, expected: str, limits: Limits) -> Resource:
    """The body as a valid ``expected`` resource within the limits; ``FhirError`` otherwise (413 from
    its bytes before a costly validation, then 400/415/422, then 413 from the parsed body)."""
    checked_fhir_body(body, limits)
    data = read_body(body, content_type, expected)
    checked_fhir_resource(data, body, limits)
    return data


def read_create(
    body: bytes, content_type: str | None, expected: str, limits: Limits
) -> tuple[Resource, list[dict[str, Any]]] | Refused:
    """A create's resource as intake stores it, with its warnings (``prepared_create``), or the refusal."""
    try:
        return prepared_create(checked(body, content_type, expected, limits))
    except FhirError as error:
        return Refused.of(error)


@dataclass(frozen=True)
class BundleArrival:
    """Who posted a Bundle, when, and how the record is named: everything its record is built from."""

    caller: Caller
    peer: str
    record_id: str
    now: datetime
    base: str
    service_ods: str


def read_bundle(body: bytes, content_type: str | None, limits: Limits, arrival: BundleArrival) -> Document | Refused:
    """The ready message record of a posted Bundle (``fhir_accepted.bundle_record``), or the refusal."""
    try:
        data = checked(body, content_type, "Bundle", limits)
        return bundle_record(
            data,
            body,
            arrival.caller,
            arrival.peer,
            arrival.record_id,
            arrival.now,
            arrival.base,
            service_ods=arrival.service_ods,
        )
    except FhirError as error:
        return Refused.of(error)
