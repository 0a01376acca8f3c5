"""One shard of a namespace: its partial window aggregates and its players' outcomes.

A shard merges the partial aggregates the partition step folded (counts, hashes of the
distinct users and parties that fall in it) and matches the disconnects of its players to
their outcomes. It applies watermark ticks only once it has received every batch a tick was
computed from, so a tick never overtakes data; on each tick it reports to its namespace's
rows step what it closed: every window the tick made final, and the outcome aggregates of
every window whose outcome horizon passed. Every tick is answered, if only with an empty
report, so the rows step knows when it has every shard's part. What it closed also goes to
the shard's roll-ups (flows.core.rollups), a step of their own: their day-long state changes
only when a window closes, and is only snapshotted then.
"""

from __future__ import annotations

import pickle
from typing import Any

from flows.core.items import Report, RollupPart, ShardPart, Tick, WindowPart
from flows.core.outcomes import OutcomeMatcher
from flows.core.partials import merge_window, summary
from schemas.durations import DEFAULT_OUTCOME_HORIZON_US

ShardOutput = Report | RollupPart

_HOLD_AT_MOST = 24
"""Closed windows and outcome aggregates a shard holds for its roll-ups before it sends
them on even though no roll-up is final (bounds its state when every roll-up is long)."""


class Shard:
    """One (namespace, shard)'s open windows, open incidents and watermark bookkeeping."""

    def __init__(
        self,
        window_us: int,
        horizon_us: int = DEFAULT_OUTCOME_HORIZON_US,
        rollups: tuple[int, ...] = (),
    ) -> None:
        self.rollups = rollups
        self.horizon_us = horizon_us
        self.namespace = ""  # learnt from the first part
        self.shard = 0
        self.window_us = window_us
        self.outcomes = OutcomeMatcher(window_us, horizon_us)
        self.closed_until: int | None = None  # windows ending at or before it are final
        self.seen: dict[int, int] = {}  # partition -> next offset of the latest part
        self.pending: list[Tick] = []
        self.windows: dict[int, WindowPart] = {}
        # When the roll-ups this shard added to become final: they must hear of that tick.
        self.rollups_due: set[int] = set()
        # Closed windows and final outcome aggregates not yet sent to the roll-ups: they go
        # together when a roll-up becomes final (or many are held), one item, not one a tick.
        self.held_windows: dict[int, WindowPart] = {}
        self.held_aggs: dict[int, tuple[Any, ...]] = {}

    def on_part(self, part: ShardPart) -> list[ShardOutput]:
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

    def on_tick(self, tick: Tick) -> list[ShardOutput]:
        self.pending.append(tick)
        return self._apply_ready()

    def _ready(self, tick: Tick) -> bool:
        return all(self.seen.get(p, -1) >= off for p, off in tick.required.items())

    def _apply_ready(self) -> list[ShardOutput]:
        out: list[ShardOutput] = []
        while self.pending and self._ready(self.pending[0]):
            out += self._close(self.pending.pop(0))
        return out

    def _close(self, tick: Tick) -> list[ShardOutput]:
        """What the tick makes final. A tick older than one applied closes nothing, but is
        answered all the same."""
        closed = tick.closed_until
        rates: dict[int, tuple[int, ...]] = {}
        closed_windows: dict[int, WindowPart] = {}
        final_aggs: dict[int, tuple[Any, ...]] = {}
        if self.closed_until is None or closed > self.closed_until:
            self.closed_until = closed
            w = self.window_us
            for start in sorted(s for s in self.windows if s + w <= closed):
                closed_windows[start] = window = self.windows.pop(start)
                rates[start] = summary(window)
            self.outcomes.advance(closed)
            final_aggs = {s: a.fields() for s, a in self.outcomes.final_aggs(closed).items()}
        due = self._due(closed, closed_windows, final_aggs)
        report = Report(
            self.namespace, closed, self.shard, tick.expected, rates, final_aggs,
            rollups_follow=due,
        )  # fmt: skip
        if not self.rollups:
            return [report]
        self.held_windows.update(closed_windows)
        self.held_aggs.update(final_aggs)
        if not due and len(self.held_windows) + len(self.held_aggs) < _HOLD_AT_MOST:
            return [report]
        windows, aggs = self.held_windows, self.held_aggs
        self.held_windows, self.held_aggs = {}, {}
        return [report, RollupPart(self.namespace, self.shard, closed, windows, aggs, answer=due)]

    def _due(self, closed: int, windows: dict[int, Any], aggs: dict[int, Any]) -> bool:
        """Whether a roll-up this shard added to becomes final on this tick: then the
        roll-ups hear of it, with what the shard held for them, and report on it."""
        if not self.rollups:
            return False
        horizon = self.horizon_us
        for length in self.rollups:
            self.rollups_due.update(s - s % length + length for s in windows)
            self.rollups_due.update(s - s % length + length + horizon for s in aggs)
        due = {t for t in self.rollups_due if t <= closed}
        self.rollups_due -= due
        return bool(due)

    def provisional(self) -> list[ShardOutput]:
        """At the end of a run: the ticks that can be applied, then what is still open."""
        out = self._apply_ready()
        rates: dict[int, tuple[int, ...]] = {s: summary(w) for s, w in sorted(self.windows.items())}
        outcomes = {s: a.fields() for s, a in self.outcomes.provisional_aggs().items()}
        closed = self.closed_until or 0
        if rates or outcomes:
            out.append(Report(self.namespace, closed, self.shard, (), rates, outcomes, True))
        if self.rollups:
            # what is held for the roll-ups is final, but not in them yet: it goes with the
            # open windows and aggregates (their starts differ)
            windows = self.held_windows | self.windows
            aggs = self.held_aggs | outcomes
            out.append(RollupPart(self.namespace, self.shard, closed, windows, aggs, True))
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
                self.rollups_due,
                self.held_windows,
                self.held_aggs,
            ),
            protocol=pickle.HIGHEST_PROTOCOL,
        )

    @classmethod
    def restore(
        cls,
        window_us: int,
        snap: bytes,
        horizon_us: int = DEFAULT_OUTCOME_HORIZON_US,
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
            self.rollups_due,
            self.held_windows,
            self.held_aggs,
        ) = pickle.loads(snap)
        self.outcomes.restore(outcomes)
        return self
