"""Finding stored messages: the filters of ``mscc messages search`` (and ``reprocess --status``) as one
typed query, and the one-line summary of a record that tables and JSON lines print.

Every filter but ``text`` is answered from an index of ``messages`` (``shared/store.py``): ``_id``;
status + received time; sender (MSH-4, or the calling client's ODS code) + received time; control id;
received time. ``text`` is a substring of the message as received, tested on every record the other
filters leave: a scan, slow on a large store unless the other filters narrow it first.

A filter that cannot be read raises ``FilterError`` with what to write instead; nothing is queried.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .ids import fitting_key
from .logging import redact
from .messages import FHIR, HL7V2, MessageRecord
from .store import Document, Store

# Fields the summary needs: everything but the message itself (raw bytes and decoded text).
SUMMARY_PROJECTION = {"raw": 0, "text": 0}
_AGE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
WHEN_HELP = (
    "a date (2026-01-31), an instant (2026-01-31T09:00, UTC unless it has an offset) or an age (30m, 2h, 3d, 1w)"
)


class FilterError(ValueError):
    """A filter that cannot be read; the message says which and what it takes."""


def parse_when(option: str, text: str, now: datetime) -> datetime:
    """``--since`` / ``--until``: an ISO date or instant (UTC unless it has an offset; a date is the
    start of that day), or an age before ``now`` (``30m``, ``2h``, ``3d``, ``1w``)."""
    value = text.strip()
    age = _AGE.match(value.lower())
    if age:
        return now - timedelta(**{_UNITS[age.group(2)]: int(age.group(1))})
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise FilterError(f"{option} {text!r}: give {WHEN_HELP}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _split(values: list[str] | None) -> tuple[str, ...]:
    """Repeated options and comma-separated lists, flattened (``--status failed,dead``)."""
    return tuple(v.strip() for value in values or [] for v in value.split(",") if v.strip())


def _type_clause(text: str) -> Document:
    """``--type``: an HL7v2 type (``REF^I12``; ``ADT`` or ``ADT^*``: every ADT event), a FHIR request
    (``fhir:Bundle``, ``fhir:ServiceRequest``, ``fhir:*``), or a protocol (``hl7v2``, ``hl7v2-batch``, ``fhir``)."""
    value = text.strip()
    lowered = value.lower()
    if lowered in ("hl7v2", "hl7v2-batch", "fhir", "fhir:*"):
        return {"protocol": lowered.removesuffix(":*")}
    if lowered.startswith("fhir:"):
        name = value[5:]
        if name.lower() == "bundle":
            return {"protocol": FHIR, "header.interaction": "bundle"}
        return {"protocol": FHIR, "header.resource_type": name}
    upper = value.upper()
    if "*" in upper:
        pattern = ".*".join(re.escape(part) for part in upper.split("*"))
    elif "^" in upper:
        return {"protocol": HL7V2, "header.message_type": upper}
    else:
        pattern = re.escape(upper) + r"(\^.*)?"
    return {"protocol": HL7V2, "header.message_type": {"$regex": f"^{pattern}$"}}


@dataclass(frozen=True)
class MessageFilter:
    """Which records: every field given must match (none given: every record)."""

    ids: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    sender: str | None = None
    type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    control_id: str | None = None
    text: str | None = None
    extra: Document = field(default_factory=dict)  # further conditions a caller adds (reprocess)

    @classmethod
    def from_options(cls, options: Any, now: datetime | None = None) -> MessageFilter:
        """From parsed CLI options (``id``, ``status``, ``sender``, ``type``, ``since``, ``until``,
        ``control_id``, ``text``; any may be absent). ``FilterError`` for a time that cannot be read."""
        at = now or datetime.now(UTC)

        def get(name: str) -> Any:
            return getattr(options, name, None)

        since, until = get("since"), get("until")
        return cls(
            ids=_split(get("id")),
            statuses=_split(get("status")),
            sender=(get("sender") or "").strip() or None,
            type=(get("type") or "").strip() or None,
            since=parse_when("--since", since, at) if since else None,
            until=parse_when("--until", until, at) if until else None,
            control_id=get("control_id") or None,
            text=get("text") or None,
        )

    def query(self) -> Document:
        """The MongoDB filter: one condition per option, all of them required."""
        clauses: list[Document] = []
        if self.ids:
            clauses.append({"_id": self.ids[0] if len(self.ids) == 1 else {"$in": list(self.ids)}})
        if self.statuses:
            clauses.append({"status": self.statuses[0] if len(self.statuses) == 1 else {"$in": list(self.statuses)}})
        if self.since or self.until:
            window: Document = {}
            if self.since:
                window["$gte"] = self.since
            if self.until:
                window["$lt"] = self.until
            clauses.append({"received_at": window})
        if self.sender:
            # HL7v2: MSH-4 (first component) as intake read it; FHIR (and HL7v2 over HTTP): the
            # client's ODS code. Each branch has its own index with the received time.
            clauses.append({"$or": [{"header.sending_facility": self.sender}, {"caller.ods_code": self.sender}]})
        if self.control_id:
            clauses.append({"header.control_id": fitting_key(self.control_id)})
        if self.type:
            clauses.append(_type_clause(self.type))
        if self.text:
            clauses.append({"text": {"$regex": re.escape(self.text)}})
        if self.extra:
            clauses.append(self.extra)
        if not clauses:
            return {}
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}


async def search(store: Store, where: MessageFilter, limit: int, *, with_text: bool = False) -> list[Document]:
    """The matching records, newest first, at most ``limit``; without the message bytes and text
    unless ``with_text``."""
    projection = None if with_text else SUMMARY_PROJECTION
    cursor = store.messages.find(where.query(), projection).sort("received_at", -1).limit(limit)
    return [doc async for doc in cursor]


def reprocess_of(record: MessageRecord) -> str | None:
    """The record this one was made from by ``mscc messages reprocess`` (None: it arrived itself)."""
    value = record.extra.get("reprocess_of")
    return str(value) if value else None


def reprocessed_as(record: MessageRecord) -> list[str]:
    """The records ``mscc messages reprocess`` made from this one, oldest first."""
    return [str(v) for v in record.extra.get("reprocessed_as") or [] if v]


def kind(record: MessageRecord) -> str:
    """What the message is, as ``--type`` takes it: ``REF^I12``, ``fhir:ServiceRequest``, ``fhir:Bundle``,
    or the protocol when nothing more is known (a frame whose MSH could not be read)."""
    header = record.header or {}
    if record.protocol == FHIR:
        if header.get("interaction") == "bundle":
            return "fhir:Bundle"
        name = header.get("resource_type") or header.get("interaction")
        return f"fhir:{name}" if name else FHIR
    return str(header.get("message_type") or record.protocol)


def sender(record: MessageRecord) -> str:
    """MSH-4 for HL7v2 whose MSH was read, else the calling client's ODS code (may be empty)."""
    header = record.header or {}
    return str(header.get("sending_facility") or (record.caller or {}).get("ods_code") or "")


