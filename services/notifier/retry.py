"""When to try a failed delivery again, and when to give up on it (dead-letter).

Exponential backoff with jitter (the hub's job backoff, ``shared/retry.py``): attempt n waits
``base * 2**(n-1)`` seconds, capped at ``max_delay``, scaled by a random factor in [0.5, 1.0] so that
receivers coming back up are not hit by every subscription at once. A receiver's ``Retry-After``
(429 and 503) replaces the backoff, capped at ``retry_after_max``. A delivery is dead-lettered after
``max_attempts`` attempts, or when ``max_age`` has passed since it was queued (or redelivered); no retry
is scheduled past that age.
"""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from shared.retry import Backoff
from shared.settings import Settings


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 12
    max_age: timedelta = timedelta(hours=12)
    base_s: float = 2.0
    max_delay_s: float = 600.0
    retry_after_max_s: float = 3600.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings, rng: random.Random | None = None) -> RetryPolicy:
        return cls(
            max_attempts=settings.notifier_max_attempts,
            max_age=timedelta(seconds=settings.notifier_max_age_s),
            base_s=settings.notifier_backoff_base_s,
            max_delay_s=settings.notifier_backoff_max_s,
            retry_after_max_s=settings.notifier_retry_after_max_s,
            rng=rng or random.Random(),
        )

    def delay_s(self, attempts: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.retry_after_max_s)
        return Backoff(self.base_s, self.max_delay_s, jitter=0.5, rng=self.rng).delay(attempts)

    def next_attempt(
        self, attempts: int, age_from: datetime, now: datetime, retry_after_s: float | None = None
    ) -> datetime | None:
        """When to try again after ``attempts`` failed attempts; None: give up (dead-letter)."""
        deadline = age_from + self.max_age
        if attempts >= self.max_attempts or now >= deadline:
            return None
        return min(now + timedelta(seconds=self.delay_s(attempts, retry_after_s)), deadline)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())
