"""The hub's two retry policies: database transactions retried at once, and jobs retried later.

**Transactions** (``run_transaction``, ``retryable``). A transaction that loses to a concurrent writer
is run again from a fresh read: its writes were all undone, so a retry is always safe. Retryable:

- errors MongoDB labels ``TransientTransactionError`` (the transaction was aborted: a write conflict,
  an election, a dropped connection inside it) or ``UnknownTransactionCommitResult`` (the commit may not
  have been applied; running the whole transaction again re-checks every version guard, so it cannot
  apply twice);
- server codes WriteConflict (112), NoSuchTransaction (251) and TransactionAborted (244), which older
  servers send without a label;
- ``AutoReconnect`` / ``NetworkTimeout`` raised by a transaction (they carry the transient label from
  PyMongo 4 on; named here so that a driver that omits it is still retried);
- ``Conflict``: a version guard of the hub's own write path failed (``shared/versions.py``).

Anything else (a duplicate key outside a guard, a document too large, a validation error) is raised at
once: trying again would fail the same way. After ``attempts`` tries ``TransientError`` is raised, with
the last failure as its cause. A transaction that needed retries is logged at warning level with the
count (and the last error), whether it then succeeded or gave up: contention, a commit that hit its time
limit (``maxCommitTimeMS``) or a transaction a killed process left open shows in the log, counted.

**Jobs** (``Backoff``): a message, a delivery or a fan-out that failed is tried again later, after
``base_s * 2**(attempt - 1)`` seconds capped at ``max_s``, scaled by a random factor in
[``1 - jitter``, 1] so that many jobs failing together do not all return at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from pymongo.errors import AutoReconnect, NetworkTimeout, OperationFailure, PyMongoError

log = logging.getLogger(__name__)

T = TypeVar("T")

WRITE_CONFLICT = 112
TRANSACTION_ABORTED = 244
NO_SUCH_TRANSACTION = 251
RETRYABLE_CODES = (WRITE_CONFLICT, TRANSACTION_ABORTED, NO_SUCH_TRANSACTION)
TRANSIENT_LABELS = ("TransientTransactionError", "UnknownTransactionCommitResult")


class Conflict(Exception):
    """Another writer changed what this transaction read (a version guard failed, or the version it
    creates exists already): read again and retry."""


class TransientError(Exception):
    """The database kept refusing a transaction after every attempt: try the work again later."""


def retryable(exc: BaseException) -> bool:
    """Whether running the whole transaction again can succeed (see the module docstring)."""
    if isinstance(exc, Conflict):
        return True
    if not isinstance(exc, PyMongoError):
        return False
    if any(exc.has_error_label(label) for label in TRANSIENT_LABELS):
        return True
    if isinstance(exc, (AutoReconnect, NetworkTimeout)):
        return True
    return isinstance(exc, OperationFailure) and exc.code in RETRYABLE_CODES


@dataclass(frozen=True)
class TransactionRetry:
    """How often and how quickly a conflicting transaction is tried again: short random pauses,
    doubling each attempt (``low_s``..``high_s`` times 2**attempt), so that writers of one hot
    resource spread out instead of colliding again."""

    attempts: int = 8
    low_s: float = 0.005
    high_s: float = 0.02
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def pause_s(self, attempt: int) -> float:
        return float(self.rng.uniform(self.low_s, self.high_s) * 2**attempt)


DEFAULT_TRANSACTION_RETRY = TransactionRetry()


async def run_transaction(
    fn: Callable[[], Awaitable[T]],
    retry: TransactionRetry = DEFAULT_TRANSACTION_RETRY,
    *,
    what: str = "transaction",
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """``await fn()`` until it succeeds, retrying what ``retryable`` accepts after ``retry.pause_s``.

    ``fn`` must do the whole unit of work, reads included, each time: a retry starts from a fresh read.
    A non-retryable error is raised as it is; ``TransientError`` (caused by the last failure) when
    every one of ``retry.attempts`` failed.
    """
    last: BaseException | None = None
    for attempt in range(retry.attempts):
        try:
            result = await fn()
        except (Conflict, PyMongoError) as exc:
            if not retryable(exc):
                raise
            last = exc
            if on_retry is not None:
                on_retry(exc)
        else:
            if attempt:
                log.warning(
                    "%s done after %d retries (last: %s)",
                    what,
                    attempt,
                    str(last)[:300],
                    extra={"retries": attempt, "what": what},
                )
            return result
        if attempt < retry.attempts - 1:
            await asyncio.sleep(retry.pause_s(attempt))
    log.warning(
        "%s gave up after %d attempts: %s",
        what,
        retry.attempts,
        str(last)[:300],
        extra={"retries": retry.attempts - 1, "what": what},
    )
    raise TransientError(f"{what} not done after {retry.attempts} attempts: {last}") from last


@dataclass(frozen=True)
class Backoff:
    """When a failed job is tried again: exponential, capped, with jitter (see the module docstring)."""

    base_s: float = 2.0
    max_s: float = 300.0
    jitter: float = 0.5  # 0: exactly the exponential delay; 0.5: between half of it and all of it
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th failure (1 for the first)."""
        exponential = min(self.max_s, self.base_s * float(2 ** max(0, attempt - 1)))
        if not self.jitter:
            return exponential
        return exponential * self.rng.uniform(1.0 - self.jitter, 1.0)
