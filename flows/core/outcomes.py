"""Disconnect outcomes: what became of each disconnect, matched per player in event time.

A ``PartyDisconnectedEvent`` opens an incident for its (namespace, sessionId, userId). The
next ``PartyRejoinedEvent`` or ``PartyDroppedEvent`` of the same player at or after it, within
the outcome horizon, resolves it (at equal times: a disconnect first, then a rejoin, then a
drop). A player is known by a 64-bit hash of its sessionId and userId. A second disconnect
before any outcome supersedes the open incident; an outcome with no open incident is an
orphan (its disconnect was before the data kept); an incident with no outcome within the
horizon is unresolved.

Events are matched only once the watermark has passed them, in event-time order, so the
result does not depend on the order they arrived in (an outcome read before its own
disconnect from another partition is matched all the same). A disconnect window's row is
final once the watermark is past the window's end plus the horizon.

A namespace's players are split over shards by their ``sessionId`` (flows.core.partials);
each shard matches its own players and the window's outcome aggregates of all shards add
up exactly (``OutcomeAgg.merge``), percentiles included: the rejoin times are kept whole.
"""

from __future__ import annotations

from typing import Any

from flows.core.eventtime import US_PER_S, window_columns
from flows.core.items import OutcomeEvent, Row
from flows.core.partials import id_hash, player_hash
from schemas.events import DISCONNECTED, DROPPED, REJOINED

_MATCHED = (DISCONNECTED, REJOINED, DROPPED)  # in this order at equal times


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The q-th percentile with linear interpolation, as numpy.percentile's default."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class OutcomeAgg:
    """Outcomes of the disconnects of one window (and orphans that fell in it)."""

    __slots__ = (
        "disconnects",
        "dropped",
        "orphans",
        "rejoin_s",
        "rejoined",
        "superseded",
        "unresolved",
    )

    def __init__(self) -> None:
        self.disconnects = self.rejoined = self.dropped = 0
        self.unresolved = self.superseded = self.orphans = 0
        self.rejoin_s: list[float] = []  # sorted when a row is made

    def fields(self) -> tuple[Any, ...]:
        """The aggregate as a plain tuple: what a shard reports (cheap to pickle)."""
        return (
            self.disconnects,
            self.rejoined,
            self.dropped,
            self.unresolved,
            self.superseded,
            self.orphans,
            self.rejoin_s,
        )

    @classmethod
    def of(cls, fields: tuple[Any, ...]) -> OutcomeAgg:
        out = cls()
        (
            out.disconnects,
            out.rejoined,
            out.dropped,
            out.unresolved,
            out.superseded,
            out.orphans,
            rejoin_s,
        ) = fields
        out.rejoin_s = list(rejoin_s)
        return out

    def merge(self, other: OutcomeAgg) -> OutcomeAgg:
        """A new aggregate holding both (another shard's part of the same window)."""
        out = OutcomeAgg()
        out.disconnects = self.disconnects + other.disconnects
        out.rejoined = self.rejoined + other.rejoined
        out.dropped = self.dropped + other.dropped
        out.unresolved = self.unresolved + other.unresolved
        out.superseded = self.superseded + other.superseded
        out.orphans = self.orphans + other.orphans
        out.rejoin_s = self.rejoin_s + other.rejoin_s
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OutcomeAgg):
            return NotImplemented
        same = all(getattr(self, a) == getattr(other, a) for a in self.__slots__ if a != "rejoin_s")
        return same and sorted(self.rejoin_s) == sorted(other.rejoin_s)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def to_row(self, namespace: str, start_us: int, window_us: int, is_final: bool) -> Row:
        self.rejoin_s.sort()
        decided = self.rejoined + self.dropped
        return window_columns(namespace, start_us, window_us) | {
            "disconnects": self.disconnects,
            "rejoined": self.rejoined,
            "dropped": self.dropped,
            "unresolved": self.unresolved,
            "superseded": self.superseded,
            "orphan_outcomes": self.orphans,
            "cohort_drop_ratio": self.dropped / decided if decided else None,
            "rejoin_seconds_p50": percentile(self.rejoin_s, 50),
            "rejoin_seconds_p95": percentile(self.rejoin_s, 95),
            "is_final": is_final,
        }

    def copy(self) -> OutcomeAgg:
        out = OutcomeAgg()
        out.disconnects, out.rejoined, out.dropped = self.disconnects, self.rejoined, self.dropped
        out.unresolved, out.superseded, out.orphans = self.unresolved, self.superseded, self.orphans
        out.rejoin_s = list(self.rejoin_s)
        return out


