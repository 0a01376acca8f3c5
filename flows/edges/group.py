"""Read positions committed to a Kafka consumer group, for the tools that watch groups.

The job reads by assignment and keeps its positions in its state; it never subscribes to
or joins the group. It commits to the group (``--group-id``) only positions whose state is
durable, so a group's committed offset is never ahead of where the next run resumes:

* **During a run**, a partition reader commits the position of its last snapshot when
  Bytewax asks it for the next epoch's first batch. Bytewax takes a partition's snapshot at
  the end of an epoch and asks for the next epoch's first batch only once that epoch is
  complete and recorded in the recovery store, every step's snapshot of it included (the
  rows that those positions produced are written, or held in the sinks' snapshots of that
  epoch). Until then the reader commits nothing; a kill at any moment leaves the group at
  a position the recovery store already holds, or behind it.
* **At the end of a run** the last snapshot is durable once the dataflow has returned.
  Process 0 reads from the recovery store what the next run would resume from and commits
  that, for every partition (see :func:`commit_durable`).

A commit that fails (no right on the group, the group used by a subscribed consumer) is
reported once on stderr and in the manifest; the run goes on and the next commit tries
again. Commits are asynchronous: they never hold a reader up, and their errors never count
as lost brokers (``--broker-timeout``).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from flows.edges.metrics import METRICS
from flows.failpoints import Failpoints

GROUP_ERRORS = frozenset(
    {
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.INVALID_GROUP_ID,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.INVALID_COMMIT_OFFSET_SIZE,
        KafkaError.OFFSET_METADATA_TOO_LARGE,
        KafkaError._WAIT_COORD,
    }
)
"""Client errors about the consumer group: the commits' business, never a lost broker."""


def _reason(err: Any) -> str:
    return err.str() if isinstance(err, KafkaError) else str(err)


class GroupCommits:
    """The consumer group of this process's readers, and what became of their commits."""

    def __init__(self, group_id: str, topic: str, failpoints: Failpoints) -> None:
        self.group_id = group_id
        self.topic = topic
        self.failpoints = failpoints
        self.error: str | None = None  # the first failure in this process
        self._unsent: str | None = None  # that failure, until a batch takes it to the manifest
        self._lock = threading.Lock()

    def consumer_config(self) -> dict[str, Any]:
        """Settings of a consumer whose commits come back here."""
        return {"group.id": self.group_id, "on_commit": self.done}

    def commit(self, consumer: Any, partition: int, offset: int) -> None:
        """Commit one durable position (asynchronous: the reader goes on at once)."""
        self.failpoints.reached("before-group-commit")
        try:
            consumer.commit(
                offsets=[TopicPartition(self.topic, partition, offset)], asynchronous=True
            )
        except Exception as err:  # e.g. the client is shutting down
            self.failed(_reason(err.args[0] if err.args else err))

    def done(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The broker's answer (served by the reader's next ``consume()``)."""
        bad = err or next((tp.error for tp in partitions if tp.error is not None), None)
        if bad is not None:
            self.failed(_reason(bad))
            return
        METRICS.group_commit(True)
        self.failpoints.reached("after-group-commit")

    def failed(self, reason: str) -> None:
        METRICS.group_commit(False)
        with self._lock:
            if self.error is not None:
                return
            self.error = self._unsent = reason
        print(
            f"party-rates: cannot commit read positions to consumer group {self.group_id!r}: "
            f"{reason}; the run goes on (the group is for monitoring only, the state is "
            "the job's own record)",
            file=sys.stderr,
        )

    def take_error(self) -> str | None:
        """The failure not yet reported in the manifest, once."""
        if self._unsent is None:
            return None
        with self._lock:
            reason, self._unsent = self._unsent, None
        return reason


COMMITS: dict[str, GroupCommits] = {}
"""This process's :class:`GroupCommits` per group id (the final commit reports through the
readers' one, so a failure is printed once per process)."""


def group_commits(group_id: str, topic: str, failpoints: Failpoints) -> GroupCommits:
    commits = COMMITS.get(group_id)
    if commits is None or commits.topic != topic or commits.failpoints is not failpoints:
        commits = COMMITS[group_id] = GroupCommits(group_id, topic, failpoints)
    return commits


def commit_durable(
    config: dict[str, str],
    commits: GroupCommits,
    offsets: dict[int, int],
    timeout_s: float,
) -> bool:
    """Commit positions read from the recovery store after the dataflow returned; True if
    the broker accepted them. Waits at most ``timeout_s`` for the answer."""
    if not offsets:
        return True
    answers: list[tuple[KafkaError | None, list[TopicPartition]]] = []
    consumer = Consumer(
        {
            **config,
            "group.id": commits.group_id,
            "enable.auto.commit": "false",
            "on_commit": lambda err, parts: answers.append((err, parts)),
            "socket.timeout.ms": str(max(1000, int(timeout_s * 1000))),
        }
    )
    try:
        commits.failpoints.reached("before-group-commit")
        tps = [TopicPartition(commits.topic, p, off) for p, off in sorted(offsets.items())]
        consumer.commit(offsets=tps, asynchronous=True)
        deadline = time.monotonic() + timeout_s
        while not answers and time.monotonic() < deadline:
            consumer.poll(0.1)  # serves the commit's answer
        if not answers:
            commits.failed(f"no answer from the group coordinator in {timeout_s:g}s")
            return False
        err, parts = answers[0]
        bad = err or next((tp.error for tp in parts if tp.error is not None), None)
        if bad is not None:
            commits.failed(_reason(bad))
            return False
        METRICS.group_commit(True)
        commits.failpoints.reached("after-group-commit")
        return True
    finally:
        consumer.close()
