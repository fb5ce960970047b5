"""The ``messages`` record a FHIR request body is kept as, whichever part of the hub received it.

FHIR create and Bundles (intake) and the pathway's updates and ``$transition`` (kept with the versions
they write, status "applied") store the body this way, so every FHIR input is found, listed and
reprocessed like an HL7v2 message. Pure: the caller writes the document (in its own transaction).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .messages import FHIR, MessageRecord
from .records import MessageOutcome


def fhir_message(
    record_id: str,
    now: datetime,
    body: bytes,
    caller: dict[str, Any] | None,
    peer: str | None,
    header: dict[str, Any],
    *,
    status: str,
    issues: list[dict[str, Any]],
    reason: str | None = None,
    http_status: int | None = None,
    fhir: dict[str, Any] | None = None,
    reply: dict[str, Any] | None = None,
    dedup_key: str | None = None,
    processing: MessageOutcome | None = None,
    size: int | None = None,
) -> MessageRecord:
    """The record of a FHIR request body (its exact bytes kept): "ready" for the mapper, "rejected" with
    the ``reason`` and the ``http_status`` answered, or "applied" with its ``processing``. ``size`` is
    the full size of a body of which only ``body``, its first bytes, is kept (``truncated``)."""
    return MessageRecord(
        id=record_id,
        received_at=now,
        protocol=FHIR,
        channel="http",
        peer=peer or "unknown",
        caller=caller,
        raw=body,
        size=size,
        text=body.decode("utf-8", errors="replace"),
        charset="utf-8",
        header=header,
        status=status,
        reason=reason,
        http_status=http_status,
        issues=issues,
        fhir=fhir,
        reply=reply,
        dedup_key=dedup_key,
        processing=processing,
        truncated=size is not None,
    )
