"""The one write path for resource versions: decide, build, and write a version with its history and event.

Every part of the hub that changes a stored resource (the mapper's writer, the pathway's transitions
and updates, FHIR create at intake, the hub's own Questionnaire, the review Task's closing) goes
through here, so a version always looks the same and always comes with its history entry and, when it
is news, one outbox event:

1. ``next_version(current, content, ...)`` decides: content equal to the current version (ids,
   versionId, lastUpdated and source aside: ``content_of``) is no change (None); otherwise it stamps
   ``meta`` (``stamp``), validates (``FhirError`` when the content is not a valid resource), and returns
   a ``NewVersion``: the ``ResourceVersion``, its ``HistoryEntry``, its ``OutboxEvent`` ("created" for
   version 1, else "updated", unless the caller names another kind) and the version it was read at.
   The version and its history entry name the ``trusts`` that may see them (``shared/visibility.py``):
   those of the version before, and those of the message that caused it.
2. ``write_versions(store, versions, session=...)`` writes a list of them inside the caller's
   transaction: history first (``insert_many``), then each current version (inserted when read as
   absent, else replaced only if still at the version read), then the outbox events. A guard that
   fails, or a version or event that exists already, raises ``Conflict`` (``shared/retry.py``): the
   transaction is aborted with nothing written, and ``run_transaction`` runs it again from a fresh read.

The caller owns the transaction, because it writes its own records in it (the message record and its
outcome, a claim's lease check), so a resource and what caused it are stored together or not at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pymongo import InsertOne, ReplaceOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import BulkWriteError, DuplicateKeyError

from . import correlation
from .built_validation import validate_built
from .fhir import Resource, business_identifiers, validate
from .ids import identifier_key
from .records import EventKind, HistoryEntry, OutboxEvent, ResourceVersion
from .resources import content_of, stamp
from .retry import Conflict
from .store import Document, Store
from .visibility import TRUSTS, trusts_of, widened

DUPLICATE_KEY = 11000


@dataclass(frozen=True)
class NewVersion:
    """A version to write: the current document it becomes, its history entry, its event (None: a
    version nobody is told about, such as the hub's own Questionnaire), and the version it was read
    at (0: the resource did not exist, so it is inserted)."""

    current: ResourceVersion
    history: HistoryEntry
    event: OutboxEvent | None
    read_version: int

    @property
    def key(self) -> str:
        return self.current.key


def source_of(message_id: str | None, fallback: str) -> str:
    """``meta.source`` for a version caused by message record ``message_id`` (``urn:uuid:``), else
    ``fallback`` (such as ``urn:mscc:hub`` for what the hub defines itself)."""
    if message_id:
        try:
            return f"urn:uuid:{uuid.UUID(str(message_id))}"
        except ValueError:
            pass
    return fallback


def next_version(
    current: ResourceVersion | None,
    content: Resource,
    *,
    now: datetime,
    source: str,
    message_id: str | None,
    source_time: datetime | Literal["keep"] | None = "keep",
    kind: EventKind | None = None,
    event: bool = True,
    focus: bool = False,
    event_fields: dict[str, Any] | None = None,
    trusts: Iterable[str] = (),
    built: bool = False,
    validated: bool = False,
) -> NewVersion | None:
    """The next version of ``content`` after ``current`` (None: the resource is not stored yet), or None
    when ``content`` says what ``current`` says already. ``FhirError`` 400 when it is not valid FHIR.

    ``source_time``: the time of the message (the out-of-order guard); by default the current version's.
    ``kind`` names the event ("created"/"updated" by default); ``event=False`` writes none; ``focus``
    puts ``focus`` and ``resources`` on it (the pathway's events); ``event_fields`` adds facts to it.

    ``trusts``: the trusts (ODS codes) of the message that causes this version; the version names them
    and every trust the current version names (``shared/visibility.py``: who may see it). Content that
    is unchanged but now concerns another trust too is a new version without an event: nothing a
    subscriber follows changed, but the record of who may see it did.

    ``built``: the hub built ``content`` itself (the mapping of an HL7v2 message, what the pathway
    derives); it is validated by ``built_validation.validate_built`` (a quick check, full validation
    when the check is unsure). Content received from outside is always validated in full.
    ``validated``: ``content`` was validated already, as it is (intake's parse pool validates a large
    body off the event loop, ``services/intake/fhir_parse.py``); only the id and ``meta`` stamped here
    are new, and they are the hub's own, so it is not validated again.
    """
    visible = widened(trusts_of(current.extra) if current is not None else (), trusts)
    same = current is not None and content_of(current.resource) == content_of(content)
    if current is not None and same and visible == list(trusts_of(current.extra)):
        return None
    rtype, rid = content["resourceType"], content["id"]
    version = current.version + 1 if current is not None else 1
    stamped = stamp(content, rid, version, now, source)
    resource = stamped if validated else validate_built(stamped) if built else validate(stamped)
    kept = (current.source_time if current is not None else None) if source_time == "keep" else source_time
    keys = tuple(identifier_key(rtype, s, v) for s, v in business_identifiers(resource))
    new = ResourceVersion(rtype, rid, version, now, resource, keys, kept, extra={TRUSTS: visible})
    history = HistoryEntry(rtype, rid, version, now, resource, message_id, extra={TRUSTS: visible})
    # The event carries the correlation id of what caused it (shared/correlation.py): the one bound (a
    # request's, the message being mapped), else the message's own id.
    facts = dict(event_fields or {})
    if cause := correlation.current() or message_id:
        facts.setdefault(correlation.FIELD, cause)
    outbox = OutboxEvent.for_version(history, kind, focus, **facts) if event and not same else None
    return NewVersion(new, history, outbox, current.version if current is not None else 0)


def read_version(doc: Document | None) -> ResourceVersion | None:
    """A ``resources`` document as a ``ResourceVersion`` (None stays None)."""
    return ResourceVersion.from_doc(doc) if doc is not None else None


async def write_versions(
    store: Store,
    versions: Sequence[NewVersion],
    *,
    session: AsyncClientSession,
    events: Sequence[OutboxEvent] = (),
) -> None:
    """Write ``versions`` (history, current, their events) and ``events`` in ``session``'s transaction.

    ``Conflict`` when a resource is no longer at the version it was read at, or a version or event
    already exists (another writer got there first); other database errors are raised as they are.
    """
    if not versions and not events:
        return
    # A resource changed twice in one batch is written once, at its last version, guarded by the
    # version the batch read; every version still gets its history entry and its event.
    read_at: dict[str, int] = {}
    last: dict[str, ResourceVersion] = {}
    for item in versions:
        read_at.setdefault(item.key, item.read_version)
        last[item.key] = item.current
    ops: list[InsertOne[Document] | ReplaceOne[Document]] = []
    replaces = 0
    for key in sorted(last):
        doc = last[key].to_doc()
        if read_at[key] == 0:
            ops.append(InsertOne(doc))
        else:
            ops.append(ReplaceOne({"_id": key, "version": read_at[key]}, doc))
            replaces += 1
    outbox = [item.event.to_doc() for item in versions if item.event is not None]
    outbox += [e.to_doc() for e in events]
    try:
        if versions:
            await store.history.insert_many([v.history.to_doc() for v in versions], ordered=True, session=session)
            result = await store.resources.bulk_write(ops, ordered=True, session=session)
            if result.matched_count != replaces:
                raise Conflict("a resource changed since it was read")
        if outbox:
            await store.outbox.insert_many(outbox, ordered=True, session=session)
    except DuplicateKeyError as exc:
        raise Conflict(f"written concurrently: {str(exc)[:300]}") from exc
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors") or []
        if errors and all(e.get("code") == DUPLICATE_KEY for e in errors):
            raise Conflict(f"written concurrently: {str(errors)[:300]}") from exc
        raise
