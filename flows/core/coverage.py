"""What the output's final rows cover, what a run may still write, and where a lost state is
read again from.

Pure functions over event times (µs) and read positions. The output's record
(``flows/edges/table.py``) stores their inputs; the run applies their answers.

**Finality.** A window of length ``n`` starting at ``s`` is final once the watermark's window
boundary ``closed`` reaches its end: ``s + n <= closed`` for rates, ``s + n + horizon <=
closed`` for disconnect outcomes (every disconnect in it decided). Rows of windows final
under the output's record are never written again: the output already holds them.

**Marks.** A partition's running maximum event time M(o), over its counted events up to
offset ``o``, never decreases, so every counted event at or after a time R lies at or after
the first offset where M reached R. A partition keeps a mark each time M enters a new
bucket of event time (window-length buckets): ``(bucket, offset, M before that offset)``.
The marks say from which offset a partition must be read again to see every counted event
at or after R, and what M was just before it (the lateness rule needs it).

**Rebuilding.** A run without a usable state reads each partition again from where the
rows that are not final yet begin (their windows, the open roll-up windows, an outcome
horizon before the open outcome windows), less the ids the dedup rule still remembers
there; from that point on, every decision is the one the lost state would have made.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from typing import NamedTuple

Mark = tuple[int, int, int | None]
"""(bucket, offset, M before the offset): at ``offset`` the running maximum event time first
reached ``bucket * bucket_us`` or later."""

NO_MARK = -(2**62)


class Start(NamedTuple):
    """Where a partition is read again from to rebuild a lost state."""

    offset: int  # first offset to read (the dedup memory is rebuilt from here)
    max_before: int | None  # the partition's newest event time before it
    exact_from: int  # from here on every decision equals the lost state's


def first_open(closed_us: int, length_us: int) -> int:
    """Start of the first window of ``length_us`` not final when windows ending at or before
    ``closed_us`` are."""
    return closed_us - closed_us % length_us


def first_open_outcome(closed_us: int, length_us: int, horizon_us: int) -> int:
    """Start of the first outcome window of ``length_us`` not final: one whose end plus the
    horizon is after ``closed_us``."""
    edge = closed_us - length_us - horizon_us
    return (edge // length_us + 1) * length_us


def replay_time(closed_us: int, lengths: Iterable[int], horizon_us: int) -> int:
    """The earliest event time the rows not final yet depend on: the first open window of
    each length (the base window and every roll-up), and an outcome horizon before the first
    open outcome window of each (a disconnect that long before can still resolve in it)."""
    times = []
    for n in lengths:
        times.append(first_open(closed_us, n))
        times.append(first_open_outcome(closed_us, n, horizon_us) - horizon_us)
    return min(times)


def find_mark(marks: list[Mark], complete: bool, bucket: int) -> Mark | None:
    """The mark a partition is read again from to see every counted event in ``bucket`` or
    later: the last mark at or before ``bucket``. Before the first mark: that mark itself when
    it is the partition's first counted event (``complete``), else None (unknown)."""
    i = bisect_right(marks, bucket, key=lambda m: m[0])
    if i:
        return marks[i - 1]
    return marks[0] if complete and marks else None


def rebuild_start(
    marks: list[Mark], complete: bool, replay_us: int, dedup_us: int, bucket_us: int
) -> Start | None:
    """Where a partition is read again from so that every counted event at or after
    ``replay_us`` is seen with the decisions the state made: from the offset where its
    running maximum reached ``replay_us`` (exact from there), less the ids the dedup rule
    remembers at that point (those of buckets not wholly before that maximum less
    ``dedup_us``). None when the marks do not reach back that far."""
    exact = find_mark(marks, complete, replay_us // bucket_us)
    if exact is None:
        return None
    _bucket, offset, max_before = exact
    if max_before is None:
        return Start(offset, None, offset)
    warm = find_mark(marks, complete, (max_before - dedup_us) // bucket_us)
    if warm is None:
        return None
    return Start(warm[1], warm[2], offset)


def max_before(marks: list[Mark], offset: int, newest_us: int | None) -> int | None:
    """An upper bound of the running maximum before ``offset`` (``newest_us`` when no mark is
    at or after it): no counted event before ``offset`` is newer."""
    i = bisect_left(marks, offset, key=lambda m: m[1])
    return marks[i][2] if i < len(marks) else newest_us


def prune_marks(marks: list[Mark], limit_bucket: int) -> bool:
    """Drop the marks before ``limit_bucket`` but the last of them (it still answers for its
    bucket and later); True if any was dropped."""
    i = bisect_left(marks, limit_bucket, key=lambda m: m[0])
    if i <= 1:
        return False
    del marks[: i - 1]
    return True


class Window(NamedTuple):
    """A windowed dataset: its window length and whether its rows are final a horizon
    later (outcomes)."""

    name: str
    length_us: int
    outcomes: bool


def floor_of(window: Window, closed_us: int | None, horizon_us: int) -> int | None:
    """Start of the dataset's first window not final under ``closed_us``: the rows before it
    are final in the output (None: nothing is)."""
    if closed_us is None:
        return None
    if window.outcomes:
        return first_open_outcome(closed_us, window.length_us, horizon_us)
    return first_open(closed_us, window.length_us)


def affected_until(window: Window, newest_lost_us: int, horizon_us: int) -> int:
    """End (exclusive, on window starts) of the dataset's windows that counted events no
    newer than ``newest_lost_us`` can change: the windows holding them, and for outcomes an
    outcome horizon more (a lost disconnect changes how a later rejoin or drop counts)."""
    t = newest_lost_us + (horizon_us if window.outcomes else 0)
    return t - t % window.length_us + window.length_us
