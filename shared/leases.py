"""Short leases kept alive by a heartbeat while their work runs.

A worker claims work (a mapper's batch of messages, a notifier's lane, a record ``mscc messages
reprocess`` runs again) by writing ``{owner, until}`` on it; another worker may take the work once
``until`` has passed. A long lease makes a killed process's work wait a long time; a short one would
expire under slow but healthy work. So the lease is short (``MSCC_MAPPER_LEASE_S``,
``MSCC_NOTIFIER_LEASE_S``, ``MSCC_REPROCESS_LEASE_S``) and a ``LeaseKeeper`` pushes ``until`` forward
every ``MSCC_LEASE_HEARTBEAT_S`` for as long as the work is held: a process that dies stops renewing,
and its work is claimable within one lease.

One keeper per worker renews every lease the worker holds in one ``update_many`` per beat, whatever
the number of lanes or messages. A renewal only moves ``until`` of documents whose owner is still the
token (a released or taken-over lease is never revived). A failed renewal (the database) is logged
at warning level with the count of failures in a row; the work goes on, and if the lease does expire
meanwhile, the guards on the work's final writes (``lease.owner``, ``lane.owner``, ``reprocessed.owner``)
see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class LeaseKeeper:
    """Renews the leases held under ``field`` (``lease``, ``lane``) of ``collection`` while work runs."""

    def __init__(
        self,
        collection: AsyncCollection[dict[str, Any]],
        field: str,
        lease_s: float,
        every_s: float,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._collection = collection
        self._field = field
        self.lease_s = lease_s
        self.every_s = every_s
        self._clock = clock
        self._held: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self.renewals = 0  # beats that renewed at least one lease
        self.failures = 0  # beats the database refused, in a row

    def until(self) -> datetime:
        """When a lease taken or renewed now expires."""
        return self._clock() + timedelta(seconds=self.lease_s)

    @contextlib.asynccontextmanager
    async def holding(self, token: str) -> AsyncIterator[None]:
        """Keep the leases owned by ``token`` alive for the duration of the block."""
        self._held[token] = self._held.get(token, 0) + 1
        if self._task is None:
            self._task = asyncio.create_task(self._beat(), name=f"lease-keeper-{self._field}")
        try:
            yield
        finally:
            left = self._held.pop(token, 1) - 1
            if left > 0:
                self._held[token] = left
            if not self._held and self._task is not None:
                task, self._task = self._task, None
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def renew(self) -> int:
        """Renew every held lease now; the number of documents renewed."""
        tokens = sorted(self._held)
        if not tokens:
            return 0
        owner = f"{self._field}.owner"
        result = await self._collection.update_many(
            {owner: {"$in": tokens}}, {"$set": {f"{self._field}.until": self.until()}}
        )
        return int(result.modified_count)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                if await self.renew():
                    self.renewals += 1
                self.failures = 0
            except PyMongoError as exc:
                self.failures += 1
                log.warning(
                    "lease renewal failed; the work goes on, its lease expires unless a later renewal succeeds",
                    extra={"leases": self._field, "failures_in_a_row": self.failures, "reason": str(exc)[:300]},
                )
