"""Window math (`lib/windows.py`): periods, month arithmetic, half-open windows, archive eligibility."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from etl_assets.lib.windows import (
    Period,
    Window,
    add_months,
    archive_cutoff,
    check_archive_eligible,
    key_slices,
    last_eligible_month_end,
    month_start,
    months_between,
    months_held_back,
    parse_period,
    utc,
)

RETENTION_UNITS = ("days", "weeks", "months", "years")
LAG_UNITS = ("minutes", "hours", "days")


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- parse_period ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "amount", "unit"),
    [
        ("6 months", 6, "months"),
        ("1 month", 1, "months"),
        ("1 year", 1, "years"),
        ("7 years", 7, "years"),
        ("2 weeks", 2, "weeks"),
        ("30 days", 30, "days"),
        ("3d", 3, "days"),
        ("  7   Days ", 7, "days"),
        ("+6 months", 6, "months"),
        ("2 y", 2, "years"),
    ],
)
def test_parse_period_accepts(text: str, amount: int, unit: str) -> None:
    assert parse_period(text, allowed=RETENTION_UNITS, what="retention") == Period(amount, unit)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "amount", "unit"),
    [
        ("15 minutes", 15, "minutes"),
        ("1 min", 1, "minutes"),
        ("2 h", 2, "hours"),
        ("0 minutes", 0, "minutes"),
    ],
)
def test_parse_period_accepts_durations(text: str, amount: int, unit: str) -> None:
    assert parse_period(text, allowed=LAG_UNITS, what="duration", allow_zero=True) == Period(amount, unit)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "'' is not a retention"),
        ("six months", "'six months' is not a retention"),
        ("6", "'6' is not a retention"),
        ("1.5 years", "'1.5 years' is not a retention"),
        ("6 months ago", "'6 months ago' is not a retention"),
        ("\u0666 months", "is not a retention"),  # an Arabic-Indic six: only ASCII digits
        ("6 parsecs", "'6 parsecs' has an unknown unit 'parsecs'"),
        ("0 months", "'0 months' must be more than zero"),
        ("-1 month", "'-1 month' must be more than zero"),
        ("90 minutes", "'90 minutes': a retention cannot be given in minutes"),
    ],
)
def test_parse_period_refuses_with_the_valid_form(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_period(text, allowed=RETENTION_UNITS, what="retention")
    assert problem in str(caught.value)
    assert "write it as '<whole number> <days|weeks|months|years>', e.g. '6 months'" in str(caught.value)


def test_parse_period_duration_hint_and_negative() -> None:
    with pytest.raises(ValueError, match=r"'-5 minutes' must be zero or more; .*e\.g\. '15 minutes'"):
        parse_period("-5 minutes", allowed=LAG_UNITS, what="duration", allow_zero=True)


def test_period_text_and_length() -> None:
    assert str(Period(1, "months")) == "1 month"
    assert str(Period(6, "months")) == "6 months"
    assert Period(2, "weeks").as_timedelta() == timedelta(days=14)
    assert Period(15, "minutes").as_timedelta() == timedelta(minutes=15)
    with pytest.raises(ValueError, match="'6 months' has no fixed length"):
        Period(6, "months").as_timedelta()


def test_period_subtract_from_clamps_to_the_end_of_shorter_months() -> None:
    assert Period(1, "months").subtract_from(at(2024, 3, 31)) == at(2024, 2, 29)
    assert Period(1, "years").subtract_from(at(2024, 2, 29)) == at(2023, 2, 28)
    assert Period(10, "days").subtract_from(at(2024, 3, 5, 12)) == at(2024, 2, 24, 12)


# --- month arithmetic -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "months", "expected"),
    [
        (at(2023, 1, 31), 1, at(2023, 2, 28)),
        (at(2024, 1, 31), 1, at(2024, 2, 29)),  # leap year
        (at(2024, 1, 31, 13, 45), 3, at(2024, 4, 30, 13, 45)),  # time of day kept
        (at(2024, 12, 15), 1, at(2025, 1, 15)),
        (at(2024, 1, 15), -1, at(2023, 12, 15)),
        (at(2024, 3, 31), -13, at(2023, 2, 28)),
        (at(2024, 5, 1), 0, at(2024, 5, 1)),
    ],
)
def test_add_months(moment: datetime, months: int, expected: datetime) -> None:
    assert add_months(moment, months) == expected


def test_month_start() -> None:
    assert month_start(at(2024, 2, 29, 23, 59)) == at(2024, 2, 1)
    assert month_start(date(2024, 7, 4)) == at(2024, 7, 1)
    # 00:30 on 1 March in UTC+02:00 is still February in UTC
    assert month_start(datetime(2024, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))) == at(2024, 2, 1)


def test_utc() -> None:
    assert utc(datetime(2024, 1, 1, 12)) == at(2024, 1, 1, 12)  # naive means UTC
    assert utc(datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=-5)))) == at(2024, 1, 1, 17)
    assert utc(at(2024, 1, 1)).tzinfo is UTC


def test_months_between() -> None:
    assert months_between(at(2019, 1, 1), at(2019, 1, 31)) == 0
    assert months_between(at(2019, 1, 1), at(2020, 3, 1)) == 14


# --- half-open windows ----------------------------------------------------------------------------


def test_window_is_half_open() -> None:
    january = Window(at(2024, 1, 1), at(2024, 2, 1))
    february = Window(at(2024, 2, 1), at(2024, 3, 1))
    boundary = at(2024, 2, 1)
    assert not january.contains(boundary)
    assert february.contains(boundary)
    assert january.contains(at(2024, 1, 31, 23, 59))
    assert january.contains(at(2024, 1, 1))
    assert january.contains(datetime(2024, 1, 15))  # naive means UTC


def test_window_refuses_empty_or_reversed() -> None:
    with pytest.raises(ValueError, match="empty window"):
        Window(at(2024, 1, 1), at(2024, 1, 1))
    with pytest.raises(ValueError, match="is not after start"):
        Window(at(2024, 2, 1), at(2024, 1, 1))


def test_window_bounds_are_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    window = Window(datetime(2024, 1, 1, 2, tzinfo=plus_two), datetime(2024, 2, 1, 2, tzinfo=plus_two))
    assert window.start == at(2024, 1, 1)
    assert window.naive() == (datetime(2024, 1, 1), datetime(2024, 2, 1))
    assert window.label() == "[2024-01-01T00:00, 2024-02-01T00:00)"
    assert Window(datetime(2024, 1, 1), datetime(2024, 1, 2)).start.tzinfo is UTC


def test_window_widen_back() -> None:
    day = Window(at(2024, 1, 2), at(2024, 1, 3))
    assert day.widen_back(timedelta(minutes=15)) == Window(at(2024, 1, 1, 23, 45), at(2024, 1, 3))


# --- archive eligibility --------------------------------------------------------------------------

SIX_MONTHS = Period(6, "months")


def test_archive_cutoff() -> None:
    assert archive_cutoff(SIX_MONTHS, at(2026, 11, 28, 9, 30)) == at(2026, 5, 28, 9, 30)
    assert archive_cutoff(Period(1, "years"), at(2024, 2, 29)) == at(2023, 2, 28)
    assert archive_cutoff(Period(2, "weeks"), at(2024, 1, 15)) == at(2024, 1, 1)
    assert archive_cutoff(SIX_MONTHS, datetime(2026, 11, 28)) == at(2026, 5, 28)  # naive means UTC


def test_last_eligible_month_end() -> None:
    assert last_eligible_month_end(SIX_MONTHS, at(2026, 11, 28)) == at(2026, 5, 1)
    assert last_eligible_month_end(SIX_MONTHS, at(2026, 11, 1)) == at(2026, 5, 1)
    assert last_eligible_month_end(SIX_MONTHS, at(2026, 10, 31, 23, 59)) == at(2026, 4, 1)
    assert last_eligible_month_end(Period(1, "years"), at(2025, 1, 15)) == at(2024, 1, 1)


def test_check_archive_eligible_accepts_old_enough_months() -> None:
    now = at(2026, 11, 28)
    check_archive_eligible(Window(at(2026, 4, 1), at(2026, 5, 1)), SIX_MONTHS, now)
    check_archive_eligible(Window(at(2019, 1, 1), at(2019, 2, 1)), SIX_MONTHS, now)
    # a month whose end is exactly the cutoff is eligible
    check_archive_eligible(Window(at(2026, 4, 1), at(2026, 5, 1)), SIX_MONTHS, at(2026, 11, 1))


def test_check_archive_eligible_refuses_a_too_new_month_and_names_the_newest_allowed() -> None:
    with pytest.raises(ValueError) as caught:
        check_archive_eligible(Window(at(2026, 5, 1), at(2026, 6, 1)), SIX_MONTHS, at(2026, 11, 28))
    message = str(caught.value)
    assert message.startswith("partition 2026-05-01 is not eligible yet")
    assert "[2026-05-01T00:00, 2026-06-01T00:00)" in message
    assert "retention cutoff 2026-05-28T00:00 UTC (retention 6 months)" in message
    assert message.endswith("the newest partition that may be archived today is 2026-04-01")


def test_check_archive_eligible_refuses_the_current_month() -> None:
    with pytest.raises(ValueError, match="newest partition that may be archived today is 2025-11-01"):
        check_archive_eligible(Window(at(2026, 1, 1), at(2026, 2, 1)), Period(1, "months"), at(2026, 1, 20))


def test_month_window_of_a_partition_key_is_that_month_half_open() -> None:
    from etl_assets.lib.windows import month_window

    window = month_window("2024-02-01")
    assert window.start == datetime(2024, 2, 1, tzinfo=UTC)
    assert window.end == datetime(2024, 3, 1, tzinfo=UTC)
    assert month_window("2023-12-01").end == datetime(2024, 1, 1, tzinfo=UTC)


def test_key_slices_cover_the_range_in_bounded_steps() -> None:
    assert key_slices(1, 25, 10) == [(1, 10), (11, 20), (21, 25)]
    assert key_slices(7, 7, 10) == [(7, 7)]
    top = 2**64 - 1
    assert key_slices(top - 4, top, 2) == [(top - 4, top - 3), (top - 2, top - 1), (top, top)]
    with pytest.raises(ValueError, match="width"):
        key_slices(1, 2, 0)


@pytest.mark.parametrize(
    ("retention", "months"),
    [("1 day", 1), ("28 days", 1), ("29 days", 2), ("30 days", 2), ("4 weeks", 1), ("60 days", 3),
     ("365 days", 12), ("1 month", 1), ("2 years", 24)],
)  # fmt: skip
def test_months_held_back_is_the_furthest_a_retention_reaches_on_any_day(retention: str, months: int) -> None:
    period = parse_period(retention, allowed=RETENTION_UNITS, what="retention")
    assert months_held_back(period) == months
    # 29 days on 1 March 2027 (after a 28-day February) reach back to 31 January: the newest eligible
    # month is December, two months back; 28 days reach 1 February: January, one month back.
    if retention in ("28 days", "29 days"):
        first_of_march = at(2027, 3, 1)
        assert months_between(last_eligible_month_end(period, first_of_march), first_of_march) == months
