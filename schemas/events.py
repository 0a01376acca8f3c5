"""Pydantic models of the session-history envelope and the four counted Party events.

Field names and types follow the topic's AsyncAPI page (``mpv2SessionHistory``). Every
field the page lists is typed as it says; additional properties are allowed and ignored.
Types are strict: a string where the page says integer is an error, not a coercion.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter

COUNTED_NAMES: tuple[str, ...] = (
    "PartyDisconnectedEvent",
    "PartyRejoinedEvent",
    "PartyDroppedEvent",
    "PartyRejectedEvent",
)
"""The event names the job counts, in the order used for their integer kind."""

DISCONNECTED, REJOINED, DROPPED, REJECTED = range(4)
KIND_OF_NAME: dict[str, int] = {name: i for i, name in enumerate(COUNTED_NAMES)}


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class Payload(_Model):
    """The notification sent to ``userIds``; ``message`` is often base64-encoded JSON."""

    userIds: list[str] | None = None
    namespace: str | None = None
    topicName: str | None = None
    message: str | None = None


class Envelope(_Model):
    """The envelope every message on the topic shares.

    ``timestampUnixNano`` is not on the spec page; newer publishers add it and it is
    preferred over ``timestamp`` when present.
    """

    id: str
    version: int | None = None
    name: str
    namespace: str
    parentNamespace: str | None = None
    timestamp: str | None = None
    timestampUnixNano: int | None = None
    userId: str | None = None
    traceId: str | None = None
    sessionId: str | None = None
    spanContext: str | None = None
    payload: Payload | None = None


class PartyDisconnectedEvent(Envelope):
    """A party member's lobby connection dropped; the member is DISCONNECTED."""

    name: Literal["PartyDisconnectedEvent"]


class PartyRejoinedEvent(Envelope):
    """The member reconnected within the session template's inactive timeout."""

    name: Literal["PartyRejoinedEvent"]


class PartyDroppedEvent(Envelope):
    """The inactive timeout passed first; the member was removed from the party."""

    name: Literal["PartyDroppedEvent"]


class PartyRejectedEvent(Envelope):
    """An invitation to the party was rejected (not a connection problem)."""

    name: Literal["PartyRejectedEvent"]


EVENT_MODELS: dict[str, type[Envelope]] = {
    "PartyDisconnectedEvent": PartyDisconnectedEvent,
    "PartyRejoinedEvent": PartyRejoinedEvent,
    "PartyDroppedEvent": PartyDroppedEvent,
    "PartyRejectedEvent": PartyRejectedEvent,
}

ENVELOPE_ADAPTER: TypeAdapter[Envelope] = TypeAdapter(Envelope)
