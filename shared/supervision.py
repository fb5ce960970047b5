"""Supervision of background loops: what runs, when it last finished a cycle, and restarts with backoff.

    TaskRegistry   one per process: every background task's health; ``/readyz`` asks it which are unwell
    TaskHealth     one task: state, last completed cycle, restarts, last error
    Heartbeat      what a loop calls after each completed cycle (``beat``) or failed one (``failed``)
    supervise()    runs a loop until ``stop``; if the loop raises, or returns while ``stop`` is not set,
                   the error is logged and recorded and the loop is started again after a backoff
                   (``base * 2**n``, capped at ``max_s``; ``n`` resets once a run completes a cycle)

A task is unwell when it is dead (its supervisor ended, or was cancelled, without being asked to stop)
or stalled (no completed cycle within ``stale_after_s`` of its last one, or of its start). A loop that
keeps failing keeps being restarted and, having completed no cycle, shows as stalled: it is never
reported well while it does no work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from .retry import Backoff as JobBackoff

log = logging.getLogger(__name__)

State = Literal["starting", "running", "restarting", "stopped", "dead"]


@dataclass
class TaskHealth:
    """One background task as the registry sees it (monotonic seconds for ages, UTC for display)."""

    name: str
    stale_after_s: float
    state: State = "starting"
    started_at: float = 0.0
    last_cycle_at: float | None = None
    last_cycle_wall: datetime | None = None
    cycles: int = 0
    restarts: int = 0
    last_error: str | None = None
    last_error_wall: datetime | None = None
    task: asyncio.Task[Any] | None = field(default=None, repr=False)

    def current_state(self) -> State:
        """``dead`` when the supervising asyncio task ended without being stopped."""
        if self.task is not None and self.task.done() and self.state != "stopped":
            return "dead"
        return self.state

    def problem(self, now: float) -> str | None:
        """Why this task is unwell at ``now`` (None when it is well)."""
        state = self.current_state()
        if state == "stopped":
            return None
        if state == "dead":
            return f"{self.name}: dead" + (f" (last error: {self.last_error})" if self.last_error else "")
        since = self.last_cycle_at if self.last_cycle_at is not None else self.started_at
        if now - since > self.stale_after_s:
            what = "no completed cycle" if self.last_cycle_at is None else "no cycle completed"
            text = f"{self.name}: {what} for {now - since:.0f} s (expected within {self.stale_after_s:.0f} s)"
            return text + (f"; last error: {self.last_error}" if self.last_error else "")
        return None

    def report(self, now: float) -> dict[str, Any]:
        """The JSON view ``/readyz`` shows."""
        since = self.last_cycle_at if self.last_cycle_at is not None else None
        return {
            "state": self.current_state(),
            "healthy": self.problem(now) is None,
            "last_cycle_at": _iso(self.last_cycle_wall),
            "seconds_since_cycle": round(now - since, 3) if since is not None else None,
            "stale_after_s": self.stale_after_s,
            "cycles": self.cycles,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_error_at": _iso(self.last_error_wall),
        }


def _iso(when: datetime | None) -> str | None:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z") if when else None


class TaskRegistry:
    """Every background task of this process. Not thread-safe: used from one event loop."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._tasks: dict[str, TaskHealth] = {}
        self.clock = clock
        self.wall = wall

    def register(self, name: str, stale_after_s: float) -> Heartbeat:
        """Start tracking ``name`` (again, if it was registered before) and return its heartbeat."""
        health = self._tasks.get(name)
        if health is None:
            health = self._tasks[name] = TaskHealth(name, stale_after_s)
        health.stale_after_s = stale_after_s
        health.started_at = self.clock()
        health.state = "starting"
        return Heartbeat(self, health)

    def health(self, name: str) -> TaskHealth:
        return self._tasks[name]

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def problems(self) -> dict[str, str]:
        """What is unwell: task name -> why (empty when every task is well)."""
        now = self.clock()
        return {name: p for name in self.names() if (p := self._tasks[name].problem(now))}

    def report(self) -> dict[str, dict[str, Any]]:
        now = self.clock()
        return {name: self._tasks[name].report(now) for name in self.names()}


class Heartbeat:
    """A loop's handle on its own health; ``Heartbeat.none()`` for loops run without a registry."""

    def __init__(self, registry: TaskRegistry | None, health: TaskHealth | None) -> None:
        self._registry = registry
        self._health = health

    @staticmethod
    def none() -> Heartbeat:
        return Heartbeat(None, None)

    @property
    def cycles(self) -> int:
        return self._health.cycles if self._health else 0

    def beat(self) -> None:
        """A cycle completed (whether or not there was work)."""
        if self._registry is None or self._health is None:
            return
        self._health.last_cycle_at = self._registry.clock()
        self._health.last_cycle_wall = self._registry.wall()
        self._health.cycles += 1
        self._health.state = "running"

    def failed(self, exc: BaseException) -> None:
        """A cycle failed; the loop goes on (no beat: a loop that only fails goes stale)."""
        if self._registry is None or self._health is None:
            return
        self._health.last_error = f"{type(exc).__name__}: {exc}"[:500]
        self._health.last_error_wall = self._registry.wall()

    def _set(self, state: State) -> None:
        if self._health is not None:
            self._health.state = state

    def _restarted(self) -> None:
        if self._health is not None:
            self._health.restarts += 1


class Backoff(JobBackoff):
    """Restart delays: ``base_s * 2**n`` capped at ``max_s`` (``n``: restarts since the last good cycle);
    the hub's job backoff (``shared/retry.py``) without jitter, so a restart's delay is predictable."""

    def __init__(self, base_s: float = 1.0, max_s: float = 60.0) -> None:
        super().__init__(base_s, max_s, jitter=0.0)


Loop = Callable[[Heartbeat], Awaitable[object]]


async def supervise(
    name: str,
    loop: Loop,
    stop: asyncio.Event,
    registry: TaskRegistry,
    *,
    stale_after_s: float,
    backoff: Backoff | None = None,
) -> None:
    """Run ``loop(heartbeat)`` until ``stop`` is set, restarting it after any error or early return.

    Never raises for the loop's errors (each is logged with its traceback and recorded as the task's
    last error); cancellation propagates (the task then shows as dead unless ``stop`` was set).
    """
    backoff = backoff or Backoff()
    heartbeat = registry.register(name, stale_after_s)
    health = registry.health(name)
    current = asyncio.current_task()
    if current is not None:
        health.task = current
    failures = 0
    try:
        while not stop.is_set():
            cycles = heartbeat.cycles
            heartbeat._set("running")
            try:
                await loop(heartbeat)
                if stop.is_set():
                    break
                raise RuntimeError("the loop returned without being asked to stop")
            except Exception as exc:
                heartbeat.failed(exc)
                failures = 1 if heartbeat.cycles > cycles else failures + 1
                delay = backoff.delay(failures)
                log.exception(
                    "background task stopped unexpectedly; restarting it",
                    extra={"task": name, "restart_in_s": delay, "failures": failures},
                )
                heartbeat._set("restarting")
                heartbeat._restarted()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
    finally:
        heartbeat._set("stopped" if stop.is_set() else "dead")
