"""ER7 reader benchmark: the hub's own lean HL7v2 readers against hl7apy's ``parse_message``.

Run from the repository root with the package installed::

    python bench/er7_reader.py            # about 40 s
    python bench/er7_reader.py --quick    # about 12 s smoke run
    python bench/er7_reader.py --help

No database, no network: every reader runs in this process, one after the other, on the same distinct
realistic messages (ADT^A01 admissions and REF^I12 referrals, v2.4 / v2.5, about 1 KB, built by
``bench/mapping.py``). Readers (see bench/README.md):
  * intake header: what intake does before it acknowledges (``segment_spans`` + ``read_message`` of
    ``services/intake/header.py``: MSH, character set, segment ids, NHS number checks) on the raw bytes;
  * er7 parse: ``shared.er7.parse_message``, the mapper's split into segments and fields;
  * er7 parse+read: the same, then reading MSH-10, PID-3.1, PID-5.1 and PV1-19.1 (A01) or RF1-6.1 (I12);
  * hl7apy parse: ``hl7apy.parser.parse_message`` with its defaults (tolerant validation, groups found);
  * hl7apy no groups: the same with ``find_groups=False``;
  * hl7apy parse+read: the default parse, then the same fields as "er7 parse+read".
Readers take turns in short slices (``--rounds``), so load from other processes falls on all of them
alike. Costs are this process's CPU time per message in each slice; the best slice (the least disturbed,
as ``timeit`` advises) gives the ratios, and the median slice and the wall-clock rate are shown beside it.
Figures are printed, never asserted; the exit status is 0 unless a reader fails on a message.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from _common import banner, finish, fmt
from hl7apy.parser import parse_message as hl7apy_parse
from mapping import MessageFactory

from services.intake.header import read_message
from shared.er7 import parse_message as er7_parse
from shared.er7 import segment_spans

BASELINE = "hl7apy parse"  # the row every ratio is taken against
# The same fields read by both libraries: the control id, the patient's first identifier and family name,
# and the key the mapper derives the workload's main resource id from.
KEY_FIELD = {"A01": ("PV1", 19), "I12": ("RF1", 6)}


@dataclass(frozen=True)
class Sample:
    """One message in the two forms the readers take: the bytes intake receives, the text the mapper reads."""

    workload: str
    data: bytes
    text: str


Reader = Callable[[Sample], tuple[str, ...]]


def intake_header(sample: Sample) -> tuple[str, ...]:
    read = read_message(sample.data, segment_spans(sample.data), default_charset="utf-8", fallback_charset="cp1252")
    return (read.header.control_id,)


def er7_only(sample: Sample) -> tuple[str, ...]:
    er7_parse(sample.text)
    return ()


def er7_read(sample: Sample) -> tuple[str, ...]:
    msg = er7_parse(sample.text)
    msh, pid = msg.first("MSH"), msg.first("PID")
    name, number = KEY_FIELD[sample.workload]
    key = msg.first(name)
    assert msh is not None and pid is not None and key is not None
    return (msh.value(10), pid.value(3), pid.value(5), key.value(number))


def hl7apy_only(sample: Sample) -> tuple[str, ...]:
    hl7apy_parse(sample.text)
    return ()


def hl7apy_flat(sample: Sample) -> tuple[str, ...]:
    hl7apy_parse(sample.text, find_groups=False)
    return ()


def hl7apy_read(sample: Sample) -> tuple[str, ...]:
    msg = hl7apy_parse(sample.text)
    pid = msg.pid
    key = msg.pv1.pv1_19.cx_1 if sample.workload == "A01" else msg.rf1.rf1_6.ei_1
    return (
        str(msg.msh.msh_10.value),
        str(pid.pid_3[0].cx_1.value),
        str(pid.pid_5[0].xpn_1.to_er7()),
        str(key.value),
    )


READERS: list[tuple[str, Reader]] = [
    ("intake header", intake_header),
    ("er7 parse", er7_only),
    ("er7 parse+read", er7_read),
    ("hl7apy parse", hl7apy_only),
    ("hl7apy no groups", hl7apy_flat),
    ("hl7apy parse+read", hl7apy_read),
]


@dataclass
class Tally:
    """One reader's slices: messages read, wall and CPU seconds of each."""

    slices: list[tuple[int, float, float]] = field(default_factory=list)

    @property
    def messages(self) -> int:
        return sum(n for n, _, _ in self.slices)

    def cpu_us(self, best: bool) -> float:
        """CPU microseconds per message: of the best slice (least disturbed by other work, as ``timeit``
        advises), or the median slice."""
        costs = sorted(cpu * 1e6 / n for n, _, cpu in self.slices if n)
        if not costs:
            return math.nan
        return costs[0] if best else statistics.median(costs)

    def wall_rate(self) -> float:
        wall = sum(w for _, w, _ in self.slices)
        return self.messages / wall if wall > 0 else math.nan


def build_samples(workload: str, count: int) -> list[Sample]:
    factory = MessageFactory()
    return [Sample(workload, data, data.decode("utf-8")) for data in factory.build(workload, count)]


