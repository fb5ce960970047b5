"""Messages held for review: list them, apply one despite its conflict, or reject one.

The mapper holds a message whose patient conflicts with the stored patient (another birth date or sex,
a wholly different name, another NHS number): status ``needs-review``, an OperationOutcome naming the
conflict in ``processing.outcome``, nothing written. An operator decides (``mscc messages review |
apply | reject``, or ``/admin/messages``):

- apply: the record goes back to ``ready`` with ``review.decision = "apply"`` (who, when); the mapper
  writes it then, onto the matched patient, without the conflict check;
- reject: the record becomes ``review-rejected`` with the reason (who, when); nothing is ever written
  from it, and it is kept.

Both are guarded by the record's status, so two operators cannot decide the same record twice. The
MSCC team's "Review patient match" Task of the record (``review_task.py``) is closed in the same
transaction: ``completed`` when applied, ``rejected`` when rejected, with who decided, as a new version
with its history and outbox event (``versions.py``) (so the ``patient-review`` topic announces it). A record held before
these Tasks existed has none: the decision is recorded all the same.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .messages import MessageRecord
from .retry import TransientError, run_transaction
from .review_task import decided, review_task_id
from .store import DURABLE, Document, Store
from .versions import next_version, read_version, write_versions

NEEDS_REVIEW = "needs-review"
REVIEW_REJECTED = "review-rejected"


class ReviewError(Exception):
    """The record does not exist (``status`` 404) or is not waiting for review (409)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def summary(doc: Document) -> dict[str, Any]:
    """What an operator needs to decide: which message, from whom, and the conflicts (masked values).
    ``KeyError`` when ``doc`` is not a message record."""
    record = MessageRecord.from_doc(doc)
    hl7, fhir = record.hl7v2_header, record.fhir_header
    processing = record.processing
    outcome = (processing.outcome if processing else None) or {}
    return {
        "id": record.id,
        "status": record.status or None,
        "received_at": record.received_at,
        "protocol": record.protocol,
        "message_type": (hl7.message_type if hl7 else fhir.interaction if fhir else "") or None,
        "sender": (hl7.sending_facility if hl7 else "") or (record.caller or {}).get("ods_code"),
        "control_id": hl7.control_id if hl7 else None,
        "held_at": processing.at if processing else None,
        "conflicts": [i.get("diagnostics") for i in outcome.get("issue", []) if i.get("code") == "conflict"],
        "review": record.review,
    }


async def held(store: Store, limit: int = 50) -> list[Document]:
    """Records waiting for review, oldest first (they block nothing, but each is a patient's message)."""
    cursor = store.messages.find({"status": NEEDS_REVIEW}, {"raw": 0, "text": 0}).sort("received_at", 1)
    return [doc async for doc in cursor.limit(limit)]


async def _close_task(store: Store, record_id: str, decision: dict[str, Any], session: Any) -> None:
    """The record's review Task, closed with the decision: a new version, its history and its outbox
    event (the one write path). Nothing when the record has no Task or it is closed already.
    ``Conflict`` when the Task changed while it was read (the whole decision is then run again)."""
    key = f"Task/{review_task_id(record_id)}"
    current = await store.resources.find_one({"_id": key}, session=session)
    if current is None or current["resource"].get("status") != "requested":
        return
    when: datetime = decision["at"]
    closed = decided(current["resource"], decision["decision"], decision["by"], when, decision.get("reason"))
    new = next_version(
        read_version(current), closed, now=when, source=f"urn:uuid:{record_id}", message_id=record_id, kind="updated"
    )
    if new is not None:
        await write_versions(store, [new], session=session)


async def _decide_once(store: Store, record_id: str, update: dict[str, Any], unset: dict[str, str]) -> Document | None:
    decision = {k.removeprefix("review."): v for k, v in update.items() if k.startswith("review.")}
    async with store.client.start_session() as session:
        async with await session.start_transaction(write_concern=DURABLE):
            changed = await store.messages.find_one_and_update(
                {"_id": record_id, "status": NEEDS_REVIEW},
                {"$set": update, "$unset": unset} if unset else {"$set": update},
                projection={"raw": 0, "text": 0},
                return_document=True,
                session=session,
            )
            if changed is not None:
                await _close_task(store, record_id, decision, session)
            return changed


async def _decide(store: Store, record_id: str, update: dict[str, Any], unset: dict[str, str]) -> Document:
    try:
        changed = await run_transaction(lambda: _decide_once(store, record_id, update, unset), what="review decision")
    except TransientError as exc:
        what = f"the review Task of record {record_id} kept changing while it was closed: try again"
        raise ReviewError(what, 409) from exc
    if changed is not None:
        return changed
    found = await store.messages.find_one({"_id": record_id}, {"status": 1})
    if found is None:
        raise ReviewError(f"no record {record_id}", 404)
    raise ReviewError(f"record {record_id} has status {found.get('status')!r}, not {NEEDS_REVIEW!r}", 409)


async def apply(store: Store, record_id: str, by: str, now: datetime | None = None) -> Document:
    """Queue the held record for mapping again, to be written despite its conflict; ``ReviewError``
    when it does not exist or is not held."""
    when = now or datetime.now(UTC)
    update = {
        "status": "ready",
        "review.status": "applied",
        "review.decision": "apply",
        "review.by": by,
        "review.at": when,
        "map_attempts": 0,
    }
    return await _decide(store, record_id, update, {"next_attempt_at": "", "lease": ""})


async def reject(store: Store, record_id: str, by: str, reason: str, now: datetime | None = None) -> Document:
    """Close the held record without writing anything from it; ``ReviewError`` when it does not exist,
    is not held, or no reason is given (400)."""
    if not reason.strip():
        raise ReviewError("a reason is required to reject a message", 400)
    when = now or datetime.now(UTC)
    update = {
        "status": REVIEW_REJECTED,
        "review.status": "rejected",
        "review.decision": "reject",
        "review.by": by,
        "review.at": when,
        "review.reason": reason.strip(),
    }
    return await _decide(store, record_id, update, {})
