"""The ``messages`` record a FHIR request body is kept as, whichever part of the hub received it.

FHIR create and Bundles (intake) and the pathway's updates and ``$transition`` (kept with the versions
they write, status "applied") store the body this way, so every FHIR input is found, listed and
reprocessed like an HL7v2 message. Pure: the caller writes the document (in its own transaction).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .store import Document


def fhir_record(
    record_id: str, now: datetime, body: bytes, caller: dict[str, Any] | None, peer: str | None, header: dict[str, Any]
) -> Document:
    """The ``messages`` document every FHIR request body starts as (its exact bytes kept)."""
    return {
        "_id": record_id,
        "received_at": now,
        "protocol": "fhir",
        "channel": "http",
        "peer": peer or "unknown",
        "caller": caller,
        "raw": body,
        "size": len(body),
        "text": body.decode("utf-8", errors="replace"),
        "charset": "utf-8",
        "header": header,
        "attempts": 0,
    }
