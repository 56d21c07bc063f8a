from datetime import UTC, datetime, timedelta

import pytest

from kernia_billing.periods import add_months, period_containing


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("months", "expected"),
    [
        (1, at(2025, 2, 28)),
        (2, at(2025, 3, 31)),
        (3, at(2025, 4, 30)),
        (13, at(2026, 2, 28)),
        (37, at(2028, 2, 29)),
        (-1, at(2024, 12, 31)),
    ],
)
def test_add_months_clamps_to_month_end_but_stays_anchored(months, expected):
    assert add_months(at(2025, 1, 31), months) == expected


def test_month_series_anchored_on_31st():
    anchor = at(2024, 1, 31, 12)
    assert period_containing(anchor, "month", at(2024, 2, 15)) == (
        at(2024, 1, 31, 12),
        at(2024, 2, 29, 12),
    )
    # Feb 29 12:00 is the boundary itself: it starts the next period.
    assert period_containing(anchor, "month", at(2024, 2, 29, 12)) == (
        at(2024, 2, 29, 12),
        at(2024, 3, 31, 12),
    )
    assert period_containing(anchor, "month", at(2024, 4, 1)) == (
        at(2024, 3, 31, 12),
        at(2024, 4, 30, 12),
    )


@pytest.mark.parametrize(
    ("unit", "now", "expected"),
    [
        ("day", at(2025, 3, 10, 8), (at(2025, 3, 9, 9), at(2025, 3, 10, 9))),
        ("week", at(2025, 3, 10, 8), (at(2025, 3, 8, 9), at(2025, 3, 15, 9))),
        ("year", at(2028, 3, 1), (at(2028, 2, 29, 9), at(2029, 2, 28, 9))),
    ],
)
def test_other_units(unit, now, expected):
    anchor = at(2024, 2, 29, 9) if unit == "year" else at(2025, 3, 1, 9)
    assert period_containing(anchor, unit, now) == expected


def test_before_anchor_is_first_period_and_interval_count_multiplies():
    anchor = at(2025, 1, 15)
    assert period_containing(anchor, "month", at(2025, 1, 1)) == (anchor, at(2025, 2, 15))
    assert period_containing(anchor, "month", at(2025, 5, 1), count=3) == (
        at(2025, 4, 15),
        at(2025, 7, 15),
    )


@pytest.mark.parametrize(
    "anchor",
    [at(2026, 11, 1, 9), at(2027, 2, 1, 9), at(2028, 1, 31, 9), at(2026, 12, 31, 23, 59)],
)
def test_a_monthly_period_lasts_a_calendar_month_not_31_days(anchor):
    # Regression: the reset-boundary concurrency test assumed 31 days; the series is
    # anchored on calendar months, so a 30- or 28-day month ends earlier than that.
    start, end = period_containing(anchor, "month", anchor + timedelta(days=1))
    assert (start, end) == (anchor, add_months(anchor, 1))
    assert period_containing(anchor, "month", end) == (end, add_months(anchor, 2))
