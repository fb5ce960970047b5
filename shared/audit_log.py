"""The audit trail in MongoDB: writing AuditEvents, their indexes and retention, and searching them.

    AuditLog          one per process: ``record(facts)`` stores the event for one answered request
    ensure_indexes    the search indexes and the retention (TTL) index; ``Store.ensure_schema`` calls it
    parse_params      FHIR search parameters (``entity``, ``agent``, ``date``, ``_count``, ``_offset``) ->
                      an ``AuditQuery``; ``FhirError`` 400 names what is wrong
    search            one page of events, newest first, and the total

A request's event is written by the request's own task after its answer has been sent (the API's
middleware, ``services/api/audit.py``), one insert per request: nothing waits for it, and nothing is
held in memory that a clean stop could lose (the HTTP server finishes the requests in flight, audit
writes included, before the process stops). If the database refuses the write, the event is written to
the log instead, at ERROR, without its query text (which may name a patient).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure, PyMongoError

from .audit import BALP, PROFILES, AuditFacts, Hub, to_doc
from .fhir import FhirError
from .search import check_text, int_param

log = logging.getLogger(__name__)

Document = dict[str, Any]
COLLECTION = "audit_events"
# Eight years: the shortest time the NHS keeps an adult's health record after treatment ends; a longer
# local policy sets MSCC_AUDIT_RETENTION_DAYS (docs/security.md, "Audit trail").
AUDIT_RETENTION_DAYS = 2922
TTL_INDEX = "recorded_ttl"
DEFAULT_COUNT = 20
MAX_COUNT = 100
ORDER = [("recorded", DESCENDING), ("_id", DESCENDING)]


class AuditLog:
    """Writes one AuditEvent per answered request into ``collection`` (create once per process)."""

    def __init__(self, collection: AsyncCollection[Document], hub: Hub) -> None:
        self._collection = collection
        self.hub = hub

    async def record(self, facts: AuditFacts) -> Document:
        """Store the event for ``facts`` and return its document. Never raises for a database failure:
        the event then goes to the log (ERROR) instead, so the request's answer is never affected."""
        doc = to_doc(facts, self.hub)
        try:
            await self._collection.insert_one(doc)
        except PyMongoError as exc:
            log.error(
                "audit event not stored in the database; kept in this log line",
                extra={"reason": str(exc)[:300], "audit_event": json.dumps(_without_query(doc["resource"]))},
            )
        return doc


def _without_query(event: dict[str, Any]) -> dict[str, Any]:
    entities = [{k: v for k, v in e.items() if k != "query"} for e in event.get("entity", [])]
    return {**event, "entity": entities} if entities else event


async def ensure_indexes(collection: AsyncCollection[Document], retention_days: int | None) -> None:
    """The search indexes, and the TTL index that deletes events ``retention_days`` after they were
    recorded. With ``retention_days`` None (a process that does not know the configured period) an
    existing TTL is left as it is; otherwise it is changed to the period given (``collMod``)."""
    await collection.create_indexes(
        [
            IndexModel([("entity_keys", ASCENDING), *ORDER], name="entity_recorded"),
            IndexModel([("agent_keys", ASCENDING), *ORDER], name="agent_recorded"),
            IndexModel(ORDER, name="recorded_id"),
        ]
    )
    seconds = (retention_days or AUDIT_RETENTION_DAYS) * 86400
    current = await retention_seconds(collection)
    if current is None:
        try:
            await collection.create_index([("recorded", ASCENDING)], name=TTL_INDEX, expireAfterSeconds=seconds)
        except OperationFailure as exc:  # another process created it with another period at the same time
            if exc.code not in (85, 86):
                raise
            current = await retention_seconds(collection)
    if retention_days is not None and current is not None and current != seconds:
        await collection.database.command(
            "collMod", collection.name, index={"name": TTL_INDEX, "expireAfterSeconds": seconds}
        )
        log.info("audit retention changed", extra={"from_days": current / 86400, "to_days": retention_days})


async def retention_seconds(collection: AsyncCollection[Document]) -> int | None:
    """The TTL of the audit collection, in seconds (None when there is no retention index yet)."""
    info = await collection.index_information()
    ttl = info.get(TTL_INDEX, {}).get("expireAfterSeconds")
    return int(ttl) if ttl is not None else None


@dataclass(frozen=True)
class AuditQuery:
    """A search of the audit trail: every clause must hold (a clause's alternatives are ORs)."""

    clauses: tuple[Document, ...] = ()
    count: int = DEFAULT_COUNT
    offset: int = 0
    params: tuple[tuple[str, str], ...] = field(default=())

    def filter(self) -> Document:
        return {"$and": list(self.clauses)} if self.clauses else {}


def entity_clause(value: str) -> Document:
    """``entity``: comma-separated references (``Patient/123``, a full URL, ``Type/id/_history/n``) or
    bare ids, or a stored message record's id."""
    keys = [_reference(v) for v in value.split(",") if v.strip()]
    return {"entity_keys": {"$in": keys}}


def _reference(value: str) -> str:
    value = value.strip()
    if "://" in value and "/fhir/" in value:
        value = value.split("/fhir/", 1)[1]
    parts = value.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 and parts[2] == "_history" else value


