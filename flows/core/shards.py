"""One shard of a namespace: its partial window aggregates and its players' outcomes.

A shard merges the partial aggregates the partition step folded (counts, hashes of the
distinct users and parties that fall in it) and matches the disconnects of its players to
their outcomes. It applies watermark ticks only once it has received every batch a tick was
computed from, so a tick never overtakes data; on each tick it reports to its namespace's
rows step what it closed: every window the tick made final, and the outcome aggregates of
every window whose outcome horizon passed. Every tick is answered, if only with an empty
report, so the rows step knows when it has every shard's part.
"""

from __future__ import annotations

import pickle
from typing import Any

from flows.core.eventtime import US_PER_S
from flows.core.items import Report, ShardPart, Tick, WindowPart
from flows.core.outcomes import OutcomeMatcher
from flows.core.partials import merge_window, summary
from flows.core.rollups import Rollups


class Shard:
    """One (namespace, shard)'s open windows, open incidents and watermark bookkeeping."""

    def __init__(
        self, window_us: int, horizon_us: int = 3600 * US_PER_S, rollups: tuple[int, ...] = ()
    ) -> None:
        self.rollups = Rollups(rollups, horizon_us)
        self.namespace = ""  # learnt from the first part
        self.shard = 0
        self.window_us = window_us
        self.outcomes = OutcomeMatcher(window_us, horizon_us)
        self.closed_until: int | None = None  # windows ending at or before it are final
        self.seen: dict[int, int] = {}  # partition -> next offset of the latest part
        self.pending: list[Tick] = []
        self.windows: dict[int, WindowPart] = {}

    def on_part(self, part: ShardPart) -> list[Report]:
        self.namespace, self.shard = part.namespace, part.shard
        windows = self.windows
        for start, window in part.windows.items():
            mine = windows.get(start)
            if mine is None:
                windows[start] = window
            else:
                merge_window(mine, window)
        if part.events:
            self.outcomes.extend(part.events)
        if self.seen.get(part.partition, -1) < part.next_offset:
            self.seen[part.partition] = part.next_offset
        return self._apply_ready() if self.pending else []

    def on_tick(self, tick: Tick) -> list[Report]:
        self.pending.append(tick)
        return self._apply_ready()

    def _ready(self, tick: Tick) -> bool:
        return all(self.seen.get(p, -1) >= off for p, off in tick.required.items())

    def _apply_ready(self) -> list[Report]:
        out: list[Report] = []
        while self.pending and self._ready(self.pending[0]):
            out.append(self._close(self.pending.pop(0)))
        return out

    def _close(self, tick: Tick) -> Report:
        """What the tick makes final. A tick older than one applied closes nothing, but is
        answered all the same."""
        closed = tick.closed_until
        rates: dict[int, tuple[int, ...]] = {}
        outcomes: dict[int, Any] = {}
        if self.closed_until is None or closed > self.closed_until:
            self.closed_until = closed
            w, rollups = self.window_us, self.rollups
            for start in sorted(s for s in self.windows if s + w <= closed):
                window = self.windows.pop(start)
                rates[start] = summary(window)
                rollups.window_closed(start, window)
            self.outcomes.advance(closed)
            for start, agg in self.outcomes.final_aggs(closed).items():
                outcomes[start] = agg.fields()
                rollups.outcome_final(start, agg)
            rollup_rates, rollup_outcomes = rollups.final(closed)
        else:
            rollup_rates, rollup_outcomes = {}, {}
        return Report(
            self.namespace, closed, self.shard, tick.expected, rates, outcomes, False,
            rollup_rates, rollup_outcomes,
        )  # fmt: skip

    def provisional(self) -> list[Report]:
        """At the end of a run: the ticks that can be applied, then what is still open."""
        out = self._apply_ready()
        rates: dict[int, tuple[int, ...]] = {s: summary(w) for s, w in sorted(self.windows.items())}
        open_aggs = self.outcomes.provisional_aggs()
        outcomes = {s: a.fields() for s, a in open_aggs.items()}
        rollup_rates, rollup_outcomes = self.rollups.provisional(self.windows, open_aggs)
        if rates or outcomes or rollup_rates or rollup_outcomes:
            out.append(
                Report(
                    self.namespace,
                    self.closed_until or 0,
                    self.shard,
                    (),
                    rates,
                    outcomes,
                    True,
                    rollup_rates,
                    rollup_outcomes,
                )
            )
        return out

    def snapshot(self) -> bytes:
        """The state, pickled at once: later changes cannot reach a snapshot in flight."""
        return pickle.dumps(
            (
                self.namespace,
                self.shard,
                self.closed_until,
                self.seen,
                self.pending,
                self.windows,
                self.outcomes.snapshot(),
                self.rollups.rates,
                self.rollups.outcomes,
            ),
            protocol=pickle.HIGHEST_PROTOCOL,
        )

    @classmethod
    def restore(
        cls,
        window_us: int,
        snap: bytes,
        horizon_us: int = 3600 * US_PER_S,
        rollups: tuple[int, ...] = (),
    ) -> Shard:
        self = cls(window_us, horizon_us, rollups)
        (
            self.namespace,
            self.shard,
            self.closed_until,
            self.seen,
            self.pending,
            self.windows,
            outcomes,
            self.rollups.rates,
            self.rollups.outcomes,
        ) = pickle.loads(snap)
        self.outcomes.restore(outcomes)
        return self
