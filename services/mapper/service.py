"""The mapper service: publishes the HNA Questionnaire, then runs its worker until stopped."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from services.pathway.hna import questionnaire
from shared.retry import run_transaction
from shared.store import DURABLE, Store
from shared.supervision import Heartbeat
from shared.versions import next_version, read_version, write_versions
from shared.visibility import PUBLIC

from .dispatch import make_mapper
from .hl7.config import MappingConfig
from .model import Resource
from .worker import MapperWorker, WorkerConfig, WorkerStats

log = logging.getLogger(__name__)


async def publish(store: Store, resource: Resource, now: datetime) -> int:
    """Store a resource the hub itself defines (new version only when its definition changed); its
    version. No outbox event: nobody subscribes to the hub's own definitions. Processes publishing at
    once conflict; the loser reads again and finds the definition written (``TransientError`` if the
    database keeps failing)."""
    key = f"{resource['resourceType']}/{resource['id']}"

    async def once() -> int:
        current = read_version(await store.resources.find_one({"_id": key}))
        # Every trust reads the hub's own definitions (an HNA answers the Questionnaire): PUBLIC.
        new = next_version(
            current, resource, now=now, source="urn:mscc:hub", message_id=None, event=False, trusts=(PUBLIC,)
        )
        if new is None:
            assert current is not None
            return current.version
        async with (
            store.client.start_session() as session,
            await session.start_transaction(write_concern=DURABLE),
        ):
            await write_versions(store, [new], session=session)
        return new.current.version

    return await run_transaction(once, what=f"publishing {key}")


def load_mapping(path: Path | None) -> MappingConfig | None:
    """The per-sender mapping configuration (``MSCC_MAPPING_FILE``); ``ValueError`` names the file and
    what is wrong with it."""
    if path is None:
        return None
    try:
        return MappingConfig.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"MSCC_MAPPING_FILE {path}: {exc}") from exc


class MapperService:
    def __init__(
        self,
        store: Store,
        config: WorkerConfig | None = None,
        clock: Callable[[], datetime] | None = None,
        mapping: MappingConfig | None = None,
    ) -> None:
        self.store = store
        self._clock = clock or (lambda: datetime.now(UTC))
        self.worker = MapperWorker(store, make_mapper(mapping), config, self._clock)

    async def prepare(self) -> None:
        await publish(self.store, questionnaire(), self._clock())

    async def run(self, stop: asyncio.Event, *, burst: bool = False, heartbeat: Heartbeat | None = None) -> WorkerStats:
        await self.prepare()
        log.info("mapper running", extra={"owner": self.worker.owner, "burst": burst})
        return await self.worker.run(stop, burst=burst, heartbeat=heartbeat)
