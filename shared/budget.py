"""The bytes intake holds in flight, across every connection and request: a budget readers wait on.

Each reader (an MLLP connection, an HTTP body being read) has an ``Account``. After reading a chunk it
``take``s that many bytes before reading more; when the budget is spent it waits, and while it waits it
reads nothing, so the socket's buffers fill and TCP slows the sender (backpressure). Bytes a reader has
finished with are given back; the bytes of a complete message move to a ``Ticket`` that its processing
releases (stored and answered, or refused).

Without more, readers each holding part of a message could spend the whole budget and wait on each
other for ever. So one reader at a time may go past the budget, by at most one message (``overdraft``):
the first that finds the budget spent. It keeps that right until its message is complete (or it gives
its bytes back), so some message always completes and frees its bytes. The process never holds more than
``capacity + overdraft`` bytes in accounts and tickets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass
class BudgetStats:
    waits: int = 0  # takes that had to wait for room
    overdrafts: int = 0  # times a reader went past the budget to finish its message
    peak: int = 0  # the most bytes held at once


class ByteBudget:
    def __init__(self, capacity: int, overdraft: int) -> None:
        if capacity < 1 or overdraft < 0:
            raise ValueError("a byte budget needs a positive capacity and a non-negative overdraft")
        self.capacity = capacity
        self.overdraft = overdraft
        self.used = 0
        self.stats = BudgetStats()
        self._waiters: deque[tuple[Account, int, asyncio.Future[None]]] = deque()
        self._privileged: Account | None = None

    @property
    def waiting(self) -> int:
        """Readers waiting for room now."""
        return len(self._waiters)

    def account(self) -> Account:
        return Account(self)

    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[Account]:
        """An account whose bytes are all given back when the block ends (an HTTP request's body)."""
        account = Account(self)
        try:
            yield account
        finally:
            account.close()

    def _fits(self, account: Account, size: int) -> bool:
        if self.used + size <= self.capacity:
            return True
        if self._privileged is None:
            self._privileged = account
            self.stats.overdrafts += 1
        return self._privileged is account and self.used + size <= self.capacity + self.overdraft

    def _grant(self, size: int) -> None:
        self.used += size
        if self.used > self.stats.peak:
            self.stats.peak = self.used

    async def _take(self, account: Account, size: int) -> None:
        # The reader finishing its message past the budget never queues behind readers that cannot fit.
        if (not self._waiters or self._privileged is account) and self._fits(account, size):
            self._grant(size)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((account, size, future))
        self.stats.waits += 1
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(size)  # granted just as the reader was cancelled
            else:
                self._waiters = deque(w for w in self._waiters if w[2] is not future)
                self._wake()
            raise

    def _release(self, size: int) -> None:
        self.used -= size
        self._wake()

    def _unprivilege(self, account: Account) -> None:
        if self._privileged is account:
            self._privileged = None
            self._wake()

    def _wake(self) -> None:
        """Grant the reader finishing its message past the budget, then waiting readers in arrival order
        while they fit."""
        if not self._waiters:  # the usual case: nobody waits
            return
        self._waiters = deque(w for w in self._waiters if not w[2].done())
        for waiter in list(self._waiters):
            if waiter[0] is self._privileged and self._fits(waiter[0], waiter[1]):
                self._admit(waiter)
        while self._waiters and self._fits(self._waiters[0][0], self._waiters[0][1]):
            self._admit(self._waiters[0])

    def _admit(self, waiter: tuple[Account, int, asyncio.Future[None]]) -> None:
        self._waiters.remove(waiter)
        self._grant(waiter[1])
        waiter[2].set_result(None)


class Account:
    """One reader's bytes: those taken and not yet given back or handed to a ``Ticket``."""

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.held = 0

    async def take(self, size: int) -> None:
        """Hold ``size`` more bytes, waiting until the budget has room."""
        if size > 0:
            await self._budget._take(self, size)
            self.held += size

    def keep(self, size: int) -> None:
        """Give back all but ``size`` of the bytes held (what the reader still buffers)."""
        excess = self.held - max(0, size)
        if excess > 0:
            self.held -= excess
            self._budget._release(excess)
        if self.held == 0:
            self._budget._unprivilege(self)

    def hand_over(self, size: int) -> Ticket:
        """Move ``size`` held bytes (a complete message) to a ticket its processing releases; the reader
        loses any right to go past the budget (its message is complete)."""
        size = min(size, self.held)
        self.held -= size
        self._budget._unprivilege(self)
        return Ticket(self._budget, size)

    def close(self) -> None:
        self.keep(0)


class Ticket:
    """The bytes of one complete message, held until ``release`` (idempotent)."""

    def __init__(self, budget: ByteBudget, size: int) -> None:
        self._budget = budget
        self.size = size

    def release(self, *_: object) -> None:
        size, self.size = self.size, 0
        if size:
            self._budget._release(size)
