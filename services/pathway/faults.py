"""Records the pathway scanner failed on, kept in ``pathway_faults`` so one bad record is visible and
never stops the scan of the others.

One document per record and kind (``_id`` ``<kind>:<Type/id>``; kind "sla" for a referral whose clock
could not be read, "report" for an MRI report that could not be followed):

    record        "ServiceRequest/<id>", "CarePlan/<id>" or "DiagnosticReport/<id>"
    version       the version of the record that failed (a new version starts the count again)
    attempts      passes that failed on this version
    status        "retrying", or "set-aside" once ``attempts`` reaches the limit (if there is one)
    error         the exception, as text; ``outcome`` the same as an OperationOutcome
    first_at / last_at

What the scanner does with a fault is its own rule (``sla.py``: keep trying every pass, the clock
matters; ``reports.py``: set the report aside after the limit). A fault is removed when its record
is next processed without error. Writing a fault may itself raise ``PyMongoError`` (the database).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.fhir import issue
from shared.store import DURABLE, Document, Store

log = logging.getLogger(__name__)

COLLECTION = "pathway_faults"


@dataclass(frozen=True)
class Trouble:
    """One record a pass failed on: what, which version, the error, and what the pass did instead."""

    record: str
    version: int | None
    error: BaseException
    note: str = ""

    @property
    def text(self) -> str:
        return f"{type(self.error).__name__}: {self.error}"[:1000]


class Faults:
    def __init__(self, store: Store, max_attempts: int | None = None) -> None:
        """``max_attempts``: failed passes after which a record is set aside; None: never (retried each pass)."""
        self._faults = store.db.get_collection(COLLECTION, write_concern=DURABLE)
        self.max_attempts = max_attempts

    async def record(self, kind: str, trouble: Trouble, now: datetime) -> Document:
        """Count one failed attempt on ``trouble.record`` and return the fault as stored; logs the first
        failure of a version, and the one that sets it aside, with the record's id."""
        key = f"{kind}:{trouble.record}"
        current = await self._faults.find_one({"_id": key})
        same = current is not None and current.get("version") == trouble.version
        attempts = int(current["attempts"]) + 1 if same and current else 1
        diagnostics = f"{trouble.record}: {trouble.text}" + (f"; {trouble.note}" if trouble.note else "")
        fault: dict[str, Any] = {
            "_id": key,
            "kind": kind,
            "record": trouble.record,
            "version": trouble.version,
            "attempts": attempts,
            "status": "set-aside" if self.max_attempts and attempts >= self.max_attempts else "retrying",
            "error": trouble.text,
            "note": trouble.note,
            "outcome": {"resourceType": "OperationOutcome", "issue": [issue("error", "exception", diagnostics)]},
            "first_at": current["first_at"] if same and current else now,
            "last_at": now,
        }
        await self._faults.replace_one({"_id": key}, fault, upsert=True)
        if attempts == 1 or attempts == self.max_attempts:
            log.error(
                "pathway scan failed on a record",
                exc_info=trouble.error,
                extra={"kind": kind, "record": trouble.record, "attempts": attempts, "note": trouble.note},
            )
        return fault

    async def clear(self, kind: str, keep: list[str]) -> None:
        """Remove ``kind`` faults of every record except those in ``keep`` (they were processed)."""
        await self._faults.delete_many({"kind": kind, "record": {"$nin": keep}})

    async def resolved(self, kind: str, record: str) -> None:
        await self._faults.delete_one({"_id": f"{kind}:{record}"})

    async def list(self, kind: str | None = None) -> list[Document]:
        query = {"kind": kind} if kind else {}
        return [d async for d in self._faults.find(query).sort("last_at", -1)]
