"""The referral worklist: each active MSCC pathway's referral, its trust and step, and its MRI clock.

The clocks are the SLA scanner's own (``services/pathway/sla.open_clocks``: first contact, window from
the neurological status, running while the referral waits for its MRI), read the same way, so the page
and the at-risk and breached events never disagree. Order: breached first (longest overdue first), then
at risk, then running by time left, then stopped clocks, newest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from services.pathway.faults import Trouble
from services.pathway.record import current_step
from services.pathway.sla import SlaRules, open_clocks
from services.pathway.timeliness import referring_trust
from shared.store import Store

MAX_ROWS = 500
ORDER = {"breached": 0, "at risk": 1, "running": 2, "stopped": 3}


@dataclass(frozen=True)
class Row:
    referral_id: str
    trust: str
    step: str
    neurological: str
    first_contact: datetime
    deadline: datetime
    state: str  # breached, at risk, running, stopped
    left: timedelta  # negative once breached


def clock_state(first: datetime, deadline: datetime, now: datetime, running: bool, at_risk_fraction: float) -> str:
    if not running:
        return "stopped"
    if now >= deadline:
        return "breached"
    if now >= first + (deadline - first) * at_risk_fraction:
        return "at risk"
    return "running"


async def worklist(store: Store, now: datetime, rules: SlaRules) -> tuple[list[Row], int]:
    """The rows (at most ``MAX_ROWS``, most urgent first) and how many plans could not be read."""
    troubles: list[Trouble] = []
    clocks = await open_clocks(store, troubles)
    rows = []
    for clock, request, running in clocks:
        state = clock_state(clock.first_contact, clock.deadline, now, running, rules.at_risk_fraction)
        rows.append(
            Row(
                referral_id=clock.referral_id,
                trust=referring_trust(request),
                step=current_step(request["resource"]),
                neurological=clock.neurological,
                first_contact=clock.first_contact,
                deadline=clock.deadline,
                state=state,
                left=clock.deadline - now,
            )
        )
    rows.sort(key=lambda r: (ORDER[r.state], r.left if r.state != "stopped" else -_age(r, now)))
    return rows[:MAX_ROWS], len(troubles)


def _age(row: Row, now: datetime) -> timedelta:
    return now - row.first_contact


def span(delta: timedelta) -> str:
    """``3 h 20 min`` / ``2 d 4 h``; the sign is the caller's to say."""
    minutes = int(abs(delta).total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {mins:02d} min"
