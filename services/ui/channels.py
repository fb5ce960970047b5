"""The channels page's figures: per sender and message type, what arrived in a window and what became of it.

One aggregation over ``messages`` bounded by the ``received_at`` index (the window), grouped by sender
(MSH-4, else the calling client's ODS code) and type, counting each status; the messages per interval
for the chart come from the same range. Deliveries are counted through the outbox's ``message_id``
index and the deliveries' ids (``{subscription}:{outbox id}``) for the newest ``MAX_TRACED`` messages of
the window, so a busy week never turns the page into a scan; the page says when it is capped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.store import Document, Store

WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
BUCKETS = {"1h": timedelta(minutes=5), "24h": timedelta(hours=1), "7d": timedelta(hours=6)}
MAX_TRACED = 2000
MAX_ROWS = 500
QUEUED = ("ready", "mapping")
COLUMNS = ("received", "accepted", "rejected", "mapped", "failed", "queued", "delivered")


@dataclass
class Channel:
    sender: str
    type: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COLUMNS, 0))


@dataclass(frozen=True)
class ChannelFigures:
    since: datetime
    channels: list[Channel]
    per_interval: list[tuple[datetime, int]]
    capped: bool  # deliveries counted for the newest MAX_TRACED messages only


def _type_expr() -> Document:
    return {
        "$ifNull": [
            "$header.message_type",
            {"$concat": ["fhir:", {"$ifNull": ["$header.resource_type", {"$ifNull": ["$header.interaction", "?"]}]}]},
        ]
    }


def _sender_expr() -> Document:
    return {"$ifNull": ["$header.sending_facility", {"$ifNull": ["$caller.ods_code", ""]}]}


async def channel_figures(store: Store, window: str, now: datetime) -> ChannelFigures:
    """The figures for ``window`` (a key of ``WINDOWS``) ending at ``now``."""
    since = now - WINDOWS[window]
    match = {"$match": {"received_at": {"$gte": since, "$lte": now}, "protocol": {"$ne": "hl7v2-batch"}}}
    grouped = await store.messages.aggregate(
        [
            match,
            {"$group": {"_id": {"s": _sender_expr(), "t": _type_expr(), "st": "$status"}, "n": {"$sum": 1}}},
        ]
    )
    channels: dict[tuple[str, str], Channel] = {}
    async for row in grouped:
        key = (str(row["_id"]["s"]), str(row["_id"]["t"]))
        channel = channels.setdefault(key, Channel(*key))
        n, state = int(row["n"]), str(row["_id"].get("st") or "")
        channel.counts["received"] += n
        channel.counts["accepted" if state != "rejected" else "rejected"] += n
        if state in ("mapped", "failed"):
            channel.counts[state] += n
        elif state == "dead":
            channel.counts["failed"] += n
        elif state in QUEUED:
            channel.counts["queued"] += n
    capped = await _count_deliveries(store, since, now, channels)
    ordered = sorted(channels.values(), key=lambda c: (-c.counts["received"], c.sender, c.type))[:MAX_ROWS]
    return ChannelFigures(since, ordered, await _per_interval(store, window, since, now), capped)


async def _count_deliveries(
    store: Store, since: datetime, now: datetime, channels: dict[tuple[str, str], Channel]
) -> bool:
    newest = (
        store.messages.find(
            {"received_at": {"$gte": since, "$lte": now}, "status": {"$in": ["mapped", "failed", "dead"]}},
            {"_id": 1, "header": 1, "caller.ods_code": 1, "protocol": 1},
        )
        .sort("received_at", -1)
        .limit(MAX_TRACED + 1)
    )
    keyed: dict[str, tuple[str, str]] = {}
    async for doc in newest:
        keyed[str(doc["_id"])] = _key(doc)
    capped = len(keyed) > MAX_TRACED
    if capped:
        keyed.pop(next(reversed(keyed)))
    if not keyed:
        return capped
    events: dict[str, str] = {}
    async for event in store.outbox.find({"message_id": {"$in": list(keyed)}}, {"_id": 1, "message_id": 1}):
        events[str(event["_id"])] = str(event["message_id"])
    subscriptions = [str(s["_id"]) async for s in store.subscriptions.find({}, {"_id": 1})]
    wanted = [f"{sub}:{event}" for sub in subscriptions for event in events]
    for chunk in _chunks(wanted, 5000):
        async for found in store.deliveries.find(
            {"_id": {"$in": chunk}, "status": "delivered"}, {"event.outbox_id": 1}
        ):
            message = events.get(str((found.get("event") or {}).get("outbox_id") or ""))
            key = keyed.get(message or "")
            if key is not None:
                channels.setdefault(key, Channel(*key)).counts["delivered"] += 1
    return capped


def _key(doc: Document) -> tuple[str, str]:
    header = doc.get("header") or {}
    sender = header.get("sending_facility") or (doc.get("caller") or {}).get("ods_code") or ""
    if header.get("message_type"):
        kind = str(header["message_type"])
    else:
        kind = f"fhir:{header.get('resource_type') or header.get('interaction') or '?'}"
    return str(sender), kind


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[n : n + size] for n in range(0, len(items), size)]


async def _per_interval(store: Store, window: str, since: datetime, now: datetime) -> list[tuple[datetime, int]]:
    """Messages received per interval of the window (empty intervals as 0), oldest first."""
    step = BUCKETS[window]
    count = int(WINDOWS[window] / step)
    start = now - step * count
    buckets = [0] * count
    step_ms = step.total_seconds() * 1000
    slot = {"$floor": {"$divide": [{"$subtract": ["$received_at", start]}, step_ms]}}
    cursor = await store.messages.aggregate(
        [
            {"$match": {"received_at": {"$gte": start, "$lte": now}, "protocol": {"$ne": "hl7v2-batch"}}},
            {"$group": {"_id": slot, "n": {"$sum": 1}}},
        ]
    )
    async for doc in cursor:
        n = min(max(int(doc["_id"]), 0), count - 1)
        buckets[n] += int(doc["n"])
    return [(start + step * n, value) for n, value in enumerate(buckets)]
