"""Writing new versions of resources the pathway changes, with one outbox event, in one transaction.

The document shapes are the mapper writer's (``services/mapper/writer.py``): the current version in
``resources`` (replaced only if still at the version read), every version in ``resource_history``,
and the event in ``outbox``. The inbound request (a PUT body, a $transition Parameters) is kept in
``messages`` in the same transaction, status "applied" (never claimed by the mapper), so history and
outbox name the message that caused them. Readers see all of it or none of it.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from shared.fhir import Resource, business_identifiers, validate
from shared.fhir_messages import fhir_record
from shared.ids import identifier_key
from shared.resources import stamp
from shared.store import DURABLE, Document, Store

ATTEMPTS = 8
WRITE_CONFLICT = 112


class Conflict(Exception):
    """A resource changed between read and write: read again and retry."""


@dataclass(frozen=True)
class Change:
    """A new content for a resource read as ``current`` (a ``resources`` document; for a resource not
    stored yet, ``absent(...)``, version 0: it is then inserted, and a concurrent insert is a conflict)."""

    current: Document
    content: Resource


def absent(resource_type: str, resource_id: str) -> Document:
    """The ``current`` of a Change that creates the resource."""
    return {"_id": f"{resource_type}/{resource_id}", "type": resource_type, "id": resource_id, "version": 0}


def new_version(change: Change, now: datetime, source: str, message_id: str | None) -> tuple[Document, Document]:
    """The current and history documents of the next version; ``FhirError`` 400 if it is not valid."""
    cur = change.current
    rtype, rid, version = cur["type"], cur["id"], int(cur["version"]) + 1
    resource = validate(stamp(change.content, rid, version, now, source))
    key = f"{rtype}/{rid}"
    current = {
        "_id": key,
        "type": rtype,
        "id": rid,
        "version": version,
        "last_updated": now,
        "identifier_keys": [identifier_key(rtype, s, v) for s, v in business_identifiers(resource)],
        "source_time": cur.get("source_time"),  # message time: the mapper's out-of-order guard keeps working
        "resource": resource,
    }
    history = {
        "_id": f"{key}/_history/{version}",
        "type": rtype,
        "id": rid,
        "version": version,
        "last_updated": now,
        "message_id": message_id,
        "resource": resource,
    }
    return current, history


async def write(
    store: Store,
    versions: list[tuple[Document, Document]],
    read_versions: dict[str, int],
    event: Document,
    record: Document | None,
    more_events: tuple[Document, ...] = (),
) -> None:
    """Commit ``versions`` (current, history), ``event`` (and ``more_events``, for resources changed
    alongside with their own news) and ``record`` atomically. A version read as 0 is inserted.

    ``Conflict`` if a resource is no longer at the version read (or the version exists already);
    ``PyMongoError`` for other database failures.
    """
    try:
        async with (
            store.client.start_session() as session,
            await session.start_transaction(write_concern=DURABLE),
        ):
            if record is not None:
                await store.messages.insert_one(record, session=session)
            await store.history.insert_many([h for _, h in versions], ordered=True, session=session)
            for current, _ in versions:
                if read_versions[current["_id"]] == 0:
                    await store.resources.insert_one(current, session=session)  # DuplicateKeyError: a race
                    continue
                result = await store.resources.replace_one(
                    {"_id": current["_id"], "version": read_versions[current["_id"]]}, current, session=session
                )
                if result.matched_count != 1:
                    raise Conflict(f"{current['_id']} changed since it was read")
            await store.outbox.insert_many([event, *more_events], ordered=True, session=session)
    except DuplicateKeyError as exc:
        raise Conflict(str(exc)[:300]) from exc
    except PyMongoError as exc:
        if retryable(exc):
            raise Conflict(str(exc)[:300]) from exc
        raise


def retryable(exc: PyMongoError) -> bool:
    """A write conflict or an aborted transaction: another writer got there first."""
    if exc.has_error_label("TransientTransactionError") or exc.has_error_label("UnknownTransactionCommitResult"):
        return True
    return isinstance(exc, OperationFailure) and exc.code in (WRITE_CONFLICT, 251, 244)


async def backoff(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0.005, 0.02) * 2**attempt)


def applied_record(
    record_id: str,
    now: datetime,
    body: bytes,
    caller: dict[str, Any] | None,
    peer: str | None,
    header: dict[str, Any],
    resources: list[str],
) -> Document:
    """The ``messages`` document of an inbound request applied directly (not queued for the mapper)."""
    return {
        **fhir_record(record_id, now, body, caller, peer, header),
        "status": "applied",
        "issues": [],
        "processing": {"status": "applied", "at": now, "resources": resources},
    }
