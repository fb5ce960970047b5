"""Intake: HL7v2 (MLLP, HTTP) and FHIR in; every message stored durably before it is acknowledged."""
