"""MLLP ingest benchmark: HL7v2 over MLLP into MongoDB, against a plain insert_one baseline.

Run from the repository root with the package installed::

    python bench/mllp_ingest.py            # about 1-2 minutes
    python bench/mllp_ingest.py --quick    # about 15 s smoke run
    python bench/mllp_ingest.py --help

It starts its own mongod (single-node replica set, in a temporary folder) unless ``MONGODB_URI`` is set,
works in a fresh database that it drops at the end, and sends traffic to 127.0.0.1 only.

Figures (see bench/README.md):
  * baseline: one ``insert_one`` per message, write concern majority + journaled (the intake's DURABLE),
    into a collection with the same indexes as ``messages``, by 1, 8 and 32 concurrent tasks;
  * MLLP closed loop: 1, 8 and 32 connections, each sending its next message when the ACK arrives;
  * MLLP pipelined: 1 connection keeping ``--window`` messages in flight;
  * open loop: ``--open-rate`` messages/s on a fixed schedule over ``--open-connections`` connections,
    latency measured from the scheduled send time (queueing delay included).
The intake runs in a child process ("child") so that sender and server do not share one event loop,
and, with ``--mode both``, also in the sender's own process and event loop ("in-proc").
Targets are printed, never asserted; the exit status is 1 only if the store check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import LineChild, banner, finish, fmt, guarded, intake_settings, local_mongodb, percentile, proc_cpu_s
from pymongo import IndexModel

from services.runner import run as hub_run
from shared.mllp import Frame, FrameDecoder, frame
from shared.store import DURABLE, Document, Store, connect

HOST = "127.0.0.1"
SCRIPT = str(Path(__file__).resolve())
TARGET_MSG_S = 1500.0
TARGET_P99_MS = 25.0
ACK_TIMEOUT_S = 30.0  # the longest any single ACK is waited for
CHILD_START_TIMEOUT_S = 60.0

# --------------------------------------------------------------------------------------------------
# Realistic HL7v2 messages (~1 KB): ADT^A01 admissions and REF^I12 referrals, unique MSH-10 each.
# --------------------------------------------------------------------------------------------------

_FAMILY = ["SMITH", "JONES", "TAYLOR", "BROWN", "WILLIAMS", "WILSON", "JOHNSON", "DAVIES", "ROBINSON", "WRIGHT"]
_GIVEN = ["MARGARET", "JOHN", "SUSAN", "DAVID", "PATRICIA", "MICHAEL", "ELIZABETH", "PETER", "ANNE", "ROBERT"]
_TOWN = ["READING", "NEWBURY", "BRACKNELL", "WOKINGHAM", "MAIDENHEAD", "SLOUGH", "HENLEY", "THATCHAM"]
_SENDERS = [("PAS", "RHW"), ("EPR", "RBL"), ("CERNER", "RBZ"), ("EMIS", "RYE")]


def _nhs_number(seed: int) -> str:
    """A 10-digit NHS number with a valid modulus-11 check digit."""
    while True:
        body = f"{(seed * 7919 + 4_000_000_00) % 1_000_000_000:09d}"
        total = sum(int(d) * w for d, w in zip(body, range(10, 1, -1), strict=True))
        check = 11 - total % 11
        if check == 11:
            check = 0
        if check != 10:
            return body + str(check)
        seed += 1


def hl7_message(index: int, control_id: str, now: datetime) -> bytes:
    """One ADT^A01 (even ``index``) or REF^I12 (odd) of about 1 KB; ``control_id`` goes in MSH-10."""
    rnd = random.Random(index)
    app, fac = _SENDERS[index % len(_SENDERS)]
    ts = now.strftime("%Y%m%d%H%M%S")
    family, given = rnd.choice(_FAMILY), rnd.choice(_GIVEN)
    sex = "F" if given in ("MARGARET", "SUSAN", "PATRICIA", "ELIZABETH", "ANNE") else "M"
    dob = f"19{rnd.randint(30, 79)}{rnd.randint(1, 12):02d}{rnd.randint(1, 28):02d}"
    nhs = _nhs_number(index)
    mrn = f"{fac}{index:08d}"
    town = rnd.choice(_TOWN)
    street = rnd.choice(["HIGH", "CHURCH", "STATION", "MILL"])
    postcode = f"RG{rnd.randint(1, 42)} {rnd.randint(1, 9)}AB"
    address = f"{rnd.randint(1, 199)} {street} STREET^^{town}^^{postcode}^GBR^H"
    pid = (
        f"PID|1||{nhs}^^^NHS^NH~{mrn}^^^{fac}^MR||{family}^{given}^^^{'MRS' if sex == 'F' else 'MR'}||{dob}|{sex}"
        f"|||{address}||0118{rnd.randint(1000000, 9999999)}^PRN^PH~07{rnd.randint(100000000, 999999999)}^PRN^CP"
        f"||EN^English^ISO639|M^Married^HL70002|C^Church of England^HL70006|||||A^White British^HL70189"
    )
    if index % 2 == 0:
        segments = [
            f"MSH|^~\\&|{app}|{fac}|MSCC-HUB|REN|{ts}||ADT^A01^ADT_A01|{control_id}|P|2.5.1|||||GBR|UNICODE UTF-8",
            f"EVN|A01|{ts}|||C{rnd.randint(1000, 9999)}^PATEL^ANITA^^^DR|{ts}",
            pid,
            f"PD1|||READING GP PRACTICE^^J8{rnd.randint(1000, 9999)}"
            f"|G{rnd.randint(1000000, 9999999)}^HUGHES^CLAIRE^^^DR",
            f"NK1|1|{family}^{rnd.choice(_GIVEN)}|SPO^Spouse^HL70063|{address}|0118{rnd.randint(1000000, 9999999)}",
            f"PV1|1|I|ONC^B{rnd.randint(1, 30):02d}^{rnd.randint(1, 4)}^{fac}^^^^WARD||||"
            f"C{rnd.randint(1000, 9999)}^OKAFOR^EMEKA^^^DR|||370||||19|||C{rnd.randint(1000, 9999)}^OKAFOR^EMEKA^^^DR"
            f"|IP|V{index:09d}^^^{fac}^VN|||||||||||||||||||||||||{ts}",
            "PV2|||^Suspected metastatic spinal cord compression, new bilateral leg weakness",
            "AL1|1|DA|^Penicillin^L|MO|Rash",
            f"DG1|1||C79.5^Secondary malignant neoplasm of bone and bone marrow^I10||{ts}|A",
            f"DG1|2||G95.2^Cord compression, unspecified^I10||{ts}|W",
            f"OBX|1|NM|NEWS2^National Early Warning Score 2^L||{rnd.randint(0, 9)}|score|||||F|||{ts}",
        ]
    else:
        segments = [
            f"MSH|^~\\&|{app}|{fac}|MSCC-HUB|REN|{ts}||REF^I12^REF_I12|{control_id}|P|2.5.1|||||GBR|UNICODE UTF-8",
            f"RF1|A^Active^HL70283|U^Urgent^HL70280|ONC^Oncology^HL70281|R^Referral^HL70282||R{index:09d}|{ts}",
            f"PRD|RP|ADAMS^HELEN^^^DR|ROYAL BERKSHIRE HOSPITAL^^READING^^RG1 5AN|||C{rnd.randint(1000, 9999)}^GMC",
            "PRD|RT|ACUTE ONCOLOGY SERVICE^^^^|ROYAL BERKSHIRE HOSPITAL^^READING^^RG1 5AN",
            pid,
            f"DG1|1||C61^Malignant neoplasm of prostate^I10||{ts}|F",
            f"OBR|1|R{index:09d}||MRIWS^MRI whole spine^L|||{ts}",
            f"OBX|1|TX|SYMPT^Presenting symptoms^L||Thoracic back pain for {rnd.randint(2, 20)} days, "
            "worse lying flat; new leg weakness and numbness||||||F",
            "NTE|1||Please assess today: known metastatic disease, urgent MRI whole spine requested.",
        ]
    return ("\r".join(segments) + "\r").encode("utf-8")


def ack_of(reply: bytes) -> tuple[str, str]:
    """MSA-1 (code) and MSA-2 (the control id acknowledged) of an ACK."""
    for segment in reply.split(b"\r"):
        if segment.startswith(b"MSA"):
            parts = segment.decode("utf-8", "replace").split(segment[3:4].decode("latin-1") or "|")
            return (parts[1] if len(parts) > 1 else "", parts[2] if len(parts) > 2 else "")
    return ("", "")


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    where: str  # "db", "child", "in-proc"
    conns: int
    sent: int
    seconds: float
    latencies_s: list[float] = field(default_factory=list)
    bad_acks: int = 0
    stored_ready: int | None = None  # None: not checked (baseline)
    commit: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    baseline_ref: str = ""
    offered: float = 0.0  # open loop: offered msg/s

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else math.nan

    def ms(self, q: float) -> float:
        return percentile(self.latencies_s, q) * 1000

    @property
    def max_ms(self) -> float:
        return max(self.latencies_s) * 1000 if self.latencies_s else math.nan

    @property
    def store_ok(self) -> bool | None:
        if self.stored_ready is None:
            return None
        return self.stored_ready == self.sent and self.bad_acks == 0 and len(self.latencies_s) == self.sent


# --------------------------------------------------------------------------------------------------
# CPU accounting (to see who burns the 2 cores)
# --------------------------------------------------------------------------------------------------


class CpuMeter:
    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.start: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self.start = {name: proc_cpu_s(pid) for name, pid in self.pids.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        end = {name: proc_cpu_s(pid) for name, pid in self.pids.items()}
        self.used = {name: end[name] - self.start[name] for name in self.pids}

    used: dict[str, float]


# --------------------------------------------------------------------------------------------------
# The intake under test: in a child process, or in this process
# --------------------------------------------------------------------------------------------------


class CommitProbe:
    """Counts the group committer's insert_many batches (observation only: it wraps ``_write``)."""

    def __init__(self, committer: Any) -> None:
        self.batches = 0
        self.docs = 0
        self.write_s = 0.0
        original: Callable[[list[Any]], Awaitable[None]] = committer._write

        async def counted(batch: list[Any]) -> None:
            started = time.perf_counter()
            try:
                await original(batch)
            finally:
                self.batches += 1
                self.docs += len(batch)
                self.write_s += time.perf_counter() - started

        committer._write = counted

    def take(self) -> dict[str, Any]:
        out = {"batches": self.batches, "docs": self.docs, "write_s": self.write_s}
        self.batches, self.docs, self.write_s = 0, 0, 0.0
        return out


