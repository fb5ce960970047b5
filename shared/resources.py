"""Versioned FHIR resources in MongoDB: the current version in ``resources``, every version in history.

Documents::

    resources         {_id: "Type/id", type, id, version, last_updated, identifier_keys, source_time, resource}
    resource_history  {_id: "Type/id/_history/N", type, id, version, last_updated, message_id, resource}

(typed as ``records.ResourceVersion`` and ``records.HistoryEntry``)

``stamp`` sets a version's ``meta`` and ``content_of`` says whether new content is a change; versions are
built and written by the one write path (``versions.py``). ``ResourceStore`` reads them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession

from .fhir import Resource
from .ids import identifier_key
from .store import Document, Store


def stamp(resource: Resource, resource_id: str, version: int, when: datetime, source: str) -> Resource:
    """A copy of ``resource`` with its id and ``meta`` (versionId, lastUpdated, source) set.

    The copy is shallow (only ``meta`` is new): callers pass freshly built or parsed resources and do not
    change them afterwards; a deep copy here was a tenth of the mapper's time.
    """
    out = dict(resource)
    out["id"] = resource_id
    meta = dict(out.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    meta["source"] = source
    out["meta"] = meta
    return out


_SERVER_META = ("versionId", "lastUpdated", "source")


def content_of(resource: Resource) -> Resource:
    """What a resource says, without what the server assigns (id, version, time, source): to decide
    whether a write changes it. Profiles and tags in ``meta`` count as content."""
    out = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in _SERVER_META}
    if meta:
        out["meta"] = meta
    return out


class ResourceStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def read(
        self, resource_type: str, resource_id: str, session: AsyncClientSession | None = None
    ) -> Document | None:
        return await self._store.resources.find_one({"_id": f"{resource_type}/{resource_id}"}, session=session)

    async def vread(self, resource_type: str, resource_id: str, version: str) -> Document | None:
        return await self._store.history.find_one({"_id": f"{resource_type}/{resource_id}/_history/{version}"})

    async def by_identifier(self, resource_type: str, system: str, value: str, limit: int = 2) -> list[Document]:
        cursor = self._store.resources.find(
            {"type": resource_type, "identifier_keys": identifier_key(resource_type, system, value)}
        ).limit(limit)
        return [doc async for doc in cursor]


def to_wire(doc: Document) -> dict[str, Any]:
    resource: dict[str, Any] = doc["resource"]
    return resource
