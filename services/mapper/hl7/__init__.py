"""HL7v2 -> FHIR R4 (UK Core) mapping: pure functions, no I/O, no database.

Tiers, as in LinuxForHealth's hl7v2-fhir-converter and Microsoft's FHIR-Converter:

    messages.py    message type -> steps (data: ``MESSAGES``); the entry point
    steps.py       message-level steps: which segments go where, how resources link up
    groups.py      the message's structure: patient groups, order groups, NTE ownership
    segments/      one function per segment -> resource (or resource part), a module per concern:
                   patients (PID, PD1, MRG), visits (PV1, PV2), referrals (RF1, PRD), orders (ORC, OBR),
                   clinical (AL1, PR1, DG1), notes (NTE); common holds what several of them use
    priority.py    RF1-2 -> the referral's priority, through the sender's own codes
    supporting.py  OBX of a referral -> contained Observations (MSCC supporting information), read for
                   the neurological status by the pathway's reading (services/pathway/neurological.py)
    datatypes/     one function per HL7 datatype -> FHIR datatype, a module per kind: identifiers,
                   demographics (names, addresses, telecoms), times, codes, references
    reader.py      ``Composite`` and ``Seg``: reading fields, recording what was read
    context.py     one mapping's state: header facts, sender settings, issues, what was consumed
    tables.py      code tables: JSON data in services/mapper/tables/
    config.py      per-sender settings (``MappingConfig``)

What a referral means for the MSCC pathway (the assessment Encounter and pathway CarePlan, their ids
and deadlines, the data-quality Task) is the pathway's (``services/pathway/``); the steps call it.

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
