"""Writing new versions of resources the pathway changes, with their outbox events, in one transaction.

The versions are built and written by the hub's one write path (``shared/versions.py``): the current
version in ``resources`` (replaced only if still at the version read), every version in
``resource_history``, and the events in ``outbox``. The inbound request (a PUT body, a $transition
Parameters) is kept in ``messages`` in the same transaction, status "applied" (never claimed by the
mapper), so history and outbox name the message that caused them. Readers see all of it or none of it.
Conflicts are retried by the hub's one transaction policy (``shared/retry.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.fhir import Resource
from shared.fhir_messages import fhir_message
from shared.records import MessageOutcome
from shared.retry import Conflict as Conflict
from shared.retry import TransactionRetry
from shared.store import DURABLE, Document, Store
from shared.versions import NewVersion, next_version, read_version, write_versions

# Two moves of one referral conflict; the loser re-reads and re-checks its move.
RETRY = TransactionRetry(attempts=8)


@dataclass(frozen=True)
class Change:
    """A new content for a resource read as ``current`` (a ``resources`` document; for a resource not
    stored yet, ``absent(...)``, version 0: it is then inserted, and a concurrent insert is a conflict)."""

    current: Document
    content: Resource


def absent(resource_type: str, resource_id: str) -> Document:
    """The ``current`` of a Change that creates the resource."""
    return {"_id": f"{resource_type}/{resource_id}", "type": resource_type, "id": resource_id, "version": 0}


def new_version(
    change: Change,
    now: datetime,
    source: str,
    message_id: str | None,
    event: dict[str, Any] | None = None,
    trusts: tuple[str, ...] = (),
) -> NewVersion | None:
    """The next version of ``change`` with its event (``event``: the kind and facts of a transition or
    an update; else "created"/"updated"), or None when the content is what is stored already.
    ``trusts``: who may see it besides those the stored version names (the referral's trusts: what a
    referral implies is visible to the trust that made it). ``FhirError`` 400 if it is not valid."""
    cur = change.current
    fields = dict(event or {})
    kind = fields.pop("kind", None)
    return next_version(
        read_version(cur) if int(cur["version"]) > 0 else None,
        {**change.content, "id": cur["id"]},
        now=now,
        source=source,
        message_id=message_id,
        kind=kind,
        focus=True,
        event_fields=fields,
        trusts=trusts,
    )


async def write(store: Store, versions: list[NewVersion], record: Document | None) -> None:
    """Commit ``versions`` (with their events) and ``record`` in one transaction.

    ``Conflict`` if a resource is no longer at the version read (or the version exists already);
    ``PyMongoError`` for other database failures (``shared.retry.retryable`` says which to retry).
    """
    async with (
        store.client.start_session() as session,
        await session.start_transaction(write_concern=DURABLE),
    ):
        if record is not None:
            await store.messages.insert_one(record, session=session)
        await write_versions(store, versions, session=session)


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
    processing = MessageOutcome("applied", now, tuple(resources))
    return fhir_message(
        record_id, now, body, caller, peer, header, status="applied", issues=[], processing=processing
    ).to_doc()