def reason(record: MessageRecord) -> str:
    """Why the record is where it is: intake's refusal, else the mapper's (or review's) first error."""
    if record.reason:
        return record.reason
    if record.review and record.review.get("reason"):
        return f"rejected in review: {record.review['reason']}"
    outcome = (record.processing.outcome if record.processing else None) or {}
    for issue in outcome.get("issue", []):
        if issue.get("severity") in ("error", "fatal") or issue.get("code") == "conflict":
            return str(issue.get("diagnostics") or issue.get("code") or "")
    return ""


@dataclass(frozen=True)
class MessageRow:
    """One record as a table row or a JSON line; text shown to people has NHS numbers masked."""

    id: str
    received: datetime
    status: str
    protocol: str
    type: str
    sender: str
    control_id: str
    reason: str
    channel: str
    peer: str
    size: int | None
    processing: str | None
    reprocess_of: str | None
    reprocessed_as: tuple[str, ...]

    HEADERS = ("id", "received", "status", "protocol", "type", "sender", "control id", "reason")

    @classmethod
    def of(cls, record: MessageRecord, *, unmask: bool = False) -> MessageRow:
        def shown(text: str) -> str:
            return text if unmask else redact(text)

        header = record.header or {}
        return cls(
            id=record.id,
            received=record.received_at,
            status=record.status,
            protocol=record.protocol,
            type=shown(kind(record)),
            sender=shown(sender(record)),
            control_id=str(header.get("control_id_full") or header.get("control_id") or ""),
            reason=shown(reason(record)),
            channel=record.channel,
            peer=record.peer,
            size=record.size,
            processing=record.processing.status if record.processing else None,
            reprocess_of=reprocess_of(record),
            reprocessed_as=tuple(reprocessed_as(record)),
        )

    def cells(self) -> tuple[str, ...]:
        """The table row: one line each (a reason quoting a message can hold line breaks)."""
        when = self.received.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        row = (self.id, when, self.status, self.protocol, self.type, self.sender, self.control_id, self.reason)
        return tuple(" ".join(cell.split()) for cell in row)

    def to_json(self) -> Document:
        return {
            "id": self.id,
            "received_at": self.received.astimezone(UTC).isoformat(),
            "status": self.status,
            "protocol": self.protocol,
            "type": self.type,
            "sender": self.sender,
            "control_id": self.control_id,
            "reason": self.reason,
            "channel": self.channel,
            "peer": self.peer,
            "size": self.size,
            "processing": self.processing,
            "reprocess_of": self.reprocess_of,
            "reprocessed_as": list(self.reprocessed_as),
        }
