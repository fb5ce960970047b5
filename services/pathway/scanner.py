"""The pathway's background loop: SLA events (``sla.py``) and MRI reports (``reports.py``) every interval.

Any number of scanners may run (each event is written once, each move is idempotent). The clock is
injected; ``run_once`` is what tests drive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pymongo.errors import PyMongoError

from shared.settings import Settings
from shared.store import Document, Store

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
    ) -> None:
        self._store = store
        self._rules = rules
        self._reports = ReportFollower(store, mri_pattern)
        self._clock = clock or (lambda: datetime.now(UTC))

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> SlaScanner:
        return cls(store, SlaRules.from_settings(settings), settings.pathway_mri_pattern)

    async def run_once(self) -> ScanResult:
        """One pass at the clock's now: reports first (an MRI just reported stops its clock), then SLA.
        ``PyMongoError`` if the database fails."""
        now = self._clock()
        reports = await self._reports.run_once(now)
        return ScanResult(await scan_sla(self._store, now, self._rules), reports)

    async def run(self, stop: asyncio.Event, interval: float) -> None:
        """Scan every ``interval`` seconds until ``stop`` is set; a database failure is logged and the
        next pass tries again."""
        while not stop.is_set():
            try:
                await self.run_once()
            except PyMongoError:
                log.exception("pathway scan failed; trying again next interval")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
