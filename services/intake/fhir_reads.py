"""The read side of the FHIR API: search (searchset Bundles with paging) and instance history."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from shared.fhir import FhirError, Resource
from shared.store import Document, Store

from .search import DEFAULT_COUNT, MAX_COUNT, parse_search


def _instant(doc: Document) -> str:
    when = doc["last_updated"]
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return str(when.isoformat(timespec="milliseconds").replace("+00:00", "Z"))


class FhirReads:
    def __init__(self, store: Store, base_url: str) -> None:
        self._store = store
        self._base = base_url.rstrip("/") + "/fhir"

    async def search(self, resource_type: str, params: list[tuple[str, str]]) -> Resource:
        """A searchset Bundle: ``total``, one page of matches, and self/next/previous links."""
        request = parse_search(resource_type, params)
        collection = self._store.resources
        total = await collection.count_documents(request.query)
        cursor = (
            collection.find(request.query, {"resource": 1, "type": 1, "id": 1})
            .sort([("last_updated", 1), ("_id", 1)])
            .skip(request.offset)
            .limit(request.count)
        )
        entries = [
            {
                "fullUrl": f"{self._base}/{doc['type']}/{doc['id']}",
                "resource": doc["resource"],
                "search": {"mode": "match"},
            }
            async for doc in cursor
        ]
        links = [{"relation": "self", "url": request.link(self._base, request.offset)}]
        if request.offset + request.count < total:
            links.append({"relation": "next", "url": request.link(self._base, request.offset + request.count)})
        if request.offset > 0:
            previous = max(0, request.offset - request.count)
            links.append({"relation": "previous", "url": request.link(self._base, previous)})
        return {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links, "entry": entries}

    async def history(self, resource_type: str, resource_id: str, params: list[tuple[str, str]]) -> Resource:
        """Every version of one resource, newest first (``_count`` bounds the page, default 20)."""
        count = DEFAULT_COUNT
        for name, value in params:
            if name != "_count":
                raise FhirError(400, "not-supported", f"history parameter {name} is not supported; use _count")
            if not value.isdigit() or not 1 <= int(value) <= MAX_COUNT:
                raise FhirError(400, "invalid", f"_count must be a whole number from 1 to {MAX_COUNT}")
            count = int(value)
        query = {"type": resource_type, "id": resource_id}
        total = await self._store.history.count_documents(query)
        if total == 0:
            raise FhirError(404, "not-found", f"{resource_type}/{resource_id} is not known")
        cursor = self._store.history.find(query).sort("version", -1).limit(count)
        entries: list[dict[str, Any]] = []
        async for doc in cursor:
            version = doc["version"]
            entries.append(
                {
                    "fullUrl": f"{self._base}/{resource_type}/{resource_id}",
                    "resource": doc["resource"],
                    "request": {
                        "method": "POST" if version == 1 else "PUT",
                        "url": resource_type if version == 1 else f"{resource_type}/{resource_id}",
                    },
                    "response": {
                        "status": "201 Created" if version == 1 else "200 OK",
                        "etag": f'W/"{version}"',
                        "lastModified": _instant(doc),
                    },
                }
            )
        return {"resourceType": "Bundle", "type": "history", "total": total, "entry": entries}
