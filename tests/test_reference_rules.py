"""The job's parsing and the independent reference decide every message alike.

``flows.core.parsing.classify`` (the job) and ``tests.reference.classify`` (written from the
README's "How it decides" alone) must agree on whether a message is counted, skipped or a
dead letter, and on a counted event's fields, its event time in microseconds included. The
edge cases sit on the README's boundaries; each also states the README's answer, so the two
cannot agree on a wrong one. Hypothesis then draws messages around those boundaries.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.core.parsing import Event, classify
from schemas.events import COUNTED_NAMES
from tests import reference
from tests.test_parsing import COUNTED, JSON_VALUES, TEXT, envelope

ROOM = 190
"""Bytes the percent-encoded namespace had in its directory name when the output was
partitioned by namespace (format 1): the cases around it show that the limit is gone."""
LOW_NS, HIGH_NS = 946_684_800 * 10**9, 4_102_444_800 * 10**9  # 2000-01-01, 2100-01-01


def _job(value: bytes | None) -> tuple[str, Any]:
    got = classify(value)
    if got is None:
        return "skip", None
    if isinstance(got, str):
        assert got, "a dead letter has a reason"
        return "dead", None
    assert isinstance(got, Event)
    name = COUNTED_NAMES[got.kind]
    return "event", (got.id, name, got.namespace, got.t_us, got.user_id, got.session_id)


def _reference(value: bytes | None) -> tuple[str, Any]:
    kind, what = reference.classify(value)
    return kind, what if kind == "event" else None


def assert_agree(value: bytes | None, readme: str | None = None) -> tuple[str, Any]:
    """Job and reference decide ``value`` alike (and as the README says, when given)."""
    job, ref = _job(value), _reference(value)
    shown = value if value is None else value[:400]
    assert job == ref, f"job {job} != reference {ref} for {shown!r}"
    if readme is not None:
        assert job[0] == readme, f"{job[0]}, not {readme}, for {shown!r}"
    return job


def _doc(**overrides: Any) -> bytes:
    """An envelope as JSON (the standard library's, which writes integers of any size)."""
    return json.dumps(envelope(**overrides), ensure_ascii=False).encode()


def _without(*fields: str, **overrides: Any) -> bytes:
    doc = envelope(**overrides)
    for f in fields:
        del doc[f]
    return json.dumps(doc, ensure_ascii=False).encode()


# --- skipped or dead on the raw bytes -----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "readme"),
    [
        (None, "dead"),  # a tombstone
        (b"", "dead"),
        (b"   ", "dead"),
        (b"[1, 2]", "dead"),
        (b"42", "dead"),
        (b'"PartyDroppedEvent"', "dead"),  # names one, but not an object
        (b'["PartyDroppedEvent"]', "dead"),
        (b'{"name":"PartyCreatedEvent"}', "skip"),
        (b' \t\r\n{"name":"PartyCreatedEvent"}\n\r\t ', "skip"),
        (b"{not json at all}", "skip"),  # looks like an object; never parsed
        (b"\x0b{}", "dead"),  # a vertical tab is not one of the blanks ignored
        (b"{}\x0c", "dead"),
        (b"\xef\xbb\xbf{}", "dead"),  # a byte-order mark
        (b"\xff\xfe not even text", "dead"),
        (b'{"name": "PartyDroppedEvent", "id": "x", "namespace": ', "dead"),  # truncated
        (b'{"name":"PartyDroppedEvent","x":"\xff"}', "dead"),  # invalid UTF-8
        (b"\xef\xbb\xbf" + _doc(), "dead"),
        (b" \t\r\n" + _doc() + b"\r\n\t ", "event"),
        (b"\x0b" + _doc(), "dead"),
        # The name written with an escape: the raw bytes do not hold it, so it is skipped.
        (_doc(name="Party\\u0044roppedEvent").replace(b"\\\\", b"\\"), "skip"),
        (_doc(name="PartyMembersChangedEvent", payload={"message": "PartyDroppedEvent"}), "skip"),
        (_without("id", name="GameSessionUpdatedEvent", traceId="PartyDroppedEvent"), "skip"),
        (_doc(name=None, traceId="PartyDroppedEvent"), "dead"),
        (_doc(name=5, traceId="PartyDroppedEvent"), "dead"),
        (_doc(name=True, traceId="PartyDroppedEvent"), "dead"),
        (_doc(name=True), "skip"),  # no counted name in the bytes at all
        (_without("name", traceId="PartyDroppedEvent"), "dead"),
        (_doc() + b" x", "dead"),
        (_doc()[:-1] + b',"x":"\\ud800"}', "dead"),  # an unpaired surrogate is no UTF-8
        (_doc()[:-1] + b',"x":"\\ud83d\\ude00"}', "event"),  # a paired one is
        (_doc()[:-1] + b',"x":1e308}', "event"),
        # NaN, Infinity and numbers beyond a double read as numbers, as encoders write them
        (_doc()[:-1] + b',"x":NaN}', "event"),
        (_doc()[:-1] + b',"x":-Infinity}', "event"),
        (_doc()[:-1] + b',"x":-1e400}', "event"),
        (_doc()[:-1] + b',"x":NaN,"version":"1"}', "dead"),
        (_doc(name="Other", traceId="PartyDroppedEvent")[:-1] + b',"x":NaN,"version":"1"}', "skip"),
        (_doc(name="Other", traceId="PartyDroppedEvent")[:-1] + b',"x":1e400,"id":1}', "skip"),
        (_doc()[:-1] + b',"x":"a\x01"}', "dead"),  # a raw control character
        (_doc()[:-1] + b',"x":01}', "dead"),
        (_doc()[:-1] + b',"id":"second"}', "event"),  # the last of a repeated field
        (_doc()[:-1] + b',"id":2}', "dead"),
        (_doc()[:-1] + b',"name":"Other"}', "skip"),
    ],
)
def test_skip_or_dead_letter(value: bytes | None, readme: str) -> None:
    assert_agree(value, readme)