async def serve_intake_child(uri: str, db_name: str, profile: str | None) -> None:
    """Child-process entry: run intake, print ``PORT n``, answer ``stats`` lines, stop on ``stop``/EOF."""
    import cProfile

    from services.intake.service import IntakeService
    from shared import heap

    profiler = cProfile.Profile() if profile else None

    client = connect(uri, app_name="mscc-bench-intake")
    with tempfile.TemporaryDirectory(prefix="mscc-bench-intake-") as tmp:
        store = Store(client, db_name)
        await store.ensure_schema()
        service = IntakeService(intake_settings(db_name, Path(tmp)), store)
        probe = CommitProbe(service.committer)
        await service.start()
        heap.settle()  # as `mscc intake` does once started
        if profiler is not None:
            profiler.enable()
        try:
            print(f"PORT {service.mllp.port}", flush=True)
            while True:
                line = await asyncio.to_thread(sys.stdin.readline)
                command = line.strip()
                if command == "stats":
                    stats = probe.take()
                    stats["cpu_s"] = time.process_time()
                    print("STATS " + json.dumps(stats), flush=True)
                elif command in ("stop", ""):
                    break
        finally:
            if profiler is not None and profile:
                profiler.disable()
                profiler.dump_stats(profile)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(15):
                    await service.stop()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await client.close()


