"""The MLLP listener: many connections, pipelined messages answered in order, bounded and timed.

Each connection has a reader (frames in, intake tasks started at once) and a writer (replies out in
arrival order), so several messages may be in flight on one connection and commit together. Bytes
outside frames, unfinished frames (idle past ``MSCC_MLLP_FRAME_TIMEOUT_S``, not finished within
``MSCC_MLLP_FRAME_TOTAL_TIMEOUT_S`` of their first byte, or cut by a close) are kept with the reason and
never acknowledged; oversize frames are answered AR and their head kept.

Optionally over TLS (``mllp_tls.py``); at most ``MSCC_MLLP_MAX_CONNECTIONS`` connections at once (more
are closed at once, logged and counted); every byte read is taken from the intake's ``ByteBudget``
before the next read, so many large messages at once make readers wait rather than exhaust memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from shared.auth import Caller, caller_for_mllp
from shared.budget import Account, ByteBudget
from shared.metrics import ack_timer
from shared.mllp import CARRIAGE_RETURN, END_BLOCK, START_BLOCK, Frame, FrameDecoder, Junk, Oversize
from shared.settings import Settings

from .admission import READ_SIZE, STORING_COST, FrameClock, intake_budget
from .hl7_intake import Hl7Intake, Reply
from .mllp_tls import peer_certificate, server_context
from .origin import Origin

log = logging.getLogger(__name__)


@dataclass
class ConnectionStats:
    connections: int = 0
    open_connections: int = 0
    frames: int = 0
    junk: int = 0
    timeouts: int = 0
    refused: int = 0  # connections closed at once: over MSCC_MLLP_MAX_CONNECTIONS


class MllpServer:
    def __init__(self, intake: Hl7Intake, settings: Settings, budget: ByteBudget | None = None) -> None:
        self._intake = intake
        self._settings = settings
        self.budget = budget or intake_budget(settings)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._streams: dict[asyncio.Task[None], tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        self._stopping = False
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
        tls = server_context(self._settings)
        timeout = self._settings.mllp_tls_handshake_timeout_s if tls else None
        self._server = await asyncio.start_server(
            self._accept, host, port, limit=READ_SIZE, ssl=tls, ssl_handshake_timeout=timeout
        )
        log.info("MLLP listening", extra={"host": host, "port": self.port, "tls": tls is not None})

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop accepting, then end every connection in order and release the port.

        No more bytes are read; the frames already received are answered, each once its commit has
        completed; a frame half read is kept with the reason and never acknowledged; then the
        connection closes. A connection not done within ``timeout_s`` (a peer that does not read its
        replies) is cut: what it had not been answered is not acknowledged, so its sender resends it.
        """
        if self._server is None:
            return
        self._stopping = True
        self._server.close()
        for reader, writer in list(self._streams.values()):
            _stop_reading(reader, writer)
        if self._connections:
            _, late = await asyncio.wait(list(self._connections), timeout=timeout_s)
            if late:
                log.warning("MLLP connections cut at stop", extra={"connections": len(late), "timeout_s": timeout_s})
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._server.wait_closed()
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.stats.open_connections >= self._settings.mllp_max_connections:
            self.stats.refused += 1
            log.warning(
                "MLLP connection refused: too many open connections (MSCC_MLLP_MAX_CONNECTIONS)",
                extra={"peer": writer.get_extra_info("peername"), "limit": self._settings.mllp_max_connections},
            )
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.stats.connections += 1
        self.stats.open_connections += 1
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else "unknown"
        origin = Origin("mllp", str(peername[0]) if peername else "", peer_certificate(writer))
        caller = caller_for_mllp(self._settings, peer)
        self._streams[task] = (reader, writer)
        if self._stopping:  # accepted just as the listener stopped: read nothing more
            _stop_reading(reader, writer)
        try:
            await self._serve(reader, writer, peer, caller, origin)
        finally:
            self._streams.pop(task, None)
            self._connections.discard(task)
            self.stats.open_connections -= 1
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str, caller: Caller, origin: Origin
    ) -> None:
        settings = self._settings
        decoder = FrameDecoder(settings.mllp_max_message_bytes)
        clock, account, loop = FrameClock(settings), self.budget.account(), asyncio.get_running_loop()
        replies: asyncio.Queue[asyncio.Task[Reply] | None] = asyncio.Queue(settings.mllp_max_in_flight)
        writer_task = asyncio.create_task(self._write_replies(replies, writer, peer))
        try:
            while True:
                timeout, why = clock.next_read(decoder, loop.time())
                try:
                    async with asyncio.timeout(timeout):  # cheaper than wait_for: no task per read
                        chunk = await reader.read(READ_SIZE)
                except TimeoutError:
                    self.stats.timeouts += 1
                    await self._keep_partial(decoder, peer, caller, why)
                    return
                except (ConnectionError, OSError):
                    chunk = b""
                if not chunk:
                    reason = "connection closed inside an unfinished frame"
                    if self._stopping:
                        reason = "the hub stopped while this frame was arriving; not acknowledged: resend it"
                    await self._keep_partial(decoder, peer, caller, reason)
                    return
                waited = loop.time()
                await account.take(len(chunk))  # no room in the byte budget: read nothing more until there is
                clock.paused(loop.time() - waited)
                for event in decoder.feed(chunk):
                    await self._dispatch(event, replies, peer, caller, origin, account)
                clock.fed(decoder, loop.time())
                account.keep(decoder.buffered)
                if writer.is_closing():
                    return
        finally:
            account.close()
            with contextlib.suppress(asyncio.CancelledError):
                await replies.put(None)
                await writer_task

    async def _dispatch(
        self,
        event: Frame | Junk | Oversize,
        replies: asyncio.Queue[asyncio.Task[Reply] | None],
        peer: str,
        caller: Caller,
        origin: Origin,
        account: Account,
    ) -> None:
        """Start storing a frame, charged to the byte budget for what storing it costs (``STORING_COST``)
        until it is stored and answered; or keep junk."""
        intake = self._intake
        if isinstance(event, Frame | Oversize):
            self.stats.frames += 1
            answered = ack_timer("mllp")  # from receipt to the ACK (mscc_ack_seconds)
            size = len(event.data if isinstance(event, Frame) else event.head)
            await account.take((STORING_COST - 1) * size)  # no room: wait, reading nothing more
            if isinstance(event, Frame):
                work = intake.receive(event.data, channel="mllp", peer=peer, caller=caller, origin=origin)
            else:
                limit = self._settings.mllp_max_message_bytes
                work = intake.receive_oversize(event.head, event.size, limit, channel="mllp", peer=peer, caller=caller)
            ticket = account.hand_over(STORING_COST * size)

            def finished(done: object) -> None:  # stored and answered, or failed: one callback, not two
                ticket.release()
                answered(done)

            task = asyncio.create_task(work)
            task.add_done_callback(finished)
            await replies.put(task)
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


def _stop_reading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read nothing more from this connection: the bytes already received are still read (their
    frames answered), then the reader sees end of input, as if the peer had closed."""
    pause = getattr(writer.transport, "pause_reading", None)  # uvloop's transports are no ReadTransport
    if pause is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            pause()
    reader.feed_eof()
