"""Fan-out: outbox events ("ready", oldest first) become one delivery per matching subscription.

For a batch of the oldest ready events, the matcher decides which subscriptions each goes to; then one
MongoDB transaction, all or nothing:

- per subscription, ``$inc`` its event counter by the number of its new events and take the numbers
  (``events_since_start``: event numbers rise by one per subscription, in outbox order);
- insert the deliveries (``_id`` "{subscription id}:{outbox id}", status "pending");
- mark the events "dispatched" (guarded by status "ready").

Nothing is claimed ahead: every notifier takes the oldest ready events, so two that fan out at once
work on the same batch and the transaction lets only one commit (the other's write conflicts, or its
guard or the deterministic delivery ids fail, and it starts again from a fresh read). That keeps event
numbers in outbox order (version 1 of a resource is numbered before version 2) with any number of
notifier processes, and a crash at any point leaves either nothing or the whole batch done: never a
number without its delivery, never two deliveries of one event.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import datetime

from pymongo import ReturnDocument
from pymongo.errors import PyMongoError

from shared.store import DURABLE, Document, Store

from .matching import Matcher
from .model import COLLECTING, ChangeEvent, Subscription, event_id

log = logging.getLogger(__name__)
ATTEMPTS = 5


class FanOutConflict(Exception):
    """Another notifier dispatched some of these events first: read again."""


class FanOut:
    def __init__(self, store: Store, clock: Callable[[], datetime], batch_size: int = 100) -> None:
        self._store = store
        self._clock = clock
        self.batch_size = batch_size
        self._matcher = Matcher(store)
        self.dispatched = 0
        self.created = 0
        self.conflicts = 0  # batches read again because another writer got there first

    async def run_once(self) -> int:
        """Dispatch one batch; the number of events dispatched (0: none ready). Conflicts are retried;
        ``PyMongoError`` if the database keeps failing (nothing is half done)."""
        for attempt in range(ATTEMPTS):
            try:
                return await self._dispatch()
            except FanOutConflict:
                self.conflicts += 1
            except PyMongoError as exc:
                if attempt == ATTEMPTS - 1 or not _transient(exc):
                    raise
                self.conflicts += 1
            await asyncio.sleep(random.uniform(0.005, 0.02) * 2**attempt)
        return 0

    async def _dispatch(self) -> int:
        docs = [
            d async for d in self._store.outbox.find({"status": "ready"}).sort("created_at", 1).limit(self.batch_size)
        ]
        if not docs:
            return 0
        events = []
        for doc in docs:
            event = ChangeEvent.from_outbox(doc)
            if event is None:
                log.warning("outbox event names no focus; dispatched to no one", extra={"outbox_id": doc["_id"]})
            else:
                events.append(event)
        subscriptions = [
            Subscription.from_doc(d) async for d in self._store.subscriptions.find({"status": {"$in": COLLECTING}})
        ]
        matches: dict[str, list[Subscription]] = {}
        if subscriptions and events:
            matches = await self._matcher.match(await self._matcher.load(events), subscriptions)
        created = await self._commit([d["_id"] for d in docs], events, matches)
        self.dispatched += len(docs)
        self.created += created
        return len(docs)

    async def _commit(self, ids: list[str], events: list[ChangeEvent], matches: dict[str, list[Subscription]]) -> int:
        now = self._clock()
        per_subscription: dict[str, tuple[Subscription, list[ChangeEvent]]] = {}
        for event in events:  # outbox order
            for sub in matches.get(event.outbox_id, []):
                per_subscription.setdefault(sub.id, (sub, []))[1].append(event)
        deliveries: list[Document] = []
        async with self._store.client.start_session() as session:
            async with await session.start_transaction(write_concern=DURABLE):
                for sub_id, (sub, mine) in per_subscription.items():
                    counted = await self._store.subscriptions.find_one_and_update(
                        {"_id": sub_id, "status": {"$in": COLLECTING}},
                        {"$inc": {"events_since_start": len(mine), "wake": 1}, "$min": {"due_at": now}},
                        projection={"events_since_start": 1},
                        return_document=ReturnDocument.AFTER,
                        session=session,
                    )
                    if counted is None:
                        continue  # deleted or switched off since it was read
                    first = int(counted["events_since_start"]) - len(mine) + 1
                    deliveries += [_delivery(sub, event, first + offset, now) for offset, event in enumerate(mine)]
                if deliveries:
                    await self._store.deliveries.insert_many(deliveries, ordered=True, session=session)
                done = await self._store.outbox.update_many(
                    {"_id": {"$in": ids}, "status": "ready"},
                    {"$set": {"status": "dispatched", "dispatched_at": now}},
                    session=session,
                )
                if done.modified_count != len(ids):
                    raise FanOutConflict(
                        f"{len(ids) - done.modified_count} event(s) were dispatched by another notifier"
                    )
        return len(deliveries)


def _delivery(sub: Subscription, event: ChangeEvent, number: int, now: datetime) -> Document:
    return {
        "_id": f"{sub.id}:{event.outbox_id}",
        "subscription_id": sub.id,
        "event_number": number,
        "event_id": event_id(sub.id, number),
        "topic": sub.spec.topic,
        "event": event.to_doc(),
        "status": "pending",
        "attempt_count": 0,
        "attempts": [],
        "created_at": now,
        "age_from": now,
        "next_attempt_at": now,
    }


def _transient(exc: PyMongoError) -> bool:
    """Write conflicts, aborted transactions and duplicate delivery ids (another notifier won the race)."""
    if getattr(exc, "has_error_label", None) and (
        exc.has_error_label("TransientTransactionError") or exc.has_error_label("UnknownTransactionCommitResult")
    ):
        return True
    return getattr(exc, "code", None) in (11000, 112, 251, 244)
