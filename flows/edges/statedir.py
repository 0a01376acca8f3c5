"""The state directory: Bytewax recovery partitions, what they belong to, and a run lock.

The state is only valid for the topic, window length and output it was made with. A
mismatch is refused with a message that says what to do, instead of silently producing
wrong numbers. One run at a time per state directory (per process of a cluster).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import pickle
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from bytewax.recovery import init_db_dir

from flows.core.eventtime import duration_label
from flows.settings import Settings, start_time_us

STATE_FORMAT = 4
"""Bumped whenever a class pickled in the state moves or changes: an older state is refused
with a clear message instead of failing to load (``tests/test_flow.py`` holds the list)."""
META = "party_rates_state.json"
START_OFFSETS = "start_offsets.json"
RECOVERY_PARTITIONS = 1
SOURCE_STEP = "party_rates.kafka"
"""The step id of the Kafka input in the recovery store (flow id, then step name)."""


FRESH = "needs a fresh --state and a fresh --output"
MUST_MATCH = (  # (compared key, what it is, key shown, what to do)
    ("topic", "topic", "topic", "use the state directory made for this topic"),
    ("window_us", "window", "window", f"changing the window length {FRESH}"),
    (
        "allowed_lateness_us",
        "allowed lateness",
        "allowed_lateness",
        f"windows already final were closed under the old lateness; changing it {FRESH}",
    ),
    (
        "outcome_horizon_us",
        "outcome horizon",
        "outcome_horizon",
        f"outcome rows already final used the old horizon; changing it {FRESH}",
    ),
    ("shards", "shards", "shards", f"namespaces are split by it; changing it {FRESH}"),
    (
        "rollup_lengths_us",
        "roll-ups",
        "rollups",
        f"roll-up windows already final were made with the old list; changing it {FRESH}",
    ),
    ("output", "output", "output", "use the state directory made for this output"),
)


class StateError(RuntimeError):
    """The state directory cannot be used with these settings."""


def state_meta(settings: Settings) -> dict[str, object]:
    return {
        "format": STATE_FORMAT,
        "topic": settings.topic,
        "window": settings.window,
        "window_us": settings.window_us,
        "allowed_lateness": settings.allowed_lateness,
        "outcome_horizon": settings.outcome_horizon,
        "outcome_horizon_us": settings.outcome_horizon_us,
        "allowed_lateness_us": settings.lateness_us,
        "shards": settings.shards,
        "rollups": ",".join(duration_label(n) for n in settings.rollup_lengths_us),
        "rollup_lengths_us": list(settings.rollup_lengths_us),
        "output": settings.output,
        "start_at": settings.start_at or "earliest",
    }


class Start(NamedTuple):
    """Where a state starts reading (``--start-at``, fixed when the state is made)."""

    start_at: str  # earliest | latest | an RFC 3339 time in UTC
    start_us: int  # events before it are not counted: the first window boundary at or
    # after the time; 0 for earliest and latest
    offsets: dict[int, int] | None  # where each partition of the first run started


def start_us_for(start_at: str, window_us: int) -> int:
    """The first window boundary at or after a ``--start-at`` time (0 without a time):
    counting starts there, so the first window is as complete as in a run from earliest."""
    t = start_time_us(start_at)
    if t is None:
        return 0
    return -(-t // window_us) * window_us


class StateDir:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.recovery = self.path / "recovery"

    @contextlib.contextmanager
    def locked(self, process_id: int | None) -> Iterator[None]:
        """Hold the run lock, or raise StateError if another run holds it.

        A single-process run holds ``.lock`` alone. Each process of a cluster shares
        ``.lock`` with the other processes and holds ``.lock-<process id>`` alone.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            shared = process_id is not None
            self._flock(stack, ".lock", fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            if shared:
                self._flock(stack, f".lock-{process_id}", fcntl.LOCK_EX)
            yield

    def _flock(self, stack: contextlib.ExitStack, name: str, mode: int) -> None:
        handle = stack.enter_context(open(self.path / name, "a"))  # noqa: SIM115
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError(
                f"another run is using the state directory {self.path}; "
                "wait for it to finish (runs of one job must not overlap)"
            ) from None
        stack.callback(fcntl.flock, handle, fcntl.LOCK_UN)

    def prepare(self, settings: Settings) -> None:
        """Check the state belongs to these settings (or create it).

        Processes of a cluster may start together on a shared state directory: one at a
        time does this.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".prepare.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._prepare(settings)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _prepare(self, settings: Settings) -> None:
        meta_file = self.path / META
        want = state_meta(settings)
        if meta_file.exists():
            try:
                have = json.loads(meta_file.read_text())
            except ValueError:
                raise StateError(f"{meta_file} is not readable JSON") from None
            if have.get("format") != STATE_FORMAT:
                raise StateError(
                    f"state in {self.path} has format {have.get('format')}, this version uses "
                    f"{STATE_FORMAT}; start with a fresh --state and --output"
                )
            for key, label, shown, hint in MUST_MATCH:
                if have.get(key) != want[key]:
                    raise StateError(
                        f"state in {self.path} was made for {label} "
                        f"{have.get(shown, have.get(key))!r}, not {want[shown]!r}: {hint}"
                    )
            recorded = have.get("start_at", "earliest")
            if settings.start_at is not None and settings.start_at != recorded:
                raise StateError(
                    f"state in {self.path} was made with --start-at {recorded}, not "
                    f"{settings.start_at}: where a state starts is fixed when it is made; "
                    f"another start {FRESH} (later runs may leave --start-at out)"
                )
        elif self.recovery.exists() and any(self.recovery.iterdir()):
            raise StateError(
                f"{self.path} holds recovery data but no {META}: it was not made by this "
                "version; start with a fresh --state and --output"
            )
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            meta_file.write_text(json.dumps(want, indent=2))
        if not self.recovery.exists():
            self.recovery.mkdir(parents=True)
            init_db_dir(self.recovery, RECOVERY_PARTITIONS)

    def start(
        self, settings: Settings, resolve: Callable[[str], dict[int, int]] | None = None
    ) -> Start:
        """Where this state starts: as its metadata records it (or as the settings say, for
        a state not made by ``party-rates run``). Partitions of the first run start at
        offsets resolved once, by ``resolve`` (latest: their ends; a time: the broker's
        time index), and kept here, so a first run killed before its first snapshot starts
        again from the same offsets. Partitions added to the topic later start at their
        beginning: everything in them came after the start."""
        meta_file = self.path / META
        try:
            start_at = json.loads(meta_file.read_text()).get("start_at", "earliest")
        except (OSError, ValueError):
            start_at = settings.start_at or "earliest"
        start_us = start_us_for(start_at, settings.window_us)
        if start_at == "earliest":
            return Start(start_at, start_us, None)
        offsets_file = self.path / START_OFFSETS
        if not offsets_file.exists() and resolve is not None and meta_file.exists():
            with open(self.path / ".prepare.lock", "w") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    if not offsets_file.exists():  # another process may have been first
                        offsets = resolve(start_at)
                        tmp = offsets_file.with_suffix(".tmp")
                        tmp.write_text(json.dumps({str(p): o for p, o in offsets.items()}))
                        tmp.replace(offsets_file)
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        try:
            saved = json.loads(offsets_file.read_text())
        except (OSError, ValueError):
            return Start(start_at, start_us, None)
        return Start(start_at, start_us, {int(p): int(o) for p, o in saved.items()})

    def durable_offsets(self) -> tuple[dict[int, int], bool]:
        """Per partition, the read position the next run resumes from, as the recovery
        store holds it; and whether every worker has recorded the same progress (False
        while a process of a cluster has not yet recorded its last epoch: the positions
        are then those of an earlier, also durable, epoch).

        This is Bytewax 0.21.1's own resume rule: the resume epoch is the smallest epoch
        any worker of the latest execution has not completed, and a partition resumes from
        its newest snapshot before that epoch.
        """
        offsets: dict[int, int] = {}
        settled = True
        for db in sorted(self.recovery.glob("part-*.sqlite3")):
            with contextlib.closing(
                sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            ) as conn:
                ex = conn.execute(
                    "SELECT ex_num, worker_count, resume_epoch FROM exs "
                    "ORDER BY ex_num DESC LIMIT 1"
                ).fetchone()
                if ex is None:
                    continue
                ex_num, workers, resume = ex
                fronts = dict(
                    conn.execute(
                        "SELECT worker_index, MAX(worker_frontier) FROM fronts "
                        "WHERE ex_num = ? GROUP BY worker_index",
                        (ex_num,),
                    ).fetchall()
                )
                progress = [max(fronts.get(w, resume), resume) for w in range(workers)]
                epoch = min(progress)
                settled = settled and max(progress) == epoch
                rows = conn.execute(
                    "SELECT state_key, ser_change FROM snaps AS s WHERE step_id = ?1 "
                    "AND snap_epoch = (SELECT MAX(snap_epoch) FROM snaps WHERE step_id = ?1 "
                    "AND state_key = s.state_key AND snap_epoch < ?2)",
                    (SOURCE_STEP, epoch),
                ).fetchall()
            for key, change in rows:
                if change is not None:
                    offsets[int(key)] = int(pickle.loads(change)[0])
        return offsets, settled
