"""Recovery benchmark: how long work held by a process killed with ``kill -9`` waits before it is done.

Run from the repository root with the package installed::

    python bench/recovery.py              # about a minute
    python bench/recovery.py --rate 20    # referrals per second sent meanwhile (default 40)

It starts its own mongod (single-node replica set, in a temporary folder, with the hub's transaction
lifetime) unless ``MONGODB_URI`` is set, works in a fresh database that it drops at the end, and runs
``mscc intake``, ``mscc mapper`` and ``mscc notifier`` as three separate processes with their default
leases. Traffic flows all the time: referrals (REF^I12) over MLLP at ``--rate`` per second, each resent
until acknowledged, as an engine does; one rest-hook subscription receives every referral's event.

Then each process in turn is killed with SIGKILL in the middle of its work and started again at once:

  * intake: killed with messages in flight; measured until the sender has an ACK again (what was
    unacknowledged is resent and stored once);
  * mapper: killed while it holds a claimed batch; measured until every message of that batch is mapped;
  * notifier: killed while a lane is delivering; measured until the lane's head (the first delivery
    pending at the kill) reaches the receiver, and, for information, until every delivery pending at
    the kill has (that includes delivering the backlog the kill let grow).

Target: each under 15 s. Figures are printed, never asserted; the exit status is 1 only if some work was
never done within ``--max-wait`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from _common import banner, finish, guarded, local_mongodb
from _parts import Part, hub_env, wait_until

from services.notifier.backport import FILTER_CRITERIA, PAYLOAD_CONTENT
from services.notifier.subscriptions import SubscriptionService
from services.notifier.topics import topic_url
from shared.auth import Caller
from shared.mllp import MllpClient, MllpError
from shared.mongod import free_port
from shared.settings import Settings
from shared.store import Store, connect

TARGET_S = 15.0
RBL = Caller("aos-rbl", "RBL")


def referral(n: int) -> bytes:
    when = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    lines = [
        f"MSH|^~\\&|WIRRAL-PAS|RBL|MSCC-HUB|REN|{when}||REF^I12^REF_I12|REC{n:06d}|P|2.5",
        f"RF1|A^Accepted|S^STAT|MSCC^Metastatic spinal cord compression||R^Referral|RBL-REC-{n}|{when[:8]}|||"
        "Suspected MSCC",
        "PRD|RP|ONCOLOGY^ACUTE||^^^RBL",
        f"PID|1||REC{n:06d}^^^RBL^MR||RECOVERY^ALEX{n}||19580214|M",
        "OBX|1|ST|NEURO^Neurological status||Bilateral leg weakness||||||F",
    ]
    return ("\r".join(lines) + "\r").encode()


class Sender:
    """An engine: sends referrals at ``rate`` per second over MLLP, each resent until acknowledged."""

    def __init__(self, port: int, rate: float) -> None:
        self.port = port
        self.rate = rate
        self.sent = 0
        self.acked = 0
        self.last_ack = 0.0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        client: MllpClient | None = None
        n = 0
        while not self.stop.is_set():
            message = referral(n)
            while not self.stop.is_set():
                try:
                    if client is None:
                        client = await MllpClient.connect("127.0.0.1", self.port, timeout_s=5)
                    reply = await client.send(message)
                    if b"MSA|AA|" in reply:
                        break
                except (MllpError, OSError):
                    pass
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.close()
                    client = None
                await asyncio.sleep(0.1)
            self.acked += 1
            self.last_ack = time.monotonic()
            n += 1
            await asyncio.sleep(1 / self.rate)
        if client is not None:
            await client.close()


class Receiver:
    """The rest-hook endpoint: every distinct event id received."""

    def __init__(self) -> None:
        self.events: set[str] = set()

    async def handle(self, request: Any) -> Any:
        from aiohttp import web

        await request.read()
        event_id = request.headers.get("X-Event-Id")
        if event_id:
            self.events.add(event_id)
        await asyncio.sleep(0.005)  # a real endpoint takes a moment: lanes are busy, not instant
        return web.Response(status=200)


async def main_async(args: argparse.Namespace) -> bool:
    from aiohttp import web

    with local_mongodb() as (uri, _):
        db_name = f"bench_{uuid.uuid4().hex[:10]}"
        client = connect(uri)
        store = Store(client, db_name)
        await store.ensure_schema()
        receiver = Receiver()
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        hook = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        mllp_port = free_port()
        env = hub_env(uri, db_name, mllp_port, free_port())
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            db_name=db_name,
            notifier_allowed_hosts=["127.0.0.1"],
            notifier_allow_http=True,
        )
        sub = await SubscriptionService(store, settings).create(_subscription(settings, hook), RBL)
        sub_id = str(sub.resource["id"])
        parts = {name: Part(name, env) for name in ("intake", "mapper", "notifier")}
        for part in parts.values():
            await part.start()
        sender = Sender(mllp_port, args.rate)
        sending = asyncio.create_task(sender.run())
        results: dict[str, float | None] = {}
        drained: float | None = None
        try:
            if await wait_until(lambda: _at_least(sender, 20), 60) is None:
                print("no traffic: intake did not start")
                return False
            await asyncio.sleep(args.warmup)
            results["intake"] = await _intake(parts["intake"], sender, args.max_wait)
            results["mapper"] = await _mapper(parts["mapper"], store, args.max_wait)
            results["notifier"], drained = await _notifier(parts["notifier"], store, receiver, sub_id, args.max_wait)
        finally:
            sender.stop.set()
            await sending
            for part in parts.values():
                await part.stop()
            await runner.cleanup()
            await client.drop_database(db_name)
            await client.close()
        print(f"\nsent and acknowledged {sender.acked} referrals; {len(receiver.events)} events received")
        print(f"{'killed':<10} {'recovered in':>14}   target < {TARGET_S:.0f} s")
        for name, took in results.items():
            shown = f"{took:.1f} s" if took is not None else "never"
            verdict = "ok" if took is not None and took < TARGET_S else "MISSED"
            print(f"{name:<10} {shown:>14}   {verdict}")
        if drained is not None:
            print(f"(notifier: every delivery pending at the kill received after {drained:.1f} s)")
        return all(took is not None for took in results.values()) and drained is not None


async def _at_least(sender: Sender, n: int) -> bool:
    return sender.acked >= n


async def _intake(part: Part, sender: Sender, max_wait: float) -> float | None:
    acked = sender.acked
    await part.kill()
    killed = time.monotonic()
    await part.start()
    print(f"intake killed after {acked} acknowledged referrals; the sender resends what was unanswered")
    took = await wait_until(lambda: _at_least(sender, acked + 1), max_wait)
    return None if took is None else time.monotonic() - killed


async def _mapper(part: Part, store: Store, max_wait: float) -> float | None:
    """Kill while a batch is claimed; how long until every message of it is mapped."""
    held: list[Any] = []
    deadline = time.monotonic() + 30
    while not held and time.monotonic() < deadline:
        held = [d["_id"] async for d in store.messages.find({"status": "mapping"}, {"_id": 1})]
        if not held:
            await asyncio.sleep(0.005)
    await part.kill()
    killed = time.monotonic()
    print(f"mapper killed holding {len(held)} message(s)" if held else "mapper killed (no batch caught in hand)")
    await part.start()

    async def done() -> bool:
        return await store.messages.count_documents({"_id": {"$in": held}, "status": "mapped"}) == len(held)

    took = await wait_until(done, max_wait)
    return None if took is None else time.monotonic() - killed


async def _notifier(
    part: Part, store: Store, receiver: Receiver, sub_id: str, max_wait: float
) -> tuple[float | None, float | None]:
    """Kill while the lane delivers; how long until the lane's head, then every delivery pending at the
    kill, has been received."""
    pending: list[str] = []
    deadline = time.monotonic() + 30
    while not pending and time.monotonic() < deadline:
        lane = await store.subscriptions.find_one({"_id": sub_id, "lane": {"$exists": True}})
        if lane is not None:
            query = {"subscription_id": sub_id, "status": "pending"}
            cursor = store.deliveries.find(query, {"event_id": 1}).sort("event_number", 1)
            pending = [str(d["event_id"]) async for d in cursor]
        if not pending:
            await asyncio.sleep(0.005)
    await part.kill()
    killed = time.monotonic()
    print(f"notifier killed with {len(pending)} delivery(ies) pending on its lane")
    await part.start()

    async def head() -> bool:
        return not pending or pending[0] in receiver.events

    async def drained() -> bool:
        return set(pending) <= receiver.events

    if await wait_until(head, max_wait) is None:
        return None, None
    resumed = time.monotonic() - killed
    if await wait_until(drained, max_wait) is None:
        return resumed, None
    return resumed, time.monotonic() - killed


def _subscription(settings: Settings, endpoint: str) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "recovery benchmark",
        "criteria": topic_url(settings.base_url, "referral-status"),
        "_criteria": {
            "extension": [{"url": FILTER_CRITERIA, "valueString": "ServiceRequest?requester=Organization/RBL"}]
        },
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": "id-only"}]},
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=40.0, help="referrals sent per second (default 40)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of traffic before the first kill")
    parser.add_argument("--max-wait", type=float, default=60.0, help="give up on a recovery after this long")
    args = parser.parse_args()
    started = time.perf_counter()
    banner("recovery")
    ok = asyncio.run(main_async(args))
    return finish(started, ok)


if __name__ == "__main__":
    guarded(main, "the mscc processes, the database and the local mongod")
