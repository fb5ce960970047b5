"""Who is calling: every HTTP request and every MLLP connection gets a ``Caller`` (client id, ODS code,
SMART scopes), and the errors that refuse one.

HTTP callers present a bearer token (``shared/bearer.py`` resolves it: the hub's own tokens from
``/oauth2/token``, or an external identity provider's). In development only, a caller on the loopback
interface that sends no Authorization header is the development client (``MSCC_DEV_CLIENT_ID``,
``MSCC_DEV_CLIENT_ODS``, ``DEV_SCOPES``), unless ``MSCC_ALLOW_DEV_CLIENT=false``; production never admits
it over HTTP. MLLP connections are attributed by ``caller_for_mllp``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .scopes import Scope, allows
from .settings import Settings


class Unauthenticated(Exception):
    """The caller could not be identified; answer 401 (HTTP) or close the connection (MLLP).

    ``token_given``: a credential was presented but is not good (``error="invalid_token"`` in the HTTP
    answer's ``WWW-Authenticate``), rather than none at all."""

    def __init__(self, reason: str, *, token_given: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.token_given = token_given


class Forbidden(Exception):
    """The caller is known but its scopes do not cover what it asked for; answer 403."""

    def __init__(self, reason: str, needed: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.needed = needed


@dataclass(frozen=True)
class Caller:
    client_id: str
    ods_code: str
    scopes: frozenset[str] = field(default_factory=frozenset)

    @cached_property
    def _doc(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "ods_code": self.ods_code, "scopes": sorted(self.scopes)}

    def to_doc(self) -> dict[str, Any]:
        """The caller as kept on what it sends. Made once per caller and shared by all its records (an
        MLLP connection's caller is on every message it sends): read it, never change it."""
        return self._doc

    def allows(self, need: Scope) -> bool:
        """Whether this caller's scopes cover ``need`` (``shared.scopes.needed(type, letter)``)."""
        return allows(self.scopes, need)


DEV_SCOPES = frozenset({"hl7v2/*.write", "system/*.write", "system/*.read"})


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (a peer address) is this machine's loopback interface."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def dev_caller_for_http(settings: Settings, peer_host: str | None) -> Caller:
    """The development client, for an HTTP request without an Authorization header: admitted only in
    development, from loopback, and while ``MSCC_ALLOW_DEV_CLIENT`` is true; else ``Unauthenticated``."""
    if settings.environment == "production":
        raise Unauthenticated("a bearer token is required (Authorization: Bearer ...; see /oauth2/token)")
    if not settings.allow_dev_client:
        raise Unauthenticated("a bearer token is required: the development client is disabled")
    if not is_loopback(peer_host):
        raise Unauthenticated("a bearer token is required: the development client is admitted from loopback only")
    return Caller(settings.dev_client_id, settings.dev_client_ods, DEV_SCOPES)


MLLP_SCOPES = frozenset({"system/hl7v2.c"})


def caller_for_mllp(settings: Settings, peer: str) -> Caller:
    """The caller behind one MLLP connection from ``peer``: the listener itself, not a client.

    MLLP has no bearer token: who may send is decided by the network controls of the listener (the
    sender configuration's address and certificate allow-lists, TLS client certificates), and each
    message speaks for the trust its MSH-4 names. So the caller has no ODS code of its own (it is never
    the MSCC team) and may only send HL7v2; this holds in production as in development, whatever
    ``MSCC_ALLOW_DEV_CLIENT`` says (that setting is about anonymous HTTP callers)."""
    return Caller(f"mllp:{peer}", "", MLLP_SCOPES)