class ChildIntake(LineChild):
    """Intake in its own process (``python bench/mllp_ingest.py --serve-intake``)."""

    where = "child"

    def __init__(self, uri: str, db_name: str, profile: str | None = None) -> None:
        super().__init__("intake child")
        self.uri = uri
        self.db_name = db_name
        self.profile = profile

    async def start(self) -> None:
        profile = ["--profile-intake", self.profile] if self.profile else []
        await self.launch(
            SCRIPT, "--serve-intake", "--uri", self.uri, "--db", self.db_name, *profile, timeout_s=CHILD_START_TIMEOUT_S
        )

    async def stats(self) -> dict[str, Any]:
        line = await self.ask("stats", 10)
        if not line.startswith("STATS "):
            raise RuntimeError(f"intake child answered {line!r}")
        return dict(json.loads(line[6:]))


class InProcessIntake:
    """Intake in this process and event loop, sharing them with the senders."""

    where = "in-proc"

    def __init__(self, uri: str, db_name: str) -> None:
        self.uri = uri
        self.db_name = db_name
        self.port = 0
        self.pid: int | None = None  # its CPU is the sender's (same process)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._client: Any = None
        self._service: Any = None
        self._probe: CommitProbe | None = None
        self._cpu0 = 0.0

    async def start(self) -> None:
        from services.intake.service import IntakeService

        self._tmp = tempfile.TemporaryDirectory(prefix="mscc-bench-intake-")
        self._client = connect(self.uri, app_name="mscc-bench-intake")
        store = Store(self._client, self.db_name)
        await store.ensure_schema()
        self._service = IntakeService(intake_settings(self.db_name, Path(self._tmp.name)), store)
        self._probe = CommitProbe(self._service.committer)
        await self._service.start()
        self.port = self._service.mllp.port

    async def stats(self) -> dict[str, Any]:
        assert self._probe is not None
        return self._probe.take()

    async def stop(self) -> None:
        if self._service is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(15):
                    await self._service.stop()
            self._service = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._client.close()
            self._client = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


