"""The MSCC domain: what a referral means (the assessment Encounter and pathway CarePlan with their ids
and SLA deadlines, the neurological reading, the data-quality Task, the HNA support plan), the pathway
steps as data, transitions, FHIR updates with If-Match, SLA clocks and their scanner.

A library the mapper and the HTTP API import; it imports ``shared`` only (``tests/test_architecture.py``).
Its data (the pathway table with the SLA windows, the neurological rules, the referral items, the minimum
data set) is in ``data/``; ``docs/pathway.md`` says where to change what.
"""