def run_slice(reader: Reader, samples: list[Sample], start: int, seconds: float) -> tuple[int, float, float, int]:
    """Read messages round-robin from ``start`` until ``seconds`` of wall time have passed (at least one):
    messages read, wall and CPU seconds, and where the next slice goes on."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    deadline = wall0 + seconds
    done, index = 0, start
    while True:
        reader(samples[index])
        done += 1
        index = (index + 1) % len(samples)
        if time.perf_counter() >= deadline:
            break
    return done, time.perf_counter() - wall0, time.process_time() - cpu0, index


def agreement(samples: list[Sample]) -> str:
    """Whether the lean reader and hl7apy read the same four fields of every message (printed, not asserted)."""
    same = sum(er7_read(s) == hl7apy_read(s) for s in samples)
    first = samples[0]
    return f"{same}/{len(samples)} messages read alike (e.g. {er7_read(first)} vs {hl7apy_read(first)})"


def measure(workload: str, samples: list[Sample], seconds: float, rounds: int) -> dict[str, Tally]:
    tallies = {name: Tally() for name, _ in READERS}
    positions = dict.fromkeys(tallies, 0)
    for _, reader in READERS:  # warm-up, untimed: imports, hl7apy's structure tables, caches
        for sample in samples[:3]:
            reader(sample)
    slice_s = seconds / rounds
    for turn in range(rounds):
        order = READERS[turn % len(READERS) :] + READERS[: turn % len(READERS)]  # no reader always goes first
        for name, reader in order:
            done, wall, cpu, positions[name] = run_slice(reader, samples, positions[name], slice_s)
            tallies[name].slices.append((done, wall, cpu))
    return tallies


def report(results: dict[str, dict[str, Tally]], cores: int) -> None:
    print()
    print(
        "ER7 READERS (one process, one core; CPU time per message in the best and the median slice; "
        "ratios from the best slices, against 'hl7apy parse' on the same messages)"
    )
    head = (
        f"{'workload':<8} {'reader':<18} {'messages':>8} {'best us':>9} {'median us':>9} {'msg/s CPU':>10} "
        f"{'msg/s wall':>10} {'x hl7apy':>9}"
    )
    print(head)
    print("-" * len(head))
    for workload, tallies in results.items():
        base = tallies[BASELINE].cpu_us(best=True)
        for name, tally in tallies.items():
            best = tally.cpu_us(best=True)
            print(
                f"{workload:<8} {name:<18} {tally.messages:>8} {fmt(best, '9.1f')} "
                f"{fmt(tally.cpu_us(best=False), '9.1f')} {fmt(1e6 / best, '10.0f')} "
                f"{fmt(tally.wall_rate(), '10.0f')} {fmt(base / best, '9.1f')}"
            )
    print("  (msg/s wall is lower than msg/s CPU when other processes take this core part of the time)")
    print()
    print("SUMMARY (best slices; the median slices in brackets)")
    for workload, tallies in results.items():

        def times(fast: str, slow: str, t: dict[str, Tally] = tallies) -> str:
            best = t[slow].cpu_us(best=True) / t[fast].cpu_us(best=True)
            median = t[slow].cpu_us(best=False) / t[fast].cpu_us(best=False)
            return f"{best:.0f}x ({median:.0f}x)"

        print(
            f"  {workload}: er7 parse {times('er7 parse', BASELINE)} hl7apy parse_message; "
            f"er7 parse+read {times('er7 parse+read', 'hl7apy parse+read')} hl7apy parse+read; "
            f"intake header read {times('intake header', BASELINE)} hl7apy parse_message"
        )
        ceiling = 1e6 / tallies[BASELINE].cpu_us(best=True) * cores
        print(
            f"  {workload}: hl7apy on all {cores} cores would read at most {ceiling:.0f} msg/s "
            "(the intake target is 1500 msg/s on 2 cores, and reading is a small part of each message's work)"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=50, help="distinct messages per workload (default 50)")
    p.add_argument("--seconds", type=float, default=3.0, help="time per reader and workload (default 3)")
    p.add_argument("--rounds", type=int, default=6, help="slices each reader's time is cut into (default 6)")
    p.add_argument("--workloads", default="A01,I12", help="workloads to run (default A01,I12)")
    p.add_argument("--quick", action="store_true", help="~12 s smoke run (20 messages, 0.8 s per reader)")
    args = p.parse_args(argv)
    if args.quick:
        args.messages, args.seconds, args.rounds = 20, 0.8, 2
    if args.messages < 1 or args.rounds < 1:
        p.error("--messages and --rounds must be at least 1")
    if not 0 < args.seconds <= 60:
        p.error("--seconds must be above 0 and at most 60")
    args.workload_list = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not args.workload_list or any(w not in KEY_FIELD for w in args.workload_list):
        p.error("--workloads: A01 and/or I12")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cores = banner("ER7 reader bench")
    started = time.perf_counter()
    results: dict[str, dict[str, Tally]] = {}
    for workload in args.workload_list:
        samples = build_samples(workload, args.messages)
        mean = sum(len(s.data) for s in samples) / len(samples)
        print(
            f"\n{workload}: {len(samples)} distinct messages, mean {mean:.0f} bytes, "
            f"{len(READERS)} readers x {args.seconds:g} s ({datetime.now(UTC):%H:%M:%S} UTC)",
            flush=True,
        )
        print(f"  fields: {agreement(samples)}", flush=True)
        results[workload] = measure(workload, samples, args.seconds, args.rounds)
    report(results, cores)
    return finish(started, True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted (nothing to clean up: no database, no child process)", file=sys.stderr)
        sys.exit(130)
