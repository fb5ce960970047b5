"""Mapper: stored messages normalised into FHIR resources, versioned, with outbox events."""
