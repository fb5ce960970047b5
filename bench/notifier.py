"""Notifier benchmark: rest-hook deliveries per second, and the latency from a change to its callback.

Run from the repository root with the package installed::

    python bench/notifier.py            # about a minute
    python bench/notifier.py --quick    # about 15 s smoke run
    python bench/notifier.py --help

It starts its own mongod (single-node replica set, in a temporary folder) unless ``MONGODB_URI`` is set,
works in a fresh database that it drops at the end, and sends traffic to 127.0.0.1 only. The receiver
(aiohttp.web) runs in a child process, so that it and the notifier do not share one event loop; the
notifier runs in this process, as ``mscc notifier`` would (``NotifierService.run``, the real fan-out,
lanes, HMAC signing and the shared aiohttp session).

Scenarios:
  * throughput: ``--changes`` referral changes are stored (history, current version and outbox event, as
    the mapper writes them) before the notifier starts; ``--subscriptions`` subscriptions match every
    one of them, so the notifier fans out and delivers changes x subscriptions notifications. Measured
    from the notifier's start until the receiver has answered every one.
  * latency: with the notifier running, changes are committed (one transaction each) at ``--rate`` per
    second for ``--seconds`` on a fixed schedule; latency is from a change's *scheduled* time to its
    callback's arrival at the receiver (queueing included: no coordinated omission).
Targets are printed, never asserted; the exit status is 1 only if a notification is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import LineChild, banner, finish, fmt, guarded, local_mongodb, percentile, proc_cpu_s

HOST = "127.0.0.1"
SCRIPT = str(Path(__file__).resolve())
TARGET_PER_S = 1000.0
TARGET_P99_MS = 500.0
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"


# --------------------------------------------------------------------------------------------------
# The receiver (child process): counts notifications and stamps their arrival
# --------------------------------------------------------------------------------------------------


async def serve_receiver() -> None:
    """Child-process entry: print ``PORT n``; answer ``count`` and ``dump`` lines; stop on ``stop``/EOF."""
    from aiohttp import web

    arrivals: list[tuple[str, float]] = []
    handshakes = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal handshakes
        await request.read()
        event = request.headers.get("X-Event-Id")
        if event is None:
            handshakes += 1
        else:
            arrivals.append((event, time.time()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, backlog=1024)
    await site.start()
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    try:
        while True:
            command = (await asyncio.to_thread(sys.stdin.readline)).strip()
            if command == "count":
                print(f"COUNT {len(arrivals)} {handshakes} {time.process_time():.3f}", flush=True)
            elif command == "dump":
                print("DUMP " + json.dumps(arrivals), flush=True)
                arrivals.clear()
            elif command in ("stop", ""):
                break
    finally:
        await runner.cleanup()


class ChildReceiver(LineChild):
    """The callback receiver in its own process (so the notifier under test has its cores to itself)."""

    def __init__(self) -> None:
        super().__init__("receiver")

    async def start(self) -> None:
        await self.launch(SCRIPT, "--serve-receiver", timeout_s=60, limit=64 * 1024 * 1024)

    async def count(self) -> tuple[int, int, float]:
        _, events, handshakes, cpu = (await self.ask("count")).split()
        return int(events), int(handshakes), float(cpu)

    async def dump(self) -> list[tuple[str, float]]:
        line = await self.ask("dump")
        return [(e, float(t)) for e, t in json.loads(line[5:])]


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    expected: int
    received: int = 0
    seconds: float = math.nan
    latencies_s: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds and self.seconds > 0 else math.nan

    def ms(self, q: float) -> float:
        return percentile(self.latencies_s, q) * 1000


# --------------------------------------------------------------------------------------------------
# The hub side: subscriptions, changes, the notifier
# --------------------------------------------------------------------------------------------------


def bench_settings(db_name: str, state_dir: Path) -> Any:
    from shared.settings import Settings

    return Settings(
        _env_file=None,
        db_name=db_name,
        http_port=0,
        mllp_port=0,
        state_dir=state_dir,
        notifier_allowed_hosts=[HOST],
        notifier_allow_http=True,
        log_level="WARNING",
    )


async def subscribe(store: Any, settings: Any, port: int, count: int, content: str) -> list[str]:
    from services.notifier.backport import FILTER_CRITERIA, PAYLOAD_CONTENT
    from services.notifier.subscriptions import SubscriptionService
    from services.notifier.topics import topic_url
    from shared.auth import Caller

    service = SubscriptionService(store, settings)
    ids = []
    for n in range(count):
        body = {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": f"bench {n}",
            "criteria": topic_url(settings.base_url, "referral-status"),
            "_criteria": {
                "extension": [{"url": FILTER_CRITERIA, "valueString": "ServiceRequest?requester=Organization/RBL"}]
            },
            "channel": {
                "type": "rest-hook",
                "endpoint": f"http://{HOST}:{port}/hook",
                "payload": "application/fhir+json",
                "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": content}]},
                "header": ["Authorization: Bearer bench"],
            },
        }
        ids.append(str((await service.create(body, Caller("bench", "REN"))).resource["id"]))
    return ids


def referral(index: int) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": f"bench-{index}",
        "meta": {"versionId": "1", "profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-ServiceRequest"]},
        "identifier": [{"system": "https://example.org/referral", "value": f"R-{index}"}],
        "status": "active",
        "intent": "order",
        "priority": "urgent",
        "subject": {"reference": f"Patient/p{index % 500}"},
        "requester": {"identifier": {"system": ODS, "value": "RBL"}},
        "authoredOn": "2026-11-25T08:00:00+00:00",
        "reasonCode": [{"text": "Suspected metastatic spinal cord compression"}],
    }


def change_docs(index: int, now: datetime) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    resource = referral(index)
    key = f"ServiceRequest/{resource['id']}"
    # As the writer stores it: visible to the requesting trust, the only trust the notifier delivers to.
    base = {
        "type": "ServiceRequest",
        "id": resource["id"],
        "version": 1,
        "last_updated": now,
        "resource": resource,
        "trusts": ["RBL"],
    }
    event = {
        "_id": f"{key}/_history/1",
        "type": "ServiceRequest",
        "id": resource["id"],
        "version": 1,
        "kind": "created",
        "created_at": now,
        "message_id": None,
        "status": "ready",
    }
    return {"_id": f"{key}/_history/1", **base}, {"_id": key, **base}, event


async def preload(store: Any, count: int) -> None:
    now = datetime.now(UTC)
    docs = [change_docs(i, now) for i in range(count)]
    for start in range(0, count, 1000):
        chunk = docs[start : start + 1000]
        await store.history.insert_many([h for h, _, _ in chunk])
        await store.resources.insert_many([r for _, r, _ in chunk])
        await store.outbox.insert_many([e for _, _, e in chunk])


async def commit_change(store: Any, index: int) -> None:
    """One change as the mapper's writer commits it: history, current version and outbox, one transaction."""
    from shared.store import DURABLE

    history, current, event = change_docs(index, datetime.now(UTC))
    async with store.client.start_session() as session, await session.start_transaction(write_concern=DURABLE):
        await store.history.insert_one(history, session=session)
        await store.resources.insert_one(current, session=session)
        await store.outbox.insert_one(event, session=session)


