"""HL7 v2 segments -> FHIR resources (or resource parts): one function per segment, a module per concern.

Each function reads its segment(s) through ``Seg`` (so unread fields are reported as unmapped), marks
them consumed on the ``Context``, and returns plain FHIR JSON. Values that cannot be read (an invalid
date, an unknown table code) become warnings on the context and are left out; a patient that cannot
be identified gets a message-scoped id and a warning, so that a referral is never lost.

    patients.py   PID, PD1, MRG: who the patient is (identifiers, the NHS number, demographics, GP)
    visits.py     PV1, PV2: the visit (Encounter)
    referrals.py  RF1, PRD: the referral (ServiceRequest) and its providers (contained PractitionerRoles)
    orders.py     ORC, OBR, DG1 of an order: orders (ServiceRequest) and reports (DiagnosticReport)
    clinical.py   AL1, PR1, DG1: AllergyIntolerance, Procedure, Condition
    notes.py      NTE: an Annotation, wherever the note follows
    common.py     what every segment module uses: the UK Core profile, references, ids from identifiers

A new segment goes into the module of its concern (or a new module named for it); the message-level
step that calls it is in ``steps.py``.
"""
