"""The dead letters: what stopped and waits for an operator, each list bounded and read by its index.

messages     accepted, then not mapped (``failed``: a permanent error; ``dead``: out of attempts),
             newest first (``status_received``); reprocessed ones are shown as such
outbox       events the fan-out gave up on (``status`` "dead", ``status_created``)
deliveries   notifications dead-lettered on their subscription (``status`` "dead"), which block
             that subscription's later events until redelivered or skipped
"""

from __future__ import annotations

from shared.message_query import SUMMARY_PROJECTION, MessageRow
from shared.messages import MessageRecord
from shared.store import Document, Store

LIMIT = 200


async def dead_letters(store: Store) -> tuple[list[MessageRow], list[Document], list[Document]]:
    cursor = store.messages.find({"status": {"$in": ["failed", "dead"]}}, SUMMARY_PROJECTION)
    messages = [MessageRow.of(MessageRecord.from_doc(d)) async for d in cursor.sort("received_at", -1).limit(LIMIT)]
    events = [
        e
        async for e in store.outbox.find({"status": "dead"}, {"payload": 0, "resource": 0})
        .sort("created_at", -1)
        .limit(LIMIT)
    ]
    deliveries = [
        d
        async for d in store.deliveries.find({"status": "dead"}, {"event.resource": 0, "payload": 0})
        .sort("_id", 1)
        .limit(LIMIT)
    ]
    return messages, events, deliveries
