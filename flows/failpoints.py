"""Failpoints: a test-only setting that stops the process at a named point.

``PARTY_RATES_FAILPOINT=NAME`` or ``NAME@N``: the process kills itself with SIGKILL (as
``kill -9`` would: no cleanup, no flush, no handler runs) the N-th time (default 1) it
reaches the point *after a snapshot of this run is durable*, so that every crash test has a
state of its own to resume from. ``raise-in-batch`` raises an error inside the dataflow
instead, for the exit code of an unexpected failure. Crash tests use them to kill a run at
exactly the moment their name says; nothing else does.

Bytewax 0.21.1 has no Python call for a durable snapshot, but it marks one: a partition
snapshots at the end of an epoch and is asked for the next epoch's first batch only once
the whole dataflow has finished that epoch and the recovery store has recorded it (its
frontier). Partition readers report that first batch here (:meth:`snapshot_durable`);
the command reports the end of the dataflow (:meth:`run_durable`), after which it commits
the final positions to the consumer group.
"""

from __future__ import annotations

import os
import signal
import threading

POINTS = {
    "before-rename": "a Parquet file was written to its temporary name, not yet renamed",
    "after-rename": "a Parquet file was renamed into place, before the next snapshot",
    "before-snapshot-durable": "a partition reader is asked for its snapshot; the recovery "
    "store has not recorded that epoch yet",
    "after-snapshot": "a partition reader saw its snapshot become durable",
    "before-group-commit": "durable read positions about to be committed to the consumer group",
    "after-group-commit": "the consumer group accepted a commit of durable read positions",
    "raise-in-batch": "an unexpected error while a batch is processed (not a kill)",
}


class FailpointError(RuntimeError):
    """Raised by the ``raise-in-batch`` failpoint."""


def parse(spec: str) -> tuple[str, int]:
    """``NAME`` or ``NAME@N`` -> (name, n); ValueError naming the known points."""
    name, _, count = spec.partition("@")
    if name not in POINTS:
        raise ValueError(f"unknown failpoint {name!r}; known: {', '.join(sorted(POINTS))}")
    try:
        n = int(count) if count else 1
    except ValueError:
        raise ValueError(f"failpoint {spec!r}: the count after @ must be a number") from None
    if n < 1:
        raise ValueError(f"failpoint {spec!r}: the count must be at least 1")
    return name, n


ENVIRONMENT = "PARTY_RATES_FAILPOINT"


class Failpoints:
    """The armed failpoint of this process, or none (every call then returns at once)."""

    @classmethod
    def from_environ(cls) -> Failpoints:
        """The failpoint ``PARTY_RATES_FAILPOINT`` arms (tests only; not a setting of the
        job): read by the entry points alone. ValueError naming the known points."""
        return cls(os.environ.get(ENVIRONMENT) or None)

    def __init__(self, spec: str | None = None) -> None:
        self.name: str | None = None
        self.n = 0
        if spec:
            self.name, self.n = parse(spec)
        self.hits = 0
        self.durable = 0  # snapshots of this run seen durable
        self._lock = threading.Lock()

    def snapshot_durable(self) -> None:
        """A partition reader's snapshot is durable (its next epoch's first batch)."""
        if self.name is None:
            return
        with self._lock:
            self.durable += 1
        self.reached("after-snapshot")

    def run_durable(self) -> None:
        """The dataflow has returned: its last snapshot is durable (the final commit to
        the consumer group follows)."""
        with self._lock:
            self.durable += 1

    def reached(self, name: str) -> None:
        """Called at the point ``name``: stop here if it is the armed one and its turn."""
        if name != self.name:
            return
        with self._lock:
            if name != "raise-in-batch" and not self.durable:
                return  # not before this run has a durable snapshot
            self.hits += 1
            if self.hits < self.n:
                return
        if name == "raise-in-batch":
            raise FailpointError("failpoint raise-in-batch reached")
        os.kill(os.getpid(), signal.SIGKILL)
