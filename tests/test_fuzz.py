"""Arbitrary input at the parsing step: nothing raises, every message is accounted for."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from flows.core.parsing import Event, fast_decode
from flows.core.partition import PartitionState, process_batch
from schemas.events import ENVELOPE_ADAPTER, Envelope
from tests.test_parsing import COUNTED, JSON_VALUES, TEXT, classify_checked, envelope

MIN = 60_000_000
ODD_TIMES = st.sampled_from(
    [
        "2024-05-01T23:59:60Z",  # leap second
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "2024-05-01T12:00:00+14:00",
        "2024-05-01T12:00:00.123456789-12:00",
        "2024-05-01t12:00:00z",
        "2024-05-01T12:00:00",
        "2024-02-30T00:00:00Z",
        "",
    ]
)


class Msg:
    def __init__(self, offset: int, value: bytes | None) -> None:
        self._o, self._v = offset, value

    def value(self) -> bytes | None:
        return self._v

    def key(self) -> bytes | None:
        return b"k"

    def offset(self) -> int:
        return self._o


@st.composite
def valid_events(draw: st.DrawFn) -> bytes:
    doc = envelope(
        draw(COUNTED),
        id=draw(st.sampled_from(["a", "b", "c", "d", "e"])),  # a small pool: duplicates
        namespace=draw(st.sampled_from(["n1", "n2", "../x"])),
    )
    t = 1_714_564_800_000_000 + draw(st.integers(0, 60)) * MIN
    doc["timestampUnixNano"] = t * 1000
    return orjson.dumps(doc)


@st.composite
def odd_envelopes(draw: st.DrawFn) -> bytes:
    doc = envelope(draw(COUNTED), timestamp=draw(ODD_TIMES))
    field = draw(st.sampled_from(["id", "namespace", "userId", "version", "payload", "name"]))
    doc[field] = draw(JSON_VALUES)
    return orjson.dumps(doc)


def _deep(n: int) -> bytes:
    return b'{"name":"PartyDroppedEvent","x":' + b"[" * n + b"]" * n + b"}"


MESSAGES = st.one_of(
    st.none(),
    st.binary(max_size=300),
    JSON_VALUES.map(orjson.dumps),
    valid_events(),
    odd_envelopes(),
    st.integers(1, 300).map(_deep),
    st.builds(lambda n, s: orjson.dumps(envelope(n, userId=s * 50_000)), COUNTED, TEXT),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MESSAGES, max_size=40), st.lists(MESSAGES, max_size=40))
def test_every_message_ends_counted_skipped_or_dead_lettered(
    first: list[bytes | None], second: list[bytes | None]
) -> None:
    state = PartitionState(0, 5 * MIN)
    offset = 0
    for values in (first, second):
        msgs = [Msg(offset + i, v) for i, v in enumerate(values)]
        offset += len(values)
        result = process_batch(
            state, 0, msgs, window_us=5 * MIN, shards=4, lateness_us=10 * MIN,
            dedup_horizon_us=10 * MIN, first_offset=0, end_offset=None,
            seen_at=datetime(2024, 5, 2, tzinfo=UTC),
        )  # fmt: skip
        c = result.stats.counts
        assert c.messages == len(values)
        assert c.counted + c.skipped + c.duplicates + c.late + c.dead_letters == c.messages
        assert c.before_start == 0  # no start given
        assert len(result.dead) == c.dead_letters
        assert len(result.late) == c.late
        folded = sum(sum(w[:4]) for _key, part in result.parts for w in part.windows.values())
        fresh = len(result.progress.fresh) if result.progress else 0
        assert folded + fresh == c.counted
        assert all(row["error"] for row in result.dead)


FIELDS = [*envelope().keys(), "timestampUnixNano", "payload.userIds", "unnamedField"]


def _by_the_model(raw: bytes) -> Envelope | None:
    try:
        return ENVELOPE_ADAPTER.validate_json(raw)
    except ValidationError:
        return None


def _agrees_with_the_model(raw: bytes) -> None:
    env = _by_the_model(raw)
    fast = fast_decode(raw)
    assert (fast is None) == (env is None)
    if fast is not None and env is not None:
        assert msgspec.to_builtins(fast) == env.model_dump()  # payload included


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(FIELDS), replacement=JSON_VALUES)
def test_fast_decoder_agrees_with_the_model(field: str, replacement: Any) -> None:
    """The fast decoder accepts exactly what the pydantic Envelope model accepts, with the
    same values (the struct is built from the model, so a new field cannot be missed)."""
    doc = envelope()
    if field.startswith("payload."):
        doc["payload"][field.split(".", 1)[1]] = replacement
    else:
        doc[field] = replacement
    _agrees_with_the_model(orjson.dumps(doc))


@settings(max_examples=300, deadline=None)
@given(at=st.integers(min_value=0), byte=st.integers(min_value=0, max_value=255))
def test_fast_decoder_agrees_on_damaged_bytes(at: int, byte: int) -> None:
    """One byte of a valid message replaced by any byte: invalid UTF-8, broken syntax,
    control characters in strings; the decoder and the model still agree."""
    raw = bytearray(orjson.dumps(envelope(unnamedField="x")))
    raw[at % len(raw)] = byte
    _agrees_with_the_model(bytes(raw))


@pytest.mark.parametrize("depth", [150, 198, 199, 200, 201, 254, 500, 1000, 100_000])
@pytest.mark.parametrize(("opener", "inner", "closer"), [(b"[", b"", b"]"), (b'{"a":', b"1", b"}")])
def test_deep_nesting(depth: int, opener: bytes, inner: bytes, closer: bytes) -> None:
    """Deeply nested JSON in a field the job ignores: whatever the fast decoder accepts the
    model accepts too, the result is the model's, and nothing raises. The limit is the
    README's exactly: no value inside more than 200 arrays and objects."""
    raw = (
        orjson.dumps(envelope())[:-1] + b',"deep":' + opener * depth + inner + closer * depth + b"}"
    )
    model_ok = _by_the_model(raw) is not None
    assert fast_decode(raw) is None or model_ok
    assert isinstance(classify_checked(raw), Event) == model_ok
    # The deepest value: the innermost empty array sits in the envelope and depth - 1
    # arrays; the innermost 1 in the envelope and depth objects.
    inside = depth + 1 if inner else depth
    assert model_ok == (inside <= 200)


@pytest.mark.parametrize("size_mb", [4])
def test_very_large_message(size_mb: int) -> None:
    big = orjson.dumps(envelope(traceId="x" * (size_mb * 2**20)))
    state = PartitionState(0, 5 * MIN)
    result = process_batch(
        state, 0, [Msg(0, big), Msg(1, None)], window_us=5 * MIN, shards=4,
        lateness_us=10 * MIN, dedup_horizon_us=10 * MIN, first_offset=0, end_offset=None,
        seen_at=datetime(2024, 5, 2, tzinfo=UTC),
    )  # fmt: skip
    assert result.stats.counts.counted == 1
    assert result.dead[0]["error"] == "empty message (tombstone)"
