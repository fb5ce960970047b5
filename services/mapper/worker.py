"""The mapper worker: claim ready messages with a lease, map them, write the results, record the outcome.

Claiming: a batch of the oldest "ready" messages (and any whose lease expired) is claimed in one
``update_many`` guarded by status, so two workers never hold the same message; each worker then reads
back what it won. Any number of mapper processes may run. The lease is short (``MSCC_MAPPER_LEASE_S``)
and renewed every ``MSCC_LEASE_HEARTBEAT_S`` while the batch runs (``shared/leases.py``): a worker that
dies leaves its messages "mapping" until the lease expires, seconds later, when another claims them
again (logged as a takeover, with the count); the writer's version guards make the re-run converge on
the same resources.

Stopping: ``run`` finishes the batch in hand; one that is not finished within ``stop_timeout_s`` is
cancelled (its transaction, if open, is aborted) and its messages released: back to "ready", lease
cleared, the claim not counted, so another worker takes them at once.

Outcomes on the message record (``status`` and ``processing``):
- "mapped": resources written (type, id, version, changed), unmapped content, warnings;
- "failed": the message cannot be mapped as it is (``MappingError``), with an OperationOutcome;
  an operator fixes the cause and reprocesses it;
- transient errors (the database) go back to "ready" with ``next_attempt_at`` (exponential backoff with
  jitter); after ``max_attempts`` the message is "dead" (dead-lettered), never retried forever.

One message never stops the others (isolation):
- a mapping function that raises anything fails that message only ("failed", the exception in its
  OperationOutcome, logged with the record id);
- a batch whose commit fails for a reason that is not the database being unreachable (a resource the
  validator refuses, a value MongoDB cannot store, any bug) is committed again one message at a time,
  so only the culprit fails; a database outage sends the whole batch back to "ready" instead;
- every claim counts (``map_attempts``): a message handed back more than ``max_attempts`` times
  because its lease expired (the worker died while holding it) is dead-lettered when next claimed;
- ``run`` survives any error of a cycle (logged, recorded on its heartbeat, paused, tried again), and
  beats its heartbeat after every completed cycle for the supervisor and ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError, WriteConcernError

from shared import correlation
from shared.db_errors import describe, log_failure, refused_input
from shared.leases import LeaseKeeper
from shared.limits import DEFAULT_LIMITS, TOO_LARGE_TEXT, Limits, pack, record_write_bytes, too_large
from shared.metrics import MAPPER_MESSAGES
from shared.records import MessageOutcome
from shared.retry import Backoff, retryable
from shared.review import NEEDS_REVIEW
from shared.settings import Settings
from shared.store import Document, Store
from shared.supervision import Heartbeat

from .model import MappingError, MappingResult, TransientError, issue
from .outcomes import bounded_issues
from .writer import LeaseLost, ResourceWriter

log = logging.getLogger(__name__)

Mapper = Callable[[Document], MappingResult]


@dataclass(frozen=True)
class WorkerConfig:
    batch_size: int = 100
    max_attempts: int = 5
    backoff_base_s: float = 2.0
    backoff_max_s: float = 300.0
    idle_poll_s: float = 0.5
    future_skew_s: float = 300.0  # see ResourceWriter: a message time further ahead is not trusted
    lease_s: float = 10.0
    heartbeat_s: float = 3.0  # the lease is renewed this often while a batch runs
    stop_timeout_s: float = 8.0  # a batch still running this long after stop is released
    limits: Limits = DEFAULT_LIMITS  # a batch is written in transactions of at most limits.transaction_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerConfig:
        """The worker's configuration from ``MSCC_MAPPER_*`` (the defaults above are the settings')."""
        return cls(
            batch_size=settings.mapper_batch_size,
            lease_s=settings.mapper_lease_s,
            max_attempts=settings.mapper_max_attempts,
            backoff_base_s=settings.mapper_backoff_base_s,
            backoff_max_s=settings.mapper_backoff_max_s,
            idle_poll_s=settings.mapper_idle_poll_s,
            future_skew_s=settings.mapper_future_skew_s,
            heartbeat_s=settings.lease_heartbeat_s,
            stop_timeout_s=settings.stop_timeout_s,
            limits=Limits.from_settings(settings),
        )


@dataclass
class WorkerStats:
    claimed: int = 0
    mapped: int = 0
    held: int = 0  # held for review (status needs-review): nothing of theirs written yet
    failed: int = 0
    retried: int = 0
    dead: int = 0
    taken_over: int = 0  # claimed after another worker's lease expired
    released: int = 0  # handed back unfinished at stop


class MapperWorker:
    def __init__(
        self,
        store: Store,
        mapper: Mapper,
        config: WorkerConfig | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._store = store
        self._mapper = mapper
        self._config = config or WorkerConfig()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._writer = ResourceWriter(store, self._clock, timedelta(seconds=self._config.future_skew_s))
        self._backoff = Backoff(self._config.backoff_base_s, self._config.backoff_max_s)
        self._leases = LeaseKeeper(store.messages, "lease", self._config.lease_s, self._config.heartbeat_s, self._clock)
        self.owner = f"mapper-{uuid.uuid4().hex[:12]}"
        self.stats = WorkerStats()
        self._holding: str | None = None  # the lease token of the batch in hand

    def _claimable(self, now: datetime) -> dict[str, Any]:
        return {
            "$or": [
                {
                    "status": "ready",
                    "$or": [{"next_attempt_at": {"$exists": False}}, {"next_attempt_at": {"$lte": now}}],
                },
                {"status": "mapping", "lease.until": {"$lt": now}},
            ]
        }

    async def claim(self) -> list[Document]:
        """Claim up to ``batch_size`` messages, oldest first; returns the documents this worker won.

        Two workers that pick the same oldest messages race for them; the loser looks again at once
        (not after an idle pause, nor, in burst mode, by stopping while messages are still ready).
        """
        for _ in range(5):
            ids, docs = await self._claim_once()
            if docs or not ids:
                return docs
        return []

    async def _claim_once(self) -> tuple[list[Any], list[Document]]:
        now = self._clock()
        query = self._claimable(now)
        found = [
            d
            async for d in self._store.messages.find(query, {"_id": 1, "status": 1})
            .sort("received_at", 1)
            .limit(self._config.batch_size)
        ]
        ids = [d["_id"] for d in found]
        if not ids:
            return [], []
        token = f"{self.owner}:{uuid.uuid4().hex[:8]}"
        lease = {"owner": token, "until": now + timedelta(seconds=self._config.lease_s)}
        self._holding = token  # from here a stop may have to release what this claim wins
        await self._store.messages.update_many(
            {"_id": {"$in": ids}, **query}, {"$set": {"status": "mapping", "lease": lease}, "$inc": {"map_attempts": 1}}
        )
        docs = [d async for d in self._store.messages.find({"lease.owner": token}).sort("received_at", 1)]
        self.stats.claimed += len(docs)
        expired = {d["_id"] for d in found if d.get("status") == "mapping"}
        taken = sum(1 for d in docs if d["_id"] in expired)
        if taken:
            self.stats.taken_over += taken
            log.warning(
                "took over messages whose lease expired (the worker holding them stopped)",
                extra={"messages": taken, "taken_over_total": self.stats.taken_over},
            )
        # Handed back again and again by lease expiry: the worker holding it died each time (a message
        # that kills its worker). Dead-letter it rather than hand it out for ever.
        worn = [d for d in docs if int(d.get("map_attempts", 1)) > self._config.max_attempts]
        if worn:
            await self._dead_letter(worn, token)
            docs = [d for d in docs if int(d.get("map_attempts", 1)) <= self._config.max_attempts]
            if not docs:
                return ids, await self._claim_once_more()
        return ids, docs

    async def _claim_once_more(self) -> list[Document]:
        """After dead-lettering a whole claim, look again at once (more may be ready behind it)."""
        _, docs = await self._claim_once()
        return docs

    async def _dead_letter(self, docs: list[Document], token: str) -> None:
        now = self._clock()
        ops = []
        for doc in docs:
            attempts = int(doc.get("map_attempts", 1)) - 1
            text = (
                f"claimed {attempts} times without an outcome (the worker mapping it stopped each time); "
                "dead-lettered: look at the message, fix the cause and reprocess it"
            )
            log.error("message dead-lettered after repeated claims", extra={"record": doc["_id"], "claims": attempts})
            outcome = {"resourceType": "OperationOutcome", "issue": [issue("fatal", "exception", text)]}
            ops.append(
                UpdateOne(
                    {"_id": doc["_id"], "lease.owner": token},
                    {
                        "$set": {"status": "dead", "processing": _outcome("dead", now, outcome)},
                        "$unset": {"lease": "", "next_attempt_at": ""},
                    },
                )
            )
        await self._store.messages.bulk_write(ops, ordered=False)
        self.stats.dead += len(docs)
        MAPPER_MESSAGES.labels("dead").inc(len(docs))

    async def run_once(self) -> int:
        """Claim and process one batch; the number of messages processed (0 when none were ready)."""
        docs = await self.claim()
        if not docs:
            self._holding = None
            return 0
        token = docs[0]["lease"]["owner"]
        async with self._leases.holding(token):
            await self._process(docs, token)
        self._holding = None
        return len(docs)

    async def _process(self, docs: list[Document], token: str) -> None:
        mapped: list[tuple[Document, MappingResult]] = []
        failed: list[tuple[Document, list[dict[str, Any]]]] = []
        transient: list[Document] = []
        for doc in docs:
            await asyncio.sleep(0)  # mapping is CPU work: let the lease heartbeat (and a stop) in between
            try:
                with correlation.bound(correlation.of_message(doc)):  # what mapping logs names the message
                    mapped.append((doc, self._mapper(doc)))
            except MappingError as exc:
                failed.append((doc, exc.issues))
            except TransientError:
                transient.append(doc)
            except Exception as exc:  # a mapping bug: keep the message, say what broke, do not loop on it
                log.exception("mapping raised unexpectedly", extra={"record": doc["_id"]})
                failed.append((doc, [issue("fatal", "exception", f"mapping failed unexpectedly: {exc!r}")]))
        await self._record_failures(failed, token)
        if transient:
            await self._retry_later(transient, token, "a transient error stopped the mapping")
        # Packed by estimated size (shared/limits.py): no transaction outgrows MongoDB's limits, and a
        # message too large to write fails alone while the others are written in this same cycle.
        sizes = [record_write_bytes(doc) for doc, _ in mapped]
        for group in pack(sizes, self._config.limits.transaction_bytes):
            await self._commit([mapped[i] for i in group], token)

    async def _commit(self, mapped: list[tuple[Document, MappingResult]], token: str) -> None:
        """Write ``mapped``; on a failure that is not the database's, again one message at a time, so
        that only the message that cannot be written fails (with the exception in its outcome)."""
        try:
            held = (await self._writer.commit(mapped, token)).held
            # A message held for review is not mapped: it waits for an operator, counted on its own.
            waiting = [item for item in mapped if item[0]["_id"] in held]
            done = [item for item in mapped if item[0]["_id"] not in held]
            self.stats.mapped += len(done)
            self.stats.held += len(waiting)
            _finished(done, "mapped")
            _finished(waiting, NEEDS_REVIEW)
            return
        except LeaseLost as exc:
            log.warning("lease lost; another worker maps these messages", extra={"reason": str(exc)})
            return
        except Exception as exc:  # isolated below: never lets one message stop the worker
            error = exc
        if _database_fault(error) and not too_large(error):
            await self._retry_later([doc for doc, _ in mapped], token, str(error))
            return
        if len(mapped) > 1:
            log.warning(
                "batch could not be written; writing its messages one at a time",
                extra={"messages": len(mapped), "reason": describe(error)},  # never the text: it can hold content
            )
            for item in mapped:
                await self._commit([item], token)
            return
        doc = mapped[0][0]
        cause = error.__cause__ if isinstance(error, TransientError) and error.__cause__ else error
        if refused_input(cause):  # the message's own resources: a warning saying what to do, not an outage
            log_failure(log, "mapped resources could not be written", cause, record=doc["_id"])
        else:
            log.error("mapped resources could not be written", exc_info=error, extra={"record": doc["_id"]})
        issues = [issue("fatal", "exception", f"the mapped resources could not be written: {cause!r}"[:2000])]
        if too_large(error):  # permanent: never retried as if the database were away
            issues.insert(0, issue("fatal", "too-costly", TOO_LARGE_TEXT))
        extra = getattr(cause, "issues", None)  # a FhirError: what the validator refused, and where
        if isinstance(extra, list):
            issues += [i for i in extra if isinstance(i, dict)]
        await self._record_failures([(doc, issues)], token)

    async def _record_failures(self, failed: list[tuple[Document, list[dict[str, Any]]]], token: str) -> None:
        if not failed:
            return
        now = self._clock()
        ops = [
            UpdateOne(
                {"_id": doc["_id"], "lease.owner": token},
                {
                    "$set": {
                        "status": "failed",
                        "processing": _outcome(
                            "failed", now, {"resourceType": "OperationOutcome", "issue": bounded_issues(issues)}
                        ),
                    },
                    "$unset": {"lease": "", "next_attempt_at": ""},
                },
            )
            for doc, issues in failed
        ]
        await self._store.messages.bulk_write(ops, ordered=False)
        self.stats.failed += len(failed)
        _finished(failed, "failed")

    async def _retry_later(self, docs: list[Document], token: str, reason: str) -> None:
        now = self._clock()
        ops = []
        for doc in docs:
            attempts = int(doc.get("map_attempts", 1))
            outcome = {"resourceType": "OperationOutcome", "issue": [issue("error", "transient", reason)]}
            if attempts >= self._config.max_attempts:
                update = {
                    "$set": {"status": "dead", "processing": _outcome("dead", now, outcome)},
                    "$unset": {"lease": "", "next_attempt_at": ""},
                }
                self.stats.dead += 1
                MAPPER_MESSAGES.labels("dead").inc()
            else:
                delay = self._backoff.delay(attempts)
                update = {
                    "$set": {
                        "status": "ready",
                        "next_attempt_at": now + timedelta(seconds=delay),
                        "processing": _outcome("retrying", now, outcome),
                    },
                    "$unset": {"lease": ""},
                }
                self.stats.retried += 1
                MAPPER_MESSAGES.labels("retried").inc()
            ops.append(UpdateOne({"_id": doc["_id"], "lease.owner": token}, update))
        try:
            await self._store.messages.bulk_write(ops, ordered=False)
        except PyMongoError:
            log.exception("could not record the retry; the lease will expire and the messages be claimed again")

    async def run(self, stop: asyncio.Event, *, burst: bool = False, heartbeat: Heartbeat | None = None) -> WorkerStats:
        """Process until ``stop`` is set (or, with ``burst``, until nothing is ready); graceful: the
        batch in hand is finished before returning. An error of one cycle (the database, or a bug
        outside any one message) is logged and the worker pauses and goes on; messages it held are
        claimed again when their lease expires, and counted."""
        heartbeat = heartbeat or Heartbeat.none()
        while not stop.is_set():
            try:
                done = await self._run_once_until_stopped(stop)
                heartbeat.beat()
            except Exception as exc:
                log.exception("mapper: a cycle failed; pausing before the next claim")
                heartbeat.failed(exc)
                done = 0
            if done:
                continue
            if burst:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._config.idle_poll_s)
        return self.stats

    async def _run_once_until_stopped(self, stop: asyncio.Event) -> int:
        """``run_once``; if ``stop`` comes while it runs, it has ``stop_timeout_s`` to finish, then it is
        cancelled and its batch released."""
        batch = asyncio.ensure_future(self.run_once())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({batch, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not batch.done():
                await asyncio.wait({batch}, timeout=self._config.stop_timeout_s)
        finally:
            stopping.cancel()
        if batch.done():
            return batch.result()
        batch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await batch
        await self.release()
        return 0

    async def release(self) -> int:
        """Hand the batch in hand back unfinished: "ready" again, lease cleared, the claim not counted
        (stopping is not a failure of the message). The number of messages released."""
        token, self._holding = self._holding, None
        if token is None:
            return 0
        result = await self._store.messages.update_many(
            {"lease.owner": token, "status": "mapping"},
            {"$set": {"status": "ready"}, "$unset": {"lease": ""}, "$inc": {"map_attempts": -1}},
        )
        released = int(result.modified_count)
        self.stats.released += released
        log.warning(
            "stopping: the batch in hand did not finish in time; its messages were released",
            extra={"messages": released, "stop_timeout_s": self._config.stop_timeout_s},
        )
        return released


def _finished(items: Sequence[tuple[Document, object]], outcome: str) -> None:
    """Count messages the worker is done with, and log each under its correlation id."""
    MAPPER_MESSAGES.labels(outcome).inc(len(items))
    level = logging.INFO if outcome == "mapped" else logging.WARNING
    for doc, _ in items:
        extra = {correlation.FIELD: correlation.of_message(doc), "record": doc["_id"]}
        log.log(level, f"message {outcome}", extra=extra)


def _outcome(status: str, now: datetime, outcome: dict[str, Any]) -> Document:
    """A message record's ``processing`` when it was not mapped: why, as an OperationOutcome."""
    return MessageOutcome(status, now, outcome=outcome).to_doc()


def _database_fault(error: Exception) -> bool:
    """Whether ``error`` says the database could not be used (retry the whole batch later) rather than
    that something in the batch cannot be written (find the culprit)."""
    cause = error.__cause__ if isinstance(error, TransientError) else error
    if cause is None:
        return True
    if isinstance(cause, (ConnectionFailure, WriteConcernError, ExecutionTimeout)):
        return True
    # The writer gave up after repeated conflicts (its last one is the cause): contention, not content.
    return retryable(cause)
