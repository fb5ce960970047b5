"""HL7 v2 datatypes -> FHIR datatypes: one small pure function per datatype, a module per kind.

Every function takes a ``Composite`` (and, where identifiers are named, the message's ``Systems``) and
returns a FHIR JSON fragment (``Json``), or None when the value is empty. Dates that do not exist raise
``InvalidValue``: the segment tier turns that into an issue naming the field and leaves the element out.

    identifiers.py   HD, EI, CX -> Identifier; the NHS number; ``Systems`` (how identifiers are named)
    demographics.py  XPN -> HumanName, XAD -> Address, XTN -> ContactPoint
    times.py         TS / DTM / DT -> FHIR dateTime / date (``parse_ts``, ``FhirTime``, ``InvalidValue``)
    codes.py         CE / CWE -> CodeableConcept, coding system names -> FHIR systems
    references.py    XCN, XON, HD, PL -> references to people, organisations (by ODS code) and places
"""

from __future__ import annotations

from typing import Any

# A FHIR JSON fragment (a datatype, or a resource being built): what every mapping function returns.
Json = dict[str, Any]