class Notifier:
    """The notifier under test, in this process: its own client and aiohttp session, run until stopped."""

    def __init__(self, uri: str, db_name: str, settings: Any) -> None:
        self.uri, self.db_name, self.settings = uri, db_name, settings
        self._stack = contextlib.AsyncExitStack()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None

    async def start(self) -> None:
        from services.notifier.http import client_session
        from services.notifier.service import NotifierService
        from shared.store import Store, connect

        client = connect(self.uri, app_name="mscc-bench-notifier")
        self._stack.push_async_callback(client.close)
        session = await self._stack.enter_async_context(client_session(self.settings))
        service = NotifierService(Store(client, self.db_name), self.settings, session)
        self._task = asyncio.create_task(service.run(self._stop))

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 30)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._stack.aclose(), 15)


# --------------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------------


@dataclass
class Options:
    changes: int
    subscriptions: int
    content: str
    rate: float
    seconds: float
    latency_subscriptions: int
    max_seconds: float


async def throughput(opts: Options, uri: str, mongod_pid: int | None, tmp: Path) -> Result:
    from shared.store import Store, connect

    db_name = f"bench_{uuid.uuid4().hex[:12]}"
    settings = bench_settings(db_name, tmp)
    client = connect(uri, app_name="mscc-bench")
    store = Store(client, db_name)
    receiver = ChildReceiver()
    expected = opts.changes * opts.subscriptions
    result = Result(f"throughput: {opts.changes} changes x {opts.subscriptions} subs ({opts.content})", expected)
    notifier = Notifier(uri, db_name, settings)
    try:
        await store.ensure_schema()
        await receiver.start()
        await subscribe(store, settings, receiver.port, opts.subscriptions, opts.content)
        await preload(store, opts.changes)
        pids = {"notifier": os.getpid(), "receiver": receiver.pid, "mongod": mongod_pid}
        cpu0 = {name: proc_cpu_s(pid) for name, pid in pids.items()}
        started = time.perf_counter()
        await notifier.start()
        while time.perf_counter() - started < opts.max_seconds:
            got, _, _ = await receiver.count()
            if got >= expected:
                break
            await asyncio.sleep(0.1)
        result.seconds = time.perf_counter() - started
        result.received, _, _ = await receiver.count()
        result.cpu = {name: proc_cpu_s(pid) - cpu0[name] for name, pid in pids.items()}
        if result.received < expected:
            result.note = f"stopped after {opts.max_seconds:.0f} s"
    finally:
        await notifier.stop()
        await receiver.stop()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(15):
                await client.drop_database(db_name)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await client.close()
    return result


