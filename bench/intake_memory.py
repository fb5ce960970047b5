"""Intake memory benchmark: peak RSS of an intake process while several MLLP connections send 4 MB messages.

Run from the repository root with the package installed::

    python bench/intake_memory.py                 # 3 and 8 connections, about a minute
    python bench/intake_memory.py --connections 3 --messages 1
    python bench/intake_memory.py --help

Each scenario starts a fresh intake in a child process (so its peak RSS, ``VmHWM`` in /proc, belongs
to that scenario alone), opens N connections that each send ``--messages`` messages of about
``--size`` bytes one after the other (the next when the ACK of the previous arrives), and prints the
child's resident memory before the traffic and at its peak. ``--budget`` sets the child's
``MSCC_INTAKE_MAX_BYTES_IN_FLIGHT`` (the cap on bytes being read and stored across connections).
It starts its own mongod unless ``MONGODB_URI`` is set, works in a fresh database that it drops at the
end, and sends traffic to 127.0.0.1 only. Figures are printed, never asserted; the exit status is 1
only when a message is not acknowledged AA.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import LineChild, banner, finish, guarded, intake_settings, local_mongodb

from services.runner import run as hub_run
from shared.mllp import Frame, FrameDecoder, frame
from shared.store import Store, connect

HOST = "127.0.0.1"
SCRIPT = str(Path(__file__).resolve())
ACK_TIMEOUT_S = 120.0


def large_message(control_id: str, size: int, shape: str) -> bytes:
    """An ORU^R01 of about ``size`` bytes: one OBX carrying a base64 PDF ("ed"), or many text OBX ("segments")."""
    head = (
        f"MSH|^~\\&|PACS|RBL|MSCC-HUB|REN|20260101120000||ORU^R01^ORU_R01|{control_id}|P|2.5.1\r"
        f"PID|1||{control_id}^^^RBL^MR~9449305552^^^NHS^NH||TEST^PATIENT||19600101|F\r"
        "OBR|1||RPT1|MRSPINE^MRI whole spine|||20260101110000\r"
    ).encode()
    room = max(0, size - len(head))
    if shape == "ed":
        return head + b"OBX|1|ED|PDF^Report||^AP^PDF^Base64^" + b"JVBE" * (room // 4 - 10) + b"\r"
    line = 200
    count = room // line
    return head + b"".join(b"OBX|%d|TX|NOTE||" % i + b"x" * (line - 20) + b"\r" for i in range(count))


def rss_kb() -> tuple[int, int]:
    """This process's (peak, current) resident set size in kB, from /proc/self/status."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0])
    return values.get("VmHWM", -1), values.get("VmRSS", -1)


async def serve_intake_child(uri: str, db_name: str, budget: int | None) -> None:
    """Child-process entry: run intake, print ``PORT n``, answer ``rss`` lines, stop on ``stop``/EOF."""
    from services.intake.service import IntakeService

    client = connect(uri, app_name="mscc-bench-memory")
    with tempfile.TemporaryDirectory(prefix="mscc-bench-memory-") as tmp:
        store = Store(client, db_name)
        await store.ensure_schema()
        settings = intake_settings(db_name, Path(tmp))
        extra: dict[str, object] = {"mllp_frame_total_timeout_s": ACK_TIMEOUT_S}
        if budget is not None:
            extra["intake_max_bytes_in_flight"] = budget
        service = IntakeService(settings.model_copy(update=extra), store)
        await service.start()
        try:
            print(f"PORT {service.mllp.port}", flush=True)
            while True:
                command = (await asyncio.to_thread(sys.stdin.readline)).strip()
                if command == "rss":
                    peak, now = rss_kb()
                    print(f"RSS {peak} {now}", flush=True)
                elif command in ("stop", ""):
                    break
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(15):
                    await service.stop()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await client.close()


