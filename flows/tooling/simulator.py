"""A realistic simulated session-history topic, shared by the demo, the tests and the bench.

It models what the publisher does: a mixed topic (other Party*, GameSession*, Matchmaking*
and Metric* events around the four counted ones), disconnects followed by a quick rejoin
or, after the namespace's inactive timeout, a drop, invite rejections, the three timestamp
formats, random keys (the event id), at-least-once re-sends (same key), publish jitter, a
few events re-published long after their time (late) and a few malformed messages.

Everything is derived from the seed: the same config gives the same messages.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple

import orjson
from confluent_kafka import Producer

from flows.core.eventtime import US_PER_S

OTHER_NAMES = (
    "PartyCreatedEvent", "PartyJoinedEvent", "PartyLeaveEvent", "PartyInvitedEvent",
    "PartyMembersChangedEvent", "PartyUpdatedEvent", "PartyKickedEvent",
    "PartyLeaderChangedEvent", "GameSessionCreatedEvent", "GameSessionUpdatedEvent",
    "GameSessionEndedEvent", "GameSessionJoinedEvent", "GameSessionMembersChangedEvent",
    "GameSessionDSStatusChangedEvent", "MatchmakingStartedEvent", "MatchFoundEvent",
    "BackfillProposalEvent", "MatchmakingTicketExpiredEvent", "MetricSessionCountEvent",
    "MatchHistoryEvent",
)  # fmt: skip
DAY_START = datetime(2026, 11, 27, tzinfo=UTC)
LATE_DELAY_US = 2 * 3600 * US_PER_S
_PLUS_7 = timezone(timedelta(hours=7))


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. ``messages`` is the approximate total, all kinds included."""

    messages: int = 200_000
    namespaces: int = 60
    hours: float = 24.0
    start: datetime = DAY_START
    seed: int = 7
    other_share: float = 0.6
    duplicate_rate: float = 0.01
    late_rate: float = 0.001
    malformed_rate: float = 0.0005
    namespace_names: tuple[str, ...] = field(default=())
    hot_share: float = 0.0
    """When above 0: the share of the traffic of the first namespace (one big game)."""


class SimMessage(NamedTuple):
    key: bytes
    value: bytes
    publish_us: int


class Truth(NamedTuple):
    """What the simulator knows about the messages it made, exact under the README's rules.

    ``late`` counts late messages (a re-send of a late event is late too), ``duplicates``
    the re-sends of counted events, ``malformed`` the dead letters.
    """

    late_ids: set[str]
    late: int
    malformed: int
    duplicates: int


