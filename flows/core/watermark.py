"""The watermark: how far the topic as a whole has got in event time.

Each partition reports the newest event time it has read. The watermark is the minimum
over partitions of these maxima, less the allowed lateness: a fast partition cannot make a
slower one's events late. Until every partition has reported in a run there is no
watermark; a partition that has data waiting but no event time yet holds it back; a
partition with nothing to read and no event time (empty, or only other event kinds) does
not. Windows ending
at or before it are final. It depends only on event times read, never on the wall clock, so
a backlog read hours after it was produced closes exactly the same windows.

The clock tells each namespace with open windows when the watermark passes a window
boundary, together with the read positions it was computed from, so the namespace can
wait until it has the data that went into it.
"""

from __future__ import annotations

from typing import Any

from flows.core.items import Progress, Tick


class _NsTrack:
    __slots__ = ("max_t_us", "required", "sent")

    def __init__(self) -> None:
        self.required: dict[int, int] = {}
        self.max_t_us: int | None = None
        self.sent: int | None = None


class Clock:
    """Global watermark over partitions, and ticks to the namespaces."""

    def __init__(
        self, window_us: int, lateness_us: int, partitions: list[int], horizon_us: int = 0
    ) -> None:
        self.window_us = window_us
        self.horizon_us = horizon_us  # namespaces need ticks this long past their last window
        self.lateness_us = lateness_us
        self.partitions = list(partitions)
        self.partition_max: dict[int, int] = {}
        self.namespaces: dict[str, _NsTrack] = {}
        self.pending: dict[int, bool] = {}  # this run's reports; not part of the snapshot
        self.last_closed: int | None = None  # closed_until when every namespace was last looked at

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

    def on_progress(self, progress: Progress) -> list[tuple[str, Tick]]:
        p = progress.partition
        if p not in self.partitions:
            self.partitions.append(p)  # the topic grew
        self.pending[p] = progress.pending
        t = progress.max_t_us
        if t is not None and self.partition_max.get(p, t) <= t:
            self.partition_max[p] = t
        for ns, t_us in progress.namespaces.items():
            track = self.namespaces.get(ns)
            if track is None:
                track = self.namespaces[ns] = _NsTrack()
            track.required[p] = progress.next_offset
            if track.max_t_us is None or t_us > track.max_t_us:
                track.max_t_us = t_us
        return self._ticks(progress.namespaces)

    def _ticks(self, touched: dict[str, int]) -> list[tuple[str, Tick]]:
        closed = self.closed_until()
        if closed is None:
            return []
        if closed == self.last_closed:
            names = list(touched)  # nothing new closed: only these can need a first tick
        else:
            names = list(self.namespaces)
            self.last_closed = closed
        out = []
        w = self.window_us
        for ns in names:
            track = self.namespaces[ns]
            if track.sent is not None and track.sent >= closed:
                continue
            assert track.max_t_us is not None
            last_end = track.max_t_us - track.max_t_us % w + w + self.horizon_us
            if track.sent is not None and track.sent >= last_end:
                continue  # every window of this namespace is already closed
            track.sent = closed
            out.append((ns, Tick(closed, dict(track.required))))
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "partition_max": dict(self.partition_max),
            "namespaces": {
                ns: (dict(t.required), t.max_t_us, t.sent) for ns, t in self.namespaces.items()
            },
        }

    @classmethod
    def restore(
        cls,
        window_us: int,
        lateness_us: int,
        partitions: list[int],
        snap: dict[str, Any],
        horizon_us: int = 0,
    ) -> Clock:
        self = cls(window_us, lateness_us, partitions, horizon_us)
        self.partition_max = dict(snap["partition_max"])
        for ns, (required, max_t, sent) in snap["namespaces"].items():
            track = self.namespaces[ns] = _NsTrack()
            track.required, track.max_t_us, track.sent = dict(required), max_t, sent
        return self
