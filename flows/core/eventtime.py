"""Event time: RFC 3339 strings and Unix nanoseconds to integer microseconds since the epoch.

Integers keep the hot path cheap and cover any year; datetimes appear only at the edges.
All times are UTC.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

from schemas.durations import US_PER_S, duration_label, parse_duration_us

__all__ = ["US_PER_S", "duration_label", "parse_duration_us"]  # shared with the output's readers
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)

MIN_EVENT_US = 946_684_800 * US_PER_S  # 2000-01-01T00:00:00Z
MAX_EVENT_US = 4_102_444_800 * US_PER_S  # 2100-01-01T00:00:00Z
"""Accepted event times: [2000-01-01, 2100-01-01). Outside, a message is a dead letter:
a stray year-9999 timestamp would otherwise push the watermark past every window."""

_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class EventTimeError(ValueError):
    """The message carries no usable event time."""


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _is_leap(y: int) -> bool:
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


_MINUTES: dict[str, int] = {}
"""``YYYY-MM-DDTHH:MM`` -> microseconds since the epoch, read as UTC (parsed exactly once;
the events of a batch share a few minutes)."""
_OFFSETS: dict[str, int] = {"Z": 0}
"""``+HH:MM`` / ``-HH:MM`` / ``Z`` -> microseconds to subtract."""
_CACHE_LIMIT = 100_000
_SECONDS: dict[str, int] = {}
"""``YYYY-MM-DDTHH:MM:SS`` -> microseconds since the epoch, read as UTC (the events of a
batch share a few seconds)."""
_SECONDS_LIMIT = 20_000
_SECOND_DIGITS = frozenset("012345")
_DIGITS = frozenset("0123456789")


def parse_rfc3339_us(text: str) -> int:
    """Parse an RFC 3339 date-time to microseconds since the epoch (UTC).

    Accepts 0 to 9 fractional digits (truncated to microseconds), ``Z``/``z`` or a
    numeric offset, ``T``/``t``/space as separator, and a leap second (``:60``, counted
    as the next second).

    The common form (``T``, seconds 00-59, ``Z`` or ``±HH:MM``) takes a short path: its
    date and time to the second and its offset are each parsed exactly once, by
    :func:`parse_rfc3339_exact`, and looked up after that; anything else goes to the exact
    parser.
    """
    base = _SECONDS.get(text[:19])
    if base is None:
        base = _cache_second(text[:19])
    if base is not None:
        rest = text[19:]
        offset = _OFFSETS.get(rest)
        if offset is not None:
            return base - offset
        if rest[:1] == ".":
            zone = "Z" if rest[-1] == "Z" else rest[-6:]
            digits = rest[1 : -len(zone)]
            offset = _OFFSETS.get(zone)
            if offset is None:
                offset = _cache_offset(zone)
            digits_ok = 0 < len(digits) <= 9 and digits.isascii() and digits.isdigit()
            if offset is not None and digits_ok:
                return base + int((digits + "00000")[:6]) - offset
        else:
            offset = _cache_offset(rest)
            if offset is not None:
                return base - offset
    return parse_rfc3339_exact(text)


def _cache_second(prefix: str) -> int | None:
    """``YYYY-MM-DDTHH:MM:SS`` (seconds 00-59) in microseconds, remembered; None if the
    prefix is not of that form."""
    if (
        len(prefix) != 19
        or prefix[10] != "T"
        or prefix[16] != ":"
        or prefix[17] not in _SECOND_DIGITS
        or prefix[18] not in _DIGITS
    ):
        return None
    minute = _MINUTES.get(prefix[:16])
    if minute is None:
        minute = _cache_minute(prefix[:16])
        if minute is None:
            return None
    value = minute + int(prefix[17:]) * US_PER_S
    if len(_SECONDS) >= _SECONDS_LIMIT:
        _SECONDS.clear()
    _SECONDS[prefix] = value
    return value


def _cache_minute(prefix: str) -> int | None:
    """The exact parse of ``prefix`` + ``:00Z``, remembered; None if it is not a date-time."""
    try:
        value = parse_rfc3339_exact(prefix + ":00Z")
    except EventTimeError:
        return None
    if len(_MINUTES) >= _CACHE_LIMIT:
        _MINUTES.clear()
    _MINUTES[prefix] = value
    return value


def _cache_offset(zone: str) -> int | None:
    """Microseconds of a ``±HH:MM`` offset, remembered; None if it is not one."""
    if len(zone) != 6 or zone[0] not in "+-":
        return None
    try:
        value = parse_rfc3339_exact("1970-01-01T00:00:00" + zone)
    except EventTimeError:
        return None
    if len(_OFFSETS) < 2000:
        _OFFSETS[zone] = -value
    return -value


def parse_rfc3339_exact(text: str) -> int:
    """:func:`parse_rfc3339_us` without its short path: every field checked every time."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise EventTimeError(f"timestamp {text[:64]!r} is not RFC 3339")
    zone_minutes = m.group(11)
    if text[10] == "T" and text[-1] != "z" and (zone_minutes is None or zone_minutes < "60"):
        # The common form: let the C parser do it (it truncates extra digits, as we do).
        try:
            return (datetime.fromisoformat(text) - EPOCH) // _ONE_US
        except ValueError:
            pass  # leap second or an out-of-range field: the exact path below says which
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if not 1 <= month <= 12:
        raise EventTimeError(f"timestamp {text!r}: month {month} out of range")
    days_in_month = 29 if month == 2 and _is_leap(year) else _DAYS_IN_MONTH[month - 1]
    if not 1 <= day <= days_in_month or hour > 23 or minute > 59 or second > 60:
        raise EventTimeError(f"timestamp {text!r}: date or time field out of range")
    frac = m.group(7) or ""
    micros = int((frac + "000000")[:6])
    offset_s = 0
    if m.group(9):
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            raise EventTimeError(f"timestamp {text!r}: offset out of range")
        offset_s = (oh * 3600 + om * 60) * (1 if m.group(9) == "+" else -1)
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    return (seconds - offset_s) * US_PER_S + micros


