"""Callback endpoints: which URLs and MLLP hosts a subscription may point at.

A rest-hook endpoint must be ``https://`` (``http://`` only with ``MSCC_NOTIFIER_ALLOW_HTTP``), carry no
user name or password and no fragment, and its host must resolve only to public addresses: loopback,
link-local, private, shared (CGNAT), multicast, reserved and unspecified addresses are refused, so a
subscriber cannot make the hub call into its own network (SSRF). Hosts, addresses and networks listed in
``MSCC_NOTIFIER_ALLOWED_HOSTS`` are exempt (tests use 127.0.0.1; a trust's engine on HSCN is private).
MLLP endpoints (``mllp://host:port``) follow the same host rule.

IPv6 addresses that carry an IPv4 address inside are judged by that IPv4 address too: IPv4-mapped
(``::ffff:127.0.0.1``, the same host), IPv4-compatible (``::127.0.0.1``), NAT64 (``64:ff9b::7f00:1``) and
6to4 (``2002:7f00:1::``) forms of a loopback, link-local, unspecified or private address are refused,
unless the IPv6 address (or a network holding it) is itself listed in ``MSCC_NOTIFIER_ALLOWED_HOSTS``
(an IPv4-mapped address is the IPv4 host, so listing the IPv4 address allows it).

The rule is checked when a subscription is created or updated (``EndpointRefused`` says why) and again
at every connection (by ``GuardedResolver``, the notifier session's DNS resolver, for rest-hooks; by
``allowed_addresses`` for MLLP), so a name that later resolves to a private address is refused then too
(DNS rebinding), and the connection goes to the address that was checked.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from shared.settings import Settings

Resolve = Callable[[str, int], Awaitable[list[str]]]


class EndpointRefused(ValueError):
    """A callback endpoint is malformed or points where the hub may not send."""


def _describe(ip: IPv4Address | IPv6Address) -> str:
    for flag, name in (
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
    ):
        if flag:
            return name
    return "non-public"


def _address(text: str) -> IPv4Address | IPv6Address:
    ip = ip_address(text.split("%", 1)[0])
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


_IPV4_COMPATIBLE = IPv6Network("::/96")
_NAT64 = IPv6Network("64:ff9b::/96")


def _embedded_ipv4(ip: IPv4Address | IPv6Address) -> tuple[str, IPv4Address] | None:
    """The IPv4 address an IPv6 address carries (IPv4-compatible, NAT64, 6to4) and the form's name."""
    if not isinstance(ip, IPv6Address):
        return None
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    if ip in _NAT64:
        return "NAT64", IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # not :: nor ::1, which are IPv6's own
        return "IPv4-compatible", IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class EndpointPolicy:
    allow_http: bool = False
    names: frozenset[str] = frozenset()
    networks: tuple[IPv4Network | IPv6Network, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> EndpointPolicy:
        names: set[str] = set()
        networks: list[IPv4Network | IPv6Network] = []
        for entry in settings.notifier_allowed_hosts:
            try:
                networks.append(ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.lower().rstrip("."))
        return cls(settings.notifier_allow_http, frozenset(names), tuple(networks))

    def name_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.names

    def refusal(self, address: str) -> str | None:
        """Why ``address`` may not be called (None: it may)."""
        try:
            ip = _address(address)
        except ValueError:
            return f"{address} is not an IP address"
        if any(ip.version == net.version and ip in net for net in self.networks):
            return None
        embedded = _embedded_ipv4(ip)
        if embedded is not None and (not embedded[1].is_global or embedded[1].is_multicast):
            form, inner = embedded
            return f"{ip} is a {form} address of {inner}, a {_describe(inner)} address"
        if ip.is_global and not ip.is_multicast:
            return None
        return f"{ip} is a {_describe(ip)} address"


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (the system resolver, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


async def check_host(host: str, port: int, policy: EndpointPolicy, resolve: Resolve = system_resolve) -> None:
    """``EndpointRefused`` unless every address ``host`` resolves to may be called."""
    if policy.name_allowed(host):
        return
    try:
        addresses = [str(_address(host))]
    except ValueError:
        try:
            addresses = await resolve(host, port)
        except OSError as exc:
            raise EndpointRefused(f"host {host} does not resolve: {exc}") from exc
    if not addresses:
        raise EndpointRefused(f"host {host} does not resolve to any address")
    refused = [reason for a in addresses if (reason := policy.refusal(a))]
    if refused:
        raise EndpointRefused(
            f"host {host} is refused: {'; '.join(refused)} (callbacks go to public addresses only, "
            "unless MSCC_NOTIFIER_ALLOWED_HOSTS lists the host or its network)"
        )


async def check_rest_hook(url: str, policy: EndpointPolicy, resolve: Resolve = system_resolve) -> str:
    """The endpoint URL, checked; ``EndpointRefused`` says what is wrong with it."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise EndpointRefused(f"endpoint {url!r} is not a valid URL: {exc}") from exc
    allowed = ("https", "http") if policy.allow_http else ("https",)
    if parts.scheme not in allowed:
        raise EndpointRefused(
            f"endpoint scheme {parts.scheme or '(none)'!r} is not allowed: use {' or '.join(allowed)}"
        )
    if parts.username is not None or parts.password is not None:
        raise EndpointRefused("endpoint must not carry a user name or password: use channel.header instead")
    if not parts.hostname:
        raise EndpointRefused(f"endpoint {url!r} has no host")
    if parts.fragment:
        raise EndpointRefused("endpoint must not have a fragment (#...)")
    await check_host(parts.hostname, port or (443 if parts.scheme == "https" else 80), policy, resolve)
    return url.strip()


async def check_mllp(endpoint: str, policy: EndpointPolicy, resolve: Resolve = system_resolve) -> tuple[str, int]:
    """``mllp://host:port`` as (host, port), checked; ``EndpointRefused`` says what is wrong."""
    try:
        parts = urlsplit(endpoint.strip())
        port = parts.port
    except ValueError as exc:
        raise EndpointRefused(f"endpoint {endpoint!r} is not a valid mllp://host:port address: {exc}") from exc
    if parts.scheme != "mllp" or not parts.hostname or not port:
        raise EndpointRefused(f"endpoint {endpoint!r} must be mllp://host:port for the MLLP channel")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise EndpointRefused(f"endpoint {endpoint!r} must be mllp://host:port, nothing more")
    await check_host(parts.hostname, port, policy, resolve)
    return parts.hostname, port


async def allowed_addresses(
    host: str, port: int, policy: EndpointPolicy, resolve: Resolve = system_resolve
) -> list[str]:
    """The addresses of ``host`` the hub may connect to now (for a channel that opens its own sockets:
    it connects to one of these, never resolving the name again); ``EndpointRefused`` when none is left."""
    try:
        addresses = [str(ip_address(host.split("%", 1)[0]))]
    except ValueError:
        try:
            addresses = await resolve(host, port)
        except OSError as exc:
            raise EndpointRefused(f"host {host} does not resolve: {exc}") from exc
    if policy.name_allowed(host):
        return addresses
    allowed = [a for a in addresses if policy.refusal(a) is None]
    if not allowed:
        reasons = "; ".join(filter(None, (policy.refusal(a) for a in addresses))) or "no address"
        raise EndpointRefused(
            f"host {host} is refused at connection time: {reasons} (callbacks go to public addresses only, "
            "unless MSCC_NOTIFIER_ALLOWED_HOSTS lists the host or its network)"
        )
    return allowed


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, keeping only addresses the policy allows: ``OSError`` when none is left
    (aiohttp reports it as a connection error, and the delivery is retried and recorded as such)."""

    def __init__(self, policy: EndpointPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._policy.name_allowed(host):
            return results
        allowed = [r for r in results if self._policy.refusal(r["host"]) is None]
        if not allowed:
            reasons = "; ".join(filter(None, (self._policy.refusal(r["host"]) for r in results)))
            raise OSError(f"{host} resolves only to addresses the notifier may not call: {reasons}")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
