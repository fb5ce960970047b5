"""What every benchmark script does around its measurements: the banner, a local mongod, the finish."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from shared.mongod import LocalMongod, find_mongod


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
