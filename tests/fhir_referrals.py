"""FHIR referrals as the region's acute trusts post them (shared by the FHIR convention and client tests)."""

from __future__ import annotations

from typing import Any

from shared.nhs import NHS_NUMBER_SYSTEM

FHIR = {"Content-Type": "application/fhir+json"}
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
# Valid NHS numbers (modulus 11), one per patient.
PATIENTS = {"HOLLOWAY": "9449305552", "OKONKWO": "9434765919", "BRENNAN": "9434765870"}
NOTES = {
    "RBL": "known ca breast, new thoracic back pain 3/52, legs feel heavy tonight ?MSCC pls review",
    "RJR": "Ca prostate w bony mets. Lumbar pain worse lying flat x1wk, new urinary retention this pm",
    "REM": "myeloma pt, T-spine pain ++, 'wobbly' on feet since sat. on call reg aware. MRI not yet done",
}


def patient(family: str, given: str, born: str, trust: str, local: str) -> dict[str, Any]:
    """A Patient as a trust's PAS sends it: NHS number and the trust's own hospital number."""
    return {
        "resourceType": "Patient",
        "identifier": [
            {"system": NHS_NUMBER_SYSTEM, "value": PATIENTS[family]},
            {"system": f"https://{trust.lower()}.nhs.uk/Id/pas-number", "value": local},
        ],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": "female" if given in ("Margaret", "Siobhan") else "male",
        "birthDate": born,
    }


SEED_PATIENTS = [
    patient("HOLLOWAY", "Margaret", "1958-02-14", "RBL", "X100234"),
    patient("OKONKWO", "Chidi", "1949-07-01", "RJR", "X100234"),
    patient("BRENNAN", "Siobhan", "1967-12-31", "REM", "X100234"),
]


def referral(number: str, trust: str, patient: str = "HOLLOWAY", **extra: Any) -> dict[str, Any]:
    """A referral as a trust's EPR sends it: the trust's own referral number (numbers collide across
    trusts), requester a contained PractitionerRole of the trust, the patient by NHS number, free text."""
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "contained": [
            {
                "resourceType": "PractitionerRole",
                "id": "referrer",
                "organization": {"identifier": {"system": ODS_SYSTEM, "value": trust}},
                "telecom": [{"system": "phone", "value": "01632 960123", "use": "work"}],
            }
        ],
        "identifier": [{"system": f"https://{trust.lower()}.nhs.uk/Id/ice-referral", "value": number}],
        "status": "active",
        "intent": "order",
        "priority": "urgent",
        "code": {"text": "MSCC assessment"},
        "subject": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": PATIENTS[patient]}},
        "requester": {"reference": "#referrer"},
        "authoredOn": "2026-11-25T02:40:00+00:00",
        "occurrenceDateTime": "2026-11-25T06:00:00+00:00",
        "note": [{"text": NOTES.get(trust, NOTES["RBL"])}],
    }
    resource.update(extra)
    return resource
