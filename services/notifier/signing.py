"""Notification signatures: HMAC-SHA256 over the exact body bytes, with the subscription's secret.

The header is ``X-Signature: sha256=<hex>``. A receiver recomputes it over the bytes it received (before
any JSON parsing) and compares in constant time; ``verify`` does exactly that and is what the tests use.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SIGNATURE_HEADER = "X-Signature"
EVENT_ID_HEADER = "X-Event-Id"
EVENT_NUMBER_HEADER = "X-Event-Number"
SUBSCRIPTION_HEADER = "X-Subscription-Id"
SCHEME = "sha256="


def new_secret() -> str:
    """A fresh secret: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def sign(body: bytes, secret: str) -> str:
    """The ``X-Signature`` value for ``body``."""
    return SCHEME + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header: str | None) -> bool:
    """True when ``header`` is the signature of ``body`` under ``secret`` (False for a missing header)."""
    if not header or not header.startswith(SCHEME):
        return False
    return hmac.compare_digest(sign(body, secret), header.strip())