async def send_all(port: int, messages: list[bytes], pipelined: bool) -> list[str]:
    """One connection: each message in turn, the next when the previous is acknowledged (or, pipelined,
    all of them at once, then the ACKs); the ACK codes."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
    decoder = FrameDecoder(1 << 20)
    replies: list[bytes] = []

    async def read_replies(count: int) -> None:
        while len(replies) < count:
            async with asyncio.timeout(ACK_TIMEOUT_S):
                chunk = await reader.read(1 << 16)
            if not chunk:
                raise ConnectionError("intake closed the connection before replying")
            replies.extend(e.data for e in decoder.feed(chunk) if isinstance(e, Frame))

    try:
        if pipelined:
            reading = asyncio.create_task(read_replies(len(messages)))
            for message in messages:
                writer.write(frame(message))
                await writer.drain()
            await reading
        for number, message in enumerate(messages if not pipelined else [], start=1):
            writer.write(frame(message))
            await writer.drain()
            await read_replies(number)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    msas = (next((s for s in reply.split(b"\r") if s.startswith(b"MSA")), b"MSA|?") for reply in replies)
    return [msa.split(b"|")[1].decode() for msa in msas]


async def scenario(uri: str, db_name: str, conns: int, args: argparse.Namespace, shape: str) -> bool:
    child = LineChild("intake child")
    budget = ["--budget", str(args.budget)] if args.budget else []
    await child.launch(SCRIPT, "--serve-intake", "--uri", uri, "--db", db_name, *budget)
    try:
        before = int((await child.ask("rss")).split()[2])
        work = [
            [large_message(f"M{conns}{shape[0]}-{c}-{m}", args.size, shape) for m in range(args.messages)]
            for c in range(conns)
        ]
        started = time.perf_counter()
        results = await asyncio.gather(*(send_all(child.port, msgs, args.pipelined) for msgs in work))
        elapsed = time.perf_counter() - started
        peak = int((await child.ask("rss")).split()[1])
    finally:
        await child.stop()
    codes = [code for result in results for code in result]
    good = codes.count("AA")
    growth = (peak - before) / 1024
    print(
        f"{shape:>8} {conns:>5} {len(codes):>8} {good:>5} {elapsed:>7.1f} {before / 1024:>9.0f} {peak / 1024:>9.0f}"
        f" {growth:>9.0f} {growth / conns:>9.0f}",
        flush=True,
    )
    return good == len(codes)


async def run(args: argparse.Namespace, uri: str) -> bool:
    db_name = f"bench_{uuid.uuid4().hex[:12]}"
    client = connect(uri, app_name="mscc-bench")
    ok = True
    try:
        await Store(client, db_name).ensure_schema()
        budget = f"{args.budget} bytes" if args.budget else "the default"
        how = "pipelined (all sent at once)" if args.pipelined else "each sent when the previous is acknowledged"
        print(f"messages of about {args.size} bytes, {args.messages} per connection, {how}; budget: {budget}")
        print("   shape conns messages    AA       s  RSS0(MB)  peak(MB)  +peak(MB) per conn")
        for shape in args.shapes.split(","):
            for conns in (int(c) for c in args.connections.split(",")):
                ok = await scenario(uri, db_name, conns, args, shape) and ok
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(15):
                await client.drop_database(db_name)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await client.close()
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--connections", default="3,8", help="comma-separated connection counts (default 3,8)")
    parser.add_argument("--messages", type=int, default=2, help="messages per connection (default 2)")
    parser.add_argument("--size", type=int, default=4_000_000, help="message size in bytes (default 4000000)")
    parser.add_argument("--shapes", default="ed,segments", help="ed (one base64 OBX), segments (many OBX)")
    parser.add_argument("--pipelined", action="store_true", help="send each connection's messages at once")
    parser.add_argument("--budget", type=int, default=0, help="MSCC_INTAKE_MAX_BYTES_IN_FLIGHT for the child")
    parser.add_argument("--serve-intake", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_intake:
        hub_run(serve_intake_child(args.uri, args.db, args.budget or None))  # the hub's own event loop
        return 0
    banner("intake_memory bench")
    started = time.perf_counter()
    with local_mongodb() as (uri, _pid):
        ok = asyncio.run(run(args, uri))
    return finish(started, ok)


if __name__ == "__main__":
    guarded(main, "the database, the intake child and the mongod")
