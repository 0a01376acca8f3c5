"""Shared test helpers: topic read-back, a reference implementation, CLI runs."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, TopicPartition

from flows.analysis import load_dead_letters, load_late_events, load_manifests
from schemas.output import OUTCOMES_SCHEMA, RATES_SCHEMA
from tests import reference

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "flows.cli"]
STARTED: list[subprocess.Popen[Any]] = []
"""Processes a test started and may leave running if it fails or times out: ended after
each test (tests/conftest.py)."""


def start(cmd: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start a process that is ended after the test, whatever happens to it.

    It leads a process group of its own, which the processes it starts (``--processes N``)
    join: :func:`end_group` ends them all. Signals meant for the job itself (SIGINT,
    SIGTERM) go to the leader only, as a user's ``kill`` would send them.
    """
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    STARTED.append(proc)
    return proc


def end_group(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGKILL the process group ``proc`` leads (the leader and every process it started
    that is still in the group) and reap the leader, within ``timeout`` seconds."""
    with contextlib.suppress(ProcessLookupError):  # the whole group has already ended
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout)


def end_started() -> None:
    while STARTED:
        end_group(STARTED.pop())


def read_topic(
    bootstrap: str, topic: str, partitions: int, timeout: float = 60
) -> list[tuple[int, int, bytes | None]]:
    """Every message of the topic as (partition, offset, value), in offset order."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "test-readback", "enable.partition.eof": True}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[tuple[int, int, bytes | None]] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, f"reading {topic} back took over {timeout}s"
            for msg in consumer.consume(10_000, 1):
                err = msg.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                elif err is None:
                    out.append((msg.partition(), msg.offset(), msg.value()))
    finally:
        consumer.close()
    return sorted(out)


MIN_US = 60_000_000
HOUR_US = 60 * MIN_US
DAY_US = 24 * HOUR_US


def reference_rows(
    messages: list[tuple[int, int, bytes | None]], window_us: int, lateness_us: int
) -> pd.DataFrame:
    """What the job must write to ``party_rates``, from the independent reference."""
    return reference.rates(reference.run(messages, window_us, lateness_us), window_us)


def partitioned(messages: list[Any], partitions: int = 4) -> list[tuple[int, int, bytes | None]]:
    """Simulated messages as a topic of ``partitions`` partitions holds them, without a
    broker: placed by their key (so a re-send lands beside the original), in publish order,
    as (partition, offset, value)."""
    offsets = [0] * partitions
    out = []
    for msg in messages:
        p = zlib.crc32(msg.key) % partitions
        out.append((p, offsets[p], msg.value))
        offsets[p] += 1
    return out


def reference_frames(
    messages: list[tuple[int, int, bytes | None]],
    window_us: int = 5 * MIN_US,
    lateness_us: int = 10 * MIN_US,
    horizon_us: int = HOUR_US,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``party_rates`` (every row) and ``disconnect_outcomes`` (final rows) as the
    independent reference makes them, with the loaders' columns and types."""
    result = reference.run(messages, window_us, lateness_us)
    rates = reference.rates(result, window_us)
    outcomes = reference.outcomes(result, window_us, horizon_us, final_only=False)
    outcomes = outcomes[outcomes["is_final"]].reset_index(drop=True)
    frames = []
    for frame, schema in ((rates, RATES_SCHEMA), (outcomes, OUTCOMES_SCHEMA)):
        frame["date"] = frame["window_start"].dt.date
        table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
        frames.append(table.to_pandas())
    return frames[0], frames[1]


ROLLUPS = ("1h", "1d")
"""The roll-up datasets the job writes by default (``party_rates_1h``, …)."""
DEFAULT_ROLLUPS_US = (HOUR_US, DAY_US)


def rollups_for(window_us: int, rollups_us: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The roll-up lengths a run writes: ``rollups_us`` as given, or of the default list
    those that are multiples of the window and longer (as ``--rollups`` left out does)."""
    if rollups_us is not None:
        return tuple(sorted(set(rollups_us)))
    return tuple(n for n in DEFAULT_ROLLUPS_US if n > window_us and n % window_us == 0)


def _load(output: Path, dataset: str, schema: Any) -> pd.DataFrame:
    """A per-window dataset read back as pandas, with the contract's schema, from the files
    of the layout the output's record names."""
    from flows.analysis import load_disconnect_outcomes_table, load_party_rates_table

    rates = dataset.startswith("party_rates")
    base = "party_rates" if rates else "disconnect_outcomes"
    rollup = dataset[len(base) + 1 :] or None
    load = load_party_rates_table if rates else load_disconnect_outcomes_table
    table = load(output, rollup=rollup)
    assert table.schema.names == schema.names
    return table.to_pandas()


def job_outcomes(
    output: Path, final_only: bool = True, dataset: str = "disconnect_outcomes"
) -> pd.DataFrame:
    """disconnect_outcomes rows in the reference's columns (final rows only by default)."""
    from schemas.output import OUTCOMES_SCHEMA

    df = _normalise(_load(output, dataset, OUTCOMES_SCHEMA))
    if final_only:
        df = df[df["is_final"]].drop(columns=["window_end", "is_final"])
    return df.reset_index(drop=True)


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in df.columns if c != "date"]
    df = df[cols].copy()
    df["namespace"] = df["namespace"].astype(str)
    df["window_start"] = pd.to_datetime(df["window_start"], utc=True).astype("datetime64[us, UTC]")
    df["window_end"] = pd.to_datetime(df["window_end"], utc=True).astype("datetime64[us, UTC]")
    return df.sort_values(["namespace", "window_start"], ignore_index=True)


def job_rows(output: Path, dataset: str = "party_rates") -> pd.DataFrame:
    from schemas.output import RATES_SCHEMA

    return _normalise(_load(output, dataset, RATES_SCHEMA))


def assert_same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """The same columns in the same order, of the same types, and the same rows."""
    pd.testing.assert_frame_equal(got, want, check_categorical=False)


def late_rows(output: Path) -> pd.DataFrame:
    """late_events, every column, in (partition, offset) order."""
    df = load_late_events(output)
    return df.sort_values(["partition", "offset"], ignore_index=True)


def dead_rows(output: Path) -> pd.DataFrame:
    """dead_letters without ``seen_at`` (the wall clock), in (partition, offset) order."""
    df = load_dead_letters(output).drop(columns=["seen_at"])
    return df.sort_values(["partition", "offset"], ignore_index=True)


def total_counts(output: Path) -> dict[str, int]:
    """The manifests' counts summed over every run."""
    total: dict[str, int] = {}
    for manifest in load_manifests(output):
        for key, n in manifest["counts"].items():
            total[key] = total.get(key, 0) + n
    return total


LOG_DATASETS = ("late_events", "dead_letters")


def window_dataset_names(output: Path) -> list[str]:
    """The per-window datasets an output holds: ``party_rates``, ``disconnect_outcomes``
    and their roll-ups (every directory but the logs and ``_runs``)."""
    if not output.exists():
        return []
    return sorted(
        d.name
        for d in output.iterdir()
        if d.is_dir() and d.name not in LOG_DATASETS and not d.name.startswith(("_", "."))
    )


def assert_one_file_per_partition(output: Path) -> None:
    """The file-count promise, for every dataset: each directory of a per-window dataset
    that holds data holds exactly one file, ``part-0.parquet``; nothing anywhere is a
    temporary file left behind."""
    for name in window_dataset_names(output):
        for directory in sorted({f.parent for f in (output / name).rglob("*") if f.is_file()}):
            files = sorted(f.name for f in directory.iterdir() if f.is_file())
            assert files == ["part-0.parquet"], (directory, files)
    left = [p for p in output.rglob("*") if p.name.endswith(".tmp")]
    assert left == [], left


def assert_same_output(got: Path, want: Path) -> None:
    """Two outputs hold the same datasets with the same rows (final and provisional), and
    their manifests account for the same messages in the same way."""
    names = window_dataset_names(want)
    assert window_dataset_names(got) == names
    assert "party_rates" in names
    for name in names:
        if name.startswith("party_rates"):
            assert_same_rows(job_rows(got, name), job_rows(want, name))
        else:
            assert_same_rows(job_outcomes(got, False, name), job_outcomes(want, False, name))
    assert_same_rows(late_rows(got), late_rows(want))
    assert_same_rows(dead_rows(got), dead_rows(want))
    assert total_counts(got) == total_counts(want)
    assert_one_file_per_partition(got)


def assert_matches_reference(
    output: Path,
    messages: list[tuple[int, int, bytes | None]],
    window_us: int = 5 * MIN_US,
    lateness_us: int = 10 * MIN_US,
    horizon_us: int = HOUR_US,
    start_us: int = 0,
    dedup_horizon_us: int = 0,
    rollups_us: tuple[int, ...] | None = None,
) -> reference.Result:
    """The output of runs over the whole topic, with these settings, equals the independent
    reference: every row of ``party_rates``, ``disconnect_outcomes`` and each roll-up (final
    and provisional) and no other roll-up, the late events (every column but the key) and
    the dead letters by position, the manifests' summed counts, and one file per partition
    directory (``start_us``: a state made with --start-at; ``rollups_us`` None: the default
    list as it fits the window)."""
    from flows.core.eventtime import duration_label

    result = reference.run(messages, window_us, lateness_us, start_us, dedup_horizon_us)
    lengths = rollups_for(window_us, rollups_us)
    expected = ["party_rates", "disconnect_outcomes"]
    expected += [f"{kind}_{duration_label(n)}" for n in lengths for kind in expected[:2]]
    assert set(window_dataset_names(output)) <= set(expected)
    for length, suffix in [(window_us, ""), *((n, f"_{duration_label(n)}") for n in lengths)]:
        assert_same_rows(job_rows(output, f"party_rates{suffix}"), reference.rates(result, length))
        assert_same_rows(
            job_outcomes(output, False, f"disconnect_outcomes{suffix}"),
            reference.outcomes(result, length, horizon_us, final_only=False),
        )
    values = {(p, off): value for p, off, value in messages}
    want_late = pd.DataFrame(
        {
            "id": pd.Series([ev.id for ev in result.late], dtype=str),
            "namespace": pd.Series([ev.namespace for ev in result.late], dtype=str),
            "name": pd.Series([ev.name for ev in result.late], dtype=str),
            "event_time": pd.to_datetime(
                pd.Series([ev.t_us for ev in result.late], dtype="int64"), unit="us", utc=True
            ).astype("datetime64[us, UTC]"),
            "partition": pd.Series([ev.partition for ev in result.late], dtype="int32"),
            "offset": pd.Series([ev.offset for ev in result.late], dtype="int64"),
            "value": pd.Series(
                [values[(ev.partition, ev.offset)] for ev in result.late], dtype=object
            ),
        }
    )
    assert_same_rows(late_rows(output).drop(columns=["key"]), want_late)
    dead = dead_rows(output)
    assert list(zip(dead["partition"], dead["offset"], strict=True)) == result.dead
    assert [values[(p, off)] for p, off in result.dead] == list(dead["value"])
    counts = total_counts(output)
    assert {k: counts[k] for k in result.counts} == result.counts
    assert_one_file_per_partition(output)
    return result


def assert_as_simulated(out: Path, counts: dict[str, int], messages: list[Any], truth: Any) -> None:
    """The counts and late events are the simulator's own account of what it made, under
    the README's rules (``truth``: the simulator's ``Truth``)."""
    assert truth.late > 0 and truth.duplicates > 0 and truth.malformed > 0
    assert counts["messages"] == len(messages)
    assert counts["dead_letters"] == truth.malformed
    assert counts["duplicates"] == truth.duplicates
    assert counts["late"] == truth.late
    assert set(load_late_events(out)["id"]) == truth.late_ids


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> Any:
    """Run ``party-rates`` as a user would, in a subprocess; if it outlasts ``timeout``
    seconds (or the test is interrupted), it is killed with every process it started."""
    proc = start(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        end_group(proc)
        out, err = proc.communicate(timeout=30)
        raise subprocess.TimeoutExpired(proc.args, timeout, out, err) from None
    finally:
        end_group(proc)  # and any process it started that outlived it
        STARTED.remove(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_job(bootstrap: str, topic: str, output: Path, state: Path, *extra: str) -> Any:
    result = run_cli(
        "run",
        "--brokers",
        bootstrap,
        "--topic",
        topic,
        "--output",
        str(output),
        "--state",
        str(state),
        "--progress",
        "off",
        *extra,
    )
    assert result.returncode == 0, result.stderr
    return result


def group_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The offsets committed to a consumer group for a topic, as monitoring tools read
    them (the admin client's list_consumer_group_offsets); partitions without one left out."""
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    request = ConsumerGroupTopicPartitions(group)
    answer = admin.list_consumer_group_offsets([request])[group].result(timeout=30)
    return {
        tp.partition: tp.offset
        for tp in answer.topic_partitions
        if tp.topic == topic and tp.offset >= 0
    }


def snapshotted_epoch(state: Path) -> int:
    """The latest epoch whose snapshot a run has committed to its recovery store."""
    db = state / "recovery" / "part-0.sqlite3"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            row = conn.execute("SELECT MAX(commit_epoch) FROM commits").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0] or 0)


class Lines:
    """A started process's output stream, read line by line as it is written (a thread),
    so a test can wait for a line without ending the process."""

    def __init__(self, stream: Any) -> None:
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._lines.append("")  # the end of the stream
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float) -> str:
        """The first line holding ``text``; fails after ``timeout`` s or at the stream's end."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((line for line in self._lines if text in line), None)
                if found is not None:
                    return found
                assert self._lines[-1:] != [""], f"ended without {text!r}: {self.text()}"
                left = deadline - time.monotonic()
                assert left > 0, f"no {text!r} in {timeout}s: {self.text()}"
                self._changed.wait(left)

    def text(self) -> str:
        """Everything read so far."""
        return "".join(self._lines)

    def all(self, timeout: float = 30) -> str:
        """Everything, once the process has ended (its stream is read to the end)."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the stream did not end in {timeout}s"
        return self.text()


def start_slow_run(bootstrap: str, topic: str, out: Path, state: Path, *extra: str) -> Any:
    """Start a run made slow by tiny batches and return once it has committed two snapshots.

    Fails if the run finishes first: the caller means to interrupt it in the middle.
    """
    args = ["run", "--brokers", bootstrap, "--topic", topic, "--output", str(out)]
    args += ["--state", str(state), "--progress", "off", "--batch-size", "3"]
    args += ["--snapshot-interval", "300ms", *extra]
    proc = start([*CLI, *args], cwd=REPO, stderr=subprocess.PIPE, text=True)
    timeout = 120
    deadline = time.monotonic() + timeout
    while snapshotted_epoch(state) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the recovery store the run writes
    assert proc.poll() is None, "the run finished before it could be interrupted"
    epoch = snapshotted_epoch(state)
    assert epoch >= 2, f"the run committed {epoch} snapshots in {timeout}s, not the two awaited"
    return proc


def prepare(settings: Any, state: Any, storage: Any, bounds: Any) -> Any:
    """What ``party-rates run`` does first against the output and the state
    (flows.edges.recovery.prepare), from whole settings."""
    from flows.edges import recovery

    return recovery.prepare(
        state, storage, bounds, topic=settings.kafka.topic, rules=settings.rules,
        recompute=settings.storage.recompute, run_id=settings.run.run_id,
    )  # fmt: skip
