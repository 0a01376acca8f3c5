"""Partial aggregates: counted events folded per (namespace, shard, window), merged exactly.

The partition step folds each consumed batch here, so what crosses to the keyed steps
grows with windows and distinct ids, not with events (local-global aggregation). A
namespace is split into shards by a stable 64-bit hash, so one hot namespace spreads over
workers:

* counts, distinct parties and outcome matching go to the shard of the event's
  ``sessionId`` (a player's events share it, so matching stays within one shard);
* distinct users go to the shard of the ``userId`` hash;
* outcome matching knows a player by a hash of its (sessionId, userId).

Distinct users and parties travel as those hashes. The shards partition the hash space, so
the distinct count of a window is the exact sum of its shards' counts (split distinct
aggregation). Merging is associative and commutative: counts add, hash sets unite.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import xxhash

from flows.core.items import ShardPart, WindowPart, shard_key
from schemas.events import DISCONNECTED, REJECTED

_xxh3 = xxhash.xxh3_64_intdigest

Counted = tuple[int, int, str, str, str | None, str | None]
"""A counted event: ``(t_us, kind, id, namespace, userId, sessionId)``."""


def id_hash(text: str) -> int:
    """A stable 64-bit hash of an id (the same in every process and run)."""
    try:
        return _xxh3(text.encode())
    except UnicodeEncodeError:  # a lone surrogate, from a JSON escape
        return _xxh3(text.encode("utf-8", "surrogatepass"))


def player_hash(party: int, user: str) -> int:
    """A stable 64-bit hash of a player: its userId, seeded with its party's hash."""
    return _xxh3(user.encode("utf-8", "surrogatepass"), party)


def new_window() -> WindowPart:
    return [0, 0, 0, 0, set(), set()]


Folded = dict[str, tuple[list[Any], list[int]]]
"""namespace -> ([(windows, outcome events) or None per shard], [latest event time])."""


def fold(events: Iterable[Counted], window_us: int, shards: int) -> Folded:
    """Fold counted events into, per namespace and shard, the partial aggregate of each
    window and the events outcome matching needs."""
    out: Folded = {}
    for t_us, kind, _id, namespace, user, session in events:
        start = t_us - t_us % window_us
        entry = out.get(namespace)
        if entry is None:
            entry = out[namespace] = ([None] * shards, [t_us])
        elif t_us > entry[1][0]:
            entry[1][0] = t_us
        by_shard = entry[0]
        if session:
            try:
                party = _xxh3(session.encode())
            except UnicodeEncodeError:
                party = id_hash(session)
            shard = party % shards
        else:
            party, shard = None, 0
        slot = by_shard[shard]
        if slot is None:
            slot = by_shard[shard] = ({}, [])
        window = slot[0].get(start)
        if window is None:
            window = slot[0][start] = [0, 0, 0, 0, set(), set()]
        window[kind] += 1
        if kind == REJECTED:
            continue
        user_bytes = None
        if user:
            try:
                user_bytes = user.encode()
            except UnicodeEncodeError:  # a lone surrogate, from a JSON escape
                user_bytes = user.encode("utf-8", "surrogatepass")
        if party is not None:
            window[5].add(party)
            if user_bytes is not None:
                slot[1].append((t_us, kind, _xxh3(user_bytes, party)))
        if kind == DISCONNECTED and user_bytes is not None:
            user_hash = _xxh3(user_bytes)
            other = user_hash % shards
            if other != shard:
                slot = by_shard[other]
                if slot is None:
                    slot = by_shard[other] = ({}, [])
                window = slot[0].get(start)
                if window is None:
                    window = slot[0][start] = [0, 0, 0, 0, set(), set()]
            window[4].add(user_hash)
    return out


def to_parts(
    folded: Folded, partition: int, next_offset: int
) -> tuple[list[tuple[str, ShardPart]], dict[str, int]]:
    """The folded batch as keyed parts, and each key's latest event time (that of its
    namespace in the batch: the clock only needs a bound)."""
    parts = []
    latest = {}
    for namespace, (by_shard, newest) in folded.items():
        for shard, slot in enumerate(by_shard):
            if slot is not None:
                key = shard_key(namespace, shard)
                parts.append(
                    (key, ShardPart(namespace, shard, partition, next_offset, slot[0], slot[1]))
                )
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
