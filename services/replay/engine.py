"""A replay run: the readers' items dealt to ``concurrency`` lanes (MLLP connections or HTTP request
slots), each answer counted, journaled and reported.

Items are dealt to the lanes in turn, each lane keeping the order of what it was dealt; each lane holds
at most ``window`` items waiting and (MLLP) ``window`` in flight, so memory stays bounded whatever the
size of the input. With one lane (the default) a log is sent in its own order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

import aiohttp

from .auth import AuthError, Credentials, TokenSource
from .files import Source, UsageError
from .http_lane import HttpLane
from .items import Item
from .journal import Journal
from .mllp_lane import MllpLane
from .outcomes import UNANSWERED, Outcome
from .progress import Pacer, Progress
from .readers import Reading, read_all
from .summary import Summary


@dataclass(frozen=True)
class Options:
    """How to replay: where to, how fast, and what to keep."""

    host: str = "127.0.0.1"
    port: int = 2575
    http: str | None = None  # the hub's base URL: replay over HTTP instead of MLLP
    credentials: Credentials | None = None
    split_batches: bool = False
    rate: float | None = None
    concurrency: int = 1
    window: int = 8
    timeout_s: float = 30.0
    resume: Path | None = None
    failures: Path | None = None
    json: bool = False
    quiet: bool = False


class Lane(Protocol):
    async def run(self, queue: asyncio.Queue[Item | None]) -> None: ...


class Replay:
    """One run of ``Options`` over ``sources``; ``run`` returns the exit status."""

    def __init__(self, options: Options, sources: list[Source], out: TextIO, err: TextIO) -> None:
        self.options = options
        self.sources = sources
        self.out, self.err = out, err
        self.summary = Summary(options.failures)
        self.journal = Journal(options.resume) if options.resume else None
        self.reading = Reading()
        self.pacer = Pacer(options.rate)

    def done(self, item: Item, outcomes: list[Outcome]) -> None:
        self.summary.record(item, outcomes)
        if self.journal is not None and all(o.ok for o in outcomes):
            self.journal.record(item)

    async def run(self) -> int:
        tty = getattr(self.err, "isatty", lambda: False)()
        progress = Progress(self.summary, self.reading, self.err, enabled=tty and not self.options.quiet)
        started = time.monotonic()
        try:
            if self.journal is not None:
                self.journal.open()
            self.summary.open()
            async with self._lanes() as lanes:
                ticker = asyncio.create_task(progress.run())
                try:
                    await self._deal(lanes)
                finally:
                    ticker.cancel()
                    progress.clear()
        finally:
            if self.journal is not None:
                self.journal.close()
            self.summary.close()
        self._report(time.monotonic() - started)
        return 1 if self.summary.failed else 0

    async def _deal(self, lanes: Sequence[Lane]) -> None:
        queues: list[asyncio.Queue[Item | None]] = [asyncio.Queue(self.options.window) for _ in lanes]
        tasks = [asyncio.create_task(lane.run(queue)) for lane, queue in zip(lanes, queues, strict=True)]
        turn = 0
        try:
            for count, item in enumerate(self._items()):
                if count % 256 == 0:
                    await asyncio.sleep(0)  # let answers in while skipping or failing many in a row
                if self.journal is not None and self.journal.seen(item):
                    self.summary.skipped += 1
                elif item.problem:
                    self.done(item, [Outcome(UNANSWERED, "not sent", item.problem)] * len(item.messages))
                else:
                    await queues[turn % len(queues)].put(item)
                    turn += 1
        finally:
            for queue, task in zip(queues, tasks, strict=True):
                if not task.done():
                    await queue.put(None)
            await asyncio.gather(*tasks)

    def _items(self) -> Iterator[Item]:
        return read_all(self.sources, self.options.split_batches, self.reading)

    @contextlib.asynccontextmanager
    async def _lanes(self) -> AsyncIterator[list[Lane]]:
        opts = self.options
        if opts.http is None:
            await self._check_mllp()
            yield [
                MllpLane(
                    opts.host, opts.port, window=opts.window, timeout_s=opts.timeout_s, pacer=self.pacer, done=self.done
                )
                for _ in range(opts.concurrency)
            ]
            return
        timeout = aiohttp.ClientTimeout(total=opts.timeout_s)
        connector = aiohttp.TCPConnector(limit=opts.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            tokens = TokenSource(session, opts.http, opts.credentials) if opts.credentials else None
            if tokens is not None:
                try:
                    await tokens.header()
                except AuthError as exc:
                    raise UsageError(f"{exc}; check --client-id and the secret or --private-key") from exc
            yield [
                HttpLane(session, opts.http, tokens, pacer=self.pacer, done=self.done) for _ in range(opts.concurrency)
            ]

    async def _check_mllp(self) -> None:
        """Fail at once, with what to check, when nothing listens at the MLLP address."""
        host, port = self.options.host, self.options.port
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.options.timeout_s)
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(
                f"cannot connect to {host}:{port} ({exc or 'timed out'}): is the hub running? check --host and --port"
            ) from exc
        writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()

    def _report(self, seconds: float) -> None:
        if self.options.json:
            print(json.dumps(self.summary.to_json(seconds), indent=2), file=self.out)
        else:
            print(self.summary.table(seconds), file=self.out)
