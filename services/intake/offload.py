"""Intake's parse pool: the CPU-heavy reading of a large input runs in worker processes, off the event loop.

One event loop serves every MLLP connection and HTTP request. Reading a 4 MB HL7v2 frame of tiny
segments, or validating a FHIR body of 300,000 objects, takes seconds of pure-Python work; on the loop
it would delay every other sender's ACK by as long. Threads do not help: that work holds the GIL, and a
loop sharing the GIL with it waits a switch interval (5 ms) at every system call. So inputs of at least
``MSCC_INTAKE_OFFLOAD_BYTES`` are read by a small ``ProcessPoolExecutor`` (``MSCC_INTAKE_PARSE_POOL``
workers, spawned, created once per intake on first use and shut down when the intake stops); smaller
ones are read inline, where a round trip to a process would only add latency. With
``MSCC_INTAKE_PARSE_POOL=0`` everything is read inline.

What is sent is a pure function of the bytes (``hl7_scan.scan_frame``, ``fhir_parse``): the same
function runs inline or in a worker and returns the same value, so the answers and records do not
depend on where it ran. Storing and answering stay on the loop (store first, then acknowledge).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar, cast

log = logging.getLogger(__name__)

T = TypeVar("T")


class OffloadError(RuntimeError):
    """The pooled function failed unexpectedly (its expected refusals are values, never exceptions)."""


@dataclass(frozen=True)
class _Failed:
    kind: str
    text: str
    trace: str


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """Run in a worker: an unexpected exception comes back as a value, since not every exception can
    be pickled back (one that cannot would break the pool for everyone)."""
    try:
        return fn(*args)
    except Exception as exc:  # reported to the caller, which raises it
        return _Failed(type(exc).__name__, str(exc), traceback.format_exc())


WORKER_NICENESS = 10


PARENT_CHECK_S = 1.0


def _worker_started(parent: int, modules: tuple[str, ...]) -> None:
    """Run as each worker starts (``parent``: intake's process id).

    A lower CPU priority than the event loop's process: reading a large input is batch work; on a busy
    machine the scheduler then runs the loop (small ACKs, a few hundred microseconds each) as soon as
    it has something to do, instead of sharing time slices with a worker.

    The worker ends when intake does: a killed intake (``kill -9``: no shutdown runs) would otherwise
    leave its workers running for good, a set more at each restart. Then it imports ``modules``, what
    the pooled functions need, so that no input waits for that."""
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    for name in modules:
        importlib.import_module(name)


def _ready() -> int:
    return os.getpid()


class ParsePool:
    """Runs ``fn(*args)`` in a worker process when ``size`` is at least ``threshold`` bytes and the pool
    has workers; inline otherwise. A pool whose worker died is replaced, and that input read inline."""

    def __init__(self, workers: int, threshold: int, modules: tuple[str, ...] = ()) -> None:
        self.workers = workers
        self.threshold = threshold
        self.modules = modules  # imported by each worker as it starts
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False  # after shutdown: inline, never a new pool
        self.submitted = 0  # inputs sent to a worker (for tests and the bench)
        self.offloaded = 0  # inputs read in a worker
        self.warmed: set[int] = set()  # the workers started by ``warm`` (process ids)

    def pooled(self, size: int) -> bool:
        return self.workers > 0 and size >= self.threshold and not self._closed

    async def warm(self) -> None:
        """Start every worker now (each imports ``modules`` as it starts). Spawning a worker and
        importing the FHIR models takes a second or two of CPU; done on the first large input instead,
        it would slow every other sender's ACK while that input waits. A failure is logged: the pool
        then starts on first use."""
        if self.workers == 0 or self._closed:
            return
        executor = self._pool()
        loop = asyncio.get_running_loop()
        try:
            pids = await asyncio.gather(*(loop.run_in_executor(executor, _ready) for _ in range(self.workers)))
            self.warmed = set(pids)
        except (BrokenProcessPool, ImportError, OSError) as exc:
            log.error("intake parse pool not started; it starts on the first large input", extra={"error": repr(exc)})
            if self._executor is executor:
                self._executor = None
                executor.shutdown(wait=False, cancel_futures=True)

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_started,
                initargs=(os.getpid(), self.modules),
            )
        return self._executor

    async def run(self, fn: Callable[..., T], *args: Any, size: int) -> T:
        if not self.pooled(size):
            return fn(*args)
        executor = self._pool()
        self.submitted += 1
        try:
            result = await asyncio.get_running_loop().run_in_executor(executor, _call, fn, args)
        except BrokenProcessPool:
            log.error("intake parse pool broken (a worker died); replacing it, this input is read inline")
            if self._executor is executor:
                self._executor = None
                executor.shutdown(wait=False, cancel_futures=True)
            return fn(*args)
        if isinstance(result, _Failed):
            raise OffloadError(f"{result.kind}: {result.text}\n{result.trace}")
        self.offloaded += 1
        return cast(T, result)

    async def shutdown(self) -> None:
        """Stop the workers (after the work they hold), without blocking the loop meanwhile."""
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
