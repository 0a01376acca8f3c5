"""A realistic simulated session-history topic, shared by the demo, the tests and the bench.

It models what the publisher does: a mixed topic (other Party*, GameSession*, Matchmaking*
and Metric* events around the four counted ones), disconnects followed by a quick rejoin
or, after the namespace's inactive timeout, a drop, invite rejections, the three timestamp
formats, random keys (the event id), at-least-once re-sends (same key), publish jitter, a
few events re-published long after their time (late) and a few malformed messages.

And what the players do, in the default ``shape="day"``: each game has a home time zone
and its traffic peaks in that evening; games differ in drop tendency, inactive timeout,
rejoin time and share of flapping players (several disconnects seconds apart, some before
any outcome, which supersede the earlier one); the last namespace is a quiet game; and a
few busy games have an incident, an hour or so in which their players' disconnects end in
a drop several times as often as usual. ``Truth`` lists the incidents and the games.
``shape="flat"`` is the former uniform traffic, message for message.

Everything is derived from the seed: the same config gives the same messages.
"""

from __future__ import annotations

import base64
import logging
import math
import random
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from itertools import accumulate
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


SHAPES = ("day", "flat")
MIN_US = 60 * US_PER_S
UTC_OFFSETS = (-8, -6, -5, -3, 0, 1, 2, 3, 7, 8, 9)
"""Hours from UTC of the games' home regions: the Americas, Europe, Asia."""
NIGHT_FLOOR = 0.2
"""A game's traffic at its quietest hour, as a share of its evening peak."""
QUIET_SHARE = 0.05
"""The last namespace's weight relative to its place in the long tail (the quiet game)."""
REJECTED_SHARE = 0.08
"""Share of the counted-event episodes that are invite rejections."""


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. ``messages`` is the approximate total, all kinds included.

    ``shape="day"`` (the default) is a realistic day: each game has its own evening peak,
    drop tendency, inactive timeout and share of flapping players; the last namespace is a
    quiet game; ``incidents`` games have an incident (drop probability several times their
    usual for about an hour). ``shape="flat"`` is the former uniform traffic (every game
    drops 30% of its disconnects at any hour, one disconnect per player, no incident),
    message for message, for benchmarks that compare with figures measured on it.
    """

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
    shape: str = "day"
    incidents: int = 2
    """How many games have an incident (``shape="day"`` only); 0 for a day without."""
    anonymous_rate: float = 0.0
    """Share of the counted events published without a usable ``userId`` or ``sessionId``
    (left out, null or empty): counted, but in no distinct count or outcome that needs it."""
    stale_resend_rate: float = 0.0
    """Share of the messages re-sent (same key and value) ``stale_resend_hours`` after
    their first publish, past the dedup horizon: such a copy of a counted event is late,
    not a duplicate."""
    stale_resend_hours: float = 3.0


class SimMessage(NamedTuple):
    key: bytes
    value: bytes
    publish_us: int


class Game(NamedTuple):
    """One simulated game (namespace) of a ``shape="day"`` simulation."""

    namespace: str
    share: float
    """Expected share of the traffic."""
    peak_hour_utc: float
    """Hour of day (UTC) of its evening peak."""
    drop_probability: float
    """Chance that a player's disconnect ends in a drop, outside incidents."""
    inactive_timeout_s: int
    """Seconds from a disconnect to its drop."""
    flapping: float
    """Share of disconnected players whose connection flaps (several disconnects)."""
    rejoin_seconds: float
    """Mean seconds from a disconnect to the SDK's rejoin (plus one second)."""


class Incident(NamedTuple):
    """A stretch ``[start, end)`` where one game's players dropped far more than usual.

    A player's disconnect in it (the last one, for a flapping player) ends in a drop with
    ``drop_probability`` instead of the game's ``usual_drop_probability``.
    """

    namespace: str
    start: datetime
    end: datetime
    usual_drop_probability: float
    drop_probability: float


