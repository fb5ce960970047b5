"""HD, EI, CX -> Identifier, and the NHS number: how the identifiers of a message are named.

Identifier systems (documented in docs/mapping.md): every local identifier is scoped by the
organisation that assigned it, so two trusts' equal numbers never name one resource.
- an NHS number -> ``https://fhir.nhs.uk/Id/nhs-number`` (only when it passes the modulus 11 check);
- an authority that is an organisation: a configured ODS code (the region's table or the sender's
  ``ods_codes``), or the sending facility itself -> ``urn:mscc:id:{authority}``; an OID / URI universal
  id (HD.2/HD.3) the sender's configuration names as its own (``organisation_oids``) -> ``urn:oid:...``
  / the URI;
- any other authority (an application name such as ICE or PAS, an unconfigured OID or URI) ->
  ``urn:mscc:id:{FACILITY}:{authority}``, scoped by the sending facility (MSH-4);
- no authority -> the sending facility's own system, ``urn:mscc:id:{FACILITY}``.
An ODS-like authority also becomes ``Identifier.assigner``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, tzinfo

from shared.ids import local_system
from shared.nhs import (
    INVALID_NHS_NUMBER_SYSTEM,
    INVALID_NHS_NUMBER_TEXT,
    NHS_NUMBER_SYSTEM,
    ODS_ORGANIZATION_SYSTEM,
    VERIFICATION_STATUS_SYSTEM,
    VERIFICATION_STATUS_URL,
    looks_like_ods_code,
)

from .. import tables
from ..reader import Composite
from . import Json
from .times import InvalidValue, parse_ts

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


@dataclass(frozen=True)
class Systems:
    """How identifiers and codes are named for one message: the sender's pattern and ODS codes, and
    the sending facility, which qualifies identifiers sent without an authority."""

    pattern: str
    facility: str
    known_ods: frozenset[str] = frozenset()
    organisation_oids: frozenset[str] = frozenset()

    def is_organisation(self, authority: str) -> bool:
        """Whether a namespace (HD.1) names an organisation rather than an application: a configured
        ODS code (not a mere ODS shape: "RIS" is shaped like a trust and is a radiology system) or the
        sending facility itself."""
        code = authority.strip().upper()
        return code in self.known_ods or code == self.facility.strip().upper()

    def local(self, authority: str) -> str:
        """The system of an identifier assigned by ``authority``: ``urn:mscc:id:{authority}`` when it
        is an organisation, else scoped by the sending facility, ``urn:mscc:id:{FACILITY}:{authority}``."""
        organisation = self.is_organisation(authority)
        return local_system(authority, self.facility, is_organisation=organisation, pattern=self.pattern)

    def universal(self, system: str, authority: str) -> str:
        """An OID / URI / UUID authority's system: itself when the sender's configuration names it as the
        trust's own (``organisation_oids``), else scoped like an application name: vendors' OIDs are
        shared by every trust that runs the product."""
        if authority in self.organisation_oids or system in self.organisation_oids:
            return system
        return local_system(system, self.facility, pattern=self.pattern)

    def ods(self, code: str) -> str | None:
        """``code`` upper-cased when it reads as an ODS organisation code, else None."""
        return code.strip().upper() if code and looks_like_ods_code(code, self.known_ods) else None


# --- HD, EI, CX: identifiers ---------------------------------------------------------------------


def hd_system(hd: Composite, systems: Systems) -> str | None:
    """The system an HD (namespace ^ universal id ^ type) names; None when the HD is empty."""
    universal, kind = hd.c(2), hd.c(3).upper()
    # An OID or URI names the authority exactly: prefer it over the namespace (HD.1), then scope it
    # unless it is configured as the trust's own (Systems.universal).
    if universal and kind == "ISO":
        return systems.universal(f"urn:oid:{universal}", universal)
    if universal and kind in ("URI", "URL") and ":" in universal:
        return systems.universal(universal, universal)
    if universal and kind == "UUID":
        return systems.universal(f"urn:uuid:{universal.lower()}", universal)
    namespace = hd.c(1) or universal
    # A national register (GMC, GMP...: tables/national-identifiers.json): the same number means the same
    # person in every trust, so it is never scoped.
    national = national_system(namespace)
    if national:
        return national
    return systems.local(namespace) if namespace else None


def assigner(hd: Composite, systems: Systems) -> Json | None:
    """An ODS-coded authority as ``Identifier.assigner`` (an Organization reference by identifier)."""
    code = systems.ods(hd.c(1))
    return {"identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": code}} if code else None


def identifier_type(code: str) -> Json | None:
    """Identifier.type from a table 0203 code; a code outside the table is kept as text only."""
    if not code:
        return None
    display = tables.text("v2-0203-identifier-type", code)
    if display is None:
        return {"text": code}
    return {"coding": [{"system": V2_0203, "code": code.upper(), "display": display}]}


def identifier(value: str, system: str, type_code: str, authority: Composite, systems: Systems) -> Json:
    ident: Json = {"system": system, "value": value}
    kind = identifier_type(type_code)
    if kind:
        ident["type"] = kind
    owner = assigner(authority, systems)
    if owner:
        ident["assigner"] = owner
    return ident


def cx_identifier(cx: Composite, systems: Systems) -> Json | None:
    """CX -> Identifier (value CX.1, system from CX.4 or the sending facility, type CX.5, period CX.7/8)."""
    value = cx.c(1)
    if not value:
        return None
    authority = cx.part(4)
    system = hd_system(authority, systems) or systems.local(systems.facility)
    ident = identifier(value, system, cx.c(5), authority, systems)
    period = _period(cx.c(7), cx.c(8))
    if period:
        ident["period"] = period
    return ident


def ei_identifier(ei: Composite, systems: Systems, type_code: str = "") -> Json | None:
    """EI (entity id ^ namespace ^ universal id ^ type) -> Identifier; the sending facility qualifies
    an id sent without a namespace."""
    value = ei.c(1)
    if not value:
        return None
    authority = ei.span(2, 4)
    system = hd_system(authority, systems) or systems.local(systems.facility)
    return identifier(value, system, type_code, authority, systems)


def nhs_number_identifier(value: str, valid: bool, status_code: str = "") -> Json:
    """The NHS number slice; an invalid number gets a local system (never the NHS one), never dropped."""
    if not valid:
        return {"system": INVALID_NHS_NUMBER_SYSTEM, "value": value, "type": {"text": INVALID_NHS_NUMBER_TEXT}}
    ident: Json = {"system": NHS_NUMBER_SYSTEM, "value": value}
    display = tables.text("nhs-number-status", status_code)
    if display:
        # UK Core: the verification status extension only when the sender told us the status.
        coding = {"system": VERIFICATION_STATUS_SYSTEM, "code": status_code, "display": display}
        ident["extension"] = [{"url": VERIFICATION_STATUS_URL, "valueCodeableConcept": {"coding": [coding]}}]
    return ident


def national_system(*names: str) -> str | None:
    """The national register (GMC, GMP, NMC...: tables/national-identifiers.json) the first of
    ``names`` (an authority's namespace or OID, an identifier type) that names one; else None. Such a
    number means the same in every trust, so it is never scoped by the sender."""
    for name in names:
        found = tables.text("national-identifiers", name.strip()) if name and name.strip() else None
        if found:
            return found
    return None


def _period(start: str, end: str, zone: tzinfo = UTC) -> Json | None:
    """A Period from two TS values, skipping any that do not parse (used inside identifiers only)."""
    period: Json = {}
    for key, raw in (("start", start), ("end", end)):
        try:
            parsed = parse_ts(raw, zone)
        except InvalidValue:
            parsed = None
        if parsed:
            period[key] = parsed.value
    return period or None