Intake = ChildIntake | InProcessIntake


# --------------------------------------------------------------------------------------------------
# MLLP senders
# --------------------------------------------------------------------------------------------------


class Conn:
    """One MLLP sender connection; replies come back in send order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(1 << 20)
        self.ready: deque[bytes] = deque()

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
        return cls(reader, writer)

    async def send(self, message: bytes) -> None:
        self.writer.write(frame(message))
        await self.writer.drain()

    async def reply(self) -> bytes:
        while not self.ready:
            async with asyncio.timeout(ACK_TIMEOUT_S):
                chunk = await self.reader.read(1 << 16)
            if not chunk:
                raise ConnectionError("intake closed the connection before replying")
            self.ready.extend(e.data for e in self.decoder.feed(chunk) if isinstance(e, Frame))
        return self.ready.popleft()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class Workload:
    """Unique pre-built messages for one scenario (control ids ``<prefix>-<n>``)."""

    def __init__(self, prefix: str, count: int, first_index: int) -> None:
        now = datetime.now(UTC)
        self.prefix = prefix
        self.items = [
            (f"{prefix}-{n:07d}", hl7_message(first_index + n, f"{prefix}-{n:07d}", now)) for n in range(count)
        ]
        self._next = 0

    def take(self) -> tuple[str, bytes] | None:
        if self._next >= len(self.items):
            return None
        item = self.items[self._next]
        self._next += 1
        return item


class Tally:
    def __init__(self) -> None:
        self.sent = 0
        self.latencies: list[float] = []
        self.bad = 0

    def ack(self, reply: bytes, control_id: str, latency: float) -> None:
        self.latencies.append(latency)
        code, acked = ack_of(reply)
        if code not in ("AA", "CA") or acked != control_id:
            self.bad += 1


async def closed_loop(port: int, work: Workload, conns: int, max_s: float, tally: Tally) -> None:
    """Each connection sends its next message when the previous ACK arrives, until done or ``max_s``."""
    deadline = time.perf_counter() + max_s

    async def one(conn: Conn) -> None:
        while time.perf_counter() < deadline and (item := work.take()) is not None:
            control_id, message = item
            started = time.perf_counter()
            await conn.send(message)
            tally.sent += 1
            reply = await conn.reply()
            tally.ack(reply, control_id, time.perf_counter() - started)

    connections = [await Conn.open(port) for _ in range(conns)]
    try:
        async with asyncio.TaskGroup() as tg:
            for c in connections:
                tg.create_task(one(c))
    finally:
        for c in connections:
            await c.close()


async def pipelined(port: int, work: Workload, window: int, max_s: float, tally: Tally) -> None:
    """One connection with up to ``window`` messages in flight (ACKs arrive in order)."""
    deadline = time.perf_counter() + max_s
    conn = await Conn.open(port)
    slots = asyncio.Semaphore(window)
    in_flight: asyncio.Queue[tuple[str, float] | None] = asyncio.Queue()

    async def send() -> None:
        try:
            while time.perf_counter() < deadline and (item := work.take()) is not None:
                await slots.acquire()
                control_id, message = item
                in_flight.put_nowait((control_id, time.perf_counter()))
                conn.writer.write(frame(message))
                tally.sent += 1
                await conn.writer.drain()
        finally:
            in_flight.put_nowait(None)

    async def receive() -> None:
        while (entry := await in_flight.get()) is not None:
            reply = await conn.reply()
            control_id, started = entry
            tally.ack(reply, control_id, time.perf_counter() - started)
            slots.release()

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(send())
            tg.create_task(receive())
    finally:
        await conn.close()


async def open_loop(port: int, work: Workload, conns: int, rate: float, tally: Tally) -> None:
    """Offer ``rate`` messages/s on a fixed schedule over ``conns`` connections, whatever the ACKs do.

    Latency runs from each message's scheduled time, so sender-side queueing counts against the server.
    """
    connections = [await Conn.open(port) for _ in range(conns)]
    total = len(work.items)
    t0 = time.perf_counter() + 0.05

    async def one(k: int, conn: Conn) -> None:
        pending: asyncio.Queue[tuple[str, float] | None] = asyncio.Queue()

        async def send() -> None:
            try:
                for i in range(k, total, conns):
                    due = t0 + i / rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    control_id, message = work.items[i]
                    pending.put_nowait((control_id, due))
                    conn.writer.write(frame(message))
                    tally.sent += 1
                    await conn.writer.drain()
            finally:
                pending.put_nowait(None)

        async def receive() -> None:
            while (entry := await pending.get()) is not None:
                reply = await conn.reply()
                control_id, due = entry
                tally.ack(reply, control_id, time.perf_counter() - due)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(send())
            tg.create_task(receive())

    try:
        async with asyncio.TaskGroup() as tg:
            for k, c in enumerate(connections):
                tg.create_task(one(k, c))
    finally:
        for c in connections:
            await c.close()


# --------------------------------------------------------------------------------------------------
# Baseline: insert_one per message, DURABLE, same document shape and indexes
# --------------------------------------------------------------------------------------------------


def record_like_intake(message: bytes, now: datetime) -> Document:
    """A document of the same shape and size as the intake's accepted record for ``message``."""
    from services.intake.ack import build_ack
    from services.intake.header import read_message
    from shared.er7 import segment_spans

    read = read_message(message, segment_spans(message), default_charset="utf-8", fallback_charset="cp1252")
    header = read.header
    record_id = uuid.uuid4().hex
    return {
        "_id": record_id,
        "received_at": now,
        "protocol": "hl7v2",
        "channel": "mllp",
        "peer": "127.0.0.1:40000",
        "caller": {"client_id": "dev-client", "ods_code": "REN", "scopes": ["hl7v2/*.write"]},
        "raw": message,
        "size": len(message),
        "attempts": 0,
        "status": "ready",
        "header": header.to_doc(),
        "text": read.text,
        "charset": read.charset,
        "issues": [],
        "dedup_key": f"hl7v2|{header.get(3)}|{header.get(4)}|{header.control_id}",
        "ack": {
            "code": "AA",
            "text": build_ack(
                header,
                "AA",
                ack_control_id=record_id[:20],
                issues=[],
                application="MSCC-HUB",
                facility="REN",
                now=now,
            ),
        },
    }


