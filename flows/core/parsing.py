"""Turning one raw message value into a counted event, a skip, or a dead-letter reason.

Most messages on the mixed topic are other event kinds. They are skipped on the raw bytes,
without parsing: a message is only parsed when its bytes name one of the counted events.
A message that names a counted event but cannot be used, or that does not even look like a
JSON object, is a dead letter with a readable reason. Nothing raises.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple, Union, get_args, get_origin

import msgspec
import orjson
from pydantic import BaseModel, ValidationError

from flows.core.eventtime import (
    MAX_EVENT_US,
    MIN_EVENT_US,
    EventTimeError,
    event_time_us,
    parse_rfc3339_us,
)
from schemas.events import ENVELOPE_ADAPTER, KIND_OF_NAME, Envelope

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


_new_event = partial(tuple.__new__, Event)
"""An Event from a plain tuple of its fields, without a Python-level call (hot path)."""


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

    The fast path decodes the bytes straight into a struct with the Envelope model's fields
    and types; anything it does not accept is decided by the pydantic model, which also
    words the reason. The usual case, a valid counted event, is handled in this one
    function (the partition step calls it for about 40 % of the topic); anything unusual
    goes to the helpers that word the reasons.
    """
    # fast_decode, inline (one Python call fewer for each of about 40 % of the topic)
    if len(value) - len(value.translate(None, b"[{")) > _MAX_OPENERS:
        return _validate_slowly(value)
    try:
        if not value.isascii():
            value.decode()  # the decoder skips unnamed fields without checking their UTF-8
        env = _decode(value)
    except (msgspec.MsgspecError, ValueError):
        return _validate_slowly(value)
    kind = KIND_OF_NAME.get(env.name)
    if kind is None:
        return None  # another event that merely mentions a counted name
    namespace, event_id, nano = env.namespace, env.id, env.timestampUnixNano
    if namespace and event_id:
        try:
            if nano is not None:
                t_us = nano // 1000
            elif env.timestamp is not None:
                t_us = parse_rfc3339_us(env.timestamp)
            else:
                t_us = -1
        except EventTimeError:
            t_us = -1
        if MIN_EVENT_US <= t_us < MAX_EVENT_US:
            return _new_event((t_us, kind, event_id, namespace, env.userId, env.sessionId))
    return _event(
        env.name, namespace, event_id, env.timestamp, nano, env.userId, env.sessionId
    )  # words the reason


def _fast_type(annotation: Any) -> Any:
    """The annotation with every pydantic model in it replaced by its fast struct."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return fast_struct(annotation)
    args = get_args(annotation)
    if not args:
        return annotation
    fast = tuple(_fast_type(a) for a in args)
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return Union[fast]  # noqa: UP007 (built from a tuple)
    return origin[fast[0] if len(fast) == 1 else fast]


def fast_struct(model: type[BaseModel]) -> type[msgspec.Struct]:
    """A msgspec struct with the model's fields, types and defaults.

    Decoding into it checks what the (strict, extra-ignoring) model checks, in one pass over
    the bytes and without building the fields the model does not name.
    """
    fields = [
        (name, _fast_type(f.annotation))
        if f.is_required()
        else (name, _fast_type(f.annotation), f.default)
        for name, f in model.model_fields.items()
    ]
    return msgspec.defstruct(model.__name__, fields, kw_only=True, gc=False)


_decode: Callable[[bytes], Any] = msgspec.json.Decoder(fast_struct(Envelope)).decode


_MAX_OPENERS = 128
"""More ``[``/``{`` than this and the model decides: it refuses JSON nested deeper than about
200 levels, which the struct decoder would accept (nesting depth <= the number of openers)."""


def fast_decode(value: bytes) -> Any | None:
    """The message decoded into the Envelope's fast struct, or None if it does not decode
    (:func:`parse_candidate` does the same inline)."""
    # The number of openers, counted by deleting them (one C pass; bytes.count is slower).
    if len(value) - len(value.translate(None, b"[{")) > _MAX_OPENERS:
        return None
    try:
        if not value.isascii():
            value.decode()  # the decoder skips unnamed fields without checking their UTF-8
        return _decode(value)
    except (msgspec.MsgspecError, ValueError):
        return None


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
        # NaN, Infinity and numbers beyond a double, which the decoders read as numbers
        try:
            doc = json.loads(value)
        except (ValueError, RecursionError):
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