# --- the namespace: any non-empty string -------------------------------------------------


@pytest.mark.parametrize(
    ("namespace", "encoded"),
    [
        ("a" * ROOM, ROOM),
        ("a" * (ROOM + 1), ROOM + 1),
        ("é" * 31 + "a" * (ROOM - 185), ROOM + 1),  # é is %C3%A9: six bytes
        ("/" * 63 + "a" * (ROOM - 188), ROOM + 1),  # / is %2F
        ("😀" * 17, 204),  # four UTF-8 bytes, twelve encoded
        ("-._~" * 47 + "az!", ROOM + 3),
        ("%" * 63 + "z", ROOM),
        ("名" * 2000, 18000),
        ("x" * 100_000, 100_000),
        ("..", 2),
        ("a b", 5),
        ("a\x00b", 5),
    ],
)
def test_a_namespace_of_any_length_is_counted(namespace: str, encoded: int) -> None:
    """The namespace is a column of the output, no part of any path (format 2): however
    long it is once percent-encoded (format 1 refused more than 190 bytes), it is counted."""
    from urllib.parse import quote

    assert len(quote(namespace, safe="")) == encoded  # the case is what it says
    assert_agree(_doc(namespace=namespace), "event")


@pytest.mark.parametrize("namespace", ["", None, 5, ["a"], {"a": "b"}, True])
def test_namespace_not_a_usable_string(namespace: Any) -> None:
    assert_agree(_doc(namespace=namespace), "dead")


