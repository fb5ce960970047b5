"""FHIR intake: ServiceRequest create and transaction / batch / message Bundles, stored before answering.

Every body is kept as a message record (exact bytes): accepted ones with status "ready" for the mapper,
rejected ones with the OperationOutcome that was answered. A created resource is written as version 1
in the same MongoDB transaction as its message record. Resource ids come from business identifiers
(the same identifier always gives the same id); a resource without one gets a random id.
Bundles are validated, stored and queued; the mapper resolves their entries and internal references.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from shared.auth import Caller
from shared.fhir import (
    FHIR_VERSION,
    FhirError,
    Resource,
    business_identifiers,
    check_content_type,
    parse_json,
    validate,
)
from shared.ids import resource_id
from shared.resources import ResourceStore, content_of, stamp
from shared.store import DURABLE, Document, Store

from .committer import GroupCommitter, StoreUnavailable
from .hl7_intake import new_id

log = logging.getLogger(__name__)

BUNDLE_TYPES = ("transaction", "batch", "message")
WRITE_CONFLICT = 112
CREATE_ATTEMPTS = 8  # concurrent creates of one id conflict in MongoDB; each retry backs off a little longer


@dataclass
class FhirReply:
    status: int
    body: Resource
    headers: dict[str, str] = field(default_factory=dict)


def _etag(version: int | str) -> str:
    return f'W/"{version}"'


def _write_conflict(exc: PyMongoError) -> bool:
    return isinstance(exc, OperationFailure) and exc.code == WRITE_CONFLICT


def _http_date(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def _unavailable(what: str, exc: PyMongoError) -> FhirError:
    """The 503 for a database failure (details go to the log, not to the client)."""
    log.error("FHIR intake: database error", extra={"what": what, "reason": str(exc)})
    return FhirError(503, "transient", f"{what}: the database did not answer, send it again")


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0.005, 0.02) * 2**attempt)


def fhir_record(
    record_id: str, now: datetime, body: bytes, caller: dict[str, Any] | None, peer: str | None, header: dict[str, Any]
) -> Document:
    """The ``messages`` document every FHIR request body starts as (its exact bytes kept)."""
    return {
        "_id": record_id,
        "received_at": now,
        "protocol": "fhir",
        "channel": "http",
        "peer": peer or "unknown",
        "caller": caller,
        "raw": body,
        "size": len(body),
        "text": body.decode("utf-8", errors="replace"),
        "charset": "utf-8",
        "header": header,
        "attempts": 0,
    }


def parse_if_none_exist(value: str) -> tuple[str, str]:
    """``identifier=system|value`` -> (system, value); ``FhirError`` 400 for anything else."""
    params = parse_qsl(value.lstrip("?"), keep_blank_values=True)
    if len(params) != 1 or params[0][0] != "identifier" or "|" not in params[0][1]:
        raise FhirError(400, "not-supported", f"If-None-Exist {value!r} is not supported: use identifier=system|value")
    system, _, ident = params[0][1].partition("|")
    if not system or not ident:
        raise FhirError(400, "invalid", f"If-None-Exist {value!r} needs both a system and a value")
    return system, ident


class FhirIntake:
    def __init__(
        self, store: Store, committer: GroupCommitter, base_url: str, clock: Callable[[], datetime] | None = None
    ) -> None:
        self._store = store
        self._resources = ResourceStore(store)
        self._committer = committer
        self._base = base_url.rstrip("/") + "/fhir"
        self._clock = clock or (lambda: datetime.now(UTC))

    def _record(self, body: bytes, caller: Caller, peer: str, header: dict[str, Any]) -> Document:
        return fhir_record(new_id(), self._clock(), body, caller.to_doc(), peer, header)

    async def keep_rejected(
        self, body: bytes, error: FhirError, caller: Caller, peer: str, header: dict[str, Any]
    ) -> None:
        """Keep a refused body with the OperationOutcome it was answered with (then re-raise)."""
        doc = self._record(body, caller, peer, header)
        doc.update(
            status="rejected", reason=error.issues[0]["diagnostics"], http_status=error.status, issues=error.issues
        )
        try:
            await self._committer.commit([doc])
        except StoreUnavailable as exc:
            log.error("rejected FHIR body not stored", extra={"reason": str(exc)})

    async def refuse_oversize(
        self, head: bytes, size: int, limit: int, caller: Caller, peer: str, header: dict[str, Any]
    ) -> FhirError:
        """Keep the first ``limit`` bytes of a body larger than ``limit`` (with its size) and return the
        413 to answer with; if even that cannot be stored it is logged and the 413 still returned."""
        error = FhirError(
            413,
            "too-costly",
            f"body of {size} bytes exceeds the limit of {limit} bytes (MSCC_MLLP_MAX_MESSAGE_BYTES)",
        )
        doc = self._record(head, caller, peer, header)
        doc.update(
            status="rejected",
            reason=error.issues[0]["diagnostics"],
            http_status=413,
            issues=error.issues,
            size=size,
            truncated=True,
        )
        try:
            await self._committer.commit([doc])
        except StoreUnavailable as exc:
            log.error("oversize FHIR body not stored", extra={"reason": str(exc)})
        return error

    async def _validated(
        self, body: bytes, content_type: str | None, expected: str, caller: Caller, peer: str, header: dict[str, Any]
    ) -> Resource:
        try:
            check_content_type(content_type)
            return validate(parse_json(body), expected)
        except FhirError as error:
            await self.keep_rejected(body, error, caller, peer, header)
            raise

    def _existing_reply(self, doc: Document, status: int = 200) -> FhirReply:
        resource: Resource = doc["resource"]
        return FhirReply(status, resource, self._resource_headers(doc))

    def _resource_headers(self, doc: Document) -> dict[str, str]:
        return {
            "Location": f"{self._base}/{doc['type']}/{doc['id']}/_history/{doc['version']}",
            "ETag": _etag(doc["version"]),
            "Last-Modified": _http_date(doc["last_updated"]),
        }

    async def create(
        self,
        resource_type: str,
        body: bytes,
        content_type: str | None,
        if_none_exist: str | None,
        caller: Caller,
        peer: str,
    ) -> FhirReply:
        """FHIR create (with conditional create); ``FhirError`` carries any refusal (503 if the database
        fails), after the body was kept as a rejected record."""
        header: dict[str, Any] = {"interaction": "create", "resource_type": resource_type}
        data = await self._validated(body, content_type, resource_type, caller, peer, header)
        try:
            try:
                return await self._conditional_create(resource_type, data, body, if_none_exist, caller, peer, header)
            except PyMongoError as exc:
                raise _unavailable(f"{resource_type} not stored", exc) from exc
        except FhirError as error:
            await self.keep_rejected(body, error, caller, peer, header)
            raise

    async def _conditional_create(
        self,
        resource_type: str,
        data: Resource,
        body: bytes,
        if_none_exist: str | None,
        caller: Caller,
        peer: str,
        header: dict[str, Any],
    ) -> FhirReply:
        """The If-None-Exist match if there is one, else a create; ``FhirError`` 400/409/412 refuses."""
        if if_none_exist is not None:
            system, value = parse_if_none_exist(if_none_exist)
            matches = await self._resources.by_identifier(resource_type, system, value)
            if len(matches) > 1:
                raise FhirError(
                    412, "multiple-matches", f"If-None-Exist {if_none_exist!r} matches more than one {resource_type}"
                )
            if matches:
                return self._existing_reply(matches[0])
        identifiers = business_identifiers(data)
        rid = resource_id(resource_type, *identifiers[0]) if identifiers else str(uuid.uuid4())
        return await self._create_new(resource_type, rid, data, body, caller, peer, header)

    async def _create_new(
        self,
        resource_type: str,
        rid: str,
        data: Resource,
        body: bytes,
        caller: Caller,
        peer: str,
        header: dict[str, Any],
    ) -> FhirReply:
        """Create version 1 of ``rid``, or answer with the stored one if it has the same content.

        Concurrent creates of one id conflict in MongoDB (a duplicate key, or a transaction write
        conflict); the losers back off and then find the winner's resource. ``FhirError`` 409 if the id
        holds other content; ``PyMongoError`` if the database fails.
        """
        for attempt in range(CREATE_ATTEMPTS):
            existing = await self._resources.read(resource_type, rid)
            if existing is not None:
                if content_of(existing["resource"]) == content_of(data):
                    return self._existing_reply(existing)  # the same create again: idempotent
                raise FhirError(
                    409,
                    "duplicate",
                    f"{resource_type}/{rid} already exists for this business identifier with other content "
                    "(this server does not update resources): use If-None-Exist to get the stored one",
                )
            record = self._record(body, caller, peer, {**header, "id": rid})
            now = record["received_at"]
            resource = validate(stamp(data, rid, 1, now, f"urn:uuid:{uuid.UUID(record['_id'])}"))
            record.update(status="ready", issues=[], fhir={"resources": [f"{resource_type}/{rid}"]})
            try:
                await self._write_created(record, resource, now)
            except DuplicateKeyError:
                continue  # created concurrently: answer from what is stored now
            except PyMongoError as exc:
                if not (exc.has_error_label("TransientTransactionError") or _write_conflict(exc)):
                    raise
                await _backoff(attempt)  # another create of this id is in flight: let it finish
                continue
            return FhirReply(
                201,
                resource,
                {
                    "Location": f"{self._base}/{resource_type}/{rid}/_history/1",
                    "ETag": _etag(1),
                    "Last-Modified": _http_date(now),
                },
            )
        raise FhirError(409, "conflict", f"{resource_type}/{rid} is being written concurrently: try again")

    async def _write_created(self, record: Document, resource: Resource, now: datetime) -> None:
        async with (
            self._store.client.start_session() as session,
            await session.start_transaction(write_concern=DURABLE),
        ):
            await self._store.messages.insert_one(record, session=session)
            await self._resources.insert_version(resource, 1, now, session)

    async def post_bundle(self, body: bytes, content_type: str | None, caller: Caller, peer: str) -> FhirReply:
        """Store a transaction, batch or message Bundle for the mapper and answer with its receipt."""
        header: dict[str, Any] = {"interaction": "bundle"}
        data = await self._validated(body, content_type, "Bundle", caller, peer, header)
        try:
            bundle_type = data.get("type")
            if bundle_type not in BUNDLE_TYPES:
                raise FhirError(
                    400,
                    "not-supported",
                    f"Bundle.type {bundle_type!r}: POST /fhir takes transaction, batch or message Bundles",
                    expression=["Bundle.type"],
                )
            entries = data.get("entry") or []
            first = (entries[0].get("resource") or {}) if entries else {}
            if bundle_type == "message" and first.get("resourceType") != "MessageHeader":
                raise FhirError(
                    400,
                    "invalid",
                    "a message Bundle's first entry must be a MessageHeader",
                    expression=["Bundle.entry[0].resource"],
                )
        except FhirError as error:
            await self.keep_rejected(body, error, caller, peer, header)
            raise
        record = self._record(
            body, caller, peer, {**header, "bundle_type": bundle_type, "message_header": first.get("id")}
        )
        plan = [self._plan_entry(entry) for entry in entries]
        reply = (
            self._message_response(data, first, record["_id"])
            if bundle_type == "message"
            else self._transaction_receipt(bundle_type, plan)
        )
        record.update(
            status="ready",
            issues=[],
            fhir={"bundle_type": bundle_type, "entries": plan},
            reply={"status": reply.status, "body": reply.body},
        )
        key = self._bundle_key(data, first, bundle_type)
        if key:
            record["dedup_key"] = key
        try:
            [committed] = await self._committer.commit([record])
        except StoreUnavailable as exc:
            log.error("FHIR Bundle not stored", extra={"reason": str(exc)})
            raise FhirError(
                503, "transient", "the Bundle was not stored (database unavailable), send it again"
            ) from exc
        stored = committed.document
        return FhirReply(
            stored["reply"]["status"],
            stored["reply"]["body"],
            {"X-Message-Id": stored["_id"]} | ({"X-Duplicate": "true"} if not committed.inserted else {}),
        )

    @staticmethod
    def _bundle_key(data: Resource, first: Resource, bundle_type: str) -> str | None:
        """Resending the same Bundle (same identifier, or same MessageHeader id) is a duplicate."""
        ids = business_identifiers(data)
        if ids:
            return f"fhir|bundle|{ids[0][0]}|{ids[0][1]}"
        if bundle_type == "message" and first.get("id"):
            return f"fhir|message|{first['id']}"
        return None

    @staticmethod
    def _plan_entry(entry: dict[str, Any]) -> dict[str, Any]:
        """The id this hub gives an entry's resource, so the mapper and the receipt agree on it."""
        resource = entry.get("resource") or {}
        request = entry.get("request") or {}
        method, url = request.get("method"), request.get("url", "")
        rtype = resource.get("resourceType")
        assigned = None
        if rtype and method == "PUT" and "?" not in url and url.count("/") == 1:
            assigned = url.split("/", 1)[1]
        elif rtype and method in (None, "POST"):
            ids = business_identifiers(resource)
            assigned = resource_id(rtype, *ids[0]) if ids else resource.get("id") or str(uuid.uuid4())
        return {"fullUrl": entry.get("fullUrl"), "method": method, "url": url or None, "type": rtype, "id": assigned}

    @staticmethod
    def _transaction_receipt(bundle_type: str, plan: list[dict[str, Any]]) -> FhirReply:
        entries = []
        for item in plan:
            response: dict[str, Any] = {"status": "202 Accepted"}
            if item["type"] and item["id"]:
                response["location"] = f"{item['type']}/{item['id']}"
            entries.append({"response": response})
        body = validate({"resourceType": "Bundle", "type": f"{bundle_type}-response", "entry": entries})
        return FhirReply(202, body)

    def _message_response(self, data: Resource, request_header: Resource, record_id: str) -> FhirReply:
        now = self._clock().isoformat(timespec="milliseconds").replace("+00:00", "Z")
        header: Resource = {
            "resourceType": "MessageHeader",
            "id": str(uuid.uuid4()),
            "source": {"endpoint": self._base},
            "response": {"identifier": request_header.get("id") or data.get("id") or record_id, "code": "ok"},
        }
        if "eventCoding" in request_header:
            header["eventCoding"] = request_header["eventCoding"]
        else:
            header["eventUri"] = request_header.get("eventUri", "urn:mscc:event:acknowledgement")
        body = validate(
            {
                "resourceType": "Bundle",
                "id": str(uuid.UUID(record_id)),
                "type": "message",
                "timestamp": now,
                "entry": [{"fullUrl": f"urn:uuid:{header['id']}", "resource": header}],
            }
        )
        return FhirReply(200, body)

    async def read(self, resource_type: str, rid: str, version: str | None = None) -> FhirReply:
        """The current (or one) version; ``FhirError`` 404 if unknown, 503 if the database fails."""
        try:
            doc = (
                await self._resources.vread(resource_type, rid, version)
                if version
                else await self._resources.read(resource_type, rid)
            )
        except PyMongoError as exc:
            raise _unavailable(f"{resource_type}/{rid} not read", exc) from exc
        if doc is None:
            what = f"{resource_type}/{rid}" + (f"/_history/{version}" if version else "")
            raise FhirError(404, "not-found", f"{what} is not known")
        reply = self._existing_reply(doc)
        reply.headers.pop("Location")
        return reply


def capability_version() -> str:
    return FHIR_VERSION
