"""Guarding the token endpoint: every refusal is audited, and refusals are limited per peer address.

A refused token request costs the hub a scrypt hash (a secret checked) or a signature check, and tells
the caller something. So each peer address has a token bucket of refusals: ``MSCC_TOKEN_REFUSALS_PER_MIN``
a minute on average, bursts of up to ``MSCC_TOKEN_REFUSALS_BURST``. Each request takes one token before
any work is done (so a burst of concurrent guesses is counted as it arrives) and a granted request gives
it back: a trust's engine getting its tokens is never slowed, a caller guessing secrets is answered 429
with ``Retry-After`` before any hash is computed. The buckets live in each process's memory, like the
API's rate limits; behind a reverse proxy every caller has the proxy's address (limit per client address
at the proxy too).

Each refusal is an AuditEvent (``login_failure``): DICOM ``110114`` User Authenticated, subtype ``110122``
Login, outcome 4 (the request was refused) or 8 (the hub failed), the reason the client was told, the
client id the request claimed (not authenticated: it is what was sent) and the peer address. While an
address is throttled only its first 429 is recorded, so a flood cannot fill the audit trail.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.audit import DICOM, AuditFacts, Hub, Interaction, build_event

log = logging.getLogger(__name__)

USER_AUTHENTICATED = {"system": DICOM, "code": "110114", "display": "User Authenticated"}
LOGIN = {"system": DICOM, "code": "110122", "display": "Login"}
MAX_PEERS = 10_000  # buckets kept before full ones are dropped (many addresses cannot grow memory for ever)


@dataclass
class _Bucket:
    tokens: float
    at: float
    throttled: bool = False  # refusing this address now: its first 429 was recorded


class RefusalLimiter:
    """A bucket of refusals per peer address, refilled at ``per_min`` a minute up to ``burst``."""

    def __init__(self, per_min: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_min / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, peer: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(peer)
        if bucket is None:
            if len(self._buckets) >= MAX_PEERS:
                self._prune(now)
            bucket = self._buckets[peer] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.at) * self._rate)
        bucket.at = now
        return bucket

    def _prune(self, now: float) -> None:
        full = [p for p, b in self._buckets.items() if b.tokens + (now - b.at) * self._rate >= self._burst]
        for peer in full:
            del self._buckets[peer]

    def admit(self, peer: str) -> tuple[float, bool]:
        """Take one token of ``peer``'s bucket: ``(0.0, False)`` when there was one; else the seconds until
        there is one, and whether this is the first refusal since the address was last admitted."""
        bucket = self._bucket(peer)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            bucket.throttled = False
            return 0.0, False
        first = not bucket.throttled
        bucket.throttled = True
        return (1.0 - bucket.tokens) / self._rate, first

    def granted(self, peer: str) -> None:
        """Give back the token a granted request took: only refusals count."""
        bucket = self._bucket(peer)
        bucket.tokens = min(self._burst, bucket.tokens + 1.0)


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def login_failure(
    hub: Hub, recorded: datetime, peer: str | None, client_id: str | None, status: int, reason: str
) -> dict[str, Any]:
    """The stored document (as ``shared.audit.to_doc`` shapes it) of the AuditEvent for one refused token
    request: who tried (the client id it claimed, its address), the outcome and the reason."""
    facts = AuditFacts(
        interaction=Interaction("admin", "login", "E"),
        recorded=recorded,
        status=status,
        caller=None,
        peer=peer,
        method="POST",
        path="/oauth2/token",
        reason=reason,
    )
    event = build_event(facts, hub, str(uuid.uuid4()))
    event["type"] = USER_AUTHENTICATED
    event["subtype"] = [LOGIN]
    client = event["agent"][0]
    if client_id:
        client["who"] = {"display": f"{client_id} (claimed, not authenticated)"}
        client["altId"] = client_id
    return {
        "_id": event["id"],
        "recorded": recorded,
        "entity_keys": [],
        "agent_keys": [client_id] if client_id else [],
        "outcome": event["outcome"],
        "resource": event,
    }
