"""Typed records of the hub's own documents: a resource version, its history entry, its outbox event, and
the processing outcome on a message record. FHIR bodies inside them stay dicts (``resource``).

Each record is read with ``from_doc`` (``KeyError`` or ``TypeError`` when the document is not one the
hub wrote) and written with ``to_doc``. Fields other parts of the hub add to a document (the report
follower's ``pathway_checked`` on a version, the notifier's fan-out state on an event, the SLA and
transition facts on an event) are kept in ``extra`` and written back unchanged, so a round trip never
loses what another room stored.

Documents::

    resources         {_id: "Type/id", type, id, version, last_updated, identifier_keys, source_time, resource}
    resource_history  {_id: "Type/id/_history/N", type, id, version, last_updated, message_id, resource}
    outbox            {_id: "Type/id/_history/N" | "sla:...", type, id, version, kind, created_at,
                       message_id, status, [focus, resources, step, previous_step, at, sla_event, ...]}
    messages.processing {status, at, resources, unmapped, issues, [outcome]}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .store import Document

Resource = dict[str, Any]
EventKind = Literal["created", "updated", "transition", "sla"] | str
READY = "ready"  # an outbox event the notifier has not fanned out yet


def _extra(doc: Document, known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in known}


def resource_key(resource_type: str, resource_id: str) -> str:
    """The ``resources`` ``_id`` of a resource: ``Type/id``."""
    return f"{resource_type}/{resource_id}"


def history_key(resource_type: str, resource_id: str, version: int) -> str:
    """The ``resource_history`` (and outbox) ``_id`` of one version: ``Type/id/_history/N``."""
    return f"{resource_type}/{resource_id}/_history/{version}"


_VERSION_FIELDS = ("_id", "type", "id", "version", "last_updated", "identifier_keys", "source_time", "resource")


@dataclass(frozen=True)
class ResourceVersion:
    """The current version of a resource (a ``resources`` document)."""

    type: str
    id: str
    version: int
    last_updated: datetime
    resource: Resource
    identifier_keys: tuple[str, ...] = ()
    # The time of the message that last changed it (MSH-7, Bundle.timestamp): the out-of-order guard.
    source_time: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return resource_key(self.type, self.id)

    @property
    def history_id(self) -> str:
        return history_key(self.type, self.id, self.version)

    @classmethod
    def from_doc(cls, doc: Document) -> ResourceVersion:
        return cls(
            type=doc["type"],
            id=doc["id"],
            version=int(doc["version"]),
            last_updated=doc["last_updated"],
            resource=doc["resource"],
            identifier_keys=tuple(doc.get("identifier_keys") or ()),
            source_time=doc.get("source_time"),
            extra=_extra(doc, _VERSION_FIELDS),
        )

    def to_doc(self) -> Document:
        return {
            "_id": self.key,
            "type": self.type,
            "id": self.id,
            "version": self.version,
            "last_updated": self.last_updated,
            "identifier_keys": list(self.identifier_keys),
            "source_time": self.source_time,
            "resource": self.resource,
            **self.extra,
        }


_HISTORY_FIELDS = ("_id", "type", "id", "version", "last_updated", "message_id", "resource")


@dataclass(frozen=True)
class HistoryEntry:
    """One version as kept for ever (a ``resource_history`` document); ``message_id`` is the message
    record that caused it (None for what the hub defines itself, such as its Questionnaire)."""

    type: str
    id: str
    version: int
    last_updated: datetime
    resource: Resource
    message_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return history_key(self.type, self.id, self.version)

    @classmethod
    def from_doc(cls, doc: Document) -> HistoryEntry:
        return cls(
            type=doc["type"],
            id=doc["id"],
            version=int(doc["version"]),
            last_updated=doc["last_updated"],
            resource=doc["resource"],
            message_id=doc.get("message_id"),
            extra=_extra(doc, _HISTORY_FIELDS),
        )

    def to_doc(self) -> Document:
        return {
            "_id": self.key,
            "type": self.type,
            "id": self.id,
            "version": self.version,
            "last_updated": self.last_updated,
            "message_id": self.message_id,
            "resource": self.resource,
            **self.extra,
        }


_EVENT_FIELDS = ("_id", "type", "id", "version", "kind", "created_at", "message_id", "status", "focus", "resources")


@dataclass(frozen=True)
class OutboxEvent:
    """One change for the notifier (an ``outbox`` document).

    ``kind`` is "created" or "updated" for a new version, "transition" for a pathway move (``extra``:
    step, previous_step, at, who, note), "sla" for an SLA clock event (``extra``: sla_event, due, at,
    first_contact, deadline, window_hours, neurological, pickup). ``focus`` (``Type/id/_history/N``) and
    ``resources`` (every version the change wrote) are set by the pathway and the SLA scanner; the
    notifier reads type/id/version when there is no focus. ``status`` is "ready" until fanned out.
    """

    id: str  # the document's _id: the version's history id, or a deterministic SLA event id
    type: str
    resource_id: str
    version: int | None
    kind: EventKind
    created_at: datetime
    message_id: str | None = None
    status: str = READY
    focus: str | None = None
    resources: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_version(
        cls, entry: HistoryEntry, kind: EventKind | None = None, with_focus: bool = False, **extra: Any
    ) -> OutboxEvent:
        """The event of the version ``entry`` ("created" for version 1, else "updated", unless ``kind``)."""
        return cls(
            id=entry.key,
            type=entry.type,
            resource_id=entry.id,
            version=entry.version,
            kind=kind or ("created" if entry.version == 1 else "updated"),
            created_at=entry.last_updated,
            message_id=entry.message_id,
            focus=entry.key if with_focus else None,
            resources=(entry.key,) if with_focus else None,
            extra=extra,
        )

    @classmethod
    def from_doc(cls, doc: Document) -> OutboxEvent:
        version = doc.get("version")
        resources = doc.get("resources")
        return cls(
            id=doc["_id"],
            type=doc["type"],
            resource_id=doc["id"],
            version=int(version) if version is not None else None,
            kind=doc["kind"],
            created_at=doc["created_at"],
            message_id=doc.get("message_id"),
            status=doc.get("status", READY),
            focus=doc.get("focus"),
            resources=tuple(resources) if resources is not None else None,
            extra=_extra(doc, _EVENT_FIELDS),
        )

    def to_doc(self) -> Document:
        doc: Document = {
            "_id": self.id,
            "type": self.type,
            "id": self.resource_id,
            "version": self.version,
            "kind": self.kind,
            **self.extra,
        }
        if self.focus is not None:
            doc["focus"] = self.focus
        if self.resources is not None:
            doc["resources"] = list(self.resources)
        doc.update(created_at=self.created_at, message_id=self.message_id, status=self.status)
        return doc


_OUTCOME_FIELDS = ("status", "at", "resources", "unmapped", "issues", "outcome")


@dataclass(frozen=True)
class MessageOutcome:
    """A message record's ``processing``: what became of it ("mapped", "needs-review", "failed",
    "retrying", "dead", "applied"), when, the resources written (the mapper's per-resource facts, or the
    pathway's version ids), what was not mapped, the warnings, and an OperationOutcome when it failed or
    was held."""

    status: str
    at: datetime
    resources: tuple[Any, ...] | None = None
    unmapped: tuple[str, ...] | None = None
    issues: tuple[dict[str, Any], ...] | None = None
    outcome: Resource | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_doc(cls, doc: Document) -> MessageOutcome:
        def optional(name: str) -> tuple[Any, ...] | None:
            value = doc.get(name)
            return tuple(value) if value is not None else None

        return cls(
            status=doc["status"],
            at=doc["at"],
            resources=optional("resources"),
            unmapped=optional("unmapped"),
            issues=optional("issues"),
            outcome=doc.get("outcome"),
            extra=_extra(doc, _OUTCOME_FIELDS),
        )

    def to_doc(self) -> Document:
        doc: Document = {"status": self.status, "at": self.at}
        for name in ("resources", "unmapped", "issues"):
            value = getattr(self, name)
            if value is not None:
                doc[name] = list(value)
        if self.outcome is not None:
            doc["outcome"] = self.outcome
        doc.update(self.extra)
        return doc
