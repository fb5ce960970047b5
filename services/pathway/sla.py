"""SLA clocks of MSCC referrals (NICE NG234) and the scan that writes their events, each once.

Clock: from first contact (CarePlan.period.start, else when the hub first stored the referral), a
window of 24 hours when neurological signs are present or not known, 7 days when they are absent:
the MRI deadline written on the CarePlan (``plan.py``), else the window of the pathway table
(``table.window``: ``window_hours`` of ``data/mscc-pathway.json``, the one place the windows live) for
the referral's neurological status.
The window is elapsed time: NICE counts hours, not service hours. The clock runs while the referral
is at received, triaged-accepted or mri-requested (``steps.CLOCK_STEPS``) and the CarePlan's MRI
activity is neither completed nor cancelled: an MRI reported, or a pathway ended, stops it.

Events (outbox, kind "sla", ``_id`` ``sla:<referral id>:<event>``, so each is written once however many
scanners run, however often):
  out-of-hours  first contact outside service hours (default 07:30-20:00 every day, Europe/London):
                ``pickup`` is the next opening, when the team will pick the referral up
  at-risk       ``at_risk_fraction`` (default 75%) of the window elapsed and the clock still running
  breached      the whole window elapsed and the clock still running
Time is never read here: ``scan_sla`` gets ``now``.

One referral never stops the scan of the others: a referral or plan whose shape the scan cannot read
(any exception but the database's) is recorded in ``pathway_faults`` (``faults.py``) and logged with its
id, and the scan goes on; it is tried again every pass (its clock matters more than the noise). A
neurological status that cannot be read is taken as "unknown": the safe 24-hour window, never none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pymongo.errors import DuplicateKeyError, PyMongoError

from shared.fhir import Resource
from shared.records import OutboxEvent
from shared.settings import Settings
from shared.store import Document, Store

from .effects import activity_keys, plan_activity_statuses
from .faults import Faults, Trouble
from .neurological import referral_reading
from .plan import care_plan_id
from .record import current_step, parse_time, truncate
from .steps import CLOCK_STEPS
from .table import window

log = logging.getLogger(__name__)

EVENTS = ("out-of-hours", "at-risk", "breached")


@dataclass(frozen=True)
class ServiceHours:
    """When the MSCC team works: ``opens``-``closes`` local time on ``days`` (0 = Monday)."""

    opens: time = time(7, 30)
    closes: time = time(20, 0)
    days: frozenset[int] = frozenset(range(7))
    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("Europe/London"))

    def is_open(self, when: datetime) -> bool:
        local = when.astimezone(self.zone)
        return local.weekday() in self.days and self.opens <= local.time().replace(tzinfo=None) < self.closes

    def next_opening(self, when: datetime) -> datetime:
        """The first opening time after ``when`` (UTC); ``ValueError`` if no day is a service day."""
        local = when.astimezone(self.zone)
        for offset in range(8):
            day = local.date() + timedelta(days=offset)
            opening = datetime.combine(day, self.opens, tzinfo=self.zone)
            if day.weekday() in self.days and opening > local:
                return opening.astimezone(UTC)
        raise ValueError("no service day in the week")


@dataclass(frozen=True)
class SlaRules:
    hours: ServiceHours = field(default_factory=ServiceHours)
    at_risk_fraction: float = 0.75

    @classmethod
    def from_settings(cls, settings: Settings) -> SlaRules:
        hours = ServiceHours(
            settings.service_opens,
            settings.service_closes,
            frozenset(settings.service_days),
            ZoneInfo(settings.service_time_zone),
        )
        return cls(hours, settings.sla_at_risk_fraction)


@dataclass(frozen=True)
class Clock:
    """One referral's MRI clock."""

    referral_id: str
    first_contact: datetime
    window: timedelta
    neurological: str

    @property
    def deadline(self) -> datetime:
        return self.first_contact + self.window


@dataclass(frozen=True)
class Due:
    """An SLA event that is due: its name, since when, and what it adds to the outbox event."""

    event: str
    due: datetime
    extra: dict[str, Any]


def due_events(clock: Clock, rules: SlaRules, now: datetime, running: bool) -> list[Due]:
    """The events due at ``now`` for ``clock``; at-risk and breached only while the clock ``running``."""
    out: list[Due] = []
    if not rules.hours.is_open(clock.first_contact):
        out.append(Due("out-of-hours", clock.first_contact, {"pickup": rules.hours.next_opening(clock.first_contact)}))
    if running:
        at_risk = clock.first_contact + clock.window * rules.at_risk_fraction
        if now >= at_risk:
            out.append(Due("at-risk", at_risk, {}))
        if now >= clock.deadline:
            out.append(Due("breached", clock.deadline, {}))
    return [d for d in out if d.due <= now]


def event_id(referral_id: str, event: str) -> str:
    return f"sla:{referral_id}:{event}"


