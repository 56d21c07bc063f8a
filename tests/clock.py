"""The dates the period-moving tests run on.

Month ends, leap days, the year end and a daylight-saving switch are where period
arithmetic goes wrong, so every test marked ``@pytest.mark.clock_matrix`` runs once
per entry here, with the clock travelling (it keeps ticking, so threads see time move)
from that moment. ``today`` runs on the real clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class ClockDate:
    moment: datetime | None  # None: the real today
    time_zone: str | None = None  # a non-UTC TIME_ZONE for this run


CLOCK_DATES: dict[str, ClockDate] = {
    "today": ClockDate(None),
    "jan31": ClockDate(datetime(2028, 1, 31, 12, 0, tzinfo=UTC)),
    "feb28-leap": ClockDate(datetime(2028, 2, 28, 12, 0, tzinfo=UTC)),
    "feb29-leap": ClockDate(datetime(2028, 2, 29, 12, 0, tzinfo=UTC)),
    "mar31": ClockDate(datetime(2027, 3, 31, 12, 0, tzinfo=UTC)),
    "apr30": ClockDate(datetime(2027, 4, 30, 12, 0, tzinfo=UTC)),
    "dec31-23:59:59": ClockDate(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)),
    # 2027-03-14 02:00 in New York springs forward to 03:00 (07:00 UTC).
    "dst-new-york": ClockDate(
        datetime(2027, 3, 14, 6, 59, 58, tzinfo=UTC), time_zone="America/New_York"
    ),
}


#: For tests that drive whole webhook sequences through the fake Stripe (about a second
#: a case): the dates where a subscription's periods break - a month end, the leap day,
#: the year end, the DST switch - and today. Period arithmetic itself runs on every
#: date (tests/services/test_entitlements.py, tests/testing/test_fake_stripe_*.py).
PERIOD_BREAKS = ("today", "jan31", "feb29-leap", "dec31-23:59:59", "dst-new-york")
