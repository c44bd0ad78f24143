"""On-call rotas: recurring weekly windows in Europe/Amsterdam wall-clock time.

A window ``mon-fri 17:00-08:00`` is on duty from 17:00 on each of those days until 08:00
the next morning: an end at or before the start crosses midnight. Times are wall-clock
times in Europe/Amsterdam, so a night shift on the day summer time ends lasts an hour
longer, as the rota on the wall says. Each rota compiles to one bit per minute of the week
(10,080 bytes): "on duty now?" is one index, whatever the rota looks like.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MINUTES_PER_DAY = 24 * 60
MINUTES_PER_WEEK = 7 * MINUTES_PER_DAY
_CLOCK = re.compile(r"^([01][0-9]|2[0-4]):([0-5][0-9])$")


def parse_days(tokens: Iterable[str]) -> tuple[int, ...]:
    """``mon``..``sun`` and ranges such as ``mon-fri`` or ``fri-mon``, as weekday numbers."""
    days: list[int] = []
    for token in tokens:
        first, _, last = token.strip().lower().partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"'{token}' is not a day: use mon, tue, wed, thu, fri, sat, sun or a "
                             f"range such as mon-fri")
        start = DAYS.index(first)
        count = (DAYS.index(last) - start) % 7 + 1 if last else 1
        for offset in range(count):
            day = (start + offset) % 7
            if day in days:
                raise ValueError(f"{DAYS[day]} is named twice")
            days.append(day)
    if not days:
        raise ValueError("name at least one day")
    return tuple(days)


def parse_clock(text: str, *, end: bool) -> int:
    """``HH:MM`` as minutes after midnight; ``24:00`` only as an end."""
    match = _CLOCK.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"'{text}' is not a time of day: write HH:MM, e.g. \"08:00\"")
    minutes = int(match.group(1)) * 60 + int(match.group(2))
    if minutes > MINUTES_PER_DAY or (minutes == MINUTES_PER_DAY and not end):
        raise ValueError(f"'{text}' is not a time of day" + ("" if end else " (24:00 only as 'until')"))
    return minutes


def clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True)
class WeeklyWindow:
    """On duty from ``start`` on each of ``days`` until ``end`` (the next day if ``end <= start``)."""

    days: tuple[int, ...]
    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise ValueError("'from' equals 'until': the window would be empty (for a whole day "
                             "write from 00:00 until 24:00)")

    @property
    def crosses_midnight(self) -> bool:
        return self.end < self.start

    def intervals(self) -> list[tuple[int, int]]:
        """Half-open minute-of-week intervals, split where the week wraps round."""
        length = (self.end - self.start) % MINUTES_PER_DAY or MINUTES_PER_DAY
        result: list[tuple[int, int]] = []
        for day in self.days:
            begin = day * MINUTES_PER_DAY + self.start
            finish = begin + length
            if finish <= MINUTES_PER_WEEK:
                result.append((begin, finish))
            else:
                result += [(begin, MINUTES_PER_WEEK), (0, finish - MINUTES_PER_WEEK)]
        return result

    def describe(self) -> str:
        days = describe_days(self.days)
        until = clock(self.end) + (" next day" if self.crosses_midnight else "")
        return f"{days} {clock(self.start)}-{until}"


def describe_days(days: Iterable[int]) -> str:
    """``mon-thu,sat`` for Monday to Thursday and Saturday (as written, in order)."""
    runs: list[list[int]] = []
    for day in days:
        if runs and day == runs[-1][-1] + 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ",".join(DAYS[run[0]] if len(run) == 1 else f"{DAYS[run[0]]}-{DAYS[run[-1]]}" for run in runs)


def minute_of_week(moment: datetime) -> int:
    """Minutes since Monday 00:00 on the Amsterdam wall clock at ``moment`` (aware)."""
    local = moment.astimezone(AMSTERDAM)
    return local.weekday() * MINUTES_PER_DAY + local.hour * 60 + local.minute


def describe_minute(minute: int) -> str:
    return f"{DAY_NAMES[minute // MINUTES_PER_DAY]} {clock(minute % MINUTES_PER_DAY)}"


@dataclass(frozen=True)
class CompiledRota:
    """A rota ready for evaluation: ``duty[minute_of_week]`` is 1 while on duty."""

    id: str
    name: str
    windows: tuple[WeeklyWindow, ...]
    duty: bytes

    @classmethod
    def build(cls, rota_id: str, name: str, windows: Iterable[WeeklyWindow]) -> CompiledRota:
        windows = tuple(windows)
        duty = bytearray(MINUTES_PER_WEEK)
        for window in windows:
            for begin, finish in window.intervals():
                duty[begin:finish] = b"\x01" * (finish - begin)
        return cls(rota_id, name, windows, bytes(duty))

    def on_duty_at(self, minute: int) -> bool:
        return self.duty[minute] == 1

    def describe(self) -> str:
        return "; ".join(window.describe() for window in self.windows)

    def next_change(self, minute: int) -> int:
        """Minute of the week at which on/off duty next flips (``minute`` itself if never)."""
        state = self.duty[minute]
        for step in range(1, MINUTES_PER_WEEK):
            candidate = (minute + step) % MINUTES_PER_WEEK
            if self.duty[candidate] != state:
                return candidate
        return minute


def first_overlap(earlier: Iterable[WeeklyWindow], window: WeeklyWindow) -> int | None:
    """The first minute of the week ``window`` shares with any of ``earlier``, if one."""
    taken = bytearray(MINUTES_PER_WEEK)
    for other in earlier:
        for begin, finish in other.intervals():
            taken[begin:finish] = b"\x01" * (finish - begin)
    for begin, finish in sorted(window.intervals()):
        found = taken.find(1, begin, finish)
        if found != -1:
            return found
    return None
