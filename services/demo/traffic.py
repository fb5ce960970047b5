"""How the demo reaches the hub: as the trusts and the MSCC team do, over MLLP and the HTTP API.

Each referring trust calls the API with its own client and a real access token (client credentials at
``/oauth2/token``), so what it sends and subscribes to is its own under the hub's authorisation rules:
the demo registers one secret client per trust (``mscc-demo-rbl``, ``mscc-demo-rjr``; a new secret on
each run). The MSCC team's calls are the development client's: in development an HTTP caller on
loopback that sends no Authorization header is that client, whose organisation is the hub's own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from shared.clients import SECRET, ClientError, ClientRegistry
from shared.mllp import MllpClient
from shared.store import Store

from .messages import Json, Run, Trust

# What a referring trust's engine is granted by default (``mscc clients add`` without --scope).
TRUST_SCOPES = [
    "system/*.rs",
    "system/ServiceRequest.cu",
    "system/Bundle.c",
    "system/Subscription.cud",
    "system/hl7v2.c",
]
FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True)
class Answer:
    """What the hub answered an HTTP request."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case

    def issue(self) -> str:
        """The first issue's diagnostics of an OperationOutcome answer (or the body, shortened)."""
        if isinstance(self.body, dict) and self.body.get("resourceType") == "OperationOutcome":
            return str((self.body.get("issue") or [{}])[0].get("diagnostics", ""))
        return str(self.body)[:200]


async def trust_client(store: Store, trust: Trust, run: Run) -> tuple[str, str]:
    """The client id and a fresh secret of the demo's client for ``trust``: registered on the first run,
    given a new secret on later ones (a name taken by another kind of client gets this run's suffix)."""
    registry = ClientRegistry(store)
    name = f"mscc-demo-{trust.ods.lower()}"
    try:
        record = await registry.named(name)
    except ClientError:
        record = None
    fits = (
        record is not None
        and record.active
        and record.auth_method == SECRET
        and record.ods_code == trust.ods
        and set(TRUST_SCOPES) <= set(record.scopes)
    )
    if record is not None and fits:
        record, secret = await registry.rotate(name)
        return record.client_id, secret
    if record is not None:
        name = f"{name}-{run.id.lower()}"
    record, added = await registry.add(name, trust.ods, TRUST_SCOPES)
    assert added is not None  # a secret client
    return record.client_id, added


class Hub:
    """The hub's HTTP API at ``base`` and its MLLP listener, on one HTTP session and one MLLP connection."""

    def __init__(self, session: aiohttp.ClientSession, base: str, mllp: tuple[str, int]) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.mllp_address = mllp
        self._mllp: MllpClient | None = None

    async def close(self) -> None:
        if self._mllp is not None:
            await self._mllp.close()
            self._mllp = None

    async def send_hl7(self, message: bytes) -> str:
        """Send one message over MLLP and return its ACK (segments on one line, `` | `` between them)."""
        if self._mllp is None:
            self._mllp = await MllpClient.connect(*self.mllp_address)
        ack = await self._mllp.send(message)
        return ack.decode("utf-8", "replace").strip("\r").replace("\r", " | ")

    async def token(self, client_id: str, secret: str) -> dict[str, str]:
        """Authorization headers with an access token for the client (client credentials, HTTP Basic)."""
        auth = aiohttp.BasicAuth(client_id, secret)
        async with self.session.post(
            f"{self.base}/oauth2/token", data={"grant_type": "client_credentials"}, auth=auth
        ) as response:
            body = await response.json(content_type=None)
            if response.status != 200:
                raise RuntimeError(f"the token endpoint refused the demo client {client_id}: {body}")
        return {"Authorization": f"Bearer {body['access_token']}"}

    async def request(
        self,
        method: str,
        path: str,
        body: Json | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Answer:
        """One FHIR API call (``headers`` carry a trust's token; none: the development client)."""
        sent = dict(headers or {})
        data = None
        if body is not None:
            sent["Content-Type"] = FHIR_JSON
            data = json.dumps(body)
        async with self.session.request(
            method, f"{self.base}{path}", data=data, headers=sent, params=params or None
        ) as response:
            text = await response.text()
            try:
                parsed: Any = json.loads(text) if text else None
            except json.JSONDecodeError:
                parsed = text
            return Answer(response.status, parsed, {k.lower(): v for k, v in response.headers.items()})

    async def search(self, path: str, headers: dict[str, str] | None = None, **params: str) -> list[Json]:
        """The resources of a search's first page (an empty list when the search is refused)."""
        answer = await self.request("GET", path, headers=headers, params=params)
        if answer.status != 200 or not isinstance(answer.body, dict):
            return []
        return [e["resource"] for e in answer.body.get("entry") or [] if "resource" in e]
