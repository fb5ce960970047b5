"""NTE -> Annotation: a note, wherever it follows (a referral, an order, an OBX, an AL1...).

Which resource a note belongs to is decided by the step or function that reads the segments around it;
an NTE without text gives nothing.
"""

from __future__ import annotations

from ..context import Context
from ..datatypes import Json
from ..reader import Seg


def note(nte: Seg, ctx: Context) -> Json | None:
    """NTE -> Annotation: text NTE-3 (repetitions are lines), time NTE-6 (v2.6+)."""
    ctx.take(nte)
    text = nte.text(3)
    if not text:
        return None
    annotation: Json = {"text": text}
    when = ctx.time(nte, 6)
    if when and when.moment:
        annotation["time"] = when.value
    return annotation
