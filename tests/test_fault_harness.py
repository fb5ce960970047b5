"""The fault harness (bench/faults.py --quick) runs every scenario against the hub's real processes and
its own mongod, and finds nothing lost, doubled or disordered.

It kills and stops intake, the mapper, the notifier and mongod, and takes the notification receiver down
or makes it fail, under traffic from engines that resend what was not acknowledged; the harness exits 1
on any loss, duplicate effect, missing or disordered notification. Here its table is read back as well,
so that a scenario that silently did not run, or a table without the columns, fails too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {
    "kill -9 intake",
    "kill -9 mapper",
    "kill -9 notifier",
    "SIGTERM intake",
    "SIGTERM mapper",
    "SIGTERM notifier",
    "kill -9 mongod",
    "receiver down",
    "receiver 500",
    "receiver 503",
}
NUMERIC = ("sent", "acked", "nacks", "no-ans", "lost", "stored2x", "unproc", "dup-eff", "events", "dup-deliv")


def _table(output: str) -> dict[str, dict[str, str]]:
    """The harness's table: scenario -> column -> value (a trailing ``*`` kept)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("scenario "))
    columns = lines[start].split()[1:]
    rows: dict[str, dict[str, str]] = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        tokens = line.split()
        if tokens[-2] == "s":  # "2.6 s": the recovery time is two tokens
            tokens = [*tokens[:-3], f"{tokens[-3]} s", tokens[-1]]
        name, values = tokens[: -len(columns)], tokens[-len(columns) :]
        rows[" ".join(name)] = dict(zip(columns, values, strict=True))
    return rows


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_fault_run_loses_nothing() -> None:
    run = subprocess.run(
        [sys.executable, "bench/faults.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    table = _table(run.stdout)
    assert set(table) == SCENARIOS, run.stdout
    for name, row in table.items():
        counts = {column: int(row[column].rstrip("*")) for column in NUMERIC}
        assert counts["sent"] > 0 and counts["events"] > 0, (name, row)
        assert counts["lost"] == 0, (name, row)
        assert counts["acked"] == counts["sent"], (name, row)
        assert counts["stored2x"] == counts["dup-eff"] == counts["unproc"] == 0, (name, row)
        assert row["missing"] == row["disorder"] == "0", (name, row)
        assert row["recovery"] != "never" and row["verdict"] == "ok", (name, row)
