"""One MLLP connection of a replay: sends its items in order, up to ``window`` in flight, and matches
each reply to its message.

Replies come back in order. A reply is matched to the oldest message in flight whose control id
(MSH-10) its MSA-2 names, so a message the hub does not answer (MSH-15 ``NE``, or ``ER`` when all went
well) does not shift the answers of those after it: such a message counts as accepted once a later one
is answered, or when the reply timeout ends the wait. Any other message left without a reply is
unanswered. A lost connection fails the messages in flight (unanswered: their fate is unknown, and a
rerun with ``--resume`` sends them again) and the next message opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

from shared.mllp import Frame, FrameDecoder, MllpError, frame

from .items import Item
from .outcomes import ACCEPTED, UNANSWERED, Outcome, outcomes_for, read_ack
from .progress import Pacer

Done = Callable[[Item, list[Outcome]], None]
SILENT_MODES = {"NE": "MSH-15 NE: no commit ACK asked for", "ER": "MSH-15 ER: no ACK means no error"}
MAX_REPLY_BYTES = 64 * 1024 * 1024


class MllpLane:
    """One connection to ``host:port`` and the items dealt to it."""

    def __init__(self, host: str, port: int, *, window: int, timeout_s: float, pacer: Pacer, done: Done) -> None:
        self.host, self.port = host, port
        self._timeout = timeout_s
        self._pacer = pacer
        self._done = done
        self._room = asyncio.Semaphore(window)
        self._in_flight: deque[Item] = deque()
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()
        self._settled.set()

    async def run(self, queue: asyncio.Queue[Item | None]) -> None:
        try:
            while (item := await queue.get()) is not None:
                await self._send(item)
            await self._settled.wait()
        finally:
            await self._close()

    async def _connect(self) -> asyncio.StreamWriter:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self._timeout)
        except (OSError, TimeoutError) as exc:
            raise MllpError(f"cannot connect to {self.host}:{self.port}: {exc or 'timed out'}") from exc
        self._writer = writer
        self._reading = asyncio.create_task(self._read(reader))
        return writer

    async def _send(self, item: Item) -> None:
        await self._room.acquire()
        try:
            writer = self._writer or await self._connect()
        except MllpError as exc:
            self._room.release()
            self._done(item, [Outcome(UNANSWERED, "not sent", str(exc))] * len(item.messages))
            return
        await self._pacer.wait()
        self._in_flight.append(item)
        self._settled.clear()
        try:
            writer.write(frame(item.data))
            await writer.drain()
        except (OSError, ConnectionError) as exc:
            self._fail_all(f"connection lost while sending: {exc}")
            await self._close()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder(MAX_REPLY_BYTES)
        while True:
            try:
                if self._in_flight:
                    chunk = await asyncio.wait_for(reader.read(65536), self._timeout)
                else:
                    chunk = await reader.read(65536)
            except TimeoutError:
                self._fail_all(f"no reply within {self._timeout:g} s")
                break
            except (OSError, ConnectionError) as exc:
                self._fail_all(f"connection lost: {exc}")
                break
            if not chunk:
                self._fail_all("the hub closed the connection before replying")
                break
            for event in decoder.feed(chunk):
                if isinstance(event, Frame):
                    self._answer(event.data)
        self._writer, writer = None, self._writer
        if writer is not None:
            writer.close()

    def _answer(self, reply: bytes) -> None:
        if not self._in_flight:
            return  # a reply nothing waits for: ignored
        lines = read_ack(reply)
        answered = lines[0].control_id if lines else ""
        position = next(
            (n for n, item in enumerate(self._in_flight) if answered and item.messages[0].control_id == answered), 0
        )
        for _ in range(position):
            self._resolve(self._in_flight.popleft(), None)
        item = self._in_flight.popleft()
        self._resolve(item, outcomes_for(len(item.messages), lines))

    def _resolve(self, item: Item, outcomes: list[Outcome] | None) -> None:
        if outcomes is None:  # no reply of its own
            outcomes = []
            for message in item.messages:
                mode = SILENT_MODES.get(message.accept_ack)
                outcomes.append(
                    Outcome(ACCEPTED, "no ACK", mode) if mode else Outcome(UNANSWERED, "no reply", "no ACK came")
                )
        self._done(item, outcomes)
        self._room.release()
        if not self._in_flight:
            self._settled.set()

    def _fail_all(self, reason: str) -> None:
        while self._in_flight:
            item = self._in_flight.popleft()
            silent = all(m.accept_ack in SILENT_MODES for m in item.messages) and "no reply within" in reason
            self._resolve(item, None if silent else [Outcome(UNANSWERED, "no reply", reason)] * len(item.messages))
        self._settled.set()

    async def _close(self) -> None:
        writer, self._writer = self._writer, None
        if self._reading is not None and not self._reading.done():
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
