"""Shared test helpers: topic read-back, a reference implementation, CLI runs."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
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


def reference_rows(
    messages: list[tuple[int, int, bytes | None]], window_us: int, lateness_us: int
) -> pd.DataFrame:
    """What the job must write to ``party_rates``, from the independent reference."""
    return reference.rates(reference.run(messages, window_us, lateness_us), window_us)


def reference_outcomes(
    messages: list[tuple[int, int, bytes | None]],
    window_us: int,
    lateness_us: int,
    horizon_us: int = 3_600_000_000,
) -> pd.DataFrame:
    """Final ``disconnect_outcomes`` rows, from the independent reference."""
    result = reference.run(messages, window_us, lateness_us)
    return reference.outcomes(result, window_us, horizon_us)


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
    window_us: int = 5 * 60_000_000,
    lateness_us: int = 10 * 60_000_000,
    horizon_us: int = 3_600_000_000,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``party_rates`` (every row) and ``disconnect_outcomes`` (final rows) as the
    independent reference makes them, with the loaders' columns and types."""
    result = reference.run(messages, window_us, lateness_us)
    rates = reference.rates(result, window_us)
    outcomes = reference.outcomes(result, window_us, horizon_us)
    outcomes["window_end"] = outcomes["window_start"] + pd.Timedelta(microseconds=window_us)
    outcomes["is_final"] = True
    frames = []
    for frame, schema in ((rates, RATES_SCHEMA), (outcomes, OUTCOMES_SCHEMA)):
        frame["date"] = frame["window_start"].dt.date
        table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
        frames.append(table.to_pandas())
    return frames[0], frames[1]


ROLLUPS = ("1h", "1d")
"""The roll-up datasets the job writes by default (``party_rates_1h``, …)."""


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

    df = _load(output, dataset, OUTCOMES_SCHEMA)
    if final_only:
        df = df[df["is_final"]].drop(columns=["window_end", "is_final"])
    df = df.drop(columns=["date"])
    df["namespace"] = df["namespace"].astype(str)
    df["window_start"] = df["window_start"].astype("datetime64[us, UTC]")
    return df.sort_values(["namespace", "window_start"], ignore_index=True)


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
    pd.testing.assert_frame_equal(got, want, check_dtype=False, check_categorical=False)


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


def assert_same_output(got: Path, want: Path) -> None:
    """Two outputs hold the same rows in all four datasets (final and provisional), and
    their manifests account for the same messages in the same way."""
    for suffix in ("", *(f"_{label}" for label in ROLLUPS)):
        rates, outcomes = f"party_rates{suffix}", f"disconnect_outcomes{suffix}"
        assert_same_rows(job_rows(got, rates), job_rows(want, rates))
        assert_same_rows(job_outcomes(got, False, outcomes), job_outcomes(want, False, outcomes))
    assert_same_rows(late_rows(got), late_rows(want))
    assert_same_rows(dead_rows(got), dead_rows(want))
    assert total_counts(got) == total_counts(want)


def assert_matches_reference(
    output: Path,
    messages: list[tuple[int, int, bytes | None]],
    window_us: int = 5 * 60_000_000,
    lateness_us: int = 10 * 60_000_000,
    horizon_us: int = 3_600_000_000,
    start_us: int = 0,
) -> reference.Result:
    """The output of runs over the whole topic equals the independent reference: every
    rates row, the final outcome rows, the late events and dead letters by position, and
    the manifests' summed counts (with ``start_us``, for a state made with --start-at)."""
    result = reference.run(messages, window_us, lateness_us, start_us)
    assert_same_rows(job_rows(output), reference.rates(result, window_us))
    assert_same_rows(job_outcomes(output), reference.outcomes(result, window_us, horizon_us))
    for label, length in zip(ROLLUPS, (3600_000_000, 86400_000_000), strict=True):
        rates, outcomes = f"party_rates_{label}", f"disconnect_outcomes_{label}"
        assert_same_rows(job_rows(output, rates), reference.rates(result, length))
        assert_same_rows(
            job_outcomes(output, dataset=outcomes), reference.outcomes(result, length, horizon_us)
        )
    late = late_rows(output)
    assert list(zip(late["partition"], late["offset"], late["id"], strict=True)) == [
        (ev.partition, ev.offset, ev.id) for ev in result.late
    ]
    dead = dead_rows(output)
    assert list(zip(dead["partition"], dead["offset"], strict=True)) == result.dead
    values = {(p, off): value for p, off, value in messages}
    assert [values[(p, off)] for p, off in result.dead] == list(dead["value"])
    counts = total_counts(output)
    assert {k: counts[k] for k in result.counts} == result.counts
    return result


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
