"""The watermark: how far the topic as a whole has got in event time.

Each partition reports the newest event time it has read. The watermark is the minimum
over partitions of these maxima, less the allowed lateness: a fast partition cannot make a
slower one's events late. Until every partition has reported in a run there is no
watermark; a partition that has data waiting but no event time yet holds it back; a
partition with nothing to read and no event time (empty, or only other event kinds) does
not. Windows ending at or before it are final. It depends only on event times read, never
on the wall clock, so a backlog read hours after it was produced closes exactly the same
windows.

The clock tells each shard with open windows or incidents when the watermark has passed a
window boundary, together with the read positions it was computed from (so the shard can
wait until it has the data that went into it) and the other shards of its namespace the
same tick went to (so the namespace's rows step knows whose reports to wait for). It sends
such a round of ticks when the watermark has moved on by ``step_us`` since the last one, when
a partition has caught up with its end, and at the end of the input: over a backlog, a
round per hour of event time rather than one per batch.

Events of a partition that had no event time yet (it held no watermark back) come here
whole: one for a window a round already made final is late; the others go on to their
shards from here, before any later tick.
"""

from __future__ import annotations

import pickle
from typing import Any

from flows.core.eventtime import US_PER_S
from flows.core.items import EventRef, Progress, Row, Tick, split_key
from flows.core.partials import fold, to_parts
from flows.core.partition import late_row

ClockOutput = tuple[str, Any]
"""("to_shard", (shard key, Tick | ShardPart)) | ("late", late_events rows) | ("late_count", n)."""

ROUND_STEP_US = 3600 * US_PER_S


class _Track:
    __slots__ = ("max_t_us", "required", "sent")

    def __init__(self) -> None:
        self.required: dict[int, int] = {}
        self.max_t_us: int | None = None
        self.sent: int | None = None


