"""MLLP security over real sockets: TLS on the listener, client certificates mapped to trusts, the
per-listener sender allow-list (refused messages answered AR and kept), and the MLLP notification
channel's host checks at connection time (loopback names, IPv6 forms that embed IPv4)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_network
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from helpers import app_client

from services.intake.service import IntakeService
from services.notifier.channels import Payload
from services.notifier.channels.mllp import MllpLink
from services.notifier.endpoints import (
    EndpointPolicy,
    EndpointRefused,
    allowed_addresses,
    check_mllp,
    check_rest_hook,
)
from shared.mllp import MllpClient, MllpError
from shared.settings import Settings
from shared.store import Store


def adt(control_id: str, facility: str = "RBL") -> bytes:
    return (
        f"MSH|^~\\&|SEND|{facility}|HUB|REN|20260101120000||ADT^A01|{control_id}|P|2.5\r"
        f"PID|1||{control_id}^^^{facility}^MR||TEST^PATIENT\r"
    ).encode()


def msa(reply: bytes) -> list[str]:
    return next(s for s in reply.split(b"\r") if s.startswith(b"MSA")).decode().split("|")


# -- certificates, made for each test: a CA, the listener's certificate, and clients' -------------------


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    der: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()


class Pki:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "MSCC test CA")])
        self._name = name
        now = dt.datetime.now(dt.UTC)
        self._ca = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(self._ca.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, server: bool = False, dns: str | None = None) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        if server:
            alt: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
        else:
            alt = [x509.DNSName(dns or name)]
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        cert_file, key_file = self.folder / f"{name}.crt", self.folder / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return Issued(cert_file, key_file, cert.public_bytes(serialization.Encoding.DER))

    def client_context(self, client: Issued | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if client is not None:
            context.load_cert_chain(client.cert, client.key)
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@contextlib.asynccontextmanager
async def running(settings: Settings, store: Store) -> AsyncIterator[IntakeService]:
    service = IntakeService(settings, store)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@contextlib.asynccontextmanager
async def tls_client(port: int, context: ssl.SSLContext) -> AsyncIterator[MllpClient]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost"), 10
    )
    client = MllpClient(reader, writer, timeout_s=10)
    try:
        yield client
    finally:
        await client.close()


def tls_settings(settings: Settings, pki: Pki, senders: dict[str, Any] | None = None, **extra: Any) -> Settings:
    server = pki.issue("hub.test", server=True)
    update: dict[str, Any] = {
        "mllp_tls_cert_file": server.cert,
        "mllp_tls_key_file": server.key,
        "mllp_tls_ca_file": pki.ca_file,
        **extra,
    }
    if senders is not None:
        update["senders_file"] = pki.folder / "senders.json"
        update["senders_file"].write_text(json.dumps(senders))
    return settings.model_copy(update=update)


async def rejected(store: Store, control_id: str) -> dict[str, Any]:
    found = await store.messages.find_one({"header.control_id": control_id})
    assert found is not None, f"{control_id} was not kept"
    return found


# -- TLS on the listener ------------------------------------------------------------------------------


async def test_a_message_is_acknowledged_over_tls(settings: Settings, store: Store, pki: Pki) -> None:
    client_cert = pki.issue("engine.rbl.test")
    async with running(tls_settings(settings, pki), store) as service:
        async with tls_client(service.mllp.port, pki.client_context(client_cert)) as client:
            reply = await client.send(adt("TLS1"))
    assert msa(reply)[1:3] == ["AA", "TLS1"]
    stored = await store.messages.find_one({"header.control_id": "TLS1"})
    assert stored is not None and stored["status"] == "ready"


async def test_a_client_without_a_certificate_is_refused_when_one_is_required(
    settings: Settings, store: Store, pki: Pki
) -> None:
    async with running(tls_settings(settings, pki), store) as service:
        # TLS 1.3 clients learn of the refusal on their first read: either way, no ACK.
        with pytest.raises((ssl.SSLError, ConnectionError, MllpError)):
            async with tls_client(service.mllp.port, pki.client_context(None)) as client:
                await client.send(adt("NOCERT1"))
    # Optional client certificates: the same client is served (known by its address only).
    optional = tls_settings(settings, pki, mllp_tls_client_cert="optional")
    async with running(optional, store) as service:
        async with tls_client(service.mllp.port, pki.client_context(None)) as client:
            assert msa(await client.send(adt("NOCERT2")))[1] == "AA"
    assert await store.messages.count_documents({"header.control_id": "NOCERT1"}) == 0


async def test_plain_tcp_to_the_tls_listener_fails_without_harm(settings: Settings, store: Store, pki: Pki) -> None:
    client_cert = pki.issue("engine.rbl.test")
    async with running(tls_settings(settings, pki, mllp_tls_handshake_timeout_s=2), store) as service:
        reader, writer = await asyncio.open_connection("127.0.0.1", service.mllp.port)
        writer.write(b"\x0b" + adt("PLAIN1") + b"\x1c\r")
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed: no ACK, no TLS
        writer.close()
        # The listener goes on serving TLS clients.
        async with tls_client(service.mllp.port, pki.client_context(client_cert)) as client:
            assert msa(await client.send(adt("AFTER1")))[1] == "AA"
        assert service.mllp.stats.open_connections <= 1
    assert await store.messages.count_documents({"header.control_id": "PLAIN1"}) == 0


# -- client certificates mapped to trusts, and the address allow-list --------------------------------------


async def test_a_certificate_mapped_to_its_trust_is_accepted_and_another_refused_and_kept(
    settings: Settings, store: Store, pki: Pki
) -> None:
    rbl = pki.issue("engine.rbl.test")
    rjr = pki.issue("engine.rjr.test", dns="mllp.rjr.test")
    senders = {
        "senders": [
            {"facility": "RBL", "mllp": {"certificates": ["CN=engine.rbl.test"]}},
            {"facility": "RJR", "mllp": {"certificates": [f"sha256:{rjr.sha256.upper()}"]}},
            {"facility": "RWA", "mllp": {"certificates": ["DNS:mllp.rjr.test"]}},
        ]
    }
    async with running(tls_settings(settings, pki, senders), store) as service:
        async with tls_client(service.mllp.port, pki.client_context(rbl)) as client:
            own = await client.send(adt("CERT1", "RBL"))
            other = await client.send(adt("CERT2", "RJR"))
        async with tls_client(service.mllp.port, pki.client_context(rjr)) as client:
            by_fingerprint = await client.send(adt("CERT3", "RJR"))
            by_alt_name = await client.send(adt("CERT4", "RWA"))
            not_its_trust = await client.send(adt("CERT5", "RBL"))
    assert msa(own)[1] == "AA" and msa(by_fingerprint)[1] == "AA" and msa(by_alt_name)[1] == "AA"
    for reply, control_id in ((other, "CERT2"), (not_its_trust, "CERT5")):
        assert msa(reply)[1:3] == ["AR", control_id]
        assert "may not send over MLLP" in msa(reply)[3]  # MSA-3 says why, as ERR does
        assert b"ERR||MSH^1^4|207^Application internal error^HL70357|E|" in reply
        kept = await rejected(store, control_id)
        assert kept["status"] == "rejected" and "may not send over MLLP" in kept["reason"]
    kept = await rejected(store, "CERT2")
    assert "CN=engine.rbl.test" in kept["reason"] and rbl.sha256 in kept["reason"]


async def test_the_address_allow_list_accepts_its_networks_and_refuses_others(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    senders = tmp_path / "senders.json"
    senders.write_text(
        json.dumps(
            {
                "senders": [
                    {"facility": "RBL", "mllp": {"addresses": ["127.0.0.0/8"]}},
                    {"facility": "RJR", "mllp": {"addresses": ["10.20.0.0/16"]}},
                ]
            }
        )
    )
    async with running(settings.model_copy(update={"senders_file": senders}), store) as service:
        client = await MllpClient.connect("127.0.0.1", service.mllp.port)
        try:
            allowed = await client.send(adt("ADDR1", "RBL"))
            elsewhere = await client.send(adt("ADDR2", "RJR"))
            unlisted = await client.send(adt("ADDR3", "RWA"))  # no rule, and the default names no address
        finally:
            await client.close()
    assert msa(allowed)[1] == "AA"
    for reply, control_id in ((elsewhere, "ADDR2"), (unlisted, "ADDR3")):
        assert msa(reply)[1:3] == ["AR", control_id]
        kept = await rejected(store, control_id)
        assert kept["status"] == "rejected" and "address 127.0.0.1" in kept["reason"]
        assert kept["raw"] == adt(control_id, "RJR" if control_id == "ADDR2" else "RWA")


async def test_without_an_allow_list_any_peer_may_send(settings: Settings, store: Store, tmp_path: Path) -> None:
    senders = tmp_path / "senders.json"
    senders.write_text(json.dumps({"senders": [{"facility": "RBL", "message_types": ["ADT^*"]}]}))
    async with running(settings.model_copy(update={"senders_file": senders}), store) as service:
        client = await MllpClient.connect("127.0.0.1", service.mllp.port)
        try:
            assert msa(await client.send(adt("ANY1", "RJR")))[1] == "AA"
        finally:
            await client.close()


def test_a_malformed_allow_list_names_what_is_wrong(tmp_path: Path) -> None:
    from services.intake.policy import load_policy

    senders = tmp_path / "senders.json"
    senders.write_text(json.dumps({"senders": [{"facility": "RBL", "mllp": {"addresses": ["10.0.0.300/8"]}}]}))
    with pytest.raises(ValueError, match=r"10\.0\.0\.300/8"):
        load_policy(senders)
    senders.write_text(json.dumps({"senders": [{"facility": "RBL", "mllp": {"certificates": ["sha256:abc"]}}]}))
    with pytest.raises(ValueError, match="64 hex digits"):
        load_policy(senders)


# -- the MLLP notification channel: hosts checked when it connects ----------------------------------------

LOOPBACK_ONLY = EndpointPolicy(networks=(ip_network("127.0.0.0/8"),))

EMBEDDED = [
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::127.0.0.1",  # IPv4-compatible
    "64:ff9b::7f00:1",  # NAT64
    "2002:7f00:1::",  # 6to4
    "::ffff:169.254.169.254",
    "::169.254.1.1",
    "64:ff9b::a9fe:a9fe",
    "2002:a9fe:a9fe::",
    "::ffff:0.0.0.0",
    "64:ff9b::",
    "2002::",
]


async def test_the_mllp_channel_refuses_a_name_resolving_to_loopback_at_connection_time(intake: IntakeService) -> None:
    port = intake.mllp.port
    before = intake.mllp.stats.connections
    refused = MllpLink("localhost", port, 5, EndpointPolicy())
    answer = await refused.send(Payload(adt("NOTIFY1")))
    assert answer.code == "connection" and answer.failure is not None
    assert "localhost" in answer.failure and "loopback" in answer.failure
    assert intake.mllp.stats.connections == before  # no connection was opened
    # The same name, with its loopback network allowed: resolved, checked, and delivered.
    allowed = MllpLink("localhost", port, 5, LOOPBACK_ONLY)
    try:
        answer = await allowed.send(Payload(adt("NOTIFY2")))
    finally:
        await allowed.close()
    assert answer.failure is None and msa(answer.body)[1:3] == ["AA", "NOTIFY2"]


@pytest.mark.parametrize("address", EMBEDDED)
async def test_ipv6_forms_of_loopback_link_local_and_unspecified_are_refused(address: str) -> None:
    policy = EndpointPolicy()
    reason = policy.refusal(address)
    assert reason is not None and any(word in reason for word in ("loopback", "link-local", "unspecified", "private"))
    with pytest.raises(EndpointRefused):
        await check_mllp(f"mllp://[{address}]:2575", policy)
    with pytest.raises(EndpointRefused):
        await check_rest_hook(f"https://[{address}]/notify", policy)
    with pytest.raises(EndpointRefused):
        await allowed_addresses(address, 2575, policy)
    answer = await MllpLink(address, 2575, 5, policy).send(Payload(adt("NOTIFY3")))
    assert answer.code == "connection" and answer.failure is not None and "refused" in answer.failure


async def test_embedded_forms_pass_only_when_listed_themselves() -> None:
    assert EndpointPolicy().refusal("64:ff9b::808:808") is None  # NAT64 of a public address
    assert EndpointPolicy().refusal("2002:808:808::") is None  # 6to4 of a public address
    assert LOOPBACK_ONLY.refusal("::ffff:127.0.0.1") is None  # IPv4-mapped: the same host as 127.0.0.1
    assert LOOPBACK_ONLY.refusal("64:ff9b::7f00:1") is not None  # a translator's address: not the host listed
    nat64 = EndpointPolicy(networks=(ip_network("64:ff9b::/96"),))
    assert nat64.refusal("64:ff9b::7f00:1") is None
    assert await check_mllp("mllp://[64:ff9b::7f00:1]:2575", nat64) == ("64:ff9b::7f00:1", 2575)


async def test_the_http_listener_has_its_own_allow_list(settings: Settings, store: Store, tmp_path: Path) -> None:
    senders = tmp_path / "senders.json"
    senders.write_text(json.dumps({"senders": [{"facility": "RBL", "http": {"addresses": ["10.20.0.0/16"]}}]}))
    async with app_client(settings.model_copy(update={"senders_file": senders}), store) as http:
        answer = await http.post("/hl7v2", content=adt("HTTP1"), headers={"Content-Type": "application/hl7-v2"})
    assert answer.status_code == 200 and msa(answer.content)[1:3] == ["AR", "HTTP1"]
    kept = await rejected(store, "HTTP1")
    assert "may not send over HTTP from address 127.0.0.1" in kept["reason"]


async def test_production_without_the_development_client_still_takes_mllp(settings: Settings, store: Store) -> None:
    """MLLP callers are the listener, not the HTTP development client: a production hub that admits no
    anonymous HTTP caller still acknowledges MLLP, and the message speaks for its MSH-4, not for a client."""
    production = settings.model_copy(update={"environment": "production", "allow_dev_client": False})
    async with running(production, store) as service:
        client = await MllpClient.connect("127.0.0.1", service.mllp.port)
        try:
            assert msa(await client.send(adt("PROD1", "RJR")))[1] == "AA"
        finally:
            await client.close()
    stored = await store.messages.find_one({"header.control_id": "PROD1"})
    assert stored is not None and stored["status"] == "ready"
    assert stored["caller"]["client_id"].startswith("mllp:127.0.0.1:")
    assert stored["caller"]["ods_code"] == "" and stored["trusts"] == ["RJR"]
