"""Event time: RFC 3339 and Unix-nanosecond parsing, the accepted range, windows, durations."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flows.core.eventtime import (
    EPOCH,
    MAX_EVENT_US,
    MIN_EVENT_US,
    US_PER_S,
    EventTimeError,
    event_time_us,
    parse_duration_us,
    parse_rfc3339_us,
    window_start_us,
)

ONE_US = timedelta(microseconds=1)


def us_of(dt: datetime) -> int:
    """Exact microseconds since the epoch of an aware datetime (no float rounding)."""
    return (dt - EPOCH) // ONE_US


T_2024 = us_of(datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC))


# --- parse_rfc3339_us: accepted forms -------------------------------------------------------


def test_whole_seconds() -> None:
    assert parse_rfc3339_us("2024-05-01T12:34:56Z") == T_2024
    assert parse_rfc3339_us("1970-01-01T00:00:00Z") == 0
    assert parse_rfc3339_us("2019-08-24T14:15:22Z") == 1_566_656_122 * US_PER_S


@pytest.mark.parametrize(
    ("fraction", "micros"),
    [
        ("1", 100_000),
        ("12", 120_000),
        ("123", 123_000),
        ("1234", 123_400),
        ("12345", 123_450),
        ("123456", 123_456),
        ("1234567", 123_456),
        ("12345678", 123_456),
        ("123456789", 123_456),
        ("999999999", 999_999),
        ("000000999", 0),
        ("0000009", 0),
    ],
)
def test_fractional_digits_are_truncated_to_microseconds(fraction: str, micros: int) -> None:
    assert parse_rfc3339_us(f"2024-05-01T12:34:56.{fraction}Z") == T_2024 + micros


def test_lowercase_z_and_t() -> None:
    assert parse_rfc3339_us("2024-05-01t12:34:56z") == T_2024
    assert parse_rfc3339_us("2024-05-01T12:34:56z") == T_2024
    assert parse_rfc3339_us("2024-05-01t12:34:56Z") == T_2024


def test_space_separator() -> None:
    assert parse_rfc3339_us("2024-05-01 12:34:56Z") == T_2024


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:34:56+00:00", T_2024),
        ("2024-05-01T12:34:56-00:00", T_2024),
        ("2024-05-02T02:34:56+14:00", T_2024),
        ("2024-05-01T07:34:56-05:00", T_2024),
        ("2024-05-01T07:04:56-05:30", T_2024),
        ("2024-05-01T18:04:56+05:30", T_2024),
        ("2024-04-30T12:35:56-23:59", T_2024),
        ("2024-05-01T07:04:56.250-05:30", T_2024 + 250_000),
    ],
)
def test_numeric_offsets(text: str, expected: int) -> None:
    assert parse_rfc3339_us(text) == expected


def test_leap_second_counts_as_the_next_second() -> None:
    next_second = us_of(datetime(2017, 1, 1, tzinfo=UTC))
    assert parse_rfc3339_us("2016-12-31T23:59:60Z") == next_second
    assert parse_rfc3339_us("2016-12-31T23:59:60.5Z") == next_second + 500_000
    assert parse_rfc3339_us("2016-12-31T18:59:60-05:00") == next_second


@pytest.mark.parametrize(
    "text",
    ["2024-02-29T00:00:00Z", "2000-02-29T00:00:00Z", "2400-02-29T00:00:00Z"],
)
def test_leap_days(text: str) -> None:
    dt = datetime.fromisoformat(text)
    assert parse_rfc3339_us(text) == us_of(dt)


@pytest.mark.parametrize(
    "dt",
    [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2100, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    ],
)
def test_any_year_parses(dt: datetime) -> None:
    """The parser covers every four-digit year; range checks are event_time_us's job."""
    assert parse_rfc3339_us(dt.isoformat().replace("+00:00", "Z")) == us_of(dt)


