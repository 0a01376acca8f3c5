"""Kafka input: one item per consumed batch of one partition, already classified.

Each Kafka partition is a Bytewax input partition, so a cluster spreads partitions over its
workers. A batch is read with one ``consume()`` call and handed to
:func:`flows.core.partition.process_batch`, which skips, parses, drops late events and
deduplicates in one pass; the resumable state (read position, event-time progress, recent
ids) is snapshotted with the rest of the dataflow.

Without ``follow``, each partition stops at the end offset it had when the run started.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from flows import logs
from flows.core.alignment import Alignment
from flows.core.items import BatchResult
from flows.core.partition import PartitionSnapshot, PartitionState, process_batch
from flows.edges import stopping
from flows.edges.group import GroupCommits, group_commits
from flows.edges.metrics import METRICS
from flows.edges.statedir import Start
from flows.edges.table import OutputView
from flows.errors import EXIT_KAFKA, JobError
from flows.failpoints import Failpoints
from flows.settings import KafkaSettings, RulesSettings, start_time_us

LOG = logs.logger(__name__)

FLUSH_TICK_S = 1.0
"""While following, each partition marks a result this often (sent even when idle), so the
sinks can write on time whatever the traffic."""


class SourceError(JobError):
    """Kafka input cannot go on; the message says why."""

    exit_code = EXIT_KAFKA


REFUSED = frozenset(
    {KafkaError._SSL, KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
)
"""Client errors that retrying cannot fix: a certificate not trusted, credentials refused."""

QUIET = logging.getLogger("party-rates.kafka")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False


def quiet(config: dict[str, str]) -> dict[str, Any]:
    """Client settings that keep librdkafka's log lines off stderr, unless ``debug`` is set:
    errors are reported as one line of ours instead."""
    return {} if "debug" in config else {"logger": QUIET}


def _reason(err: KafkaError) -> str:
    """The client's words without its ``proto://host:port/id: `` prefix and timing suffix."""
    text = re.sub(r"^\w+://\S+: ", "", err.str())
    return re.sub(r" \(after \d+ms in state \w+\)$", "", text)


def list_partitions(config: dict[str, str], topic: str, timeout_s: float) -> list[int]:
    """Partition ids of ``topic``; SourceError naming the brokers or topics otherwise.

    A TLS handshake or an authentication the brokers refuse stops at once with the client's
    reason; anything else is retried until the timeout. The client's own log lines are kept
    off stderr (unless ``debug`` is set): the error says what they would.
    """
    problems: list[KafkaError] = []
    client: dict[str, Any] = {**config, "socket.timeout.ms": str(int(timeout_s * 1000))}
    client |= {"error_cb": problems.append, **quiet(config)}
    admin = AdminClient(client)
    brokers = config.get("bootstrap.servers", "?")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            meta = admin.list_topics(timeout=max(0.05, min(0.5, deadline - time.monotonic())))
            break
        except KafkaException as err:
            admin.poll(0)  # serves error_cb
            refused = next((p for p in problems if p.code() in REFUSED), None)
            if refused is not None:
                raise SourceError(
                    f"cannot connect to Kafka brokers {brokers}: {_reason(refused)}"
                ) from None
            if time.monotonic() >= deadline:
                raise SourceError(
                    f"cannot reach Kafka brokers {brokers}: {err.args[0].str()}"
                ) from None
    found = meta.topics.get(topic)
    if found is None or found.error is not None:
        names = sorted(t for t in meta.topics if not t.startswith("__"))
        shown = ", ".join(names[:20]) + (" …" if len(names) > 20 else "")
        raise SourceError(f"topic {topic!r} not found; the brokers have: {shown or '(none)'}")
    return sorted(found.partitions)


