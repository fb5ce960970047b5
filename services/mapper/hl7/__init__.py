"""HL7v2 -> FHIR R4 (UK Core) mapping: pure functions, no I/O, no database.

Tiers, as in LinuxForHealth's hl7v2-fhir-converter and Microsoft's FHIR-Converter:

    messages.py    message type -> steps (data: ``MESSAGES``); the entry point
    steps.py       message-level steps: which segments go where, how resources link up
    segments.py    one function per segment -> resource (or resource part)
    supporting.py  OBX of a referral -> contained Observations (MSCC supporting information)
    neurological.py  reading the neurological status (free text, structured items), fail-safe
    mscc.py        the MSCC assessment Encounter and pathway CarePlan a referral starts
    datatypes.py   one function per HL7 datatype -> FHIR datatype
    tables.py      code tables: JSON data in services/mapper/tables/
    config.py      per-sender settings (``MappingConfig``)

See docs/mapping.md for the rules, tables, configuration and deliberate differences from Microsoft's
converter.
"""

from __future__ import annotations

from ..model import MappingResult
from .config import MappingConfig, SenderConfig
from .messages import MESSAGES, map_message

__all__ = ["MESSAGES", "MappingConfig", "SenderConfig", "map_hl7v2"]


def map_hl7v2(text: str, config: MappingConfig | None = None) -> MappingResult:
    """Map one HL7v2 message (the decoded text intake stored) to FHIR resources and patches.

    Raises ``MappingError``: code "structure" (not an HL7v2 message), "not-supported" (message type or
    version not covered, named in the diagnostics), "required" (no patient to attach resources to).
    Anything else the message lacks or gets wrong is an issue on the result, and whatever no rule read
    is listed in ``MappingResult.unmapped``.
    """
    return map_message(text, config or MappingConfig())
