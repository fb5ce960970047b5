"""Typed values between the notifier's layers: subscriptions, change events, deliveries and attempts.

Documents in ``subscriptions`` and ``deliveries`` are read through ``from_doc`` (``KeyError`` or
``ValueError`` if a document is not one the notifier wrote) and written through ``to_doc``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl

from shared.correlation import FIELD as CORRELATION
from shared.records import OutboxEvent
from shared.store import Document

if TYPE_CHECKING:
    from .channels.base import ChannelConfig

PayloadContent = Literal["empty", "id-only", "full-resource"]
Status = Literal["requested", "active", "error", "off"]
# Statuses that still collect events: an "error" subscription queues them behind its dead letter.
COLLECTING: tuple[Status, ...] = ("requested", "active", "error")
# Statuses a lane delivers for ("requested": the handshake first).
DELIVERING: tuple[Status, ...] = ("requested", "active")

DeliveryStatus = Literal["pending", "delivered", "dead", "skipped"]
# Event fields copied from an outbox event into its deliveries (transition and SLA events).
# Event facts carried to subscribers; ``pickup`` is when the team will pick up an out-of-hours referral.
DETAIL_KEYS = ("step", "previous_step", "sla_event", "deadline", "pickup")
DATETIME_DETAILS = ("deadline", "pickup")


def utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (MongoDB returns aware values; naive ones are taken as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def instant(value: datetime) -> str:
    """A FHIR instant with milliseconds, in UTC (``Z``)."""
    return utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Filter:
    """One ``backport-filter-criteria`` value: ``ServiceRequest?requester=Organization/RBL``."""

    resource_type: str
    params: tuple[tuple[str, str], ...]
    text: str  # as the subscriber wrote it

    @classmethod
    def parse(cls, text: str) -> Filter:
        """``ValueError`` if ``text`` is not ``Type?name=value[&...]``."""
        text = text.strip()
        resource_type, sep, query = text.partition("?")
        if not sep or not resource_type.isalpha() or not resource_type[:1].isupper():
            raise ValueError(f"filter {text!r} is not of the form Type?name=value (e.g. ServiceRequest?requester=...)")
        params = tuple(parse_qsl(query, keep_blank_values=True))
        if not params:
            raise ValueError(f"filter {text!r} has no search parameters")
        return cls(resource_type, params, text)


@dataclass(frozen=True)
class RestHook:
    """A FHIR rest-hook channel: notification Bundles POSTed to ``endpoint``."""

    endpoint: str
    headers: tuple[tuple[str, str], ...]
    content: PayloadContent
    kind: Literal["rest-hook"] = "rest-hook"

    def to_doc(self) -> Document:
        return {
            "kind": self.kind,
            "endpoint": self.endpoint,
            "headers": [list(h) for h in self.headers],
            "content": self.content,
        }


@dataclass(frozen=True)
class Mllp:
    """The hub's HL7v2 channel: one RRI^I12 per event over MLLP to ``host:port``."""

    host: str
    port: int
    receiving_application: str
    receiving_facility: str
    kind: Literal["mllp"] = "mllp"

    @property
    def endpoint(self) -> str:
        return f"mllp://{self.host}:{self.port}"

    def to_doc(self) -> Document:
        return {
            "kind": self.kind,
            "host": self.host,
            "port": self.port,
            "receiving_application": self.receiving_application,
            "receiving_facility": self.receiving_facility,
        }


Channel = RestHook | Mllp  # the hub's own channels; any registered channel's settings are a ChannelConfig


def channel_from_doc(doc: Document) -> ChannelConfig:
    """A stored channel as its registered channel reads it; ``KeyError`` when no channel is registered
    for its ``kind`` (or the document lacks what that channel stores)."""
    # Imported here: the channels are built on this module's types.
    from .channels.registry import config_from_doc

    return config_from_doc(doc)


