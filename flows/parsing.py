"""Turning one raw message value into a counted event, a skip, or a dead-letter reason.

Most messages on the mixed topic are other event kinds. They are skipped on the raw bytes,
without parsing: a message is only parsed when its bytes name one of the counted events.
A message that names a counted event but cannot be used, or that does not even look like a
JSON object, is a dead letter with a readable reason. Nothing raises.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import orjson
from pydantic import ValidationError

from flows.eventtime import EventTimeError, event_time_us
from flows.paths import MAX_SEGMENT_BYTES, fits_in_path
from schemas.events import ENVELOPE_ADAPTER, KIND_OF_NAME

NAMES_COUNTED = re.compile(rb'"Party(?:Disconnected|Rejoined|Dropped|Rejected)Event"')
"""A counted name as a JSON string anywhere in the bytes: the cheap pre-filter."""

_WS = b" \t\r\n"


class Event(NamedTuple):
    """A usable counted event. ``t_us`` is its event time in microseconds (UTC)."""

    t_us: int
    kind: int
    id: str
    namespace: str
    user_id: str | None
    session_id: str | None


def looks_like_object(value: bytes) -> bool:
    """True when the bytes start with ``{`` and end with ``}`` (ignoring whitespace)."""
    if value[:1] == b"{" and value[-1:] == b"}":
        return True
    stripped = value.strip(_WS)
    return stripped[:1] == b"{" and stripped[-1:] == b"}"


def classify(value: bytes | None) -> Event | str | None:
    """Classify one message value.

    Returns the Event when it is a usable counted event, ``None`` when it is another kind
    of event (skipped), or a string: the reason it is a dead letter.
    """
    if value is None:
        return "empty message (tombstone)"
    if NAMES_COUNTED.search(value) is None:
        if looks_like_object(value):
            return None
        return "not a JSON object"
    return parse_candidate(value)


def parse_candidate(value: bytes) -> Event | str | None:
    """Fully parse a message whose bytes mention a counted name.

    The fast path is orjson plus a type check of every spec field; anything it does not
    accept is decided by the pydantic model, which also words the reason.
    """
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return _validate_slowly(value)
    if type(doc) is not dict:
        return f"not a JSON object but {type(doc).__name__}"
    name = doc.get("name")
    if type(name) is str and name not in KIND_OF_NAME:
        return None  # another event that merely mentions a counted name
    if not well_typed(doc):
        return _validate_slowly(value)
    return _event(
        name,  # type: ignore[arg-type]
        doc["namespace"], doc["id"], doc.get("timestamp"), doc.get("timestampUnixNano"),
        doc.get("userId"), doc.get("sessionId"),
    )  # fmt: skip


_STR_OR_NONE = frozenset((str, type(None)))
_INT_OR_NONE = frozenset((int, type(None)))


def well_typed(doc: dict[str, Any]) -> bool:
    """True when every field of the spec has the spec's type, as the Envelope model demands."""
    get = doc.get
    ok = (
        type(get("id")) is str
        and type(get("name")) is str
        and type(get("namespace")) is str
        and type(get("timestamp")) in _STR_OR_NONE
        and type(get("timestampUnixNano")) in _INT_OR_NONE
        and type(get("userId")) in _STR_OR_NONE
        and type(get("sessionId")) in _STR_OR_NONE
        and type(get("version")) in _INT_OR_NONE
        and type(get("parentNamespace")) in _STR_OR_NONE
        and type(get("traceId")) in _STR_OR_NONE
        and type(get("spanContext")) in _STR_OR_NONE
    )
    if not ok:
        return False
    payload = get("payload")
    if payload is None:
        return True
    if type(payload) is not dict:
        return False
    pget = payload.get
    users = pget("userIds")
    return (
        type(pget("namespace")) in _STR_OR_NONE
        and type(pget("topicName")) in _STR_OR_NONE
        and type(pget("message")) in _STR_OR_NONE
        and (users is None or (type(users) is list and all(type(u) is str for u in users)))
    )


def _validate_slowly(value: bytes) -> Event | str | None:
    try:
        env = ENVELOPE_ADAPTER.validate_json(value)
    except ValidationError as err:
        return _explain(value, err)
    if env.name not in KIND_OF_NAME:
        return None
    return _event(
        env.name, env.namespace, env.id, env.timestamp, env.timestampUnixNano, env.userId,
        env.sessionId,
    )  # fmt: skip


def _event(
    name: str,
    namespace: str,
    event_id: str,
    timestamp: str | None,
    unix_nano: int | None,
    user_id: str | None,
    session_id: str | None,
) -> Event | str:
    if not namespace:
        return "no namespace: field 'namespace' is empty"
    if not fits_in_path(namespace):
        return f"namespace too long: more than {MAX_SEGMENT_BYTES} bytes once encoded for a path"
    if not event_id:
        return "no event id: field 'id' is empty"
    try:
        t_us = event_time_us(timestamp, unix_nano)
    except EventTimeError as err:
        return f"no usable event time: {err}"
    return Event(t_us, KIND_OF_NAME[name], event_id, namespace, user_id, session_id)


def _explain(value: bytes, err: ValidationError) -> str | None:
    """A one-line reason for a failed validation, or None if the message is not counted."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        if isinstance(exc.__cause__, UnicodeDecodeError) or "utf-8" in str(exc).lower():
            return "invalid UTF-8"
        return f"not JSON: {str(exc)[:200]}"
    if not isinstance(doc, dict):
        return f"not a JSON object but {type(doc).__name__}"
    name = doc.get("name")
    if isinstance(name, str) and name not in KIND_OF_NAME:
        return None  # another event kind, whatever else is wrong with it
    first = err.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "(root)"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    what = name if isinstance(name, str) else "envelope"
    return f"invalid {what}: {where}: {first['msg']}{more}"[:500]
