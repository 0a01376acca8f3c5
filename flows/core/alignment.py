"""Event-time alignment of the partitions read by one process.

Over a backlog, partitions are read at slightly different paces, and the gap between their
newest event times wanders: over four simulated days read in one run it reached hours. The
watermark follows the slowest partition, so everything the others read past it (open
windows, outcome events waiting to be matched) stays in memory: peak memory grew with the
length of the backlog. A partition whose newest event time is more than the allowed drift
ahead of the slowest partition still reading is therefore not read until that one catches
up (what Flink calls watermark alignment).

The rows do not depend on it: each partition is processed in its own offset order and the
watermark is the minimum over partitions whatever order they were read in. The slowest
partition is never held back, so reading always progresses; a partition that reached its
end (or, while following, caught up) no longer holds the others back.

One process aligns the partitions it reads; processes of a cluster align separately.
"""

from __future__ import annotations

import threading


class Alignment:
    """The newest event time of each partition still reading in this process."""

    def __init__(self, max_drift_us: int | None) -> None:
        """``max_drift_us``: how far ahead of the slowest partition one may read (None: no
        limit)."""
        self.max_drift_us = max_drift_us
        self._newest: dict[int, int] = {}
        self._lock = threading.Lock()

    def update(self, partition: int, newest_us: int | None, reading: bool) -> None:
        """Record a partition's newest event time after a batch; ``reading``: False once it
        reached its end or caught up (it holds nobody back then)."""
        if self.max_drift_us is None:
            return
        with self._lock:
            if reading and newest_us is not None:
                self._newest[partition] = newest_us
            else:
                self._newest.pop(partition, None)

    def ahead(self, partition: int, newest_us: int | None) -> bool:
        """Whether the partition should wait: its newest event time is more than the drift
        ahead of another partition still reading."""
        if self.max_drift_us is None or newest_us is None:
            return False
        with self._lock:
            slowest = min(self._newest.values(), default=newest_us)
        return newest_us - slowest > self.max_drift_us
