"""The mapper service: publishes the HNA Questionnaire, then runs its worker until stopped."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pymongo.errors import DuplicateKeyError

from services.pathway.hna import questionnaire
from shared.fhir import validate
from shared.resources import content_of, stamp, version_documents
from shared.store import Store
from shared.supervision import Heartbeat

from .dispatch import make_mapper
from .hl7.config import MappingConfig
from .model import Resource
from .worker import MapperWorker, WorkerConfig, WorkerStats

log = logging.getLogger(__name__)


async def publish(store: Store, resource: Resource, now: datetime) -> int:
    """Store a resource the hub itself defines (new version only when its definition changed)."""
    key = f"{resource['resourceType']}/{resource['id']}"
    current = await store.resources.find_one({"_id": key})
    if current and content_of(current["resource"]) == content_of(resource):
        return int(current["version"])
    version = int(current["version"]) + 1 if current else 1
    stamped = validate(stamp(resource, resource["id"], version, now, "urn:mscc:hub"))
    doc, history = version_documents(stamped, version, now)
    try:
        await store.history.insert_one(history)
    except DuplicateKeyError:
        return version  # another process published the same version first
    await store.resources.replace_one({"_id": key}, doc, upsert=True)
    return version


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
