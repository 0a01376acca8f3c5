"""Per-partition processing of a consumed batch: skip, parse, drop late, deduplicate, fold.

Everything here depends only on the partition's own message order, so the outcome does not
depend on how fast other partitions were read or where runs were cut:

* An event is **late** when its time is more than the allowed lateness behind the newest
  event time already seen in its partition. The watermark is the minimum of these partition
  maxima less the allowed lateness, so an event that passes this check always finds its
  window still open.
* A **duplicate** is an event whose ``id`` was already counted in this partition (a
  re-sending publisher uses the same key, so the same partition). Ids are remembered while
  their event time is within the dedup horizon (at least the allowed lateness) of the
  partition's maximum; anything older is late anyway.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple, Protocol

from flows.core.coverage import NO_MARK, Mark, prune_marks
from flows.core.eventtime import to_datetime
from flows.core.items import BatchResult, BatchStats, Counts, EventRef, Progress, Row, event_ref
from flows.core.parsing import NAMES_COUNTED, Event, classify, looks_like_object, parse_candidate
from flows.core.partials import fold, to_parts
from schemas.events import COUNTED_NAMES


class KafkaMessage(Protocol):
    """The part of ``confluent_kafka.Message`` the processor uses."""

    def value(self) -> bytes | None: ...
    def key(self) -> bytes | None: ...
    def offset(self) -> int: ...


class DedupMemory:
    """Event ids seen recently, forgotten bucket by bucket as event time moves on."""

    __slots__ = ("bucket_us", "buckets", "ids")

    def __init__(self, bucket_us: int) -> None:
        self.bucket_us = bucket_us
        self.ids: dict[str, int] = {}
        self.buckets: dict[int, list[str]] = {}

    def add(self, event_id: str, t_us: int) -> bool:
        """Remember ``event_id``; False if it was already remembered."""
        if event_id in self.ids:
            return False
        bucket = t_us // self.bucket_us
        self.ids[event_id] = bucket
        self.buckets.setdefault(bucket, []).append(event_id)
        return True

    def forget_before(self, t_us: int) -> None:
        """Forget ids whose event time is in a bucket wholly before ``t_us``."""
        limit = t_us // self.bucket_us
        for bucket in [b for b in self.buckets if b < limit]:
            for event_id in self.buckets.pop(bucket):
                if self.ids.get(event_id) == bucket:
                    del self.ids[event_id]

    def __len__(self) -> int:
        return len(self.ids)


class PartitionState:
    """A partition's resumable state: read position, event-time progress, recent ids, and
    the marks of its event-time progress (flows.core.coverage)."""

    def __init__(self, next_offset: int, bucket_us: int) -> None:
        self.next_offset = next_offset
        # Added to offsets sent downstream, so they keep growing when a recreated topic
        # starts its offsets again from 0.
        self.offset_shift = 0
        self.max_t_us: int | None = None
        self.dedup = DedupMemory(bucket_us)
        self.origin = next_offset  # where this state began reading the partition
        self.marks: list[Mark] = []
        # Whether the first mark is the partition's first counted event (nothing counted
        # before it); False once older marks were dropped, or when the state began with a
        # newest event time already known.
        self.marks_complete = True

    def begin_at(self, offset: int, max_t_us: int | None) -> None:
        """Start reading at ``offset``, the partition's newest event time before it being
        ``max_t_us`` (a state rebuilt from the output's record)."""
        self.next_offset = self.origin = offset
        self.max_t_us = max_t_us
        if max_t_us is not None and not self.marks:
            self.marks = [(max_t_us // self.dedup.bucket_us + 1, offset, max_t_us)]
            self.marks_complete = False


class PartitionSnapshot(NamedTuple):
    """A partition reader's saved state, as the recovery store keeps it."""

    next_offset: int
    max_t_us: int | None
    ids: dict[str, int]  # event id -> its bucket
    buckets: dict[int, list[str]]  # bucket -> ids
    offset_shift: int
    marks: list[Mark]
    marks_complete: bool
    origin: int  # where this state began reading the partition

    @classmethod
    def of(cls, state: PartitionState) -> PartitionSnapshot:
        d = state.dedup
        return cls(
            state.next_offset, state.max_t_us, dict(d.ids),
            {b: list(v) for b, v in d.buckets.items()}, state.offset_shift,
            list(state.marks), state.marks_complete, state.origin,
        )  # fmt: skip

    @classmethod
    def read(cls, saved: Any, bucket_us: int) -> PartitionSnapshot:
        """A saved state of this format, or of format 4 (a plain tuple of the first five
        fields: no marks, where it began unknown)."""
        if isinstance(saved, cls):
            return saved
        next_offset, max_t, ids, buckets, shift = saved
        marks: list[Mark] = []
        if max_t is not None:  # what came before is unknown: marks start from here
            marks = [(max_t // bucket_us + 1, next_offset, max_t)]
        return cls(next_offset, max_t, ids, buckets, shift, marks, max_t is None, 0)

    def restore(self, state: PartitionState) -> None:
        """Put this snapshot back into ``state``."""
        state.next_offset, state.max_t_us, state.offset_shift = (
            self.next_offset, self.max_t_us, self.offset_shift,
        )  # fmt: skip
        state.dedup.ids = dict(self.ids)
        state.dedup.buckets = {b: list(v) for b, v in self.buckets.items()}
        state.marks = list(self.marks)
        state.marks_complete = self.marks_complete
        state.origin = self.origin


def process_batch(
    state: PartitionState,
    partition: int,
    messages: list[KafkaMessage],
    *,
    window_us: int,
    shards: int,
    lateness_us: int,
    dedup_horizon_us: int,
    first_offset: int,
    end_offset: int | None,
    seen_at: datetime,
    report: bool = False,
    pending: bool = True,
    start_us: int = 0,
    reread_before: int = -1,
    keep_marks_us: int | None = None,
) -> BatchResult:
    """Classify a batch of one partition's messages, in offset order, updating ``state``,
    and fold its counted events into partial aggregates per (namespace, shard).

    Progress is reported when the batch had events, or when ``report`` asks for it (first
    batch of a run, end of the partition); ``pending`` tells whether more data waits.
    Events before ``start_us`` (the state's start) are counted as ``before_start`` only.
    Messages before ``reread_before`` were read by an earlier run whose rows the output
    holds: they are decided as ever (the rows not final yet are made again from them) but
    counted as ``reread`` only, and leave no late event or dead letter (written before).
    Marks older than ``keep_marks_us`` before the newest event time are dropped.
    """
    horizon = max(dedup_horizon_us, lateness_us)
    split = 0
    if messages and messages[0].offset() < reread_before:
        split = len(messages)
        while split and messages[split - 1].offset() >= reread_before:
            split -= 1
    counted: list[Event] = []
    fresh: list[EventRef] = []
    late: list[Row] = []
    dead: list[Row] = []
    if split:
        again = messages[:split] if split < len(messages) else messages
        _scan(state, partition, again, lateness_us, horizon, start_us, seen_at, counted, None,
              [], [])  # fmt: skip
        messages = messages[split:]
    n_again = len(counted)
    skipped, duplicates, before_start = _scan(
        state, partition, messages, lateness_us, horizon, start_us, seen_at, counted, fresh,
        late, dead,
    )  # fmt: skip
    max_t = state.max_t_us
    if max_t is not None:
        state.dedup.forget_before(max_t - horizon)  # what no later message finds remembered
        if keep_marks_us is not None and prune_marks(
            state.marks, (max_t - keep_marks_us) // state.dedup.bucket_us
        ):
            state.marks_complete = False
    next_offset = state.next_offset + state.offset_shift  # monotonic across topic resets
    parts, latest = to_parts(fold(counted, window_us, shards), partition, next_offset)
    n_counted = len(counted) + len(fresh)
    progress = (
        Progress(partition, next_offset, max_t, pending, latest, fresh)
        if n_counted or report
        else None
    )
    counts = Counts(
        split + len(messages), len(counted) - n_again + len(fresh), skipped, duplicates,
        len(late), len(dead), before_start, split,
    )  # fmt: skip
    stats = BatchStats(partition, first_offset, state.next_offset, end_offset, counts)
    return BatchResult(parts, progress, late, dead, stats)


def _scan(
    state: PartitionState,
    partition: int,
    messages: list[KafkaMessage],
    lateness_us: int,
    horizon_us: int,
    start_us: int,
    seen_at: datetime,
    counted: list[Event],
    fresh: list[EventRef] | None,
    late: list[Row],
    dead: list[Row],
) -> tuple[int, int, int]:
    """Decide each message in turn, updating ``state``: counted events are appended to
    ``counted`` (to ``fresh``, whole, while the partition has no event time yet and
    ``fresh`` is given), late and dead ones to ``late`` and ``dead``. Returns the numbers
    skipped, duplicated and before the start."""
    skipped = duplicates = before_start = 0
    max_t = state.max_t_us
    # While the partition has no event time, its events may meet a window already final
    # (see flows.core.watermark): they go to the clock whole, raw bytes included.
    is_fresh = max_t is None and fresh is not None
    dedup = state.dedup
    seen_ids = dedup.ids
    buckets = dedup.buckets
    bucket_us = dedup.bucket_us
    marks = state.marks
    mark_at = (marks[-1][0] + 1) * bucket_us if marks else NO_MARK
    mentions_counted = NAMES_COUNTED.search
    result: Any  # Event | str | None, told apart below without isinstance (hot path)
    for msg in messages:
        value = msg.value()
        # The skip path inline: most of the topic is other event kinds.
        if value is not None and mentions_counted(value) is not None:
            result = parse_candidate(value)
        elif value is not None and (
            (value and value[0] == 123 and value[-1] == 125) or looks_like_object(value)
        ):
            skipped += 1  # another kind of event ("{" ... "}", the usual case checked inline)
            continue
        else:
            result = classify(value)
        if result is None:
            skipped += 1
            continue
        if type(result) is str:
            dead.append(dead_letter_row(partition, msg, result, seen_at))
            continue
        t_us = result.t_us  # an Event: neither None nor a str
        if t_us < start_us:
            before_start += 1  # before the state's start: read, not counted
            continue
        # remembered: counted before, in a bucket not wholly before the newest event time
        # less the dedup horizon (whatever batches the partition was read in)
        seen = seen_ids.get(result.id)
        if seen is not None and (max_t is None or seen >= (max_t - horizon_us) // bucket_us):
            duplicates += 1  # also when it comes late: the first copy was counted
            continue
        if max_t is not None and t_us < max_t - lateness_us:
            late.append(
                late_row(
                    partition, msg.offset(), msg.key(), value, result.id, result.namespace,
                    result.kind, t_us,
                )
            )  # fmt: skip
            continue
        # dedup.add, inline
        bucket = t_us // bucket_us
        seen_ids[result.id] = bucket
        ids = buckets.get(bucket)
        if ids is None:
            buckets[bucket] = [result.id]
        else:
            ids.append(result.id)
        if max_t is None or t_us > max_t:
            if t_us >= mark_at:  # the newest event time enters a new bucket
                marks.append((bucket, msg.offset(), max_t))
                mark_at = (bucket + 1) * bucket_us
            max_t = t_us
        if is_fresh:
            assert fresh is not None
            fresh.append(event_ref((*result, msg.offset(), msg.key(), value)))
        else:
            counted.append(result)
    if messages:
        state.next_offset = messages[-1].offset() + 1
    state.max_t_us = max_t
    return skipped, duplicates, before_start


def dead_letter_row(partition: int, msg: KafkaMessage, error: str, seen_at: datetime) -> Row:
    """A ``dead_letters`` row for a message that could not be used."""
    return {
        "partition": partition,
        "offset": msg.offset(),
        "key": msg.key(),
        "value": msg.value(),
        "error": error,
        "seen_at": seen_at,
    }


def late_row(
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    event_id: str,
    namespace: str,
    kind: int,
    t_us: int,
) -> Row:
    """A ``late_events`` row for a counted event that came after its window was final."""
    return {
        "id": event_id,
        "namespace": namespace,
        "name": COUNTED_NAMES[kind],
        "event_time": to_datetime(t_us),
        "partition": partition,
        "offset": offset,
        "key": key,
        "value": value,
    }
