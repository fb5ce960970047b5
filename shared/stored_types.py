"""The FHIR resource types the hub stores, shared by intake (which refuses Bundle entries of any other
type rather than acknowledge them) and the mapper (which writes them)."""

from __future__ import annotations

STORED_TYPES: tuple[str, ...] = (
    "Patient",
    "ServiceRequest",
    "Encounter",
    "CarePlan",
    "QuestionnaireResponse",
    # What decides treatment: diagnoses, allergies, prior procedures (e.g. radiotherapy).
    "Condition",
    "AllergyIntolerance",
    "Procedure",
)
