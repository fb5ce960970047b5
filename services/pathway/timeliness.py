"""The NICE NG234 timeliness audit: how soon each month's referrals had their MRI and their treatment plan.

What is measured is defined here once, in the pathway's own step names:

  received  first contact: ``CarePlan.period.start`` (RF1-7 / MSH-7 / ``authoredOn``), else when the
            hub first stored the referral (``transitions.first_contact``, the clock the SLA scanner runs)
  the MRI   the first ``mri-reported`` step (``MRI_STEP``) in the referral's pathway history
  the plan  the first ``plan-agreed-*`` step (``PLAN_STEPS``)

A referral belongs to the calendar month (``Europe/London`` by default: BST and GMT alike) of its first
contact, and to the referring trust its requester names (else the trust its record is visible to).
Its MRI window is the pathway table's (``table.window``: 24 hours with neurological signs present or
unknown, 7 days with none), the plan's 24 hours from the MRI (``PLAN_WINDOW``). Each referral gets one
outcome per window:

  met         the step within its window (exactly on the deadline counts as met)
  late        the step after its window                                          a breach
  open-late   no step yet, still open, window elapsed                            a breach
  ended-late  the pathway ended without the step after the window had elapsed    a breach
  pending     no step yet, still open, window not elapsed       not counted (neither met nor breached)
  ended       ended without the step (not MSCC, advice only, discharged) within the window: not counted

Cancelled referrals (step ``cancelled``, or a ServiceRequest revoked or entered in error) are left out of
every figure and counted apart. Everything above the reader (``load_times``) is pure: ``now`` is given.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from shared.fhir import Resource
from shared.store import Document, Store
from shared.visibility import Visibility, trust_code, trusts_of

from .data_quality import requester_organisation
from .neurological import referral_reading
from .plan import care_plan_id
from .record import current_step, history
from .steps import PLAN_STEPS, STEPS
from .table import service_ods, window, window_label
from .transitions import first_contact

MRI_STEP = "mri-reported"
PLAN_WINDOW = timedelta(hours=24)
CANCELLED_STEP = "cancelled"
CANCELLED_STATUSES = frozenset({"revoked", "entered-in-error"})
LONDON = "Europe/London"
UNKNOWN_TRUST = "unknown"

# The three windows reported, each a group of the MeasureReport: key -> what it says.
SIGNS = "mri-signs-or-unknown"
NO_SIGNS = "mri-no-signs"
PLAN = "plan-after-mri"
GROUPS = (SIGNS, NO_SIGNS, PLAN)
GROUP_TEXT = {
    SIGNS: "Whole-spine MRI within its window: neurological signs present or unknown",
    NO_SIGNS: "Whole-spine MRI within its window: no neurological signs",
    PLAN: "Definitive treatment plan within 24 hours of the MRI",
}
TIMES = ("referral-to-mri", "mri-to-plan")
TIME_TEXT = {"referral-to-mri": "Hours from referral to MRI reported", "mri-to-plan": "Hours from MRI to plan agreed"}
BREACHES = frozenset({"late", "open-late", "ended-late"})
COUNTED = BREACHES | {"met"}
NOTES = (
    "cancelled referrals are excluded from every figure (counted under 'cancelled')",
    "referrals still open past their window are counted as breaches (open-late)",
    "referrals ended without the step within its window are not counted; after it, they are breaches",
    "referrals still within their window are not counted yet (pending)",
)
_MONTH = re.compile(r"^(19[0-9]{2}|2[0-9]{3})-(0[1-9]|1[0-2])$")  # 1900-2999: any audit, never a year 0


@dataclass(frozen=True)
class Month:
    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Month:
        """``2026-11`` -> Month; ``ValueError`` saying what a month looks like."""
        match = _MONTH.match(text.strip())
        if match is None:
            raise ValueError(f"{text!r} is not a month: give it as YYYY-MM (1900-2999), e.g. 2026-11")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    def bounds(self, zone: ZoneInfo) -> tuple[datetime, datetime]:
        """The month's first instant and the next month's, in UTC (local midnight, BST or GMT)."""
        following = Month(self.year + self.month // 12, self.month % 12 + 1)
        start = datetime(self.year, self.month, 1, tzinfo=zone)
        end = datetime(following.year, following.month, 1, tzinfo=zone)
        return start.astimezone(UTC), end.astimezone(UTC)


@dataclass(frozen=True)
class ReferralTimes:
    """One referral's recorded step times, as the audit reads them."""

    referral_id: str
    trust: str
    received: datetime
    neurological: str  # present, absent or unknown
    step: str  # the current step
    mri_at: datetime | None = None
    plan_at: datetime | None = None
    ended_at: datetime | None = None  # when a final step was reached
    cancelled: bool = False

    @property
    def mri_window(self) -> timedelta:
        return window(self.neurological)

    @property
    def group(self) -> str:
        return NO_SIGNS if self.neurological == "absent" else SIGNS


