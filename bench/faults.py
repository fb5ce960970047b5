"""Fault harness: proves that what the hub acknowledges is processed exactly once and notified in order,
whatever process dies.

Run from the repository root with the package installed::

    python bench/faults.py             # the benchmark: every scenario at length, a few minutes
    python bench/faults.py --quick     # every scenario briefly, about 60-90 s (the test suite runs this)
    python bench/faults.py --only mongod --only receiver   # scenarios whose name contains a word

It always starts its own mongod (single-node replica set, in a temporary folder: a scenario kills it and
starts it again on the same data), then ``mscc intake``, ``mscc mapper`` and ``mscc notifier`` as three
processes. Each trust (four, with colliding local numbers) registers an API client and subscribes to its
referrals through the API with its own token (the MSCC team, the development client, adds a data-quality
subscription); a rest-hook receiver in this process records every notification and checks its signature.
One engine per trust sends REF^I12, ADT^A01 and ADT^A08 over its own MLLP connection at a steady pace,
resending the message in hand (same bytes) until it has a positive ACK.

Each scenario runs traffic, strikes at random moments (kill -9 or SIGTERM of a part, then a restart;
mongod killed and restarted; the receiver down, answering 500, or 503 with Retry-After), lets the backlog
drain, and prints one row (see bench/README.md). Exit status 1 on any loss, duplicate effect, missing or
disordered notification, or a duplicate delivery the notifier's at-least-once rule does not explain.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from _common import banner, finish, fmt, guarded
from fault_harness.hub import Hub
from fault_harness.messages import TRUSTS
from fault_harness.receiver import Receiver
from fault_harness.scenarios import SCENARIOS, Harness, Options, Result
from fault_harness.sender import Engines

QUICK = Options(rate=40, before_s=1.5, after_s=1.5, kills=1, outage_s=2, drain_s=60, seed=7)
FULL = Options(rate=60, before_s=8, after_s=8, kills=3, outage_s=8, drain_s=240, seed=7)
# Shorter leases and backoff in the quick run, so that a killed part's work is taken over within its few
# seconds; the full run keeps the hub's defaults.
QUICK_SETTINGS = {
    "MSCC_MAPPER_LEASE_S": "4",
    "MSCC_NOTIFIER_LEASE_S": "4",
    "MSCC_LEASE_HEARTBEAT_S": "1",
    "MSCC_STOP_TIMEOUT_S": "3",
    "MSCC_NOTIFIER_BACKOFF_BASE_S": "0.5",
    "MSCC_NOTIFIER_BACKOFF_MAX_S": "2",
}

COLUMNS = (
    ("scenario", "<17"),
    ("sent", ">6"),
    ("acked", ">6"),
    ("nacks", ">5"),
    ("no-ans", ">6"),
    ("lost", ">4"),
    ("stored2x", ">8"),
    ("unproc", ">6"),
    ("dup-eff", ">7"),
    ("events", ">6"),
    ("dup-deliv", ">9"),
    ("missing", ">7"),
    ("disorder", ">8"),
    ("recovery", ">8"),
    ("verdict", "<7"),
)


def row(result: Result) -> str:
    t, f = result.tally, result.found
    dup = f"{f.duplicate_deliveries}{'*' if f.duplicate_deliveries and result.duplicates_allowed else ''}"
    recovery = f"{fmt(result.recovery_s, '.1f')} s" if result.recovery_s is not None else "never"
    values = (
        result.name,
        len(t.sent),
        len(t.acked),
        t.negative,
        t.unanswered,
        f.lost,
        f.stored_twice,
        f.unprocessed,
        f.duplicate_effects,
        f.delivered,
        dup,
        f.missing,
        f.disorder,
        recovery,
        "FAIL" if result.failed else "ok",
    )
    return " ".join(format(v, spec) for v, (_, spec) in zip(values, COLUMNS, strict=True))


def header() -> str:
    return " ".join(format(name, spec) for name, spec in COLUMNS)


async def run(options: Options, settings: dict[str, str], only: list[str]) -> bool:
    chosen = [s for s in SCENARIOS if not only or any(word.lower() in s[0].lower() for word in only)]
    with tempfile.TemporaryDirectory(prefix="mscc-faults-") as tmp:
        hub = Hub(Path(tmp), settings)
        receiver = Receiver()
        results: list[Result] = []
        try:
            await receiver.up()
            await hub.start()
            await hub.subscribe([ods for _, ods in TRUSTS], receiver.url, receiver.secrets)
            engines = Engines(hub.mllp_port, options.rate)
            harness = Harness(hub, receiver, engines, options)
            print(f"{len(chosen)} scenario(s); {options.rate:.0f} messages/s over {len(TRUSTS)} connections\n")
            print(header())
            for name, fault, duplicates_allowed in chosen:
                result = await harness.run(name, fault, duplicates_allowed)
                results.append(result)
                print(row(result), flush=True)
        finally:
            await hub.stop()
            await receiver.down()
        print("\n* a repeated delivery after the notifier or the database was stopped: at least once, allowed")
        for result in results:
            for line in [*result.notes, *result.found.details[:20]]:
                print(f"{result.name}: {line}")
            if result.found.bad_signatures:
                print(f"{result.name}: {result.found.bad_signatures} notification(s) with a bad signature")
        return len(results) == len(chosen) and not any(r.failed for r in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every scenario briefly (about 60-90 s)")
    parser.add_argument("--only", action="append", default=[], help="run the scenarios whose name has this word")
    parser.add_argument("--rate", type=float, help="messages per second, all engines together")
    parser.add_argument("--seed", type=int, help="seed of the random fault moments")
    args = parser.parse_args()
    options = QUICK if args.quick else FULL
    if args.rate or args.seed is not None:
        options = Options(**{**options.__dict__, "rate": args.rate or options.rate, "seed": args.seed or options.seed})
    started = time.perf_counter()
    banner("faults")
    ok = asyncio.run(run(options, QUICK_SETTINGS if args.quick else {}, args.only))
    return finish(started, ok)


if __name__ == "__main__":
    guarded(main, "the mscc processes, the receiver and the local mongod")
