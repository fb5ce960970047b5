"""HL7 v2 datatypes -> FHIR datatypes: one small pure function per datatype.

Every function takes a ``Composite`` (and, where identifiers are named, the message's ``Systems``) and
returns a FHIR JSON fragment, or None when the value is empty. Dates that do not exist raise
``InvalidValue``: the segment tier turns that into an issue naming the field and leaves the element out.

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

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

from shared.ids import local_system
from shared.nhs import (
    INVALID_NHS_NUMBER_SYSTEM as INVALID_NHS_NUMBER_SYSTEM,  # re-exported: the mapper's modules import it here
)
from shared.nhs import (
    INVALID_NHS_NUMBER_TEXT,
    NHS_NUMBER_SYSTEM,
    ODS_ORGANIZATION_SYSTEM,
    VERIFICATION_STATUS_SYSTEM,
    VERIFICATION_STATUS_URL,
    looks_like_ods_code,
)

from . import tables
from .reader import Composite

Json = dict[str, Any]
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
LOCAL_CODE_SYSTEM = "urn:mscc:code-system:{name}"
_SLUG = re.compile(r"[^A-Za-z0-9._~-]+")
_TS = re.compile(
    r"^(?P<y>\d{4})(?:(?P<mo>\d{2})(?:(?P<d>\d{2})(?:(?P<h>\d{2})(?:(?P<mi>\d{2})"
    r"(?:(?P<s>\d{2})(?P<f>\.\d{1,6})?)?)?)?)?)?(?P<tz>[+-]\d{4}|Z)?$"
)


class InvalidValue(ValueError):
    """A value that is not a date, or cannot be true (a 30 February, a +25:00 offset). The message
    does not repeat the value: it may be a date of birth, and issues are stored with the message."""


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


def _identifier(value: str, system: str, type_code: str, authority: Composite, systems: Systems) -> Json:
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
    ident = _identifier(value, system, cx.c(5), authority, systems)
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
    return _identifier(value, system, type_code, authority, systems)


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


# --- names, addresses, telecoms --------------------------------------------------------------------


def xpn_name(xpn: Composite) -> Json | None:
    """XPN -> HumanName: family XPN.1 (its surname subcomponent), given XPN.2 + XPN.3, prefix XPN.5,
    suffix XPN.4 + XPN.6 (degree), use from XPN.7 (table 0200); None when there is no name part."""
    name: Json = {}
    family = xpn.c(1)
    given = [g for g in (xpn.c(2), xpn.c(3)) if g]
    prefix = [p for p in (xpn.c(5),) if p]
    suffix = [s for s in (xpn.c(4), xpn.c(6)) if s]
    for key, value in (("family", family), ("given", given), ("prefix", prefix), ("suffix", suffix)):
        if value:
            name[key] = value
    if not name:
        return None
    use = tables.text("v2-0200-name-type", xpn.c(7))
    if use:
        name["use"] = use
    return name


def _street(sad: Composite) -> str:
    # SAD: street address & street name & dwelling number. Senders either send the whole line in
    # SAD.1 (parts repeated after it) or split it ("1000&Hospital Lane"): keep every part once.
    line = sad.c(1)
    for extra in (sad.c(2), sad.c(3)):
        if extra and extra.upper() not in line.upper():
            line = f"{line} {extra}".strip()
    return line


def xad_address(xad: Composite) -> Json | None:
    """XAD -> Address: lines XAD.1 (SAD, its parts joined) and XAD.2, city XAD.3, district XAD.4 (a
    county in the UK profile), postalCode XAD.5, country XAD.6, use/type from XAD.7 (table 0190)."""
    address: Json = {}
    lines = [line for line in (_street(xad.part(1)), xad.c(2)) if line]
    if lines:
        address["line"] = lines
    for key, n in (("city", 3), ("district", 4), ("postalCode", 5), ("country", 6)):
        if xad.c(n):
            address[key] = xad.c(n)
    if not address:
        return None
    kind = tables.lookup("v2-0190-address-type", xad.c(7))
    if isinstance(kind, dict):
        address.update(kind)
    return address


def _phone_number(xtn: Composite) -> str:
    # v2.5+ splits the number: country (XTN.5) area (XTN.6) local (XTN.7) extension (XTN.8); XTN.12 is
    # the unformatted whole; older senders put everything in XTN.1.
    if xtn.c(12):
        return xtn.c(12)
    parts = [p for p in (f"+{xtn.c(5)}" if xtn.c(5) else "", xtn.c(6), xtn.c(7)) if p]
    number = " ".join(parts)
    if number and xtn.c(8):
        number += f" ext. {xtn.c(8)}"
    return number or xtn.c(1)


def xtn_contact(xtn: Composite, default_use: str | None = None) -> Json | None:
    """XTN -> ContactPoint: system from XTN.3 (table 0202) or XTN.2 NET, use from XTN.2 (table 0201);
    None when there is no number or address (a use code alone says nothing)."""
    equipment, use_code = xtn.c(3), xtn.c(2).upper()
    system = tables.text("v2-0202-telecom-equipment", equipment)
    if system is None and (use_code == "NET" or "@" in xtn.c(4)):
        system = "email"
    value = (xtn.c(4) or xtn.c(1)) if system == "email" else _phone_number(xtn)
    if not value:
        return None
    contact: Json = {"system": system or "phone", "value": value}
    use = "mobile" if equipment.upper() == "CP" else tables.text("v2-0201-telecom-use", use_code) or default_use
    if use:
        contact["use"] = use
    return contact


# --- TS / DTM / DT ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FhirTime:
    """A parsed HL7 time: ``value`` in FHIR form (precision kept), ``moment`` when it has a time of day."""

    value: str
    moment: datetime | None

    @property
    def date(self) -> str:
        return self.value[:10]


def _offset(text: str | None, naive: datetime, zone: tzinfo) -> timezone | tzinfo:
    if text is None:
        # A time of day without an offset is local time of the sender's zone (DST-aware).
        offset = naive.replace(tzinfo=zone).utcoffset() or timedelta(0)
        return timezone(offset)
    if text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[3:5])
    if minutes > 59 or hours * 60 + minutes > 14 * 60:
        raise InvalidValue(f"time zone offset {text} is out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def parse_ts(value: str, zone: tzinfo) -> FhirTime | None:
    """TS/DTM/DT text (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]) -> FhirTime; None when empty.

    ``InvalidValue`` when it is not a date at all or names a date or time that does not exist.
    """
    text = value.strip()
    if not text:
        return None
    match = _TS.match(text)
    if not match:
        raise InvalidValue("not an HL7 date/time (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])")
    g = match.groupdict()
    if g["tz"] and g["tz"] != "Z":
        # An impossible offset makes the whole value suspect, even on a date that will not show it.
        _offset(g["tz"], datetime(2000, 1, 1), zone)
    try:
        # Precision is kept: "2022" stays a year, "202201" a month, a date has no time zone.
        if g["mo"] is None:
            datetime(int(g["y"]), 1, 1)
            return FhirTime(g["y"], None)
        if g["d"] is None:
            datetime(int(g["y"]), int(g["mo"]), 1)
            return FhirTime(f"{g['y']}-{g['mo']}", None)
        day = datetime(int(g["y"]), int(g["mo"]), int(g["d"]))
        if g["h"] is None:
            return FhirTime(f"{g['y']}-{g['mo']}-{g['d']}", None)
        # FHIR dateTime needs seconds once a time is given: minute precision is padded with ":00".
        naive = day.replace(hour=int(g["h"]), minute=int(g["mi"] or 0), second=int(g["s"] or 0))
    except ValueError as exc:
        raise InvalidValue(f"not a real date/time ({exc})") from exc
    moment = naive.replace(tzinfo=_offset(g["tz"], naive, zone))
    clock = f"{naive.hour:02d}:{naive.minute:02d}:{naive.second:02d}"
    stamp = f"{g['y']}-{g['mo']}-{g['d']}T{clock}{g['f'] or ''}{_iso_offset(moment)}"
    return FhirTime(stamp, moment)


def _iso_offset(moment: datetime) -> str:
    offset = moment.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


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


# --- CE / CWE --------------------------------------------------------------------------------------


def code_system(name: str) -> str | None:
    """The FHIR system for an HL7 v2 coding system name (CWE.3); a local one when unknown."""
    if not name:
        return None
    known = tables.text("coding-systems", name)
    if known:
        return known
    table = re.fullmatch(r"HL7(\d{4})", name.upper())
    if table:
        return f"http://terminology.hl7.org/CodeSystem/v2-{table.group(1)}"
    return LOCAL_CODE_SYSTEM.format(name=_SLUG.sub("-", name).strip("-"))


def _coding(code: str, display: str, system_name: str) -> Json | None:
    if not code:
        return None
    coding: Json = {"code": code}
    system = code_system(system_name)
    if system:
        coding["system"] = system
    if display:
        coding["display"] = display
    return coding


def cwe_concept(cwe: Composite) -> Json | None:
    """CE/CWE -> CodeableConcept: the primary (1-3) and alternate (4-6) codings, text from CWE.9 (or
    the primary text when there is no code); None when empty."""
    codings = [c for c in (_coding(cwe.c(1), cwe.c(2), cwe.c(3)), _coding(cwe.c(4), cwe.c(5), cwe.c(6))) if c]
    concept: Json = {}
    if codings:
        concept["coding"] = codings
    text = cwe.c(9) or ("" if codings else cwe.c(2) or cwe.c(5))
    if text:
        concept["text"] = text
    return concept or None


def concept_text(cwe: Composite) -> str:
    """The human-readable part of a CE/CWE: original text, else the display, else the code."""
    return cwe.c(9) or cwe.c(2) or cwe.c(5) or cwe.c(1)


# --- XCN, XON, HD, PL: people, organisations, places -----------------------------------------------


def person_display(family: str, given: list[str], prefix: str = "", suffix: str = "") -> str:
    return " ".join(p for p in (prefix, *given, family, suffix) if p)


def national_system(*names: str) -> str | None:
    """The national register (GMC, GMP, NMC...: tables/national-identifiers.json) the first of
    ``names`` (an authority's namespace or OID, an identifier type) that names one; else None. Such a
    number means the same in every trust, so it is never scoped by the sender."""
    for name in names:
        found = tables.text("national-identifiers", name.strip()) if name and name.strip() else None
        if found:
            return found
    return None


def xcn_reference(xcn: Composite, systems: Systems, resource_type: str = "Practitioner") -> Json | None:
    """XCN -> Reference by identifier (XCN.1, authority XCN.9, type XCN.13) with a display name; a
    national register named by the authority or the type (``C1234567^...^GMC``) gives its system."""
    ref: Json = {"type": resource_type}
    if xcn.c(1):
        authority = xcn.part(9)
        national = national_system(authority.c(1), authority.c(2), xcn.c(13))
        if national:
            ref["identifier"] = {"system": national, "value": xcn.c(1)}
        else:
            system = hd_system(authority, systems) or systems.local(systems.facility)
            ref["identifier"] = _identifier(xcn.c(1), system, xcn.c(13), authority, systems)
    display = person_display(xcn.c(2), [g for g in (xcn.c(3), xcn.c(4)) if g], xcn.c(6), xcn.c(5))
    if display:
        ref["display"] = display
    return ref if len(ref) > 1 else None


def organization_reference(name: str, code: str, systems: Systems) -> Json | None:
    """An Organization reference: by ODS identifier when ``code`` reads as one, else by a local one."""
    ref: Json = {"type": "Organization"}
    ods = systems.ods(code)
    if ods:
        ref["identifier"] = {"system": ODS_ORGANIZATION_SYSTEM, "value": ods}
        name = name or str(tables.lookup("ods-organisations", ods) or "")
    elif code:
        ref["identifier"] = {"system": systems.local(systems.facility), "value": code}
    if name:
        ref["display"] = name
    return ref if len(ref) > 1 else None


def xon_reference(xon: Composite, systems: Systems) -> Json | None:
    """XON -> Organization reference: name XON.1, code XON.10 (v2.5+) else XON.3 (v2.3/2.4)."""
    return organization_reference(xon.c(1), xon.c(10) or xon.c(3), systems)


def hd_reference(hd: Composite, systems: Systems) -> Json | None:
    """HD -> Organization reference when its namespace id reads as an ODS code; else by display."""
    code = hd.c(1)
    if systems.ods(code):
        return organization_reference("", code, systems)
    return {"type": "Organization", "display": code} if code else None


def pl_display(pl: Composite) -> str:
    """PL (point of care ^ room ^ bed ^ facility ... ^ description PL.9) as one readable line."""
    parts = [pl.c(n) for n in (1, 2, 3) if pl.c(n)]
    facility = pl.part(4).c(1)
    if facility:
        parts.append(facility)
    return pl.c(9) or ", ".join(parts)