async def latency(opts: Options, uri: str, mongod_pid: int | None, tmp: Path) -> Result:
    from shared.store import Store, connect

    db_name = f"bench_{uuid.uuid4().hex[:12]}"
    settings = bench_settings(db_name, tmp)
    client = connect(uri, app_name="mscc-bench")
    store = Store(client, db_name)
    receiver = ChildReceiver()
    total = max(1, int(opts.rate * opts.seconds))
    expected = total * opts.latency_subscriptions
    result = Result(
        f"latency: {opts.rate:g} changes/s for {opts.seconds:g} s x {opts.latency_subscriptions} subs", expected
    )
    notifier = Notifier(uri, db_name, settings)
    try:
        await store.ensure_schema()
        await receiver.start()
        await subscribe(store, settings, receiver.port, opts.latency_subscriptions, opts.content)
        await notifier.start()
        for _ in range(600):  # the handshakes, at most 30 s
            if (await receiver.count())[1] >= opts.latency_subscriptions:
                break
            await asyncio.sleep(0.05)
        pids = {"notifier": os.getpid(), "receiver": receiver.pid, "mongod": mongod_pid}
        cpu0 = {name: proc_cpu_s(pid) for name, pid in pids.items()}
        scheduled: dict[str, float] = {}
        start_wall, start = time.time(), time.perf_counter()
        writes: set[asyncio.Task[None]] = set()
        for i in range(total):
            due = start + i / opts.rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            scheduled[f"ServiceRequest/bench-{i}/_history/1"] = start_wall + i / opts.rate
            task = asyncio.create_task(commit_change(store, i))
            writes.add(task)
            task.add_done_callback(writes.discard)
        await asyncio.gather(*writes)
        while time.perf_counter() - start < opts.seconds + opts.max_seconds:
            if (await receiver.count())[0] >= expected:
                break
            await asyncio.sleep(0.1)
        result.seconds = time.perf_counter() - start
        result.cpu = {name: proc_cpu_s(pid) - cpu0[name] for name, pid in pids.items()}
        arrivals = await receiver.dump()
        result.received = len(arrivals)
        outbox_of = {
            d["event_id"]: d["event"]["outbox_id"]
            async for d in store.deliveries.find({}, {"event_id": 1, "event.outbox_id": 1})
        }
        result.latencies_s = [
            arrived - scheduled[outbox_of[event]] for event, arrived in arrivals if event in outbox_of
        ]
    finally:
        await notifier.stop()
        await receiver.stop()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(15):
                await client.drop_database(db_name)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await client.close()
    return result


