"""Each part run alone (``mscc intake``, ``mscc mapper``, ``mscc notifier``) stops cleanly on SIGTERM and
on Ctrl-C (SIGINT): it stops taking work, answers or hands back what it holds, and exits 0 in bounded
time without a traceback. Real processes against the test mongod; real sockets; a real receiver."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import running
from receivers import loopback_settings, notification_type, rest_hook_channel, serve_http, subscription_body

from services.intake.service import IntakeService
from services.notifier.http import client_session
from services.notifier.service import NotifierService
from services.notifier.subscriptions import SubscriptionService
from shared.auth import Caller
from shared.mllp import END_BLOCK, START_BLOCK, Frame, FrameDecoder, frame
from shared.mongod import free_port
from shared.settings import Settings
from shared.store import Store

ROOT = Path(__file__).resolve().parent.parent
CACHE = os.environ.get("MSCC_CACHE_DIR", str(Path.home() / ".cache" / "mscc"))
STOP_TIMEOUT_S = 3.0
STOP_SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="Ctrl-C")]
RBL = Caller("aos-rbl", "RBL")


def part_env(mongodb_uri: str, settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a part run against the test mongod and this test's database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSCC_") and k != "MONGODB_URI"}
    env.update(
        MONGODB_URI=mongodb_uri,
        MSCC_DB_NAME=settings.db_name,
        MSCC_STATE_DIR=str(settings.state_dir),
        MSCC_CACHE_DIR=CACHE,
        MSCC_STOP_TIMEOUT_S=str(STOP_TIMEOUT_S),
        **extra,
    )
    return env


@contextmanager
def part(env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[str]]:
    """``mscc <args>`` as a child process; killed (by its pid) if the test leaves it running."""
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


async def wait_for_line(process: subprocess.Popen[str], text: str, seconds: float = 60) -> str:
    """The output up to the first line holding ``text`` (fails if the process ends first)."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = await asyncio.to_thread(process.stdout.readline)
        if not line:
            break
        lines.append(line)
        if text in line:
            return "".join(lines)
    raise AssertionError(f"{text!r} never appeared:\n" + "".join(lines))


async def stop_and_wait(process: subprocess.Popen[str], sig: signal.Signals, head: str) -> tuple[str, float]:
    """Send ``sig``; the rest of the output and how long the process took to exit. Asserts the
    clean exit: status 0 and no traceback."""
    started = time.monotonic()
    process.send_signal(sig)
    rest, _ = await asyncio.to_thread(process.communicate, None, 60)
    took = time.monotonic() - started
    output = head + rest
    assert process.returncode == 0, output
    assert "Traceback" not in output, output
    return output, took


def adt(n: int) -> bytes:
    lines = [
        f"MSH|^~\\&|WIRRAL-PAS|RBL|MSCC-HUB|REN|20260101120000||ADT^A01|STOP{n:05d}|P|2.4",
        "EVN|A01|20260101120000",
        f"PID|1||RBL{n:05d}^^^RBL^MR||STOP^ALEX{n}||19580214|M",
        f"PV1|1|I|WARD1^BED2||||||||||||||||V{n}",
    ]
    return ("\r".join(lines) + "\r").encode()


# --- intake ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", STOP_SIGNALS)
async def test_intake_answers_what_it_has_read_keeps_a_half_frame_and_exits_0(
    mongodb_uri: str, settings: Settings, store: Store, sig: signal.Signals
) -> None:
    mllp_port = free_port()
    env = part_env(mongodb_uri, settings, MSCC_MLLP_PORT=str(mllp_port), MSCC_HTTP_PORT=str(free_port()))
    with part(env, "intake") as process:
        head = await wait_for_line(process, "intake ready")
        reader, writer = await asyncio.open_connection("127.0.0.1", mllp_port)
        # Twenty whole messages and the start of another, in one write: the hub reads them, commits
        # the twenty as a group and is told to stop while they are in flight.
        writer.write(b"".join(frame(adt(n)) for n in range(20)) + START_BLOCK + adt(99)[:40])
        await writer.drain()
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(stop_and_wait(process, sig, head))
        received = await asyncio.wait_for(reader.read(), 30)  # until the hub closes the connection
        writer.close()
        output, took = await stopping
    assert took < STOP_TIMEOUT_S + 5, output
    decoder = FrameDecoder(1 << 20)
    acks = [event.data for event in decoder.feed(received) if isinstance(event, Frame)]
    # Every whole message answered AA, once, after its commit: each is stored, ready for the mapper.
    assert len(acks) == 20 and all(b"MSA|AA|STOP" in a for a in acks), received
    stored = await store.messages.count_documents({"status": "ready", "header.control_id": {"$regex": "^STOP"}})
    assert stored == 20
    # The half frame is kept, with the reason, and was not acknowledged.
    kept = await store.messages.find_one({"status": "rejected"})
    assert kept is not None and "the hub stopped" in kept["reason"], kept
    assert b"STOP00099" not in received and END_BLOCK not in kept["raw"]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