# --- types, strictly ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "readme"),
    [
        ("version", True, "dead"),
        ("version", False, "dead"),
        ("version", 1.0, "dead"),
        ("version", "1", "dead"),
        ("version", None, "event"),
        ("version", -1, "event"),
        ("version", 2**70, "event"),  # an integer, however large
        ("timestampUnixNano", True, "dead"),
        ("timestampUnixNano", False, "dead"),
        ("timestampUnixNano", 1.714e18, "dead"),
        ("timestampUnixNano", "1714566896000000000", "dead"),
        ("timestampUnixNano", None, "event"),  # absent: the timestamp decides
        ("timestampUnixNano", 2**70, "dead"),  # an integer, out of range
        ("id", 5, "dead"),
        ("id", None, "dead"),
        ("id", "", "dead"),
        ("id", True, "dead"),
        ("userId", 5, "dead"),
        ("userId", True, "dead"),
        ("userId", None, "event"),
        ("sessionId", ["p"], "dead"),
        ("sessionId", None, "event"),
        ("traceId", 1, "dead"),
        ("spanContext", {}, "dead"),
        ("parentNamespace", False, "dead"),
        ("timestamp", 1714566896, "dead"),
        ("payload", [], "dead"),
        ("payload", "x", "dead"),
        ("payload", None, "event"),
        ("payload", {}, "event"),
        ("payload", {"userIds": ["a", 1]}, "dead"),
        ("payload", {"userIds": [True]}, "dead"),
        ("payload", {"userIds": "a"}, "dead"),
        ("payload", {"userIds": None, "unnamed": 1}, "event"),
        ("payload", {"message": 1}, "dead"),
        ("payload", {"namespace": False}, "dead"),
        ("payload", {"topicName": None}, "event"),
        ("unnamedField", True, "event"),  # other fields are ignored
    ],
)
def test_field_types(field: str, value: Any, readme: str) -> None:
    assert_agree(_doc(**{field: value}), readme)


