"""Message-level steps: which segments go to which segment function, and how the results link up.

A step takes the ``Context`` and the ``Output`` built so far and adds resources or patches to it;
``messages.MESSAGES`` lists the steps of each message type. Steps raise ``MappingError`` (code
"required") only when a resource the message type must produce has no patient to belong to.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from datetime import datetime

from services.pathway.data_quality import referral_task
from services.pathway.neurological import Neurological
from services.pathway.plan import Pathway, assessment_patch, care_plan_patch
from services.pathway.table import referral_code_text

from ..model import MappingError, Patch, Resource
from . import tables
from .context import Context
from .datatypes import Json
from .groups import OrderGroup, order_groups, patient_groups, with_owners
from .priority import referral_priority
from .reader import Seg
from .segments import orders, patients, referrals, visits
from .segments.clinical import Clinical, clinical_content
from .segments.common import profile, ref
from .segments.notes import note
from .supporting import supporting_info

# OBX value types whose OBX-5 is report text (the DiagnosticReport conclusion).
TEXT_VALUE_TYPES = frozenset({"TX", "FT", "ST", ""})
# Report statuses after which the order is done.
FINAL_REPORT_STATUSES = frozenset({"final", "corrected", "amended"})


@dataclass
class Output:
    """What the steps have produced so far, and the references later steps link to."""

    source_time: datetime | None = None
    resources: list[Resource] = field(default_factory=list)
    patches: list[Patch] = field(default_factory=list)
    patient: Json | None = None
    encounter: Json | None = None
    primary: Resource | None = None
    neurological: Neurological = "unknown"

    def subject(self) -> Json:
        if self.patient is None:
            raise MappingError(
                "the message has no PID segment: nothing to attach the resources to", code="required", expression="PID"
            )
        return self.patient


# --- patient and visit --------------------------------------------------------------------------------


def _patient(ctx: Context, out: Output, pid: Seg, group: list[Seg]) -> Resource:
    patient = patients.patient(pid, ctx.first("PD1", group), ctx)
    out.resources.append(patient)
    out.patient = ref("Patient", patient["id"])
    return patient


def _visit(ctx: Context, out: Output, group: list[Seg], status: str | None = None) -> Resource | None:
    pv1 = ctx.first("PV1", group)
    if pv1 is None:
        out.encounter = None
        return None
    encounter = visits.encounter(pv1, ctx.first("PV2", group), ctx, out.subject(), status)
    out.resources.append(encounter)
    out.encounter = ref("Encounter", encounter["id"])
    return encounter


def first_patient_step(ctx: Context, out: Output) -> None:
    """PID (+PD1) -> Patient; later PID groups (not expected in REF/ADT) stay unmapped."""
    pid = ctx.first("PID")
    if pid is None:
        raise MappingError(f"{ctx.header.type} has no PID segment", code="required", expression="PID")
    _patient(ctx, out, pid, ctx.segments)


def visit_step(ctx: Context, out: Output) -> None:
    """PV1 (+PV2) -> Encounter, status from the patient class (non-ADT messages); none without PV1."""
    _visit(ctx, out, ctx.segments)


def _discharge_time(ctx: Context) -> str | None:
    # PV1-45 empty on a discharge: the event time (EVN-6, else EVN-2), else the message time.
    evn = ctx.first("EVN")
    for seg, number in ((evn, 6), (evn, 2), (ctx.msh(), 7)):
        if seg is not None and seg.has(number):
            when = ctx.time(seg, number)
            if when and when.moment:
                return when.value
    return None


def _not_before(end: str, start: str | None) -> bool:
    """Whether ``end`` is not earlier than ``start`` (true when either has no time of day)."""
    try:
        return start is None or datetime.fromisoformat(end) >= datetime.fromisoformat(start)
    except (TypeError, ValueError):
        return True


def adt_encounter_step(ctx: Context, out: Output) -> None:
    """PV1 -> Encounter with the trigger event's status (A03: finished, period end required)."""
    status = tables.text("trigger-encounter-status", ctx.header.event)
    encounter = _visit(ctx, out, ctx.segments, status)
    if encounter is None:
        ctx.warn(f"{ctx.header.type} has no PV1: no Encounter was produced", "PV1")
        return
    period = encounter.setdefault("period", {})
    if encounter["status"] == "finished" and "end" not in period:
        end = _discharge_time(ctx)
        if end and _not_before(end, period.get("start")):
            period["end"] = end
            ctx.info("PV1-45 is empty: the discharge time is the event (EVN) or message time", "PV1-45")
    if not period:
        encounter.pop("period")