def sla_event(clock: Clock, due: Due, request: Document, now: datetime) -> Document:
    """The outbox document of one SLA event (``at`` is when it became due)."""
    focus = f"ServiceRequest/{request['id']}/_history/{request['version']}"
    event = OutboxEvent(
        id=event_id(clock.referral_id, due.event),
        type="ServiceRequest",
        resource_id=request["id"],
        version=request["version"],
        kind="sla",
        created_at=now,
        focus=focus,
        extra={
            "sla_event": due.event,
            "due": due.due,
            "at": due.due,
            "first_contact": clock.first_contact,
            "deadline": clock.deadline,
            "window_hours": int(clock.window.total_seconds() // 3600),
            "neurological": clock.neurological,
            **due.extra,
        },
    )
    return event.to_doc()


async def _first_contact(store: Store, plan: Document, request: Document) -> datetime:
    start = parse_time((plan["resource"].get("period") or {}).get("start"))
    if start is not None:
        return start
    first = await store.history.find_one({"_id": f"ServiceRequest/{request['id']}/_history/1"})
    return truncate((first or request)["last_updated"])


def _planned_window(plan: Resource, start: datetime) -> timedelta | None:
    """The MRI deadline the CarePlan shows (set from the neurological status by ``plan.py``), as a window."""
    for activity in plan.get("activity") or []:
        detail = activity.get("detail") or {}
        if activity_keys().get(str(detail.get("description"))) == "mri":
            end = parse_time((detail.get("scheduledPeriod") or {}).get("end"))
            if end is not None and end > start:
                return end - start
    return None


async def open_clocks(store: Store, troubles: list[Trouble] | None = None) -> list[tuple[Clock, Document, bool]]:
    """Every active MSCC pathway with the referral and whether its MRI clock still runs.

    A plan or referral that cannot be read is left out and added to ``troubles`` (when given; else the
    error is raised); ``PyMongoError`` (the database) is always raised.
    """
    plans = [
        doc
        async for doc in store.resources.find(
            {"type": "CarePlan", "resource.status": "active", "resource.supportingInfo.reference": {"$exists": True}}
        )
    ]
    referral_ids: dict[str, Document] = {}
    for plan in plans:
        try:
            referral_ids.update(_referrals_of(plan))
        except Exception as exc:
            _keep(
                troubles, Trouble(f"CarePlan/{plan.get('id')}", plan.get("version"), exc, "its referral is not scanned")
            )
    requests = {
        d["id"]: d
        async for d in store.resources.find({"_id": {"$in": [f"ServiceRequest/{r}" for r in sorted(referral_ids)]}})
    }
    out = []
    for rid, plan in referral_ids.items():
        request = requests.get(rid)
        if request is None:
            continue
        try:
            out.append(await _open_clock(store, rid, plan, request, troubles))
        except PyMongoError:
            raise
        except Exception as exc:
            _keep(troubles, Trouble(f"ServiceRequest/{rid}", request.get("version"), exc, "no SLA events this pass"))
    return out


def _keep(troubles: list[Trouble] | None, trouble: Trouble) -> None:
    if troubles is None:
        raise trouble.error
    troubles.append(trouble)


def _referrals_of(plan: Document) -> dict[str, Document]:
    found: dict[str, Document] = {}
    for item in plan["resource"].get("supportingInfo") or []:
        ref = str(item.get("reference") or "")
        rid = ref.removeprefix("ServiceRequest/")
        if ref.startswith("ServiceRequest/") and care_plan_id(rid) == plan["id"]:
            found[rid] = plan
    return found


async def _open_clock(
    store: Store, rid: str, plan: Document, request: Document, troubles: list[Trouble] | None
) -> tuple[Clock, Document, bool]:
    try:
        status = referral_reading(request["resource"])
    except Exception as exc:  # fail safe: an unreadable status takes the 24-hour window
        _keep(troubles, Trouble(f"ServiceRequest/{rid}", request.get("version"), exc, "read as unknown (24 hours)"))
        status = "unknown"
    start = await _first_contact(store, plan, request)
    clock = Clock(rid, start, _planned_window(plan["resource"], start) or window(status), status)
    mri_done = plan_activity_statuses(plan["resource"]).get("mri") in ("completed", "cancelled")
    running = current_step(request["resource"]) in CLOCK_STEPS and not mri_done
    return clock, request, running


async def scan_sla(
    store: Store, now: datetime, rules: SlaRules | None = None, faults: Faults | None = None
) -> list[Document]:
    """Write every SLA event due at ``now`` that is not written yet; the events written by this call.

    Safe to run repeatedly and from several processes: an event's id is deterministic and a duplicate
    insert is skipped. A referral that cannot be read is recorded in ``faults`` and skipped this pass;
    ``PyMongoError`` if the database fails (nothing half-written: one insert each).
    """
    rules = rules or SlaRules()
    faults = faults or Faults(store)
    troubles: list[Trouble] = []
    pending: list[Document] = []
    for clock, request, running in await open_clocks(store, troubles):
        try:
            pending += [sla_event(clock, due, request, now) for due in due_events(clock, rules, now, running)]
        except Exception as exc:
            troubles.append(Trouble(f"ServiceRequest/{clock.referral_id}", request.get("version"), exc))
    for trouble in {t.record: t for t in reversed(troubles)}.values():  # one count per record and pass
        await faults.record("sla", trouble, now)
    await faults.clear("sla", [t.record for t in troubles])
    if not pending:
        return []
    existing = {d["_id"] async for d in store.outbox.find({"_id": {"$in": [p["_id"] for p in pending]}}, {"_id": 1})}
    written = []
    for doc in pending:
        if doc["_id"] in existing:
            continue
        try:
            await store.outbox.insert_one(doc)
        except DuplicateKeyError:
            continue  # another scanner wrote it first
        log.info("SLA event", extra={"referral": doc["id"], "sla_event": doc["sla_event"]})
        written.append(doc)
    return written
