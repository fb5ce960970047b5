"""TS / DTM / DT -> FHIR dateTime or date, precision kept; a time without an offset is the sender's.

``InvalidValue`` when a value is not a date or cannot be true; the caller (``Context.time``) turns it
into an issue naming the field, without repeating the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo

_TS = re.compile(
    r"^(?P<y>\d{4})(?:(?P<mo>\d{2})(?:(?P<d>\d{2})(?:(?P<h>\d{2})(?:(?P<mi>\d{2})"
    r"(?:(?P<s>\d{2})(?P<f>\.\d{1,6})?)?)?)?)?)?(?P<tz>[+-]\d{4}|Z)?$"
)


class InvalidValue(ValueError):
    """A value that is not a date, or cannot be true (a 30 February, a +25:00 offset). The message
    does not repeat the value: it may be a date of birth, and issues are stored with the message."""


@dataclass(frozen=True)
class FhirTime:
    """A parsed HL7 time: ``value`` in FHIR form (precision kept), ``moment`` when it has a time of day."""

    value: str
    moment: datetime | None

    @property
    def date(self) -> str:
        return self.value[:10]


def _offset(text: str | None, naive: datetime, zone: tzinfo) -> timezone | tzinfo:
    if text is None:
        # A time of day without an offset is local time of the sender's zone (DST-aware).
        offset = naive.replace(tzinfo=zone).utcoffset() or timedelta(0)
        return timezone(offset)
    if text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[3:5])
    if minutes > 59 or hours * 60 + minutes > 14 * 60:
        raise InvalidValue(f"time zone offset {text} is out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def parse_ts(value: str, zone: tzinfo) -> FhirTime | None:
    """TS/DTM/DT text (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]) -> FhirTime; None when empty.

    ``InvalidValue`` when it is not a date at all or names a date or time that does not exist.
    """
    text = value.strip()
    if not text:
        return None
    match = _TS.match(text)
    if not match:
        raise InvalidValue("not an HL7 date/time (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])")
    g = match.groupdict()
    if g["tz"] and g["tz"] != "Z":
        # An impossible offset makes the whole value suspect, even on a date that will not show it.
        _offset(g["tz"], datetime(2000, 1, 1), zone)
    try:
        # Precision is kept: "2022" stays a year, "202201" a month, a date has no time zone.
        if g["mo"] is None:
            datetime(int(g["y"]), 1, 1)
            return FhirTime(g["y"], None)
        if g["d"] is None:
            datetime(int(g["y"]), int(g["mo"]), 1)
            return FhirTime(f"{g['y']}-{g['mo']}", None)
        day = datetime(int(g["y"]), int(g["mo"]), int(g["d"]))
        if g["h"] is None:
            return FhirTime(f"{g['y']}-{g['mo']}-{g['d']}", None)
        # FHIR dateTime needs seconds once a time is given: minute precision is padded with ":00".
        naive = day.replace(hour=int(g["h"]), minute=int(g["mi"] or 0), second=int(g["s"] or 0))
    except ValueError as exc:
        raise InvalidValue(f"not a real date/time ({exc})") from exc
    moment = naive.replace(tzinfo=_offset(g["tz"], naive, zone))
    clock = f"{naive.hour:02d}:{naive.minute:02d}:{naive.second:02d}"
    stamp = f"{g['y']}-{g['mo']}-{g['d']}T{clock}{g['f'] or ''}{_iso_offset(moment)}"
    return FhirTime(stamp, moment)


def _iso_offset(moment: datetime) -> str:
    offset = moment.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