# --- parse_rfc3339_us: rejected forms -------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "2024-13-01T00:00:00Z",  # month 13
        "2024-00-01T00:00:00Z",  # month 0
        "2024-02-31T00:00:00Z",  # day 31 in February
        "2024-02-30T00:00:00Z",
        "2023-02-29T00:00:00Z",  # not a leap year
        "1900-02-29T00:00:00Z",  # divisible by 100, not by 400
        "2024-04-31T00:00:00Z",
        "2024-05-00T00:00:00Z",
        "2024-05-01T25:00:00Z",
        "2024-05-01T24:00:00Z",
        "2024-05-01T12:60:00Z",
        "2024-05-01T12:00:61Z",
        "2024-05-01T12:00:00+24:00",
        "2024-05-01T12:00:00+05:60",
        "2024-05-01T12:00:00",  # no offset
        "2024-05-01T12:00:00.Z",  # dot without digits
        "2024-05-01T12:00:00.1234567890Z",  # more than 9 digits
        "2024-05-01",
        "2024-5-1T12:00:00Z",
        "2024-05-01T12:00Z",
        "2024-05-01T12:00:00+0500",
        "2024-05-01T12:00:00Z ",
        " 2024-05-01T12:00:00Z",
        "2024-05-01X12:00:00Z",
        "1714566896",
        "yesterday",
        "",
    ],
)
def test_invalid_forms_raise(text: str) -> None:
    with pytest.raises(EventTimeError):
        parse_rfc3339_us(text)


def test_event_time_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_rfc3339_us("garbage")


NON_ASCII_DIGITS = (
    "\uff12\uff10\uff12\uff14-05-01T12:34:56Z",  # fullwidth digits
    "\u0662\u0660\u0662\u0664-05-01T12:34:56Z",  # Arabic-Indic digits
    "2024-05-01T12:34:56.\u0661Z",  # Arabic-Indic fraction digit
)


def test_non_ascii_digits_are_rejected() -> None:
    """RFC 3339 digits are ASCII 0-9 only (ABNF DIGIT = %x30-39); ``\\d`` on a str would
    also match other Unicode decimal digits, which ``int()`` happily converts."""
    accepted = {}
    for text in NON_ASCII_DIGITS:
        with contextlib.suppress(EventTimeError):
            accepted[text] = parse_rfc3339_us(text)
    assert accepted == {}, f"parse_rfc3339_us accepted non-ASCII digits: {accepted}"


# --- property: isoformat round trip ---------------------------------------------------------

OFFSETS = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@given(
    dt=st.datetimes(
        # hypothesis takes naive bounds: local wall time within the offset drawn
        min_value=datetime(2000, 1, 1, tzinfo=UTC).replace(tzinfo=None),
        max_value=datetime(2099, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC).replace(tzinfo=None),
        timezones=OFFSETS,
    ),
    sep=st.sampled_from(["T", "t", " "]),
)
def test_isoformat_round_trip(dt: datetime, sep: str) -> None:
    assert parse_rfc3339_us(dt.isoformat(sep=sep)) == us_of(dt)


@given(
    dt=st.datetimes(
        min_value=datetime(2000, 1, 1, tzinfo=UTC).replace(tzinfo=None),
        max_value=datetime(2099, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC).replace(tzinfo=None),
        timezones=OFFSETS,
    ),
    extra=st.text(alphabet="0123456789", min_size=1, max_size=3),
)
def test_nanosecond_digits_truncate(dt: datetime, extra: str) -> None:
    text = dt.isoformat(timespec="microseconds")
    head, offset = text[:-6], text[-6:]
    assert parse_rfc3339_us(head + extra + offset) == us_of(dt)


# --- event_time_us ----------------------------------------------------------------------------


def test_event_time_from_timestamp() -> None:
    assert event_time_us("2024-05-01T12:34:56Z", None) == T_2024


def test_event_time_prefers_unix_nano() -> None:
    nanos = T_2024 * 1000 + 7_891_234
    assert event_time_us("2001-01-01T00:00:00Z", nanos) == T_2024 + 7_891
    # the timestamp string is not even looked at when timestampUnixNano is there
    assert event_time_us("not a time", nanos) == T_2024 + 7_891
    assert event_time_us(None, nanos) == T_2024 + 7_891


def test_event_time_needs_a_time() -> None:
    with pytest.raises(EventTimeError, match="timestamp"):
        event_time_us(None, None)


def test_event_time_bad_timestamp() -> None:
    with pytest.raises(EventTimeError, match="RFC 3339"):
        event_time_us("2024-05-01", None)


