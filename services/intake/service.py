"""The intake service: its group committer, HL7v2 and FHIR intakes and MLLP listener, started together.

Inbound flows only: the HTTP API that serves intake's routes (and the read side) is ``services/api/``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from shared.limits import Limits
from shared.settings import Settings
from shared.store import Store

from .admission import intake_budget
from .committer import GroupCommitter
from .fhir_intake import FhirIntake
from .hl7_intake import Hl7Intake, IntakeConfig
from .mllp_server import MllpServer
from .offload import ParsePool
from .policy import load_policy

# What the parse pool's workers run (hl7_scan.scan_frame, fhir_parse.read_*): imported when they start.
POOLED_MODULES = ("services.intake.hl7_scan", "services.intake.fhir_parse")


class IntakeService:
    """Owns intake's moving parts. ``start`` opens the MLLP port; the HTTP app is served separately."""

    def __init__(self, settings: Settings, store: Store, clock: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock  # the API built over this service gives its pathway the same clock
        self.committer = GroupCommitter(
            store.messages,
            max_batch=settings.commit_max_batch,
            max_concurrent=settings.commit_max_concurrent,
            large_bytes=settings.intake_offload_bytes,
        )
        config = IntakeConfig(
            settings.receiving_application,
            settings.receiving_facility,
            settings.hl7_default_charset,
            settings.hl7_fallback_charset,
            Limits.from_settings(settings),
        )
        # Large inputs are read in worker processes, off the event loop (offload.py); started on first use.
        self.pool = ParsePool(settings.intake_parse_pool, settings.intake_offload_bytes, POOLED_MODULES)
        self.hl7 = Hl7Intake(self.committer, load_policy(settings.senders_file), config, clock, self.pool)
        self.fhir = FhirIntake(
            store, self.committer, settings.base_url, clock, settings.receiving_facility, config.limits, self.pool
        )
        # Bytes being read and stored, MLLP frames and HTTP bodies alike (shared/budget.py).
        self.budget = intake_budget(settings)
        self.mllp = MllpServer(self.hl7, settings, self.budget)

    async def start(self, *, mllp: bool = True) -> None:
        await self.committer.start()
        if self.settings.intake_parse_pool_warm:  # workers up before the first large input needs them
            await self.pool.warm()
        if mllp:
            await self.mllp.start(self.settings.mllp_host, self.settings.mllp_port)

    async def stop(self) -> None:
        """Stop the MLLP listener (answering what is in flight, within ``MSCC_STOP_TIMEOUT_S``), then
        the committer, after the last message it was given is written, then the parse pool's workers."""
        await self.mllp.stop(self.settings.stop_timeout_s)
        await self.committer.stop()
        await self.pool.shutdown()