@dataclass(frozen=True)
class SubscriptionSpec:
    """What a subscriber asked for, checked: parsed from a FHIR Subscription by ``resource.parse``."""

    topic: str
    filters: tuple[Filter, ...]
    channel: ChannelConfig
    trust: str  # the ODS code of the requester filter: whose referrals these are
    reason: str
    timeout_s: float | None = None
    end: datetime | None = None
    requested_status: Status = "requested"
    secret: str | None = None  # supplied by the subscriber (else the hub generates one)
    resource: Document = field(default_factory=dict)  # the Subscription as sent (no server fields, no secret)

    def to_doc(self) -> Document:
        return {
            "topic": self.topic,
            "filters": [f.text for f in self.filters],
            "channel": self.channel.to_doc(),
            "trust": self.trust,
            "reason": self.reason,
            "timeout_s": self.timeout_s,
            "end": self.end,
            "resource": self.resource,
        }


@dataclass(frozen=True)
class Subscription:
    """A stored subscription as the workers see it."""

    id: str
    version: int
    spec: SubscriptionSpec
    status: Status
    error: str | None
    events_since_start: int
    secret: str
    created_at: datetime
    wake: int

    @classmethod
    def from_doc(cls, doc: Document) -> Subscription:
        spec = SubscriptionSpec(
            topic=doc["topic"],
            filters=tuple(Filter.parse(text) for text in doc["filters"]),
            channel=channel_from_doc(doc["channel"]),
            trust=doc["trust"],
            reason=doc.get("reason", ""),
            timeout_s=doc.get("timeout_s"),
            end=doc.get("end"),
            resource=doc.get("resource") or {},
        )
        return cls(
            id=doc["_id"],
            version=int(doc.get("version", 1)),
            spec=spec,
            status=doc["status"],
            error=doc.get("error"),
            events_since_start=int(doc.get("events_since_start", 0)),
            secret=doc["secret"],
            created_at=utc(doc["created_at"]),
            wake=int(doc.get("wake", 0)),
        )


@dataclass(frozen=True)
class Focus:
    """The resource version an event is about."""

    type: str
    id: str
    version: int | None

    @property
    def key(self) -> str:
        return f"{self.type}/{self.id}"

    @property
    def history_id(self) -> str | None:
        return None if self.version is None else f"{self.key}/_history/{self.version}"

    @property
    def reference(self) -> str:
        return self.history_id or self.key

    @classmethod
    def parse(cls, value: Any) -> Focus | None:
        """``Type/id``, ``Type/id/_history/N``, or ``{"reference": ...}``; None for anything else."""
        if isinstance(value, dict):
            value = value.get("reference")
        if not isinstance(value, str):
            return None
        parts = value.split("/")
        if len(parts) == 2 and all(parts):
            return cls(parts[0], parts[1], None)
        if len(parts) == 4 and parts[2] == "_history" and parts[3].isdigit() and parts[0] and parts[1]:
            return cls(parts[0], parts[1], int(parts[3]))
        return None


