"""XPN -> HumanName, XAD -> Address, XTN -> ContactPoint: names and contact details of people.

None when a value names nothing (no name part, no address line, no number); codes outside their
table (name type, address type, telecom use) are left out rather than guessed.
"""

from __future__ import annotations

from .. import tables
from ..reader import Composite
from . import Json


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


def person_display(family: str, given: list[str], prefix: str = "", suffix: str = "") -> str:
    return " ".join(p for p in (prefix, *given, family, suffix) if p)