def report(results: list[Result]) -> bool:
    print()
    head = (
        f"{'scenario':<58} {'expected':>8} {'got':>7} {'secs':>6} {'notif/s':>8} {'p50ms':>7} {'p99ms':>7} {'maxms':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        p50, p99 = (r.ms(0.5), r.ms(0.99)) if r.latencies_s else (math.nan, math.nan)
        top = max(r.latencies_s) * 1000 if r.latencies_s else math.nan
        print(
            f"{r.name:<58} {r.expected:>8} {r.received:>7} {r.seconds:>6.2f} {fmt(r.rate, '8.0f')} "
            f"{fmt(p50, '7.1f')} {fmt(p99, '7.1f')} {fmt(top, '7.1f')} {r.note}"
        )
    print()
    print("CPU per notification (ms; 2 cores = 2 ms of CPU per ms of wall time)")
    for r in results:
        n = max(r.received, 1)
        parts = " ".join(f"{name} {fmt(cpu * 1000 / n, '.3f')}" for name, cpu in r.cpu.items())
        print(f"  {r.name:<58} {parts}")
    print()
    print("TARGETS (printed, not asserted)")
    best = max((r.rate for r in results if r.name.startswith("throughput")), default=math.nan)
    lat = next((r for r in results if r.name.startswith("latency")), None)
    verdict = "MET" if best >= TARGET_PER_S else "NOT MET"
    print(f"  >= {TARGET_PER_S:.0f} notifications/s on 2 cores: {best:.0f}/s {verdict}")
    if lat is not None:
        p99 = lat.ms(0.99)
        verdict = "MET" if p99 < TARGET_P99_MS else "NOT MET"
        print(
            f"  change-to-callback p99 < {TARGET_P99_MS:.0f} ms at {lat.name.split(':')[1].split(' for')[0].strip()}: "
            f"p50 {lat.ms(0.5):.1f} ms, p99 {p99:.1f} ms {verdict}"
        )
    complete = all(r.received >= r.expected for r in results)
    print(f"\nDELIVERY CHECK {'OK' if complete else 'FAIL'}: every change reached every subscription")
    return complete


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Options]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="small counts, about 15 s")
    p.add_argument("--changes", type=int, default=2000, help="changes stored before the throughput run")
    p.add_argument("--subscriptions", type=int, default=4, help="subscriptions matching every change (throughput)")
    p.add_argument("--content", choices=["empty", "id-only", "full-resource"], default="id-only")
    p.add_argument("--rate", type=float, default=50.0, help="changes per second in the latency run")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the latency run")
    p.add_argument("--latency-subscriptions", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=60.0, help="time cap per scenario")
    p.add_argument("--serve-receiver", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.changes, args.seconds, args.max_seconds = 500, 5.0, 20.0
    if min(args.changes, args.subscriptions, args.latency_subscriptions) < 1 or args.rate <= 0 or args.seconds <= 0:
        p.error("counts must be at least 1, --rate and --seconds positive")
    if args.changes * args.subscriptions > 200_000:
        p.error("--changes x --subscriptions is capped at 200000")
    opts = Options(
        args.changes,
        args.subscriptions,
        args.content,
        args.rate,
        args.seconds,
        args.latency_subscriptions,
        args.max_seconds,
    )
    return args, opts


async def run(opts: Options, uri: str, mongod_pid: int | None) -> bool:
    with tempfile.TemporaryDirectory(prefix="mscc-bench-notifier-") as tmp:
        print("throughput ...", flush=True)
        results = [await throughput(opts, uri, mongod_pid, Path(tmp))]
        print("latency ...", flush=True)
        results.append(await latency(opts, uri, mongod_pid, Path(tmp)))
    return report(results)


def main(argv: list[str] | None = None) -> int:
    args, opts = parse_args(argv)
    if args.serve_receiver:
        asyncio.run(serve_receiver())
        return 0
    banner("notifier bench")
    started = time.perf_counter()
    with local_mongodb() as (uri, pid):
        ok = asyncio.run(run(opts, uri, pid))
    return finish(started, ok)


if __name__ == "__main__":
    guarded(main, "the database, the receiver child and the mongod")
