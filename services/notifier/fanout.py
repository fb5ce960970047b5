"""Fan-out: outbox events ("ready", oldest first) become one delivery per matching subscription.

For a batch of the oldest ready events, the matcher decides which subscriptions each goes to; then one
MongoDB transaction, all or nothing:

- per subscription, ``$inc`` its event counter by the number of its new events and take the numbers
  (``events_since_start``: event numbers rise by one per subscription, in outbox order);
- insert the deliveries (``_id`` "{subscription id}:{outbox id}", status "pending");
- mark the events "dispatched" (guarded by the status read).

Nothing is claimed ahead: every notifier takes the oldest ready events, so two that fan out at once
work on the same batch and the transaction lets only one commit (the other's write conflicts, or its
guard or the deterministic delivery ids fail, and it starts again from a fresh read). That keeps event
numbers in outbox order (version 1 of a resource is numbered before version 2) with any number of
notifier processes, and a crash at any point leaves either nothing or the whole batch done: never a
number without its delivery, never two deliveries of one event.

One event never holds up the others. An event the fan-out fails on (a document it cannot read, a focus
version of a shape the topics or filters cannot evaluate, anything but the database) is recorded on its
outbox document in the same transaction as the rest of the batch: status "failed", ``fanout.attempts``,
``fanout.error`` (the exception) and ``fanout.outcome`` (an OperationOutcome), ``next_attempt_at``; it is
logged with its id and tried again after a backoff, and after ``max_attempts`` it is "dead" (kept, never
dispatched). While an event waits for its retry, later events about the same resource wait behind it, so
version 1 of a resource is still numbered before version 2 whenever both are delivered; once it is dead
they flow. Events about other resources are never held. A database failure is not an event's fault: the
batch is abandoned whole (nothing half done) and tried again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import PyMongoError

from shared.retry import Backoff, Conflict, TransactionRetry, TransientError, run_transaction
from shared.store import DURABLE, Document, Store

from .matching import Matcher
from .model import COLLECTING, ChangeEvent, Subscription, event_id

log = logging.getLogger(__name__)
# Notifiers dispatching the same events conflict; the losers read again (the hub's transaction policy).
RETRY = TransactionRetry(attempts=5)
DUPLICATE_KEY = 11000
FAILED = "failed"  # the fan-out failed on the event; it is tried again at ``next_attempt_at``
DEAD = "dead"  # failed ``max_attempts`` times: kept, never dispatched
MAX_RETRY_DELAY_S = 600.0


class FanOutConflict(Conflict):
    """Another notifier dispatched some of these events first: read again."""


@dataclass
class _Item:
    """One outbox event of a batch, and what the fan-out made of it."""

    doc: Document
    event: ChangeEvent | None = None
    subscriptions: list[Subscription] = field(default_factory=list)
    error: Exception | None = None
    held: bool = False  # an earlier event about the same resource failed: left "ready" for now

    @property
    def key(self) -> str | None:
        return self.event.focus.key if self.event else None


class FanOut:
    def __init__(
        self,
        store: Store,
        clock: Callable[[], datetime],
        batch_size: int = 100,
        *,
        max_attempts: int = 5,
        retry_s: float = 5.0,
        service_ods: str = "",
    ) -> None:
        """``service_ods``: the hub's own organisation (``MSCC_RECEIVING_FACILITY``): its subscriptions
        may be told about every trust's resources, any other only about its own trust's (``matching``)."""
        self._store = store
        self._clock = clock
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.retry_s = retry_s
        self._matcher = Matcher(store, service_ods)
        self.dispatched = 0
        self.created = 0
        self.conflicts = 0  # batches read again because another writer got there first
        self.failed = 0  # failed attempts on single events (each recorded on its event)
        self.dead = 0  # events dead-lettered

    @property
    def withheld(self) -> int:
        """Notifications the criteria matched but the subscriber's trust may not see (never delivered)."""
        return self._matcher.withheld

    async def run_once(self) -> int:
        """Dispatch one batch; the number of events dispatched or recorded as failed (0: none ready).
        Conflicts are retried; ``PyMongoError`` if the database keeps failing (nothing is half done)."""

        async def once() -> int:
            try:
                return await self._dispatch()
            except PyMongoError as exc:
                if _duplicate_delivery(exc):
                    raise FanOutConflict(f"another notifier dispatched first: {exc}") from exc
                raise

        def counted(_: BaseException) -> None:
            self.conflicts += 1

        try:
            return await run_transaction(once, RETRY, what="notifier fan-out", on_retry=counted)
        except TransientError as exc:
            if isinstance(exc.__cause__, PyMongoError):
                raise exc.__cause__ from None  # the database keeps failing: the caller backs off
            return 0  # other notifiers keep winning: they are doing the work

    async def _dispatch(self) -> int:
        now = self._clock()
        waiting = await self._waiting_keys(now)
        query: dict[str, Any] = {"$or": [{"status": "ready"}, {"status": FAILED, "next_attempt_at": {"$lte": now}}]}
        if waiting:
            query = {"$and": [query, {"$nor": [_about(key) for key in sorted(waiting)]}]}
        docs = [d async for d in self._store.outbox.find(query).sort("created_at", 1).limit(self.batch_size)]
        if not docs:
            return 0
        items = [_decode(doc) for doc in docs]
        subscriptions = [
            Subscription.from_doc(d) async for d in self._store.subscriptions.find({"status": {"$in": COLLECTING}})
        ]
        if subscriptions:
            await self._match(items, subscriptions)
        _hold_behind_failures(items, waiting)
        try:
            created = await self._commit(items, now)
        except (FanOutConflict, PyMongoError):
            raise
        except Exception:  # something in the batch cannot be written: find which event, one at a time
            log.exception("notifier fan-out batch could not be written; writing its events one by one")
            created = await self._commit_one_by_one(items, now)
        done = [i for i in items if not i.held]
        self.dispatched += sum(1 for i in done if i.error is None)
        self.created += created
        return len(done)

    async def _waiting_keys(self, now: datetime) -> set[str]:
        """Resources ("Type/id") with a failed event waiting for its retry: their later events wait too."""
        found = self._store.outbox.find({"status": FAILED, "next_attempt_at": {"$gt": now}}, {"fanout.key": 1})
        return {key async for d in found if isinstance(key := (d.get("fanout") or {}).get("key"), str)}

    async def _match(self, items: list[_Item], subscriptions: list[Subscription]) -> None:
        """Each readable event's subscriptions. When the batch cannot be matched, each event is matched
        alone and those that still fail get their error; a database failure is raised (no one's fault)."""
        live = [i for i in items if i.event is not None and i.error is None]
        if not live:
            return
        try:
            await self._match_all(live, subscriptions)
            return
        except PyMongoError:
            raise
        except Exception:
            log.warning("notifier fan-out batch could not be matched; matching its events one by one", exc_info=True)
        errors: list[Exception] = []
        for item in live:
            try:
                await self._match_all([item], subscriptions)
            except PyMongoError:
                raise
            except Exception as exc:
                errors.append(exc)
                item.error, item.subscriptions = exc, []
        if len(live) > 1 and len(errors) == len(live):
            # Every event failing alone says more about the subscriptions or the code than about the
            # events: dead-lettering them all would silence everyone. Fail the cycle instead (the task
            # goes stale and /readyz names it), with nothing written.
            raise errors[0]

    async def _match_all(self, items: list[_Item], subscriptions: list[Subscription]) -> None:
        events = [i.event for i in items if i.event is not None]
        matches = await self._matcher.match(await self._matcher.load(events), subscriptions)
        for item in items:
            assert item.event is not None
            item.subscriptions = matches.get(item.event.outbox_id, [])

    async def _commit_one_by_one(self, items: list[_Item], now: datetime) -> int:
        """Each event in its own transaction, in outbox order; one that cannot be written is recorded as
        failed, and later events about its resource wait behind it."""
        created = 0
        failed_keys: set[str] = set()
        for item in items:
            if item.held:
                continue
            if item.key in failed_keys and item.error is None:
                item.held = True
                continue
            if item.error is None:
                try:
                    created += await self._commit([item], now)
                    continue
                except (FanOutConflict, PyMongoError):
                    raise
                except Exception as exc:
                    item.error = exc
            if item.key:
                failed_keys.add(item.key)
            await self._commit([item], now)
        return created

    async def _commit(self, items: list[_Item], now: datetime) -> int:
        per_subscription: dict[str, tuple[Subscription, list[ChangeEvent]]] = {}
        dispatch = [i for i in items if not i.held and i.error is None]
        failures = [i for i in items if not i.held and i.error is not None]
        for item in dispatch:  # outbox order
            for sub in item.subscriptions:
                assert item.event is not None
                per_subscription.setdefault(sub.id, (sub, []))[1].append(item.event)
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
                if dispatch:
                    done = await self._store.outbox.update_many(
                        {"_id": {"$in": [i.doc["_id"] for i in dispatch]}, "status": {"$in": ["ready", FAILED]}},
                        {"$set": {"status": "dispatched", "dispatched_at": now}, "$unset": {"next_attempt_at": ""}},
                        session=session,
                    )
                    if done.modified_count != len(dispatch):
                        raise FanOutConflict(
                            f"{len(dispatch) - done.modified_count} event(s) were dispatched by another notifier"
                        )
                for item in failures:
                    await self._record_failure(item, now, session)
        return len(deliveries)

    async def _record_failure(self, item: _Item, now: datetime, session: Any) -> None:
        """The event's failure on its outbox document (guarded by the status read), and in the log."""
        assert item.error is not None
        previous: Document = item.doc.get("fanout") or {}
        attempts = int(previous.get("attempts") or 0) + 1
        dead = attempts >= self.max_attempts
        error = f"{type(item.error).__name__}: {item.error}"[:500]
        delay = Backoff(self.retry_s, MAX_RETRY_DELAY_S, jitter=0.0).delay(attempts)
        what = (
            f"dead-lettered after {attempts} failed attempt(s): no subscriber is notified of this change"
            if dead
            else f"attempt {attempts} of {self.max_attempts} failed; tried again in {delay:.0f} s"
        )
        fanout = {
            "attempts": attempts,
            "error": error,
            "outcome": {
                "resourceType": "OperationOutcome",
                "issue": [
                    {
                        "severity": "error" if dead else "warning",
                        "code": "exception",
                        "diagnostics": f"the notifier could not dispatch this event ({what}): {error}",
                    }
                ],
            },
            "first_failed_at": previous.get("first_failed_at") or now,
            "last_failed_at": now,
            "key": item.key,
        }
        update: Document = {"$set": {"status": DEAD if dead else FAILED, "fanout": fanout}}
        if dead:
            update["$unset"] = {"next_attempt_at": ""}
        else:
            update["$set"]["next_attempt_at"] = now + timedelta(seconds=delay)
        changed = await self._store.outbox.update_one(
            {"_id": item.doc["_id"], "status": item.doc.get("status")}, update, session=session
        )
        if changed.modified_count != 1:
            raise FanOutConflict(f"outbox event {item.doc['_id']} changed while the fan-out failed on it")
        self.failed += 1
        self.dead += int(dead)
        extra = {"outbox_id": item.doc["_id"], "attempts": attempts, "error": error}
        if dead:
            log.error("outbox event dead-lettered: the fan-out failed on it every time", extra=extra)
        else:
            log.error("notifier fan-out failed on one outbox event; the others go on", extra=extra)


