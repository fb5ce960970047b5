"""Which mapping a stored message gets: HL7v2 by message type, FHIR by interaction."""

from __future__ import annotations

from collections.abc import Callable

from services.pathway.derive import derive
from shared.store import Document

from .fhir_records import map_bundle, map_created
from .hl7 import map_hl7v2
from .hl7.config import MappingConfig
from .model import MappingError, MappingResult


def make_mapper(hl7_config: MappingConfig | None = None) -> Callable[[Document], MappingResult]:
    """The pure function the worker applies to each claimed message."""

    def map_record(record: Document) -> MappingResult:
        protocol = record.get("protocol")
        if protocol == "hl7v2":
            return map_hl7v2(record.get("text") or "", hl7_config)
        if protocol == "fhir":
            interaction = (record.get("header") or {}).get("interaction")
            if interaction == "create":
                return map_created(record, derive)
            if interaction == "bundle":
                return map_bundle(record, derive)
            raise MappingError(f"FHIR interaction {interaction!r} has no mapping", code="not-supported")
        raise MappingError(f"protocol {protocol!r} has no mapping", code="not-supported")

    return map_record
