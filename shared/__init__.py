"""The hub's own shared package: settings, store, MLLP framing, ER7 and FHIR helpers, identity, logging."""
