"""Roll-ups: one shard's aggregates over longer windows (an hour, a day), built from its
closed base windows.

A roll-up window is a whole number of base windows, aligned to the UTC epoch like them, so
each base window belongs to exactly one roll-up window of each length. When a base window
closes, its counts are added to its roll-ups and its hashes of distinct users and parties
joined to theirs: no work per event. The distinct counts of a roll-up are those of the
whole roll-up window (the union of its base windows' hashes, not a sum), and still add up
over shards, which partition the hash space. The hashes are kept as sorted NumPy arrays,
8 bytes each, cheap to keep for a day and to snapshot.

Disconnect outcomes roll up the same way: a base window's outcome aggregate, once final,
is added to its roll-ups; a roll-up's rejoin times are all kept (as 8-byte floats), so its
percentiles are exact. A roll-up window is final when its last base window is: its end for
the rates, its end plus the outcome horizon for the outcomes.
"""

from __future__ import annotations

import pickle
from array import array
from collections.abc import Iterable
from typing import Any

import numpy as np

from flows.core.items import Report, RollupPart, WindowPart
from flows.core.outcomes import OutcomeAgg


class _Distinct:
    """Distinct 64-bit hashes: a sorted unique array, and an array of those added since.

    A window adds a few hashes per shard: they are appended to ``recent`` (8 bytes each,
    repeats allowed); once ``recent`` is as long as the sorted array (and at least
    ``_FOLD_AT``), the two are merged into one sorted unique array: each hash is sorted a
    bounded number of times however long the roll-up, and a day of them costs 8 bytes a
    hash to keep and to snapshot.
    """

    __slots__ = ("done", "recent")

    def __init__(self) -> None:
        self.done = np.empty(0, dtype=np.uint64)
        self.recent = array("Q")

    def add(self, hashes: Iterable[int]) -> None:
        recent = self.recent
        recent.extend(hashes)
        if len(recent) >= _FOLD_AT and len(recent) >= self.done.size:
            self._fold()

    def _fold(self) -> None:
        self.done = np.union1d(self.done, np.frombuffer(self.recent, dtype=np.uint64))
        self.recent = array("Q")

    def absorb(self, other: _Distinct) -> None:
        """Take in a shorter roll-up's hashes: appended like a window's, so a day built from
        its hours is sorted a bounded number of times, not once an hour."""
        if other.done.size and not self.done.size and not self.recent:
            self.done = other.done  # the first hour of a day (arrays are never changed)
        elif other.done.size:
            self.recent.frombytes(other.done.tobytes())
        self.add(other.recent)

    def copy(self) -> _Distinct:
        out = _Distinct()
        out.done, out.recent = self.done, array("Q", self.recent)  # arrays are never changed
        return out

    def count(self) -> int:
        if not self.recent:
            return int(self.done.size)
        if not self.done.size:
            return len(set(self.recent))  # a few: cheaper than sorting them
        recent = np.frombuffer(self.recent, dtype=np.uint64)
        return int(np.union1d(self.done, recent).size)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as two buffers of 8-byte hashes, not an object per hash.
        return (_distinct, (self.done.tobytes(), self.recent.tobytes()))


def _distinct(done: bytes, recent: bytes) -> _Distinct:
    out = _Distinct()
    out.done = np.frombuffer(done, dtype=np.uint64)  # read-only: arrays are never changed
    out.recent.frombytes(recent)
    return out


_FOLD_AT = 1024
"""Hashes appended before a roll-up's first merge into the sorted array."""


class RollupRates:
    """Counts and distinct users and parties of one roll-up window in one shard."""

    __slots__ = ("counts", "parties", "users")

    def __init__(self) -> None:
        self.counts = [0, 0, 0, 0]
        self.users = _Distinct()
        self.parties = _Distinct()

    def add(self, window: WindowPart) -> None:
        for kind in range(4):
            self.counts[kind] += window[kind]
        self.users.add(window[4])
        self.parties.add(window[5])

    def absorb(self, other: RollupRates) -> None:
        """Add a shorter roll-up window's content (it ended inside this one)."""
        for kind in range(4):
            self.counts[kind] += other.counts[kind]
        self.users.absorb(other.users)
        self.parties.absorb(other.parties)

    def copy(self) -> RollupRates:
        out = RollupRates()
        out.counts, out.users, out.parties = (
            list(self.counts),
            self.users.copy(),
            self.parties.copy(),
        )
        return out

    def summary(self) -> tuple[int, ...]:
        """(counts, distinct users, distinct parties)."""
        return (*self.counts, self.users.count(), self.parties.count())


