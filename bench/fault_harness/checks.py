"""What a scenario left behind, read from the database and the receiver once the backlog has drained:
the counts that prove (or disprove) "acknowledged means processed, exactly once, in order".

Every count is of this scenario's messages only (their MSH-10 start with its prefix) and of the events
numbered while it ran (each subscription's counter before and after)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fault_harness.receiver import Receipt
from fault_harness.sender import Tally
from shared.store import Store

IN_HAND = ("ready", "mapping")
PROCESSED = ("mapped", "needs-review")


@dataclass
class Findings:
    """The outcome of one scenario; ``details`` name the records behind every non-zero failure count."""

    stored: int = 0
    lost: int = 0
    stored_twice: int = 0
    unprocessed: int = 0  # acknowledged, yet not mapped (nor held for review) once drained
    duplicate_effects: int = 0  # a resource version written twice for one message, or a resource twice
    delivered: int = 0  # distinct events received (answered 2xx)
    duplicate_deliveries: int = 0
    missing: int = 0
    disorder: int = 0
    bad_signatures: int = 0
    details: list[str] = field(default_factory=list)


async def message_records(store: Store, prefix: str) -> list[dict[str, Any]]:
    query = {"header.control_id": {"$regex": f"^{prefix}"}}
    projection = {"raw": 1, "status": 1, "header.sending_facility": 1, "header.control_id": 1}
    return [doc async for doc in store.messages.find(query, projection)]


async def check_messages(store: Store, prefix: str, tally: Tally, found: Findings) -> list[str]:
    """Lost, stored twice, unprocessed; the ids of the scenario's accepted records."""
    records = await message_records(store, prefix)
    accepted: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for doc in records:
        if doc.get("status") == "rejected":
            continue
        header = doc.get("header") or {}
        accepted.setdefault((header.get("sending_facility", ""), header.get("control_id", "")), []).append(doc)
    found.stored = sum(len(docs) for docs in accepted.values())
    for key in tally.acked:
        sent = tally.sent[key].data
        docs = [d for d in accepted.get(key, []) if bytes(d.get("raw") or b"") == sent]
        if not docs:
            found.lost += 1
            found.details.append(f"LOST: {key[0]} {key[1]} was acknowledged AA but no record holds its bytes")
        elif docs[0].get("status") not in PROCESSED:
            found.unprocessed += 1
            found.details.append(f"UNPROCESSED: record {docs[0]['_id']} ({key[1]}) is {docs[0].get('status')}")
    for key, docs in accepted.items():
        if len(docs) > 1:
            found.stored_twice += len(docs) - 1
            ids = ", ".join(str(d["_id"]) for d in docs)
            found.details.append(f"STORED TWICE: {key[0]} {key[1]} as records {ids}")
    return [str(d["_id"]) for docs in accepted.values() for d in docs]


async def check_resources(store: Store, message_ids: list[str], found: Findings) -> None:
    """A version written twice for one message (two versions naming the same message, or two consecutive
    versions with the same content), or one business identifier held by two resources."""
    touched: set[tuple[str, str]] = set()
    per_message: Counter[tuple[str, str, str]] = Counter()
    for start in range(0, len(message_ids), 500):
        chunk = message_ids[start : start + 500]
        async for doc in store.history.find({"message_id": {"$in": chunk}}, {"type": 1, "id": 1, "message_id": 1}):
            touched.add((doc["type"], doc["id"]))
            per_message[(doc["type"], doc["id"], doc["message_id"])] += 1
    for (kind, rid, message), n in per_message.items():
        if n > 1:
            found.duplicate_effects += n - 1
            found.details.append(f"DUPLICATE VERSION: {kind}/{rid} has {n} versions from message {message}")
    keys: list[str] = []
    for kind in {k for k, _ in touched}:
        ids = [rid for k, rid in touched if k == kind]
        for start in range(0, len(ids), 500):
            query = {"type": kind, "id": {"$in": ids[start : start + 500]}}
            async for doc in store.resources.find(query, {"identifier_keys": 1}):
                keys.extend(doc.get("identifier_keys") or [])
            cursor = store.history.find(query, {"type": 1, "id": 1, "version": 1, "resource": 1}).sort(
                [("type", 1), ("id", 1), ("version", 1)]
            )
            previous: tuple[str, str, Any] | None = None
            async for doc in cursor:
                body = {k: v for k, v in (doc.get("resource") or {}).items() if k != "meta"}
                if previous is not None and previous[:2] == (doc["type"], doc["id"]) and previous[2] == body:
                    found.duplicate_effects += 1
                    found.details.append(
                        f"DUPLICATE VERSION: {doc['type']}/{doc['id']} version {doc['version']} repeats the one before"
                    )
                previous = (doc["type"], doc["id"], body)
    if keys:
        shared = await store.resources.aggregate(
            [
                {"$match": {"identifier_keys": {"$in": sorted(set(keys))}}},
                {"$unwind": "$identifier_keys"},
                {"$match": {"identifier_keys": {"$in": sorted(set(keys))}}},
                {"$group": {"_id": "$identifier_keys", "n": {"$sum": 1}, "ids": {"$push": "$_id"}}},
                {"$match": {"n": {"$gt": 1}}},
            ]
        )
        async for group in shared:
            found.duplicate_effects += group["n"] - 1
            found.details.append(f"DUPLICATE RESOURCE: {group['_id']} is held by {', '.join(group['ids'])}")


