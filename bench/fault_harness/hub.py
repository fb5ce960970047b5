"""The hub under test: its own mongod (which a scenario may kill and start again on the same data),
``mscc intake``, ``mscc mapper`` and ``mscc notifier`` as separate processes, and the subscriptions the
trusts make through the API with their own clients and tokens."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from _parts import Part, hub_env, wait_until

from services.notifier.backport import FILTER_CRITERIA, PAYLOAD_CONTENT
from services.notifier.topics import topic_url
from shared.clients import ClientRegistry
from shared.mongod import LocalMongod, find_mongod, free_port
from shared.store import Document, Store, connect

PART_NAMES = ("intake", "mapper", "notifier")
TRUST_SCOPES = ["system/*.rs", "system/ServiceRequest.cu", "system/Subscription.cud"]


class Hub:
    def __init__(self, workdir: Path, settings: dict[str, str]) -> None:
        self.workdir = workdir
        cache = Path(os.environ.get("MSCC_CACHE_DIR", Path.home() / ".cache" / "mscc"))
        self.binary = find_mongod(cache)
        self.dbpath = workdir / "db"
        self.mongod = LocalMongod(self.binary, self.dbpath, cache_gb=0.25)
        self.db_name = f"faults_{uuid.uuid4().hex[:8]}"
        self.mllp_port = free_port()
        self.http_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        self.settings = settings
        self.parts: dict[str, Part] = {}
        self.store: Store | None = None
        self.subscriptions: dict[str, str] = {}  # subscription id -> what it follows ("RBL referral-status")
        self.trust_subscription: dict[str, str] = {}  # ODS code -> its referral-status subscription

    async def start(self) -> None:
        await asyncio.to_thread(self.mongod.start, detach=True)
        self.store = Store(connect(self.mongod.uri), self.db_name)
        await self.store.ensure_schema()
        env = hub_env(
            self.mongod.uri,
            self.db_name,
            self.mllp_port,
            self.http_port,
            MSCC_PUBLIC_BASE_URL=self.base_url,
            **self.settings,
        )
        self.parts = {name: Part(name, env, self.workdir / f"{name}.log") for name in PART_NAMES}
        for part in self.parts.values():
            await part.start()
        if await wait_until(self.http_ready, 90, 0.2) is None:
            raise RuntimeError(f"mscc intake did not answer on {self.base_url} (see {self.workdir}/intake.log)")

    async def http_ready(self) -> bool:
        try:
            async with aiohttp.ClientSession() as session, session.get(f"{self.base_url}/healthz") as answer:
                return answer.status == 200
        except aiohttp.ClientError:
            return False

    @property
    def db(self) -> Store:
        assert self.store is not None
        return self.store

    async def kill_mongod(self) -> None:
        """SIGKILL: no shutdown, no final journal flush beyond what was already committed."""
        process = self.mongod.process
        if process is not None and process.poll() is None:
            process.kill()
            await asyncio.to_thread(process.wait)
        self.mongod.process = None

    async def start_mongod(self) -> None:
        """Start mongod again on the same data (and the same port: the hub's processes reconnect)."""
        self.mongod = LocalMongod(self.binary, self.dbpath, cache_gb=0.25)
        await asyncio.to_thread(self.mongod.start, detach=True)

    async def subscribe(self, trusts: list[str], endpoint: Any, secrets: dict[str, str]) -> None:
        """Each trust registers an API client and subscribes to its referrals' status with its own token;
        the MSCC team (the development client, from loopback) subscribes the first trust to data quality."""
        registry = ClientRegistry(self.db)
        async with aiohttp.ClientSession(base_url=self.base_url) as http:
            for ods in trusts:
                record, secret = await registry.add(f"faults-{ods.lower()}-{uuid.uuid4().hex[:6]}", ods, TRUST_SCOPES)
                assert secret is not None
                auth = aiohttp.BasicAuth(record.client_id, secret)
                async with http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=auth) as answer:
                    answer.raise_for_status()
                    token = (await answer.json())["access_token"]
                body = self._subscription(ods, "referral-status", endpoint(ods))
                sub = await self._create(http, body, {"Authorization": f"Bearer {token}"}, secrets)
                self.subscriptions[sub] = f"{ods} referral-status"
                self.trust_subscription[ods] = sub
            body = self._subscription(trusts[0], "data-quality", endpoint(f"{trusts[0]}-dq"))
            sub = await self._create(http, body, {}, secrets)
            self.subscriptions[sub] = f"{trusts[0]} data-quality (made by the MSCC team)"

        async def active() -> bool:
            query = {"_id": {"$in": list(self.subscriptions)}, "status": "active"}
            return await self.db.subscriptions.count_documents(query) == len(self.subscriptions)

        if await wait_until(active, 60, 0.2) is None:
            raise RuntimeError("the subscriptions' handshakes did not succeed")

    async def _create(
        self, http: aiohttp.ClientSession, body: Document, headers: dict[str, str], secrets: dict[str, str]
    ) -> str:
        headers = {**headers, "Content-Type": "application/fhir+json"}
        async with http.post("/fhir/Subscription", json=body, headers=headers) as answer:
            if answer.status != 201:
                raise RuntimeError(f"Subscription refused ({answer.status}): {await answer.text()}")
            sub = str((await answer.json())["id"])
            secrets[sub] = answer.headers["X-Subscription-Secret"]
            return sub

    def _subscription(self, ods: str, topic: str, endpoint: str) -> Document:
        return {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": f"fault harness: {topic} for {ods}",
            "criteria": topic_url(self.base_url, topic),
            "_criteria": {
                "extension": [{"url": FILTER_CRITERIA, "valueString": f"ServiceRequest?requester=Organization/{ods}"}]
            },
            "channel": {
                "type": "rest-hook",
                "endpoint": endpoint,
                "payload": "application/fhir+json",
                "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": "id-only"}]},
            },
        }

    async def stop(self) -> None:
        for part in self.parts.values():
            await part.stop()
        if self.store is not None:
            await self.store.client.close()
        await asyncio.to_thread(self.mongod.stop)
