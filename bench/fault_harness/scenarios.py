"""The scenarios, one function each, and the run around them: traffic starts, the fault strikes at a
random moment, the part is brought back, traffic goes on, then the engines finish what they hold, the
backlog drains, and the checks count what was lost, doubled or disordered."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from _parts import wait_until

from fault_harness.checks import (
    IN_HAND,
    PROCESSED,
    Findings,
    check_deliveries,
    check_messages,
    check_referrals_notified,
    check_resources,
    counters,
)
from fault_harness.hub import Hub
from fault_harness.receiver import Receiver
from fault_harness.sender import Engines, Tally


@dataclass(frozen=True)
class Options:
    rate: float  # messages per second, every trust's engine together
    before_s: float  # traffic before the (first) fault may strike
    after_s: float  # traffic after the last fault
    kills: int  # faults per scenario (kill -9, SIGTERM, mongod)
    outage_s: float  # how long mongod or the receiver stays down or failing
    drain_s: float  # the longest wait for the backlog to drain
    seed: int


@dataclass
class Result:
    name: str
    tally: Tally
    found: Findings
    recovery_s: float | None
    duplicates_allowed: bool
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        f = self.found
        return bool(
            f.lost
            or f.stored_twice
            or f.unprocessed
            or f.duplicate_effects
            or f.missing
            or f.disorder
            or f.bad_signatures
            or (f.duplicate_deliveries and not self.duplicates_allowed)
            or self.recovery_s is None
        )


class Harness:
    def __init__(self, hub: Hub, receiver: Receiver, engines: Engines, options: Options) -> None:
        self.hub = hub
        self.receiver = receiver
        self.engines = engines
        self.options = options
        self.rng = random.Random(options.seed)
        self.notes: list[str] = []
        self.count = 0

    def moment(self) -> float:
        """A random wait before the next fault: anywhere in the traffic window, never at its very start."""
        return self.rng.uniform(0.3, self.options.before_s)

    async def run(self, name: str, fault: Callable[[Harness], Awaitable[float]], duplicates_allowed: bool) -> Result:
        self.count += 1
        self.notes = []
        prefix = f"F{self.count:02d}"
        subscriptions = list(self.hub.subscriptions)
        before = await counters(self.hub.db, subscriptions)
        tally = self.engines.start(prefix)
        fault_at = await fault(self)
        backlog = tally.positive_before(fault_at)
        recovering = asyncio.create_task(self._recovered(backlog, tally, fault_at))
        await asyncio.sleep(self.options.after_s)
        await self.engines.finish(self.options.drain_s)
        drained = await wait_until(lambda: self._drained(prefix), self.options.drain_s, 0.25)
        if drained is None:
            self.notes.append(f"the backlog did not drain within {self.options.drain_s:.0f} s")
        try:
            recovery = await asyncio.wait_for(recovering, self.options.drain_s)
        except TimeoutError:
            recovery = None
        after = await counters(self.hub.db, subscriptions)
        found = Findings()
        ids = await check_messages(self.hub.db, prefix, tally, found)
        await check_resources(self.hub.db, ids, found)
        receipts = list(self.receiver.received)
        check_deliveries(receipts, before, after, found)
        await check_referrals_notified(self.hub.db, ids, self.hub.trust_subscription, receipts, found)
        if tally.refused:
            self.notes.append(f"{len(tally.refused)} message(s) refused (AR/CR): {tally.refused[:3]}")
        return Result(name, tally, found, recovery, duplicates_allowed, self.notes)

    async def _recovered(self, backlog: list[tuple[str, str]], tally: Tally, fault_at: float) -> float:
        """Seconds from the fault until the engines have an ACK again and everything acknowledged before
        the fault is mapped, fanned out and received."""
        while True:
            try:
                if tally.last_ack_at > fault_at and await asyncio.wait_for(self._done(backlog), 3):
                    return time.monotonic() - fault_at
            except Exception:  # the database is down or restarting: try again
                pass
            await asyncio.sleep(0.25)

    async def _done(self, backlog: list[tuple[str, str]]) -> bool:
        db = self.hub.db
        control_ids = [key[1] for key in backlog]
        ids: list[Any] = []
        async for doc in db.messages.find({"header.control_id": {"$in": control_ids}}, {"status": 1}):
            if doc.get("status") not in PROCESSED and doc.get("status") != "rejected":
                return False
            ids.append(doc["_id"])
        if await db.outbox.count_documents({"message_id": {"$in": ids}, "status": {"$ne": "dispatched"}}):
            return False
        events = [d["_id"] async for d in db.outbox.find({"message_id": {"$in": ids}}, {"_id": 1})]
        received = {(r.subscription, r.number) for r in self.receiver.received}
        query = {"event.outbox_id": {"$in": events}}
        async for delivery in db.deliveries.find(query, {"subscription_id": 1, "event_number": 1}):
            if (delivery["subscription_id"], delivery["event_number"]) not in received:
                return False
        return True

    async def _drained(self, prefix: str) -> bool:
        db = self.hub.db
        try:
            query = {"header.control_id": {"$regex": f"^{prefix}"}, "status": {"$in": list(IN_HAND)}}
            if await db.messages.count_documents(query):
                return False
            if await db.outbox.count_documents({"status": "ready"}):
                return False
            if await db.deliveries.count_documents({"status": "pending"}):
                return False
            now = await counters(db, list(self.hub.subscriptions))
        except Exception:
            return False
        received = {(r.subscription, r.number) for r in self.receiver.received}
        return all((sub, n) in received for sub, last in now.items() for n in range(1, last + 1))


# --------------------------------------------------------------------------------------------------
# The faults. Each returns the moment (time.monotonic()) of its last fault.
# --------------------------------------------------------------------------------------------------


def kill9(part: str) -> Callable[[Harness], Awaitable[float]]:
    async def fault(h: Harness) -> float:
        at = 0.0
        for _ in range(h.options.kills):
            await asyncio.sleep(h.moment())
            at = time.monotonic()
            await h.hub.parts[part].kill()
            await h.hub.parts[part].start()
        return at

    fault.__doc__ = f"kill -9 of {part} at random moments, restarted at once"
    return fault


def sigterm(part: str) -> Callable[[Harness], Awaitable[float]]:
    async def fault(h: Harness) -> float:
        at = 0.0
        for _ in range(h.options.kills):
            await asyncio.sleep(h.moment())
            at = time.monotonic()
            running_s = at - h.hub.parts[part].started_at
            status = await h.hub.parts[part].terminate()
            if status != 0:
                h.notes.append(f"{part} exited {status} after SIGTERM {running_s:.1f} s after its start (expected 0)")
            await h.hub.parts[part].start()
        return at

    fault.__doc__ = f"SIGTERM of {part} at random moments, restarted when it has exited"
    return fault


async def mongod_kill9(h: Harness) -> float:
    """mongod killed with -9 and started again on the same data after the outage."""
    at = 0.0
    for _ in range(h.options.kills):
        await asyncio.sleep(h.moment())
        at = time.monotonic()
        await h.hub.kill_mongod()
        await asyncio.sleep(h.options.outage_s)
        await h.hub.start_mongod()
    return at


async def receiver_down(h: Harness) -> float:
    """The receiver stops listening (connections refused), then comes back on the same port."""
    await asyncio.sleep(h.moment())
    at = time.monotonic()
    await h.receiver.down()
    await asyncio.sleep(h.options.outage_s)
    await h.receiver.up()
    return at


def receiver_failing(status: str) -> Callable[[Harness], Awaitable[float]]:
    async def fault(h: Harness) -> float:
        await asyncio.sleep(h.moment())
        at = time.monotonic()
        h.receiver.mode = status
        await asyncio.sleep(h.options.outage_s)
        h.receiver.mode = "ok"
        return at

    fault.__doc__ = f"the receiver answers {status}" + (" with Retry-After" if status == "503" else "")
    return fault


# (name, fault, whether a repeated delivery is within the documented at-least-once): the notifier may
# send an event again only when it could not record a delivery it made (it was stopped or killed, or the
# database was), docs/notifications.md; anywhere else a repeat is a failure.
SCENARIOS: list[tuple[str, Callable[[Harness], Awaitable[float]], bool]] = [
    ("kill -9 intake", kill9("intake"), False),
    ("kill -9 mapper", kill9("mapper"), False),
    ("kill -9 notifier", kill9("notifier"), True),
    ("SIGTERM intake", sigterm("intake"), False),
    ("SIGTERM mapper", sigterm("mapper"), False),
    ("SIGTERM notifier", sigterm("notifier"), True),
    ("kill -9 mongod", mongod_kill9, True),
    ("receiver down", receiver_down, False),
    ("receiver 500", receiver_failing("500"), False),
    ("receiver 503", receiver_failing("503"), False),
]
