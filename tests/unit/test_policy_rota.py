"""On-call rotas in Europe/Amsterdam wall-clock time: midnight, weekends, the week's wrap
and the two days a year the clock jumps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from idbroker.policy.rota import (
    AMSTERDAM,
    CompiledRota,
    WeeklyWindow,
    describe_minute,
    first_overlap,
    minute_of_week,
    parse_clock,
    parse_days,
)


def window(days: str, start: str, end: str) -> WeeklyWindow:
    return WeeklyWindow(parse_days(days.split(",")), parse_clock(start, end=False),
                        parse_clock(end, end=True))


def rota(*windows: tuple[str, str, str]) -> CompiledRota:
    return CompiledRota.build("r", "R", [window(*spec) for spec in windows])


def on_duty(compiled: CompiledRota, local: str) -> bool:
    return compiled.on_duty_at(minute_of_week(datetime.fromisoformat(local).replace(tzinfo=AMSTERDAM)))


EVENINGS = rota(("mon-fri", "17:00", "08:00"))


@pytest.mark.parametrize(("local", "expected"), [
    ("2026-11-23T16:59", False),  # Monday, before the shift
    ("2026-11-23T17:00", True),  # Monday 17:00: the shift starts (inclusive)
    ("2026-11-23T23:59", True),
    ("2026-11-24T00:00", True),  # after midnight: Monday's shift runs on into Tuesday
    ("2026-11-24T07:59", True),
    ("2026-11-24T08:00", False),  # the end is exclusive
    ("2026-11-28T07:59", True),  # Saturday morning: Friday's shift
    ("2026-11-28T08:00", False),
    ("2026-11-29T12:00", False),  # Sunday: no shift starts on Saturday or Sunday
    ("2026-11-30T07:00", False),  # Monday before 08:00: Sunday had no shift
])
def test_a_window_crossing_midnight_belongs_to_the_day_it_starts(local: str, expected: bool) -> None:
    assert on_duty(EVENINGS, local) is expected


def test_the_week_wraps_from_sunday_night_into_monday() -> None:
    sunday_night = rota(("sun", "22:00", "06:00"))
    assert on_duty(sunday_night, "2026-11-29T23:00")
    assert on_duty(sunday_night, "2026-11-30T05:59")  # Monday, start of the next week
    assert not on_duty(sunday_night, "2026-11-30T06:00")
    assert not on_duty(sunday_night, "2026-11-23T23:00")  # Monday night is not Sunday night


def test_weekend_and_whole_days() -> None:
    weekend = rota(("fri", "17:00", "24:00"), ("sat-sun", "00:00", "24:00"), ("mon", "00:00", "08:00"))
    assert not on_duty(weekend, "2026-11-27T16:59")
    assert on_duty(weekend, "2026-11-27T17:00")
    assert on_duty(weekend, "2026-11-28T00:00") and on_duty(weekend, "2026-11-29T23:59")
    assert on_duty(weekend, "2026-11-30T07:59") and not on_duty(weekend, "2026-11-30T08:00")
    assert sum(weekend.duty) == (7 + 48 + 8) * 60


def test_spring_forward_the_wall_clock_decides() -> None:
    """29 March 2026, 02:00 CET becomes 03:00 CEST: the Sunday-night shift ends at 08:00 local,
    which is 06:00 UTC the next morning, not 07:00 as in winter."""
    shift = rota(("sun", "17:00", "08:00"))
    monday = datetime(2026, 3, 30, tzinfo=UTC)
    assert shift.on_duty_at(minute_of_week(monday + timedelta(hours=5, minutes=59)))  # 07:59 CEST
    assert not shift.on_duty_at(minute_of_week(monday + timedelta(hours=6, minutes=30)))  # 08:30 CEST
    # The hour that does not exist is simply skipped: 00:59 UTC is 01:59 CET, 01:00 UTC is 03:00 CEST.
    night = rota(("sun", "02:00", "03:00"))
    assert not night.on_duty_at(minute_of_week(datetime(2026, 3, 29, 0, 59, tzinfo=UTC)))
    assert not night.on_duty_at(minute_of_week(datetime(2026, 3, 29, 1, 0, tzinfo=UTC)))


def test_fall_back_the_night_shift_is_an_hour_longer() -> None:
    """25 October 2026, 03:00 CEST becomes 02:00 CET: the Saturday-night shift 22:00-07:00
    lasts ten hours of real time, and both passes through 02:30 are on duty."""
    shift = rota(("sat", "22:00", "07:00"))
    start = datetime(2026, 10, 24, 20, 0, tzinfo=UTC)  # 22:00 CEST
    minutes_on = sum(shift.on_duty_at(minute_of_week(start + timedelta(minutes=m))) for m in range(12 * 60))
    assert minutes_on == 10 * 60
    assert shift.on_duty_at(minute_of_week(datetime(2026, 10, 25, 0, 30, tzinfo=UTC)))  # 02:30 CEST
    assert shift.on_duty_at(minute_of_week(datetime(2026, 10, 25, 1, 30, tzinfo=UTC)))  # 02:30 CET


def test_overlap_is_found_with_the_first_shared_minute() -> None:
    evening, saturday, sunday = window("mon-fri", "17:00", "08:00"), window("sat", "07:00", "09:00"), window(
        "sun", "08:00", "09:00")
    found = first_overlap([evening], saturday)
    assert found is not None and describe_minute(found) == "Saturday 07:00"
    assert first_overlap([evening], sunday) is None


def test_parsing_refuses_what_is_not_a_day_or_a_time() -> None:
    assert parse_days(["fri-mon"]) == (4, 5, 6, 0)
    for bad in (["maandag"], ["mon", "mon"], ["mon-fri", "tue"], []):
        with pytest.raises(ValueError):
            parse_days(bad)
    assert parse_clock("24:00", end=True) == 1440
    for bad in ("24:00", "7:00", "12:60", "noon", "25:00"):
        with pytest.raises(ValueError):
            parse_clock(bad, end=False)
    with pytest.raises(ValueError, match="would be empty"):
        WeeklyWindow((0,), 480, 480)


def test_describe_and_next_change() -> None:
    assert EVENINGS.describe() == "mon-fri 17:00-08:00 next day"
    monday_noon = 12 * 60
    assert describe_minute(EVENINGS.next_change(monday_noon)) == "Monday 17:00"
