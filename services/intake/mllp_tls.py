"""TLS for the MLLP listener: the server context from settings, and the verified client certificate.

TLS is on when ``MSCC_MLLP_TLS_CERT_FILE`` is set (its key in ``MSCC_MLLP_TLS_KEY_FILE``, or in the same
file). With ``MSCC_MLLP_TLS_CA_FILE`` the listener asks every client for a certificate signed by that CA:
``MSCC_MLLP_TLS_CLIENT_CERT=required`` (the default) refuses the handshake without one, ``optional``
accepts clients without one (they are then known by their address only). TLS 1.2 is the oldest
version accepted. A client that does not complete the handshake within
``MSCC_MLLP_TLS_HANDSHAKE_TIMEOUT_S`` (or speaks plain MLLP to a TLS port) is disconnected before any
of its bytes are read as HL7.
"""

from __future__ import annotations

import asyncio
import ssl

from shared.settings import Settings

from .origin import PeerCertificate


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's TLS context (None: plain TCP); ``ValueError`` names the setting whose file is
    missing or unusable."""
    if settings.mllp_tls_cert_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.mllp_tls_cert_file, settings.mllp_tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"MSCC_MLLP_TLS_CERT_FILE {settings.mllp_tls_cert_file} / MSCC_MLLP_TLS_KEY_FILE "
            f"{settings.mllp_tls_key_file or '(in the certificate file)'}: cannot load the certificate and key: {exc}"
        ) from exc
    if settings.mllp_tls_ca_file is not None:
        try:
            context.load_verify_locations(cafile=settings.mllp_tls_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"MSCC_MLLP_TLS_CA_FILE {settings.mllp_tls_ca_file}: cannot load it: {exc}") from exc
        required = settings.mllp_tls_client_cert == "required"
        context.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    return context


def peer_certificate(writer: asyncio.StreamWriter) -> PeerCertificate | None:
    """The client certificate the handshake verified (None: plain TCP, or no certificate presented)."""
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    decoded = ssl_object.getpeercert()
    der = ssl_object.getpeercert(binary_form=True)
    if not decoded or not der:  # none presented, or not verified (CERT_NONE): never matched
        return None
    return PeerCertificate.from_ssl(decoded, der)
