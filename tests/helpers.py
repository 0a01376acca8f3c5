"""Shared test helpers: topic read-back, a reference implementation, CLI runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
from confluent_kafka import Consumer, KafkaError, TopicPartition

from flows.analysis import load_party_rates
from flows.parsing import Event, classify
from flows.windows import WindowAgg

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


def reference_rows(
    messages: list[tuple[int, int, bytes | None]], window_us: int, lateness_us: int
) -> pd.DataFrame:
    """What the job must output, computed the simple way: partition by partition."""
    by_part: dict[int, list[tuple[int, bytes | None]]] = defaultdict(list)
    for p, off, value in messages:
        by_part[p].append((off, value))
    windows: dict[tuple[str, int], WindowAgg] = defaultdict(WindowAgg)
    maxima = []
    for _p, msgs in sorted(by_part.items()):
        newest: int | None = None
        seen: set[str] = set()
        for _off, value in sorted(msgs):
            ev = classify(value)
            if not isinstance(ev, Event):
                continue
            if newest is not None and ev.t_us < newest - lateness_us:
                continue
            if ev.id in seen:
                continue
            seen.add(ev.id)
            newest = ev.t_us if newest is None else max(newest, ev.t_us)
            start = ev.t_us - ev.t_us % window_us
            windows[(ev.namespace, start)].add(ev.kind, ev.user_id, ev.session_id)
        if newest is not None:
            maxima.append(newest)
    wm = min(maxima) - lateness_us
    closed = wm - wm % window_us
    rows = [
        agg.to_row(ns, start, window_us, start + window_us <= closed)
        for (ns, start), agg in windows.items()
    ]
    return _normalise(pd.DataFrame(rows))


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
