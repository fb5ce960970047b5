"""Writing mapped resources: new versions only on change, history, outbox events, all in one transaction.

For a batch of mapped messages (in arrival order) the writer reads the current version of every
resource they touch, applies each message's resources and patches in memory, and commits in one
MongoDB transaction: the history versions, the new current versions (each guarded by the version it
was read at), one outbox event per change, and the messages' processing records. A concurrent writer
makes the guard fail; the whole batch is then retried from a fresh read, so no change is lost or doubled.

Rules:
- content that equals the current version (ids, versionId, lastUpdated and source aside) is no change;
- a message older (MSH-7, Bundle.timestamp) than the one that last changed a resource does not
  overwrite it (out-of-order arrival); it is reported as stale on the processing record;
- Patient.link entries (merges) are kept when later messages describe the patient without them;
- a referral's pathway step and its history (set by transitions) are kept when a later referral
  message describes the referral without them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import InsertOne, ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError, PyMongoError

from shared.fhir import business_identifiers, validate
from shared.ids import identifier_key
from shared.resources import content_of, stamp
from shared.store import DURABLE, Document, Store

from ..pathway.record import keep_pathway
from .model import MappingResult, Resource, TransientError

log = logging.getLogger(__name__)
ATTEMPTS = 10  # hot resources (one patient, many messages) make concurrent writers conflict


class Conflict(Exception):
    """Another writer changed a resource this batch read: retry the batch from a fresh read."""


@dataclass(frozen=True)
class Written:
    """What one message did to one resource."""

    type: str
    id: str
    version: int
    changed: bool
    stale: bool = False

    def to_doc(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id, "version": self.version, "changed": self.changed, "stale": self.stale}


def _key(resource_type: str, resource_id: str) -> str:
    return f"{resource_type}/{resource_id}"


def _keep_links(current: Resource | None, new: Resource) -> Resource:
    """A patient merge recorded in ``link`` survives later messages that do not mention it."""
    if not current or new.get("resourceType") != "Patient" or not current.get("link"):
        return new
    links = list(new.get("link") or [])
    seen = {(link.get("other", {}).get("reference"), link.get("type")) for link in links}
    for link in current["link"]:
        if (link.get("other", {}).get("reference"), link.get("type")) not in seen:
            links.append(link)
    return {**new, "link": links}


@dataclass
class _Batch:
    now: datetime
    current: dict[str, Document]
    read_versions: dict[str, int]
    history: list[Document]
    outbox: list[Document]
    changed: set[str]


class ResourceWriter:
    def __init__(self, store: Store, clock: Callable[[], datetime] | None = None) -> None:
        self._store = store
        self._clock = clock or (lambda: datetime.now(UTC))

    async def commit(self, mapped: list[tuple[Document, MappingResult]], owner: str) -> dict[str, list[Written]]:
        """Write every result and mark its message "mapped" (if ``owner`` still holds its lease).

        Retries conflicts with backoff; ``TransientError`` if the database keeps failing.
        """
        last: Exception | None = None
        for attempt in range(ATTEMPTS):
            try:
                return await self._commit_once(mapped, owner)
            except (Conflict, PyMongoError) as exc:
                if isinstance(exc, PyMongoError) and not _retryable(exc):
                    raise TransientError(f"database error while writing resources: {exc}") from exc
                last = exc
                await asyncio.sleep(random.uniform(0.01, 0.05) * 2**attempt)
        raise TransientError(f"resources not written after {ATTEMPTS} attempts: {last}")

    async def _commit_once(self, mapped: list[tuple[Document, MappingResult]], owner: str) -> dict[str, list[Written]]:
        keys = {_key(r["resourceType"], r["id"]) for _, res in mapped for r in res.resources}
        keys |= {_key(p.resource_type, p.resource_id) for _, res in mapped for p in res.patches}
        current = {d["_id"]: d async for d in self._store.resources.find({"_id": {"$in": sorted(keys)}})}
        batch = _Batch(self._clock(), current, {k: d["version"] for k, d in current.items()}, [], [], set())
        written: dict[str, list[Written]] = {}
        for message, result in mapped:
            out = [self._apply(batch, r, message, result) for r in result.resources]
            for patch in result.patches:
                existing = batch.current.get(_key(patch.resource_type, patch.resource_id))
                patched = patch.apply(existing["resource"] if existing else None)
                out.append(self._apply(batch, patched, message, result))
            written[message["_id"]] = out
        async with self._store.client.start_session() as session:
            async with await session.start_transaction(write_concern=DURABLE):
                await self._write(batch, session)
                await self._finish_messages(mapped, written, owner, batch.now, session)
        return written

    def _apply(self, batch: _Batch, resource: Resource, message: Document, result: MappingResult) -> Written:
        rtype, rid = resource["resourceType"], resource["id"]
        key = _key(rtype, rid)
        cur = batch.current.get(key)
        source_time = result.source_time
        if cur and source_time and cur.get("source_time") and source_time < cur["source_time"]:
            return Written(rtype, rid, cur["version"], changed=False, stale=True)
        previous = cur["resource"] if cur else None
        resource = keep_pathway(previous, _keep_links(previous, resource))
        if cur and content_of(cur["resource"]) == content_of(resource):
            return Written(rtype, rid, cur["version"], changed=False)
        version = cur["version"] + 1 if cur else 1
        stamped = validate(stamp(resource, rid, version, batch.now, f"urn:uuid:{uuid.UUID(message['_id'])}"))
        newest = (
            max(t for t in (source_time, cur.get("source_time") if cur else None) if t)
            if (source_time or (cur and cur.get("source_time")))
            else None
        )
        keys = [identifier_key(rtype, s, v) for s, v in business_identifiers(stamped)]
        batch.current[key] = {
            "_id": key,
            "type": rtype,
            "id": rid,
            "version": version,
            "last_updated": batch.now,
            "identifier_keys": keys,
            "source_time": newest,
            "resource": stamped,
        }
        batch.history.append(
            {
                "_id": f"{key}/_history/{version}",
                "type": rtype,
                "id": rid,
                "version": version,
                "last_updated": batch.now,
                "message_id": message["_id"],
                "resource": stamped,
            }
        )
        batch.outbox.append(
            {
                "_id": f"{key}/_history/{version}",
                "type": rtype,
                "id": rid,
                "version": version,
                "kind": "created" if version == 1 else "updated",
                "created_at": batch.now,
                "message_id": message["_id"],
                "status": "ready",
            }
        )
        batch.changed.add(key)
        return Written(rtype, rid, version, changed=True)

    async def _write(self, batch: _Batch, session: Any) -> None:
        if not batch.changed:
            return
        ops: list[InsertOne[Document] | ReplaceOne[Document]] = []
        replaces = 0
        for key in sorted(batch.changed):
            doc = batch.current[key]
            if key in batch.read_versions:
                ops.append(ReplaceOne({"_id": key, "version": batch.read_versions[key]}, doc))
                replaces += 1
            else:
                ops.append(InsertOne(doc))
        try:
            await self._store.history.insert_many(batch.history, ordered=True, session=session)
            result = await self._store.resources.bulk_write(ops, ordered=True, session=session)
            await self._store.outbox.insert_many(batch.outbox, ordered=True, session=session)
        except BulkWriteError as exc:
            raise Conflict(str(exc.details.get("writeErrors", exc))[:500]) from exc
        if result.matched_count != replaces:
            raise Conflict("a resource changed since it was read")

    async def _finish_messages(
        self,
        mapped: list[tuple[Document, MappingResult]],
        written: dict[str, list[Written]],
        owner: str,
        now: datetime,
        session: Any,
    ) -> None:
        """Mark the batch mapped, if ``owner`` still holds every lease (one ``update_many``: the lease
        check), then record each message's outcome (updates by ``_id``, cheaper than guarded ones)."""
        if not mapped:
            return
        ids = [message["_id"] for message, _ in mapped]
        marked = await self._store.messages.update_many(
            {"_id": {"$in": ids}, "lease.owner": owner},
            {"$set": {"status": "mapped"}, "$unset": {"lease": "", "next_attempt_at": ""}},
            session=session,
        )
        if marked.matched_count != len(ids):
            raise LeaseLost(f"{len(ids) - marked.matched_count} message(s) were claimed by another worker")
        outcomes = [
            UpdateOne(
                {"_id": message["_id"]},
                {
                    "$set": {
                        "processing": {
                            "status": "mapped",
                            "at": now,
                            "resources": [w.to_doc() for w in written[message["_id"]]],
                            "unmapped": mapping.unmapped,
                            "issues": mapping.issues,
                        }
                    }
                },
            )
            for message, mapping in mapped
        ]
        await self._store.messages.bulk_write(outcomes, ordered=False, session=session)


class LeaseLost(Exception):
    """A message's lease expired and another worker took it: this worker's results are abandoned."""


def _retryable(exc: PyMongoError) -> bool:
    labels = getattr(exc, "has_error_label", None)
    if labels and (
        exc.has_error_label("TransientTransactionError") or exc.has_error_label("UnknownTransactionCommitResult")
    ):
        return True
    return getattr(exc, "code", None) in (112, 251, 244)  # WriteConflict, NoSuchTransaction, TransactionAborted
