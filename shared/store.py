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

Writes that an acknowledgement depends on use write concern majority with journaling, so an
acknowledged message survives a crash or a failover.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from pymongo.write_concern import WriteConcern

Document = dict[str, Any]
DURABLE = WriteConcern(w="majority", j=True)


def connect(uri: str, *, app_name: str = "mscc-hub") -> AsyncMongoClient[Document]:
    """Create the process's one client (no I/O happens until first use)."""
    return AsyncMongoClient(uri, appname=app_name, tz_aware=True, serverSelectionTimeoutMS=10_000)


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

    async def ensure_schema(self) -> None:
        """Create collections and indexes; safe to run at every start-up and from many processes."""
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

    async def ping(self) -> bool:
        """True when the server answers within the client's selection timeout."""
        try:
            await self.db.command("ping")
        except PyMongoError:
            return False
        return True
