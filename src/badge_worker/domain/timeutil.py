"""UTC instants as float epoch seconds: parsing, calendar months, ISO output."""

from __future__ import annotations

import calendar
import functools
import math
from datetime import UTC, datetime
from enum import StrEnum

DAY = 86_400.0
WEEK = 7 * DAY


class TimeUnit(StrEnum):
    DAYS = "DAYS"
    WEEKS = "WEEKS"
    MONTHS = "MONTHS"

    @classmethod
    def parse(cls, value: str) -> TimeUnit:
        """DAYS/WEEKS/MONTHS, their singulars, and the DAILY/WEEKLY/MONTHLY aliases."""
        key = value.strip().upper()
        aliases = {"DAILY": "DAYS", "DAY": "DAYS", "WEEKLY": "WEEKS", "WEEK": "WEEKS",
                   "MONTHLY": "MONTHS", "MONTH": "MONTHS"}
        return cls(aliases.get(key, key))


MIN_INSTANT = -62_135_596_800.0  # 0001-01-01T00:00:00Z
MAX_INSTANT = 253_402_300_799.0  # 9999-12-31T23:59:59Z
_MAX_DATE_TEXT = 64  # longer than any ISO-8601 date or epoch number


def parse_instant(value: object) -> float:
    """Epoch seconds (int/float, or a numeric string) or an ISO-8601 string -> epoch seconds.

    Raises ValueError (and nothing else) for anything else: any type, any size, any text.
    A naive ISO string is taken as UTC.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a date")
    try:
        if isinstance(value, int | float):
            result = float(value)  # OverflowError for an int beyond float's range
        elif isinstance(value, str):
            result = _parse_text(value)
        else:
            raise ValueError(f"not a date: a {type(value).__name__}")
    except OverflowError:
        raise ValueError("date out of range") from None
    if not math.isfinite(result):
        raise ValueError("a date must be finite")
    # Within datetime's range, so that every accepted instant can be written back as ISO.
    if not MIN_INSTANT <= result <= MAX_INSTANT:
        raise ValueError("date out of range")
    return result


def _parse_text(value: str) -> float:
    text = value.strip()
    if len(text) > _MAX_DATE_TEXT:
        raise ValueError(f"not a date: a text of {len(text)} characters")
    try:
        return float(text)
    except ValueError:
        pass
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    except (ValueError, OverflowError, OSError, TypeError):
        raise ValueError(f"not an ISO-8601 date or epoch seconds: {text!r}") from None


def to_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> 'YYYY-MM-DDTHH:MM:SS.mmmZ' (millisecond precision, UTC)."""
    if ts is None:
        return None
    millis = math.floor(ts * 1000 + 0.5)
    secs, ms = divmod(millis, 1000)
    return f"{_second_text(secs)}.{ms:03d}Z"


@functools.lru_cache(maxsize=4096)
def _second_text(secs: int) -> str:
    # An earn's outcome and event format a handful of instants, most of them in the same few
    # seconds (now, its windows' edges): strftime was ~4% of the worker's CPU (py-spy).
    return to_datetime(float(secs)).strftime("%Y-%m-%dT%H:%M:%S")


def add_months(ts: float, months: int) -> float:
    """Calendar-month arithmetic in UTC; the day is clamped (Jan 31 + 1 month = Feb 28/29)."""
    dt = to_datetime(ts)
    index = dt.year * 12 + (dt.month - 1) + months
    year, month0 = divmod(index, 12)
    day = min(dt.day, calendar.monthrange(year, month0 + 1)[1])
    moved = dt.replace(year=year, month=month0 + 1, day=day)
    return moved.timestamp()


def add_units(ts: float, unit: TimeUnit, count: int) -> float:
    if unit is TimeUnit.MONTHS:
        return add_months(ts, count)
    return ts + count * (DAY if unit is TimeUnit.DAYS else WEEK)
