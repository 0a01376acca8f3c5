"""The items that flow between the dataflow's steps. Plain tuples: cheap to build and pickle."""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

Row = dict[str, Any]


class EventRef(NamedTuple):
    """A counted, deduplicated, on-time event on its way to its namespace's windows."""

    t_us: int
    kind: int
    id: str
    user_id: str | None
    session_id: str | None
    offset: int
    key: bytes | None  # raw key and value: only while the partition had no event time yet
    value: bytes | None


class Chunk(NamedTuple):
    """One namespace's events from one consumed batch of one Kafka partition."""

    namespace: str
    partition: int
    next_offset: int
    events: list[EventRef]

    def __reduce__(self) -> tuple[Any, ...]:
        # Chunks cross processes to their namespace's worker. Pickled as they are, each
        # EventRef costs Python-level calls; as plain tuples the pickler does it all in C.
        plain = list(map(tuple, self.events))
        return (_chunk, (self.namespace, self.partition, self.next_offset, plain))


def _chunk(
    namespace: str, partition: int, next_offset: int, events: list[tuple[Any, ...]]
) -> Chunk:
    return Chunk(namespace, partition, next_offset, list(map(event_ref, events)))


event_ref = partial(tuple.__new__, EventRef)
"""An EventRef from a plain tuple of its fields, without a Python-level call (hot path)."""


class Progress(NamedTuple):
    """How far a partition's event time has got. Sent on a partition's first batch of a run,
    on every batch with events, and when it has read all there is (``pending`` False)."""

    partition: int
    next_offset: int
    max_t_us: int | None  # newest event time ever read from the partition
    pending: bool  # more data is known to be waiting in the partition
    namespaces: dict[str, int]  # namespace -> latest event time in this batch


class Tick(NamedTuple):
    """Windows ending at or before ``closed_until`` are final, once the namespace has seen
    every batch the watermark was computed from (``required``: partition -> next offset)."""

    closed_until: int
    required: dict[int, int]


class Counts(NamedTuple):
    """What happened to messages. counted + skipped + duplicates + late + dead_letters
    always equals messages."""

    messages: int = 0
    counted: int = 0
    skipped: int = 0
    duplicates: int = 0
    late: int = 0
    dead_letters: int = 0

    def plus(self, other: Counts) -> Counts:
        return Counts(*(a + b for a, b in zip(self, other, strict=True)))


class BatchStats(NamedTuple):
    """Bookkeeping for the run manifest and progress display."""

    partition: int
    first_offset: int  # where this run started reading the partition
    next_offset: int  # position after this batch
    end_offset: int | None  # where a scheduled run stops; None when following
    counts: Counts
    gap: str | None = None  # offsets lost to retention or a recreated topic


class BatchResult(NamedTuple):
    """Everything one consumed batch of one partition produced."""

    chunks: dict[str, Chunk]
    progress: Progress | None
    late: list[Row]
    dead: list[Row]
    stats: BatchStats
    flush_tick: bool = False  # while following, about every second: sinks write what is due


class FlushTick(NamedTuple):
    """Sent to every sink partition while following: write what is due, even when idle."""
