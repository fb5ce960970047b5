"""Reading values out of parsed segments: composites (components and subcomponents) and tracked segments.

``Seg`` wraps one ``shared.er7.Segment`` and records which fields the mapping read, so that whatever
no function read is reported as unmapped instead of being dropped silently. Values are unescaped per
component or subcomponent (an escaped "\\T\\" inside a component is not split as a subcomponent).
Nothing here raises on short or empty segments: a missing value reads as "".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.er7 import Segment, Separators, unescape

# HL7 '""' (two double quotes) means "this value is now null": for complete content, empty.
NULL = '""'


@dataclass(frozen=True)
class Composite:
    """One field repetition split into components (or one component split into subcomponents)."""

    parts: tuple[str, ...]
    seps: Separators
    nested: bool = False
    # Unescaped components, computed once: mapping reads the same components many times.
    _values: dict[int, str] = field(default_factory=dict, compare=False, repr=False)

    def raw(self, n: int) -> str:
        return self.parts[n - 1] if 0 < n <= len(self.parts) else ""

    def c(self, n: int) -> str:
        """Component ``n`` (1-based), unescaped and stripped; its first subcomponent when it has several."""
        cached = self._values.get(n)
        if cached is not None:
            return cached
        raw = self.raw(n)
        if not self.nested:
            raw = raw.split(self.seps.subcomponent, 1)[0]
        value = unescape(raw, self.seps).strip()
        value = "" if value == NULL else value
        self._values[n] = value
        return value

    def part(self, n: int) -> Composite:
        """Component ``n`` as a composite of its subcomponents (e.g. the HD inside CX.4)."""
        return Composite(tuple(self.raw(n).split(self.seps.subcomponent)), self.seps, nested=True)

    def span(self, first: int, last: int) -> Composite:
        """Components ``first``..``last`` as a composite of their own (e.g. the HD inside EI.2-4)."""
        return Composite(self.parts[first - 1 : last], self.seps, self.nested)

    def text(self, n: int) -> str:
        """Component ``n`` unescaped whole, literal '&' kept (free text that was not escaped)."""
        value = unescape(self.raw(n), self.seps)
        return "" if value.strip() == NULL else value

    @property
    def empty(self) -> bool:
        if not any(p.strip() for p in self.parts):  # nothing but blanks: no need to unescape
            return True
        return not any(self.c(n) for n in range(1, len(self.parts) + 1))


@dataclass
class Seg:
    """A segment of the message being mapped, with its occurrence number and the fields read from it."""

    segment: Segment
    occurrence: int
    index: int
    read: set[int] = field(default_factory=set)
    _composites: dict[int, list[Composite]] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.segment.name

    @property
    def label(self) -> str:
        return f"{self.name}[{self.occurrence}]"

    def has(self, number: int) -> bool:
        """Whether field ``number`` holds anything (does not count as reading it)."""
        raw = self.segment.field(number)
        return bool(raw.strip()) and raw.strip() != NULL

    def composites(self, number: int) -> list[Composite]:
        """Every non-empty repetition of field ``number`` (split once per segment and field)."""
        self.read.add(number)
        cached = self._composites.get(number)
        if cached is None:
            seps = self.segment.seps
            reps = [Composite(tuple(r.split(seps.component)), seps) for r in self.segment.repetitions(number)]
            cached = self._composites[number] = [r for r in reps if not r.empty]
        return list(cached)

    def composite(self, number: int) -> Composite:
        """The first non-empty repetition of field ``number`` (an empty composite when none)."""
        reps = self.composites(number)
        return reps[0] if reps else Composite((), self.segment.seps)

    def value(self, number: int, component: int = 1) -> str:
        return self.composite(number).c(component)

    def text(self, number: int) -> str:
        """Free text (ST/TX/FT): every repetition unescaped whole, one per line."""
        self.read.add(number)
        reps = [unescape(r, self.segment.seps) for r in self.segment.repetitions(number)]
        return "\n".join(r for r in reps if r.strip() and r.strip() != NULL)

    def populated(self) -> list[int]:
        """Field numbers that hold a value."""
        return [n for n in range(1, len(self.segment.fields)) if self.has(n)]