async def baseline(store: Store, prefix: str, count: int, tasks: int, max_s: float, first_index: int) -> Result:
    collection = store.db.get_collection("bench_baseline", write_concern=DURABLE)
    now = datetime.now(UTC)
    docs = [record_like_intake(hl7_message(first_index + n, f"{prefix}-{n:07d}", now), now) for n in range(count)]
    latencies: list[float] = []
    it: Iterator[Document] = iter(docs)
    deadline = time.perf_counter() + max_s
    sent = 0

    async def worker() -> None:
        nonlocal sent
        for doc in it:
            started = time.perf_counter()
            await collection.insert_one(doc)
            latencies.append(time.perf_counter() - started)
            sent += 1
            if time.perf_counter() >= deadline:
                return

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    elapsed = time.perf_counter() - started
    label = "insert_one sequential" if tasks == 1 else f"insert_one x{tasks} tasks"
    return Result(f"baseline {label}", "db", tasks, sent, elapsed, latencies)


async def copy_indexes(store: Store) -> None:
    """Give the baseline collection the same indexes as ``messages`` (same per-insert index work)."""
    models = []
    async for spec in await store.messages.list_indexes():
        if spec["name"] == "_id_":
            continue
        options = {k: v for k, v in spec.items() if k in ("unique", "sparse")}
        models.append(IndexModel(list(spec["key"].items()), name=spec["name"], **options))
    target = store.db.get_collection("bench_baseline", write_concern=DURABLE)
    await target.create_indexes(models)


# --------------------------------------------------------------------------------------------------
# Driving the scenarios
# --------------------------------------------------------------------------------------------------


@dataclass
class Options:
    messages: int
    one_conn_messages: int
    baseline_messages: int
    connections: list[int]
    window: int
    max_seconds: float
    open_rate: float
    open_seconds: float
    open_connections: int
    mode: str
    warmup: int