def referral_times(
    referral_id: str, trust: str, request: Resource, received: datetime, neurological: str
) -> ReferralTimes:
    """The times of a referral ServiceRequest's pathway history (``record.history``)."""
    entries = history(request)
    step = current_step(request)
    mri = [e.at for e in entries if e.step == MRI_STEP]
    plans = [e.at for e in entries if e.step in PLAN_STEPS]
    ended = entries[-1].at if entries and STEPS[step].final else None
    cancelled = step == CANCELLED_STEP or request.get("status") in CANCELLED_STATUSES
    return ReferralTimes(
        referral_id, trust, received, neurological, step, min(mri, default=None), min(plans, default=None),
        ended, cancelled,
    )  # fmt: skip


def _outcome(start: datetime, span: timedelta, done: datetime | None, ended: datetime | None, now: datetime) -> str:
    deadline = start + span
    if done is not None:
        return "met" if done <= deadline else "late"
    if ended is not None:
        return "ended-late" if ended > deadline else "ended"
    return "open-late" if now > deadline else "pending"


def mri_outcome(times: ReferralTimes, now: datetime) -> str:
    """The MRI outcome (see the module docstring) of a referral that is not cancelled."""
    return _outcome(times.received, times.mri_window, times.mri_at, times.ended_at, now)


def plan_outcome(times: ReferralTimes, now: datetime) -> str | None:
    """The plan outcome, or None when there is no MRI to count from."""
    if times.mri_at is None:
        return None
    return _outcome(times.mri_at, PLAN_WINDOW, times.plan_at, times.ended_at, now)


def hours(span: timedelta) -> float:
    return span.total_seconds() / 3600


def median(values: list[float]) -> float | None:
    """The median (the mean of the two middle values when their number is even); None for none."""
    return statistics.median(values) if values else None


