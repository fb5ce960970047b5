"""MLLP (Minimal Lower Layer Protocol) framing: VT <message> FS CR, separate from any HL7 parsing.

``FrameDecoder`` turns received bytes into events: a complete ``Frame``, ``Junk`` (bytes outside any
frame, or a frame cut short by a new start block), and ``Oversize`` (a frame past the size limit, of
which the first bytes are kept). ``MllpClient`` sends frames and reads the replies, for tests, the
replay tool and HL7v2 delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
_WHITESPACE = b" \t\r\n"


class MllpError(Exception):
    """A peer broke MLLP framing, closed the connection early, or did not answer in time."""


@dataclass(frozen=True)
class Frame:
    data: bytes


@dataclass(frozen=True)
class Junk:
    data: bytes
    reason: str


@dataclass(frozen=True)
class Oversize:
    head: bytes
    size: int


Event = Frame | Junk | Oversize


def frame(message: bytes) -> bytes:
    return START_BLOCK + message + END_BLOCK + CARRIAGE_RETURN


class FrameDecoder:
    """Incremental MLLP decoder. ``feed`` bytes as they arrive; it returns the events they complete.

    A frame ends at FS CR; FS directly followed by VT is taken as an end with the CR missing. Any
    other FS is data. A VT inside a frame starts a new frame: the bytes before it are reported as
    ``Junk`` (an unfinished frame is never acknowledged as a message).
    """

    def __init__(self, max_size: int) -> None:
        self._max = max_size
        self._buf = bytearray()
        self._in_frame = False
        self._scan = 0  # where to resume looking for FS inside the current frame
        self._discarding = 0  # bytes of an oversize frame seen so far (0 = not discarding)
        self._head = b""
        self.starts = 0  # frames begun so far (a reader times each frame from its first byte)

    @property
    def in_frame(self) -> bool:
        return self._in_frame

    @property
    def buffered(self) -> int:
        """Bytes held for the frame in progress (what a reader still owes its memory budget)."""
        return len(self._buf) + len(self._head)

    def pending(self) -> bytes:
        """The bytes of an unfinished frame, start block included (for keeping on timeout or close)."""
        return (START_BLOCK + self._head) if self._discarding else bytes(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        self._buf += data
        events: list[Event] = []
        while self._buf:
            if not self._in_frame:
                if not self._outside(events):
                    break
            elif self._discarding:
                if not self._discard(events):
                    break
            elif not self._inside(events):
                break
        return events

    def _outside(self, events: list[Event]) -> bool:
        start = self._buf.find(START_BLOCK)
        before = bytes(self._buf if start < 0 else self._buf[:start])
        if before.strip(_WHITESPACE):
            events.append(Junk(before, "bytes outside an MLLP frame (no start block 0x0B)"))
        if start < 0:
            self._buf.clear()
            return False
        del self._buf[:start]
        self._in_frame = True
        self._scan = 1
        self.starts += 1
        return True

    def _inside(self, events: list[Event]) -> bool:
        buf = self._buf
        while True:
            end = buf.find(END_BLOCK, self._scan)
            restart = buf.find(START_BLOCK, max(1, self._scan), end if end >= 0 else len(buf))
            if restart >= 0:
                events.append(Junk(bytes(buf[:restart]), "frame interrupted by a new start block before its end"))
                del buf[:restart]
                self._scan = 1
                self.starts += 1
                continue
            if end < 0:
                self._scan = max(1, len(buf))
                if len(buf) - 1 > self._max:
                    self._head = bytes(buf[1 : self._max + 1])
                    self._discarding = len(buf) - 1
                    buf.clear()
                    return bool(buf)
                return False
            if end + 1 >= len(buf):
                self._scan = end
                return False
            follower = buf[end + 1 : end + 2]
            if follower in (CARRIAGE_RETURN, START_BLOCK):
                with memoryview(buf) as view:  # one copy of the message, not two
                    body = bytes(view[1:end])
                del buf[: end + (2 if follower == CARRIAGE_RETURN else 1)]
                self._in_frame = False
                self._scan = 0
                if len(body) > self._max:
                    events.append(Oversize(body[: self._max], len(body)))
                else:
                    events.append(Frame(body))
                return True
            self._scan = end + 1  # an FS inside the data

    def _discard(self, events: list[Event]) -> bool:
        buf = self._buf
        end = buf.find(END_BLOCK + CARRIAGE_RETURN)
        if end < 0:
            keep = 1 if buf.endswith(END_BLOCK) else 0
            self._discarding += len(buf) - keep
            del buf[: len(buf) - keep]
            return False
        self._discarding += end
        events.append(Oversize(self._head, self._discarding))
        del buf[: end + 2]
        self._in_frame = False
        self._discarding = 0
        self._head = b""
        self._scan = 0
        return True


class MllpClient:
    """One MLLP connection: ``send`` a message and read its reply; pipelining with ``send_many``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, timeout_s: float) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout = timeout_s
        self._decoder = FrameDecoder(64 * 1024 * 1024)
        self._ready: list[bytes] = []

    @classmethod
    async def connect(cls, host: str, port: int, *, timeout_s: float = 10.0) -> MllpClient:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        except (OSError, TimeoutError) as exc:
            raise MllpError(f"cannot connect to {host}:{port}: {exc}") from exc
        return cls(reader, writer, timeout_s=timeout_s)

    async def send_raw(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def send(self, message: bytes) -> bytes:
        await self.send_raw(frame(message))
        return await self.receive()

    async def send_many(self, messages: list[bytes]) -> list[bytes]:
        """Write all frames at once (pipelined), then read one reply per frame, in order."""
        await self.send_raw(b"".join(frame(m) for m in messages))
        return [await self.receive() for _ in messages]

    async def receive(self) -> bytes:
        """The next reply frame; ``MllpError`` if the peer closes or is silent past the timeout."""
        while not self._ready:
            try:
                chunk = await asyncio.wait_for(self._reader.read(65536), self._timeout)
            except TimeoutError as exc:
                raise MllpError(f"no reply within {self._timeout}s") from exc
            if not chunk:
                raise MllpError("connection closed before a reply")
            for event in self._decoder.feed(chunk):
                if isinstance(event, Frame):
                    self._ready.append(event.data)
        return self._ready.pop(0)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
