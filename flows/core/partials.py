"""Partial aggregates: counted events folded per (namespace, shard, window), merged exactly.

The partition step folds each consumed batch here, so what crosses to the keyed steps
grows with windows and distinct ids, not with events (local-global aggregation). A
namespace is split into shards by a stable 64-bit hash, so one hot namespace spreads over
workers:

* counts, distinct parties and outcome matching go to the shard of the event's
  ``sessionId`` (a player's events share it, so matching stays within one shard);
* distinct users go to the shard of the ``userId`` hash.

Distinct users and parties travel as those hashes. The shards partition the hash space, so
the distinct count of a window is the exact sum of its shards' counts (split distinct
aggregation). Merging is associative and commutative: counts add, hash sets unite.
"""

from __future__ import annotations

from collections.abc import Iterable

import xxhash

from flows.core.items import OutcomeEvent, ShardPart, WindowPart, shard_key
from schemas.events import DISCONNECTED, REJECTED

_xxh3 = xxhash.xxh3_64_intdigest

Counted = tuple[int, int, str, str, str | None, str | None]
"""A counted event: ``(t_us, kind, id, namespace, userId, sessionId)``."""


def id_hash(text: str) -> int:
    """A stable 64-bit hash of an id (the same in every process and run)."""
    return _xxh3(text.encode("utf-8", "surrogatepass"))


def new_window() -> WindowPart:
    return [0, 0, 0, 0, set(), set()]


def fold(
    events: Iterable[Counted], window_us: int, shards: int
) -> dict[tuple[int, str], tuple[dict[int, WindowPart], list[OutcomeEvent], list[int]]]:
    """Fold counted events into ``(shard, namespace) -> (windows, outcome events, [latest
    event time])``."""
    out: dict[tuple[int, str], tuple[dict[int, WindowPart], list[OutcomeEvent], list[int]]] = {}
    for t_us, kind, event_id, namespace, user, session in events:
        start = t_us - t_us % window_us
        party = _xxh3(session.encode("utf-8", "surrogatepass")) if session else None
        key = (party % shards if party is not None else 0, namespace)
        entry = out.get(key)
        if entry is None:
            entry = out[key] = ({}, [], [t_us])
        elif t_us > entry[2][0]:
            entry[2][0] = t_us
        window = entry[0].get(start)
        if window is None:
            window = entry[0][start] = [0, 0, 0, 0, set(), set()]
        window[kind] += 1
        if kind == REJECTED:
            continue
        if party is not None:
            window[5].add(party)
            if user:
                rank = 0 if kind == DISCONNECTED else 1
                entry[1].append((t_us, rank, event_id, session, user, kind))  # type: ignore[arg-type]
        if kind == DISCONNECTED and user:
            player = _xxh3(user.encode("utf-8", "surrogatepass"))
            ukey = (player % shards, namespace)
            if ukey != key:
                other = out.get(ukey)
                if other is None:
                    other = out[ukey] = ({}, [], [t_us])
                elif t_us > other[2][0]:
                    other[2][0] = t_us
                window = other[0].get(start)
                if window is None:
                    window = other[0][start] = [0, 0, 0, 0, set(), set()]
            window[4].add(player)
    return out


def to_parts(
    folded: dict[tuple[int, str], tuple[dict[int, WindowPart], list[OutcomeEvent], list[int]]],
    partition: int,
    next_offset: int,
) -> tuple[list[tuple[str, ShardPart]], dict[str, int]]:
    """The folded batch as keyed parts, and each key's latest event time (for the clock)."""
    parts = []
    latest = {}
    for (shard, namespace), (windows, events, newest) in folded.items():
        key = shard_key(namespace, shard)
        parts.append((key, ShardPart(namespace, shard, partition, next_offset, windows, events)))
        latest[key] = newest[0]
    return parts, latest


def merge_window(into: WindowPart, part: WindowPart) -> None:
    """Add ``part`` into ``into`` (in place)."""
    into[0] += part[0]
    into[1] += part[1]
    into[2] += part[2]
    into[3] += part[3]
    into[4] |= part[4]
    into[5] |= part[5]


def merged(a: WindowPart, b: WindowPart) -> WindowPart:
    """A new partial holding both."""
    out = new_window()
    merge_window(out, a)
    merge_window(out, b)
    return out


def summary(window: WindowPart) -> tuple[int, int, int, int, int, int]:
    """(disconnected, rejoined, dropped, rejected, distinct users, distinct parties) of this
    shard's part: the distinct counts add up over shards."""
    return (window[0], window[1], window[2], window[3], len(window[4]), len(window[5]))
