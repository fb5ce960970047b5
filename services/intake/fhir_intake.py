"""FHIR intake: ServiceRequest create and transaction / batch / message Bundles, stored before answering.

Every body is kept as a message record (exact bytes): accepted ones with status "ready" for the mapper,
rejected ones with the OperationOutcome that was answered. A created resource is written as version 1
in the same MongoDB transaction as its message record. Resource ids come from business identifiers
(the same identifier from the same organisation always gives the same id: ``business_id``, scoped by the
caller's ODS code unless the identifier is national); a resource without one gets a random id. NHS
numbers failing the check are never stored as NHS numbers (``shared.nhs.check_nhs_numbers``); the sender
is warned in the answer and on the record.
Bundles are validated, stored and queued; the mapper resolves their entries and internal references.
What is stored for an accepted body is built without I/O by ``fhir_accepted``; this class reads and writes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from bson.errors import BSONError
from pymongo.errors import PyMongoError

from shared.auth import Caller
from shared.db_errors import database_failure, log_failure, refused_input, safe_summary
from shared.fhir import (
    FHIR_VERSION,
    FhirError,
    Resource,
    operation_outcome,
)
from shared.fhir import issue as fhir_issue
from shared.fhir_messages import fhir_message
from shared.limits import Limits
from shared.normalise import normalised
from shared.resources import ResourceStore, content_of
from shared.retry import TransactionRetry, TransientError, run_transaction
from shared.store import DURABLE, Document, Store
from shared.versions import NewVersion, write_versions
from shared.visibility import Visibility

from . import received
from .committer import GroupCommitter, StoreUnavailable
from .fhir_accepted import created_record
from .fhir_bundles import check_update_targets
from .fhir_ids import business_id, identifier_scope, legacy_id, random_id
from .fhir_parse import BundleArrival, Refused, read_bundle, read_create
from .fhir_reply import FhirReply, etag, http_date
from .hl7_intake import new_id
from .offload import ParsePool
from .trust import referral_trusts

# Re-exported: the names callers (and tests) import from here.
__all__ = ["FhirIntake", "FhirReply", "business_id", "check_update_targets", "identifier_scope", "legacy_id"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_Who = tuple[Caller, str, dict[str, Any]]  # who posted a body: caller, peer, the record's header

MATCH_LIMIT = 50  # If-None-Exist candidates read before keeping those in the caller's scope
# Concurrent creates of one id conflict in MongoDB; each retry backs off a little longer.
CREATE_RETRY = TransactionRetry(attempts=8)


def _unavailable(what: str, exc: BaseException) -> FhirError:
    """The answer to a database failure: 503 "send it again" only when transient, a 4xx when it never
    succeeds (``shared.db_errors``). The log gets the error's class and code, never its text; a refusal
    the body caused is logged once the body is kept, naming its record (``keep_rejected``)."""
    if refused_input(exc) is None:
        log.error("FHIR intake: database error", extra={"what": what, **safe_summary(exc)})
    return database_failure(exc, what)


def _same_create(stored: Resource, data: Resource) -> bool:
    """Whether ``stored`` holds what the (normalised) create ``data`` says. The stored side is normalised
    too: a resource stored before intake normalised creates holds the body as it was sent."""
    return content_of(normalised(stored)[0]) == content_of(data)


def prefers_outcome(prefer: str | None) -> bool:
    """Whether the ``Prefer`` header asks for ``return=OperationOutcome``."""
    parts = [p.strip().replace(" ", "") for p in (prefer or "").split(",")]
    return any(p.lower() == "return=operationoutcome" for p in parts)


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
        self,
        store: Store,
        committer: GroupCommitter,
        base_url: str,
        clock: Callable[[], datetime] | None = None,
        service_ods: str = "",
        limits: Limits | None = None,
        pool: ParsePool | None = None,
    ) -> None:
        self._limits = limits or Limits()  # shared/limits.py: checked before anything is stored as accepted
        # Large bodies are parsed and validated in worker processes (offload.py); without a pool, inline.
        self._pool = pool or ParsePool(0, 0)
        self._store = store
        self._resources = ResourceStore(store)
        self._committer = committer
        self._base = base_url.rstrip("/") + "/fhir"
        self._clock = clock or (lambda: datetime.now(UTC))
        # The MSCC team's organisation (MSCC_RECEIVING_FACILITY): its clients create referrals for any trust.
        self._service_ods = service_ods

    def _rejected(
        self, body: bytes, error: FhirError, caller: Caller, peer: str, header: dict[str, Any], size: int | None = None
    ) -> Document:
        """The record of a refused body: the reason and the status answered, the OperationOutcome's issues."""
        return fhir_message(
            new_id(),
            self._clock(),
            body,
            caller.to_doc(),
            peer,
            header,
            status="rejected",
            reason=error.issues[0]["diagnostics"],
            http_status=error.status,
            issues=error.issues,
            size=size,
        ).to_doc()

    async def keep_rejected(
        self,
        body: bytes,
        error: FhirError,
        caller: Caller,
        peer: str,
        header: dict[str, Any],
        refused: BaseException | None = None,
    ) -> None:
        """Keep a refused body with the OperationOutcome it was answered with (then re-raise).
        ``refused``: the database's refusal that ``error`` answers, logged once as a warning naming the
        record kept when the body itself caused it (``shared.db_errors.refused_input``)."""
        record = self._rejected(body, error, caller, peer, header)
        try:
            await self._committer.commit([record])
        except StoreUnavailable as exc:
            log_failure(log, "rejected FHIR body not stored", exc.failure, record=record["_id"], reason=str(exc))
            return
        if refused_input(refused):
            log_failure(log, "FHIR body refused and kept as a rejected record", refused, record=record["_id"])

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
        record = self._rejected(head, error, caller, peer, header, size)
        try:
            await self._committer.commit([record])
        except StoreUnavailable as exc:
            log_failure(log, "oversize FHIR body not stored", exc.failure, record=record["_id"], reason=str(exc))
        return error

    async def _read(self, body: bytes, read: Callable[..., _T | Refused], args: tuple[Any, ...], who: _Who) -> _T:
        """``read(*args)`` (``fhir_parse``: limits, parse, validation), in the parse pool when the body is
        large; a refusal is kept as a rejected record (``who``: caller, peer, header) and raised."""
        result = await self._pool.run(read, *args, size=len(body))
        if isinstance(result, Refused):
            error = result.error()
            await self.keep_rejected(body, error, *who)
            raise error
        return result

    def _existing_reply(self, doc: Document, status: int = 200) -> FhirReply:
        resource: Resource = doc["resource"]
        return FhirReply(status, resource, self._resource_headers(doc))

    def _resource_headers(self, doc: Document) -> dict[str, str]:
        return {
            "Location": f"{self._base}/{doc['type']}/{doc['id']}/_history/{doc['version']}",
            "ETag": etag(doc["version"]),
            "Last-Modified": http_date(doc["last_updated"]),
        }

    async def create(
        self,
        resource_type: str,
        body: bytes,
        content_type: str | None,
        if_none_exist: str | None,
        caller: Caller,
        peer: str,
        prefer: str | None = None,
    ) -> FhirReply:
        """FHIR create (with conditional create); ``FhirError`` carries any refusal (503 if the database
        fails), after the body was kept as a rejected record.

        An NHS number failing the modulus 11 check (or of the wrong length) is stored under the local
        invalid-number system, never as an NHS number, and the resource is still created: a bad number
        alone never refuses a referral. The warning is kept on the message record and answered: as the
        body (an OperationOutcome) when ``Prefer: return=OperationOutcome`` asks for it; otherwise the
        returned resource shows the demoted identifier (its system and type).
        """
        header: dict[str, Any] = {"interaction": "create", "resource_type": resource_type}
        args = (body, content_type, resource_type, self._limits)
        data, warnings = await self._read(body, read_create, args, (caller, peer, header))
        try:
            referral_trusts(data, caller, self._service_ods)  # 403 before anything is matched or created
            try:
                reply = await self._conditional_create(resource_type, data, body, if_none_exist, caller, peer, warnings)
            except (PyMongoError, BSONError) as exc:
                raise _unavailable(f"{resource_type} not stored", exc) from exc
        except FhirError as error:
            await self.keep_rejected(body, error, caller, peer, header, refused=error.__cause__)
            raise
        if reply.status != 201:
            received.count_duplicate_create(resource_type, caller.ods_code, reply.body.get("id"))
        if not prefers_outcome(prefer):
            return reply
        done = "created" if reply.status == 201 else "already exists: the stored version is unchanged"
        what = f"{resource_type}/{reply.body.get('id')} {done}"
        outcome = operation_outcome([*warnings, fhir_issue("information", "informational", what)])
        return FhirReply(reply.status, outcome, reply.headers)

    async def _created_by(self, resource_type: str, rid: str, ods_code: str) -> bool:
        """Whether version 1 of ``rid`` came from a message of the organisation ``ods_code``."""
        first = await self._store.history.find_one(
            {"_id": f"{resource_type}/{rid}/_history/1"}, {"resource.meta.source": 1}
        )
        source = str((((first or {}).get("resource") or {}).get("meta") or {}).get("source") or "")
        try:
            message_id = uuid.UUID(source.removeprefix("urn:uuid:")).hex
        except ValueError:
            return False
        message = await self._store.messages.find_one({"_id": message_id}, {"caller": 1})
        return bool(((message or {}).get("caller") or {}).get("ods_code") == ods_code)

    async def _created_as(self, resource_type: str, rid: str, data: Resource) -> bool:
        """Whether version 1 of ``rid`` holds ``data``: the same create again, after the mapper has since
        normalised the resource (profile, patient link) or the pathway moved it on."""
        first = await self._resources.vread(resource_type, rid, "1")
        return first is not None and _same_create(first["resource"], data)

    async def _owned_legacy(self, resource_type: str, data: Resource, scoped: str, caller: Caller) -> str | None:
        """The unscoped id a resource was stored under before ids were scoped, when it exists and this
        caller's organisation created it: its resends then still find it instead of creating a twin."""
        old = legacy_id(resource_type, data)
        if old is None or old == scoped or await self._resources.read(resource_type, old) is None:
            return None
        return old if await self._created_by(resource_type, old, caller.ods_code) else None

    async def _in_scope(self, doc: Document, caller: Caller) -> bool:
        """Whether a stored resource belongs to the caller's scope: its id is the one its identifiers
        give for the caller's organisation (or a national identifier's), or it is an unscoped resource
        from before scoping that this organisation created."""
        rtype, rid = str(doc["type"]), str(doc["id"])
        if business_id(rtype, doc["resource"], caller.ods_code) == rid:
            return True
        return legacy_id(rtype, doc["resource"]) == rid and await self._created_by(rtype, rid, caller.ods_code)

    async def _sees(self, doc: Document, caller: Caller) -> bool:
        """Whether the caller may be answered with a stored resource: it may see it, or (a resource
        stored before versions named their trusts) its organisation created it."""
        if Visibility.of(caller, self._service_ods).sees(doc):
            return True
        return await self._created_by(str(doc["type"]), str(doc["id"]), caller.ods_code)

    async def _conditional_create(
        self,
        resource_type: str,
        data: Resource,
        body: bytes,
        if_none_exist: str | None,
        caller: Caller,
        peer: str,
        warnings: list[dict[str, Any]],
    ) -> FhirReply:
        """The If-None-Exist match in the caller's scope if there is one, else a create; ``FhirError``
        400/409/412 refuses."""
        if if_none_exist is not None:
            system, value = parse_if_none_exist(if_none_exist)
            found = await self._resources.by_identifier(resource_type, system, value, limit=MATCH_LIMIT)
            matches = [doc for doc in found if await self._in_scope(doc, caller) and await self._sees(doc, caller)]
            if len(matches) > 1:
                raise FhirError(
                    412, "multiple-matches", f"If-None-Exist {if_none_exist!r} matches more than one {resource_type}"
                )
            if matches:
                return self._existing_reply(matches[0])
        scoped = business_id(resource_type, data, caller.ods_code)
        # Without a business identifier: a random id; with one, the pre-scoping id this caller owns, if any.
        owned = None if scoped is None else await self._owned_legacy(resource_type, data, scoped, caller)
        rid = owned or scoped or random_id()
        return await self._create_new(resource_type, rid, data, body, caller, peer, warnings)

    async def _create_new(
        self,
        resource_type: str,
        rid: str,
        data: Resource,
        body: bytes,
        caller: Caller,
        peer: str,
        warnings: list[dict[str, Any]] | None = None,
    ) -> FhirReply:
        """Create version 1 of ``rid`` (with its "created" event, through the one write path), or answer
        with the stored one if it has the same content.

        Concurrent creates of one id conflict in MongoDB (a duplicate key, or a transaction write
        conflict); the losers back off and then find the winner's resource (``shared.retry``).
        ``FhirError`` 409 if the id holds other content or kept being written; ``PyMongoError`` if the
        database fails otherwise.
        """

        async def once() -> FhirReply:
            existing = await self._resources.read(resource_type, rid)
            if existing is not None and not await self._sees(existing, caller):
                # Only a national identifier gives two trusts one id: never answer with the other's resource.
                raise FhirError(
                    409,
                    "duplicate",
                    f"{resource_type} cannot be created under this business identifier: give it an identifier "
                    "your organisation assigns",
                )
            if existing is not None:
                if _same_create(existing["resource"], data) or await self._created_as(resource_type, rid, data):
                    return self._existing_reply(existing)  # the same create again: idempotent
                raise FhirError(
                    409,
                    "duplicate",
                    f"{resource_type}/{rid} already exists for this business identifier with other content "
                    "(this server does not update resources): use If-None-Exist to get the stored one",
                )
            now = self._clock()
            record, new = created_record(
                body,
                caller,
                peer,
                new_id(),
                now,
                resource_type,
                rid,
                data,
                warnings or [],
                service_ods=self._service_ods,
            )
            await self._write_created(record, new)
            return FhirReply(
                201,
                new.current.resource,
                {
                    "Location": f"{self._base}/{resource_type}/{rid}/_history/1",
                    "ETag": etag(1),
                    "Last-Modified": http_date(now),
                },
            )

        try:
            return await run_transaction(once, CREATE_RETRY, what=f"creating {resource_type}/{rid}")
        except TransientError as exc:
            raise FhirError(409, "conflict", f"{resource_type}/{rid} is being written concurrently: try again") from exc

    async def _write_created(self, record: Document, new: NewVersion) -> None:
        """The message record (queued for the mapper, which derives what the resource implies) and
        version 1 with its "created" event, in one transaction."""
        received.stamp([record])
        async with (
            self._store.client.start_session() as session,
            await session.start_transaction(write_concern=DURABLE),
        ):
            await self._store.messages.insert_one(record, session=session)
            await write_versions(self._store, [new], session=session)
        received.count(record)

    async def post_bundle(self, body: bytes, content_type: str | None, caller: Caller, peer: str) -> FhirReply:
        """Store a transaction, batch or message Bundle for the mapper and answer with its receipt."""
        header: dict[str, Any] = {"interaction": "bundle"}
        arrival = BundleArrival(caller, peer, new_id(), self._clock(), self._base, self._service_ods)
        args = (body, content_type, self._limits, arrival)
        record = await self._read(body, read_bundle, args, (caller, peer, header))
        try:
            [committed] = await self._committer.commit([record])
        except StoreUnavailable as exc:
            if not refused_input(exc.failure):  # else logged with the record kept for it (keep_rejected)
                log.error("FHIR Bundle not stored", extra={"reason": str(exc), "record": record["_id"]})
            if exc.failure is not None and not exc.transient:
                refusal = database_failure(exc.failure, "the Bundle was not stored")
                await self.keep_rejected(body, refusal, caller, peer, header, refused=exc.failure)
                raise refusal from exc
            raise FhirError(
                503, "transient", "the Bundle was not stored (database unavailable), send it again"
            ) from exc
        stored = committed.document
        return FhirReply(
            stored["reply"]["status"],
            stored["reply"]["body"],
            {"X-Message-Id": stored["_id"]} | ({"X-Duplicate": "true"} if not committed.inserted else {}),
        )


def capability_version() -> str:
    return FHIR_VERSION
