"""The MSCC pathway: steps as data, transitions, FHIR updates with If-Match, SLA clocks and their scanner."""