class Truth(NamedTuple):
    """What the simulator knows about the messages it made, exact under the README's rules.

    ``late`` counts late messages (a re-send of a late event is late too, and so is a stale
    re-send of a counted one, while the dedup horizon and the window add up to at most
    ``stale_resend_hours`` less an hour), ``late_ids`` their ids, ``duplicates`` the quick
    re-sends of counted events, ``malformed`` the dead letters. ``incidents`` are the
    incidents it made and ``games`` the games' settings (both empty for ``shape="flat"``).
    """

    late_ids: set[str]
    late: int
    malformed: int
    duplicates: int
    incidents: tuple[Incident, ...] = ()
    games: tuple[Game, ...] = ()


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
    if cfg.shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, not {cfg.shape!r}")
    rng = random.Random(cfg.seed)
    names = namespace_names(cfg)
    start_us = int(cfg.start.timestamp()) * US_PER_S
    span_us = int(cfg.hours * 3600 * US_PER_S)
    counted_target = int(cfg.messages * (1 - cfg.other_share))
    games: list[Game] = []
    incidents: list[Incident] = []
    if cfg.shape == "flat":
        docs = _flat_docs(cfg, rng, names, start_us, span_us, counted_target)
    else:
        day = _Day(cfg, rng, names, start_us, span_us)
        games, incidents = day.games, day.incidents
        docs = day.docs(counted_target)

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
        if cfg.anonymous_rate and doc["name"] in _COUNTED and rng.random() < cfg.anonymous_rate:
            _anonymise(rng, doc)
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
    if cfg.stale_resend_rate:
        # Re-sent hours later: the id is forgotten by then, and the copy is far behind its
        # partition. Only where its partition has newer events (as for late events).
        delay = int(cfg.stale_resend_hours * 3600 * US_PER_S)
        stale_until = start_us + span_us - delay - 30 * 60 * US_PER_S
        for publish, key, value in out[: len(docs)]:
            if publish < stale_until and rng.random() < cfg.stale_resend_rate:
                out.append((publish + delay, key, value))
                if key in counted_keys or key.decode() in late_ids:
                    late_ids.add(key.decode())
                    late += 1
    malformed = 0
    for i in range(int(len(out) * cfg.malformed_rate)):
        t = start_us + rng.randrange(span_us)
        out.append((t, f"bad-{i}".encode(), _malformed(rng, i, t)))
        malformed += 1
    out.sort(key=lambda m: m[0])
    truth = Truth(late_ids, late, malformed, duplicates, tuple(incidents), tuple(games))
    return [SimMessage(k, v, p) for p, k, v in out], truth


def _flat_docs(
    cfg: SimConfig,
    rng: random.Random,
    names: list[str],
    start_us: int,
    span_us: int,
    counted_target: int,
) -> list[tuple[int, dict[str, Any]]]:
    """The former uniform traffic, drawn in the same order from the same generator."""
    weights = [1.0 / (i + 1) ** 0.8 for i in range(len(names))]  # a few big games, a long tail
    if cfg.hot_share > 0:
        rest = sum(weights[1:])
        weights = [cfg.hot_share] + [(1 - cfg.hot_share) * w / rest for w in weights[1:]]
    cum = list(accumulate(weights))  # what rng.choices(names, weights) computes per call
    timeouts = {ns: rng.choice((60, 90, 120, 180)) * US_PER_S for ns in names}
    docs: list[tuple[int, dict[str, Any]]] = []  # (event time, envelope)
    while len(docs) < counted_target:
        ns = rng.choices(names, cum_weights=cum)[0]
        t = start_us + rng.randrange(span_us)
        user, party = f"u{rng.randrange(10**9):09d}", f"p{rng.randrange(10**8):08d}"
        if rng.random() < REJECTED_SHARE:
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
        ns = rng.choices(names, cum_weights=cum)[0]
        t = start_us + rng.randrange(span_us)
        name = rng.choice(OTHER_NAMES)
        docs.append((t, envelope(rng, name, ns, t, f"u{rng.randrange(10**9):09d}", "")))
    return docs


def _activity(hour_utc: float, peak_hour_utc: float) -> float:
    """A game's traffic at an hour of day relative to its evening peak (1 at the peak)."""
    wave = (1 + math.cos(2 * math.pi * (hour_utc - peak_hour_utc) / 24)) / 2
    return NIGHT_FLOOR + (1 - NIGHT_FLOOR) * wave * wave


