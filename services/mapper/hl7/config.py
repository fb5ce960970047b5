"""Per-sender mapping configuration: what differs between the trusts that send us HL7v2.

A ``MappingConfig`` holds defaults and overrides keyed by sending facility (MSH-4.1, else MSH-3.1).
It is plain data, built in code or from a JSON file's content with ``MappingConfig.from_dict``::

    {"default": {"local_system_pattern": "urn:mscc:id:{authority}"},
     "senders": {"RBL": {"nhs_number_location": "PID-2", "z_segments": {"ZU1": "ignore"}}}}

A sender's entry overrides the defaults key by key. ``from_dict`` raises ``ValueError`` naming the
key for anything it does not understand, so a bad file fails at start-up, not on a message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Literal, cast, get_args

NhsNumberLocation = Literal["PID-3", "PID-2", "PID-3 NHSNMBR"]
ZHandling = Literal["note", "ignore"]
# FHIR request-priority codes (required binding of ServiceRequest.priority).
REQUEST_PRIORITIES = ("routine", "urgent", "asap", "stat")
DEFAULT_LOCAL_SYSTEM_PATTERN = "urn:mscc:id:{authority}"


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class SenderConfig:
    """How one sender's messages are read.

    - ``nhs_number_location``: "PID-3" (a PID-3 repetition with CX.5 "NH" or CX.4 "NHS"; the HL7 UK
      profile), "PID-2" (PID-2 CX.1, older feeds), or "PID-3 NHSNMBR" (a PID-3 repetition whose CX.5
      is the local type "NHSNMBR"). MRG follows the same choice (MRG-1 or MRG-4).
    - ``z_segments``: Z-segment id -> "note" (its text becomes a note on the message's referral or
      order) or "ignore" (reported as an information issue). Unlisted Z-segments are unmapped.
    - ``local_system_pattern``: the Identifier.system for identifiers whose authority is local (not the
      NHS, not an OID/URI); ``{authority}`` is the assigning authority or, when none is sent, the
      sending facility.
    - ``ods_codes``: extra codes to read as ODS organisation codes (beyond tables/ods-organisations.json).
      An assigning authority (CX.4, EI.2) that is one of them, or the sending facility itself, names an
      organisation: its identifiers are not scoped further. Any other namespace is an application
      (ICE, PAS, EPR) and its identifiers are scoped by the sending facility.
    - ``organisation_oids``: OIDs (or URIs) that identify this trust itself as an assigning authority
      (HD.2 with HD.3 ISO/URI): identifiers under them keep ``urn:oid:...`` / the URI as their system.
      Other OIDs are scoped by the sending facility, like application names.
    - ``supporting_info_codes``: OBX-3 identifier -> supporting-information key (the pathway's items,
      services/pathway/data/mscc-supporting-info.json), for senders' own codes.
    - ``assume_timezone``: the IANA zone of times sent without an offset.
    - ``priority_codes``: the sender's own RF1-2 priority codes -> FHIR request-priority (routine,
      urgent, asap, stat); tried before tables/local-priority-codes.json and HL7 table 0280.
    """

    nhs_number_location: NhsNumberLocation = "PID-3"
    z_segments: Mapping[str, ZHandling] = field(default_factory=_frozen)
    local_system_pattern: str = DEFAULT_LOCAL_SYSTEM_PATTERN
    ods_codes: frozenset[str] = frozenset()
    organisation_oids: frozenset[str] = frozenset()
    supporting_info_codes: Mapping[str, str] = field(default_factory=_frozen)
    assume_timezone: str = "Europe/London"
    priority_codes: Mapping[str, str] = field(default_factory=_frozen)

    def __post_init__(self) -> None:
        if self.nhs_number_location not in get_args(NhsNumberLocation):
            raise ValueError(f"nhs_number_location must be one of {get_args(NhsNumberLocation)}")
        if "{authority}" not in self.local_system_pattern or any(c.isspace() for c in self.local_system_pattern):
            raise ValueError("local_system_pattern must contain {authority} and no spaces")
        for name, handling in self.z_segments.items():
            if not name.startswith("Z") or handling not in get_args(ZHandling):
                raise ValueError(f"z_segments: {name!r} -> {handling!r} is not a Z-segment with 'note' or 'ignore'")
        for code, priority in self.priority_codes.items():
            if priority not in REQUEST_PRIORITIES:
                raise ValueError(f"priority_codes: {code!r} -> {priority!r} is not one of {REQUEST_PRIORITIES}")


@dataclass(frozen=True)
class MappingConfig:
    """Defaults plus per-sender overrides; ``for_sender`` picks one."""

    default: SenderConfig = field(default_factory=SenderConfig)
    senders: Mapping[str, SenderConfig] = field(default_factory=_frozen)

    def for_sender(self, facility: str, application: str = "") -> SenderConfig:
        """The sending facility's settings, else the sending application's, else the defaults."""
        return self.senders.get(facility) or self.senders.get(application) or self.default

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MappingConfig:
        """Build from parsed JSON; ``ValueError`` for unknown keys or bad values."""
        unknown = set(data) - {"default", "senders"}
        if unknown:
            raise ValueError(f"unknown mapping configuration keys: {sorted(unknown)}")
        default = _sender(SenderConfig(), data.get("default") or {})
        senders = {name: _sender(default, raw) for name, raw in (data.get("senders") or {}).items()}
        return cls(default, _frozen(senders))


def _sender(base: SenderConfig, raw: Mapping[str, Any]) -> SenderConfig:
    known = {f.name for f in fields(SenderConfig)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"unknown sender configuration keys: {sorted(unknown)}")
    changes: dict[str, Any] = dict(raw)
    if "ods_codes" in changes:
        changes["ods_codes"] = frozenset(str(c).upper() for c in changes["ods_codes"])
    if "organisation_oids" in changes:
        changes["organisation_oids"] = frozenset(str(c).strip() for c in changes["organisation_oids"])
    for name in ("z_segments", "supporting_info_codes"):
        if name in changes:
            changes[name] = _frozen(cast(Mapping[str, Any], changes[name]))
    if "priority_codes" in changes:
        # Codes are compared upper-cased, as the code tables are ("u" and "U" are one code).
        codes = cast(Mapping[str, Any], changes["priority_codes"])
        changes["priority_codes"] = _frozen({str(k).upper(): v for k, v in codes.items()})
    return replace(base, **changes)
