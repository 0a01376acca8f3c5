"""classify(): counted events, skips and dead-letter reasons; never raising on any input."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.core.eventtime import US_PER_S, parse_rfc3339_us
from flows.core.parsing import NAMES_COUNTED, Event, classify
from schemas.events import COUNTED_NAMES, KIND_OF_NAME

T_US = parse_rfc3339_us("2024-05-01T12:34:56Z")


def envelope(name: str = "PartyDisconnectedEvent", **overrides: Any) -> dict[str, Any]:
    """A complete envelope as the spec page lists it; ``overrides`` replace fields."""
    doc: dict[str, Any] = {
        "payload": {
            "userIds": ["user-1", "user-2"],
            "namespace": "game-a",
            "topicName": "party",
            "message": base64.b64encode(b'{"payload": {"ID": "party-1"}}').decode(),
        },
        "id": "evt-1",
        "version": 1,
        "name": name,
        "namespace": "game-a",
        "parentNamespace": "studio",
        "timestamp": "2024-05-01T12:34:56Z",
        "userId": "user-1",
        "traceId": "trace-1",
        "sessionId": "party-1",
        "spanContext": "",
    }
    doc.update(overrides)
    return doc


def dumps(doc: Any) -> bytes:
    return orjson.dumps(doc)


# --- counted events ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", COUNTED_NAMES)
def test_counted_event(name: str) -> None:
    result = classify(dumps(envelope(name)))
    assert result == Event(T_US, KIND_OF_NAME[name], "evt-1", "game-a", "user-1", "party-1")


def test_kinds_are_distinct_and_ordered() -> None:
    kinds = [KIND_OF_NAME[n] for n in COUNTED_NAMES]
    assert kinds == [0, 1, 2, 3]
    for name, kind in KIND_OF_NAME.items():
        result = classify(dumps(envelope(name)))
        assert isinstance(result, Event)
        assert result.kind == kind


def test_unix_nano_is_preferred() -> None:
    nanos = T_US * 1000 + 42 * US_PER_S * 1000 + 999
    result = classify(dumps(envelope(timestampUnixNano=nanos)))
    assert isinstance(result, Event)
    assert result.t_us == T_US + 42 * US_PER_S


def test_unix_nano_alone_is_enough() -> None:
    doc = envelope()
    del doc["timestamp"]
    result = classify(dumps(doc | {"timestampUnixNano": T_US * 1000}))
    assert isinstance(result, Event)
    assert result.t_us == T_US


def test_optional_fields_may_be_missing_and_extra_fields_are_ignored() -> None:
    doc = {
        "id": "evt-9",
        "name": "PartyRejoinedEvent",
        "namespace": "game-b",
        "timestamp": "2024-05-01T12:34:56.123456789+02:00",
        "clientId": "c",
        "additional_fields": {"x": [1, 2]},
    }
    result = classify(dumps(doc))
    assert result == Event(
        T_US - 2 * 3600 * US_PER_S + 123_456, KIND_OF_NAME["PartyRejoinedEvent"], "evt-9",
        "game-b", None, None,
    )  # fmt: skip


def test_whitespace_around_the_object() -> None:
    result = classify(b"\n  " + dumps(envelope()) + b" \r\n")
    assert isinstance(result, Event)


# --- skipped: other event kinds ----------------------------------------------------------------


def test_other_names_are_skipped_without_mentioning_a_counted_name() -> None:
    value = dumps(envelope("PartyCreatedEvent"))
    assert NAMES_COUNTED.search(value) is None
    assert classify(value) is None


@pytest.mark.parametrize(
    "message",
    [
        "PartyDisconnectedEvent",
        '{"name": "PartyDroppedEvent"}',
        "see PartyRejectedEvent",
    ],
)
def test_other_names_mentioning_a_counted_name_in_the_message_are_skipped(message: str) -> None:
    doc = envelope("PartyMembersChangedEvent")
    doc["payload"]["message"] = message
    value = dumps(doc)
    if message == "PartyDisconnectedEvent":
        # the counted name appears as a JSON string: the full parse path is taken
        assert NAMES_COUNTED.search(value) is not None
    assert classify(value) is None


def test_other_names_mentioning_a_counted_name_are_skipped_even_when_invalid() -> None:
    doc = envelope("GameSessionUpdatedEvent", version="1")
    doc["payload"]["message"] = "PartyDroppedEvent"
    del doc["id"]
    value = dumps(doc)
    assert NAMES_COUNTED.search(value) is not None
    assert classify(value) is None


@pytest.mark.parametrize("value", [b"{}", b'{"name": "MatchFoundEvent"}', b" {not json} "])
def test_objects_without_a_counted_name_are_skipped(value: bytes) -> None:
    assert classify(value) is None


def test_counted_name_in_another_field_only() -> None:
    """A message of another kind whose ``userId`` equals a counted name is not counted."""
    value = dumps(envelope("PartyJoinedEvent", userId="PartyDisconnectedEvent"))
    assert NAMES_COUNTED.search(value) is not None
    assert classify(value) is None


# --- dead letters -------------------------------------------------------------------------------


def assert_reason(result: object, *keywords: str) -> None:
    assert isinstance(result, str), f"expected a dead-letter reason, got {result!r}"
    assert result.strip(), "empty reason"
    assert "\n" not in result, f"reason is not one line: {result!r}"
    assert len(result) <= 500
    assert "errors.pydantic.dev" not in result
    lowered = result.lower()
    assert any(k.lower() in lowered for k in keywords), f"{result!r} lacks any of {keywords}"


def test_tombstone() -> None:
    assert_reason(classify(None), "tombstone")


@pytest.mark.parametrize(
    "value", [b"", b"hello", b"\x00\x01\x02", b"42", b'"PartyCreatedEvent"', b"[1, 2]", b"\xff\xfe"]
)
def test_not_an_object(value: bytes) -> None:
    assert_reason(classify(value), "not a JSON object")


def test_non_json_mentioning_a_counted_name() -> None:
    value = b'{"name": "PartyDisconnectedEvent", "id": oops}'
    assert_reason(classify(value), "not JSON")


def test_truncated_json() -> None:
    value = dumps(envelope())[:-20]
    assert_reason(classify(value), "not JSON")


def test_invalid_utf8() -> None:
    value = dumps(envelope(userId="X")).replace(b'"X"', b'"\xff\xfe"')
    assert_reason(classify(value), "UTF-8")


def test_json_array() -> None:
    value = dumps([envelope()])
    assert_reason(classify(value), "list", "array", "object")


def test_json_string_of_a_counted_name() -> None:
    assert_reason(classify(b'"PartyDroppedEvent"'), "str", "object")


def test_missing_namespace() -> None:
    doc = envelope()
    del doc["namespace"]
    assert_reason(classify(dumps(doc)), "namespace")


def test_empty_namespace() -> None:
    assert_reason(classify(dumps(envelope(namespace=""))), "namespace")


def test_missing_id() -> None:
    doc = envelope()
    del doc["id"]
    assert_reason(classify(dumps(doc)), "id")


def test_empty_id() -> None:
    assert_reason(classify(dumps(envelope(id=""))), "event id")


def test_version_as_string() -> None:
    reason = classify(dumps(envelope(version="1")))
    assert_reason(reason, "version")
    assert_reason(reason, "integer")


def test_user_id_as_number() -> None:
    reason = classify(dumps(envelope(userId=5)))
    assert_reason(reason, "userId")
    assert_reason(reason, "string")


def test_namespace_as_number() -> None:
    assert_reason(classify(dumps(envelope(namespace=7))), "namespace")


def test_payload_user_ids_wrong_type() -> None:
    doc = envelope()
    doc["payload"]["userIds"] = "user-1"
    assert_reason(classify(dumps(doc)), "payload.userIds")


def test_several_errors_are_summarised() -> None:
    reason = classify(dumps(envelope(version="1", userId=5)))
    assert_reason(reason, "+1 more")


def test_missing_timestamp() -> None:
    doc = envelope()
    del doc["timestamp"]
    assert_reason(classify(dumps(doc)), "time")


def test_bad_timestamp() -> None:
    assert_reason(classify(dumps(envelope(timestamp="yesterday"))), "RFC 3339")


def test_timestamp_out_of_range() -> None:
    assert_reason(classify(dumps(envelope(timestamp="9999-12-31T23:59:59Z"))), "range")


def test_unix_nano_as_string() -> None:
    assert_reason(classify(dumps(envelope(timestampUnixNano="1714566896000000000"))), "timestamp")


def test_non_string_name_is_a_dead_letter() -> None:
    """A ``name`` that is an array or object (unhashable) is a dead letter, not a crash."""
    raised = {}
    bad_names: list[Any] = [["PartyDisconnectedEvent"], {"PartyDroppedEvent": 1}, []]
    for bad_name in bad_names:
        doc = envelope(parentNamespace="PartyRejoinedEvent")
        doc["name"] = bad_name
        value = dumps(doc)
        assert NAMES_COUNTED.search(value) is not None
        try:
            result = classify(value)
        except TypeError as exc:
            raised[value] = repr(exc)
        else:
            assert isinstance(result, str)
            assert "name" in result
    assert raised == {}, f"classify raised instead of returning a reason: {raised}"


# --- properties: classify never raises ---------------------------------------------------------

COUNTED = st.sampled_from(COUNTED_NAMES)
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=20) | COUNTED
JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)


def classify_checked(value: bytes | None) -> Event | str | None:
    try:
        result = classify(value)
    except Exception as exc:
        raise AssertionError(f"classify raised {exc!r} for {value!r}") from exc
    assert result is None or isinstance(result, Event | str), result
    if isinstance(result, Event):
        assert result.id
        assert result.namespace
        assert result.kind in KIND_OF_NAME.values()
    if isinstance(result, str):
        assert result
    return result


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=200)
    | st.builds(lambda a, n, b: a + b'"' + n.encode() + b'"' + b, st.binary(), COUNTED, st.binary())
)
def test_never_raises_on_bytes(value: bytes) -> None:
    classify_checked(value)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_never_raises_on_json_values(doc: Any) -> None:
    classify_checked(dumps(doc))


NEAR_VALID_FIELDS = [*envelope().keys(), "timestampUnixNano"]
PAYLOAD_FIELDS = list(envelope()["payload"].keys())


@settings(max_examples=300, deadline=None)
@given(
    name=COUNTED,
    where=st.sampled_from(
        [("top", f) for f in NEAR_VALID_FIELDS] + [("payload", f) for f in PAYLOAD_FIELDS]
    ),
    replacement=JSON_VALUES,
)
def test_never_raises_on_near_valid_envelopes(
    name: str, where: tuple[str, str], replacement: Any
) -> None:
    doc = envelope(name)
    # keep a counted name in the bytes so the full parse path is always taken
    doc["parentNamespace"] = name
    level, field = where
    (doc if level == "top" else doc["payload"])[field] = replacement
    result = classify_checked(dumps(doc))
    if level == "top" and field == "name" and replacement in COUNTED_NAMES:
        assert isinstance(result, Event)


def test_a_namespace_too_long_for_a_directory_name_is_counted() -> None:
    """The namespace is a column of the output, not a directory (output format 2)."""
    from urllib.parse import quote

    long_ns = "名" * 3000  # 27,000 bytes once percent-encoded
    assert len(quote(long_ns, safe="")) > 255
    result = classify(dumps(envelope(namespace=long_ns)))
    assert isinstance(result, Event)
    assert result.namespace == long_ns
