"""Reading a referral's neurological status: "present", "absent" or "unknown", fail-safe.

NICE NG234: suspected MSCC with any neurological sign needs whole-spine MRI within 24 hours; without
signs, within a week. A reading is therefore only "absent" when the referrer explicitly says so and
nothing in the text could be a sign; every unclear text is "unknown", which takes the 24 hour window
too. The rules are data (``data/neurological-rules.json``: ``free_text``, and ``items``, how each
neurological item is read); the functions here only apply them, whichever route the referral came by:

- ``read_text``: free text as clinicians write it ("No new weakness but numbness and tingling in both
  legs, unsteady gait"): clauses, negation scope, list continuations, uncertainty markers;
- ``read_item``: a structured item read by what it measures (a sensory level "T10" is a sign; motor
  power "Normal" or "5/5" is not), falling back to ``read_text``;
- ``combine``: several readings of one referral; any sign wins, then any unclear reading;
- ``item_reading`` / ``observation_reading``: what one supporting-information value (an HL7v2 OBX, read
  by ``services/mapper/hl7/supporting.py``) or one contained FHIR Observation adds;
- ``referral_reading``: a stored referral ServiceRequest's status, from its contained Observations.

Nothing here raises on odd input: an empty, unreadable or unexpected value reads "unknown".
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from . import data_files
from .items import Item, fhir_value_text, item_of_concept

Neurological = Literal["present", "absent", "unknown"]

_TABLE = "neurological-rules"
_SPACES = re.compile(r"\s+")
_NOT = re.compile(r"\bnot\b|\bab", re.IGNORECASE)


def _union(patterns: Iterable[str], flags: int = re.IGNORECASE) -> re.Pattern[str]:
    """One pattern for a list of them (one pass over the text instead of one per rule); a list that is
    empty matches nothing."""
    parts = [f"(?:{p})" for p in patterns]
    return re.compile("|".join(parts) if parts else r"(?!)", flags)


@dataclass(frozen=True)
class TextRules:
    """The free-text rules (``free_text`` in the data file), compiled."""

    whole_present: re.Pattern[str]
    whole_absent: re.Pattern[str]
    whole_unknown: re.Pattern[str]
    pseudo_negations: re.Pattern[str]
    hard_breaks: re.Pattern[str]
    soft_breaks: re.Pattern[str]
    and_breaks: re.Pattern[str]
    list_positive: re.Pattern[str]
    negations: re.Pattern[str]
    adjacent_negation: re.Pattern[str]
    post_negation: re.Pattern[str]
    negatives: re.Pattern[str]
    uncertain: re.Pattern[str]
    signs: re.Pattern[str]


@dataclass(frozen=True)
class ItemRules:
    """How one structured item (motor power, sensory level, sphincter function...) is read."""

    present: re.Pattern[str]
    absent: re.Pattern[str]


@functools.cache
def text_rules() -> TextRules:
    """The free-text rules; they are written in lower case and applied to lower-cased text (a case-
    insensitive regular expression is markedly slower in Python)."""
    data: dict[str, Any] = data_files.load(_TABLE)["free_text"]
    whole = data["whole_value"]

    return TextRules(
        whole_present=_union(whole["present"], 0),
        whole_absent=_union(whole["absent"], 0),
        whole_unknown=_union(whole["unknown"], 0),
        pseudo_negations=_union(data["pseudo_negations"], 0),
        hard_breaks=re.compile(data["hard_breaks"]),
        soft_breaks=re.compile(data["soft_breaks"]),
        and_breaks=re.compile(data["and_breaks"]),
        list_positive=_union(data["list_positive"], 0),
        negations=_union(data["negations"], 0),
        adjacent_negation=re.compile(data["adjacent_negation"]),
        post_negation=re.compile(data["post_negation"]),
        negatives=_union(data["negatives"], 0),
        uncertain=_union(data["uncertain"], 0),
        signs=_union(data["signs"], 0),
    )


@functools.cache
def item_rules() -> dict[str, ItemRules]:
    """Item key -> its reading rules, for the items that carry the neurological status."""
    rows: dict[str, Any] = data_files.load(_TABLE)["items"]
    return {
        key: ItemRules(_union(block.get("present", [])), _union(block.get("absent", [])))
        for key, block in rows.items()
        if isinstance(block, dict)
    }


def neurological_keys() -> frozenset[str]:
    """The supporting-information keys that carry the neurological status."""
    return frozenset(item_rules())


@dataclass
class _Findings:
    present: bool = False
    unclear: bool = False
    negative: bool = False

    def reading(self) -> Neurological:
        if self.present:
            return "present"
        if self.unclear:
            return "unknown"
        return "absent" if self.negative else "unknown"


def _part(segment: str, position: int, rules: TextRules) -> tuple[int, int]:
    """The span of the "and"-part of ``segment`` that holds ``position``."""
    start, end = 0, len(segment)
    for join in rules.and_breaks.finditer(segment):
        if join.end() <= position:
            start = join.end()
        elif join.start() >= position:
            end = join.start()
            break
    return start, end


def _negated(segment: str, sign: re.Match[str], rules: TextRules) -> bool:
    """A sign is negated by a negation before it in its part of the segment ("no weakness", "denies
    bladder problems"); by one in an earlier part joined by "and" unless its own part carries a positive
    cue ("no bladder and bowel dysfunction" is denied, "no weakness and numb legs" is not); by
    "normal"/"intact" right before it ("normal bladder and bowel function": only right before, so
    "sensation intact and weakness" keeps its weakness); or by all that follows it being a negative
    ("sphincters: normal", "weakness - nil")."""
    before = segment[: sign.start()]
    start, end = _part(segment, sign.start(), rules)
    if rules.negations.search(segment, start, sign.start()) or rules.adjacent_negation.search(before):
        return True
    if start and rules.negations.search(segment, 0, start) and not rules.list_positive.search(segment, start, end):
        return True
    after = segment[sign.end() :]
    # "not normal" after a sign is not a negative: post_negation accepts no "not".
    return not _NOT.search(after) and bool(rules.post_negation.match(after))


def _read_clause(clause: str, rules: TextRules, findings: _Findings) -> None:
    # Within a clause, segments after a comma that follow a negated segment may continue its list
    # ("no weakness, numbness or tingling"): their signs are unclear, not present, unless they carry a
    # positive cue ("..., numbness for 2 days") or their own negation.
    continuing = False
    for segment in rules.soft_breaks.split(clause):
        segment = segment.strip()
        if not segment:
            continue
        positive_cue = bool(rules.list_positive.search(segment))
        negated_here = False  # a segment with a negated sign starts (or continues) a list
        for sign in rules.signs.finditer(segment):
            if _negated(segment, sign, rules):
                findings.negative = negated_here = True
            elif continuing and not positive_cue:
                findings.unclear = True
            else:
                findings.present = True
        if rules.negatives.search(segment):
            findings.negative = True
        if rules.uncertain.search(segment):
            findings.unclear = True
        continuing = (continuing and not positive_cue) or negated_here or bool(rules.negations.search(segment))


def read_text(text: str) -> Neurological:
    """Read a free-text neurological status (any case, abbreviations, typos); "unknown" when unclear."""
    if not isinstance(text, str):
        return "unknown"
    value = _SPACES.sub(" ", text).strip().lower()
    if not value:
        return "unknown"
    rules = text_rules()
    bare = value.rstrip(".!")
    whole: tuple[tuple[Neurological, re.Pattern[str]], ...] = (
        ("present", rules.whole_present),
        ("unknown", rules.whole_unknown),
        ("absent", rules.whole_absent),
    )
    for reading, pattern in whole:
        if pattern.fullmatch(bare):
            return reading
    return _read_clauses(value, rules)


def names_a_sign(text: str) -> bool:
    """Whether free text that is not a neurological status (a mobility or history note) names a sign
    it does not deny ("unsteady on feet"); bare answers such as "Yes" mean nothing here."""
    if not isinstance(text, str):
        return False
    value = _SPACES.sub(" ", text).strip().lower()
    return bool(value) and _read_clauses(value, text_rules()) == "present"


def _read_clauses(value: str, rules: TextRules) -> Neurological:
    # "no change in weakness" does not deny the weakness: it becomes its own clause.
    value = rules.pseudo_negations.sub(" ; ", value)
    findings = _Findings()
    for clause in rules.hard_breaks.split(value):
        _read_clause(clause, rules, findings)
    return findings.reading()


def read_item(key: str, text: str) -> Neurological:
    """Read the value of structured item ``key`` by what it measures: its "present" patterns (a sensory
    level "T10", motor power "4/5") are a sign, its "absent" patterns (the whole value: "Normal",
    "5/5") an explicit normal finding; anything else is read as free text. An item without rules is
    read as free text."""
    if not isinstance(text, str):
        return "unknown"
    value = _SPACES.sub(" ", text).strip()
    rules = item_rules().get(key)
    if rules is not None and value:
        if rules.present.search(value):
            return "present"
        if rules.absent.search(value):  # anchored: the whole value
            return "absent"
    return read_text(value)


def combine(readings: Iterable[Neurological]) -> Neurological:
    """One referral's status from all its readings: any sign wins (it is what shortens the deadline),
    then any unclear reading (one item not assessed is not an all-clear); "absent" only when every
    reading is; "unknown" when there is none."""
    seen = set(readings)
    if "present" in seen:
        return "present"
    if "unknown" in seen or not seen:
        return "unknown"
    return "absent"


READING_TEXT: dict[Neurological, str] = {
    "present": "Neurological signs present",
    "absent": "No neurological signs (stated explicitly by the referrer)",
    "unknown": "Neurological status unknown or unclear: the safe 24 hour window",
}


def reading_text(reading: Neurological) -> str:
    """Why the window is what it is, for the pathway CarePlan's description."""
    return READING_TEXT.get(reading, READING_TEXT["unknown"])


def item_reading(item: Item | None, text: str) -> Neurological | None:
    """What one supporting-information value adds to the neurological status: a neurological item's
    reading ("unknown" when its value is empty: not stated is not normal); for anything else only a
    sign ("Mobility: unsteady on feet"), never an all-clear."""
    if item is not None and item.key in neurological_keys():
        return read_item(item.key, text)
    return "present" if text and names_a_sign(text) else None


def observation_reading(observation: Any) -> Neurological | None:
    """What one contained FHIR resource adds to a referral's neurological status (None: nothing). Only
    Observations count, read as ``item_reading`` reads an OBX: a neurological one by what it measures
    ("unknown" when its value is missing or unreadable), any other only when it names a sign. Never raises,
    whatever the shape (a contained PractitionerRole's ``code`` is a list)."""
    if not isinstance(observation, dict) or observation.get("resourceType") != "Observation":
        return None
    if observation.get("status") in ("entered-in-error", "cancelled"):
        return None
    item = item_of_concept(observation.get("code"))
    text = fhir_value_text(observation)
    return item_reading(item, text)


def referral_reading(request: dict[str, Any]) -> Neurological:
    """Neurological status of a referral ServiceRequest (FHIR, or mapped from HL7v2) from its contained
    Observations: the neurological items (coded ``neurological-status``, ``motor-power``,
    ``sensory-level``, ``sphincter-function``, or named so) by what they measure, any other Observation
    only when it names a sign. Any sign wins, then anything unclear; "unknown" (the safe 24-hour window)
    when nothing says. Other contained resources (a PractitionerRole requester) are skipped, and no
    shape of contained content can make this raise."""
    contained = request.get("contained")
    found = [observation_reading(item) for item in (contained if isinstance(contained, list) else [])]
    return combine(r for r in found if r is not None)
