"""Replay benchmark: ``mscc replay`` of a large gzip message log into a real intake, its rate and the
peak memory of the replay process.

Run from the repository root with the package installed::

    python bench/replay.py            # 100,000 messages, a few minutes
    python bench/replay.py --quick    # 5,000 messages, about 30 s
    python bench/replay.py --help

It generates realistic messages (REF^I12 referrals with PRD, ADT^A01 admissions with PV1, ~1 KB each,
four sending trusts; ``mllp_ingest.hl7_message``) into one gzip log, starts its own mongod (unless
``MONGODB_URI`` is set) and ``mscc intake`` in a child process on free loopback ports, and runs
``mscc replay`` in another child process, which reports its own peak resident memory
(``resource.getrusage``). Figures are printed, never asserted; the exit status is 1 only when a message
was not acknowledged or not stored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import banner, finish, guarded, local_mongodb
from mllp_ingest import hl7_message

from shared.mongod import free_port
from shared.store import connect

SCRIPT = str(Path(__file__).resolve())
START_TIMEOUT_S = 60.0


def generate(path: Path, count: int) -> int:
    """Write ``count`` messages to a gzip log (LF between messages, as many engines log them)."""
    now = datetime.now(UTC)
    prefix = uuid.uuid4().hex[:8]
    with gzip.open(path, "wb", compresslevel=6) as out:
        for index in range(count):
            out.write(hl7_message(index, f"{prefix}-{index:07d}", now) + b"\n")
    return path.stat().st_size


def replay_child(argv: list[str]) -> None:
    """Child-process entry: run ``mscc replay argv`` and print its peak RSS (KiB) on the last line."""
    from services.cli import main

    code = main(["replay", *argv])
    print(f"PEAK_RSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", flush=True)
    sys.exit(code)


def start_intake(uri: str, db_name: str, state: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``mscc intake`` in its own session, on free ports; waits until MLLP accepts connections."""
    port = free_port()
    env = {
        **os.environ,
        "MONGODB_URI": uri,
        "MSCC_DB_NAME": db_name,
        "MSCC_MLLP_PORT": str(port),
        "MSCC_HTTP_PORT": str(free_port()),
        "MSCC_STATE_DIR": str(state),
        "MSCC_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "intake"], env=env, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mscc intake exited with status {proc.returncode}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("mscc intake did not listen within 60 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_replay(log: Path, port: int, opts: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], int, float]:
    """The replay's JSON summary, its peak RSS (KiB) and its wall time."""
    argv = [str(log), "--port", str(port), "--json", "--quiet"]
    argv += ["--concurrency", str(opts.concurrency), "--window", str(opts.window), "--timeout", "60"]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, SCRIPT, "--replay-child", *argv], capture_output=True, cwd=workdir, check=False
    )
    seconds = time.perf_counter() - started
    lines = done.stdout.decode().strip().splitlines()
    if not lines or not lines[-1].startswith("PEAK_RSS_KB "):
        raise RuntimeError(f"the replay did not finish: {done.stderr.decode()[-2000:]}")
    return json.loads("\n".join(lines[:-1])), int(lines[-1].split()[1]), seconds


async def count_ready(uri: str, db_name: str, drop: bool) -> int:
    client = connect(uri, app_name="mscc-bench-replay")
    try:
        db = client[db_name]
        count = await db.messages.count_documents({"status": "ready"})
        if drop:
            await client.drop_database(db_name)
        return count
    finally:
        await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5,000 messages")
    parser.add_argument("--count", type=int, help="messages to generate (default 100,000)")
    parser.add_argument("--concurrency", type=int, default=4, help="replay connections (default 4)")
    parser.add_argument("--window", type=int, default=16, help="messages in flight per connection (default 16)")
    opts = parser.parse_args()
    count = opts.count or (5_000 if opts.quick else 100_000)
    banner("replay benchmark")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mscc-bench-replay-") as tmp, local_mongodb() as (uri, _):
        work = Path(tmp)
        log = work / "messages.hl7.gz"
        t0 = time.perf_counter()
        size = generate(log, count)
        print(f"generated {count:,} messages in {time.perf_counter() - t0:.1f} s: {log.name}, {size / 1e6:.1f} MB gzip")
        db_name = f"bench_replay_{uuid.uuid4().hex[:8]}"
        intake, port = start_intake(uri, db_name, work / "state")
        try:
            summary, rss_kb, seconds = run_replay(log, port, opts, work)
        finally:
            stop(intake)
        stored = asyncio.run(count_ready(uri, db_name, drop=True))
    accepted = int(summary["accepted"])
    print(
        f"\nreplay: {summary['messages']:,} messages, {accepted:,} accepted, {summary['messages'] - accepted:,} not;"
        f" {opts.concurrency} connections x window {opts.window}"
    )
    print(f"  rate      {summary['rate']:,.0f} msg/s (replay's own clock), {count / seconds:,.0f} msg/s wall")
    print(f"  peak RSS  {rss_kb / 1024:.0f} MiB (the replay process, interpreter and imports included)")
    print(f"  stored    {stored:,} ready in the intake's database")
    return finish(started, accepted == count and stored == count)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--replay-child":
        replay_child(sys.argv[2:])
    guarded(main, "the intake, the mongod and the generated log")
