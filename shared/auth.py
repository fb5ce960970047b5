"""Who is calling: every HTTP route and every MLLP connection gets its ``Caller`` from here.

Until authentication lands, every caller is the configured development client (``MSCC_DEV_CLIENT_ID``,
``MSCC_DEV_CLIENT_ODS``); adding real authentication changes only this module. When the development
client is not allowed (``MSCC_ALLOW_DEV_CLIENT=false``), callers are refused with ``Unauthenticated``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .settings import Settings


class Unauthenticated(Exception):
    """The caller could not be identified; answer 401 (HTTP) or close the connection (MLLP)."""


@dataclass(frozen=True)
class Caller:
    client_id: str
    ods_code: str
    scopes: frozenset[str] = field(default_factory=frozenset)

    def to_doc(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "ods_code": self.ods_code, "scopes": sorted(self.scopes)}


DEV_SCOPES = frozenset({"hl7v2/*.write", "system/*.write", "system/*.read"})


def _dev_caller(settings: Settings) -> Caller:
    if not settings.allow_dev_client:
        raise Unauthenticated("no authentication is configured and the development client is disabled")
    return Caller(settings.dev_client_id, settings.dev_client_ods, DEV_SCOPES)


def caller_for_http(settings: Settings, headers: dict[str, str]) -> Caller:
    """The caller of one HTTP request (headers are unused until authentication lands)."""
    return _dev_caller(settings)


def caller_for_mllp(settings: Settings, peer: str) -> Caller:
    """The caller behind one MLLP connection from ``peer``."""
    return _dev_caller(settings)
