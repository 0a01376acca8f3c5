"""Per-partition processing of a consumed batch: skip, parse, drop late, deduplicate, fold.

Everything here depends only on the partition's own message order, so the outcome does not
depend on how fast other partitions were read or where runs were cut:

* An event is **late** when its time is more than the allowed lateness behind the newest
  event time already seen in its partition. The watermark is the minimum of these partition
  maxima less the allowed lateness, so an event that passes this check always finds its
  window still open.
* A **duplicate** is an event whose ``id`` was already counted in this partition (a
  re-sending publisher uses the same key, so the same partition) and is still remembered:
  the counted copy's event-time bucket (``t // bucket``, the window length) is not wholly
  before the partition's newest event time *before this message* less the dedup horizon
  (at least the allowed lateness). Anything older is late anyway. The decision depends on
  the message order alone, not on where batches were cut; ids are dropped from memory at
  the end of a batch only once no later message can find them remembered.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

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
    """A partition's resumable state: read position, event-time progress, recent ids."""

    def __init__(self, next_offset: int, bucket_us: int) -> None:
        self.next_offset = next_offset
        # Added to offsets sent downstream, so they keep growing when a recreated topic
        # starts its offsets again from 0.
        self.offset_shift = 0
        self.max_t_us: int | None = None
        self.dedup = DedupMemory(bucket_us)


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
) -> BatchResult:
    """Classify a batch of one partition's messages, in offset order, updating ``state``,
    and fold its counted events into partial aggregates per (namespace, shard).

    Progress is reported when the batch had events, or when ``report`` asks for it (first
    batch of a run, end of the partition); ``pending`` tells whether more data waits.
    Events before ``start_us`` (the state's start) are counted as ``before_start`` only.
    """
    skipped = duplicates = before_start = 0
    counted: list[Event] = []
    fresh: list[EventRef] = []
    late: list[Row] = []
    dead: list[Row] = []
    max_t = state.max_t_us
    # While the partition has no event time, its events may meet a window already final
    # (see flows.core.watermark): they go to the clock whole, raw bytes included.
    is_fresh = max_t is None
    dedup = state.dedup
    seen_ids = dedup.ids
    buckets = dedup.buckets
    bucket_us = dedup.bucket_us
    horizon_us = max(dedup_horizon_us, lateness_us)
    mentions_counted = NAMES_COUNTED.search
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
        assert isinstance(result, Event)
        t_us = result.t_us
        if t_us < start_us:
            before_start += 1  # before the state's start: read, not counted
            continue
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
            max_t = t_us
        if is_fresh:
            fresh.append(event_ref((*result, msg.offset(), msg.key(), value)))
        else:
            counted.append(result)
    if messages:
        state.next_offset = messages[-1].offset() + 1
    next_offset = state.next_offset + state.offset_shift  # monotonic across topic resets
    state.max_t_us = max_t
    if max_t is not None:
        dedup.forget_before(max_t - horizon_us)  # what no later message finds remembered
    parts, latest = to_parts(fold(counted, window_us, shards), partition, next_offset)
    n_counted = len(counted) + len(fresh)
    progress = (
        Progress(partition, next_offset, max_t, pending, latest, fresh)
        if n_counted or report
        else None
    )
    counts = Counts(
        len(messages), n_counted, skipped, duplicates, len(late), len(dead), before_start
    )
    stats = BatchStats(partition, first_offset, state.next_offset, end_offset, counts)
    return BatchResult(parts, progress, late, dead, stats)


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
