"""The MongoDB store: one client per process, the collections, their indexes, and the write concerns.

Collections:
  messages          every inbound message, raw bytes first: accepted ones queued (status "ready"),
                    rejected ones kept with the reason; the mapper claims from here
  resources         the current version of each FHIR resource, ``_id`` = "Type/id"
  resource_history  every version of every resource, ``_id`` = "Type/id/_history/N"
  outbox            one event per resource change, ``_id`` = "Type/id/_history/N"; the notifier claims
                    from here
  subscriptions     FHIR Subscriptions (rest-hook or MLLP), with their event counter and delivery lane
  deliveries        one per (subscription, event): event number, status, every attempt; the notifier's queue
  clients           API clients (OAuth 2.0 client credentials): ODS code, scopes, hashed secret or public key
  signing_keys      the key the hub signs its access tokens with (one document, created on first start)
  used_assertions   client assertion ids (jti) seen, kept until the assertion expires: replays are refused
  audit_events      one FHIR AuditEvent per request to /fhir, /hl7v2, /admin (shared/audit.py), deleted after
                    MSCC_AUDIT_RETENTION_DAYS by a TTL index

Writes that an acknowledgement depends on use write concern majority with journaling, so an
acknowledged message survives a crash or a failover.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession, TransactionOptions
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from pymongo.write_concern import WriteConcern

from . import mongo_sockets
from .audit_log import COLLECTION as AUDIT_COLLECTION
from .audit_log import ensure_indexes as ensure_audit_indexes

mongo_sockets.install()  # a cancelled connect closes its socket (pymongo 4.13 leaves it to the collector)

Document = dict[str, Any]
DURABLE = WriteConcern(w="majority", j=True)


DEFAULT_MAX_COMMIT_MS = 5_000  # MSCC_TRANSACTION_MAX_COMMIT_S


class HubClient(AsyncMongoClient[Document]):
    """The hub's client: every session it starts gives its transactions a commit time limit
    (``maxCommitTimeMS``), so a commit that cannot complete (a lost majority, a stalled server) fails
    within that time, is retried or reported, and never holds a worker for ever. Every transaction of
    the hub starts from ``client.start_session()``, so this is the one place that sets it."""

    max_commit_ms: int = DEFAULT_MAX_COMMIT_MS

    def start_session(
        self,
        causal_consistency: bool | None = None,
        default_transaction_options: TransactionOptions | None = None,
        snapshot: bool | None = False,
    ) -> AsyncClientSession:
        if default_transaction_options is None:
            default_transaction_options = TransactionOptions(max_commit_time_ms=self.max_commit_ms)
        return super().start_session(causal_consistency, default_transaction_options, snapshot)


def connect(
    uri: str, *, app_name: str = "mscc-hub", max_commit_ms: int = DEFAULT_MAX_COMMIT_MS
) -> AsyncMongoClient[Document]:
    """Create the process's one client (no I/O happens until first use)."""
    client = HubClient(uri, appname=app_name, tz_aware=True, serverSelectionTimeoutMS=10_000)
    client.max_commit_ms = max_commit_ms
    return client