# --- referrals ----------------------------------------------------------------------------------------


def _referral_parts(ctx: Context) -> tuple[list[tuple[Seg, list[Seg]]], list[Seg]]:
    """OBX segments with their NTEs, and the NTEs that belong to the referral itself."""
    observations: list[tuple[Seg, list[Seg]]] = []
    notes: list[Seg] = []
    for seg, owner in with_owners(ctx.segments):
        if seg.name == "OBX":
            observations.append((seg, []))
        elif seg.name == "NTE" and owner is not None and owner.name == "OBX":
            observations[-1][1].append(seg)
        elif seg.name == "NTE":
            notes.append(seg)
    return observations, notes


def _providers(ctx: Context, request: Resource) -> list[Resource]:
    """PRD RP (the first) -> requester, PRD RT -> performer; both as contained PractitionerRoles.

    The requester always names the referring trust when the message gives one anywhere: the PRD's
    organisation (PRD-10, PRD-4) when it is an ODS code, else the sending facility (MSH-4) when that is;
    without any PRD RP the sending facility is the requester. Subscriptions are filtered on it, so a
    referral without it reaches no trust: that is flagged as a warning on the message.
    """
    contained: list[Resource] = []
    sender = referrals.sending_organization(ctx)
    for number, prd in enumerate(ctx.all("PRD"), start=1):
        role = prd.value(1).upper()
        if role == "RP" and "requester" not in request:
            found = referrals.provider(prd, ctx, "requester", sender)
            if found:
                request["requester"] = {"reference": "#requester"}
                contained.append(found)
                if sender and found.get("organization") is sender:
                    ctx.info("PRD-10 and PRD-4 give no ODS code: the referring organisation is MSH-4", "PRD-4")
        elif role == "RT":
            found = referrals.provider(prd, ctx, f"performer-{number}")
            if found:
                request.setdefault("performer", []).append({"reference": f"#{found['id']}"})
                contained.append(found)
    if "requester" not in request and sender:
        request["requester"] = sender
        ctx.info("no PRD referring provider: the requester is the sending facility (MSH-4)", "PRD")
    requester = next((c for c in contained if c["id"] == "requester"), None)
    if not referrals.has_ods_code((requester or {}).get("organization") or request.get("requester")):
        ctx.warn(
            "the referral names no referring organisation by ODS code (PRD-10, PRD-4, MSH-4): no trust "
            "can be notified about it until one is supplied",
            "PRD-4",
        )
    return contained


def _reference(resource: Resource, what: str) -> Json:
    code = resource.get("code") or {}
    coding = (code.get("coding") or [{}])[0]
    text = str(code.get("text") or coding.get("display") or coding.get("code") or "")
    return {"reference": f"{resource['resourceType']}/{resource['id']}", "display": f"{what}: {text}".rstrip(": ")}


def _link_clinical(request: Resource, found: Clinical) -> None:
    """The referral names its clinical content: DG1 Conditions as ``reasonReference`` (their codes also
    lead ``reasonCode``, for clients that do not follow references, ahead of RF1-10's administrative
    reason); AL1 allergies and PR1 procedures in ``supportingInfo``."""
    if found.conditions:
        request["reasonReference"] = [_reference(c, "Diagnosis") for c in found.conditions]
        request["reasonCode"] = [*(c["code"] for c in found.conditions), *request.get("reasonCode", [])]
    extra = [_reference(a, "Allergy") for a in found.allergies]
    extra += [_reference(p, "Procedure") for p in found.procedures]
    if extra:
        request["supportingInfo"] = [*request.get("supportingInfo", []), *extra]


