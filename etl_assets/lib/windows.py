"""Time arithmetic for partitions: retention periods, lookback durations and half-open windows.

Everything here works on timezone-aware UTC datetimes. Windows are half-open `[start, end)` so a row
stamped exactly at a boundary belongs to exactly one partition.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

Unit = Literal["minutes", "hours", "days", "weeks", "months", "years"]

_AMOUNT_UNIT = re.compile(r"\s*(?P<amount>[+-]?[0-9]+)\s*(?P<unit>[A-Za-z]+)\s*")
_UNIT_ALIASES: dict[str, Unit] = {
    "minute": "minutes", "minutes": "minutes", "min": "minutes", "mins": "minutes",
    "hour": "hours", "hours": "hours", "h": "hours",
    "day": "days", "days": "days", "d": "days",
    "week": "weeks", "weeks": "weeks", "w": "weeks",
    "month": "months", "months": "months",
    "year": "years", "years": "years", "y": "years",
}  # fmt: skip


@dataclass(frozen=True)
class Period:
    """A calendar-aware amount of time such as `6 months` or `15 minutes`."""

    amount: int
    unit: Unit

    def __str__(self) -> str:
        unit = self.unit[:-1] if self.amount == 1 else self.unit
        return f"{self.amount} {unit}"

    def subtract_from(self, moment: datetime) -> datetime:
        """`moment - self`, month/year arithmetic clamped to the end of shorter months."""
        if self.unit in ("months", "years"):
            months = self.amount * (12 if self.unit == "years" else 1)
            return add_months(moment, -months)
        return moment - self.as_timedelta()

    def as_timedelta(self) -> timedelta:
        """Exact length; months and years are refused because their length varies."""
        if self.unit in ("months", "years"):
            raise ValueError(f"'{self}' has no fixed length; use days, hours or minutes")
        return timedelta(**{self.unit: self.amount})


def parse_period(text: str, *, allowed: tuple[Unit, ...], what: str, allow_zero: bool = False) -> Period:
    """Parse `"6 months"`-style text.

    Raises:
        ValueError: with a message that says which forms are valid.
    """
    units = "|".join(allowed)
    example = "6 months" if "months" in allowed else f"15 {allowed[0]}"
    hint = f"write it as '<whole number> <{units}>', e.g. '{example}'"
    match = _AMOUNT_UNIT.fullmatch(str(text))
    if not match:
        raise ValueError(f"'{text}' is not a {what}; {hint}")
    unit = _UNIT_ALIASES.get(match.group("unit").lower())
    if unit is None:
        raise ValueError(f"'{text}' has an unknown unit '{match.group('unit')}'; {hint}")
    if unit not in allowed:
        raise ValueError(f"'{text}': a {what} cannot be given in {unit}; {hint}")
    amount = int(match.group("amount"))
    if amount < 0 or (amount == 0 and not allow_zero):
        sign = "zero or more" if allow_zero else "more than zero"
        raise ValueError(f"'{text}' must be {sign}; {hint}")
    return Period(amount, unit)


def add_months(moment: datetime, months: int) -> datetime:
    """Shift by whole months, clamping the day (31 Jan + 1 month = 28/29 Feb)."""
    index = moment.year * 12 + (moment.month - 1) + months
    year, month = divmod(index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def month_start(moment: datetime | date) -> datetime:
    """First instant (UTC) of the month that contains `moment` (an aware datetime is taken in UTC)."""
    if isinstance(moment, datetime):
        moment = utc(moment)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def utc(moment: datetime) -> datetime:
    """Make `moment` timezone-aware UTC (naive values are taken to be UTC already)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True)
