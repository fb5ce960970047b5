"""Authentication benchmark: FHIR reads per second with the development client and with a bearer token.

Run from the repository root with the package installed::

    python bench/auth.py              # about 40 s
    python bench/auth.py --quick      # about 15 s smoke run
    python bench/auth.py --help

The hub (intake's HTTP application, as ``mscc intake`` serves it: uvicorn on a loopback port) runs in a
child process, so the load generator does not share its event loop. The same read,
``GET /fhir/ServiceRequest/{id}``, is sent by ``--concurrency`` keep-alive connections for ``--seconds``,
in alternating rounds: with no Authorization header (the development client, admitted on loopback in
development) and with a real access token from ``/oauth2/token`` (a registered client; the token's
signature, claims and client state are checked on every request). It prints both rates and their ratio:
the target is that a token costs less than half the throughput (ratio above 0.5). Figures are printed,
never asserted. It starts its own mongod unless ``MONGODB_URI`` is set and drops its database at the end.
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

import aiohttp
from _common import LineChild, banner, finish, guarded, intake_settings, local_mongodb

from services.runner import run as hub_run
from shared.clients import ClientRegistry
from shared.store import Store, connect

HOST = "127.0.0.1"
SCRIPT = str(Path(__file__).resolve())
TARGET_RATIO = 0.5
REFERRAL = {
    "resourceType": "ServiceRequest",
    "status": "active",
    "intent": "order",
    "identifier": [{"system": "https://example.org/referral", "value": "BENCH-AUTH-1"}],
    "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9449305552"}},
}


async def serve_hub(uri: str, db_name: str) -> None:
    """Child-process entry: serve the hub's HTTP app, print ``PORT n``, stop on ``stop``/EOF."""
    import uvicorn

    from services.api.app import create_app
    from services.intake.service import IntakeService
    from shared.mongod import free_port

    client = connect(uri, app_name="mscc-bench-auth")
    with tempfile.TemporaryDirectory(prefix="mscc-bench-auth-") as tmp:
        port = free_port()
        # the limit is for runaway senders; here one client sends as fast as it can on purpose
        settings = intake_settings(db_name, Path(tmp)).model_copy(
            update={"http_port": port, "rate_limit_per_s": 1e9, "rate_limit_burst": 10**9}
        )
        store = Store(client, db_name)
        await store.ensure_schema()
        service = IntakeService(settings, store)
        await service.start(mllp=False)
        config = uvicorn.Config(
            create_app(service), host=HOST, port=port, log_level="warning", log_config=None, lifespan="off"
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        try:
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no start event
                await asyncio.sleep(0.01)
            print(f"PORT {port}", flush=True)
            while (await asyncio.to_thread(sys.stdin.readline)).strip() not in ("stop", ""):
                pass
        finally:
            server.should_exit = True
            await serving
            await service.stop()
            await client.close()


async def _round(url: str, headers: dict[str, str], concurrency: int, seconds: float) -> tuple[int, int]:
    """Reads answered 200 and other answers, from ``concurrency`` loops over keep-alive connections."""
    ok = failed = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def loop() -> None:
            nonlocal ok, failed
            while time.perf_counter() < deadline:
                async with session.get(url) as response:
                    await response.read()
                    if response.status == 200:
                        ok += 1
                    else:
                        failed += 1

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return ok, failed


async def run(args: argparse.Namespace, uri: str) -> bool:
    db_name = f"bench_{uuid.uuid4().hex[:10]}"
    mongo = connect(uri, app_name="mscc-bench-auth")
    child = LineChild("hub")
    try:
        await child.launch(SCRIPT, "--serve", "--uri", uri, "--db", db_name)
        base = f"http://{HOST}:{child.port}"
        # the MSCC team's client (the hub's own ODS code), which may read every referral, as the dev client may
        client, secret = await ClientRegistry(Store(mongo, db_name)).add("bench", "REN", ["system/*.rs"])
        assert secret is not None
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{base}/fhir/ServiceRequest", json=REFERRAL, headers={"Content-Type": "application/fhir+json"}
            ) as created:
                assert created.status in (200, 201), await created.text()
                rid = (await created.json())["id"]
            form = {"grant_type": "client_credentials", "client_id": client.client_id, "client_secret": secret}
            async with session.post(f"{base}/oauth2/token", data=form) as answered:
                assert answered.status == 200, await answered.text()
                token = (await answered.json())["access_token"]
        url = f"{base}/fhir/ServiceRequest/{rid}"
        modes = {"development client": {}, "bearer token": {"Authorization": f"Bearer {token}"}}
        totals = {name: [0, 0, 0.0] for name in modes}
        await _round(url, {}, args.concurrency, 1.0)  # warm-up
        for number in range(args.rounds):
            for name, headers in modes.items():
                ok, failed = await _round(url, headers, args.concurrency, args.seconds)
                totals[name][0] += ok
                totals[name][1] += failed
                totals[name][2] += args.seconds
                print(f"round {number + 1} {name:<19} {ok / args.seconds:8.0f} reads/s  ({failed} not 200)")
        rates = {name: ok / elapsed for name, (ok, _, elapsed) in totals.items()}
        ratio = rates["bearer token"] / rates["development client"]
        print(f"\nSUMMARY ({args.concurrency} connections, {args.rounds} x {args.seconds:g} s per mode)")
        for name, rate in rates.items():
            print(f"  {name:<19} {rate:8.0f} reads/s")
        verdict = "met" if ratio > TARGET_RATIO else "NOT met"
        print(f"  ratio token/dev     {ratio:8.2f}   (target > {TARGET_RATIO}: {verdict})")
        return all(failed == 0 for _, failed, _ in totals.values())
    finally:
        await child.stop()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(15):
                await mongo.drop_database(db_name)
        await mongo.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each round (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode, alternating (default 3)")
    parser.add_argument("--concurrency", type=int, default=16, help="connections (default 16)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds = 2.0, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        hub_run(serve_hub(args.uri, args.db))
        return 0
    banner("auth bench")
    started = time.perf_counter()
    with local_mongodb() as (uri, _):
        ok = asyncio.run(run(args, uri))
    return finish(started, ok)


if __name__ == "__main__":
    guarded(main, "the database, the hub child and the mongod")
