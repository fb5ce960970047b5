"""Final whole-spine MRI reports move their referral to "mri-reported" (HL7v2 ORU^R01, or any stored
DiagnosticReport), after the mapper has written them.

The mapper is pure and its writer knows nothing of the pathway, so this follows the store instead:
every DiagnosticReport version not yet looked at (``pathway_checked`` unset on its ``resources``
document; the writer replaces the document for a new version, so a corrected report is looked at
again) is checked once:

1. final, corrected or amended, and its code (text, displays, codes; of the report or of its order)
   matches ``MSCC_PATHWAY_MRI_PATTERN`` (whole-spine MRI);
2. its referral: a ``basedOn`` that is itself a referral, or an order whose ``basedOn`` names one;
   else the patient's one open referral (at received, triaged-accepted or mri-requested, first
   contact not after the report), preferring one awaiting MRI. Several candidates: not guessed;
3. the move to mri-reported, at the report's issued time (else effective, else stored time).

A move the pathway refuses, an ambiguous patient, or a time the pathway cannot take is never an
exception: it is an issue on the ORU's processing record (``messages.processing.issues``) and on
``pathway_checked``. An operator then moves the referral with $transition.

A report the follower fails on (any exception but the database's: a shape it cannot read, a bug) never
stops the others: it is recorded in ``pathway_faults`` and logged with its id, tried again next pass,
and after ``max_attempts`` set aside: ``pathway_checked`` outcome "failed" and an error issue on its
message. Its referral's clock keeps running meanwhile, so the SLA alerts still fire.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo.errors import PyMongoError

from shared.fhir import FhirError, Resource, issue
from shared.store import Document, Store

from .faults import Faults, Trouble
from .plan import care_plan_id
from .record import current_step, history, parse_time, truncate
from .steps import STEPS
from .transitions import Origin, apply_transition

log = logging.getLogger(__name__)

FINAL = ("final", "corrected", "amended")
AWAITING_MRI = ("triaged-accepted", "mri-requested")
OPEN = ("received", *AWAITING_MRI)


@dataclass(frozen=True)
class Outcome:
    report: str
    outcome: str  # moved | repeat | not-final | not-mri | no-referral | ambiguous | refused | error | failed
    referral: str | None = None
    diagnostics: str | None = None


def _texts(concept: Any) -> list[str]:
    if not isinstance(concept, dict):
        return []
    out = [str(concept.get("text") or "")]
    for coding in concept.get("coding") or []:
        out += [str(coding.get("display") or ""), str(coding.get("code") or "")]
    return [t for t in out if t]


def looks_like_mri(pattern: re.Pattern[str], *concepts: Any) -> bool:
    return any(pattern.search(text) for concept in concepts for text in _texts(concept))


def _refs(items: Any, resource_type: str) -> list[str]:
    prefix = f"{resource_type}/"
    return [
        str(i["reference"])[len(prefix) :]
        for i in items or []
        if isinstance(i, dict) and str(i.get("reference") or "").startswith(prefix)
    ]


def report_time(doc: Document) -> datetime:
    resource = doc["resource"]
    for value in (resource.get("issued"), resource.get("effectiveDateTime")):
        parsed = parse_time(value)
        if parsed is not None:
            return parsed
    return truncate(doc["last_updated"])


class ReportFollower:
    """Looks at each new DiagnosticReport version once (see the module docstring)."""

    def __init__(self, store: Store, mri_pattern: str, batch: int = 200, max_attempts: int = 3) -> None:
        self._store = store
        self._pattern = re.compile(mri_pattern)
        self._batch = batch
        self._faults = Faults(store, max_attempts)

    async def run_once(self, now: datetime) -> list[Outcome]:
        """Check the reports not yet looked at; their outcomes. ``PyMongoError`` if the database fails
        (unmarked reports are looked at again next time: the move is idempotent)."""
        cursor = self._store.resources.find({"type": "DiagnosticReport", "pathway_checked": None}).limit(self._batch)
        outcomes = []
        async for doc in cursor:
            try:
                outcome = await self._follow(doc, now)
                await self._mark(doc, outcome, now)
                await self._faults.resolved("report", f"DiagnosticReport/{doc['id']}")
            except PyMongoError:
                raise
            except Exception as exc:  # this report only: recorded, and the others are still followed
                outcome = await self._failed(doc, exc, now)
            outcomes.append(outcome)
        return outcomes

    async def _failed(self, doc: Document, exc: Exception, now: datetime) -> Outcome:
        key = f"DiagnosticReport/{doc.get('id')}"
        fault = await self._faults.record("report", Trouble(key, doc.get("version"), exc), now)
        text = f"{key} could not be followed: {fault['error']}"
        if fault["status"] != "set-aside":
            return Outcome(key, "error", None, f"{text} (attempt {fault['attempts']}, tried again next pass)")
        outcome = Outcome(key, "failed", None, f"{text}; set aside after {fault['attempts']} attempts")
        await self._mark(doc, outcome, now)
        return outcome

    async def _orders(self, report: Resource) -> list[Document]:
        ids = [f"ServiceRequest/{i}" for i in _refs(report.get("basedOn"), "ServiceRequest")]
        return [d async for d in self._store.resources.find({"_id": {"$in": ids}})]

    async def _is_referral(self, referral_id: str) -> bool:
        return (
            await self._store.resources.find_one({"_id": f"CarePlan/{care_plan_id(referral_id)}"}, {"_id": 1})
            is not None
        )

    async def _linked(self, orders: list[Document]) -> list[str]:
        found: list[str] = []
        for order in orders:
            candidates = [order["id"], *_refs(order["resource"].get("basedOn"), "ServiceRequest")]
            found += [c for c in candidates if c not in found and await self._is_referral(c)]
        return found

    async def _by_patient(self, report: Resource, at: datetime, exclude: set[str]) -> list[Document]:
        subject = (report.get("subject") or {}).get("reference")
        if not subject:
            return []
        open_ones = []
        async for doc in self._store.resources.find({"type": "ServiceRequest", "resource.subject.reference": subject}):
            if doc["id"] in exclude or current_step(doc["resource"]) not in OPEN:
                continue
            plan = await self._store.resources.find_one({"_id": f"CarePlan/{care_plan_id(doc['id'])}"})
            start = parse_time(((plan or {}).get("resource", {}).get("period") or {}).get("start"))
            if plan is not None and (start is None or start <= at):
                open_ones.append(doc)
        awaiting = [d for d in open_ones if current_step(d["resource"]) in AWAITING_MRI]
        return awaiting if len(awaiting) == 1 else open_ones

    async def _follow(self, doc: Document, now: datetime) -> Outcome:
        report: Resource = doc["resource"]
        key = f"DiagnosticReport/{doc['id']}"
        if report.get("status") not in FINAL:
            return Outcome(key, "not-final")
        orders = await self._orders(report)
        if not looks_like_mri(self._pattern, report.get("code"), *(o["resource"].get("code") for o in orders)):
            return Outcome(key, "not-mri")
        at = report_time(doc)
        referrals = await self._linked(orders)
        if not referrals:
            matches = await self._by_patient(report, at, {o["id"] for o in orders})
            if len(matches) > 1:
                names = ", ".join(f"ServiceRequest/{m['id']}" for m in matches)
                return Outcome(key, "ambiguous", None, f"MRI report {key}: several open MSCC referrals ({names})")
            referrals = [m["id"] for m in matches]
        if not referrals:
            return Outcome(key, "no-referral")
        return await self._move(doc, referrals[0], at, now)

    async def _move(self, doc: Document, referral_id: str, at: datetime, now: datetime) -> Outcome:
        key = f"DiagnosticReport/{doc['id']}"
        source = await self._store.history.find_one({"_id": f"{key}/_history/{doc['version']}"}, {"message_id": 1})
        message_id = (source or {}).get("message_id")
        origin = Origin(source=f"hl7v2:{message_id}" if message_id else "report", message_id=message_id)
        try:
            result = await apply_transition(
                self._store,
                referral_id,
                "mri-reported",
                at,
                note=f"final whole-spine MRI report {key}",
                who="MRI report feed",
                basis=key,
                origin=origin,
                clock=lambda: now,
            )
        except FhirError as exc:
            return await self._refused(key, referral_id, exc)
        return Outcome(key, "moved" if result.changed else "repeat", referral_id)

    async def _refused(self, key: str, referral_id: str, exc: FhirError) -> Outcome:
        request = await self._store.resources.find_one({"_id": f"ServiceRequest/{referral_id}"})
        reached = [e.step for e in history(request["resource"])] if request else []
        if "mri-reported" in reached:
            text = f"{key}: ServiceRequest/{referral_id} already had its MRI reported; the pathway is unchanged"
            return Outcome(key, "repeat", referral_id, text)
        text = f"{key}: ServiceRequest/{referral_id} not moved to mri-reported: {exc}"
        return Outcome(key, "refused", referral_id, text)

    async def _mark(self, doc: Document, outcome: Outcome, now: datetime) -> None:
        mark = {"version": doc["version"], "at": now, "outcome": outcome.outcome, "referral": outcome.referral}
        if outcome.diagnostics:
            mark["diagnostics"] = outcome.diagnostics
        await self._store.resources.update_one(
            {"_id": doc["_id"], "version": doc["version"]}, {"$set": {"pathway_checked": mark}}
        )
        if outcome.outcome in ("moved", "repeat", "ambiguous", "refused", "failed"):
            await self._note_on_message(doc, outcome)

    async def _note_on_message(self, doc: Document, outcome: Outcome) -> None:
        source = await self._store.history.find_one(
            {"_id": f"DiagnosticReport/{doc['id']}/_history/{doc['version']}"}, {"message_id": 1}
        )
        if not source or not source.get("message_id"):
            return
        severity = {"ambiguous": "warning", "refused": "warning", "failed": "error"}.get(outcome.outcome, "information")
        text = outcome.diagnostics or (
            f"DiagnosticReport/{doc['id']}: ServiceRequest/{outcome.referral} moved to "
            f"{STEPS['mri-reported'].display.lower()}"
        )
        await self._store.messages.update_one(
            {"_id": source["message_id"]},
            {
                "$push": {
                    "processing.issues": issue(
                        severity,
                        {"warning": "business-rule", "error": "exception"}.get(severity, "informational"),
                        text,
                    )
                }
            },
        )
        if severity != "information":
            log.warning(
                "MRI report not applied to the pathway", extra={"report": doc["id"], "outcome": outcome.outcome}
            )
