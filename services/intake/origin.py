"""Where a message came from: the listener, the peer's address and, over TLS, its client certificate.

The sender configuration (``policy.py``) may say, per listener, from which addresses (CIDR) and with
which certificates a sending facility may send. A certificate is named by one of:

- ``CN=<name>``: its subject common name;
- ``DNS:<name>``, ``IP:<address>``, ``URI:<uri>``, ``email:<address>``: a subject alternative name;
- ``sha256:<hex>``: the SHA-256 fingerprint of the certificate (DER), colons and case ignored.

Only a certificate the listener verified (signed by ``MSCC_MLLP_TLS_CA_FILE``) is ever matched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any

_SAN_KINDS = {"DNS": "DNS", "IP ADDRESS": "IP", "URI": "URI", "EMAIL": "email"}


@dataclass(frozen=True)
class PeerCertificate:
    """The verified client certificate of one TLS connection, as the names it can be matched by."""

    common_names: tuple[str, ...]
    alt_names: tuple[str, ...]  # "DNS:x", "IP:x", "URI:x", "email:x"
    sha256: str  # lower-case hex, no colons

    @classmethod
    def from_ssl(cls, decoded: dict[str, Any], der: bytes) -> PeerCertificate:
        """From ``SSLObject.getpeercert()`` (the decoded, verified certificate) and its DER bytes."""
        names = [value for rdn in decoded.get("subject", ()) for key, value in rdn if key == "commonName"]
        alt = [
            f"{_SAN_KINDS[kind.upper()]}:{value}"
            for kind, value in decoded.get("subjectAltName", ())
            if kind.upper() in _SAN_KINDS
        ]
        return cls(tuple(names), tuple(alt), hashlib.sha256(der).hexdigest())

    def describe(self) -> str:
        name = self.common_names[0] if self.common_names else (self.alt_names[0] if self.alt_names else "")
        return f"certificate {('CN=' + name + ' ') if name else ''}sha256:{self.sha256}"

    def matches(self, pattern: str) -> bool:
        """Whether this certificate is the one ``pattern`` names (formats in the module docstring)."""
        kind, sep, value = pattern.partition(":")
        if pattern[:3].upper() == "CN=":
            return pattern[3:].strip().lower() in (n.lower() for n in self.common_names)
        if not sep:
            return False
        if kind.lower() == "sha256":
            return value.replace(":", "").strip().lower() == self.sha256
        wanted = f"{kind.strip()}:{value.strip()}".lower()
        return wanted in (n.lower() for n in self.alt_names)


def certificate_pattern(text: str) -> str:
    """``text`` if it names a certificate as the module docstring says; ``ValueError`` otherwise."""
    pattern = text.strip()
    kind = pattern.partition(":")[0].lower()
    if pattern[:3].upper() == "CN=" and pattern[3:].strip():
        return pattern
    if kind == "sha256":
        digits = pattern[7:].replace(":", "").strip()
        if len(digits) == 64 and all(c in "0123456789abcdefABCDEF" for c in digits):
            return pattern
        raise ValueError(f"certificate {text!r}: a sha256 fingerprint has 64 hex digits")
    if kind in ("dns", "ip", "uri", "email") and pattern.partition(":")[2].strip():
        return pattern
    raise ValueError(f"certificate {text!r} is not CN=<name>, DNS:/IP:/URI:/email:<name> or sha256:<fingerprint>")


@dataclass(frozen=True)
class Origin:
    """The listener a message arrived on ("mllp", "http"), the peer's address, and its certificate."""

    listener: str
    address: str = ""
    certificate: PeerCertificate | None = None

    def ip(self) -> IPv4Address | IPv6Address | None:
        try:
            ip = ip_address(self.address.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped  # a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d
        return ip

    def describe(self) -> str:
        where = f"address {self.address or '(unknown)'}"
        return f"{where} with {self.certificate.describe()}" if self.certificate else where


@dataclass(frozen=True)
class OriginRule:
    """From where one sender may send on one listener: any of these networks or certificates."""

    networks: tuple[IPv4Network | IPv6Network, ...] = ()
    certificates: tuple[str, ...] = ()

    @classmethod
    def from_doc(cls, data: dict[str, Any]) -> OriginRule:
        """``{"addresses": ["10.20.0.0/16", ...], "certificates": ["CN=...", ...]}``; ``ValueError`` names
        what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"a listener's allow-list is an object with addresses and certificates, not {data!r}")
        unknown = set(data) - {"addresses", "certificates"}
        if unknown:
            raise ValueError(f"unknown allow-list keys {sorted(unknown)}: use addresses and certificates")
        networks = []
        for entry in data.get("addresses", []):
            try:
                networks.append(ip_network(str(entry).strip(), strict=False))
            except ValueError as exc:
                raise ValueError(f"address {entry!r} is not an IP address or network (CIDR): {exc}") from exc
        certificates = tuple(certificate_pattern(str(c)) for c in data.get("certificates", []))
        return cls(tuple(networks), certificates)

    def admits(self, origin: Origin) -> bool:
        ip = origin.ip()
        if ip is not None and any(ip.version == net.version and ip in net for net in self.networks):
            return True
        cert = origin.certificate
        return cert is not None and any(cert.matches(pattern) for pattern in self.certificates)
