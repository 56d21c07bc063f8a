"""Reset-period arithmetic. Pure functions, no database.

Periods are anchored: every boundary is ``anchor + k * step`` computed from the
anchor itself, never chained from the previous boundary, so a month anchored on
Jan 31 runs Jan 31 -> Feb 28 (29) -> Mar 31 -> Apr 30 -> May 31.
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta

UNIT_DAYS = {"day": 1, "week": 7}
UNIT_MONTHS = {"month": 1, "year": 12}


def add_months(anchor: datetime, months: int) -> datetime:
    """``anchor`` plus ``months`` calendar months, clamped to the target month's last day."""
    month_index = anchor.month - 1 + months
    year = anchor.year + month_index // 12
    month = month_index % 12 + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def boundary(anchor: datetime, unit: str, count: int, k: int) -> datetime:
    """The ``k``-th boundary after ``anchor`` for periods of ``count`` ``unit``s."""
    if unit in UNIT_DAYS:
        return anchor + timedelta(days=UNIT_DAYS[unit] * count * k)
    if unit in UNIT_MONTHS:
        return add_months(anchor, UNIT_MONTHS[unit] * count * k)
    raise ValueError(f"Unknown period unit: {unit!r}")


def period_containing(
    anchor: datetime, unit: str, now: datetime, count: int = 1
) -> tuple[datetime, datetime]:
    """The ``[start, end)`` period of the anchored series that contains ``now``.

    Times before the anchor fall in the first period, which starts at the anchor.
    """
    count = max(int(count or 1), 1)
    if now < anchor:
        return anchor, boundary(anchor, unit, count, 1)
    # Estimate k from the elapsed time, then step to the exact period.
    if unit in UNIT_DAYS:
        step_seconds = UNIT_DAYS[unit] * count * 86400
        k = int((now - anchor).total_seconds() // step_seconds)
    else:
        months = (now.year - anchor.year) * 12 + (now.month - anchor.month)
        k = max(months // (UNIT_MONTHS[unit] * count), 0)
    while k > 0 and boundary(anchor, unit, count, k) > now:
        k -= 1
    while boundary(anchor, unit, count, k + 1) <= now:
        k += 1
    return boundary(anchor, unit, count, k), boundary(anchor, unit, count, k + 1)