class _Day:
    """The realistic day: games with their own rhythm, drop tendency, timeout and flapping
    players, and incidents. Every draw comes from ``rng``, in a fixed order."""

    def __init__(
        self,
        cfg: SimConfig,
        rng: random.Random,
        names: list[str],
        start_us: int,
        span_us: int,
    ) -> None:
        self.cfg, self.rng, self.start_us, self.span_us = cfg, rng, start_us, span_us
        weights = [1.0 / (i + 1) ** 0.8 for i in range(len(names))]  # a few big games
        if len(names) >= 3:
            weights[-1] *= QUIET_SHARE  # and a quiet one
        if cfg.hot_share > 0:
            rest = sum(weights[1:])
            weights = [cfg.hot_share] + [(1 - cfg.hot_share) * w / rest for w in weights[1:]]
        total = sum(weights)
        self.games: list[Game] = []
        for ns, weight in zip(names, weights, strict=True):
            offset = rng.choice(UTC_OFFSETS)
            peak_local = 19.5 + 2.5 * rng.random()  # the evening, local time
            self.games.append(
                Game(
                    namespace=ns,
                    share=weight / total,
                    peak_hour_utc=round((peak_local - offset) % 24, 3),
                    drop_probability=round(0.05 + 0.3 * rng.betavariate(2, 4), 3),
                    inactive_timeout_s=rng.choice((60, 90, 120, 180)),
                    flapping=round(0.04 + 0.12 * rng.random(), 3),
                    rejoin_seconds=round(2 + 8 * rng.random(), 2),
                )
            )
        # Minute cells over the span: traffic of game i in minute m is proportional to
        # its share times its activity at that hour. One draw picks a (game, minute).
        self.minutes = max(1, -(-span_us // MIN_US))
        first = (start_us // MIN_US) % 1440
        cells: list[float] = []
        for game in self.games:
            profile = [_activity(m / 60, game.peak_hour_utc) * game.share for m in range(1440)]
            cells.extend(profile[(first + m) % 1440] for m in range(self.minutes))
        tail = span_us - (self.minutes - 1) * MIN_US  # the last minute may be partial
        for i in range(len(self.games)):
            cells[(i + 1) * self.minutes - 1] *= tail / MIN_US
        self.cells = cells
        self.cum = list(accumulate(cells))
        self.incidents = self._incidents()

    def _incidents(self) -> list[Incident]:
        """Incidents in games that are busy at the time: each starts within an hour of its
        game's busiest minute in the middle of the span (their rows are final well before
        the span ends), in one of the busiest games at that time (never the quiet one)."""
        cfg, rng = self.cfg, self.rng
        if cfg.incidents <= 0:
            return []
        span_min = self.span_us // MIN_US
        low = int(0.2 * span_min)
        busiest: dict[int, int] = {}  # game -> its busiest minute in [low, high]
        lengths: dict[int, int] = {}
        for i in range(len(self.games)):
            if len(self.games) >= 3 and i == len(self.games) - 1:
                continue  # the quiet game
            lengths[i] = min(rng.randint(45, 80), max(10, int(0.3 * span_min)))
            high = max(low, int(0.72 * span_min) - lengths[i])
            row = self.cells[i * self.minutes : (i + 1) * self.minutes]
            busiest[i] = max(range(low, min(high, len(row) - 1) + 1), key=row.__getitem__)
        volume = {i: self.cells[i * self.minutes + m] for i, m in busiest.items()}
        candidates = sorted(busiest, key=lambda i: (-volume[i], i))[: cfg.incidents + 1]
        rng.shuffle(candidates)
        out = []
        for i in sorted(candidates[: cfg.incidents]):
            game = self.games[i]
            high = max(low, int(0.72 * span_min) - lengths[i])
            at = min(high, max(low, busiest[i] + rng.randint(-60, 30)))
            start = self.start_us + at * MIN_US
            usual = game.drop_probability
            out.append(
                Incident(
                    namespace=game.namespace,
                    start=datetime.fromtimestamp(start / US_PER_S, tz=UTC),
                    end=datetime.fromtimestamp((start + lengths[i] * MIN_US) / US_PER_S, tz=UTC),
                    usual_drop_probability=usual,
                    drop_probability=round(min(0.9, max(0.4, usual * rng.uniform(3, 5))), 3),
                )
            )
        return out

    def _cell(self) -> tuple[int, int]:
        """A random (game index, event time), following the games' traffic over the day."""
        rng = self.rng
        last = len(self.cum) - 1
        idx = bisect_right(self.cum, rng.random() * self.cum[-1], 0, last)
        i, m = divmod(idx, self.minutes)
        width = min(MIN_US, self.span_us - m * MIN_US)
        return i, self.start_us + m * MIN_US + rng.randrange(max(width, 1))

    def docs(self, counted_target: int) -> list[tuple[int, dict[str, Any]]]:
        rng, games = self.rng, self.games
        windows: dict[int, list[tuple[int, int, float]]] = {}
        names = [g.namespace for g in games]
        for inc in self.incidents:
            i = names.index(inc.namespace)
            start = int(inc.start.timestamp()) * US_PER_S
            end = int(inc.end.timestamp()) * US_PER_S
            windows.setdefault(i, []).append((start, end, inc.drop_probability))
        docs: list[tuple[int, dict[str, Any]]] = []  # (event time, envelope)
        while len(docs) < counted_target:
            i, t = self._cell()
            game = games[i]
            ns = game.namespace
            user, party = f"u{rng.randrange(10**9):09d}", f"p{rng.randrange(10**8):08d}"
            if rng.random() < REJECTED_SHARE:
                docs.append((t, envelope(rng, "PartyRejectedEvent", ns, t, user, party)))
                continue
            timeout = game.inactive_timeout_s * US_PER_S
            if rng.random() < game.flapping:
                # A flapping connection: disconnects seconds apart, each followed by a
                # rejoin or, before the SDK could report back, by the next disconnect
                # (the earlier one is then superseded).
                flaps = 1 + (rng.random() < 0.5) + (rng.random() < 0.4) + (rng.random() < 0.3)
                for _ in range(flaps):
                    docs.append((t, envelope(rng, "PartyDisconnectedEvent", ns, t, user, party)))
                    if rng.random() < 0.35:
                        t += rng.randrange(US_PER_S, 10 * US_PER_S)
                    else:
                        t2 = t + self._rejoin_delay(game, timeout)
                        docs.append((t2, envelope(rng, "PartyRejoinedEvent", ns, t2, user, party)))
                        t = t2 + rng.randrange(5 * US_PER_S, 40 * US_PER_S)
            docs.append((t, envelope(rng, "PartyDisconnectedEvent", ns, t, user, party)))
            drop = game.drop_probability
            for start, end, during in windows.get(i, ()):
                if start <= t < end:
                    drop = during
            if rng.random() < drop:
                t2 = t + timeout
                docs.append((t2, envelope(rng, "PartyDroppedEvent", ns, t2, user, party)))
            else:
                t2 = t + self._rejoin_delay(game, timeout)
                docs.append((t2, envelope(rng, "PartyRejoinedEvent", ns, t2, user, party)))
        others = int(len(docs) * self.cfg.other_share / (1 - self.cfg.other_share))
        for _ in range(others):
            i, t = self._cell()
            name = rng.choice(OTHER_NAMES)
            user = f"u{rng.randrange(10**9):09d}"
            docs.append((t, envelope(rng, name, games[i].namespace, t, user, "")))
        return docs

    def _rejoin_delay(self, game: Game, timeout: int) -> int:
        """Microseconds to the SDK's rejoin: a second or more, always before the timeout."""
        delay = US_PER_S + int(self.rng.expovariate(1 / game.rejoin_seconds) * US_PER_S)
        return min(delay, timeout - US_PER_S)


def _anonymise(rng: random.Random, doc: dict[str, Any]) -> None:
    """Take away the player (``userId``), the party (``sessionId``) or both, as a publisher
    that does not know them would: the field left out, null or empty."""
    fields = rng.choice((("userId",), ("sessionId",), ("userId", "sessionId")))
    how = rng.choice(("left out", "null", "empty"))
    for name in fields:
        if how == "left out":
            del doc[name]
        else:
            doc[name] = None if how == "null" else ""


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


_QUIET = logging.getLogger("party-rates.simulator.kafka")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


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
            # its log lines would outlive a broker a test stopped; a failed delivery raises
            "logger": _QUIET,
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
