"""The read side of the FHIR API: read and vread, search (searchset Bundles with paging, ``_summary``,
``_elements``) and instance and type history (paged, ``_since``).

Every read takes the caller's ``Visibility`` (``shared/visibility.py``) and puts it into its database
query: a version the caller may not see is "not known" (404, as if it did not exist), and searches and
history count and page only what the caller may see."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from pymongo.errors import PyMongoError

from shared.db_errors import database_failure, safe_summary
from shared.fhir import FhirError, Resource
from shared.search import DEFAULT_COUNT, MAX_COUNT, parse_search
from shared.store import Document, Store
from shared.subsetting import apply_subset
from shared.visibility import EVERYTHING, Visibility

log = logging.getLogger(__name__)


def _instant(doc: Document) -> str:
    when = doc["last_updated"]
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return str(when.isoformat(timespec="milliseconds").replace("+00:00", "Z"))


# Newest first; both orders are those of an index (shared/store.py), so MongoDB never sorts in memory.
INSTANCE_ORDER = [("version", -1)]
TYPE_ORDER = [("last_updated", -1), ("_id", -1)]


def _history_entry(base: str, doc: Document) -> dict[str, Any]:
    rtype, rid, version = doc["type"], doc["id"], doc["version"]
    return {
        "fullUrl": f"{base}/{rtype}/{rid}",
        "resource": doc["resource"],
        "request": {
            "method": "POST" if version == 1 else "PUT",
            "url": rtype if version == 1 else f"{rtype}/{rid}",
        },
        "response": {
            "status": "201 Created" if version == 1 else "200 OK",
            "etag": f'W/"{version}"',
            "lastModified": _instant(doc),
        },
    }


@dataclass(frozen=True)
class HistoryRequest:
    """``_count`` (1-100, default 20), ``_offset`` and ``_since`` of a history interaction."""

    count: int = DEFAULT_COUNT
    offset: int = 0
    since: datetime | None = None
    params: tuple[tuple[str, str], ...] = ()

    def link(self, path: str, offset: int) -> str:
        kept = [(k, v) for k, v in self.params if k not in ("_count", "_offset")]
        kept += [("_count", str(self.count)), ("_offset", str(offset))]
        return f"{path}?{urlencode(kept)}"


def parse_history(params: list[tuple[str, str]]) -> HistoryRequest:
    """The paging of a history request; ``FhirError`` 400 for any other parameter or a malformed value."""
    count, offset, since = DEFAULT_COUNT, 0, None
    for name, value in params:
        if name == "_count":
            if not _digits(value) or not 1 <= int(value) <= MAX_COUNT:
                raise FhirError(400, "invalid", f"_count must be a whole number from 1 to {MAX_COUNT}")
            count = int(value)
        elif name == "_offset":
            if not _digits(value) or int(value) > 1_000_000:
                raise FhirError(400, "invalid", "_offset must be a whole number from 0 to 1000000")
            offset = int(value)
        elif name == "_since":
            since = _since(value)
        else:
            raise FhirError(
                400, "not-supported", f"history parameter {name} is not supported; use _count, _offset, _since"
            )
    return HistoryRequest(count, offset, since, tuple(params))


def _digits(value: str) -> bool:
    """ASCII digits, few enough to convert (``isdigit`` alone also takes "²", which ``int`` refuses)."""
    return value.isascii() and value.isdigit() and len(value) <= 18


def _since(value: str) -> datetime:
    """``_since`` is an instant (a date alone is taken as its midnight UTC); ``FhirError`` 400 otherwise."""
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise FhirError(400, "invalid", f"_since={value!r} is not an instant such as 2026-01-05T09:30:00Z") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class FhirReads:
    def __init__(self, store: Store, base_url: str) -> None:
        self._store = store
        self._base = base_url.rstrip("/") + "/fhir"

    async def read(
        self, resource_type: str, rid: str, version: str | None = None, who: Visibility = EVERYTHING
    ) -> Document:
        """The current version (or version ``version``) as stored: ``resource``, ``version``,
        ``last_updated``. ``FhirError`` 404 if unknown or not visible to ``who``, 503 if the database
        fails (the details logged)."""
        try:
            if version:
                key = {"_id": f"{resource_type}/{rid}/_history/{version}", **who.query()}
                doc = await self._store.history.find_one(key)
            else:
                doc = await self._store.resources.find_one({"_id": f"{resource_type}/{rid}", **who.query()})
        except PyMongoError as exc:
            log.error("FHIR read: database error", extra={"what": f"{resource_type}/{rid}", **safe_summary(exc)})
            raise database_failure(exc, f"{resource_type}/{rid} not read") from exc
        if doc is None:
            what = f"{resource_type}/{rid}" + (f"/_history/{version}" if version else "")
            raise FhirError(404, "not-found", f"{what} is not known")
        return doc

    async def search(self, resource_type: str, params: list[tuple[str, str]], who: Visibility = EVERYTHING) -> Resource:
        """A searchset Bundle: ``total``, one page of matches (none for ``_count=0`` or
        ``_summary=count``; trimmed by ``_summary``/``_elements``), and self/next/previous links. Only
        what ``who`` may see matches: the filter is part of the query, so totals and pages are right."""
        request = parse_search(resource_type, params)
        collection = self._store.resources
        query = {"$and": [request.query, who.query()]} if not who.everything else request.query
        total = await collection.count_documents(query)
        entries = []
        if request.count > 0:
            cursor = (
                collection.find(query, {"resource": 1, "type": 1, "id": 1})
                .sort([("last_updated", 1), ("_id", 1)])
                .skip(request.offset)
                .limit(request.count)
            )
            entries = [
                {
                    "fullUrl": f"{self._base}/{doc['type']}/{doc['id']}",
                    "resource": apply_subset(doc["resource"], request.subset),
                    "search": {"mode": "match"},
                }
                async for doc in cursor
            ]
        links = [{"relation": "self", "url": request.link(self._base, request.offset)}]
        if request.count > 0 and request.offset + request.count < total:
            links.append({"relation": "next", "url": request.link(self._base, request.offset + request.count)})
        if request.count > 0 and request.offset > 0:
            previous = max(0, request.offset - request.count)
            links.append({"relation": "previous", "url": request.link(self._base, previous)})
        bundle: Resource = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links}
        if entries:  # FHIR JSON has no empty arrays
            bundle["entry"] = entries
        return bundle

    async def history(
        self,
        resource_type: str,
        resource_id: str | None,
        params: list[tuple[str, str]],
        who: Visibility = EVERYTHING,
    ) -> Resource:
        """A history Bundle, newest first: every version of one resource (``resource_id``), or of every
        resource of the type (``resource_id`` None), paged by ``_count``/``_offset`` with next/previous
        links, from ``_since`` on; only the versions ``who`` may see. ``FhirError`` 404 for a resource
        that has no version ``who`` may see."""
        request = parse_history(params)
        query: dict[str, Any] = {"type": resource_type, **who.query()}
        path = f"{self._base}/{resource_type}"
        if resource_id is not None:
            query["id"] = resource_id
            path += f"/{resource_id}"
            if await self._store.history.find_one(query, {"_id": 1}) is None:
                raise FhirError(404, "not-found", f"{resource_type}/{resource_id} is not known")
        path += "/_history"
        if request.since is not None:
            query["last_updated"] = {"$gte": request.since}
        total = await self._store.history.count_documents(query)
        order = INSTANCE_ORDER if resource_id is not None else TYPE_ORDER
        cursor = self._store.history.find(query).sort(order).skip(request.offset).limit(request.count)
        entries = [_history_entry(self._base, doc) async for doc in cursor]
        links = [{"relation": "self", "url": request.link(path, request.offset)}]
        if request.offset + request.count < total:
            links.append({"relation": "next", "url": request.link(path, request.offset + request.count)})
        if request.offset > 0:
            links.append({"relation": "previous", "url": request.link(path, max(0, request.offset - request.count))})
        bundle: Resource = {"resourceType": "Bundle", "type": "history", "total": total, "link": links}
        if entries:
            bundle["entry"] = entries
        return bundle
