"""How an attempt is recorded on its delivery: the MongoDB updates for delivered, retry and dead.

Pure: the lane writes them. Every update is guarded by ``status: "pending"``, so an operator's ``$skip``
or a redelivery that got there first is never overwritten. The newest ``KEPT_ATTEMPTS`` attempts are
kept on the delivery; ``attempt_count`` counts them all.
"""

from __future__ import annotations

from datetime import datetime

from pymongo import UpdateOne

from shared.store import Document

from .model import Attempt, Delivery, SendResult

KEPT_ATTEMPTS = 50  # attempts kept on one delivery record (the newest)


def _push(attempt: Document) -> Document:
    return {"attempts": {"$each": [attempt], "$slice": -KEPT_ATTEMPTS}}


def pending_guard(delivery: Delivery) -> Document:
    """The guard of every update: the delivery, still pending."""
    return {"_id": delivery.id, "status": "pending"}


def delivered_update(delivery: Delivery, result: SendResult, now: datetime) -> tuple[UpdateOne, Document]:
    """The update for a delivered event, and the ``last_delivery`` summary the subscription shows."""
    attempt = Attempt(now, "delivered", result.code, result.latency_ms).to_doc()
    update = UpdateOne(
        pending_guard(delivery),
        {
            "$set": {"status": "delivered", "delivered_at": now},
            "$unset": {"next_attempt_at": "", "last_error": ""},
            "$push": _push(attempt),
            "$inc": {"attempt_count": 1},
        },
    )
    return update, {"event_number": delivery.event_number, "event_id": delivery.event_id, **attempt}


def failed_update(result: SendResult, now: datetime, next_at: datetime | None) -> Document:
    """The update for a failed attempt: tried again at ``next_at``, or (None) dead-lettered."""
    attempt = Attempt(
        now, "retry" if next_at else "dead", result.code, result.latency_ms, result.error, result.retry_after_s
    ).to_doc()
    error = result.error or result.code
    if next_at is not None:
        return {
            "$set": {"next_attempt_at": next_at, "last_error": error},
            "$push": _push(attempt),
            "$inc": {"attempt_count": 1},
        }
    return {
        "$set": {"status": "dead", "dead_at": now, "last_error": error},
        "$push": _push(attempt),
        "$inc": {"attempt_count": 1},
        "$unset": {"next_attempt_at": ""},
    }


def dead_reason(delivery: Delivery, result: SendResult) -> str:
    """What the subscription's ``error`` says about its dead letter."""
    attempts = delivery.attempt_count + 1
    return (
        f"event {delivery.event_number} ({delivery.event.focus.reference}) dead-lettered after {attempts} "
        f"attempt(s): {result.error or result.code}"
    )
