"""Message types -> the steps that map them, as data; and the entry point that runs them.

``MESSAGES`` is the whole list of what the HL7v2 mapping supports: a type not in it is refused with
``MappingError`` code "not-supported" naming the type. Versions 2.3 to 2.5.1 are the reference; 2.6
to 2.8.x are read with the same field positions (the fields mapped did not move); older versions are
refused, unknown newer ones mapped with a warning.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from shared.er7 import parse_message

from ..model import MappingError, MappingResult
from .config import MappingConfig
from .context import Context, build_context, source_time
from .steps import (
    Output,
    adt_encounter_step,
    clinical_step,
    data_quality_step,
    first_patient_step,
    merge_step,
    orders_step,
    pathway_step,
    referral_step,
    results_step,
    visit_step,
)

Step = Callable[[Context, Output], None]


@dataclass(frozen=True)
class MessagePlan:
    """What a message type produces (for people and docs) and the steps that produce it."""

    produces: tuple[str, ...]
    steps: tuple[Step, ...]


_REFERRAL = MessagePlan(
    (
        "Patient",
        "Encounter (PV1)",
        "ServiceRequest (referral)",
        "Condition (DG1), AllergyIntolerance (AL1), Procedure (PR1)",
        "Encounter (MSCC assessment, patch)",
        "CarePlan (MSCC pathway, patch)",
        "Task (referral data quality)",
    ),
    (first_patient_step, visit_step, referral_step, pathway_step, data_quality_step),
)
_ADT = MessagePlan(
    (
        "Patient",
        "Encounter (PV1, status from the trigger event)",
        "Condition (DG1), AllergyIntolerance (AL1), Procedure (PR1)",
    ),
    (first_patient_step, adt_encounter_step, clinical_step),
)
_ORDER = MessagePlan(("Patient", "Encounter (PV1)", "ServiceRequest per ORC/OBR"), (orders_step,))

MESSAGES: dict[str, MessagePlan] = {
    "REF^I12": _REFERRAL,  # new referral
    "REF^I13": _REFERRAL,  # modify referral: same ids, content replaced, pathway clock kept
    "REF^I14": _REFERRAL,  # cancel referral: ServiceRequest revoked, pathway cancelled
    "ADT^A01": _ADT,  # admit
    "ADT^A02": _ADT,  # transfer
    "ADT^A03": _ADT,  # discharge: Encounter finished, period end
    "ADT^A04": _ADT,  # register
    "ADT^A08": _ADT,  # update patient information
    "ADT^A40": MessagePlan(("Patient (survivor, link replaces)", "Patient (merged away, patch)"), (merge_step,)),
    "ORM^O01": _ORDER,
    "OMG^O19": _ORDER,
    "ORU^R01": MessagePlan(
        ("Patient", "Encounter (PV1)", "DiagnosticReport per OBR", "ServiceRequest (order, patch)"), (results_step,)
    ),
}

REFERENCE_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
COMPATIBLE_VERSIONS = ("2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2")


def plan_for(ctx: Context) -> MessagePlan:
    """The plan for the message's type; ``MappingError`` "not-supported" naming it when there is none."""
    plan = MESSAGES.get(ctx.header.type)
    if plan is None:
        supported = ", ".join(sorted(MESSAGES))
        raise MappingError(
            f"{ctx.header.type} messages are not supported by the HL7v2 mapping (supported: {supported})",
            code="not-supported",
            expression="MSH-9",
        )
    return plan


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def check_version(ctx: Context) -> None:
    """Refuse versions before 2.3; note anything outside the reference versions."""
    version = ctx.header.version
    if version in REFERENCE_VERSIONS:
        return
    if not version:
        ctx.warn("MSH-12 is empty: read as version 2.5.1", "MSH-12")
    elif version in COMPATIBLE_VERSIONS:
        ctx.info(f"version {version} read with the v2.5.1 positions of the fields mapped", "MSH-12")
    elif _version_tuple(version) and _version_tuple(version) < (2, 3):
        raise MappingError(
            f"HL7 version {version} is not supported (2.3 and later are)", code="not-supported", expression="MSH-12"
        )
    else:
        ctx.warn(f"HL7 version {version!r} is not one this mapping was checked against: read as 2.5.1", "MSH-12")


def apply_z_segments(ctx: Context, out: Output) -> None:
    """Z-segments the sender's configuration names: "ignore" (noted as information) or "note" (text
    added to the message's referral or order). Others stay unmapped."""
    for seg in ctx.segments:
        handling = ctx.sender.z_segments.get(seg.name)
        if handling == "ignore":
            ctx.take(seg)
            ctx.info(f"{seg.label} ignored by the sender's configuration", seg.label)
        elif handling == "note" and out.primary is not None:
            ctx.take(seg)
            text = " | ".join(seg.text(n) for n in seg.populated())
            out.primary.setdefault("note", []).append({"text": f"{seg.name}: {text}"})


def map_message(text: str, config: MappingConfig) -> MappingResult:
    """Parse, pick the plan, run its steps; ``MappingError`` for text that is not a message (code
    "structure"), an unsupported type or version ("not-supported"), or a missing patient ("required")."""
    try:
        parsed = parse_message(text)
    except ValueError as exc:
        raise MappingError(f"not an HL7v2 message: {exc}", code="structure") from exc
    ctx = build_context(parsed, config)
    plan = plan_for(ctx)
    check_version(ctx)
    out = Output(source_time=source_time(ctx))
    for step in plan.steps:
        step(ctx, out)
    apply_z_segments(ctx, out)
    return MappingResult(
        resources=out.resources,
        patches=out.patches,
        unmapped=ctx.unmapped(),
        issues=ctx.issues,
        source_time=out.source_time,
    )
