"""The pathway's background loop: SLA events (``sla.py``) and MRI reports (``reports.py``) every interval.

Any number of scanners may run (each event is written once, each move is idempotent). The clock is
injected; ``run_once`` is what tests drive.

Failures: a record either pass cannot read is recorded in ``pathway_faults`` and the pass goes on
(``sla.py``, ``reports.py``); a report pass that fails as a whole does not stop the SLA pass (an alert
that fires although its MRI was reported is better than none); ``run`` survives any error of a pass
(logged, recorded on its heartbeat, tried again next interval) and beats its heartbeat after each
completed pass, so a scanner that stops scanning shows on ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from shared.settings import Settings
from shared.store import Document, Store
from shared.supervision import Heartbeat

from .faults import Faults
from .reports import Outcome, ReportFollower
from .sla import SlaRules, scan_sla

log = logging.getLogger(__name__)


@dataclass
class ScanResult:
    sla_events: list[Document] = field(default_factory=list)
    reports: list[Outcome] = field(default_factory=list)


class SlaScanner:
    """Scans for SLA events and follows MRI reports, until stopped."""

    def __init__(
        self,
        store: Store,
        rules: SlaRules,
        mri_pattern: str,
        clock: Callable[[], datetime] | None = None,
        max_attempts: int = 3,
    ) -> None:
        self._store = store
        self._rules = rules
        self._reports = ReportFollower(store, mri_pattern, max_attempts=max_attempts)
        self._faults = Faults(store)  # a referral is never set aside: its clock matters
        self._clock = clock or (lambda: datetime.now(UTC))

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> SlaScanner:
        return cls(
            store,
            SlaRules.from_settings(settings),
            settings.pathway_mri_pattern,
            max_attempts=settings.pathway_max_attempts,
        )

    async def run_once(self) -> ScanResult:
        """One pass at the clock's now: reports first (an MRI just reported stops its clock), then SLA.

        If the report pass fails (the database, a bug), the SLA pass still runs and the report pass's
        error is raised after it; ``PyMongoError`` if the database fails in the SLA pass."""
        now = self._clock()
        failure: Exception | None = None
        reports: list[Outcome] = []
        try:
            reports = await self._reports.run_once(now)
        except Exception as exc:
            log.exception("MRI report pass failed; the SLA pass runs regardless")
            failure = exc
        result = ScanResult(await scan_sla(self._store, now, self._rules, self._faults), reports)
        if failure is not None:
            raise failure
        return result

    async def run(self, stop: asyncio.Event, interval: float, heartbeat: Heartbeat | None = None) -> None:
        """Scan every ``interval`` seconds until ``stop`` is set; a failed pass (the database, a bug) is
        logged and recorded on ``heartbeat``, and the next pass tries again."""
        heartbeat = heartbeat or Heartbeat.none()
        while not stop.is_set():
            try:
                await self.run_once()
                heartbeat.beat()
            except Exception as exc:
                log.exception("pathway scan failed; trying again next interval")
                heartbeat.failed(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