def percentile(values: list[float], p: float) -> float | None:
    """The ``p``th percentile by the nearest-rank method (always one of the values); None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class GroupFigures:
    """One window: initial population, denominator (those with an outcome), numerator (met)."""

    population: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def add(self, outcome: str) -> None:
        self.population += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    @property
    def numerator(self) -> int:
        return self.outcomes.get("met", 0)

    @property
    def denominator(self) -> int:
        return sum(n for o, n in self.outcomes.items() if o in COUNTED)

    @property
    def breaches(self) -> int:
        return sum(n for o, n in self.outcomes.items() if o in BREACHES)

    @property
    def score(self) -> float | None:
        return self.numerator / self.denominator if self.denominator else None


@dataclass(frozen=True)
class Durations:
    count: int
    median_hours: float | None
    p90_hours: float | None

    @classmethod
    def of(cls, values: list[float]) -> Durations:
        return cls(len(values), median(values), percentile(values, 90))


@dataclass
class Figures:
    """The figures of one stratum: a trust, or every trust (``trust`` None)."""

    trust: str | None
    referrals: int = 0
    cancelled: int = 0
    groups: dict[str, GroupFigures] = field(default_factory=lambda: {g: GroupFigures() for g in GROUPS})
    times: dict[str, Durations] = field(default_factory=dict)

    @property
    def counted(self) -> int:
        return self.referrals - self.cancelled


def figures(trust: str | None, referrals: Iterable[ReferralTimes], now: datetime) -> Figures:
    """The figures of ``referrals`` (all of one stratum) at ``now``."""
    out = Figures(trust)
    to_mri: list[float] = []
    to_plan: list[float] = []
    for r in referrals:
        out.referrals += 1
        if r.cancelled:
            out.cancelled += 1
            continue
        out.groups[r.group].add(mri_outcome(r, now))
        planned = plan_outcome(r, now)
        if planned is not None:
            out.groups[PLAN].add(planned)
        if r.mri_at is not None:
            to_mri.append(hours(r.mri_at - r.received))
            if r.plan_at is not None:
                to_plan.append(hours(r.plan_at - r.mri_at))
    out.times = {"referral-to-mri": Durations.of(to_mri), "mri-to-plan": Durations.of(to_plan)}
    return out


@dataclass(frozen=True)
class Case:
    """A slow referral: its times, its MRI window, its outcomes and how far past a deadline it went."""

    times: ReferralTimes
    window: str
    mri: str
    plan: str | None
    overrun: timedelta  # the larger of the MRI's and the plan's time past their deadlines (negative: none)


def case(times: ReferralTimes, now: datetime) -> Case:
    def past(start: datetime, span: timedelta, done: datetime | None) -> timedelta:
        return (done or times.ended_at or now) - (start + span)

    overrun = past(times.received, times.mri_window, times.mri_at)
    if times.mri_at is not None:
        overrun = max(overrun, past(times.mri_at, PLAN_WINDOW, times.plan_at))
    return Case(times, window_label(times.mri_window), mri_outcome(times, now), plan_outcome(times, now), overrun)


def slowest(referrals: Iterable[ReferralTimes], now: datetime, limit: int) -> list[Case]:
    """Up to ``limit`` counted referrals (not cancelled, not pending), furthest past a deadline first: the
    MRI's, or the plan's when that is later (still open: counted to ``now``)."""
    cases = [case(r, now) for r in referrals if not r.cancelled]
    kept = [c for c in cases if c.mri in COUNTED or c.plan in COUNTED]
    kept.sort(key=lambda c: (-c.overrun.total_seconds(), c.times.referral_id))
    return kept[: max(0, limit)]


@dataclass(frozen=True)
class Report:
    """The audit of one month: every trust together, each trust, and the slowest cases."""

    month: Month
    zone: str
    start: datetime
    end: datetime
    generated: datetime
    trust: str | None  # the one trust asked for, if any
    total: Figures
    trusts: list[Figures]
    slowest: list[Case]


def build_report(
    month: Month, zone: str, referrals: list[ReferralTimes], now: datetime, trust: str | None = None, limit: int = 10
) -> Report:
    """The report of ``referrals`` (already those of ``month``, and of ``trust`` when given)."""
    start, end = month.bounds(ZoneInfo(zone))
    by_trust: dict[str, list[ReferralTimes]] = {}
    for r in referrals:
        by_trust.setdefault(r.trust, []).append(r)
    strata = [figures(t, by_trust[t], now) for t in sorted(by_trust)]
    total = figures(None, referrals, now)
    return Report(month, zone, start, end, now, trust, total, strata, slowest(referrals, now, limit))


# --- the reader --------------------------------------------------------------------------------------


def referring_trust(doc: Document) -> str:
    """The referring trust: the ODS code the requester names, else the trust the record is visible to
    (not the hosting MSCC service's), else ``unknown``."""
    resource = doc.get("resource")
    organisation = requester_organisation(resource) if isinstance(resource, dict) else None
    if organisation:
        named = (organisation.get("identifier") or {}).get("value") or str(organisation.get("reference", ""))
        code = trust_code(str(named).removeprefix("Organization/"))
        if code:
            return code
    others = sorted(t for t in trusts_of(doc) if t not in ("*", service_ods().upper()))
    return others[0] if others else UNKNOWN_TRUST


async def load_times(
    store: Store, month: Month, zone: str, visibility: Visibility, trust: str | None = None
) -> list[ReferralTimes]:
    """The referrals first contacted in ``month`` that ``visibility`` may see (of ``trust`` only, when
    given), with their recorded times. Reads pathway CarePlans by their start (a day's margin either
    side, as the start is stored with its own offset), and those without one, then their referrals."""
    start, end = month.bounds(ZoneInfo(zone))
    low, high = (start - timedelta(days=1)).date().isoformat(), (end + timedelta(days=1)).date().isoformat()
    plans = store.resources.find(
        {
            "type": "CarePlan",
            "resource.supportingInfo.reference": {"$exists": True},
            "$or": [
                {"resource.period.start": {"$gte": low, "$lt": high}},
                {"resource.period.start": {"$exists": False}},
            ],
        }
    )
    plan_of: dict[str, Resource] = {}
    async for plan in plans:
        for item in plan["resource"].get("supportingInfo") or []:
            rid = str((item or {}).get("reference") or "").removeprefix("ServiceRequest/")
            if care_plan_id(rid) == plan["id"]:
                plan_of[rid] = plan["resource"]
    query = {"_id": {"$in": [f"ServiceRequest/{rid}" for rid in sorted(plan_of)]}, **visibility.query()}
    out: list[ReferralTimes] = []
    async for request in store.resources.find(query):
        received = await first_contact(store, request, plan_of[request["id"]])
        code = referring_trust(request)
        if not start <= received < end or (trust is not None and code != trust):
            continue
        try:
            neurological = referral_reading(request["resource"])
        except Exception:  # fail safe, as the SLA scanner: an unreadable status takes the 24-hour window
            neurological = "unknown"
        out.append(referral_times(request["id"], code, request["resource"], received, neurological))
    return out


async def timeliness_report(
    store: Store,
    month: Month,
    now: datetime,
    *,
    zone: str = LONDON,
    visibility: Visibility,
    trust: str | None = None,
    limit: int = 10,
) -> Report:
    """The audit of ``month`` as ``visibility`` may see it (``trust``: that trust's referrals only)."""
    referrals = await load_times(store, month, zone, visibility, trust)
    return build_report(month, zone, referrals, now, trust, limit)