class Window:
    """A half-open interval `[start, end)` of the time column, both ends UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        # Normalized to UTC so `naive()` and `label()` mean UTC whatever offset the caller used.
        object.__setattr__(self, "start", utc(self.start))
        object.__setattr__(self, "end", utc(self.end))
        if self.end <= self.start:
            raise ValueError(f"empty window: end {self.end} is not after start {self.start}")

    def contains(self, moment: datetime) -> bool:
        """True when `moment` (naive means UTC) falls in `[start, end)`."""
        return self.start <= utc(moment) < self.end

    def naive(self) -> tuple[datetime, datetime]:
        """Bounds without tzinfo, for DATETIME parameters (the session runs in UTC)."""
        return self.start.replace(tzinfo=None), self.end.replace(tzinfo=None)

    def widen_back(self, lookback: timedelta) -> Window:
        """The same window starting `lookback` earlier (the replica's late-row lag)."""
        return Window(self.start - lookback, self.end)

    def label(self) -> str:
        """Human form used in logs and metadata: `[2024-01-01T00:00, 2024-02-01T00:00)`."""
        return f"[{self.start:%Y-%m-%dT%H:%M}, {self.end:%Y-%m-%dT%H:%M})"


def archive_cutoff(retention: Period, now: datetime) -> datetime:
    """Rows older than this instant may be archived."""
    return retention.subtract_from(utc(now))


def last_eligible_month_end(retention: Period, now: datetime) -> datetime:
    """End of the newest whole month a retention allows (a month is eligible when end <= cutoff)."""
    return month_start(archive_cutoff(retention, now))


def months_held_back(retention: Period) -> int:
    """How many whole months before the current one the newest archivable month ends, at worst.

    A list of monthly partitions can hold back only a fixed number of months (Dagster's end offset),
    while a retention in days or weeks reaches back across one or two month starts depending on the
    day and the months' lengths (30 days on 1 March reach into January). This is the largest count
    over every month of a four-year cycle (every month length, a leap February included), so every
    month a partition list holds is eligible on every day; a month may be listed up to a month after
    it became eligible, never before. Months and years reach back a fixed count.

    Example: `months_held_back(Period(30, "days"))` is 2; `months_held_back(Period(1, "years"))` is 12.
    """
    if retention.unit in ("months", "years"):
        return retention.amount * (12 if retention.unit == "years" else 1)
    worst = 0
    for index in range(48):  # the newest month end is furthest back on a month's first instant
        first = datetime(2024 + index // 12, index % 12 + 1, 1, tzinfo=UTC)
        worst = max(worst, months_between(last_eligible_month_end(retention, first), first))
    return worst


def check_archive_eligible(window: Window, retention: Period, now: datetime) -> None:
    """Refuse a window that still holds rows inside the retention period.

    Raises:
        ValueError: naming the window, the cutoff and the newest partition that would be allowed.
    """
    cutoff = archive_cutoff(retention, now)
    if window.end > cutoff:
        newest = add_months(last_eligible_month_end(retention, now), -1)
        raise ValueError(
            f"partition {window.start:%Y-%m-%d} is not eligible yet: its window {window.label()} ends after "
            f"the retention cutoff {cutoff:%Y-%m-%dT%H:%M} UTC (retention {retention}); the newest "
            f"partition that may be archived today is {newest:%Y-%m-%d}"
        )


def months_between(start: datetime, end: datetime) -> int:
    """Whole months from `start`'s month to `end`'s month (end exclusive)."""
    return (end.year - start.year) * 12 + (end.month - start.month)


def month_window(partition_key: str) -> Window:
    """The window of a monthly partition key such as `2024-01-01`: that month, half-open, UTC."""
    start = utc(datetime.fromisoformat(partition_key))
    return Window(start, add_months(start, 1))


def key_slices(lowest: int, highest: int, width: int) -> list[tuple[int, int]]:
    """Consecutive inclusive integer ranges of at most `width` values covering `lowest..highest`.

    Example: `key_slices(1, 25, 10)` is `[(1, 10), (11, 20), (21, 25)]`.
    """
    if width < 1:
        raise ValueError("width must be at least 1")
    return [(low, min(low + width - 1, highest)) for low in range(lowest, highest + 1, width)]


def pack_slices(
    window: Window, hour_counts: list[tuple[datetime, int]], max_rows: int
) -> list[tuple[Window, int]]:
    """Split `window` into consecutive half-open slices of at most `max_rows` rows each.

    The fast reader holds one slice in memory at a time, so this is what bounds its memory. Slices
    are whole hours (the finest grain the row counts give); an hour holding more than `max_rows`
    rows becomes a slice of its own. The slices cover `window` exactly, without gaps or overlap, so
    together they read the same rows as one query over the whole window.

    Args:
        window: the window to cover.
        hour_counts: `(hour start, rows)` for the hours of `window` that have rows, any order; hours
            are naive or UTC datetimes truncated to the hour.
        max_rows: the most rows a slice should hold.

    Returns:
        `(slice, rows)` pairs in time order; empty when no hour has rows.
    """
    if max_rows < 1:
        raise ValueError("max_rows must be at least 1")
    hours = sorted((utc(hour), rows) for hour, rows in hour_counts if rows > 0)
    slices: list[tuple[Window, int]] = []
    start: datetime | None = None
    rows_in_slice = 0
    for index, (hour, rows) in enumerate(hours):
        if start is None:
            start, rows_in_slice = max(hour, window.start), 0
        rows_in_slice += rows
        following = hours[index + 1] if index + 1 < len(hours) else None
        if following is None:
            slices.append((Window(start, window.end), rows_in_slice))
        elif rows_in_slice + following[1] > max_rows:
            # The next slice starts where this one ends, so rows between the counted hours (there
            # are none when the counts are current) are still read by exactly one slice.
            slices.append((Window(start, following[0]), rows_in_slice))
            start = following[0]
            rows_in_slice = 0
    if slices:
        first, rows = slices[0]
        slices[0] = (Window(window.start, first.end), rows)
    return slices
