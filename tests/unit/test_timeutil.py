from datetime import UTC, datetime

import pytest

from badge_worker.domain.timeutil import TimeUnit, add_months, add_units, iso, parse_instant


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("value", "expected"), [
    (1716803487, 1716803487.0),
    (1707523237.192, 1707523237.192),
    ("1716803487.5", 1716803487.5),
    ("2023-11-03T21:51:00.192Z", ts(2023, 11, 3, 21, 51) + 0.192),
    ("2023-11-03T21:51:00+02:00", ts(2023, 11, 3, 19, 51)),
    ("2023-11-03T21:51:00", ts(2023, 11, 3, 21, 51)),  # naive = UTC
    ("2024-02-29", ts(2024, 2, 29)),
])
def test_parse_instant_accepts_epoch_and_iso(value: object, expected: float) -> None:
    assert parse_instant(value) == pytest.approx(expected)


@pytest.mark.parametrize("value", [True, None, "yesterday", "", [1], float("nan"), float("inf"), 1e15])
def test_parse_instant_rejects_the_rest(value: object) -> None:
    with pytest.raises(ValueError):
        parse_instant(value)


def test_iso_has_milliseconds_and_z() -> None:
    assert iso(1726809439.822462) == "2024-09-20T05:17:19.822Z"
    assert iso(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso(1726809439.9996) == "2024-09-20T05:17:20.000Z"  # rounds into the next second
    assert iso(None) is None


@pytest.mark.parametrize(("start", "months", "expected"), [
    ((2024, 1, 31), 1, (2024, 2, 29)),  # leap year clamps to Feb 29
    ((2023, 1, 31), 1, (2023, 2, 28)),
    ((2024, 2, 29), 12, (2025, 2, 28)),  # leap day + a year
    ((2024, 3, 31), -1, (2024, 2, 29)),
    ((2024, 12, 15), 1, (2025, 1, 15)),
    ((2024, 1, 15), -13, (2022, 12, 15)),
])
def test_add_months_is_calendar_months(start: tuple[int, int, int], months: int,
                                       expected: tuple[int, int, int]) -> None:
    assert add_months(ts(*start), months) == ts(*expected)


def test_add_months_keeps_the_time_of_day() -> None:
    assert add_months(ts(2024, 1, 31, 13, 45, 10), 1) == ts(2024, 2, 29, 13, 45, 10)


def test_units_and_aliases() -> None:
    assert TimeUnit.parse("DAILY") is TimeUnit.DAYS
    assert TimeUnit.parse("weekly") is TimeUnit.WEEKS
    assert TimeUnit.parse("Monthly") is TimeUnit.MONTHS
    assert TimeUnit.parse("MONTH") is TimeUnit.MONTHS
    with pytest.raises(ValueError):
        TimeUnit.parse("YEARS")
    assert add_units(100.0, TimeUnit.DAYS, 2) == 100.0 + 2 * 86400
    assert add_units(100.0, TimeUnit.WEEKS, 1) == 100.0 + 7 * 86400
    assert add_units(ts(2024, 1, 31), TimeUnit.MONTHS, 1) == ts(2024, 2, 29)
