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
  that, for every partition (``flows/cli.py: commit_final_positions``). Every other process
  of a cluster commits the same positions for the partitions it committed during the run,
  after its own requests are answered: a request of its that was still in flight cannot
  land after process 0's final commit and leave the group behind.

Commits go through an admin client (the OffsetCommit request ``kafka-consumer-groups
--reset-offsets`` sends), not through the readers' consumers: a consumer with a commit
still unanswered blocks in ``close()`` for as long as the brokers are away, which would
hold a run that lost its brokers past ``--broker-timeout``. An admin request has its own
timeout and nothing to close. One request is in flight at a time per process and the
positions waiting behind it are merged, so the group never sees an older position after a
newer one.

A commit that fails (no right on the group, the group used by a subscribed consumer, a
coordinator away) is reported once on stderr and in the manifest; the run goes on and the
next commit tries again. Commits never hold a reader up, and their errors never count as
lost brokers (``--broker-timeout``).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from flows import logs
from flows.edges.metrics import METRICS
from flows.failpoints import Failpoints

LOG = logs.logger(__name__)

REQUEST_TIMEOUT_S = 10.0


def _reason(err: Any) -> str:
    if isinstance(err, Exception) and err.args and isinstance(err.args[0], KafkaError):
        err = err.args[0]
    return err.str() if isinstance(err, KafkaError) else str(err)


class GroupCommits:
    """This process's commits of durable read positions to one consumer group."""

    def __init__(
        self, config: dict[str, Any], group_id: str, topic: str, failpoints: Failpoints
    ) -> None:
        self.config = config
        self.group_id = group_id
        self.topic = topic
        self.failpoints = failpoints
        self.error: str | None = None  # the first failure in this process
        self._unsent: str | None = None  # that failure, until a batch takes it to the manifest
        self._admin: AdminClient | None = None
        self._pending: dict[int, int] = {}  # partition -> position, waiting to be sent
        self.partitions: set[int] = set()  # every partition this process committed
        self._inflight = False
        self._last_ok = True
        self._cond = threading.Condition()

    def commit(self, offsets: dict[int, int]) -> None:
        """Commit durable positions; returns at once (the answer comes back on a client
        thread). Sent now, or merged into the next request if one is in flight."""
        self.failpoints.reached("before-group-commit")
        with self._cond:
            self._pending.update(offsets)
            self.partitions.update(offsets)
            if self._inflight:
                return
            batch, self._pending = self._pending, {}
            self._inflight = True
        self._send(batch)

    def flush(self, timeout_s: float) -> bool:
        """Send what waits and wait for the answers; True if the last one was a success."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._cond:
                if not self._inflight and not self._pending:
                    return self._last_ok
                if self._inflight:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.failed(f"no answer from the group coordinator in {timeout_s:g}s")
                        return False
                    self._cond.wait(left)
                    continue
                batch, self._pending = self._pending, {}
                self._inflight = True
            self._send(batch)

    def _send(self, batch: dict[int, int]) -> None:
        try:
            if self._admin is None:
                # client errors come back with each request's answer
                config: dict[str, Any] = {**self.config, "error_cb": lambda err: None}
                self._admin = AdminClient(config)
            request = ConsumerGroupTopicPartitions(
                self.group_id,
                [TopicPartition(self.topic, p, off) for p, off in sorted(batch.items())],
            )
            future = self._admin.alter_consumer_group_offsets(
                [request], request_timeout=REQUEST_TIMEOUT_S
            )[self.group_id]
        except Exception as err:
            self._answered(_reason(err))
            return
        future.add_done_callback(self._on_answer)

    def _on_answer(self, future: Future[Any]) -> None:
        try:
            result = future.result()
            bad = next((tp.error for tp in result.topic_partitions if tp.error), None)
            reason = None if bad is None else _reason(bad)
        except Exception as err:
            reason = _reason(err)
        self._answered(reason)

    def _answered(self, reason: str | None) -> None:
        if reason is None:
            METRICS.group_commit(True)
            self.failpoints.reached("after-group-commit")
        else:
            self.failed(reason)
        with self._cond:
            self._inflight = False
            self._last_ok = reason is None
            self._cond.notify_all()

    def failed(self, reason: str) -> None:
        METRICS.group_commit(False)
        with self._cond:
            if self.error is not None:
                return
            self.error = self._unsent = reason
        LOG.warning(
            "cannot commit read positions to consumer group %r: %s; the run goes on (the "
            "group is for monitoring only, the state is the job's own record)",
            self.group_id,
            reason,
        )

    def take_error(self) -> str | None:
        """The failure not yet reported in the manifest, once."""
        if self._unsent is None:
            return None
        with self._cond:
            reason, self._unsent = self._unsent, None
        return reason


_CURRENT: dict[tuple[str, str], GroupCommits] = {}
_CURRENT_LOCK = threading.Lock()


def group_commits(
    config: dict[str, Any], group_id: str, topic: str, failpoints: Failpoints
) -> GroupCommits:
    """The commits of this run in this process (a new run replaces an earlier one's)."""
    with _CURRENT_LOCK:
        commits = _CURRENT.get((group_id, topic))
        if commits is None or commits.failpoints is not failpoints:
            commits = _CURRENT[(group_id, topic)] = GroupCommits(
                config, group_id, topic, failpoints
            )
        return commits
