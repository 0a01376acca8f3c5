"""Per-partition processing of a consumed batch: skip, parse, drop late, deduplicate.

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
from typing import Protocol

from flows.core.eventtime import to_datetime
from flows.core.items import BatchResult, BatchStats, Chunk, Counts, Progress, Row, event_ref
from flows.core.parsing import NAMES_COUNTED, Event, classify, looks_like_object, parse_candidate
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
    lateness_us: int,
    dedup_horizon_us: int,
    first_offset: int,
    end_offset: int | None,
    seen_at: datetime,
    report: bool = False,
    pending: bool = True,
) -> BatchResult:
    """Classify a batch of one partition's messages, in offset order, updating ``state``.

    Progress is reported when the batch had events, or when ``report`` asks for it (first
    batch of a run, end of the partition); ``pending`` tells whether more data waits.
    """
    skipped = duplicates = 0
    chunks: dict[str, Chunk] = {}
    late: list[Row] = []
    dead: list[Row] = []
    ns_max: dict[str, int] = {}
    counted = 0
    max_t = state.max_t_us
    # Raw bytes ride along only while the partition has no event time yet: only then can
    # an on-time event meet a window already final (see flows.core.watermark).
    fresh = max_t is None
    dedup = state.dedup
    seen_ids = dedup.ids
    mentions_counted = NAMES_COUNTED.search
    for msg in messages:
        value = msg.value()
        # The skip path inline: most of the topic is other event kinds.
        if value is not None and mentions_counted(value) is not None:
            result = parse_candidate(value)
        elif value is not None and looks_like_object(value):
            skipped += 1
            continue
        else:
            result = classify(value)
        if result is None:
            skipped += 1
            continue
        if not isinstance(result, Event):
            dead.append(dead_letter_row(partition, msg, result, seen_at))
            continue
        t_us = result.t_us
        if result.id in seen_ids:
            duplicates += 1  # also when it comes late: the first copy was counted
            continue
        if max_t is not None and t_us < max_t - lateness_us:
            late.append(late_row(partition, msg, result))
            continue
        dedup.add(result.id, t_us)
        counted += 1
        if max_t is None or t_us > max_t:
            max_t = t_us
        ns = result.namespace
        if ns_max.get(ns, t_us - 1) < t_us:
            ns_max[ns] = t_us
        chunk = chunks.get(ns)
        if chunk is None:
            chunk = chunks[ns] = Chunk(ns, partition, 0, [])
        chunk.events.append(
            event_ref(
                (
                    t_us,
                    result.kind,
                    result.id,
                    result.user_id,
                    result.session_id,
                    msg.offset(),
                    msg.key() if fresh else None,
                    value if fresh else None,
                )
            )
        )
    if messages:
        state.next_offset = messages[-1].offset() + 1
    next_offset = state.next_offset + state.offset_shift  # monotonic across topic resets
    state.max_t_us = max_t
    if max_t is not None:
        dedup.forget_before(max_t - max(dedup_horizon_us, lateness_us))
    chunks = {ns: c._replace(next_offset=next_offset) for ns, c in chunks.items()}
    progress = (
        Progress(partition, next_offset, max_t, pending, ns_max) if counted or report else None
    )
    counts = Counts(len(messages), counted, skipped, duplicates, len(late), len(dead))
    stats = BatchStats(partition, first_offset, state.next_offset, end_offset, counts)
    return BatchResult(chunks, progress, late, dead, stats)


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


def late_row(partition: int, msg: KafkaMessage, event: Event) -> Row:
    """A ``late_events`` row for a counted event that came after its window was final."""
    return {
        "id": event.id,
        "namespace": event.namespace,
        "name": COUNTED_NAMES[event.kind],
        "event_time": to_datetime(event.t_us),
        "partition": partition,
        "offset": msg.offset(),
        "key": msg.key(),
        "value": msg.value(),
    }
