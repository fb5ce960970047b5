"""Per-client rate limits of the HTTP API: a token bucket per client id.

Each client may make ``MSCC_RATE_LIMIT_PER_S`` requests per second on average, with bursts of up to
``MSCC_RATE_LIMIT_BURST`` above that; a request beyond it is answered 429 with ``Retry-After`` (the
seconds until the bucket holds a token again). The buckets live in each process's memory: with several
intake replicas behind a load balancer a client may get up to that many times the limit, which is fine for
a guard against a runaway sender (the limit is far above normal traffic), not a quota.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


class RateLimited(Exception):
    """The client has used its allowance; answer 429 and ask it to come back in ``retry_after`` s."""

    def __init__(self, client_id: str, retry_after: float) -> None:
        super().__init__(f"client {client_id} sent more than its rate limit allows")
        self.client_id = client_id
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after)))


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """One bucket per key, refilled at ``rate`` per second up to ``burst``."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> float:
        """Spend one token of ``key``'s bucket: 0.0 when there was one, else the seconds until there is
        (nothing is spent then)."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.at) * self._rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._rate

    def check(self, key: str) -> None:
        """``take``, raising ``RateLimited`` when the bucket is empty."""
        wait = self.take(key)
        if wait > 0:
            raise RateLimited(key, wait)