class RollupOutcomes:
    """Outcome counts and all rejoin times of one roll-up window in one shard."""

    __slots__ = ("agg", "rejoin_s")

    def __init__(self) -> None:
        self.agg = OutcomeAgg()  # its rejoin_s stays empty: the times are kept below
        self.rejoin_s = array("d")

    def add(self, fields: tuple[Any, ...]) -> None:
        """A base window's outcome aggregate, as ``OutcomeAgg.fields()``."""
        a = self.agg
        a.disconnects += fields[0]
        a.rejoined += fields[1]
        a.dropped += fields[2]
        a.unresolved += fields[3]
        a.superseded += fields[4]
        a.orphans += fields[5]
        self.rejoin_s.extend(fields[6])

    def absorb(self, other: RollupOutcomes) -> None:
        self.add((*other.agg.fields()[:6], other.rejoin_s))

    def copy(self) -> RollupOutcomes:
        out = RollupOutcomes()
        out.add((*self.agg.fields()[:6], self.rejoin_s))
        return out

    def fields(self) -> tuple[Any, ...]:
        return (*self.agg.fields()[:6], self.rejoin_s.tolist())


class Rollups:
    """One shard's open roll-up windows, of every roll-up length.

    A length that is a multiple of a shorter one is built from it (a day from its hours,
    once each hour is final), the others from the base windows: fewer, larger additions.
    """

    def __init__(self, lengths: tuple[int, ...], horizon_us: int) -> None:
        self.lengths = tuple(sorted(lengths))
        self.horizon_us = horizon_us
        self.source: dict[int, int | None] = {}  # length -> the length it is built from
        for i, length in enumerate(self.lengths):
            shorter = [s for s in self.lengths[:i] if length % s == 0]
            self.source[length] = shorter[-1] if shorter else None
        self.from_base = [n for n in self.lengths if self.source[n] is None]
        self.rates: dict[tuple[int, int], RollupRates] = {}  # (length, start) ->
        self.outcomes: dict[tuple[int, int], RollupOutcomes] = {}

    def _fed(self, length: int) -> list[int]:
        return [n for n in self.lengths if self.source[n] == length]

    def windows_closed(self, windows: dict[int, WindowPart]) -> None:
        """Base windows made final: their counts and hashes join their roll-ups."""
        for length in self.from_base:
            for start, window in windows.items():
                key = (length, start - start % length)
                acc = self.rates.get(key)
                if acc is None:
                    acc = self.rates[key] = RollupRates()
                acc.add(window)

    def outcomes_final(self, aggs: dict[int, tuple[Any, ...]]) -> None:
        """Base windows' final outcome aggregates (``OutcomeAgg.fields()``)."""
        for length in self.from_base:
            for start, fields in aggs.items():
                key = (length, start - start % length)
                acc = self.outcomes.get(key)
                if acc is None:
                    acc = self.outcomes[key] = RollupOutcomes()
                acc.add(fields)

    def final(
        self, closed_until: int
    ) -> tuple[dict[tuple[int, int], tuple[int, ...]], dict[tuple[int, int], tuple[Any, ...]]]:
        """Roll-ups that ``closed_until`` made final, removed from the state (each added to
        the longer roll-ups built from it first)."""
        rates: dict[tuple[int, int], tuple[int, ...]] = {}
        outcomes: dict[tuple[int, int], tuple[Any, ...]] = {}
        horizon = self.horizon_us
        for length in self.lengths:  # shortest first: an hour joins its day before the day
            fed = self._fed(length)
            for key in sorted(k for k in self.rates if k[0] == length and sum(k) <= closed_until):
                acc = self.rates.pop(key)
                rates[key] = acc.summary()
                for longer in fed:
                    start = key[1] - key[1] % longer
                    self.rates.setdefault((longer, start), RollupRates()).absorb(acc)
            done = [k for k in self.outcomes if k[0] == length and sum(k) + horizon <= closed_until]
            for key in sorted(done):
                out = self.outcomes.pop(key)
                outcomes[key] = out.fields()
                for longer in fed:
                    start = key[1] - key[1] % longer
                    self.outcomes.setdefault((longer, start), RollupOutcomes()).absorb(out)
        return rates, outcomes

    def provisional(
        self, open_windows: dict[int, WindowPart], open_aggs: dict[int, OutcomeAgg]
    ) -> tuple[dict[tuple[int, int], tuple[int, ...]], dict[tuple[int, int], tuple[Any, ...]]]:
        """Every roll-up not final yet, with what is still open inside it taken in: base
        windows and outcome aggregates, and the shorter roll-ups it is built from."""
        rates = {k: acc.copy() for k, acc in self.rates.items()}
        outcomes = {k: acc.copy() for k, acc in self.outcomes.items()}
        for length in self.lengths:
            source = self.source[length]
            if source is None:
                for start, window in open_windows.items():
                    key = (length, start - start % length)
                    rates.setdefault(key, RollupRates()).add(window)
                for start, agg in open_aggs.items():
                    key = (length, start - start % length)
                    outcomes.setdefault(key, RollupOutcomes()).add(agg.fields())
                continue
            for (_n, s), acc in [(k, a) for k, a in rates.items() if k[0] == source]:
                rates.setdefault((length, s - s % length), RollupRates()).absorb(acc)
            for (_n, s), out in [(k, a) for k, a in outcomes.items() if k[0] == source]:
                outcomes.setdefault((length, s - s % length), RollupOutcomes()).absorb(out)
        return (
            {k: acc.summary() for k, acc in sorted(rates.items())},
            {k: acc.fields() for k, acc in sorted(outcomes.items())},
        )


