"""The MLLP listener: many connections, pipelined messages answered in order, bounded and timed.

Each connection has a reader (frames in, intake tasks started at once) and a writer (replies out in
arrival order), so several messages may be in flight on one connection and commit together. Bytes
outside frames, unfinished frames (idle past ``MSCC_MLLP_FRAME_TIMEOUT_S`` or cut by a close) are
kept with the reason and never acknowledged; oversize frames are answered AR and their head kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from shared.auth import Caller, Unauthenticated, caller_for_mllp
from shared.mllp import CARRIAGE_RETURN, END_BLOCK, START_BLOCK, Frame, FrameDecoder, Junk, Oversize
from shared.settings import Settings

from .hl7_intake import Hl7Intake, Reply

log = logging.getLogger(__name__)


@dataclass
class ConnectionStats:
    connections: int = 0
    open_connections: int = 0
    frames: int = 0
    junk: int = 0
    timeouts: int = 0


class MllpServer:
    def __init__(self, intake: Hl7Intake, settings: Settings) -> None:
        self._intake = intake
        self._settings = settings
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.stats = ConnectionStats()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the MLLP server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (0 picks a free port); ``OSError`` if the port is taken."""
        if self._server is not None:
            raise RuntimeError("the MLLP server is already started")
        self._server = await asyncio.start_server(self._accept, host, port, limit=1 << 20)
        log.info("MLLP listening", extra={"host": host, "port": self.port})

    async def stop(self) -> None:
        """Stop listening, close every connection (finishing replies in progress), release the port."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.wait_closed()
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.stats.connections += 1
        self.stats.open_connections += 1
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else "unknown"
        try:
            caller = caller_for_mllp(self._settings, peer)
        except Unauthenticated as exc:
            log.warning("MLLP connection refused", extra={"peer": peer, "reason": str(exc)})
            writer.close()
            self._connections.discard(task)
            self.stats.open_connections -= 1
            return
        try:
            await self._serve(reader, writer, peer, caller)
        finally:
            self._connections.discard(task)
            self.stats.open_connections -= 1
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str, caller: Caller
    ) -> None:
        settings = self._settings
        decoder = FrameDecoder(settings.mllp_max_message_bytes)
        replies: asyncio.Queue[asyncio.Task[Reply] | None] = asyncio.Queue(settings.mllp_max_in_flight)
        writer_task = asyncio.create_task(self._write_replies(replies, writer, peer))
        try:
            while True:
                timeout = settings.mllp_frame_timeout_s if decoder.in_frame else settings.mllp_idle_timeout_s
                try:
                    async with asyncio.timeout(timeout):  # cheaper than wait_for: no task per read
                        chunk = await reader.read(1 << 16)
                except TimeoutError:
                    self.stats.timeouts += 1
                    await self._keep_partial(
                        decoder, peer, caller, f"frame unfinished after {timeout}s without data; connection closed"
                    )
                    return
                except (ConnectionError, OSError):
                    chunk = b""
                if not chunk:
                    await self._keep_partial(decoder, peer, caller, "connection closed inside an unfinished frame")
                    return
                for event in decoder.feed(chunk):
                    await self._dispatch(event, replies, peer, caller)
                if writer.is_closing():
                    return
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await replies.put(None)
                await writer_task

    async def _dispatch(
        self,
        event: Frame | Junk | Oversize,
        replies: asyncio.Queue[asyncio.Task[Reply] | None],
        peer: str,
        caller: Caller,
    ) -> None:
        intake = self._intake
        if isinstance(event, Frame):
            self.stats.frames += 1
            await replies.put(asyncio.create_task(intake.receive(event.data, channel="mllp", peer=peer, caller=caller)))
        elif isinstance(event, Oversize):
            self.stats.frames += 1
            limit = self._settings.mllp_max_message_bytes
            await replies.put(
                asyncio.create_task(
                    intake.receive_oversize(event.head, event.size, limit, channel="mllp", peer=peer, caller=caller)
                )
            )
        else:
            self.stats.junk += 1
            await intake.keep_unacknowledged(event.data, event.reason, channel="mllp", peer=peer, caller=caller)

    async def _keep_partial(self, decoder: FrameDecoder, peer: str, caller: Caller, reason: str) -> None:
        pending = decoder.pending()
        if pending.strip():
            self.stats.junk += 1
            await self._intake.keep_unacknowledged(pending, reason, channel="mllp", peer=peer, caller=caller)

    async def _write_replies(
        self, replies: asyncio.Queue[asyncio.Task[Reply] | None], writer: asyncio.StreamWriter, peer: str
    ) -> None:
        """Send replies in arrival order; after a failure keep awaiting, so every message is stored."""
        healthy = True
        while (task := await replies.get()) is not None:
            try:
                reply = await task
            except Exception:
                log.exception(
                    "intake failed on a frame; closing the connection so the sender resends", extra={"peer": peer}
                )
                healthy = False
                writer.close()
                continue
            if not healthy or not reply.send:
                continue
            try:
                writer.write(START_BLOCK + reply.body + END_BLOCK + CARRIAGE_RETURN)
                await writer.drain()
            except (ConnectionError, OSError):
                log.warning("MLLP reply not delivered: peer gone", extra={"peer": peer, "records": reply.record_ids})
                healthy = False
