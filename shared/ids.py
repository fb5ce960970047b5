"""Deterministic ids: the same business identifier always gives the same resource id.

Re-sending or re-mapping a message then converges on the same resources instead of duplicating them.

Keys that always fit: a key built from what a sender chose (an HL7v2 control id, MSH-3/4, a FHIR
business identifier) goes into an indexed field, and MongoDB refuses an index entry over 1024 bytes
(4.0; later servers have no limit but the same key must work on both). ``fitting_key`` keeps a key of at
most ``MAX_KEY_BYTES`` as it is (so every key stored so far is unchanged) and turns a longer one into its
first characters plus a SHA-256 digest of the whole: still unique, still the same for the same input.
The full value is always kept in the document beside it.
"""

from __future__ import annotations

import hashlib
import re
import uuid

# A fixed namespace for this hub's name-based (version 5) UUIDs. Never change it: ids depend on it.
NAMESPACE = uuid.UUID("5f0c2f8e-6b0a-4c39-9d59-3d2f1f6c8a11")


def resource_id(resource_type: str, system: str, value: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{resource_type}|{system}|{value}"))


def identifier_key(resource_type: str, system: str, value: str) -> str:
    """The indexed key of a business identifier (``fitting_key``: a digest when very long)."""
    return fitting_key(f"{resource_type}|{system}|{value}")


# Room is left for the other fields of a compound index entry and BSON's own overhead.
MAX_KEY_BYTES = 512
_KEPT_PREFIX_CHARS = 100  # at most 400 bytes of UTF-8, so prefix + digest stays under MAX_KEY_BYTES


def fitting_key(key: str) -> str:
    """``key`` itself when its UTF-8 form has at most ``MAX_KEY_BYTES``, else its first characters,
    ``~sha256:`` and the hex digest of the whole key (at most ~480 bytes): it fits any index."""
    encoded = key.encode("utf-8", "surrogatepass")
    if len(encoded) <= MAX_KEY_BYTES:
        return key
    return f"{key[:_KEPT_PREFIX_CHARS]}~sha256:{hashlib.sha256(encoded).hexdigest()}"


# An R4 ``id``: what a resource id (and so a path's id or version segment) may be.
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def is_fhir_id(text: str) -> bool:
    """Whether ``text`` is a FHIR id: 1-64 letters, digits, '-' or '.'."""
    return FHIR_ID.fullmatch(text) is not None


# --- local identifiers, scoped by the organisation that assigned them ---------------------------------
#
# A hospital number, referral number or order number means something only inside the trust that gave
# it. Its system therefore names that trust: "urn:mscc:id:{ORG}:{authority}" when the authority is an
# application (ICE, PAS, EPR: names many trusts share), "urn:mscc:id:{authority}" when the authority is
# itself an organisation (its ODS code, or an OID the trust is configured with). Systems of the second
# kind are the ones this hub has always written, so ids derived from them did not change.

LOCAL_SYSTEM_PATTERN = "urn:mscc:id:{authority}"
_UNSAFE = re.compile(r"[^A-Za-z0-9._~-]+")


def slug(text: str) -> str:
    """``text`` reduced to URI-safe characters (runs of anything else become "-"); "unknown" if empty."""
    return _UNSAFE.sub("-", text.strip()).strip("-") or "unknown"


def scoped_authority(authority: str, organisation: str, *, is_organisation: bool = False) -> str:
    """The authority part of a local system: ``authority`` alone when it is the organisation itself or
    an organisation identifier (``is_organisation``), else ``"{organisation}:{authority}"``.

    ``organisation`` is the assigning trust's ODS code (or, for a sender without one, the text that
    names it, e.g. MSH-4). Never raises; empty parts read as "unknown".
    """
    auth, org = slug(authority), slug(organisation)
    if is_organisation or auth.upper() == org.upper():
        return auth
    return f"{org}:{auth}"


def local_system(
    authority: str, organisation: str, *, is_organisation: bool = False, pattern: str = LOCAL_SYSTEM_PATTERN
) -> str:
    """The Identifier.system of a local identifier (see ``scoped_authority``), e.g.
    ``local_system("ICE", "RBL")`` -> ``"urn:mscc:id:RBL:ICE"``, ``local_system("RBL", "RBL")`` ->
    ``"urn:mscc:id:RBL"``. ``pattern`` must contain ``{authority}``."""
    return pattern.format(authority=scoped_authority(authority, organisation, is_organisation=is_organisation))


def scoped_system(system: str, organisation: str) -> str:
    """A business identifier system sent by ``organisation`` (e.g. a FHIR client's
    ``https://example.org/referral``), scoped by it: ``urn:mscc:id:{ORG}:{system}`` with the system made
    URI-safe. Use only for systems that are not national (NHS number, ODS, GMC) and not the trust's own."""
    return local_system(system, organisation)
