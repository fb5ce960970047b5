"""What intake says about each message record it stores: its correlation id, a count, a log line.

``stamp`` gives each record its correlation id before it is written (``shared/correlation.py``: the id
an HTTP caller sent, else the record's own id). ``count`` runs once the write is confirmed, before the
answer is sent: one counter increment per record (``mscc_messages_received_total``) and one log line
carrying the correlation id; no I/O, so the ACK path stays cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from shared import correlation
from shared.messages import FHIR, HL7V2_BATCH
from shared.metrics import MESSAGE_TYPES, RECEIVED, SENDERS
from shared.store import Document

log = logging.getLogger(__name__)

STATUSES = {"ready": "accepted", "rejected": "rejected"}


def stamp(docs: Sequence[Document]) -> None:
    """Give each record its correlation id (kept if it has one)."""
    bound = correlation.current()
    for doc in docs:
        doc.setdefault(correlation.FIELD, bound or doc["_id"])


def _labels(doc: Document) -> tuple[str, str, str]:
    """sender, type, channel of a stored record."""
    header: dict[str, Any] = doc.get("header") or {}
    if doc.get("protocol") == FHIR:
        kind = header.get("resource_type") or ("Bundle" if header.get("interaction") == "bundle" else "")
        sender = (doc.get("caller") or {}).get("ods_code")
        return SENDERS(sender), MESSAGE_TYPES(kind), "fhir"
    return SENDERS(header.get("sending_facility")), MESSAGE_TYPES(header.get("message_type")), str(doc["channel"])


def count(doc: Document, *, inserted: bool = True) -> None:
    """Count one record written (``inserted``) or found as the original of a resend (not inserted)."""
    if doc.get("protocol") == HL7V2_BATCH:
        return  # a batch's envelope: its messages are counted one by one
    status = STATUSES.get(str(doc.get("status")), "accepted") if inserted else "duplicate"
    sender, kind, channel = _labels(doc)
    RECEIVED(sender, kind, channel, status).inc()
    if log.isEnabledFor(logging.INFO):
        extra = {
            correlation.FIELD: correlation.of_message(doc),
            "record": doc["_id"],
            "status": status,
            "sender": sender,
            "type": kind,
            "channel": channel,
        }
        if doc.get("reason"):
            extra["reason"] = str(doc["reason"])[:300]
        log.info("message received", extra=extra)


def not_stored(docs: Sequence[Document]) -> None:
    """Count records the database did not confirm (the sender is asked to resend, or refused)."""
    for doc in docs:
        if doc.get("protocol") != HL7V2_BATCH:
            RECEIVED(*_labels(doc), "not_stored").inc()


def count_duplicate_create(resource_type: str, ods_code: str, resource_id: object) -> None:
    """Count a FHIR create answered with the resource already stored (the same create again): nothing
    new is written, so there is no record to count."""
    sender, kind = SENDERS(ods_code), MESSAGE_TYPES(resource_type)
    RECEIVED(sender, kind, "fhir", "duplicate").inc()
    log.info(
        "message received",
        extra={"status": "duplicate", "sender": sender, "type": kind, "channel": "fhir", "resource": resource_id},
    )