class Clock:
    """Global watermark over partitions, and ticks to the shards."""

    def __init__(
        self,
        window_us: int,
        lateness_us: int,
        partitions: list[int],
        horizon_us: int = 0,
        shards: int = 1,
        step_us: int = ROUND_STEP_US,
        spans_us: tuple[int, ...] = (),
        closed_floor: int | None = None,
    ) -> None:
        self.window_us = window_us
        # every window length a shard keeps (the window, the roll-ups): a shard needs ticks
        # until the latest window of any length holding its newest event has ended
        self.spans_us = tuple(spans_us) or (window_us,)
        self.horizon_us = horizon_us  # shards need ticks this long past their last window
        self.lateness_us = lateness_us
        self.shards = shards
        self.step_us = step_us
        self.partitions = list(partitions)
        self.partition_max: dict[int, int] = {}
        self.keys: dict[str, _Track] = {}
        self.pending: dict[int, bool] = {}  # this run's reports; not part of the snapshot
        self.caught_up = False  # a partition reached its end since the last round
        # closed_until of the latest round; a clock without saved state starts where the
        # output's final rows end (a rebuilt state: what is final is not made final again)
        self.emitted: int | None = closed_floor

    def watermark(self) -> int | None:
        """Event time before which the topic is complete (µs), or None if not known yet."""
        maxima = []
        for p in self.partitions:
            if p not in self.pending:
                return None  # not heard from this partition yet in this run
            if p in self.partition_max:
                maxima.append(self.partition_max[p])
            elif self.pending[p]:
                return None  # data waiting, event time unknown
        if not maxima:
            return None
        return min(maxima) - self.lateness_us

    def closed_until(self) -> int | None:
        """Latest window boundary at or before the watermark."""
        wm = self.watermark()
        return None if wm is None else wm - wm % self.window_us

    def on_progress(self, progress: Progress) -> list[ClockOutput]:
        """Take a partition's progress in; returns the fresh events' parts and late rows."""
        p = progress.partition
        if p not in self.partitions:
            self.partitions.append(p)  # the topic grew
        self.pending[p] = progress.pending
        if not progress.pending:
            self.caught_up = True
        t = progress.max_t_us
        if t is not None and self.partition_max.get(p, t) <= t:
            self.partition_max[p] = t
        out: list[ClockOutput] = []
        touched = dict(progress.keys)
        if progress.fresh:
            out += self._fresh(progress, touched)
        for key, t_us in touched.items():
            track = self.keys.get(key)
            if track is None:
                track = self.keys[key] = _Track()
            track.required[p] = progress.next_offset
            if track.max_t_us is None or t_us > track.max_t_us:
                track.max_t_us = t_us
        return out

    def _fresh(self, progress: Progress, touched: dict[str, int]) -> list[ClockOutput]:
        w, closed = self.window_us, self.emitted
        out: list[ClockOutput] = []
        on_time: list[EventRef] = []
        late: list[Row] = []
        for ev in progress.fresh:
            start = ev.t_us - ev.t_us % w
            if closed is not None and start + w <= closed:
                late.append(_late(progress.partition, ev))
            else:
                on_time.append(ev)
        if late:
            out += [("late", late), ("late_count", len(late))]
        counted = ((e.t_us, e.kind, e.id, e.namespace, e.user_id, e.session_id) for e in on_time)
        folded = fold(counted, w, self.shards)
        parts, latest = to_parts(folded, progress.partition, progress.next_offset)
        out += [("to_shard", part) for part in parts]
        for key, t_us in latest.items():
            touched[key] = max(touched.get(key, t_us), t_us)
        return out

    def round(self, force: bool = False) -> list[ClockOutput]:
        """Ticks to every shard that needs one, if a round is due."""
        closed = self.closed_until()
        if closed is None or (self.emitted is not None and closed <= self.emitted):
            return []
        due = force or self.caught_up or self.emitted is None
        if not due and closed - self.emitted < self.step_us:  # type: ignore[operator]
            return []
        self.emitted = closed
        self.caught_up = False
        spans = self.spans_us
        by_namespace: dict[str, list[tuple[str, int, _Track]]] = {}
        for key, track in self.keys.items():
            if track.sent is not None and track.sent >= closed:
                continue
            assert track.max_t_us is not None
            t = track.max_t_us
            last_end = max(t - t % n + n for n in spans) + self.horizon_us
            if track.sent is not None and track.sent >= last_end:
                continue  # every window and incident of this shard is already closed
            namespace, shard = split_key(key)
            by_namespace.setdefault(namespace, []).append((key, shard, track))
        out: list[ClockOutput] = []
        for tracks in by_namespace.values():
            expected = tuple(sorted(shard for _key, shard, _track in tracks))
            for key, _shard, track in tracks:
                track.sent = closed
                out.append(("to_shard", (key, Tick(closed, dict(track.required), expected))))
        return out

    def snapshot(self) -> bytes:
        keys = {k: (t.required, t.max_t_us, t.sent) for k, t in self.keys.items()}
        return pickle.dumps((self.partition_max, keys, self.emitted))

    @staticmethod
    def saved_progress(snap: bytes) -> tuple[dict[int, int], int | None]:
        """(newest event time per partition, ``closed_until`` of the latest round) of a
        saved clock."""
        partition_max, _keys, emitted = pickle.loads(snap)
        return dict(partition_max), emitted

    @classmethod
    def restore(
        cls,
        window_us: int,
        lateness_us: int,
        partitions: list[int],
        snap: bytes,
        horizon_us: int = 0,
        shards: int = 1,
        step_us: int = ROUND_STEP_US,
        spans_us: tuple[int, ...] = (),
    ) -> Clock:
        self = cls(window_us, lateness_us, partitions, horizon_us, shards, step_us, spans_us)
        partition_max, keys, self.emitted = pickle.loads(snap)
        self.partition_max = dict(partition_max)
        for key, (required, max_t, sent) in keys.items():
            track = self.keys[key] = _Track()
            track.required, track.max_t_us, track.sent = dict(required), max_t, sent
        return self


def _late(partition: int, ev: EventRef) -> Row:
    return late_row(partition, ev.offset, ev.key, ev.value, ev.id, ev.namespace, ev.kind, ev.t_us)