async def test_intake_killed_leaves_no_parse_pool_worker_behind(
    mongodb_uri: str, settings: Settings, store: Store
) -> None:
    """kill -9 runs no shutdown: the pool's workers notice their parent is gone and end."""
    env = part_env(mongodb_uri, settings, MSCC_MLLP_PORT=str(free_port()), MSCC_HTTP_PORT=str(free_port()))
    with part(env, "intake") as process:
        await wait_for_line(process, "intake ready")
        workers = _children(process.pid)
        assert len(workers) >= 2, workers  # the parse pool's two workers (and their resource tracker)
        process.kill()
        process.wait(timeout=10)
    for _ in range(50):  # the workers look for their parent once a second
        left = [pid for pid in workers if running(pid)]
        if not left:
            break
        await asyncio.sleep(0.2)
    assert not left, workers


# --- mapper ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", STOP_SIGNALS)
async def test_mapper_finishes_or_hands_back_its_batch_and_exits_0(
    mongodb_uri: str, settings: Settings, store: Store, intake: IntakeService, sig: signal.Signals
) -> None:
    for n in range(400):
        reply = await intake.hl7.receive(adt(n), channel="mllp", peer="test", caller=RBL)
        assert b"MSA|AA|" in reply.body
    env = part_env(mongodb_uri, settings, MSCC_MAPPER_BATCH_SIZE="20")
    with part(env, "mapper") as process:
        head = await wait_for_line(process, "mapper running")
        deadline = time.monotonic() + 30
        # another process's progress: only the database can say
        while not await store.messages.count_documents({"status": "mapped"}) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        output, took = await stop_and_wait(process, sig, head)
    assert took < STOP_TIMEOUT_S + 5, output
    mapped = await store.messages.count_documents({"status": "mapped"})
    assert mapped > 0
    # Nothing is left claimed: what was not mapped is ready for the next worker now, not after a lease.
    assert await store.messages.count_documents({"status": "mapping"}) == 0
    assert await store.messages.count_documents({"lease": {"$exists": True}}) == 0
    assert await store.messages.count_documents({"status": "ready"}) == 400 - mapped


# --- notifier ----------------------------------------------------------------------------------------