def agent_clause(value: str) -> Document:
    """``agent``: comma-separated client ids or ODS codes (ODS codes in any case)."""
    keys = [v.strip() for v in value.split(",") if v.strip()]
    return {"agent_keys": {"$in": sorted({*keys, *(k.upper() for k in keys)})}}


_DATE = re.compile(r"^(eq|ne|gt|ge|lt|le|sa|eb|ap)?(\d{4}(?:-\d{2}(?:-\d{2})?)?)(T[\d:.]+(?:Z|[+-]\d{2}:\d{2})?)?$")


def date_clause(value: str, name: str = "date") -> Document:
    """``date``: ``[eq|gt|ge|lt|le]YYYY[-MM[-DD]][Thh:mm[:ss][zone]]``; a date without a time is the
    whole period it names (a day, a month, a year; UTC)."""
    match = _DATE.match(value.strip())
    if not match or match.group(1) in ("ne", "sa", "eb", "ap"):
        raise FhirError(
            400, "invalid", f"{name}={value!r} is not a date: use [eq|gt|ge|lt|le]YYYY[-MM[-DD]][Thh:mm:ss+zone]"
        )
    prefix = match.group(1) or "eq"
    try:
        start, end = _period(match.group(2), match.group(3))
    except ValueError as exc:
        raise FhirError(400, "invalid", f"{name}={value!r} is not a valid date: {exc}") from exc
    ranges = {
        "eq": {"$gte": start, "$lt": end},
        "ge": {"$gte": start},
        "gt": {"$gte": end},
        "le": {"$lt": end},
        "lt": {"$lt": start},
    }
    return {"recorded": ranges[prefix]}


def _period(day: str, time: str | None) -> tuple[datetime, datetime]:
    if time:
        instant = datetime.fromisoformat((day + time).replace("Z", "+00:00"))
        instant = instant if instant.tzinfo else instant.replace(tzinfo=UTC)
        step = timedelta(seconds=1) if time.count(":") >= 2 else timedelta(minutes=1)
        return instant, instant + step
    parts = [int(p) for p in day.split("-")]
    if len(parts) == 1:
        return datetime(parts[0], 1, 1, tzinfo=UTC), datetime(parts[0] + 1, 1, 1, tzinfo=UTC)
    if len(parts) == 2:
        year, month = parts
        following = (year + 1, 1) if month == 12 else (year, month + 1)
        return datetime(year, month, 1, tzinfo=UTC), datetime(*following, 1, tzinfo=UTC)
    start = datetime(parts[0], parts[1], parts[2], tzinfo=UTC)
    return start, start + timedelta(days=1)


BUILDERS = {"entity": entity_clause, "agent": agent_clause, "date": date_clause}
SEARCH_PARAMS = (
    ("entity", "reference", "a resource the event names: Type/id or id (or a stored message record id)"),
    ("agent", "token", "the client: its client id or its ODS code"),
    ("date", "date", "when the event was recorded (eq, gt, ge, lt, le)"),
)


def parse_params(params: list[tuple[str, str]]) -> AuditQuery:
    """The query the FHIR search parameters ask for; ``FhirError`` 400 for an unknown parameter, an
    empty value or a malformed date or number."""
    clauses: list[Document] = []
    count, offset = DEFAULT_COUNT, 0
    unknown = []
    check_text(params)
    for name, value in params:
        if name == "_count":
            count = int_param(name, value, 1, MAX_COUNT)
        elif name == "_offset":
            offset = int_param(name, value, 0, 1_000_000)
        elif name in BUILDERS:
            if not value.strip():
                raise FhirError(400, "invalid", f"search parameter {name} has no value")
            clauses.append(BUILDERS[name](value))
        else:
            unknown.append(name)
    if unknown:
        raise FhirError(
            400,
            "not-supported",
            f"search parameter(s) {', '.join(sorted(set(unknown)))} not supported for AuditEvent; "
            f"supported: {', '.join(BUILDERS)}, _count, _offset",
        )
    return AuditQuery(tuple(clauses), count, offset, tuple(params))


async def search(collection: AsyncCollection[Document], query: AuditQuery) -> tuple[int, list[Document]]:
    """The total matching and one page of stored events, newest first (ties by id, so pages are stable)."""
    where = query.filter()
    total = await collection.count_documents(where)
    cursor = collection.find(where).sort(ORDER).skip(query.offset).limit(query.count)
    return total, [doc async for doc in cursor]


def capability() -> dict[str, Any]:
    """The CapabilityStatement's entry for AuditEvent (``services/api/capability.py``)."""
    return {
        "type": "AuditEvent",
        "supportedProfile": [BALP + p for name in sorted(set(PROFILES.values())) for p in (name, "Patient" + name)],
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "searchParam": [{"name": n, "type": t, "documentation": d} for n, t, d in SEARCH_PARAMS],
        "documentation": "the audit trail (IHE BALP): one AuditEvent per request to /fhir, /hl7v2 and /admin, "
        "refused attempts included; read and search by the MSCC team only (403 for any other organisation); "
        "newest first, paged with _count (1-100) and _offset",
    }