def check_range(us: int) -> int:
    """Return ``us`` if it is an accepted event time, else raise EventTimeError."""
    if not MIN_EVENT_US <= us < MAX_EVENT_US:
        raise EventTimeError(
            f"event time {format_us(us)} outside the accepted range 2000-01-01..2100-01-01"
        )
    return us


def event_time_us(timestamp: str | None, unix_nano: int | None) -> int:
    """The event time: ``timestampUnixNano`` when present, else ``timestamp``."""
    if unix_nano is not None:
        return check_range(unix_nano // 1000)
    if timestamp is None:
        raise EventTimeError("no timestamp and no timestampUnixNano")
    return check_range(parse_rfc3339_us(timestamp))


def to_datetime(us: int) -> datetime:
    """Microseconds since the epoch to an aware UTC datetime."""
    return EPOCH + timedelta(microseconds=us)


def format_us(us: int) -> str:
    """Readable UTC form of a microsecond time, for messages (any year)."""
    try:
        return to_datetime(us).isoformat()
    except OverflowError:
        return f"{us} µs since 1970"


def window_columns(namespace: str, start_us: int, window_us: int) -> dict[str, Any]:
    """The key columns every per-window row starts with (``date`` is a partition column)."""
    day, start, end = _window_times(start_us, window_us)
    return {"namespace": namespace, "date": day, "window_start": start, "window_end": end}


@functools.lru_cache(maxsize=4096)
def _window_times(start_us: int, window_us: int) -> tuple[date, datetime, datetime]:
    """A window's date and bounds (shared by every namespace's row of that window)."""
    start = to_datetime(start_us)
    return start.date(), start, to_datetime(start_us + window_us)


def window_start_us(t_us: int, window_us: int) -> int:
    """Start of the epoch-aligned tumbling window ``[start, start + window)`` holding ``t_us``."""
    return t_us - t_us % window_us
