"""Deterministic ids: the same business identifier always gives the same resource id.

Re-sending or re-mapping a message then converges on the same resources instead of duplicating them.
"""

from __future__ import annotations

import re
import uuid

# A fixed namespace for this hub's name-based (version 5) UUIDs. Never change it: ids depend on it.
NAMESPACE = uuid.UUID("5f0c2f8e-6b0a-4c39-9d59-3d2f1f6c8a11")


def resource_id(resource_type: str, system: str, value: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{resource_type}|{system}|{value}"))


def identifier_key(resource_type: str, system: str, value: str) -> str:
    return f"{resource_type}|{system}|{value}"


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
