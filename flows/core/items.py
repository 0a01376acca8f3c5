"""The items that flow between the dataflow's steps. Plain tuples: cheap to build and pickle.

The partition step folds each consumed batch into partial aggregates, one ``ShardPart``
per (namespace, shard) it touched; the shard step merges them and, when the watermark
passes a window, reports what it holds for it to the namespace's rows step, which adds the
shards' reports up into rows.
"""

from __future__ import annotations

from array import array
from datetime import date
from functools import partial
from typing import Any, NamedTuple

Row = dict[str, Any]

FLOW_ID = "party_rates"
KAFKA, CLOCK = "kafka", "clock"
"""Names of the dataflow's input and clock steps: their saved states are read outside the
dataflow (flows.edges.statedir, flows.edges.table) under these step ids."""
SOURCE_STEP = f"{FLOW_ID}.{KAFKA}"
CLOCK_STEP = f"{FLOW_ID}.{CLOCK}"

WindowPart = list[Any]
"""A partial aggregate of one (namespace, window) in one shard:
``[disconnected, rejoined, dropped, rejected, user hashes (set), party hashes (set)]``."""

OutcomeEvent = tuple[int, int, int]
"""An event outcome matching needs: ``(t_us, kind, player)``, the player a stable 64-bit
hash of its (sessionId, userId). Sorted, they are in the order matching takes them: by
time, and at equal times a disconnect, then a rejoin, then a drop."""


class EventRef(NamedTuple):
    """A counted, deduplicated event kept whole: only while its partition had no event time
    yet, when it may still meet a window already final (see flows.core.watermark)."""

    t_us: int
    kind: int
    id: str
    namespace: str
    user_id: str | None
    session_id: str | None
    offset: int
    key: bytes | None
    value: bytes | None


event_ref = partial(tuple.__new__, EventRef)
"""An EventRef from a plain tuple of its fields, without a Python-level call (hot path)."""


class ShardPart(NamedTuple):
    """What one consumed batch of one partition holds for one (namespace, shard)."""

    namespace: str
    shard: int
    partition: int
    next_offset: int  # after the batch: a tick may wait for it
    windows: dict[int, WindowPart]  # window start -> partial aggregate
    events: list[OutcomeEvent]  # for outcome matching

    def __reduce__(self) -> tuple[Any, ...]:
        # Parts cross processes to their shard's worker (Bytewax pickles every item a keyed
        # step receives in a cluster): packed into arrays they pickle as a few buffers
        # instead of an object per event and per hash. Only done when pickled.
        windows = [
            (start, w[0], w[1], w[2], w[3], array("Q", w[4]), array("Q", w[5]))
            for start, w in self.windows.items()
        ]
        ts, kinds, players = zip(*self.events, strict=True) if self.events else ((), (), ())
        events = (array("q", ts), bytes(kinds), array("Q", players))
        return (_unpack_part, (*self[:4], windows, events))


def _unpack_part(
    namespace: str,
    shard: int,
    partition: int,
    next_offset: int,
    windows: list[tuple[Any, ...]],
    events: tuple[array[int], bytes, array[int]],
) -> ShardPart:
    unpacked = {start: [d, r, x, j, set(u), set(p)] for start, d, r, x, j, u, p in windows}
    rows = list(zip(*events, strict=True))
    return ShardPart(namespace, shard, partition, next_offset, unpacked, rows)


class Progress(NamedTuple):
    """How far a partition's event time has got. Sent on a partition's first batch of a run,
    on every batch with events, and when it has read all there is (``pending`` False)."""

    partition: int
    next_offset: int
    max_t_us: int | None  # newest event time ever read from the partition
    pending: bool  # more data is known to be waiting in the partition
    keys: dict[str, int]  # shard key -> latest event time in this batch
    fresh: list[EventRef] = []  # events of a partition that had no event time yet


class Tick(NamedTuple):
    """Windows ending at or before ``closed_until`` are final, once the shard has seen
    every batch the watermark was computed from (``required``: partition -> next offset).
    ``expected``: the shards of the namespace this tick went to, which all report on it."""

    closed_until: int
    required: dict[int, int]
    expected: tuple[int, ...]


class Report(NamedTuple):
    """What a shard closed on one tick (or holds at the end of a run, ``provisional``)."""

    namespace: str
    closed_until: int
    shard: int
    expected: tuple[int, ...]
    rates: dict[int, tuple[int, ...]]  # window start -> (4 counts, users, parties)
    outcomes: dict[int, tuple[Any, ...]]  # window start -> OutcomeAgg.fields()
    provisional: bool = False
    rollup_rates: dict[tuple[int, int], tuple[int, ...]] = {}  # (length, start) ->
    rollup_outcomes: dict[tuple[int, int], tuple[Any, ...]] = {}
    rollups_follow: bool = False  # a shard's report: its roll-ups report on this tick too
    from_rollups: bool = False  # the report of a shard's roll-ups


class RollupPart(NamedTuple):
    """What a shard closed, for its roll-ups: the base windows made final and the outcome
    aggregates decided since its last part (or, ``provisional``, what is open at a run's
    end). Sent when a roll-up becomes final on the tick (``answer``: the roll-ups report on
    it) or when the shard holds many closed windows."""

    namespace: str
    shard: int
    closed_until: int
    windows: dict[int, WindowPart]
    outcomes: dict[int, tuple[Any, ...]]
    provisional: bool = False
    answer: bool = True  # the shard's report said the roll-ups report on this tick


class Counts(NamedTuple):
    """What happened to messages. counted + skipped + duplicates + late + dead_letters +
    before_start + reread always equals messages."""

    messages: int = 0
    counted: int = 0
    skipped: int = 0
    duplicates: int = 0
    late: int = 0
    dead_letters: int = 0
    before_start: int = 0  # events older than the state's start (--start-at)
    reread: int = 0  # read again to rebuild a state: an earlier run counted them

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
    group_error: str | None = None  # why committing to the consumer group failed, once


class BatchResult(NamedTuple):
    """Everything one consumed batch of one partition produced."""

    parts: list[tuple[str, ShardPart]]  # (shard key, part)
    progress: Progress | None
    late: list[Row]
    dead: list[Row]
    stats: BatchStats
    flush_tick: bool = False  # while following, about every second: sinks write what is due


class FlushTick(NamedTuple):
    """Sent to every sink partition while following: write what is due, even when idle."""


class DaySeen(NamedTuple):
    """Sent to every partition of a dataset's sink when its rows first show a final row of
    a later day: a partition that owns only earlier days' files can write them then."""

    day: date


def shard_key(namespace: str, shard: int) -> str:
    """The key of one shard of a namespace (the shard first: a namespace may hold any text)."""
    return f"{shard}:{namespace}"


def split_key(key: str) -> tuple[str, int]:
    """(namespace, shard) of a shard key."""
    shard, _, namespace = key.partition(":")
    return namespace, int(shard)