def referral_step(ctx: Context, out: Output) -> None:
    """RF1 + PRD + DG1 + AL1 + PR1 + NTE + OBX -> the referral ServiceRequest (supporting info
    contained) and the Conditions, AllergyIntolerances and Procedures it links to."""
    rf1 = ctx.first("RF1")
    if rf1 is None:
        ctx.warn(f"{ctx.header.type} has no RF1: the referral has no status, priority or identifier", "RF1")
    request = referrals.referral(rf1, ctx, out.subject(), referral_code_text())
    if out.encounter:
        request["encounter"] = out.encounter
    priority = referral_priority(rf1, ctx)
    if priority.code:
        request["priority"] = priority.code
    contained = _providers(ctx, request)
    clinical = clinical_content(ctx, out.subject(), ctx.segments)
    observations, notes = _referral_parts(ctx)
    info = supporting_info(observations, ctx, out.subject())
    annotations = [a for a in (note(n, ctx) for n in notes) if a]
    if priority.note:
        annotations.insert(0, {"text": priority.note})
    optional = {"contained": contained + info.contained, "supportingInfo": info.references, "note": annotations}
    request.update({k: v for k, v in optional.items() if v})
    _link_clinical(request, clinical)
    out.resources += [request, *clinical.resources]
    out.primary = request
    out.neurological = info.neurological


def clinical_step(ctx: Context, out: Output) -> None:
    """AL1, PR1 and DG1 of the message -> AllergyIntolerance, Procedure, Condition (messages without a
    referral to link them from, e.g. ADT)."""
    out.resources += clinical_content(ctx, out.subject(), ctx.segments).resources


def _clock_start(ctx: Context, out: Output) -> datetime | None:
    # First contact: RF1-7 when it carries a time of day, else the message time (MSH-7).
    rf1 = ctx.first("RF1")
    effective = ctx.time(rf1, 7) if rf1 is not None and rf1.has(7) else None
    return effective.moment if effective and effective.moment else out.source_time


def pathway_step(ctx: Context, out: Output) -> None:
    """The MSCC assessment Encounter and pathway CarePlan of the referral (as patches, see services/pathway/plan.py)."""
    request = out.primary
    if request is None:
        return
    rf1 = ctx.first("RF1")
    revoked = request["status"] == "revoked"
    accepted = rf1 is not None and rf1.value(1).upper() == "A"
    pathway = Pathway(
        referral_id=request["id"],
        subject=request["subject"],
        encounter_status="cancelled" if revoked else "in-progress" if accepted else "planned",
        plan_status="revoked" if revoked else "active",
        neurological=out.neurological,
        start=_clock_start(ctx, out),
    )
    if pathway.start is None:
        ctx.warn("neither RF1-7 nor MSH-7 gives the referral time: the pathway has no deadlines", "MSH-7")
    out.patches += [assessment_patch(pathway), care_plan_patch(pathway)]


def data_quality_step(ctx: Context, out: Output) -> None:
    """The referral's data-quality Task: what of the MSCC minimum data it lacks (see
    services/pathway/data_quality.py)."""
    request = out.primary
    if request is None:
        return
    subject = (request.get("subject") or {}).get("reference")
    patient = next((r for r in out.resources if f"Patient/{r['id']}" == subject), None)
    out.resources.append(referral_task(request, patient, out.neurological))


# --- orders and results ---------------------------------------------------------------------------------


def _order_extras(order: OrderGroup, ctx: Context) -> tuple[list[Json], list[Json]]:
    """The order's DG1 reasons and its own NTEs (those after ORC/OBR, not after an OBX)."""
    reasons, notes = [], []
    for seg, owner in with_owners(order.children):
        if seg.name == "DG1":
            reasons.append(orders.diagnosis(seg, ctx))
        elif seg.name == "NTE" and (owner is None or owner.name in ("ORC", "OBR")):
            notes.append(note(seg, ctx))
    return [r for r in reasons if r], [n for n in notes if n]


def orders_step(ctx: Context, out: Output) -> None:
    """ORM^O01 / OMG^O19: per patient group, Patient, Encounter (PV1) and one ServiceRequest per order."""
    groups = patient_groups(ctx)
    if not groups:
        raise MappingError(
            f"{ctx.header.type} has no PID: an order needs its patient", code="required", expression="PID"
        )
    for group in groups:
        _patient(ctx, out, group[0], group)
        _visit(ctx, out, group)
        for order in order_groups(group):
            request = orders.order(order.orc, order.obr, ctx, out.subject())
            reasons, notes = _order_extras(order, ctx)
            optional = {
                "encounter": out.encounter,
                "reasonCode": request.get("reasonCode", []) + reasons,
                "note": notes,
            }
            request.update({k: v for k, v in optional.items() if v})
            out.resources.append(request)
            out.primary = out.primary or request


