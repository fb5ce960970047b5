"""The sending side: one engine per trust, each on its own MLLP connection, sending its messages in
order at a steady pace and resending the one in hand (the same bytes) until it has a positive ACK, as an
integration engine does. Every answer is tallied for the scenario running."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from mllp_ingest import ack_of

from fault_harness.messages import TRUSTS, Outgoing, TrustStream
from shared.mllp import MllpClient, MllpError

POSITIVE = ("AA", "CA")
ACK_TIMEOUT_S = 10.0
RESEND_PAUSE_S = 0.2


@dataclass
class Tally:
    """What one scenario's engines saw. Keys are (MSH-4, MSH-10)."""

    sent: dict[tuple[str, str], Outgoing] = field(default_factory=dict)
    acked: dict[tuple[str, str], float] = field(default_factory=dict)  # key -> monotonic time of the first AA
    negative: int = 0  # answers AE/AR/CE/CR (each resent, except AR/CR)
    refused: list[tuple[str, str]] = field(default_factory=list)  # AR/CR: never resent
    unanswered: int = 0  # attempts with no answer (timeout, connection refused or closed)
    attempts: int = 0
    last_ack_at: float = 0.0

    def positive_before(self, moment: float) -> list[tuple[str, str]]:
        return [key for key, at in self.acked.items() if at <= moment]


class Engine:
    """One trust's engine on its own connection."""

    def __init__(self, port: int, stream: TrustStream) -> None:
        self.port = port
        self.stream = stream
        self.client: MllpClient | None = None

    async def run(self, prefix: str, tally: Tally, interval_s: float, stop: asyncio.Event) -> None:
        """Send until ``stop``; the message in hand is still resent until acknowledged (or the task is
        cancelled)."""
        next_at = time.monotonic()
        try:
            while not stop.is_set():
                message = self.stream.next(prefix)
                tally.sent[message.key] = message
                await self._deliver(message, tally)
                next_at += interval_s
                delay = next_at - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                else:
                    next_at = time.monotonic()
        finally:
            await self.close()

    async def _deliver(self, message: Outgoing, tally: Tally) -> None:
        while True:
            tally.attempts += 1
            try:
                if self.client is None:
                    self.client = await MllpClient.connect("127.0.0.1", self.port, timeout_s=ACK_TIMEOUT_S)
                reply = await self.client.send(message.data)
            except (MllpError, OSError):
                tally.unanswered += 1
                await self.close()
            else:
                code, acked_id = ack_of(reply)
                if code in POSITIVE and acked_id == message.control_id:
                    now = time.monotonic()
                    tally.acked.setdefault(message.key, now)
                    tally.last_ack_at = now
                    return
                tally.negative += 1
                if code in ("AR", "CR") and acked_id == message.control_id:
                    tally.refused.append(message.key)
                    return
                if acked_id != message.control_id:
                    await self.close()  # out of step: start again on a new connection
            await asyncio.sleep(RESEND_PAUSE_S)

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            with contextlib.suppress(Exception):
                await client.close()


class Engines:
    """Every trust's engine; ``rate`` messages per second in all."""

    def __init__(self, port: int, rate: float) -> None:
        self.engines = [Engine(port, TrustStream(t)) for t in range(len(TRUSTS))]
        self.rate = rate
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.tally = Tally()

    def start(self, prefix: str) -> Tally:
        self.stop = asyncio.Event()
        self.tally = Tally()
        interval = len(self.engines) / self.rate
        self.tasks = [asyncio.create_task(e.run(prefix, self.tally, interval, self.stop)) for e in self.engines]
        return self.tally

    async def finish(self, max_wait_s: float) -> None:
        """Stop sending new messages; wait (at most ``max_wait_s``) for those in hand to be acknowledged."""
        self.stop.set()
        _, pending = await asyncio.wait(self.tasks, timeout=max_wait_s)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