def check_deliveries(
    receipts: list[Receipt],
    before: dict[str, int],
    after: dict[str, int],
    found: Findings,
) -> None:
    """Per subscription, of the events numbered in this scenario: delivered, delivered more than once,
    never delivered, delivered before an earlier one (or an older version of a resource after a newer)."""
    for sub, last in after.items():
        first = before.get(sub, 0)
        mine = [r for r in receipts if r.subscription == sub and first < r.number <= last]
        seen: set[int] = set()
        versions: dict[str, int] = {}
        for receipt in mine:
            if not receipt.signed:
                found.bad_signatures += 1
            if receipt.number in seen:
                found.duplicate_deliveries += 1
                continue
            gap = [n for n in range(first + 1, receipt.number) if n not in seen]
            if gap:
                found.disorder += 1
                found.details.append(f"OUT OF ORDER: {sub} event {receipt.number} arrived before {gap[:5]}")
            seen.add(receipt.number)
            resource, _, version = receipt.focus.rpartition("/_history/")
            if resource and version.isdigit():
                if versions.get(resource, 0) > int(version):
                    found.disorder += 1
                    found.details.append(f"OUT OF ORDER: {sub} {receipt.focus} after version {versions[resource]}")
                versions[resource] = max(versions.get(resource, 0), int(version))
        found.delivered += len(seen)
        missing = [n for n in range(first + 1, last + 1) if n not in seen]
        if missing:
            found.missing += len(missing)
            found.details.append(f"MISSING: {sub} events {missing[:10]}{' ...' if len(missing) > 10 else ''}")


async def check_referrals_notified(
    store: Store, message_ids: list[str], trust_subscription: dict[str, str], receipts: list[Receipt], found: Findings
) -> None:
    """Independently of the notifier's own numbering: every referral this scenario created reached its
    trust's subscription (its version 1)."""
    received = {(r.subscription, r.focus) for r in receipts}
    unseen: list[tuple[str, str]] = []
    for start in range(0, len(message_ids), 500):
        query = {"type": "ServiceRequest", "version": 1, "message_id": {"$in": message_ids[start : start + 500]}}
        async for doc in store.history.find(query, {"trusts": 1}):
            for trust in doc.get("trusts") or []:
                sub = trust_subscription.get(trust)
                if sub is not None and (sub, doc["_id"]) not in received:
                    unseen.append((sub, str(doc["_id"])))
    for sub, focus in unseen:
        # A numbered event that never arrived is already counted by check_deliveries.
        if await store.deliveries.count_documents({"_id": f"{sub}:{focus}"}) == 0:
            found.missing += 1
            found.details.append(f"MISSING: {focus} was never numbered for its trust's subscription {sub}")


async def counters(store: Store, subscriptions: list[str]) -> dict[str, int]:
    query = {"_id": {"$in": subscriptions}}
    return {str(d["_id"]): int(d.get("events_since_start", 0)) async for d in store.subscriptions.find(query)}