def _report_text(order: OrderGroup, ctx: Context) -> list[str]:
    """Text OBX values and the NTEs on the order or on those OBX, in message order."""
    lines: list[str] = []
    for seg, owner in with_owners(order.children):
        if seg.name == "OBX" and seg.value(2).upper() in TEXT_VALUE_TYPES:
            ctx.take(seg)
            lines.append(seg.text(5))
        elif seg.name == "NTE" and (owner is None or owner.index in ctx.consumed):
            ctx.take(seg)
            lines.append(seg.text(3))
    return [line for line in lines if line.strip()]


def _complete_order(base: Resource, final: bool, current: Resource | None) -> Resource:
    """The order as a report describes it: completed when the report is final. An existing order
    keeps its content (the report does not fully describe it); only identifiers are added."""
    if current is None:
        out = copy.deepcopy(base)
    else:
        out = copy.deepcopy(current)
        known = {(i.get("system"), i.get("value")) for i in out.get("identifier", [])}
        extra = [i for i in base.get("identifier", []) if (i.get("system"), i.get("value")) not in known]
        if extra:
            out["identifier"] = [*out.get("identifier", []), *extra]
    if final:
        out["status"] = "completed"
    return out


def results_step(ctx: Context, out: Output) -> None:
    """ORU^R01: per OBR a DiagnosticReport (conclusion from the report text) and a patch completing
    the order ServiceRequest when the report is final."""
    groups = patient_groups(ctx)
    if not groups:
        raise MappingError("ORU^R01 has no PID: a report needs its patient", code="required", expression="PID")
    for group in groups:
        _patient(ctx, out, group[0], group)
        _visit(ctx, out, group)
        for order in order_groups(group):
            if order.obr is None:
                continue
            request = orders.order(order.orc, order.obr, ctx, out.subject())
            report = orders.report(order.obr, order.orc, ctx, out.subject(), request["id"])
            text = _report_text(order, ctx)
            optional = {"encounter": out.encounter, "conclusion": "\n".join(text)}
            report.update({k: v for k, v in optional.items() if v})
            final = report["status"] in FINAL_REPORT_STATUSES
            apply = functools.partial(_complete_order, request, final)
            reason = "order completed by its final report" if final else "order named by a report"
            out.patches.append(Patch("ServiceRequest", request["id"], apply, reason))
            out.resources.append(report)


# --- merges -----------------------------------------------------------------------------------------


def _retire(old_id: str, identifiers: list[Json], survivor_id: str, current: Resource | None) -> Resource:
    """The merged-away patient: kept (never deleted), inactive, replaced-by the survivor."""
    out: Resource = (
        copy.deepcopy(current)
        if current
        else {
            "resourceType": "Patient",
            "id": old_id,
            "meta": profile("Patient"),
            "identifier": identifiers,
        }
    )
    out["active"] = False
    links = [link for link in out.get("link", []) if link.get("type") != "replaced-by"]
    out["link"] = [*links, {"other": ref("Patient", survivor_id), "type": "replaced-by"}]
    return out


def merge_step(ctx: Context, out: Output) -> None:
    """ADT^A40: each PID (survivor) with its MRG (merged away): the survivor ``replaces`` the old
    patient, and a patch retires the old one. A merge within one Patient resource changes nothing."""
    groups = patient_groups(ctx)
    if not groups:
        raise MappingError("ADT^A40 has no PID: nothing survives the merge", code="required", expression="PID")
    for group in groups:
        survivor = _patient(ctx, out, group[0], group)
        mrgs = ctx.all("MRG", group)
        if not mrgs:
            ctx.warn("ADT^A40 patient group without MRG: nothing to merge", "MRG")
        for mrg in mrgs:
            old_identifiers = patients.merged_identifiers(mrg, ctx)
            old_id = patients.patient_id(old_identifiers, ctx.systems.local(ctx.header.facility))
            if old_id is None or old_id == survivor["id"]:
                ctx.info("MRG names no other patient (no identifier, or the same Patient): no merge", "MRG-1")
                continue
            survivor.setdefault("link", []).append({"other": ref("Patient", old_id), "type": "replaces"})
            apply = functools.partial(_retire, old_id, old_identifiers, survivor["id"])
            out.patches.append(Patch("Patient", old_id, apply, f"merged into Patient/{survivor['id']} (ADT^A40)"))