def _rfc3339(us: int, rng: random.Random, with_nanos: bool) -> str:
    dt = datetime.fromtimestamp(us // US_PER_S, tz=UTC)
    frac = ""
    if with_nanos:
        frac = ("." + f"{us % US_PER_S:06d}{rng.randrange(1000):03d}").rstrip("0").rstrip(".")
    if rng.random() < 0.1:
        # The same instant in a numeric offset (real traffic has both).
        return dt.astimezone(_PLUS_7).strftime("%Y-%m-%dT%H:%M:%S") + frac + "+07:00"
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"


def envelope(
    rng: random.Random, name: str, ns: str, t_us: int, user: str, party: str
) -> dict[str, Any]:
    """One envelope as the publishing library writes it, in one of three timestamp forms."""
    event_id = f"{rng.getrandbits(128):032x}"
    form = rng.random()
    doc: dict[str, Any] = {
        "id": event_id,
        "version": 1,
        "name": name,
        "namespace": ns,
        "parentNamespace": "studio",
        "timestamp": _rfc3339(t_us, rng, with_nanos=0.33 <= form < 0.66),
        "userId": user,
        "traceId": f"{rng.getrandbits(64):016x}",
        "sessionId": party,
        "spanContext": "",
        "payload": {
            "userIds": [user],
            "namespace": ns,
            "topicName": "mpv2SessionHistory",
            "message": base64.b64encode(
                orjson.dumps(
                    {"payload": {"ID": party, "Members": [{"ID": user, "Status": "JOINED"}]}}
                )
            ).decode(),
        },
        "clientId": "session-service",
        "unionNamespace": ns,
    }
    if form >= 0.66:
        doc["timestampUnixNano"] = t_us * 1000 + rng.randrange(1000)
    return doc


def namespace_names(cfg: SimConfig) -> list[str]:
    if cfg.namespace_names:
        return list(cfg.namespace_names)
    return [f"game-{i:03d}" for i in range(cfg.namespaces)]


def generate(cfg: SimConfig) -> tuple[list[SimMessage], Truth]:
    """All messages in publish order, and what is known about them."""
    rng = random.Random(cfg.seed)
    names = namespace_names(cfg)
    weights = [1.0 / (i + 1) ** 0.8 for i in range(len(names))]  # a few big games, a long tail
    if cfg.hot_share > 0:
        rest = sum(weights[1:])
        weights = [cfg.hot_share] + [(1 - cfg.hot_share) * w / rest for w in weights[1:]]
    timeouts = {ns: rng.choice((60, 90, 120, 180)) * US_PER_S for ns in names}
    start_us = int(cfg.start.timestamp()) * US_PER_S
    span_us = int(cfg.hours * 3600 * US_PER_S)
    docs: list[tuple[int, dict[str, Any]]] = []  # (publish time, envelope)

    counted_target = int(cfg.messages * (1 - cfg.other_share))
    while len(docs) < counted_target:
        ns = rng.choices(names, weights)[0]
        t = start_us + rng.randrange(span_us)
        user, party = f"u{rng.randrange(10**9):09d}", f"p{rng.randrange(10**8):08d}"
        if rng.random() < 0.08:
            docs.append((t, envelope(rng, "PartyRejectedEvent", ns, t, user, party)))
            continue
        docs.append((t, envelope(rng, "PartyDisconnectedEvent", ns, t, user, party)))
        if rng.random() < 0.7:  # network blip: the SDK reconnects within seconds
            t2 = t + rng.randrange(1, 20 * US_PER_S)
            docs.append((t2, envelope(rng, "PartyRejoinedEvent", ns, t2, user, party)))
        else:
            t2 = t + timeouts[ns]
            docs.append((t2, envelope(rng, "PartyDroppedEvent", ns, t2, user, party)))
    others = int(len(docs) * cfg.other_share / (1 - cfg.other_share))
    for _ in range(others):
        ns = rng.choices(names, weights)[0]
        t = start_us + rng.randrange(span_us)
        name = rng.choice(OTHER_NAMES)
        docs.append((t, envelope(rng, name, ns, t, f"u{rng.randrange(10**9):09d}", "")))

    late_ids: set[str] = set()
    out: list[tuple[int, bytes, bytes]] = []
    counted_keys: set[bytes] = set()
    # A late event is re-published two hours after its time. Only events whose re-publish
    # falls well inside the simulated span are made late: after the span ends, its
    # partition may have no newer event to be late against (the rule could not see it).
    late_until = start_us + span_us - LATE_DELAY_US - 30 * 60 * US_PER_S
    for t, doc in docs:
        publish = t + rng.randrange(5 * US_PER_S)  # publisher batching jitter
        key = doc["id"].encode()
        if doc["name"] in _COUNTED:
            if rng.random() < cfg.late_rate and t < late_until:
                publish = t + LATE_DELAY_US
                late_ids.add(doc["id"])
            else:
                counted_keys.add(key)
        out.append((publish, key, orjson.dumps(doc)))
    late, duplicates = len(late_ids), 0
    for publish, key, value in list(out):
        if rng.random() < cfg.duplicate_rate:
            out.append((publish + rng.randrange(1, 3 * US_PER_S), key, value))
            if key in counted_keys:
                duplicates += 1
            elif key.decode() in late_ids:  # a re-send of a late event is late too
                late += 1
    malformed = 0
    for i in range(int(len(out) * cfg.malformed_rate)):
        t = start_us + rng.randrange(span_us)
        out.append((t, f"bad-{i}".encode(), _malformed(rng, i, t)))
        malformed += 1
    out.sort(key=lambda m: m[0])
    return [SimMessage(k, v, p) for p, k, v in out], Truth(late_ids, late, malformed, duplicates)


_COUNTED = {
    "PartyDisconnectedEvent",
    "PartyRejoinedEvent",
    "PartyDroppedEvent",
    "PartyRejectedEvent",
}


def _malformed(rng: random.Random, i: int, t_us: int) -> bytes:
    kinds = (
        b'{"name": "PartyDroppedEvent", "id": "x", "namespace": ',  # truncated JSON
        b'{"name":"PartyDisconnectedEvent","id":"bad-%d","namespace":"game-000","timestamp":"yesterday"}'
        % i,
        b'{"name":"PartyRejoinedEvent","id":"bad-%d","namespace":"","timestamp":"2026-11-27T00:00:00Z"}'
        % i,
        b'{"name":"PartyDisconnectedEvent","id":"bad-%d","namespace":"game-000","version":"one",'
        b'"timestamp":"2026-11-27T00:00:00Z"}' % i,
        b"\xff\xfe not even text",
    )
    return kinds[i % len(kinds)]


def produce(
    bootstrap: str,
    topic: str,
    messages: Iterable[SimMessage],
    config: dict[str, str | int] | None = None,
) -> int:
    """Produce messages keyed by event id (so re-sends land on the same partition)."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
            "compression.type": "none",
            **(config or {}),
        }
    )
    n = 0
    for msg in messages:
        while True:
            try:
                producer.produce(topic, key=msg.key, value=msg.value)
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
        if n % 10_000 == 0:
            producer.poll(0)
    remaining = producer.flush(60)
    if remaining:
        raise RuntimeError(f"{remaining} messages not delivered to {topic}")
    return n


def chunks(messages: list[SimMessage], parts: int) -> Iterator[list[SimMessage]]:
    """Split messages into ``parts`` consecutive slices (for split-run tests)."""
    size = -(-len(messages) // parts)
    for i in range(0, len(messages), size):
        yield messages[i : i + size]
