"""The structure of a message, read from the order of its segments: patient groups, order groups, and
which segment each NTE belongs to.

The ER7 reader gives a flat list of segments, with no grammar and no groups
(docs/decisions/0001-own-er7-reader-instead-of-hl7apy.md): the steps group them here. Nothing here
fails: a segment outside any group is simply not in one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .context import Context
from .reader import Seg


def patient_groups(ctx: Context) -> list[list[Seg]]:
    """Segments from each PID up to the next (ORM, ORU and A40 repeat the patient group)."""
    groups: list[list[Seg]] = []
    for seg in ctx.segments[1:]:
        if seg.name == "PID":
            groups.append([seg])
        elif groups:
            groups[-1].append(seg)
    return groups


@dataclass
class OrderGroup:
    """An ORC and/or OBR with the segments that follow it (NTE, DG1, OBX, ...)."""

    orc: Seg | None
    obr: Seg | None
    children: list[Seg] = field(default_factory=list)


def order_groups(group: list[Seg]) -> list[OrderGroup]:
    """ORC starts an order; an OBR joins the ORC before it (even after PRT/TQ1/CTD between them, as
    v2.8 allows), or starts an order of its own (ORU without ORC, a second OBR under one ORC)."""
    orders: list[OrderGroup] = []
    for seg in group:
        if seg.name == "ORC":
            orders.append(OrderGroup(seg, None))
        elif seg.name == "OBR":
            if orders and orders[-1].obr is None:
                orders[-1].obr = seg
            else:
                orders.append(OrderGroup(None, seg))
        elif orders and seg.name not in ("PID", "PD1", "PV1", "PV2"):
            orders[-1].children.append(seg)
    return orders


def with_owners(children: list[Seg]) -> list[tuple[Seg, Seg | None]]:
    """Each segment with the non-NTE segment before it (an NTE belongs to that one)."""
    out: list[tuple[Seg, Seg | None]] = []
    owner: Seg | None = None
    for seg in children:
        out.append((seg, owner))
        if seg.name != "NTE":
            owner = seg
    return out
