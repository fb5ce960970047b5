"""What every benchmark script does around its measurements: the banner, a local mongod, the finish."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from shared.mongod import LocalMongod, find_mongod
from shared.settings import Settings


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def banner(name: str) -> int:
    """Print what machine the figures come from (and a warning when it is busy); the core count."""
    count = cores()
    print(
        f"{name}: {platform.python_implementation()} {platform.python_version()}, {count} cores, "
        f"load average {load()} (other work on this machine skews figures)"
    )
    if os.getloadavg()[0] >= count * 0.5:
        print(
            f"NOTE: load average {os.getloadavg()[0]:.2f} on {count} cores: other processes are busy, figures will vary"
        )
    return count


@contextlib.contextmanager
def local_mongodb() -> Iterator[tuple[str, int | None]]:
    """``MONGODB_URI``, or a mongod started in a temporary folder (and stopped, its data removed, on exit):
    yields the URI and the mongod's pid (None when not ours)."""
    uri = os.environ.get("MONGODB_URI")
    if uri:
        yield uri, None
        return
    cache = Path(os.environ.get("MSCC_CACHE_DIR", Path.home() / ".cache" / "mscc"))
    with tempfile.TemporaryDirectory(prefix="mscc-bench-mongod-") as tmp:
        mongod = LocalMongod(find_mongod(cache), Path(tmp) / "db", cache_gb=0.25)
        # its own session: a Ctrl-C in the terminal reaches only this process, which then cleans up in order
        mongod.start(detach=True)
        try:
            yield mongod.uri, mongod.process.pid if mongod.process else None
        finally:
            mongod.stop()


def finish(started: float, ok: bool) -> int:
    print(f"\ndone in {time.perf_counter() - started:.0f} s; load average now {load()}")
    return 0 if ok else 1


def guarded(main: Callable[[], int], cleaned: str) -> None:
    """Run ``main`` as the script's entry point; Ctrl-C exits 130 after the cleanup it triggers."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print(f"\ninterrupted ({cleaned} were cleaned up)", file=sys.stderr)
        sys.exit(130)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` from /proc (NaN where unavailable)."""
    if pid is None:
        return math.nan
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted, or "-" (as wide as the spec says) where it is missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        width = re.match(r"[<>^]?(\d*)", spec)
        return "-".rjust(int(width.group(1))) if width and width.group(1) else "-"
    return format(value, spec)


def intake_settings(db_name: str, state_dir: Path, host: str = "127.0.0.1") -> Settings:
    """Settings for an intake run by a benchmark: loopback, free ports, quiet logs."""
    return Settings(
        _env_file=None,
        db_name=db_name,
        mllp_host=host,
        mllp_port=0,
        http_port=0,
        state_dir=state_dir,
        log_level="WARNING",
    )


class LineChild:
    """A helper process of a benchmark, driven by one-line commands on its stdin and answering one line
    on its stdout. It starts by printing ``PORT <n>``; ``stop`` (or stdin closing) ends it, and a child
    that does not end within 15 s is killed. It runs in its own session: a Ctrl-C in the terminal reaches
    only the benchmark, which then stops it in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def launch(self, *argv: str, timeout_s: float = 60.0, limit: int = 64 * 1024) -> None:
        """Start ``python argv...`` and wait for its ``PORT`` line; ``RuntimeError`` if it says otherwise."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=limit,
        )
        line = await self.line(timeout_s)
        if not line.startswith("PORT "):
            raise RuntimeError(f"the {self.name} did not start (said {line!r})")
        self.port = int(line.split()[1])

    async def ask(self, command: str, timeout_s: float = 30.0) -> str:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\n".encode())
        await self.proc.stdin.drain()
        return await self.line(timeout_s)

    async def line(self, timeout_s: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        return (await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)).decode().strip()

    async def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.returncode is None:
            with contextlib.suppress(OSError, ConnectionError):
                assert proc.stdin is not None
                proc.stdin.write(b"stop\n")
                await proc.stdin.drain()
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
