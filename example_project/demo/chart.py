"""A bar chart of daily usage totals, laid out on the server and drawn as inline SVG.

The demo runs offline and ships no JavaScript: :func:`daily_bars` computes the
geometry and ``demo/_chart.svg.html`` draws it (the template escapes every label).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

WIDTH = 960
HEIGHT = 260
#: The narrow chart for phones: fewer days in a viewBox close to the screen's width,
#: so its 12px labels are drawn at about 12px.
COMPACT_WIDTH = 360
COMPACT_DAYS = 7
PAD_LEFT = 44  # at least; widened to fit the longest y-axis label
#: Width of one label character at the axis font size (12px), generously.
LABEL_CHAR_WIDTH = 7.5
LABEL_GAP = 10
#: A day's slot narrower than this labels every other day ("Nov 25" is ~45 units).
MIN_LABEL_SLOT = 56
PAD_RIGHT = 12
PAD_TOP = 14
PAD_BOTTOM = 34


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: int
    title: str


@dataclass(frozen=True)
class GridLine:
    y: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    plot_left: int
    plot_right: int
    baseline: float
    bars: tuple[Bar, ...]
    grid: tuple[GridLine, ...]
    total: int


GRID_STEPS = 4


def _nice_step(value: int) -> int:
    """The smallest whole 1/2/2.5/5 x 10^n at or above ``value`` (at least 1)."""
    if value <= 1:
        return 1
    magnitude = 10 ** (len(str(value)) - 1)
    for factor in (1, 2, 2.5, 5, 10):
        step = factor * magnitude
        if step >= value and step == int(step):
            return int(step)
    return 10 * magnitude


def daily_bars(
    totals: Iterable[Mapping[str, Any]], *, days: int, today: dt.date, width: int = WIDTH
) -> Chart:
    """One bar per day for the ``days`` days up to ``today``; ``totals`` rows have
    ``date`` and ``amount`` (several rows per day are summed, e.g. one per feature).

    The plot starts right of the longest y-axis label, so ``80,000`` is never clipped."""
    per_day: dict[dt.date, int] = {}
    for row in totals:
        per_day[row["date"]] = per_day.get(row["date"], 0) + int(row["amount"] or 0)
    dates = [today - dt.timedelta(days=offset) for offset in range(days - 1, -1, -1)]
    values = [max(per_day.get(day, 0), 0) for day in dates]
    step = _nice_step(-(-max(values, default=0) // GRID_STEPS))
    top = step * GRID_STEPS
    pad_left = max(PAD_LEFT, round(len(f"{top:,}") * LABEL_CHAR_WIDTH) + LABEL_GAP)
    plot_width = width - pad_left - PAD_RIGHT
    plot_height = HEIGHT - PAD_TOP - PAD_BOTTOM
    baseline = PAD_TOP + plot_height
    slot = plot_width / max(days, 1)
    bar_width = slot * 0.66
    bars = []
    for index, (day, value) in enumerate(zip(dates, values, strict=True)):
        height = plot_height * value / top
        # Label every other day when crowded, always the last one.
        show_label = (days <= 16 and slot >= MIN_LABEL_SLOT) or index % 2 == (days - 1) % 2
        bars.append(
            Bar(
                x=round(pad_left + index * slot + (slot - bar_width) / 2, 2),
                y=round(baseline - height, 2),
                width=round(bar_width, 2),
                height=round(height, 2),
                label=day.strftime("%b %-d") if show_label else "",
                value=value,
                title=f"{day:%Y-%m-%d}: {value:,}",
            )
        )
    grid = tuple(
        GridLine(y=round(baseline - plot_height * n / GRID_STEPS, 2), label=f"{step * n:,}")
        for n in range(GRID_STEPS + 1)
    )
    return Chart(
        width=width,
        height=HEIGHT,
        plot_left=pad_left,
        plot_right=width - PAD_RIGHT,
        baseline=baseline,
        bars=tuple(bars),
        grid=grid,
        total=sum(values),
    )
