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
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple

from bytewax.recovery import init_db_dir

from flows.core.eventtime import duration_label
from flows.core.items import SOURCE_STEP
from flows.core.partition import PartitionSnapshot
from flows.errors import ConflictError
from flows.settings import RulesSettings, new_run_id, start_time_us

STATE_FORMAT = 5
"""Bumped whenever a class pickled in the state moves or changes (``tests/test_flow.py`` holds
the list). A state of a format in READABLE_FORMATS is read as it is; any other is rebuilt
from the output's record and the topic (flows.edges.table)."""
READABLE_FORMATS = (4, 5)
META = "party_rates_state.json"
START_OFFSETS = "start_offsets.json"
REBUILD = "rebuild.json"
DONE = "done"
RUN_ID = "cluster_run_id"
RECOVERY_PARTITIONS = 1


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
    (
        "dedup_horizon_us",
        "dedup horizon",
        "dedup_horizon",
        f"the events already counted were deduplicated with the old horizon; changing it {FRESH}",
    ),
    ("output", "output", "output", "use the state directory made for this output"),
)
REBUILT_ON = (  # (key, what it is, key shown): a change rebuilds the state from the output
    ("shards", "shards", "shards"),
    ("rollup_lengths_us", "roll-ups", "rollups"),
)


class StateError(ConflictError):
    """The state directory cannot be used with these settings."""


def state_meta(topic: str, rules: RulesSettings, output: str) -> dict[str, object]:
    """What a state records of the settings it was made with."""
    return {
        "format": STATE_FORMAT,
        "topic": topic,
        "window": duration_label(rules.window),
        "window_us": rules.window,
        "allowed_lateness": duration_label(rules.allowed_lateness),
        "outcome_horizon": duration_label(rules.outcome_horizon),
        "outcome_horizon_us": rules.outcome_horizon,
        "allowed_lateness_us": rules.allowed_lateness,
        "dedup_horizon": duration_label(rules.dedup_us),
        "dedup_horizon_us": rules.dedup_us,
        "shards": rules.shards,
        "rollups": ",".join(duration_label(n) for n in rules.rollups),
        "rollup_lengths_us": list(rules.rollups),
        "output": output,
        "start_at": rules.start_at or "earliest",
    }