class OutcomeMatcher:
    """One namespace's incidents, matched as the watermark passes the events."""

    def __init__(self, window_us: int, horizon_us: int) -> None:
        self.window_us = window_us
        self.horizon_us = horizon_us
        self.pending: list[OutcomeEvent] = []  # not yet matched
        self.open: dict[int, int] = {}  # player -> disconnect time
        self.aggs: dict[int, OutcomeAgg] = {}  # window start -> outcomes

    def add(
        self, t_us: int, kind: int, event_id: str, session: str | None, user: str | None
    ) -> None:
        """An on-time event of this namespace (other kinds and anonymous events are ignored)."""
        if kind in _MATCHED and session and user:
            self.pending.append((t_us, kind, player_hash(id_hash(session), user)))

    def extend(self, events: list[OutcomeEvent]) -> None:
        """Events already in the matcher's form (flows.core.partials)."""
        self.pending += events

    def _agg(self, t_us: int) -> OutcomeAgg:
        start = t_us - t_us % self.window_us
        agg = self.aggs.get(start)
        if agg is None:
            agg = self.aggs[start] = OutcomeAgg()
        return agg

    def advance(self, closed_until: int) -> None:
        """Match every event before ``closed_until`` in event-time order; expire incidents."""
        pending = self.pending
        ready = [e for e in pending if e[0] < closed_until]
        if len(ready) < len(pending):
            self.pending = [e for e in pending if e[0] >= closed_until]
        else:
            self.pending = []
        ready.sort()
        horizon, opened_at, agg_of = self.horizon_us, self.open, self._agg
        for t_us, kind, player in ready:
            opened = opened_at.get(player)
            if opened is not None and t_us - opened > horizon:
                agg_of(opened).unresolved += 1  # its horizon passed before this event
                del opened_at[player]
                opened = None
            if kind == DISCONNECTED:
                agg_of(t_us).disconnects += 1
                if opened is not None:
                    agg_of(opened).superseded += 1
                opened_at[player] = t_us
            elif opened is None:
                agg_of(t_us).orphans += 1
            else:
                agg = agg_of(opened)
                del opened_at[player]
                if kind == REJOINED:
                    agg.rejoined += 1
                    agg.rejoin_s.append((t_us - opened) / US_PER_S)
                else:
                    agg.dropped += 1
        # An incident whose horizon ends before every event still to come is unresolved.
        for player, opened in list(self.open.items()):
            if opened + self.horizon_us < closed_until:
                self._agg(opened).unresolved += 1
                del self.open[player]

    def final_aggs(self, closed_until: int) -> dict[int, OutcomeAgg]:
        """The windows whose every disconnect is decided, removed from the state."""
        w = self.window_us
        done = sorted(s for s in self.aggs if s + w + self.horizon_us <= closed_until)
        return {s: self.aggs.pop(s) for s in done}

    def provisional_aggs(self) -> dict[int, OutcomeAgg]:
        """Copies of the windows not final yet."""
        return {s: agg.copy() for s, agg in sorted(self.aggs.items())}

    def final_rows(self, namespace: str, closed_until: int) -> list[Row]:
        """Rows of the windows whose every disconnect is decided, removed from the state."""
        w = self.window_us
        return [a.to_row(namespace, s, w, True) for s, a in self.final_aggs(closed_until).items()]

    def provisional_rows(self, namespace: str) -> list[Row]:
        w = self.window_us
        return [a.to_row(namespace, s, w, False) for s, a in self.provisional_aggs().items()]

    def snapshot(self) -> tuple[Any, ...]:
        return (list(self.pending), dict(self.open), {s: a.copy() for s, a in self.aggs.items()})

    def restore(self, snap: tuple[Any, ...]) -> None:
        pending, opened, aggs = snap
        self.pending, self.open = list(pending), dict(opened)
        self.aggs = {s: a.copy() for s, a in aggs.items()}
