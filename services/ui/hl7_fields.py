"""Labels for the fields of an HL7v2 message shown one segment a row: ``PID-3 Patient Identifier List``.

Names are given for the segments MSCC referrals carry (HL7 v2.5 field names); any other field is
labelled by its position alone. MSH counts its field separator as MSH-1, so its fields are shifted by one.
"""

from __future__ import annotations

from dataclasses import dataclass

NAMES: dict[str, tuple[str, ...]] = {
    "MSH": (
        "Field Separator",
        "Encoding Characters",
        "Sending Application",
        "Sending Facility",
        "Receiving Application",
        "Receiving Facility",
        "Date/Time of Message",
        "Security",
        "Message Type",
        "Message Control ID",
        "Processing ID",
        "Version ID",
        "Sequence Number",
        "Continuation Pointer",
        "Accept Acknowledgment Type",
        "Application Acknowledgment Type",
        "Country Code",
        "Character Set",
    ),
    "EVN": ("Event Type Code", "Recorded Date/Time", "Date/Time Planned Event", "Event Reason Code", "Operator ID"),
    "PID": (
        "Set ID",
        "Patient ID",
        "Patient Identifier List",
        "Alternate Patient ID",
        "Patient Name",
        "Mother's Maiden Name",
        "Date/Time of Birth",
        "Administrative Sex",
        "Patient Alias",
        "Race",
        "Patient Address",
        "County Code",
        "Phone Number - Home",
        "Phone Number - Business",
        "Primary Language",
        "Marital Status",
        "Religion",
        "Patient Account Number",
        "SSN Number",
        "Driver's License Number",
    ),
    "PV1": (
        "Set ID",
        "Patient Class",
        "Assigned Patient Location",
        "Admission Type",
        "Preadmit Number",
        "Prior Patient Location",
        "Attending Doctor",
        "Referring Doctor",
        "Consulting Doctor",
        "Hospital Service",
    ),
    "RF1": (
        "Referral Status",
        "Referral Priority",
        "Referral Type",
        "Referral Disposition",
        "Referral Category",
        "Originating Referral Identifier",
        "Effective Date",
        "Expiration Date",
        "Process Date",
        "Referral Reason",
        "External Referral Identifier",
    ),
    "PRD": ("Provider Role", "Provider Name", "Provider Address", "Provider Location", "Provider Communication"),
    "OBX": (
        "Set ID",
        "Value Type",
        "Observation Identifier",
        "Observation Sub-ID",
        "Observation Value",
        "Units",
        "References Range",
        "Abnormal Flags",
        "Probability",
        "Nature of Abnormal Test",
        "Observation Result Status",
    ),
    "MRG": ("Prior Patient Identifier List", "Prior Alternate Patient ID", "Prior Patient Account Number"),
    "DG1": ("Set ID", "Diagnosis Coding Method", "Diagnosis Code", "Diagnosis Description", "Diagnosis Date/Time"),
    "NTE": ("Set ID", "Source of Comment", "Comment", "Comment Type"),
    "MSA": ("Acknowledgment Code", "Message Control ID", "Text Message"),
}


@dataclass(frozen=True)
class Field:
    label: str  # PID-3
    name: str  # Patient Identifier List ("" when not known)
    value: str


def fields(segment: str, separator: str = "|") -> tuple[str, list[Field]]:
    """The segment's name and its non-empty fields, each labelled; MSH names its own separator."""
    name = segment[:3]
    if name in ("MSH", "BHS", "FHS") and len(segment) > 3:
        separator = segment[3]
        values = [separator, *segment[4:].split(separator)]
    else:
        values = segment[4:].split(separator) if len(segment) > 3 else []
    names = NAMES.get(name, ())
    out = []
    for n, value in enumerate(values, start=1):
        if value:
            out.append(Field(f"{name}-{n}", names[n - 1] if n <= len(names) else "", value))
    return name, out