def _decode(doc: Document) -> _Item:
    try:
        event = ChangeEvent.from_outbox(doc)
    except Exception as exc:  # an event of a shape the notifier did not write
        return _Item(doc, error=exc)
    if event is None:
        log.warning("outbox event names no focus; dispatched to no one", extra={"outbox_id": doc["_id"]})
    return _Item(doc, event)


def _hold_behind_failures(items: list[_Item], waiting: set[str]) -> None:
    """Leave "ready" every event about a resource whose earlier event failed (in this batch, or waiting
    for its retry), so versions are still numbered in order when the failed one succeeds."""
    blocked = set(waiting)
    for item in items:
        if item.key is None:
            continue
        if item.key in blocked:
            # Its own failure, if any, may come from the failed version before it (the topics compare
            # the two): it is judged when that one is dispatched or dead.
            item.held, item.error = True, None
        elif item.error is not None:
            blocked.add(item.key)


def _about(key: str) -> Document:
    """The outbox events about the resource ``key`` ("Type/id")."""
    resource_type, _, resource_id = key.partition("/")
    return {"type": resource_type, "id": resource_id}


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


def _duplicate_delivery(exc: PyMongoError) -> bool:
    """A delivery id written already: another notifier won the race for these events (read again)."""
    return getattr(exc, "code", None) == DUPLICATE_KEY
