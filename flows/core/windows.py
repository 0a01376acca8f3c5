"""Window state per namespace: aggregate, merge, close on the watermark, emit rows.

``WindowAgg`` is the pure aggregate of one window (``add``/``merge``/``to_row``).
``NamespaceWindows`` holds one namespace's open windows and applies watermark ticks, only
once it has received every batch a tick was computed from, so a tick never overtakes data.
"""

from __future__ import annotations

from typing import Any

from flows.core.eventtime import US_PER_S, to_datetime, window_columns
from flows.core.items import Chunk, EventRef, Row, Tick
from flows.core.outcomes import OutcomeMatcher
from schemas.events import COUNTED_NAMES, DISCONNECTED, DROPPED, REJECTED, REJOINED


class WindowAgg:
    """Counts and distinct sets of one (namespace, window)."""

    __slots__ = ("counts", "sessions", "users")

    def __init__(self) -> None:
        self.counts = [0, 0, 0, 0]
        self.users: set[str] = set()  # userId of disconnects
        self.sessions: set[str] = set()  # sessionId of disconnected/rejoined/dropped

    def add(self, kind: int, user_id: str | None, session_id: str | None) -> None:
        self.counts[kind] += 1
        if kind != REJECTED:
            if session_id:
                self.sessions.add(session_id)
            if kind == DISCONNECTED and user_id:
                self.users.add(user_id)

    def merge(self, other: WindowAgg) -> WindowAgg:
        out = WindowAgg()
        out.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        out.users = self.users | other.users
        out.sessions = self.sessions | other.sessions
        return out

    def copy(self) -> WindowAgg:
        out = WindowAgg()
        out.counts = list(self.counts)
        out.users = set(self.users)
        out.sessions = set(self.sessions)
        return out

    def to_row(self, namespace: str, start_us: int, window_us: int, is_final: bool) -> Row:
        disconnected = self.counts[DISCONNECTED]
        rejoined = self.counts[REJOINED]
        dropped = self.counts[DROPPED]
        minutes = window_us / (60 * US_PER_S)
        return window_columns(namespace, start_us, window_us) | {
            "disconnected": disconnected,
            "rejoined": rejoined,
            "dropped": dropped,
            "rejected": self.counts[REJECTED],
            "users_disconnected": len(self.users),
            "parties_affected": len(self.sessions),
            "disconnects_per_min": disconnected / minutes,
            "drops_per_min": dropped / minutes,
            "drop_ratio": dropped / disconnected if disconnected else None,
            "rejoin_ratio": rejoined / disconnected if disconnected else None,
            "is_final": is_final,
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WindowAgg):
            return NotImplemented
        return (self.counts, self.users, self.sessions) == (
            other.counts,
            other.users,
            other.sessions,
        )

    def __repr__(self) -> str:
        return f"WindowAgg({self.counts}, users={len(self.users)}, parties={len(self.sessions)})"


Output = tuple[str, Any]
"""("row", rates row) | ("outcome", disconnect_outcomes row) | ("late", late_events row)
| ("late_count", n)."""


class NamespaceWindows:
    """One namespace's open windows and watermark bookkeeping."""

    def __init__(self, window_us: int, horizon_us: int = 3600 * US_PER_S) -> None:
        self.namespace = ""  # learnt from the first chunk
        self.outcomes = OutcomeMatcher(window_us, horizon_us)
        self.window_us = window_us
        self.closed_until: int | None = None  # windows ending at or before it are final
        self.seen: dict[int, int] = {}  # partition -> next offset of the latest chunk
        self.pending: list[Tick] = []
        self.windows: dict[int, WindowAgg] = {}

    def on_chunk(self, chunk: Chunk) -> list[Output]:
        self.namespace = chunk.namespace
        out: list[Output] = []
        w = self.window_us
        closed = self.closed_until
        windows = self.windows
        for ev in chunk.events:
            start = ev.t_us - ev.t_us % w
            if closed is not None and start + w <= closed:
                out.append(("late", self._late_row(chunk.partition, ev)))
                continue
            agg = windows.get(start)
            if agg is None:
                agg = windows[start] = WindowAgg()
            agg.add(ev.kind, ev.user_id, ev.session_id)
            self.outcomes.add(ev.t_us, ev.kind, ev.id, ev.session_id, ev.user_id)
        if out:
            out.append(("late_count", len(out)))
        if self.seen.get(chunk.partition, -1) < chunk.next_offset:
            self.seen[chunk.partition] = chunk.next_offset
        return out + self._apply_ready()

    def on_tick(self, tick: Tick) -> list[Output]:
        self.pending.append(tick)
        return self._apply_ready()

    def _ready(self, tick: Tick) -> bool:
        return all(self.seen.get(p, -1) >= off for p, off in tick.required.items())

    def _apply_ready(self) -> list[Output]:
        out: list[Output] = []
        while self.pending and self._ready(self.pending[0]):
            tick = self.pending.pop(0)
            if self.closed_until is None or tick.closed_until > self.closed_until:
                self.closed_until = tick.closed_until
                out.extend(self._close(tick.closed_until))
        return out

    def _close(self, closed_until: int) -> list[Output]:
        done = sorted(s for s in self.windows if s + self.window_us <= closed_until)
        out: list[Output] = [
            ("row", self.windows.pop(s).to_row(self.namespace, s, self.window_us, True))
            for s in done
        ]
        self.outcomes.advance(closed_until)
        out += [("outcome", r) for r in self.outcomes.final_rows(self.namespace, closed_until)]
        return out

    def provisional(self) -> list[Output]:
        """Rows of the windows still open, marked not final (at the end of a run)."""
        out = self._apply_ready()
        out += [
            ("row", agg.to_row(self.namespace, s, self.window_us, False))
            for s, agg in sorted(self.windows.items())
        ]
        return out + [("outcome", r) for r in self.outcomes.provisional_rows(self.namespace)]

    def _late_row(self, partition: int, ev: EventRef) -> Row:
        return {
            "id": ev.id,
            "namespace": self.namespace,
            "name": COUNTED_NAMES[ev.kind],
            "event_time": to_datetime(ev.t_us),
            "partition": partition,
            "offset": ev.offset,
            "key": ev.key,
            "value": ev.value,
        }

    def snapshot(self) -> tuple[Any, ...]:
        return (
            self.namespace,
            self.closed_until,
            dict(self.seen),
            list(self.pending),
            {s: a.copy() for s, a in self.windows.items()},
            self.outcomes.snapshot(),
        )

    @classmethod
    def restore(
        cls, window_us: int, snap: tuple[Any, ...], horizon_us: int = 3600 * US_PER_S
    ) -> NamespaceWindows:
        self = cls(window_us, horizon_us)
        self.namespace, closed, seen, pending, windows, outcomes = snap
        self.closed_until, self.seen, self.pending = closed, dict(seen), list(pending)
        self.windows = {s: a.copy() for s, a in windows.items()}
        self.outcomes.restore(outcomes)
        return self
