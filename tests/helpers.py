"""Shared test helpers: topic read-back, a reference implementation, CLI runs."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from confluent_kafka import Consumer, KafkaError, TopicPartition

from flows.analysis import load_disconnect_outcomes, load_party_rates
from flows.core.parsing import Event, classify
from flows.core.windows import WindowAgg
from schemas.events import DISCONNECTED, DROPPED, REJOINED

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "flows.cli"]


def read_topic(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, int, bytes | None]]:
    """Every message of the topic as (partition, offset, value), in offset order."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "test-readback", "enable.partition.eof": True}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[tuple[int, int, bytes | None]] = []
    at_end: set[int] = set()
    while len(at_end) < partitions:
        for msg in consumer.consume(10_000, 5):
            err = msg.error()
            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                at_end.add(msg.partition())
            elif err is None:
                out.append((msg.partition(), msg.offset(), msg.value()))
    consumer.close()
    return sorted(out)


def _on_time_events(
    messages: list[tuple[int, int, bytes | None]], lateness_us: int
) -> tuple[list[Event], int]:
    """Counted events the job keeps (partition by partition), and the final watermark."""
    by_part: dict[int, list[tuple[int, bytes | None]]] = defaultdict(list)
    for p, off, value in messages:
        by_part[p].append((off, value))
    kept: list[Event] = []
    maxima = []
    for _p, msgs in sorted(by_part.items()):
        newest: int | None = None
        seen: set[str] = set()
        for _off, value in sorted(msgs):
            ev = classify(value)
            if not isinstance(ev, Event) or ev.id in seen:
                continue
            if newest is not None and ev.t_us < newest - lateness_us:
                continue
            seen.add(ev.id)
            newest = ev.t_us if newest is None else max(newest, ev.t_us)
            kept.append(ev)
        if newest is not None:
            maxima.append(newest)
    return kept, min(maxima) - lateness_us


def reference_rows(
    messages: list[tuple[int, int, bytes | None]], window_us: int, lateness_us: int
) -> pd.DataFrame:
    """What the job must output, computed the simple way: partition by partition."""
    events, wm = _on_time_events(messages, lateness_us)
    windows: dict[tuple[str, int], WindowAgg] = defaultdict(WindowAgg)
    for ev in events:
        start = ev.t_us - ev.t_us % window_us
        windows[(ev.namespace, start)].add(ev.kind, ev.user_id, ev.session_id)
    closed = wm - wm % window_us
    rows = [
        agg.to_row(ns, start, window_us, start + window_us <= closed)
        for (ns, start), agg in windows.items()
    ]
    return _normalise(pd.DataFrame(rows))


def reference_outcomes(
    messages: list[tuple[int, int, bytes | None]],
    window_us: int,
    lateness_us: int,
    horizon_us: int = 3_600_000_000,
) -> pd.DataFrame:
    """disconnect_outcomes the simple way: each player's events sorted by time, one pass."""
    events, wm = _on_time_events(messages, lateness_us)
    closed = wm - wm % window_us
    aggs: dict[tuple[str, int], dict[str, Any]] = {}

    def agg(ns: str, t: int) -> dict[str, Any]:
        key = (ns, t - t % window_us)
        if key not in aggs:
            aggs[key] = dict.fromkeys(("d", "r", "x", "u", "s", "o"), 0) | {"times": []}
        return aggs[key]

    players: dict[tuple[str, str, str], list[Event]] = defaultdict(list)
    for ev in events:
        if ev.kind in (DISCONNECTED, REJOINED, DROPPED) and ev.session_id and ev.user_id:
            players[(ev.namespace, ev.session_id, ev.user_id)].append(ev)
    for (ns, _s, _u), evs in players.items():
        evs.sort(key=lambda e: (e.t_us, e.kind != DISCONNECTED, e.id))
        opened: int | None = None
        for ev in [e for e in evs if e.t_us < closed]:
            if opened is not None and ev.t_us - opened > horizon_us:
                agg(ns, opened)["u"] += 1
                opened = None
            if ev.kind == DISCONNECTED:
                agg(ns, ev.t_us)["d"] += 1
                if opened is not None:
                    agg(ns, opened)["s"] += 1
                opened = ev.t_us
            elif opened is None:
                agg(ns, ev.t_us)["o"] += 1
            else:
                a = agg(ns, opened)
                if ev.kind == REJOINED:
                    a["r"] += 1
                    a["times"].append((ev.t_us - opened) / 1e6)
                else:
                    a["x"] += 1
                opened = None
        if opened is not None and opened + horizon_us < closed:
            agg(ns, opened)["u"] += 1
    rows = []
    for (ns, start), a in aggs.items():
        if start + window_us + horizon_us > closed:
            continue  # compare final rows only
        decided = a["r"] + a["x"]
        times = a["times"]
        rows.append(
            {
                "namespace": ns,
                "window_start": start,
                "disconnects": a["d"],
                "rejoined": a["r"],
                "dropped": a["x"],
                "unresolved": a["u"],
                "superseded": a["s"],
                "orphan_outcomes": a["o"],
                "cohort_drop_ratio": a["x"] / decided if decided else None,
                "rejoin_seconds_p50": float(np.percentile(times, 50)) if times else None,
                "rejoin_seconds_p95": float(np.percentile(times, 95)) if times else None,
            }
        )
    df = pd.DataFrame(rows)
    df["window_start"] = pd.to_datetime(df["window_start"], unit="us", utc=True)
    return df.sort_values(["namespace", "window_start"], ignore_index=True)


def job_outcomes(output: Path) -> pd.DataFrame:
    """Final disconnect_outcomes rows in the reference's columns."""
    df = load_disconnect_outcomes(output)
    df = df[df["is_final"]].drop(columns=["date", "window_end", "is_final"])
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


def job_rows(output: Path) -> pd.DataFrame:
    return _normalise(load_party_rates(output))


def assert_same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got, want, check_dtype=False, check_categorical=False)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> Any:
    """Run ``party-rates`` as a user would, in a subprocess."""
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


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
    proc = subprocess.Popen([*CLI, *args], cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while snapshotted_epoch(state) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the recovery store the run writes
    assert proc.poll() is None, "the run finished before it could be interrupted"
    return proc
