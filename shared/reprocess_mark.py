"""The mark ``mscc messages reprocess`` leaves on the record it reprocesses (``reprocessed``), and the state
it puts the record in.

A run claims the record before it does anything: ``reprocessed: {at, by, outcome: "in progress",
records: [], owner, until}``, leased as the mapper's claims are (``shared/leases.py``): ``owner`` is the
run's token, ``until`` when the mark expires, pushed forward every ``MSCC_LEASE_HEARTBEAT_S`` while the
run works (``MSCC_REPROCESS_LEASE_S`` ahead). When the work is done the mark is replaced by its result,
``{at, by, outcome, records}`` without a lease, and ``reprocessed_as`` is set. A run killed in between
(``kill -9``, the host lost) stops renewing: once ``until`` has passed the record is *interrupted*
(``mscc messages show`` and the dashboard say so) and the next run takes it over as if it had not been
reprocessed. A mark "in progress" without ``until`` (written before marks were leased) is interrupted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .messages import MessageRecord
from .store import Document

IN_PROGRESS = "in progress"  # the outcome of a mark whose run has not finished

# The states ``state`` answers.
NOT_REPROCESSED = ""
DONE = "done"
RUNNING = "in progress"
INTERRUPTED = "interrupted"


def mark(by: str, owner: str, now: datetime, until: datetime) -> Document:
    """The mark a run writes on the record it claims, before any work."""
    return {"at": now, "by": by, "outcome": IN_PROGRESS, "records": [], "owner": owner, "until": until}


def claimable(now: datetime) -> Document:
    """The condition of a record a run may claim: never reprocessed, or its mark interrupted. (``$not``
    matches a mark without ``until`` too.)"""
    return {
        "reprocessed_as": {"$exists": False},
        "$or": [
            {"reprocessed": {"$exists": False}},
            {"reprocessed.outcome": IN_PROGRESS, "reprocessed.until": {"$not": {"$gte": now}}},
        ],
    }


def _utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def state(record: MessageRecord, now: datetime) -> str:
    """``NOT_REPROCESSED``, ``DONE``, ``RUNNING`` (a run holds the mark) or ``INTERRUPTED`` (its run
    stopped before finishing and the mark expired: the record may be reprocessed again)."""
    again = record.reprocessed or {}
    if record.extra.get("reprocessed_as") or (again and again.get("outcome") != IN_PROGRESS):
        return DONE
    if not again:
        return NOT_REPROCESSED
    until = _utc(again.get("until"))
    return RUNNING if until is not None and until >= now else INTERRUPTED


def open_to_run(record: MessageRecord, now: datetime) -> bool:
    """Whether a run may take the record: not reprocessed yet, or its earlier run interrupted."""
    return state(record, now) in (NOT_REPROCESSED, INTERRUPTED)


def started(record: MessageRecord) -> datetime | None:
    """When the run that left the mark claimed the record (None: no mark)."""
    return _utc((record.reprocessed or {}).get("at"))


def expires(record: MessageRecord) -> datetime | None:
    """When the mark of a run in progress expires unless renewed (None: no lease on it)."""
    return _utc((record.reprocessed or {}).get("until"))
