"""Geometry of the server-rendered bar chart on /stats: data in, SVG coordinates out.

Honest axes: the value axis always starts at zero, its ticks are round numbers labelled with their value,
and every bar's height is proportional to its value on that scale. The template only draws what this
module computes, in the coordinates of the SVG's viewBox (it scales to the width of the screen).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

# A phone shows the 360-unit viewBox at about 330 px, so 14-unit text stays near 13 px there.
WIDTH = 360
HEIGHT = 220
FONT_SIZE = 14
CHARACTER_WIDTH = 0.62 * FONT_SIZE  # of a digit: sizes the left margin for the longest tick label
TOP = 10
RIGHT = 24  # half a day label: today's label is centred under the last bar
BOTTOM = 2 * FONT_SIZE  # room for the day labels under the baseline
BAR_FILL = 0.7  # share of each day's slot the bar covers; the rest is the gap
TICK_TARGET = 4
DAY_LABEL_EVERY = 7


@dataclass(frozen=True)
class Bar:
    day: dt.date
    value: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Tick:
    value: int
    y: float

    @property
    def label(self) -> str:
        return f"{self.value:,}"


@dataclass(frozen=True)
class DayLabel:
    x: float
    text: str


@dataclass(frozen=True)
class BarChart:
    width: int
    height: int
    font_size: int
    left: float
    right: float
    top: float
    baseline: float
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    day_labels: tuple[DayLabel, ...]


def nice_ticks(maximum: int, target: int = TICK_TARGET) -> tuple[int, ...]:
    """Zero and whole-number steps of 1, 2 or 5 x 10^k up to the first tick at or above ``maximum``."""
    if maximum <= 0:
        return (0, 1)
    raw_step = maximum / target
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw_step)
    step = max(1, round(step))
    top = math.ceil(maximum / step) * step
    return tuple(range(0, top + 1, step))


def bar_chart(days: Sequence[tuple[dt.date, int]], width: int = WIDTH, height: int = HEIGHT) -> BarChart:
    """One bar per (day, value), oldest first."""
    ticks = nice_ticks(max((value for _, value in days), default=0))
    left = 8 + CHARACTER_WIDTH * max(len(f"{tick:,}") for tick in ticks)
    right = width - RIGHT
    baseline = float(height - BOTTOM)
    scale = (baseline - TOP) / ticks[-1]
    slot = (right - left) / max(len(days), 1)
    bars = []
    for index, (day, value) in enumerate(days):
        bar_height = value * scale
        bars.append(
            Bar(
                day=day,
                value=value,
                x=round(left + index * slot + slot * (1 - BAR_FILL) / 2, 2),
                y=round(baseline - bar_height, 2),
                width=round(slot * BAR_FILL, 2),
                height=round(bar_height, 2),
            )
        )
    # Every seventh day from the newest backwards, so today is always labelled.
    labelled = range(len(days) - 1, -1, -DAY_LABEL_EVERY)
    day_labels = tuple(
        DayLabel(x=round(left + (index + 0.5) * slot, 2), text=f"{days[index][0]:%b} {days[index][0].day}")
        for index in sorted(labelled)
    )
    return BarChart(
        width=width,
        height=height,
        font_size=FONT_SIZE,
        left=left,
        right=right,
        top=TOP,
        baseline=baseline,
        bars=tuple(bars),
        ticks=tuple(Tick(value=tick, y=round(baseline - tick * scale, 2)) for tick in ticks),
        day_labels=day_labels,
    )
