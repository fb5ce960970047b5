"""SMART on FHIR system scopes: what a client may be granted, and whether a grant covers what a route needs.

The hub's API clients are systems (SMART Backend Services), so every scope has the ``system/`` context:

    system/ServiceRequest.rs     v2: read and search ServiceRequests (letters from "cruds", in that order)
    system/*.cruds               v2: everything on every FHIR type
    system/*.read                v1: the same as system/*.rs
    system/*.write               v1: the same as system/*.cud
    system/*.*                   v1: the same as system/*.cruds
    system/hl7v2.c               send HL7v2 over HTTP (``system/hl7v2.write`` too)

``hl7v2`` is not a FHIR type: a ``*`` scope does not cover it, so a FHIR client cannot post HL7v2 by
accident of a wildcard. The scope the development client has always carried, ``hl7v2/*.write``, is read
as ``system/hl7v2.cud``. Which scope each route needs is decided in ``services/api/route_scopes.py`` and
listed in ``docs/security.md``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

HL7V2 = "hl7v2"
ANY_TYPE = "*"
LEGACY_HL7V2_WRITE = "hl7v2/*.write"
_ORDER = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"^system/(\*|[A-Za-z][A-Za-z0-9]{0,63})\.(read|write|\*|[cruds]{1,5})$")


class ScopeError(ValueError):
    """A scope the hub does not understand, or one a client asked for but was not granted."""


@dataclass(frozen=True)
class Scope:
    """One grant: a type (or ``*``) and the interactions on it (letters of "cruds")."""

    resource_type: str
    permissions: frozenset[str]

    def covers(self, needed: Scope) -> bool:
        """Whether this grant allows everything ``needed`` asks for."""
        if self.resource_type == ANY_TYPE:
            same_type = needed.resource_type != HL7V2
        else:
            same_type = self.resource_type == needed.resource_type
        return same_type and needed.permissions <= self.permissions


def parse(text: str) -> Scope:
    """The grant ``text`` stands for; ``ScopeError`` saying what a valid scope looks like."""
    if text == LEGACY_HL7V2_WRITE:
        return Scope(HL7V2, frozenset("cud"))
    match = _SCOPE.match(text)
    if match is None:
        raise ScopeError(
            f"scope {text!r} is not a SMART system scope such as system/ServiceRequest.rs, system/*.cruds, "
            "system/*.read or system/hl7v2.c"
        )
    resource_type, letters = match.group(1), _V1.get(match.group(2), match.group(2))
    if len(set(letters)) != len(letters) or "".join(sorted(letters, key=_ORDER.index)) != letters:
        raise ScopeError(f"scope {text!r}: permissions are letters of 'cruds', each once, in that order")
    return Scope(resource_type, frozenset(letters))


def needed(resource_type: str, permission: str) -> Scope:
    """What a route needs: one interaction (a letter of "cruds") on one type, or on ``*`` (every type)."""
    return Scope(resource_type, frozenset(permission))


def _grants(scopes: Iterable[str]) -> list[Scope]:
    found = []
    for text in scopes:
        try:
            found.append(parse(text))
        except ScopeError:
            continue  # a scope this hub does not know grants nothing
    return found


def allows(scopes: Iterable[str], need: Scope) -> bool:
    """Whether any of the granted ``scopes`` covers ``need``."""
    return any(grant.covers(need) for grant in _grants(scopes))


def checked(scopes: Iterable[str]) -> list[str]:
    """``scopes`` when every one is valid (``ScopeError`` naming the first that is not), in order, once each."""
    unique = list(dict.fromkeys(scopes))
    for text in unique:
        parse(text)
    return unique


def narrow(requested: str | None, registered: Iterable[str]) -> list[str]:
    """The scopes a token is issued with: all the client's when it asks for none, else those it asks for,
    each of which must be covered by one of its registered scopes (``ScopeError`` naming one that is not)."""
    allowed = list(registered)
    if requested is None or not requested.strip():
        return allowed
    asked = checked(requested.split())
    for text in asked:
        if not allows(allowed, parse(text)):
            raise ScopeError(f"scope {text!r} is not granted to this client")
    return asked