class Bench:
    def __init__(self, opts: Options, store: Store, uri: str, db_name: str, mongod_pid: int | None) -> None:
        self.opts = opts
        self.store = store
        self.uri = uri
        self.db_name = db_name
        self.mongod_pid = mongod_pid
        self.results: list[Result] = []
        self._scenario = 0
        self._index = 0
        self.mllp_sent = 0  # every MLLP message sent, warm-ups included

    def _prefix(self) -> str:
        self._scenario += 1
        return f"B{self._scenario:02d}"

    def _workload(self, count: int) -> Workload:
        work = Workload(self._prefix(), count, self._index)
        self._index += count
        return work

    async def _ready(self, prefix: str) -> int:
        return await self.store.messages.count_documents(
            {"status": "ready", "header.control_id": {"$regex": f"^{prefix}-"}}
        )

    async def run_baselines(self) -> None:
        await copy_indexes(self.store)
        for tasks in (1, 8, 32):
            # warm-up: a few writes on the same pool, not timed
            await baseline(self.store, self._prefix(), 20, min(tasks, 4), 10, self._index)
            prefix = self._prefix()
            count = self.opts.baseline_messages
            with CpuMeter({"sender": os.getpid(), "mongod": self.mongod_pid}) as cpu:
                result = await baseline(self.store, prefix, count, tasks, self.opts.max_seconds, self._index)
            self._index += count
            result.cpu = {"loadgen": cpu.used["sender"], "mongod": cpu.used["mongod"]}
            self.results.append(result)
            print(f"  {result.name:<40} {result.rate:8.0f} msg/s", flush=True)

    async def run_ingest(self, intake: Intake) -> None:
        opts = self.opts
        await intake.start()
        try:
            # warm-up: connections, pools and code paths, not timed (but verified)
            warm, tally = self._workload(opts.warmup), Tally()
            await closed_loop(intake.port, warm, 8, 20, tally)
            self.mllp_sent += tally.sent
            await intake.stats()
            scenarios: list[tuple[str, int]] = [("closed", c) for c in opts.connections]
            scenarios.append(("pipelined", 1))
            if intake.where == "child" and opts.open_seconds > 0:
                scenarios.append(("open", opts.open_connections))
            for kind, conns in scenarios:
                await self._scenario_run(intake, kind, conns)
        finally:
            await intake.stop()

    async def _drive(self, port: int, kind: str, conns: int, work: Workload, tally: Tally) -> None:
        opts = self.opts
        if kind == "closed":
            await closed_loop(port, work, conns, opts.max_seconds, tally)
        elif kind == "pipelined":
            await pipelined(port, work, opts.window, opts.max_seconds, tally)
        else:
            await open_loop(port, work, conns, opts.open_rate, tally)

    async def _scenario_run(self, intake: Intake, kind: str, conns: int) -> None:
        opts = self.opts
        if kind == "open":
            count = max(1, round(opts.open_rate * opts.open_seconds))
        elif kind == "closed" and conns == 1:
            count = opts.one_conn_messages
        else:
            count = opts.messages
        work = self._workload(count)
        tally = Tally()
        pids = {"sender": os.getpid(), "intake": intake.pid, "mongod": self.mongod_pid}
        limit = opts.max_seconds + (opts.open_seconds if kind == "open" else 0) + ACK_TIMEOUT_S + 10
        with CpuMeter(pids) as cpu:
            started = time.perf_counter()
            async with asyncio.timeout(limit):  # a hard cap on the whole scenario
                await self._drive(intake.port, kind, conns, work, tally)
            elapsed = time.perf_counter() - started
        if kind == "closed":
            name = f"MLLP closed loop, {conns} conn{'s' if conns > 1 else ''}"
            ref = conns
        elif kind == "pipelined":
            name = f"MLLP pipelined, 1 conn, window {opts.window}"
            ref = 32 if opts.window >= 32 else 8 if opts.window >= 8 else 1
        else:
            name = f"MLLP open loop {opts.open_rate:g}/s x {opts.open_seconds:g} s, {conns} conns"
            ref = 0
        self.mllp_sent += tally.sent
        commit = await intake.stats()
        used = cpu.used
        result = Result(name, intake.where, conns, tally.sent, elapsed, tally.latencies, tally.bad)
        result.stored_ready = await self._ready(work.prefix)
        result.commit = commit
        result.cpu = {"loadgen": used["sender"], "intake": used.get("intake", math.nan), "mongod": used["mongod"]}
        result.offered = opts.open_rate if kind == "open" else 0.0
        result.baseline_ref = {1: "sequential", 8: "x8 tasks", 32: "x32 tasks"}.get(ref, "")
        self.results.append(result)
        status = "OK" if result.store_ok else f"FAIL (ready {result.stored_ready}, bad ACKs {result.bad_acks})"
        print(
            f"  {result.name + ' [' + result.where + ']':<48} {result.rate:8.0f} msg/s  "
            f"p50 {result.ms(0.5):6.1f} ms  p99 {result.ms(0.99):6.1f} ms  store {status}",
            flush=True,
        )


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def report(results: list[Result], total_sent: int, total_ready: int) -> bool:
    base = {
        "sequential": next((r for r in results if r.where == "db" and r.conns == 1), None),
        "x8 tasks": next((r for r in results if r.where == "db" and r.conns == 8), None),
        "x32 tasks": next((r for r in results if r.where == "db" and r.conns == 32), None),
    }
    head = (
        f"{'scenario':<44} {'where':<7} {'conns':>5} {'msgs':>6} {'secs':>6} {'msg/s':>7} "
        f"{'p50ms':>6} {'p99ms':>6} {'maxms':>6} {'vs base':>14} {'batch':>5} {'store':>5}"
    )
    print()
    print("RESULTS (latency = ACK latency for MLLP, insert_one round trip for the baseline)")
    print(head)
    print("-" * len(head))
    for r in results:
        ref = base.get(r.baseline_ref) if r.baseline_ref else None
        ratio = f"{r.rate / ref.rate:.2f}x {r.baseline_ref.replace(' tasks', '')}" if ref else ""
        batch = r.commit["docs"] / r.commit["batches"] if r.commit.get("batches") else math.nan
        store = "" if r.store_ok is None else ("OK" if r.store_ok else "FAIL")
        print(
            f"{r.name:<44} {r.where:<7} {r.conns:>5} {r.sent:>6} {r.seconds:>6.2f} {r.rate:>7.0f} "
            f"{fmt(r.ms(0.5), '6.1f')} {fmt(r.ms(0.99), '6.1f')} {fmt(r.max_ms, '6.1f')} {ratio:>14} "
            f"{fmt(batch, '5.1f')} {store:>5}"
        )
    print()
    print("CPU per message (ms of CPU time; 2 cores = 2 ms of CPU per ms of wall time)")
    print(f"{'scenario':<44} {'where':<7} {'loadgen':>8} {'intake':>8} {'mongod':>8} {'insert_many ms':>15}")
    for r in results:
        n = max(r.sent, 1)
        write_ms = r.commit["write_s"] * 1000 / r.commit["batches"] if r.commit.get("batches") else math.nan
        intake = r.cpu.get("intake", math.nan)
        print(
            f"{r.name:<44} {r.where:<7} {fmt(r.cpu.get('loadgen', math.nan) * 1000 / n, '8.3f')} "
            f"{fmt(intake * 1000 / n, '8.3f')} {fmt(r.cpu.get('mongod', math.nan) * 1000 / n, '8.3f')} "
            f"{fmt(write_ms, '15.2f')}"
        )
    print("  (in-proc: intake CPU is inside 'loadgen', the same process)")

    print()
    print("TARGETS (printed, not asserted)")
    child = [r for r in results if r.where == "child"]
    closed = {r.conns: r for r in child if r.name.startswith("MLLP closed")}
    best = max((r.rate for r in child if not r.name.startswith("MLLP open")), default=math.nan)
    print(
        f"  throughput >= {TARGET_MSG_S:.0f} msg/s on 2 cores (best child-process MLLP figure): {best:.0f} msg/s "
        f"-> {'MET' if best >= TARGET_MSG_S else 'NOT MET'}"
    )
    for conns, ref_name in ((1, "sequential"), (8, "x8 tasks"), (32, "x32 tasks")):
        r, ref = closed.get(conns), base.get(ref_name)
        if r is not None and ref is not None:
            ratio = r.rate / ref.rate
            print(
                f"  ingest >= baseline, {conns:>2} conn(s) vs insert_one {ref_name:<10}: "
                f"{r.rate:6.0f} / {ref.rate:6.0f} = {ratio:4.2f}x -> {'MET' if ratio >= 1 else 'NOT MET'}"
            )
    print(
        "    (a 1-connection closed loop waits for each ACK, which includes the same durable insert plus an MLLP"
        " hop:\n     it cannot beat a sequential insert_one; group commit pays off with concurrency)"
    )
    for r in (r for r in results if r.name.startswith("MLLP open")):
        print(
            f"  ACK p99 < {TARGET_P99_MS:.0f} ms at {r.offered:g} msg/s offered ({r.where}): p99 {r.ms(0.99):.1f} ms, "
            f"p50 {r.ms(0.5):.1f} ms, max {r.max_ms:.1f} ms -> {'MET' if r.ms(0.99) < TARGET_P99_MS else 'NOT MET'}"
        )

    ok = all(r.store_ok is not False for r in results) and total_ready == total_sent
    print()
    print(
        f"STORE CHECK: {total_ready} messages with status 'ready' for {total_sent} MLLP messages sent "
        f"(warm-up included), every ACK AA for its own MSH-10 -> {'OK' if ok else 'FAIL'}"
    )
    return ok


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Options]:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=6000, help="messages per MLLP scenario (default 6000)")
    p.add_argument(
        "--one-conn-messages", type=int, default=1500, help="messages for the 1-connection closed loop (default 1500)"
    )
    p.add_argument("--baseline-messages", type=int, default=3000, help="inserts per baseline row (default 3000)")
    p.add_argument("--connections", default="1,8,32", help="closed-loop connection counts (default 1,8,32)")
    p.add_argument("--window", type=int, default=32, help="in-flight window of the pipelined run (default 32)")
    p.add_argument("--max-seconds", type=float, default=20.0, help="time cap of each scenario (default 20)")
    p.add_argument("--open-rate", type=float, default=200.0, help="open-loop offered rate, msg/s (default 200)")
    p.add_argument("--open-seconds", type=float, default=10.0, help="open-loop duration, 0 to skip (default 10)")
    p.add_argument("--open-connections", type=int, default=8, help="open-loop connections (default 8)")
    p.add_argument(
        "--mode",
        choices=("child", "inproc", "both"),
        default="both",
        help="intake in a child process, in this process, or both (default both)",
    )
    p.add_argument("--warmup", type=int, default=200, help="untimed warm-up messages per intake (default 200)")
    p.add_argument("--quick", action="store_true", help="~15 s smoke run (small counts, child mode only)")
    p.add_argument(
        "--profile-intake",
        metavar="FILE",
        help="write a cProfile of the child-process intake to FILE (slows it; for finding hot spots)",
    )
    p.add_argument("--serve-intake", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--uri", help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.messages, args.one_conn_messages, args.baseline_messages = 800, 300, 400
        args.open_seconds, args.mode, args.warmup, args.max_seconds = 3.0, "child", 50, 5.0
    connections = [int(c) for c in args.connections.split(",") if c.strip()]
    for name in ("messages", "one_conn_messages", "baseline_messages", "window", "open_connections", "warmup"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not connections or min(connections) < 1 or max(connections) > 256:
        p.error("--connections must be between 1 and 256 each")
    if args.open_rate <= 0 or args.open_seconds < 0 or args.max_seconds <= 0:
        p.error("--open-rate and --max-seconds must be positive, --open-seconds not negative")
    opts = Options(
        messages=args.messages,
        one_conn_messages=args.one_conn_messages,
        baseline_messages=args.baseline_messages,
        connections=connections,
        window=args.window,
        max_seconds=args.max_seconds,
        open_rate=args.open_rate,
        open_seconds=args.open_seconds,
        open_connections=args.open_connections,
        mode=args.mode,
        warmup=args.warmup,
    )
    return args, opts


async def run(opts: Options, uri: str, mongod_pid: int | None, profile: str | None) -> bool:
    db_name = f"bench_{uuid.uuid4().hex[:12]}"
    client = connect(uri, app_name="mscc-bench")
    store = Store(client, db_name)
    try:
        await store.ensure_schema()
        info = await client.server_info()
        where = uri.split("@")[-1].split("?")[0]  # never print credentials
        print(f"mongod {info.get('version')} at {where}, database {db_name}, write concern {DURABLE.document}")
        sample = [hl7_message(i, f"X-{i:07d}", datetime.now(UTC)) for i in range(100)]
        print(
            f"messages: ADT^A01 / REF^I12, mean {sum(map(len, sample)) / len(sample):.0f} bytes "
            f"(min {min(map(len, sample))}, max {max(map(len, sample))})"
        )
        bench = Bench(opts, store, uri, db_name, mongod_pid)
        print("\nbaseline (insert_one, DURABLE):", flush=True)
        await bench.run_baselines()
        intakes: list[Intake] = []
        if opts.mode in ("child", "both"):
            intakes.append(ChildIntake(uri, db_name, profile))
        if opts.mode in ("inproc", "both"):
            intakes.append(InProcessIntake(uri, db_name))
        for intake in intakes:
            print(f"\nMLLP ingest, intake {'in a child process' if intake.where == 'child' else 'in this process'}:")
            await bench.run_ingest(intake)
        total_ready = await store.messages.count_documents({"status": "ready"})
        return report(bench.results, bench.mllp_sent, total_ready)
    finally:
        # bounded: after Ctrl-C the mongod may be gone, and server selection must not hang the exit
        with contextlib.suppress(Exception):
            async with asyncio.timeout(15):
                await client.drop_database(db_name)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await client.close()


def main(argv: list[str] | None = None) -> int:
    args, opts = parse_args(argv)
    if args.serve_intake:
        hub_run(serve_intake_child(args.uri, args.db, args.profile_intake))  # the hub's own event loop
        return 0
    banner("mllp_ingest bench")
    started = time.perf_counter()
    with local_mongodb() as (uri, pid):
        profile = str(Path(args.profile_intake).resolve()) if args.profile_intake else None
        ok = asyncio.run(run(opts, uri, pid, profile))
    return finish(started, ok)


if __name__ == "__main__":
    guarded(main, "the database, the intake child and the mongod")
