"""The hub's parts as separate processes, for the benchmarks that kill and restart them.

Each ``mscc <part>`` (intake, mapper, notifier) runs in its own session, so a Ctrl-C in the terminal
reaches only the benchmark, which then stops them in order. ``hub_env`` gives them one database, free
ports and quiet logs; ``wait_until`` measures how long something takes to come true.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent


def hub_env(uri: str, db_name: str, mllp_port: int, http_port: int, **settings: str) -> dict[str, str]:
    """The environment of a part: this process's, without any ``MSCC_*`` or ``MONGODB_URI`` of its own,
    pointed at ``uri``/``db_name`` and the given ports, callbacks to 127.0.0.1 allowed; ``settings`` are
    more variables (``MSCC_MAPPER_LEASE_S="4"``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSCC_") and k != "MONGODB_URI"}
    env.update(
        MONGODB_URI=uri,
        MSCC_DB_NAME=db_name,
        MSCC_MLLP_PORT=str(mllp_port),
        MSCC_HTTP_PORT=str(http_port),
        MSCC_LOG_LEVEL="WARNING",
        MSCC_NOTIFIER_ALLOWED_HOSTS="127.0.0.1",
        MSCC_NOTIFIER_ALLOW_HTTP="true",
    )
    env.update(settings)
    return env


class Part:
    """One ``mscc <part>`` process, in its own session. Its log goes to ``log`` (appended across
    restarts) or nowhere."""

    def __init__(self, name: str, env: dict[str, str], log: Path | None = None) -> None:
        self.name = name
        self.env = env
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.started_at = 0.0  # time.monotonic() of the last start

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        out: IO[bytes] | int = asyncio.subprocess.DEVNULL
        if self.log is not None:
            out = self.log.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.cli",
                self.name,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        finally:
            if not isinstance(out, int):
                out.close()
        self.starts += 1
        self.started_at = time.monotonic()

    async def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is released."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def terminate(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, as docker or systemd stop a process; its exit status (None: it had to be killed)."""
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            await self.kill()
            return None

    async def stop(self) -> None:
        await self.terminate()


async def wait_until(check: Callable[[], Awaitable[bool]], max_wait: float, poll_s: float = 0.05) -> float | None:
    """Seconds until ``await check()`` is true, or None after ``max_wait``."""
    started = time.monotonic()
    while time.monotonic() - started < max_wait:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(poll_s)
    return None
