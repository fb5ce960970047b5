"""Stall benchmark: small HL7v2 messages keep being acknowledged while large inputs are read.

Run from the repository root with the package installed::

    python bench/stall.py                 # three runs: hl7, all, off (below)
    python bench/stall.py --seconds 10 --only hl7
    python bench/stall.py --help

``--rate`` small messages per second (about 200 bytes each) are offered over ``--connections`` MLLP
connections on a fixed schedule, and their ACK latency is measured from the scheduled send time
(p50, p99, max). Meanwhile one more MLLP connection sends large inputs one after another: a 4 MB
HL7v2 message of tiny segments (read in full under the raised limits, then refused by the write
estimate) and a 4 MB message of 8,000 segments (accepted). That is the "hl7" run, the target's setting.
The "all" run adds, through the in-process HTTP app, a FHIR ServiceRequest of 300,000 small objects
(validated, then refused 413) and a Bundle of 20,000 entries; "off" is "all" with the parse pool off
(MSCC_INTAKE_PARSE_POOL=0), everything read on the event loop. The limits are raised in the bench so
that every large input is read in full. Intake runs in this process and event loop, as in ``mscc run``,
with its heap settled as there (``shared/heap.py``); the large inputs are built before the clock
starts, so that building them does not hold up the small senders on the same loop. It starts its own
mongod unless ``MONGODB_URI`` is set, works in a fresh database dropped at the end, and sends to
127.0.0.1 only. Target: small-message ACK p99 under 25 ms in the "hl7" run. Figures are printed, never
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from _common import banner, finish, fmt, guarded, intake_settings, local_mongodb, percentile

from services.api.app import create_app
from services.intake.service import IntakeService
from shared import heap
from shared.mllp import MllpClient
from shared.settings import Settings
from shared.store import Store, connect

HOST = "127.0.0.1"
TARGET_P99_MS = 25.0
RAISED = {
    "limit_segments": 1_000_000,
    "limit_field_repetitions": 1_000_000,
    "limit_bundle_entries": 100_000,
    "limit_document_bytes": 16 * 1024 * 1024,
    # Above what MongoDB 4.0 writes in one transaction (16 MiB), so that the 4 MB message of 8,000
    # segments is accepted (intake only: no mapper runs here); the 300,000-object FHIR body is then
    # refused 413 by the database's own limit rather than by intake's estimate.
    "limit_transaction_bytes": 64 * 1024 * 1024,
}
# The runs: name -> (parse pool on, FHIR bodies among the large inputs). "hl7" is the target's setting:
# 4 MB HL7v2 messages on another connection.
RUNS = {"hl7": (True, False), "all": (True, True), "off": (False, True)}
MB4 = 4 * 1024 * 1024 - 1024


def msh(control_id: str) -> bytes:
    return (
        f"MSH|^~\\&|PAS|RBL|MSCC-HUB|REN|20260101120000||ADT^A01|{control_id}|P|2.5\r"
        f"PID|1||9449305552^^^NHS^NH||TEST^PATIENT\r"
    ).encode()


def tiny_segments() -> bytes:
    head = msh(uuid.uuid4().hex[:16])
    return head + b"NTE|1\r" * ((MB4 - len(head)) // 6)


def wide_segments() -> bytes:
    head = msh(uuid.uuid4().hex[:16])
    line = b"NTE|1||" + b"x" * 500 + b"\r"
    return head + line * ((MB4 - len(head)) // len(line))


def fhir_objects() -> bytes:
    body = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/1"},
        "note": [{"text": "x"} for _ in range(300_000)],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def fhir_bundle() -> bytes:
    entry = {
        "request": {"method": "POST", "url": "Observation"},
        "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
    }
    return json.dumps({"resourceType": "Bundle", "type": "batch", "entry": [entry] * 20_000}).encode()


def msa(reply: bytes) -> str:
    return next((s for s in reply.split(b"\r") if s.startswith(b"MSA")), b"MSA|?").decode().split("|")[1]


async def small_sender(port: int, start: float, slots: list[float], latencies: list[float]) -> None:
    """Send one small message at each scheduled time (``start`` + slot); latency from the schedule."""
    client = await MllpClient.connect(HOST, port, timeout_s=60)
    try:
        for slot in slots:
            due = start + slot
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            reply = await client.send(msh(uuid.uuid4().hex[:16]))
            latencies.append(time.monotonic() - due)
            assert msa(reply) == "AA", reply
    finally:
        await client.close()


def large_inputs(rounds: int, with_fhir: bool) -> list[tuple[str, str, bytes]]:
    """The large inputs to send, built before the clock starts (building a 300,000-object body takes
    the sender's event loop a good part of a second): (name, "mllp" or a FHIR path, bytes). HL7v2
    messages alternate with FHIR bodies when ``with_fhir``."""
    hl7 = [("hl7 4 MB tiny segments", tiny_segments), ("hl7 4 MB 8k segments", wide_segments)]
    objects, bundle = fhir_objects(), fhir_bundle()
    fhir = [("fhir 300k objects", "/fhir/ServiceRequest", objects), ("fhir 20k-entry Bundle", "/fhir", bundle)]
    out: list[tuple[str, str, bytes]] = []
    for turn in range(rounds):
        name, make = hl7[turn % 2]
        out.append((name, "mllp", make()))
        if with_fhir:
            out.append(fhir[turn % 2])
    return out


async def large_sender(
    port: int, http: httpx.AsyncClient, until: float, inputs: list[tuple[str, str, bytes]], done: list[Any]
) -> None:
    """The large inputs one after another until ``until``: what each was answered and how long it took."""
    client = await MllpClient.connect(HOST, port, timeout_s=120)
    headers = {"Content-Type": "application/fhir+json"}
    try:
        for name, where, data in inputs:
            if time.monotonic() >= until:
                break
            began = time.monotonic()
            if where == "mllp":
                answer = msa(await client.send(data))
            else:
                answer = str((await http.post(where, content=data, headers=headers)).status_code)
            done.append((name, answer, time.monotonic() - began))
    finally:
        await client.close()


async def scenario(settings: Settings, store: Store, args: argparse.Namespace, with_fhir: bool) -> dict[str, Any]:
    inputs = large_inputs(int(args.seconds) + 2, with_fhir)  # more than can be sent in the time
    service = IntakeService(settings, store)
    await service.start()  # with the parse pool's workers started (MSCC_INTAKE_PARSE_POOL_WARM)
    heap.settle()  # as `mscc run` does once started (shared/heap.py)
    latencies: list[float] = []
    done: list[tuple[str, str, float]] = []
    try:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://hub.test", timeout=120) as http:
            total = int(args.rate * args.seconds)
            start = time.monotonic() + 0.5
            slots = [i / args.rate for i in range(total)]
            senders = [
                small_sender(service.mllp.port, start, slots[c :: args.connections], latencies)
                for c in range(args.connections)
            ]
            large = large_sender(service.mllp.port, http, start + args.seconds, inputs, done)
            await asyncio.gather(*senders, large)
    finally:
        await service.stop()
    return {"latencies": latencies, "done": done, "offloaded": service.pool.offloaded}


async def run(args: argparse.Namespace, uri: str) -> bool:
    client = connect(uri, app_name="mscc-bench-stall")
    ok = True
    try:
        with tempfile.TemporaryDirectory(prefix="mscc-bench-stall-") as tmp:
            for label in args.only or list(RUNS):
                pooled, with_fhir = RUNS[label]
                db_name = f"bench_{uuid.uuid4().hex[:12]}"
                base = intake_settings(db_name, Path(tmp)).model_copy(update=RAISED)
                pool = base.intake_parse_pool if pooled else 0
                settings = base.model_copy(update={"intake_parse_pool": pool})
                store = Store(client, db_name)
                await store.ensure_schema()
                try:
                    result = await scenario(settings, store, args, with_fhir)
                finally:
                    await client.drop_database(db_name)
                ms = [1000 * v for v in result["latencies"]]
                p99 = percentile(ms, 0.99)
                print(
                    f"\n{label}: large HL7v2{' and FHIR' if with_fhir else ''} inputs, "
                    f"MSCC_INTAKE_PARSE_POOL={pool}, offload from {settings.intake_offload_bytes} B: "
                    f"{len(ms)} small ACKs, p50 {fmt(percentile(ms, 0.5), '.1f')} ms, p99 {fmt(p99, '.1f')} ms, "
                    f"max {fmt(max(ms) if ms else None, '.1f')} ms; inputs read in the pool: {result['offloaded']}"
                )
                for name, answer, seconds in result["done"]:
                    print(f"  large: {name:<24} answered {answer:<4} in {seconds:6.2f} s")
                if pooled:
                    met = p99 < TARGET_P99_MS
                    print(f"  target: small ACK p99 < {TARGET_P99_MS:.0f} ms: {'met' if met else 'NOT met'}")
    finally:
        await client.close()
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="small messages per second (default 200)")
    parser.add_argument("--connections", type=int, default=8, help="connections for small messages (default 8)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per run (default 20)")
    parser.add_argument(
        "--only",
        action="append",
        choices=list(RUNS),
        help="run only: hl7 (4 MB HL7v2 inputs, pool on: the target), all (HL7v2 and FHIR, pool on), "
        "off (HL7v2 and FHIR, pool off); repeatable; default all three",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    banner("stall")
    with local_mongodb() as (uri, _):
        ok = asyncio.run(run(args, uri))
    return finish(started, ok)


if __name__ == "__main__":  # the pool's spawned workers import this module without running it
    guarded(main, "the mongod and the database")