def end_offsets(
    config: dict[str, str], topic: str, partitions: list[int], timeout_s: float
) -> dict[int, tuple[int, int]]:
    """(earliest, end) offset of each partition, the end read off the partitions themselves.

    The end is where a consumer positioned just before the reported high watermark gets its
    end-of-partition event: some Kafka-protocol brokers report the high watermark of batched
    writes as the last batch's base offset + 1, which would stop a run short. All
    partitions are probed at once, with short fetch waits.
    """
    consumer = Consumer(
        {
            **quiet(config),
            **config,
            "group.id": "party-rates-probe",
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
            "allow.auto.create.topics": "false",
            "fetch.wait.max.ms": "10",
        }
    )
    try:
        bounds = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            for p in partitions
        }
        ends = {p: high for p, (low, high) in bounds.items()}
        probing = {p for p, (low, high) in bounds.items() if high > low}
        consumer.assign([TopicPartition(topic, p, bounds[p][1] - 1) for p in probing])
        deadline = time.monotonic() + timeout_s
        while probing and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 0.05):
                err, p, off = msg.error(), msg.partition(), msg.offset()
                if p is None or off is None:
                    continue
                if err is None:
                    ends[p] = max(ends[p], off + 1)
                elif err.code() == KafkaError._PARTITION_EOF:
                    ends[p] = max(ends[p], off)
                    probing.discard(p)
        return {p: (bounds[p][0], ends[p]) for p in partitions}
    finally:
        consumer.close()


def seek_offset(answer: int | None, low: int, high: int) -> int:
    """Where a partition starts, from the broker's answer to a time lookup: the offset it
    named, the end when it named none (nothing at or after the time), kept within
    ``[low, high]``. Brokers that answer approximately (with an earlier offset) only make
    the run read more: events before the start are filtered by their own time."""
    if answer is None or answer < 0:
        return high
    return min(max(answer, low), high)