@dataclass(frozen=True)
class ChangeEvent:
    """One outbox event as the notifier reads it: what changed, how, and when."""

    outbox_id: str
    kind: str  # created | updated | transition | sla | ...
    focus: Focus
    occurred_at: datetime  # when it happened (``at``: the step's time, the SLA's due time), else recorded_at
    recorded_at: datetime  # when the hub recorded it (the outbox's ``created_at``)
    detail: dict[str, str] = field(default_factory=dict)
    correlation_id: str | None = None  # of the message that caused it (shared/correlation.py): for the logs

    @classmethod
    def from_outbox(cls, doc: Document) -> ChangeEvent | None:
        """The event of an outbox document (read as ``shared.records.OutboxEvent``: ``KeyError`` or
        ``TypeError`` when the hub did not write it, which the fan-out holds as a failed event), or None
        when it names no focus (neither ``focus`` nor type/id)."""
        return cls.from_event(OutboxEvent.from_doc(doc))

    @classmethod
    def from_event(cls, event: OutboxEvent) -> ChangeEvent | None:
        """What the notifier needs of ``event``: its focus (``focus`` if set, else type/id/version), when
        it happened and the facts subscribers are told (``DETAIL_KEYS``)."""
        focus = Focus.parse(event.focus) if event.focus else None
        if focus is None and event.type and event.resource_id:
            focus = Focus(event.type, str(event.resource_id), event.version)
        if focus is None:
            return None
        recorded = utc(event.created_at)
        at = event.extra.get("at")
        occurred = utc(at) if isinstance(at, datetime) else recorded
        detail = {
            k: instant(value) if isinstance(value, datetime) else str(value)
            for k in DETAIL_KEYS
            if (value := event.extra.get(k)) is not None
        }
        cause = event.extra.get(CORRELATION)
        kind = str(event.kind or "updated")
        return cls(str(event.id), kind, focus, occurred, recorded, detail, str(cause) if cause else None)

    def to_doc(self) -> Document:
        doc: Document = {
            "outbox_id": self.outbox_id,
            "kind": self.kind,
            "focus": {"type": self.focus.type, "id": self.focus.id, "version": self.focus.version},
            "occurred_at": self.occurred_at,
            "recorded_at": self.recorded_at,
            "detail": self.detail,
        }
        if self.correlation_id is not None:
            doc[CORRELATION] = self.correlation_id
        return doc

    @classmethod
    def from_doc(cls, doc: Document) -> ChangeEvent:
        focus = doc["focus"]
        return cls(
            doc["outbox_id"],
            doc["kind"],
            Focus(focus["type"], focus["id"], focus.get("version")),
            utc(doc["occurred_at"]),
            utc(doc.get("recorded_at") or doc["occurred_at"]),
            dict(doc.get("detail") or {}),
            doc.get(CORRELATION),
        )


def event_id(subscription_id: str, event_number: int) -> str:
    """The stable id of one notification: the same on every attempt and redelivery."""
    return f"{subscription_id}:{event_number}"


@dataclass(frozen=True)
class Delivery:
    """One event for one subscription, and where its delivery stands."""

    id: str
    subscription_id: str
    event_number: int
    topic: str
    event: ChangeEvent
    status: DeliveryStatus
    attempt_count: int
    created_at: datetime
    age_from: datetime
    next_attempt_at: datetime

    @property
    def event_id(self) -> str:
        return event_id(self.subscription_id, self.event_number)

    @classmethod
    def from_doc(cls, doc: Document) -> Delivery:
        return cls(
            id=doc["_id"],
            subscription_id=doc["subscription_id"],
            event_number=int(doc["event_number"]),
            topic=doc["topic"],
            event=ChangeEvent.from_doc(doc["event"]),
            status=doc["status"],
            attempt_count=int(doc.get("attempt_count", 0)),
            created_at=utc(doc["created_at"]),
            age_from=utc(doc.get("age_from") or doc["created_at"]),
            next_attempt_at=utc(doc.get("next_attempt_at") or doc["created_at"]),
        )


@dataclass(frozen=True)
class SendResult:
    """What one attempt on a channel gave: delivered or not, the receiver's code, how long it took."""

    delivered: bool
    code: str  # HTTP status ("200"), ACK code ("AA"), or "timeout" / "connection" / "refused"
    latency_ms: float
    error: str | None = None
    retry_after_s: float | None = None  # the receiver's Retry-After, in seconds
    permanent: bool = False  # the receiver refused the content itself: sending it again cannot succeed


@dataclass(frozen=True)
class Attempt:
    """One attempt, as recorded on its delivery."""

    at: datetime
    outcome: Literal["delivered", "retry", "dead"]
    code: str
    latency_ms: float
    error: str | None = None
    retry_after_s: float | None = None

    def to_doc(self) -> Document:
        doc: Document = {
            "at": self.at,
            "outcome": self.outcome,
            "code": self.code,
            "latency_ms": round(self.latency_ms, 2),
        }
        if self.error:
            doc["error"] = self.error
        if self.retry_after_s is not None:
            doc["retry_after_s"] = self.retry_after_s
        return doc
