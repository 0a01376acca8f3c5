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
from typing import Any

import numpy as np

from flows.core.items import Report, RollupPart, WindowPart
from flows.core.outcomes import OutcomeAgg

_COMPACT_AT = 16  # arrays waiting to be joined before they are


class _Distinct:
    """Distinct 64-bit hashes: a sorted unique array, and arrays not joined to it yet."""

    __slots__ = ("done", "waiting")

    def __init__(self) -> None:
        self.done = np.empty(0, dtype=np.uint64)
        self.waiting: list[np.ndarray] = []

    def add(self, hashes: set[int]) -> None:
        if hashes:
            self.waiting.append(np.fromiter(hashes, dtype=np.uint64, count=len(hashes)))
            if len(self.waiting) >= _COMPACT_AT:
                self.compact()

    def compact(self) -> np.ndarray:
        if self.waiting:
            self.done = np.unique(np.concatenate([self.done, *self.waiting]))
            self.waiting = []
        return self.done

    def count(self, also: set[int] | None = None) -> int:
        done = self.compact()
        if not also:
            return int(done.size)
        extra = np.fromiter(also, dtype=np.uint64, count=len(also))
        return int(np.union1d(done, extra).size)


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

    def summary(self, open_windows: list[WindowPart] | None = None) -> tuple[int, ...]:
        """The roll-up's (counts, distinct users, distinct parties), with base windows not
        closed yet (provisional) taken in."""
        counts = list(self.counts)
        users: set[int] = set()
        parties: set[int] = set()
        for window in open_windows or []:
            for kind in range(4):
                counts[kind] += window[kind]
            users |= window[4]
            parties |= window[5]
        return (*counts, self.users.count(users), self.parties.count(parties))


class RollupOutcomes:
    """Outcome counts and all rejoin times of one roll-up window in one shard."""

    __slots__ = ("agg", "rejoin_s")

    def __init__(self) -> None:
        self.agg = OutcomeAgg()  # its rejoin_s stays empty: the times are kept below
        self.rejoin_s = array("d")

    def add(self, agg: OutcomeAgg) -> None:
        a = self.agg
        a.disconnects += agg.disconnects
        a.rejoined += agg.rejoined
        a.dropped += agg.dropped
        a.unresolved += agg.unresolved
        a.superseded += agg.superseded
        a.orphans += agg.orphans
        self.rejoin_s.extend(agg.rejoin_s)

    def fields(self, open_aggs: list[OutcomeAgg] | None = None) -> tuple[Any, ...]:
        out = OutcomeAgg.of(self.agg.fields())
        out.rejoin_s = self.rejoin_s.tolist()
        for agg in open_aggs or []:
            out = out.merge(agg)
        return out.fields()


class Rollups:
    """One shard's open roll-up windows, of every roll-up length."""

    def __init__(self, lengths: tuple[int, ...], horizon_us: int) -> None:
        self.lengths = lengths
        self.horizon_us = horizon_us
        self.rates: dict[tuple[int, int], RollupRates] = {}  # (length, start) ->
        self.outcomes: dict[tuple[int, int], RollupOutcomes] = {}

    def window_closed(self, start: int, window: WindowPart) -> None:
        for length in self.lengths:
            key = (length, start - start % length)
            acc = self.rates.get(key)
            if acc is None:
                acc = self.rates[key] = RollupRates()
            acc.add(window)

    def outcome_final(self, start: int, agg: OutcomeAgg) -> None:
        for length in self.lengths:
            key = (length, start - start % length)
            acc = self.outcomes.get(key)
            if acc is None:
                acc = self.outcomes[key] = RollupOutcomes()
            acc.add(agg)

    def final(
        self, closed_until: int
    ) -> tuple[dict[tuple[int, int], tuple[int, ...]], dict[tuple[int, int], tuple[Any, ...]]]:
        """Roll-ups that ``closed_until`` made final, removed from the state."""
        rates = {
            key: self.rates.pop(key).summary()
            for key in sorted(k for k in self.rates if k[1] + k[0] <= closed_until)
        }
        horizon = self.horizon_us
        outcomes = {
            key: self.outcomes.pop(key).fields()
            for key in sorted(k for k in self.outcomes if k[1] + k[0] + horizon <= closed_until)
        }
        return rates, outcomes

    def provisional(
        self, open_windows: dict[int, WindowPart], open_aggs: dict[int, OutcomeAgg]
    ) -> tuple[dict[tuple[int, int], tuple[int, ...]], dict[tuple[int, int], tuple[Any, ...]]]:
        """Every roll-up not final yet, with the base windows and outcome aggregates still
        open taken in."""
        windows_in: dict[tuple[int, int], list[WindowPart]] = {}
        aggs_in: dict[tuple[int, int], list[OutcomeAgg]] = {}
        for length in self.lengths:
            for start, window in open_windows.items():
                windows_in.setdefault((length, start - start % length), []).append(window)
            for start, agg in open_aggs.items():
                aggs_in.setdefault((length, start - start % length), []).append(agg)
        rates = {
            key: self.rates.get(key, RollupRates()).summary(windows_in.get(key, []))
            for key in sorted(set(self.rates) | set(windows_in))
        }
        outcomes = {
            key: self.outcomes.get(key, RollupOutcomes()).fields(aggs_in.get(key, []))
            for key in sorted(set(self.outcomes) | set(aggs_in))
        }
        return rates, outcomes


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
        for start, window in part.windows.items():
            rollups.window_closed(start, window)
        for start, fields in part.outcomes.items():
            rollups.outcome_final(start, OutcomeAgg.of(fields))
        rates, outcomes = rollups.final(part.closed_until)
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
