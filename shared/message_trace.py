"""What became of one stored message (``mscc messages show``): its header, what happened to it and when,
the resource versions it produced, the outbox events they raised and the deliveries those caused, and
the records it is linked to (batch, reprocessing).

There is no separate status log: the steps are read from the record's own facts (received, resends
answered, mapping outcome, review decision, reprocessing), each written when it happened. Resources and
events are found through the outbox's ``message_id`` index; deliveries by their ids (``{subscription
id}:{outbox id}``), so nothing here scans a collection.

Text meant for people has NHS numbers (any run of ten digits) masked unless ``unmask`` is asked for;
identifiers (record, resource, event ids) are shown as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import reprocess_mark
from .logging import redact
from .message_query import MessageRow, reprocess_of, reprocessed_as
from .messages import MessageRecord
from .store import Document, Store

MAX_EVENTS = 500  # a message writes a handful of versions; a cap keeps a pathological one readable


def instant(value: Any) -> str:
    """A stored time as ISO 8601 UTC (``2026-01-31T09:00:00Z``); other values as text."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return "" if value is None else str(value)


def masked(value: Any, unmask: bool) -> Any:
    """``value`` with every string in it masked (lists and sub-documents too), unless ``unmask``."""
    if unmask:
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [masked(v, unmask) for v in value]
    if isinstance(value, dict):
        return {k: masked(v, unmask) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Step:
    """One thing that happened to the record."""

    at: datetime | None
    what: str


@dataclass(frozen=True)
class Produced:
    """A resource version the message wrote (``note``: created, updated, transition...), or one it left
    as it was (``unchanged``; ``stale``: an older message than the one that last changed it)."""

    type: str
    id: str
    version: int | None
    note: str

    @property
    def reference(self) -> str:
        base = f"{self.type}/{self.id}"
        return f"{base}/_history/{self.version}" if self.version is not None else base


@dataclass(frozen=True)
class Delivery:
    """One notification of an event to one subscription, and where it stands."""

    id: str
    subscription: str
    number: int | None
    status: str
    attempts: int
    last_code: str
    last_at: datetime | None


@dataclass(frozen=True)
class Event:
    """An outbox event the message caused, with the deliveries it fanned out to."""

    id: str
    kind: str
    status: str
    created_at: datetime | None
    deliveries: tuple[Delivery, ...]


@dataclass(frozen=True)
class Trace:
    record: MessageRecord
    steps: tuple[Step, ...]
    produced: tuple[Produced, ...]
    events: tuple[Event, ...]


def steps(record: MessageRecord, now: datetime | None = None) -> list[Step]:
    """The record's history in time order, from the facts it keeps (``now``: whether a reprocess run
    that has not finished still holds its mark, or was interrupted)."""
    caller = record.caller or {}
    who = f"client {caller.get('client_id') or '?'}, ODS {caller.get('ods_code') or '-'}"
    answer = (
        f"ACK {record.ack.get('code')}" if record.ack else f"HTTP {record.http_status}" if record.http_status else ""
    )
    origin = reprocess_of(record)
    made = f"made by reprocessing record {origin}; " if origin else ""
    first = "rejected" if record.status == "rejected" else "split into its messages" if record.children else "accepted"
    out = [
        Step(record.received_at, f"{made}received over {record.channel} from {record.peer} ({who}): {first}"),
    ]
    if answer:
        out[0] = Step(record.received_at, f"{out[0].what} ({answer})")
    if record.duplicates:
        out.append(Step(record.last_duplicate_at, f"{record.duplicates} resend(s) answered with the original answer"))
    if record.map_attempts:
        out.append(Step(None, f"claimed for mapping {record.map_attempts} time(s)"))
    if record.lease:
        owner, until = record.lease.get("owner"), instant(record.lease.get("until"))
        out.append(Step(None, f"being mapped by {owner} (lease until {until})"))
    if record.next_attempt_at:
        out.append(Step(record.next_attempt_at, "mapping to be tried again (transient error)"))
    processing = record.processing
    if processing is not None:
        written = sum(1 for r in processing.resources or () if not isinstance(r, dict) or r.get("changed", True))
        detail = f"{processing.status}: {written} resource version(s) written"
        if processing.unmapped:
            detail += f"; not mapped: {', '.join(processing.unmapped)}"
        if processing.issues:
            detail += f"; {len(processing.issues)} warning(s)"
        out.append(Step(processing.at, detail))
    review = record.review or {}
    if review.get("decision"):
        why = f": {review['reason']}" if review.get("reason") else ""
        out.append(Step(review.get("at"), f"review: {review['decision']} by {review.get('by') or '?'}{why}"))
    again = record.reprocessed or {}
    mark = reprocess_mark.state(record, now or datetime.now(UTC))
    by = again.get("by") or "?"
    if mark == reprocess_mark.RUNNING:
        until = instant(reprocess_mark.expires(record))
        out.append(Step(again.get("at"), f"being reprocessed by {by} (in progress; its mark holds until {until})"))
    elif mark == reprocess_mark.INTERRUPTED:
        what = f"reprocessing by {by} interrupted: it stopped before finishing; it may be reprocessed again"
        out.append(Step(again.get("at"), what))
    elif again:
        made_as = ", ".join(str(r) for r in again.get("records") or [] if r) or "no new record"
        out.append(Step(again.get("at"), f"reprocessed ({again.get('outcome')}): {made_as}"))
    # In time order; a step without a time of its own stays after the step written before it.
    keyed, last = [], record.received_at
    for n, step in enumerate(out):
        last = step.at or last
        keyed.append((last, n, step))
    return [step for _, _, step in sorted(keyed, key=lambda k: (k[0], k[1]))]


def _produced(record: MessageRecord, events: list[Document]) -> list[Produced]:
    """Every version the outbox says the message wrote, then what the mapper left unchanged."""
    out: list[Produced] = []
    seen: set[tuple[str, str]] = set()
    for doc in events:
        if doc.get("version") is None or doc.get("kind") == "sla":
            continue
        seen.add((str(doc["type"]), str(doc["id"])))
        out.append(Produced(str(doc["type"]), str(doc["id"]), int(doc["version"]), str(doc.get("kind") or "")))
    facts = record.processing.resources if record.processing else None
    for fact in facts or ():
        if not isinstance(fact, dict) or (str(fact.get("type")), str(fact.get("id"))) in seen:
            continue
        note = "stale: not applied" if fact.get("stale") else "unchanged" if not fact.get("changed") else "written"
        version = fact.get("version")
        out.append(Produced(str(fact.get("type")), str(fact.get("id")), int(version) if version else None, note))
    return out


def _delivery(doc: Document) -> Delivery:
    attempts = doc.get("attempts") or []
    last = attempts[-1] if attempts else {}
    number = doc.get("event_number")
    return Delivery(
        id=str(doc["_id"]),
        subscription=str(doc.get("subscription_id") or ""),
        number=int(number) if number is not None else None,
        status=str(doc.get("status") or ""),
        attempts=int(doc.get("attempt_count") or len(attempts)),
        last_code=str(last.get("code") or ""),
        last_at=last.get("at"),
    )


async def trace(store: Store, record_id: str) -> Trace | None:
    """The record and everything it caused; None when there is no such record."""
    doc = await store.messages.find_one({"_id": record_id})
    if doc is None:
        return None
    record = MessageRecord.from_doc(doc)
    events = [e async for e in store.outbox.find({"message_id": record_id}).sort("_id", 1).limit(MAX_EVENTS)]
    deliveries: dict[str, list[Delivery]] = {}
    if events:
        subscriptions = [s["_id"] async for s in store.subscriptions.find({}, {"_id": 1})]
        wanted = [f"{sub}:{event['_id']}" for sub in subscriptions for event in events]
        if wanted:
            async for found in store.deliveries.find({"_id": {"$in": wanted}}).sort("_id", 1):
                outbox_id = str((found.get("event") or {}).get("outbox_id") or "")
                deliveries.setdefault(outbox_id, []).append(_delivery(found))
    return Trace(
        record=record,
        steps=tuple(steps(record)),
        produced=tuple(_produced(record, events)),
        events=tuple(
            Event(
                str(e["_id"]),
                str(e.get("kind") or ""),
                str(e.get("status") or ""),
                e.get("created_at"),
                tuple(deliveries.get(str(e["_id"]), ())),
            )
            for e in events
        ),
    )


def links(record: MessageRecord) -> dict[str, Any]:
    """The records this one is tied to: its batch and messages, and reprocessing both ways."""
    out: dict[str, Any] = {}
    if record.batch:
        out["batch"] = record.batch.get("id")
    if record.children:
        out["messages"] = list(record.children)
    if origin := reprocess_of(record):
        out["reprocess_of"] = origin
    made = reprocessed_as(record) or [str(r) for r in (record.reprocessed or {}).get("records") or [] if r]
    if made:
        out["reprocessed_as"] = made
    return out


def segments(record: MessageRecord) -> list[str]:
    """The message as received, one segment (or line) a line: the stored text, else the bytes decoded."""
    text = record.text
    if text is None:
        raw = record.raw or b""
        text = raw.decode(record.charset or "utf-8", errors="replace")
    return [line for line in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if line]


def to_json(found: Trace, *, unmask: bool = False, raw: bool = False) -> Document:
    """The whole trace as one JSON object; the message text only with ``raw``."""
    record = found.record
    row = MessageRow.of(record, unmask=unmask)
    processing = record.processing
    out: Document = {
        **row.to_json(),
        "caller": {k: v for k, v in (record.caller or {}).items() if k != "scopes"},
        "header": record.header,
        "issues": masked(record.issues, unmask),
        "ack": masked(record.ack, unmask),
        "http_status": record.http_status,
        "duplicates": record.duplicates or 0,
        "trace": [{"at": instant(s.at) or None, "what": masked(s.what, unmask)} for s in found.steps],
        "processing": None
        if processing is None
        else {
            "status": processing.status,
            "at": instant(processing.at),
            "unmapped": list(processing.unmapped or ()),
            "issues": masked(list(processing.issues or ()), unmask),
            "outcome": masked(processing.outcome, unmask),
        },
        "review": masked({k: instant(v) if k == "at" else v for k, v in (record.review or {}).items()}, unmask) or None,
        # "", "done", "in progress" (a run holds it now) or "interrupted" (may be reprocessed again)
        "reprocessing": reprocess_mark.state(record, datetime.now(UTC)) or None,
        "resources": [
            {"reference": p.reference, "type": p.type, "id": p.id, "version": p.version, "note": p.note}
            for p in found.produced
        ],
        "events": [
            {
                "id": e.id,
                "kind": e.kind,
                "status": e.status,
                "created_at": instant(e.created_at),
                "deliveries": [
                    {
                        "id": d.id,
                        "subscription": d.subscription,
                        "event_number": d.number,
                        "status": d.status,
                        "attempts": d.attempts,
                        "last_code": d.last_code,
                        "last_at": instant(d.last_at) or None,
                    }
                    for d in e.deliveries
                ],
            }
            for e in found.events
        ],
        "links": links(record),
    }
    if raw:
        out["raw"] = masked("\r".join(segments(record)) + "\r", unmask)
    return out


def render(found: Trace, *, unmask: bool = False, raw: bool = False) -> list[str]:
    """The trace for people: labelled lines, then sections; the message one segment a line with ``raw``."""
    record = found.record
    row = MessageRow.of(record, unmask=unmask)
    header = record.header or {}
    caller = record.caller or {}
    lines = [
        f"record      {record.id}",
        f"received    {instant(record.received_at)} over {record.channel} from {record.peer}",
        f"caller      {caller.get('client_id') or '?'} (ODS {caller.get('ods_code') or '-'})",
        f"status      {record.status}",
        f"type        {row.type}",
        f"sender      {row.sender or '-'}"
        + (f" ({header['sending_application']})" if header.get("sending_application") else ""),
    ]
    mark = reprocess_mark.state(record, datetime.now(UTC))
    if mark in (reprocess_mark.RUNNING, reprocess_mark.INTERRUPTED):
        again = "may be reprocessed again" if mark == reprocess_mark.INTERRUPTED else "a run holds it now"
        lines.append(f"reprocess   {mark} ({again})")
    if row.control_id:
        lines.append(f"control id  {row.control_id}")
    if header.get("version"):
        lines.append(f"version     {header['version']}  sent {header.get('datetime') or '-'}")
    if row.reason:
        lines.append(f"reason      {row.reason}")
    if record.ack:
        lines.append(f"answer      ACK {record.ack.get('code')}")
    elif record.http_status:
        lines.append(f"answer      HTTP {record.http_status}")
    lines.append(
        f"size        {record.size} bytes" + (" (cut: only the first bytes are kept)" if record.truncated else "")
    )
    if record.issues:
        lines.append("issues")
        lines += [f"  {masked(_issue(i), unmask)}" for i in record.issues]
    lines.append("trace")
    lines += [f"  {instant(s.at) or '-':<20}  {masked(s.what, unmask)}" for s in found.steps]
    if record.processing and record.processing.issues:
        lines += [f"  {'':<20}  warning: {masked(_issue(i), unmask)}" for i in record.processing.issues]
    lines.append("resources produced" + ("" if found.produced else ": none"))
    lines += [f"  {p.reference}  {p.note}" for p in found.produced]
    lines.append("outbox events and deliveries" + ("" if found.events else ": none"))
    for event in found.events:
        lines.append(f"  {event.id}  {event.kind}  {event.status}  {instant(event.created_at)}")
        for d in event.deliveries:
            last = f", last {d.last_code} at {instant(d.last_at)}" if d.last_code else ""
            lines.append(f"    -> {d.subscription} #{d.number}: {d.status}, {d.attempts} attempt(s){last}")
        if not event.deliveries:
            why = "no subscription matched it" if event.status == "dispatched" else "not fanned out yet"
            lines.append(f"    -> no delivery ({why})")
    tied = links(record)
    if tied:
        lines.append("links")
        for name, value in tied.items():
            shown = ", ".join(value) if isinstance(value, list) else str(value)
            lines.append(f"  {name.replace('_', ' ')}: {shown}")
    if raw:
        lines.append("message")
        lines += [f"  {masked(line, unmask)}" for line in segments(record)]
    return lines


def _issue(issue: dict[str, Any]) -> str:
    """An intake finding (HL7 ERR: severity, code, location, text) or a FHIR OperationOutcome issue."""
    if "diagnostics" in issue or "expression" in issue:
        where = ", ".join(issue.get("expression") or [])
        return (
            f"{issue.get('severity')} {issue.get('code')}{f' at {where}' if where else ''}: {issue.get('diagnostics')}"
        )
    where = f" at {issue['location']}" if issue.get("location") else ""
    return f"{issue.get('severity')} {issue.get('code')}{where}: {issue.get('text')}"