class Verdict(NamedTuple):
    """What a run finds in the state directory."""

    kind: Literal["fresh", "usable", "rebuild"]
    reason: str  # for "rebuild": why the saved state cannot be used
    meta: dict[str, Any] | None  # the state's metadata, if readable


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

    @contextlib.contextmanager
    def preparing(self) -> Iterator[None]:
        """Processes of a cluster may start together on a shared state directory: one at a
        time inspects, creates or rebuilds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".prepare.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def meta(self) -> dict[str, Any] | None:
        """The state's metadata; None if it has none or it cannot be read."""
        try:
            meta = json.loads((self.path / META).read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def has_saved_state(self) -> bool:
        return self.recovery.exists() and any(self.recovery.iterdir())

    def inspect(self, want: dict[str, object], start_at: str | None) -> Verdict:
        """Whether the state can be used with these settings, must be rebuilt, or is new.

        Refused (StateError): a state made for another topic, output or meaning-changing
        setting. Rebuilt: a state that cannot be read, of a format this version does not
        read, or made for other shards or roll-ups (the output keeps what they wrote).
        ``want``: :func:`state_meta` of the settings; ``start_at``: the start given, if any."""
        meta_file = self.path / META
        if not meta_file.exists():
            if self.has_saved_state():
                return Verdict("rebuild", f"it holds saved state but no {META}", None)
            return Verdict("fresh", "", None)
        have = self.meta()
        if have is None:
            return Verdict("rebuild", f"{META} cannot be read", None)
        if have.get("format") not in READABLE_FORMATS:
            return Verdict(
                "rebuild",
                f"it has format {have.get('format')}, this version reads "
                f"{' and '.join(map(str, READABLE_FORMATS))}",
                have,
            )
        for key, label, shown, hint in MUST_MATCH:
            if key in have and have.get(key) != want[key]:
                raise StateError(
                    f"state in {self.path} was made for {label} "
                    f"{have.get(shown, have.get(key))!r}, not {want[shown]!r}: {hint}"
                )
        recorded = have.get("start_at", "earliest")
        if start_at is not None and start_at != recorded:
            raise StateError(
                f"state in {self.path} was made with --start-at {recorded}, not "
                f"{start_at}: where a state starts is fixed when it is made; "
                f"another start {FRESH} (later runs may leave --start-at out)"
            )
        for key, label, shown in REBUILT_ON:
            if have.get(key) != want[key]:
                return Verdict(
                    "rebuild",
                    f"it was made for {label} {have.get(shown)!r}, not {want[shown]!r}",
                    have,
                )
        return Verdict("usable", "", have)

    def state_id(self) -> str | None:
        meta = self.meta()
        return str(meta["state_id"]) if meta and meta.get("state_id") else None

    def create(self, want: dict[str, object], state_id: str | None = None) -> str:
        """Make a new state (or adopt an existing one's metadata: a format-4 state gets its id
        here); returns its id."""
        meta = self.meta()
        ident = state_id or (meta or {}).get("state_id") or uuid.uuid4().hex
        if meta is not None and meta.get("format") in READABLE_FORMATS:
            # an older format that this version reads: it now saves this format's classes
            update = {"format": STATE_FORMAT, "state_id": ident}
            update |= {k: v for k, v in want.items() if k not in meta}
            if any(meta.get(k) != v for k, v in update.items()):
                self._write_meta(meta | update)
        else:
            self._write_meta(want | {"state_id": ident})
        if not self.recovery.exists():
            self.recovery.mkdir(parents=True)
            init_db_dir(self.recovery, RECOVERY_PARTITIONS)
        return ident

    def rebuild(self, want: dict[str, object], plan: dict[str, Any], state_id: str | None) -> str:
        """Throw the saved state away and make a state that rebuilds itself as ``plan`` says
        (written before the metadata: a rebuild killed before it starts again)."""
        (self.path / META).unlink(missing_ok=True)
        shutil.rmtree(self.recovery, ignore_errors=True)
        (self.path / START_OFFSETS).unlink(missing_ok=True)
        tmp = self.path / (REBUILD + ".tmp")
        tmp.write_text(json.dumps(plan))
        tmp.replace(self.path / REBUILD)
        self.recovery.mkdir(parents=True)
        init_db_dir(self.recovery, RECOVERY_PARTITIONS)
        ident = state_id or uuid.uuid4().hex
        self._write_meta(want | {"state_id": ident})
        return ident

    def rebuild_plan(self) -> dict[str, Any] | None:
        """The plan this state was rebuilt with (None for a state made from nothing)."""
        try:
            plan = json.loads((self.path / REBUILD).read_text())
        except (OSError, ValueError):
            return None
        return plan if isinstance(plan, dict) else None

    def _write_meta(self, meta: dict[str, Any]) -> None:
        tmp = self.path / (META + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(self.path / META)

    def shared_run_id(self, used: Callable[[str], bool]) -> str:
        """The run id the processes of one cluster share (flows.run.cluster_run_id): the
        one kept here, or a new one if there is none or ``used`` says its run began."""
        path = self.path / RUN_ID
        with self.preparing():
            try:
                current = path.read_text().strip()
            except OSError:
                current = ""
            if not current or used(current):
                current = new_run_id()
                tmp = self.path / (RUN_ID + ".tmp")
                tmp.write_text(current)
                tmp.replace(path)
        return current

    def mark_done(self, run_id: str, process_id: int) -> None:
        """This process's part of a run is written (its dataflow returned)."""
        directory = self.path / DONE / run_id
        directory.mkdir(parents=True, exist_ok=True)
        (directory / str(process_id)).touch()

    def all_done(self, run_id: str, processes: int) -> bool:
        directory = self.path / DONE / run_id
        return directory.is_dir() and len(list(directory.iterdir())) >= processes

    def forget_done(self, keep: str) -> None:
        """Remove the markers of earlier runs."""
        for directory in (self.path / DONE).glob("*"):
            if directory.name != keep:
                shutil.rmtree(directory, ignore_errors=True)

    def start(
        self, rules: RulesSettings, resolve: Callable[[str], dict[int, int]] | None = None
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
            start_at = rules.start_at or "earliest"
        start_us = start_us_for(start_at, rules.window)
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

    def durable(self, step: str) -> tuple[dict[str, Any], bool]:
        """The saved state of every key of ``step`` (a full step id) that the next run
        resumes from, as the recovery store holds it; and whether every worker has recorded
        the same progress (False while a process of a cluster has not yet recorded its last
        epoch: the states are then those of an earlier, also durable, epoch).

        This is Bytewax 0.21.1's own resume rule: the resume epoch is the smallest epoch
        any worker of the latest execution has not completed, and a key resumes from its
        newest snapshot before that epoch.
        """
        states: dict[str, Any] = {}
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
                    (step, epoch),
                ).fetchall()
            for key, change in rows:
                if change is not None:
                    states[key] = pickle.loads(change)
        return states, settled

    def durable_offsets(self) -> tuple[dict[int, int], bool]:
        """Per partition, the read position the next run resumes from (see :meth:`durable`)."""
        states, settled = self.durable(SOURCE_STEP)
        offsets = {
            int(key): PartitionSnapshot.read(saved, 1).next_offset for key, saved in states.items()
        }
        return offsets, settled
