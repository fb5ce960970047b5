"""XCN, XON, HD, PL -> references to people, organisations and places.

A person or organisation is referenced by identifier (its ODS code for an organisation, a national
register number or a local one for a person) with a display; a place is a readable line. None when
the value names nothing.
"""

from __future__ import annotations

from shared.nhs import ODS_ORGANIZATION_SYSTEM

from .. import tables
from ..reader import Composite
from . import Json
from .demographics import person_display
from .identifiers import Systems, hd_system, identifier, national_system


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
            ref["identifier"] = identifier(xcn.c(1), system, xcn.c(13), authority, systems)
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