@pytest.mark.parametrize(
    ("nano", "t_us"),
    [
        (1_714_566_896_123_456_999, 1_714_566_896_123_456),  # floored, not rounded
        (LOW_NS, LOW_NS // 1000),
        (LOW_NS - 1, None),
        (HIGH_NS - 1, HIGH_NS // 1000 - 1),
        (HIGH_NS, None),
        (0, None),
        (-1, None),
    ],
)
def test_unix_nanoseconds(nano: int, t_us: int | None) -> None:
    got = assert_agree(_doc(timestampUnixNano=nano, timestamp="not a time"))
    assert got[0] == ("dead" if t_us is None else "event")
    if t_us is not None:
        assert got[1][3] == t_us


# --- event time from the RFC 3339 timestamp -----------------------------------------------

BASE_US = 1_714_566_896_000_000  # 2024-05-01T12:34:56Z
HOUR_US = 3600 * 10**6


@pytest.mark.parametrize(
    ("timestamp", "t_us"),
    [
        ("2024-05-01T12:34:56Z", BASE_US),
        ("2024-05-01t12:34:56z", BASE_US),
        ("2024-05-01 12:34:56Z", BASE_US),
        ("2024-05-01 12:34:56z", BASE_US),
        ("2024-05-01T12:34:56+00:00", BASE_US),
        ("2024-05-01T12:34:56-00:00", BASE_US),
        ("2024-05-01T18:04:56+05:30", BASE_US),
        ("2024-05-01T00:34:56-12:00", BASE_US),
        ("2024-05-02T12:33:56+23:59", BASE_US),
        ("2024-04-30T12:35:56-23:59", BASE_US),
        ("2024-05-01T12:34:56.123456789Z", BASE_US + 123_456),  # nine digits, truncated
        ("2024-05-01T12:34:56.999999999+00:00", BASE_US + 999_999),
        ("2024-05-01T12:34:56.1Z", BASE_US + 100_000),
        ("2024-05-01T12:34:56.000001z", BASE_US + 1),
        ("2024-05-01 12:34:56.5-01:00", BASE_US + HOUR_US + 500_000),
        ("2024-05-01T12:34:60Z", BASE_US + 4_000_000),  # a leap second: the next second
        ("2016-12-31T23:59:60Z", 1_483_228_800_000_000),
        ("2016-12-31T23:59:60.5Z", 1_483_228_800_500_000),
        ("1999-12-31T23:59:60Z", 946_684_800_000_000),  # leaps into the range
        ("2000-01-01T00:00:00Z", 946_684_800_000_000),
        ("2000-01-01T01:00:00+01:00", 946_684_800_000_000),
        ("2099-12-31T23:59:59.999999999Z", 4_102_444_799_999_999),
        ("2024-02-29T00:00:00Z", 1_709_164_800_000_000),
        ("2000-02-29T00:00:00Z", 951_782_400_000_000),
        # dead letters: out of range, out-of-range fields, not RFC 3339
        ("1999-12-31T23:59:59.999999Z", None),
        ("2000-01-01T00:30:00+01:00", None),
        ("2099-12-31T23:59:60Z", None),  # leaps out of the range
        ("2100-01-01T00:00:00Z", None),
        ("2099-12-31T23:30:00-01:00", None),
        ("0001-01-01T00:00:00Z", None),
        ("9999-12-31T23:59:59Z", None),
        ("0000-01-01T00:00:00Z", None),
        ("2023-02-29T00:00:00Z", None),
        ("2100-02-29T00:00:00Z", None),
        ("2024-04-31T00:00:00Z", None),
        ("2024-13-01T00:00:00Z", None),
        ("2024-00-10T00:00:00Z", None),
        ("2024-05-00T00:00:00Z", None),
        ("2024-05-01T24:00:00Z", None),
        ("2024-05-01T23:60:00Z", None),
        ("2024-05-01T23:59:61Z", None),
        ("2024-05-01T12:34:56+24:00", None),
        ("2024-05-01T12:34:56-00:60", None),
        ("2024-05-01T12:34:56.1234567890Z", None),  # ten digits
        ("2024-05-01T12:34:56.Z", None),
        ("2024-05-01T12:34:56", None),  # no zone
        ("2024-05-01T12:34:56+0100", None),
        ("2024-05-01T12:34:56+01", None),
        ("2024-05-01T12:34Z", None),
        ("2024-5-01T12:34:56Z", None),
        ("2024-05-01_12:34:56Z", None),
        ("2024-05-01T12:34:56ZZ", None),
        (" 2024-05-01T12:34:56Z", None),
        ("2024-05-01T12:34:56Z ", None),
        ("\u0662\u0660\u0662\u0664-05-01T12:34:56Z", None),  # Arabic-Indic digits
        ("\uff12\uff10\uff12\uff14-05-01T12:34:56Z", None),  # full-width digits
        ("2024-05-01T12:34:56.\u0661Z", None),
        ("2024-05-01T12:34:56+0\u0661:00", None),
        ("", None),
        ("yesterday", None),
    ],
)
def test_timestamp_forms(timestamp: str, t_us: int | None) -> None:
    got = assert_agree(_doc(timestamp=timestamp))
    assert got[0] == ("dead" if t_us is None else "event"), timestamp
    if t_us is not None:
        assert got[1][3] == t_us


def test_no_event_time_at_all() -> None:
    assert_agree(_without("timestamp"), "dead")
    assert_agree(_doc(timestamp=None), "dead")


def test_unix_nanoseconds_win_over_the_timestamp() -> None:
    _kind, event = assert_agree(_doc(timestampUnixNano=LOW_NS + 7_999), "event")
    assert event[3] == LOW_NS // 1000 + 7


# --- nesting depth ------------------------------------------------------------------------


def _nested(containers: int, opener: bytes, closer: bytes, inner: bytes, **fields: Any) -> bytes:
    """An envelope whose field ``deep`` makes ``containers`` arrays and objects in all,
    the envelope included, around ``inner``."""
    n = containers - 1
    return _doc(**fields)[:-1] + b',"deep":' + opener * n + inner + closer * n + b"}"


LIMIT = reference.MAX_DEPTH  # the README's "nested at most 200 levels"
SHAPES = [(b"[", b"]"), (b'{"a":', b"}")]


@pytest.mark.parametrize(("opener", "closer"), SHAPES)
@pytest.mark.parametrize(
    ("containers", "inner", "readme"),
    [
        (LIMIT - 1, b"1", "event"),
        (LIMIT, b"1", "event"),  # a value inside exactly 200
        (LIMIT + 1, b"1", "dead"),  # inside 201
        (LIMIT, b"[]", "event"),  # the empty array is a value inside 200
        (LIMIT + 1, b"[]", "dead"),
        (LIMIT, b"{}", "event"),
        (LIMIT + 1, b"{}", "dead"),
        (1000, b"1", "dead"),
        (100_000, b"1", "dead"),
    ],
)
def test_nesting_depth_at_the_limit(
    opener: bytes, closer: bytes, containers: int, inner: bytes, readme: str
) -> None:
    assert_agree(_nested(containers, opener, closer, inner), readme)


@pytest.mark.parametrize("containers", [LIMIT + 1, 500])
def test_too_deep_but_another_name_is_skipped(containers: int) -> None:
    """An object naming another event is skipped, also when nested too deep (within what
    the decoders read at all)."""
    raw = _nested(containers, b"[", b"]", b"1", name="Other", traceId="PartyDroppedEvent")
    assert_agree(raw, "skip")


# --- drawn messages -----------------------------------------------------------------------


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """RFC 3339-like strings around every field's limits."""
    y = draw(st.sampled_from([1999, 2000, 2024, 2099, 2100]) | st.integers(0, 9999))
    mo, d = draw(st.integers(0, 13)), draw(st.integers(0, 32))
    h, mi, s = draw(st.integers(0, 25)), draw(st.integers(0, 61)), draw(st.integers(0, 61))
    digits = st.text("0123456789", min_size=1, max_size=11).map(lambda s: "." + s)
    frac = draw(st.sampled_from(["", "."]) | digits)
    sep = draw(st.sampled_from("Tt _"))
    zone = draw(
        st.sampled_from(["Z", "z", "", "+00:00", "-00:00"])
        | st.builds(
            lambda sign, oh, om: f"{sign}{oh:02d}:{om:02d}",
            st.sampled_from("+-"),
            st.integers(0, 25),
            st.integers(0, 61),
        )
    )
    return f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{frac}{zone}"


NAMESPACES = (
    TEXT
    | st.integers(ROOM - 3, ROOM + 3).map(lambda n: "a" * n)
    | st.tuples(st.characters(codec="utf-8"), st.integers(14, 70)).map(lambda t: t[0] * t[1])
)
NANOS = (
    st.none()
    | st.booleans()
    | st.sampled_from([LOW_NS, HIGH_NS]).flatmap(lambda edge: st.integers(edge - 2000, edge + 2000))
)


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    name = draw(COUNTED | st.sampled_from(["PartyCreatedEvent", ""]) | JSON_VALUES)
    doc = envelope(draw(COUNTED), timestamp=draw(timestamps() | st.none()))
    doc["name"] = name
    doc["namespace"] = draw(NAMESPACES)
    doc["timestampUnixNano"] = draw(NANOS)
    if not isinstance(name, str) or name not in COUNTED_NAMES:
        doc["traceId"] = draw(COUNTED)  # so that the bytes still name a counted event
    for _ in range(draw(st.integers(0, 2))):
        field = draw(st.sampled_from([*doc.keys(), "payload.userIds", "unnamed"]))
        value = draw(JSON_VALUES)
        if field == "payload.userIds" and isinstance(doc["payload"], dict):
            doc["payload"]["userIds"] = value
        else:
            doc[field] = value
    if draw(st.booleans()):
        for key in draw(st.sets(st.sampled_from(sorted(doc)), max_size=2)):
            del doc[key]
    raw = orjson.dumps(doc)
    blanks = st.text(" \t\r\n", max_size=3).map(str.encode)
    return draw(blanks) + raw + draw(blanks)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A valid message with one byte replaced (broken syntax, bad UTF-8, stray bytes)."""
    raw = bytearray(orjson.dumps(envelope(draw(COUNTED))))
    raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw)


MESSAGES = st.one_of(
    st.none(),
    st.binary(max_size=200),
    JSON_VALUES.map(orjson.dumps),
    envelopes(),
    damaged(),
    st.tuples(st.integers(LIMIT - 2, LIMIT + 2), st.sampled_from(SHAPES), COUNTED).map(
        lambda t: _nested(t[0], t[1][0], t[1][1], b"1", name=t[2])
    ),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGES)
def test_drawn_messages(value: bytes | None) -> None:
    assert_agree(value)


# --- duplicate, late or counted: one partition's order ------------------------------------


def _partition_counts(
    values: list[bytes], window_us: int, lateness_us: int, dedup_us: int
) -> tuple:
    """(counted, duplicates, late) of one partition's messages as the job decides them (one
    batch per message: the decision must not depend on the batching) and as the reference
    does."""
    from datetime import UTC, datetime

    from flows.core.partition import PartitionState, process_batch
    from tests.test_partition import batch

    state = PartitionState(0, window_us)
    job = [0, 0, 0]
    for i, value in enumerate(values):
        c = process_batch(
            state, 0, batch([value], i), window_us=window_us, shards=2,  # type: ignore[arg-type]
            lateness_us=lateness_us, dedup_horizon_us=dedup_us, first_offset=i,
            end_offset=None, seen_at=datetime(2026, 1, 1, tzinfo=UTC),
        ).stats.counts  # fmt: skip
        job = [job[0] + c.counted, job[1] + c.duplicates, job[2] + c.late]
    ref = reference.run(
        [(0, i, v) for i, v in enumerate(values)], window_us, lateness_us, 0, dedup_us
    )
    want = (ref.counts["counted"], ref.counts["duplicates"], ref.counts["late"])
    assert tuple(job) == want, (job, want)
    return want


MIN_US = 60 * 10**6
T0_US = 1_795_000_000 * 10**6 // (60 * MIN_US) * (60 * MIN_US)  # an hour boundary


def _at(event_id: str, t_us: int) -> bytes:
    return orjson.dumps(
        envelope("PartyDisconnectedEvent", id=event_id, timestampUnixNano=t_us * 1000)
    )


@pytest.mark.parametrize(
    ("window", "lateness", "dedup", "newest", "readme"),
    [
        # the copy's 5-minute bucket ends at T0 + 5m; the horizon is max(dedup, lateness)
        (5, 10, 0, 15 * MIN_US - 1, (2, 1, 0)),  # still remembered: a duplicate
        (5, 10, 0, 15 * MIN_US, (2, 0, 1)),  # forgotten, and more than the lateness behind
        (5, 10, 30, 35 * MIN_US - 1, (2, 1, 0)),  # a longer dedup horizon remembers longer
        (5, 10, 30, 35 * MIN_US, (2, 0, 1)),
        (1, 0, 0, MIN_US - 1, (2, 1, 0)),  # no lateness: the bucket alone
        (1, 0, 0, MIN_US, (2, 0, 1)),
        (60, 120, 0, 180 * MIN_US, (2, 0, 1)),
        (60, 120, 0, 180 * MIN_US - 1, (2, 1, 0)),
    ],
)
def test_duplicate_or_late_at_the_dedup_horizon(
    window: int, lateness: int, dedup: int, newest: int, readme: tuple[int, int, int]
) -> None:
    """Job and reference agree on a copy at the edge of the dedup horizon, as the README
    states it: remembered while its bucket is not wholly before the newest time less the
    horizon; past that, so far behind, it is late."""
    values = [_at("a", T0_US), _at("z", T0_US + newest), _at("a", T0_US)]
    got = _partition_counts(values, window * MIN_US, lateness * MIN_US, dedup * MIN_US)
    assert got == readme


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 6 * 60)), min_size=1, max_size=30),
    st.sampled_from([1, 5, 7, 60]),
    st.integers(0, 90),
    st.integers(0, 120),
)
def test_drawn_partitions_are_decided_alike(
    events: list[tuple[str, int]], window: int, lateness: int, dedup: int
) -> None:
    """Ids re-used at drawn times (minutes): job and reference count, drop as duplicates
    and as late the same messages, at drawn window, lateness and dedup horizon."""
    values = [_at(event_id, T0_US + minute * MIN_US) for event_id, minute in events]
    _partition_counts(values, window * MIN_US, lateness * MIN_US, dedup * MIN_US)