class SlowReceiver:
    """A rest-hook receiver answering the handshake at once and each event after ``delay_s``."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.event_seen = asyncio.Event()
        self.release = asyncio.Event()  # ends every wait (the server cannot stop with a handler waiting)
        self.answered = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if notification_type(await request.json()) == "event-notification":
            self.event_seen.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), self.delay_s)
            self.answered += 1
        return web.Response(status=200)


@pytest.fixture
async def hook() -> AsyncIterator[tuple[SlowReceiver, str]]:
    receiver = SlowReceiver(delay_s=60)
    async with serve_http(receiver.handle) as base:
        yield receiver, f"{base}/hook"
        receiver.release.set()


async def subscription_with_one_event(store: Store, settings: Settings, url: str) -> str:
    now = datetime.now(UTC)
    channel = rest_hook_channel(url, "id-only")
    body = subscription_body(
        settings,
        channel,
        topic="referral-status",
        reason="stop test",
        filters=["ServiceRequest?requester=Organization/RBL"],
    )
    written = await SubscriptionService(store, settings, lambda: now).create(body, RBL)
    referral: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": "sr-stop",
        "meta": {"versionId": "1"},
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "requester": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RBL"}},
    }
    doc = {"type": "ServiceRequest", "id": "sr-stop", "version": 1, "last_updated": now, "resource": referral}
    doc["trusts"] = ["RBL"]  # the referring trust may see it (shared/visibility.py)
    await store.history.insert_one({"_id": "ServiceRequest/sr-stop/_history/1", **doc})
    await store.resources.insert_one({"_id": "ServiceRequest/sr-stop", **doc})
    await store.outbox.insert_one(
        {
            "_id": "ServiceRequest/sr-stop/_history/1",
            "type": "ServiceRequest",
            "id": "sr-stop",
            "version": 1,
            "kind": "created",
            "created_at": now,
            "message_id": None,
            "status": "ready",
        }
    )
    return str(written.resource["id"])


@pytest.mark.parametrize("sig", STOP_SIGNALS)
async def test_notifier_cuts_an_attempt_that_outlasts_the_stop_and_releases_the_lane_at_once(
    mongodb_uri: str, settings: Settings, store: Store, hook: tuple[SlowReceiver, str], sig: signal.Signals
) -> None:
    receiver, url = hook
    settings = loopback_settings(settings)
    sub_id = await subscription_with_one_event(store, settings, url)
    env = part_env(
        mongodb_uri,
        settings,
        MSCC_NOTIFIER_ALLOWED_HOSTS="127.0.0.1",
        MSCC_NOTIFIER_ALLOW_HTTP="true",
        MSCC_NOTIFIER_TIMEOUT_S="60",
    )
    with part(env, "notifier") as process:
        head = await wait_for_line(process, "notifier running")
        await asyncio.wait_for(receiver.event_seen.wait(), 30)  # the attempt is in hand, and hangs
        held = await store.subscriptions.find_one({"_id": sub_id})
        assert held is not None and "lane" in held
        output, took = await stop_and_wait(process, sig, head)
    assert STOP_TIMEOUT_S - 0.5 < took < STOP_TIMEOUT_S + 5, output
    assert "lanes still delivering were cut and released" in output
    released = await store.subscriptions.find_one({"_id": sub_id})
    assert released is not None and "lane" not in released
    # Another notifier takes the lane at once (not after a lease), and delivers the event again.
    receiver.delay_s = 0
    async with client_session(settings) as session:
        service = NotifierService(store, settings, session)
        claimed = await service.delivery.claim(1)
        assert [d["_id"] for d in claimed] == [sub_id]
        await store.subscriptions.update_one({"_id": sub_id}, {"$unset": {"lane": ""}})
        await service.run(asyncio.Event(), burst=True)
    delivery = await store.deliveries.find_one({"subscription_id": sub_id})
    assert delivery is not None and delivery["status"] == "delivered"


async def test_notifier_finishes_an_attempt_in_hand_within_the_stop(
    mongodb_uri: str, settings: Settings, store: Store, hook: tuple[SlowReceiver, str]
) -> None:
    receiver, url = hook
    receiver.delay_s = 1.0
    settings = loopback_settings(settings)
    sub_id = await subscription_with_one_event(store, settings, url)
    env = part_env(mongodb_uri, settings, MSCC_NOTIFIER_ALLOWED_HOSTS="127.0.0.1", MSCC_NOTIFIER_ALLOW_HTTP="true")
    with part(env, "notifier") as process:
        head = await wait_for_line(process, "notifier running")
        await asyncio.wait_for(receiver.event_seen.wait(), 30)
        output, took = await stop_and_wait(process, signal.SIGTERM, head)
    assert took < STOP_TIMEOUT_S, output
    assert receiver.answered == 1
    delivery = await store.deliveries.find_one({"subscription_id": sub_id})
    assert delivery is not None and delivery["status"] == "delivered"
    released = await store.subscriptions.find_one({"_id": sub_id})
    assert released is not None and "lane" not in released


async def test_a_stop_signal_while_starting_is_remembered_and_stops_the_loop_at_once() -> None:
    """A SIGTERM that comes while a part is still starting (before its event loop handles signals) no
    longer ends the process with 143: it is remembered, and the stop event is set as soon as the loop
    takes the signals over, so everything stops in order."""
    import os

    from services import signals

    saved = {sig: signal.getsignal(sig) for sig in signals.STOP_SIGNALS}
    loop = asyncio.get_running_loop()
    try:
        signals.hold_stop_signals()
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.stop_requested()
        stop = asyncio.Event()
        signals.stop_on_signals(stop)
        assert stop.is_set()
    finally:
        for sig in signals.STOP_SIGNALS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, saved[sig])
        signals._received.clear()
