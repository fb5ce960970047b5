"""The pathway table (``data/mscc-pathway.json``): the one place the SLA windows live.

The windows (``window_hours``: 24 hours with neurological signs or when not known, 7 days without;
NICE NG234) are read here both by the pathway CarePlan's deadlines (``plan.py``) and by the SLA scanner
(``sla.py``), so changing a window is one edit to the data file. The table also holds the CarePlan's
activities, the assessment Encounter's class and type, the referral's code text and the ODS code of
the hosting MSCC service. A missing or malformed file fails loudly at first use (``data_files.load``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from . import data_files


def pathway_table() -> dict[str, Any]:
    """The whole table (read once)."""
    return data_files.load("mscc-pathway")


def window(neurological: str) -> timedelta:
    """The MRI and treatment-plan window for a neurological status ("present", "absent", "unknown");
    any other value takes the "unknown" window (the safe 24 hours), never none."""
    hours = pathway_table()["window_hours"]
    return timedelta(hours=int(hours.get(neurological, hours["unknown"])))


def window_label(span: timedelta) -> str:
    """A window in words: "24 hours", "7 days"."""
    hours = int(span.total_seconds() // 3600)
    return f"{hours // 24} days" if hours % 24 == 0 and hours > 24 else f"{hours} hours"


def service_ods() -> str:
    """The ODS code of the MSCC service that hosts the hub."""
    return str(pathway_table()["service_ods"])


def referral_code_text() -> str:
    """The text of a referral's code (``ServiceRequest.code.text``) on the HL7v2 route."""
    return str(pathway_table()["referral_code_text"])