def start_offsets(
    config: dict[str, str],
    topic: str,
    partitions: list[int],
    start_at: str,
    lateness_us: int,
    timeout_s: float,
) -> dict[int, int]:
    """Where each partition starts for ``--start-at``: its end for ``latest``; for a time,
    the first offset whose broker timestamp is at or after the time less the allowed
    lateness (``offsets_for_times``)."""
    bounds = end_offsets(config, topic, partitions, timeout_s)
    t_us = start_time_us(start_at)
    if t_us is None:  # latest
        return {p: high for p, (_low, high) in bounds.items()}
    consumer = Consumer({**quiet(config), **config, "group.id": "party-rates-probe"})
    try:
        ms = max(0, (t_us - lateness_us) // 1000)
        asked = [TopicPartition(topic, p, ms) for p in partitions]
        try:
            answers = consumer.offsets_for_times(asked, timeout=timeout_s)
        except KafkaException as err:
            raise SourceError(
                f"cannot look up offsets of {topic} by time: {err.args[0].str()}"
            ) from None
        out = {}
        for tp in answers:
            if tp.error is not None:
                raise SourceError(
                    f"cannot look up offsets of {topic}[{tp.partition}] by time: {tp.error.str()}"
                )
            low, high = bounds[tp.partition]
            out[tp.partition] = seek_offset(tp.offset, low, high)
        return out
    finally:
        consumer.close()


def restore(state: PartitionState, saved: Any) -> None:
    """Put a partition's saved state back into ``state`` (of this format or the previous)."""
    PartitionSnapshot.read(saved, state.dedup.bucket_us).restore(state)


class TopicSource(FixedPartitionedSource[BatchResult, PartitionSnapshot]):
    """The session-history topic as a partitioned, resumable source of batch results."""

    def __init__(
        self,
        kafka: KafkaSettings,
        rules: RulesSettings,
        start: Start,
        *,
        follow: bool = False,
        failpoints: Failpoints | None = None,
        partitions: list[int] | None = None,
        bounds: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        """``start``: where the state starts (flows.edges.statedir); ``partitions`` and
        ``bounds``: the topic's partitions and their (earliest, end) offsets when the caller
        has just asked for them (fewer requests at start). The output's record reaches it
        as ``view`` (flows.party_rates)."""
        self.kafka, self.rules, self.start, self.follow = kafka, rules, start, follow
        self.failpoints = failpoints or Failpoints()
        self._partitions = partitions
        self.view = OutputView()
        self.config = kafka.client_config
        self.topic = kafka.topic
        self._ends: dict[int, tuple[int, int]] | None = bounds
        self._ends_lock = threading.Lock()
        self._starts: dict[int, int] | None = start.offsets
        self.alignment = Alignment(kafka.max_drift or None)
        self.commits: GroupCommits | None = (
            group_commits(
                {**quiet(self.config), **self.config}, kafka.group_id, kafka.topic, self.failpoints
            )
            if kafka.group_id
            else None
        )

    def partitions(self) -> list[int]:
        """The topic's partitions as at the start of this run, listed once (partitions added
        later are read from the next run on)."""
        if self._partitions is None:
            self._partitions = list_partitions(self.config, self.topic, self.kafka.connect_s)
        return self._partitions

    def offsets(self, partition: int) -> tuple[int, int]:
        """(earliest, end) of a partition as at the start of this run, probed once."""
        with self._ends_lock:
            if self._ends is None:
                parts = self.partitions()
                self._ends = end_offsets(self.config, self.topic, parts, self.kafka.connect_s)
        return self._ends[partition]

    def list_parts(self) -> list[str]:
        return [str(p) for p in self.partitions()]

    def first_offset(self, partition: int, low: int, high: int) -> int:
        """Where a partition without saved state starts (``--start-at``)."""
        if self.start.start_at == "earliest":
            return low
        with self._ends_lock:
            if self._starts is None:  # a state not prepared by ``party-rates run``
                parts = self.partitions()
                self._starts = start_offsets(
                    self.config, self.topic, parts, self.start.start_at,
                    self.rules.allowed_lateness, self.kafka.connect_s,
                )  # fmt: skip
            starts = self._starts
        # A partition the topic did not have when the state was made starts at its
        # beginning: all of it came after the start.
        return min(max(starts.get(partition, low), low), high)

    def initial_state(
        self, partition: int, low: int, high: int, resume_state: PartitionSnapshot | None
    ) -> tuple[PartitionState, str | None]:
        """The partition's state at the start of this run, and the gap in its offsets if
        there is one: resumed from its saved state; or, for a state rebuilt from the output,
        from where the rebuild reads it again (flows.edges.table); or from where the state
        starts (``--start-at``)."""
        state = PartitionState(low, self.rules.window)
        rebuilt = self.view.starts.get(partition)
        if resume_state is not None:
            restore(state, resume_state)
        elif rebuilt is not None:
            offset, max_t, marks, complete, origin = rebuilt
            state.marks, state.marks_complete = list(marks), complete
            state.begin_at(offset, max_t)
            state.origin = origin
        else:
            state.begin_at(self.first_offset(partition, low, high), None)
            return state, None
        gap = None
        if state.next_offset < low:
            gap = f"offsets {state.next_offset}..{low - 1} no longer exist (retention)"
        elif state.next_offset > high:
            gap = f"saved offset {state.next_offset} is past the end {high} (topic recreated?)"
            state.offset_shift += state.next_offset - low
        if gap:
            LOG.warning(
                "partition %d: %s; reading from %d", partition, gap, low,
                extra={"partition": partition, "offset": low},
            )  # fmt: skip
            state.next_offset = low
        return state, gap

    def build_part(
        self, step_id: str, for_part: str, resume_state: PartitionSnapshot | None
    ) -> PartitionReader:
        partition = int(for_part)
        errors = BrokerErrors()
        consumer = Consumer(
            {
                "error_cb": errors.record,
                **quiet(self.config),
                # Short fetch waits: a partition near its end does not stall the others
                # (overridable through the extra Kafka settings).
                "fetch.wait.max.ms": "100" if self.follow else "10",
                # Bounded prefetch: memory must not grow with the backlog (librdkafka's
                # default queues up to 64 MiB per partition, and holds about as much again
                # in bookkeeping for small messages), yet deep enough, with fetches large
                # enough, that the job rarely waits for the broker (bench/LIMITS.md).
                "queued.max.messages.kbytes": "4096",
                "max.partition.fetch.bytes": str(4 * 2**20),
                # When that prefetch is full, librdkafka waits this long before fetching
                # again (default 1 s): the job empties it much sooner, and sat idle.
                "fetch.queue.backoff.ms": "10",
                **self.config,
                "group.id": "party-rates",
                "enable.auto.commit": "false",
                "enable.partition.eof": "true",
                "auto.offset.reset": "earliest",
                "allow.auto.create.topics": "false",
            }
        )
        try:
            low, high = self.offsets(partition)
        except KafkaException as err:
            consumer.close()
            raise SourceError(
                f"cannot read offsets of {self.topic}[{partition}]: {err.args[0].str()}"
            ) from None
        state, gap = self.initial_state(partition, low, high, resume_state)
        consumer.assign([TopicPartition(self.topic, partition, state.next_offset)])
        end = None if self.follow else high
        METRICS.position(partition, state.next_offset, high)
        return PartitionReader(self, consumer, partition, state, end, gap, errors)


class BrokerErrors:
    """Client errors since the partition last made progress, to bound retrying."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.last = ""

    def record(self, err: KafkaError) -> None:
        if err.fatal():
            raise SourceError(f"Kafka error: {err.str()}")
        if self.since is None:
            self.since = time.monotonic()
            LOG.warning("Kafka: %s (retrying)", err.str())
        self.last = err.str()

    def progressed(self) -> None:
        self.since = None


class PartitionReader(StatefulSourcePartition[BatchResult, PartitionSnapshot]):
    """Reads one partition; each ``next_batch`` returns at most one BatchResult."""

    def __init__(
        self,
        source: TopicSource,
        consumer: Any,
        partition: int,
        state: PartitionState,
        end_offset: int | None,
        gap: str | None,
        errors: BrokerErrors | None = None,
    ) -> None:
        self.source = source
        self.consumer = consumer
        self.partition = partition
        self.state = state
        self.end_offset = end_offset
        self.first_offset = state.next_offset
        self.gap = gap
        self.started = False
        self.done = False
        self.awake: datetime | None = None
        self.errors = errors or BrokerErrors()  # fed by the consumer's error callback
        self.last_tick = time.monotonic()
        self.snapshotted = False  # snapshot() was called since the last batch
        self.snapshot_offset = state.next_offset  # the read position of that snapshot
        self.committed: int | None = None  # the last position committed to the group
        self.topic_partition = TopicPartition(source.topic, partition)

    def _finished(self) -> bool:
        return self.end_offset is not None and self.state.next_offset >= self.end_offset

    def next_batch(self) -> list[BatchResult]:
        if self.snapshotted:
            # Bytewax asks for the next epoch's first batch only once the epoch of this
            # partition's last snapshot is complete and recorded in the recovery store.
            self.snapshotted = False
            self.source.failpoints.snapshot_durable()
            commits = self.source.commits
            if commits is not None and self.snapshot_offset != self.committed:
                # That snapshot's position is durable now, and the rows it produced are
                # written or held in the same epoch's snapshots: safe to show the group
                # (flows/edges/group.py).
                commits.commit({self.partition: self.snapshot_offset})
                self.committed = self.snapshot_offset
        if self.done or stopping.requested():  # a stop ends the input at a batch boundary
            raise StopIteration
        if self.started and self.source.alignment.ahead(self.partition, self.state.max_t_us):
            # read ahead of the slowest partition: wait for it (flows.core.alignment)
            self.awake = datetime.now(UTC) + timedelta(milliseconds=5)
            return []
        end = self.end_offset
        msgs = [] if self._finished() else self.consumer.consume(self.source.kafka.batch_size, 0)
        good = [msg for msg in msgs if msg.error() is None]
        caught_up = reached_end = False
        if len(good) != len(msgs):  # events: end of partition reached, or client errors
            for msg in msgs:
                err = msg.error()
                if err is None:
                    continue
                if err.code() == KafkaError._PARTITION_EOF:
                    caught_up = True
                    reached_end = reached_end or (end is not None and msg.offset() >= end)
                else:
                    self.errors.record(err)
        if end is not None and good and good[-1].offset() >= end:
            reached_end = True  # what was produced after the run started is the next run's
            while good and good[-1].offset() >= end:  # offsets grow within a partition
                good.pop()
        if good or caught_up:
            self.errors.progressed()
        elif self.errors.since is not None and (
            time.monotonic() - self.errors.since > self.source.kafka.broker_s
        ):
            raise SourceError(
                f"lost the Kafka brokers {self.source.kafka.brokers} for more than "
                f"{self.source.kafka.broker_s:g}s ({self.errors.last}); nothing after the "
                "last snapshot was recorded: the next run reads it again"
            )
        if good and end is not None and good[-1].offset() + 1 >= end:
            reached_end = True
        self.awake = None if good else datetime.now(UTC) + timedelta(milliseconds=20)
        first = not self.started
        self.started = True
        self.done = reached_end or self._finished()
        now = time.monotonic()
        tick = self.source.follow and now - self.last_tick >= FLUSH_TICK_S
        if not good and not first and not self.done and not caught_up and not tick:
            return []
        self.source.failpoints.reached("raise-in-batch")
        result = process_batch(
            self.state,
            self.partition,
            good,
            window_us=self.source.rules.window,
            shards=self.source.rules.shards,
            lateness_us=self.source.rules.allowed_lateness,
            dedup_horizon_us=self.source.rules.dedup_us,
            first_offset=self.first_offset,
            end_offset=end,
            seen_at=datetime.now(UTC),
            report=first or self.done or caught_up,
            pending=not (self.done or caught_up),
            start_us=self.source.start.start_us,
            reread_before=self.source.view.reread.get(self.partition, -1),
            keep_marks_us=self.source.rules.marks_kept_us,
        )
        self.source.alignment.update(
            self.partition, self.state.max_t_us, reading=not (self.done or caught_up)
        )
        if self.done and end is not None:
            # Offsets up to the end may hold only transaction markers: they are read.
            self.state.next_offset = max(self.state.next_offset, end)
            result = result._replace(
                stats=result.stats._replace(next_offset=self.state.next_offset)
            )
        if first and self.gap:
            result = result._replace(stats=result.stats._replace(gap=self.gap))
        if self.source.commits is not None:
            group_error = self.source.commits.take_error()
            if group_error is not None:
                result = result._replace(stats=result.stats._replace(group_error=group_error))
        self._export_position()
        if tick:
            self.last_tick = now
            result = result._replace(flush_tick=True)
        return [result]

    def _export_position(self) -> None:
        """Read position and end for the metrics, once per batch. The end is the high
        watermark of the consumer's last fetch (no request), never below what a scheduled
        run knows it will read."""
        _low, high = self.consumer.get_watermark_offsets(self.topic_partition, cached=True)
        next_offset = self.state.next_offset
        end = max(high if high is not None else -1, self.end_offset or 0, next_offset)
        METRICS.position(self.partition, next_offset, end)

    def next_awake(self) -> datetime | None:
        return self.awake

    def snapshot(self) -> PartitionSnapshot:
        self.source.failpoints.reached("before-snapshot-durable")
        self.snapshotted = True
        self.snapshot_offset = self.state.next_offset
        return PartitionSnapshot.of(self.state)

    def close(self) -> None:
        self.consumer.close()