class Store:
    """The hub's collections on one database. Create once per process and pass it down."""

    def __init__(self, client: AsyncMongoClient[Document], db_name: str) -> None:
        self.client = client
        self.db: AsyncDatabase[Document] = client.get_database(db_name)
        self.messages: AsyncCollection[Document] = self.db.get_collection("messages", write_concern=DURABLE)
        self.resources: AsyncCollection[Document] = self.db.get_collection("resources", write_concern=DURABLE)
        self.history: AsyncCollection[Document] = self.db.get_collection("resource_history", write_concern=DURABLE)
        self.outbox: AsyncCollection[Document] = self.db.get_collection("outbox", write_concern=DURABLE)
        self.subscriptions: AsyncCollection[Document] = self.db.get_collection("subscriptions", write_concern=DURABLE)
        self.deliveries: AsyncCollection[Document] = self.db.get_collection("deliveries", write_concern=DURABLE)
        # API clients (shared/clients.py), the hub's token signing key and the client assertions already used
        # (shared/tokens.py, services/api/oauth_grant.py): docs/security.md.
        self.clients: AsyncCollection[Document] = self.db.get_collection("clients", write_concern=DURABLE)
        self.signing_keys: AsyncCollection[Document] = self.db.get_collection("signing_keys", write_concern=DURABLE)
        self.used_assertions: AsyncCollection[Document] = self.db.get_collection(
            "used_assertions", write_concern=DURABLE
        )
        # The audit trail (shared/audit.py, shared/audit_log.py): docs/security.md, "Audit trail".
        self.audit: AsyncCollection[Document] = self.db.get_collection(AUDIT_COLLECTION, write_concern=DURABLE)

    async def ensure_schema(self, audit_retention_days: int | None = None) -> None:
        """Create collections and indexes; safe to run at every start-up and from many processes.
        ``audit_retention_days``: MSCC_AUDIT_RETENTION_DAYS, applied to the audit trail's TTL index (None
        leaves an existing one as it is)."""
        existing = set(await self.db.list_collection_names())
        for name in ("messages", "resources", "resource_history", "outbox", "subscriptions", "deliveries"):
            if name not in existing:
                try:
                    await self.db.create_collection(name)
                except PyMongoError as exc:  # another process created it first
                    if "already exists" not in str(exc):
                        raise
        await self.messages.create_indexes(
            [
                # Duplicate detection: sending application + facility + control id (HL7v2), or the
                # Bundle/MessageHeader identity (FHIR). Only accepted messages carry a key.
                IndexModel([("dedup_key", ASCENDING)], name="dedup_key", unique=True, sparse=True),
                IndexModel([("status", ASCENDING), ("received_at", ASCENDING)], name="status_received"),
                IndexModel([("received_at", ASCENDING)], name="received_at"),
                IndexModel([("header.control_id", ASCENDING)], name="control_id"),
                IndexModel([("lease.owner", ASCENDING)], name="lease_owner", sparse=True),
                # Operators' search by sender and time (`mscc messages search --sender --since`): MSH-4
                # for HL7v2, the calling client's ODS code for FHIR.
                IndexModel(
                    [("header.sending_facility", ASCENDING), ("received_at", ASCENDING)], name="sender_received"
                ),
                IndexModel([("caller.ods_code", ASCENDING), ("received_at", ASCENDING)], name="caller_ods_received"),
            ]
        )
        await self.outbox.create_indexes(
            [
                IndexModel([("status", ASCENDING), ("created_at", ASCENDING)], name="status_created"),
                IndexModel([("message_id", ASCENDING)], name="message_id"),
            ]
        )
        await self.subscriptions.create_indexes(
            [
                IndexModel([("trust", ASCENDING)], name="trust"),
                IndexModel([("due_at", ASCENDING)], name="due_at", sparse=True),
            ]
        )
        await self.deliveries.create_indexes(
            [
                # Per-subscription order: the head is the lowest event number not yet delivered.
                IndexModel(
                    [("subscription_id", ASCENDING), ("event_number", ASCENDING)], name="sub_number", unique=True
                ),
                IndexModel(
                    [("subscription_id", ASCENDING), ("status", ASCENDING), ("event_number", ASCENDING)],
                    name="sub_status_number",
                ),
                IndexModel([("status", ASCENDING)], name="status"),
            ]
        )
        await self.history.create_indexes(
            [
                IndexModel([("type", ASCENDING), ("id", ASCENDING), ("version", ASCENDING)], name="type_id_version"),
                # Type history (GET /fhir/{type}/_history): newest first, from _since on, sorted by the
                # index (read backwards) rather than in memory, which MongoDB caps at 32 MB.
                IndexModel(
                    [("type", ASCENDING), ("last_updated", ASCENDING), ("_id", ASCENDING)], name="type_last_updated_id"
                ),
            ]
        )
        await self.resources.create_indexes(
            [
                IndexModel([("type", ASCENDING), ("identifier_keys", ASCENDING)], name="type_identifier"),
                IndexModel([("type", ASCENDING), ("last_updated", ASCENDING)], name="type_last_updated"),
                # FHIR search: patient/subject, status, identifier value, requester.
                IndexModel([("type", ASCENDING), ("resource.subject.reference", ASCENDING)], name="type_subject"),
                IndexModel([("type", ASCENDING), ("resource.status", ASCENDING)], name="type_status"),
                IndexModel([("type", ASCENDING), ("resource.identifier.value", ASCENDING)], name="type_ident_value"),
                IndexModel(
                    [("type", ASCENDING), ("resource.requester.identifier.value", ASCENDING)], name="type_requester"
                ),
                # The pathway's report follower: DiagnosticReport versions not yet looked at (unset field).
                IndexModel([("type", ASCENDING), ("pathway_checked", ASCENDING)], name="type_pathway_checked"),
            ]
        )
        # Authorisation (shared/visibility.py): a trust's reads filter on ``trusts`` in the query itself;
        # searches and type history are sorted by last update then id, as the unfiltered reads are.
        trusts_order = [("type", ASCENDING), ("trusts", ASCENDING), ("last_updated", ASCENDING), ("_id", ASCENDING)]
        await self.resources.create_indexes([IndexModel(trusts_order, name="type_trusts_last_updated_id")])
        await self.history.create_indexes([IndexModel(trusts_order, name="type_trusts_last_updated_id")])
        await self.clients.create_indexes([IndexModel([("name", ASCENDING)], name="name", unique=True)])
        # A client assertion's jti is kept until the assertion expires (TTL), so a replay is a duplicate key.
        await self.used_assertions.create_indexes(
            [IndexModel([("expires_at", ASCENDING)], name="expires_at_ttl", expireAfterSeconds=0)]
        )
        await ensure_audit_indexes(self.audit, audit_retention_days)

    async def ping(self) -> bool:
        """True when the server answers within the client's selection timeout."""
        try:
            await self.db.command("ping")
        except PyMongoError:
            return False
        return True