class ShardRollups:
    """The roll-ups of one (namespace, shard), fed what the shard closes on each tick.

    Kept apart from the shard itself: the shard's state changes with every batch (and is
    snapshotted as often), the roll-ups' only when a window closes, so their day-long state
    is snapshotted only then.
    """

    def __init__(self, lengths: tuple[int, ...], horizon_us: int) -> None:
        self.rollups = Rollups(lengths, horizon_us)
        self.namespace = ""
        self.shard = 0
        self.open: RollupPart | None = None  # what the shard holds open at a run's end

    def on_part(self, part: RollupPart) -> list[Report]:
        self.namespace, self.shard = part.namespace, part.shard
        if part.provisional:
            self.open = part
            return []
        rollups = self.rollups
        rollups.windows_closed(part.windows)
        rollups.outcomes_final(part.outcomes)
        rates, outcomes = rollups.final(part.closed_until)
        if not part.answer:
            return []  # nothing final: the shard did not announce a report
        return [
            Report(
                self.namespace, part.closed_until, self.shard, (), {}, {},
                rollup_rates=rates, rollup_outcomes=outcomes, from_rollups=True,
            )
        ]  # fmt: skip

    def provisional(self) -> list[Report]:
        """At the end of a run: every roll-up not final, with what the shard holds open."""
        part, self.open = self.open, None
        windows = part.windows if part else {}
        aggs = {s: OutcomeAgg.of(f) for s, f in part.outcomes.items()} if part else {}
        rates, outcomes = self.rollups.provisional(windows, aggs)
        if not (rates or outcomes):
            return []
        closed = part.closed_until if part else 0
        return [
            Report(
                self.namespace, closed, self.shard, (), {}, {}, True,
                rates, outcomes, from_rollups=True,
            )
        ]  # fmt: skip

    def snapshot(self) -> bytes:
        state = (self.namespace, self.shard, self.rollups.rates, self.rollups.outcomes)
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def restore(cls, lengths: tuple[int, ...], horizon_us: int, snap: bytes) -> ShardRollups:
        self = cls(lengths, horizon_us)
        self.namespace, self.shard, self.rollups.rates, self.rollups.outcomes = pickle.loads(snap)
        return self