def test_accepted_range_boundaries() -> None:
    assert us_of(datetime(2000, 1, 1, tzinfo=UTC)) == MIN_EVENT_US
    assert us_of(datetime(2100, 1, 1, tzinfo=UTC)) == MAX_EVENT_US
    assert event_time_us("2000-01-01T00:00:00Z", None) == MIN_EVENT_US
    assert event_time_us("2099-12-31T23:59:59.999999Z", None) == MAX_EVENT_US - 1
    assert event_time_us(None, MIN_EVENT_US * 1000) == MIN_EVENT_US
    assert event_time_us(None, MAX_EVENT_US * 1000 - 1) == MAX_EVENT_US - 1
    with pytest.raises(EventTimeError):
        event_time_us("1999-12-31T23:59:59.999999Z", None)
    with pytest.raises(EventTimeError):
        event_time_us("2100-01-01T00:00:00Z", None)
    with pytest.raises(EventTimeError):
        event_time_us(None, MAX_EVENT_US * 1000)
    with pytest.raises(EventTimeError):
        event_time_us(None, MIN_EVENT_US * 1000 - 1000)


@pytest.mark.parametrize(
    ("timestamp", "nanos"),
    [
        ("0001-01-01T00:00:00Z", None),
        ("9999-12-31T23:59:59Z", None),
        ("1970-01-01T00:00:00Z", None),
        (None, 0),
        (None, -1),
        (None, 253_402_300_799 * 10**9),  # year 9999
        (None, 10**40),  # beyond any datetime
        (None, -(10**40)),
    ],
)
def test_out_of_range_is_rejected(timestamp: str | None, nanos: int | None) -> None:
    with pytest.raises(EventTimeError, match="outside the accepted range"):
        event_time_us(timestamp, nanos)


# --- windows and durations ------------------------------------------------------------------

MIN = 60 * US_PER_S


@pytest.mark.parametrize(
    ("t_us", "window_us", "start"),
    [
        (0, 5 * MIN, 0),
        (5 * MIN - 1, 5 * MIN, 0),
        (5 * MIN, 5 * MIN, 5 * MIN),
        (T_2024, 5 * MIN, us_of(datetime(2024, 5, 1, 12, 30, tzinfo=UTC))),
        (T_2024, 60 * MIN, us_of(datetime(2024, 5, 1, 12, tzinfo=UTC))),
        (T_2024, 1440 * MIN, us_of(datetime(2024, 5, 1, tzinfo=UTC))),
        (-1, 5 * MIN, -5 * MIN),
    ],
)
def test_window_start(t_us: int, window_us: int, start: int) -> None:
    assert window_start_us(t_us, window_us) == start


@given(
    t=st.integers(min_value=MIN_EVENT_US, max_value=MAX_EVENT_US - 1),
    window=st.integers(min_value=1, max_value=7 * 1440 * MIN),
)
def test_window_start_property(t: int, window: int) -> None:
    start = window_start_us(t, window)
    assert start % window == 0
    assert start <= t < start + window


@pytest.mark.parametrize(
    ("text", "us"),
    [
        ("90s", 90 * US_PER_S),
        ("5m", 5 * MIN),
        ("1h", 60 * MIN),
        ("1d", 1440 * MIN),
        ("250ms", 250_000),
        ("30", 30 * US_PER_S),
        (" 10m ", 10 * MIN),
        ("10 m", 10 * MIN),
        ("0s", 0),
    ],
)
def test_parse_duration(text: str, us: int) -> None:
    assert parse_duration_us(text) == us


@pytest.mark.parametrize(
    "text", ["", "m", "5 minutes", "1.5h", "-5m", "5w", "5M", "1h30m", "\uff15m", "\u0665s"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration_us(text)


def _outcome(parse, text: str) -> object:
    try:
        return parse(text)
    except EventTimeError:
        return "error"


TIMESTAMPS = st.builds(
    lambda date, time, frac, zone: date + "T" + time + frac + zone,
    st.sampled_from(["2024-05-01", "2024-02-29", "2023-02-29", "1999-12-31", "2024-13-01"]),
    st.sampled_from(["12:34:56", "23:59:60", "24:00:00", "00:00:00", "12:3x:56", "12:34:5\u0663"]),
    st.sampled_from(["", ".", ".1", ".123456", ".1234567", ".123456789", ".1234567890", ".\u0661"]),
    st.sampled_from(["Z", "z", "+07:00", "-12:30", "+24:00", "+07:60", "+0700", "", "Z "]),
)


@given(TIMESTAMPS | st.text(alphabet="0123456789-:T.Zz+ ", max_size=32))
def test_the_short_path_agrees_with_the_exact_parser(text: str) -> None:
    from flows.core.eventtime import parse_rfc3339_exact

    assert _outcome(parse_rfc3339_us, text) == _outcome(parse_rfc3339_exact, text)
    assert _outcome(parse_rfc3339_us, text) == _outcome(parse_rfc3339_exact, text)  # cached
