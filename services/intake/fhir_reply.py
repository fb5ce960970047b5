"""What FHIR intake answers: a status, a body (a resource or an OperationOutcome) and headers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from shared.fhir import Resource


@dataclass
class FhirReply:
    status: int
    body: Resource
    headers: dict[str, str] = field(default_factory=dict)


def etag(version: int | str) -> str:
    """The weak ETag of a version: ``W/"3"``."""
    return f'W/"{version}"'


def http_date(when: datetime) -> str:
    """An HTTP date (``Last-Modified``) in GMT."""
    return when.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
