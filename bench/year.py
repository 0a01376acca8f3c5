"""``make bench-year``: a simulated year of output in format 1 and format 2, side by side.

No broker: the rows are generated (every namespace has a row in every window, the densest
case), and written as each layout lays them out:

* **format 1** (the layout before): one file per ``namespace=/date=`` directory of each
  windowed dataset (5-minute, hourly and daily rates and outcomes);
* **format 2** (this version's): one file per date, one per month for the day roll-ups,
  written by the job's own writer (``DatasetSpec.write_parquet``);

and ``_runs/`` with a manifest for every run of a schedule every 15 minutes: all of them
kept (no ``--retain``, as before) against those left by ``--retain 30d`` at the year's end
(``flows.edges.retention``).

Measured, each in one run of this command: the files and bytes of each layout; the time to
load one namespace's month (5-minute rates) and every namespace's week with pandas
(``read_parquet`` with filters), DuckDB (``read_parquet`` with Hive partitioning and a
``WHERE``) and Polars (``scan_parquet`` with a filter), the best of ``--repeat`` loads, the
files warm in the page cache; and the write time of the sinks (this version's code, the
format-1 layout configured as format 1's paths and file schema) in a steady-state
scheduled run (the rows of 15 minutes of the last day, 23:30-23:45, of every namespace)
and in a following run's flush (one 5-minute window made final). Writes bench/LAYOUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import psutil
import pyarrow as pa

from flows.core.paths import old_window_relpath, window_relpath
from flows.edges import retention
from flows.edges.sinks import DatasetSpec, ParquetSink, route, window_dataset
from flows.edges.storage import Storage
from schemas.output import (
    DATE_FIELD,
    NAMESPACE_FIELD,
    OUTCOMES_FILE_SCHEMA,
    RATES_FILE_SCHEMA,
)

HERE = Path(__file__).resolve().parent
US = 1_000_000
MINUTE = 60 * US
DAY = 86_400 * US
LENGTHS = {"": 5 * MINUTE, "_1h": 60 * MINUTE, "_1d": DAY}
DATASETS = [(f"{base}{suffix}", base, n) for suffix, n in LENGTHS.items()
            for base in ("party_rates", "disconnect_outcomes")]  # fmt: skip
UTC_US = pa.timestamp("us", tz="UTC")


# --- rows -----------------------------------------------------------------------------


def namespaces(n: int) -> list[str]:
    return [f"game-{i:04d}" for i in range(n)]


def day_table(
    rng: np.random.Generator, names: list[str], day: date, base: str, length: int,
    scale: np.ndarray, final: bool = True,
) -> pa.Table:  # fmt: skip
    """Every namespace's windows of ``length`` starting on ``day``, sorted by (namespace,
    window_start), with the columns of format 2's file (namespace, date, the measures)."""
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * US
    per = max(DAY // length, 1)
    n = len(names) * per
    starts = np.tile(start + np.arange(per, dtype=np.int64) * length, len(names))
    hours = ((starts // (3600 * US)) % 24).astype(float)
    peak = 0.6 + 0.4 * np.sin((hours - 14) / 24 * 2 * np.pi) ** 2
    mean = np.repeat(scale, per) * peak * length / (5 * MINUTE)
    disconnected = rng.poisson(mean)
    dropped = rng.binomial(disconnected, 0.1)
    rejoined = rng.binomial(disconnected - dropped, 0.8)
    minutes = length / MINUTE
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(disconnected > 0, dropped / np.maximum(disconnected, 1), np.nan)
        rejoin_ratio = np.where(disconnected > 0, rejoined / np.maximum(disconnected, 1), np.nan)
    columns: dict[str, Any] = {
        "namespace": pa.array(np.repeat(np.array(names, dtype=object), per), pa.string()),
        "date": pa.array([day] * n, pa.date32()),
        "window_start": pa.array(starts, UTC_US),
        "window_end": pa.array(starts + length, UTC_US),
        "is_final": pa.array(np.full(n, final)),
    }
    if base == "party_rates":
        users = rng.binomial(disconnected, 0.9)
        columns |= {
            "disconnected": disconnected, "rejoined": rejoined, "dropped": dropped,
            "rejected": rng.poisson(mean / 10), "users_disconnected": users,
            "parties_affected": rng.binomial(disconnected, 0.7),
            "disconnects_per_min": disconnected / minutes, "drops_per_min": dropped / minutes,
            "drop_ratio": pa.array(ratio, from_pandas=True),
            "rejoin_ratio": pa.array(rejoin_ratio, from_pandas=True),
        }  # fmt: skip
        measures = RATES_FILE_SCHEMA
    else:
        unresolved = rng.binomial(disconnected - dropped - rejoined, 0.5)
        decided = rejoined + dropped
        with np.errstate(divide="ignore", invalid="ignore"):
            cohort = np.where(decided > 0, dropped / np.maximum(decided, 1), np.nan)
        p50 = np.where(rejoined > 0, rng.gamma(2.0, 15.0, n), np.nan)
        columns |= {
            "disconnects": disconnected, "rejoined": rejoined, "dropped": dropped,
            "unresolved": unresolved,
            "superseded": disconnected - dropped - rejoined - unresolved,
            "orphan_outcomes": rng.poisson(0.05, n),
            "cohort_drop_ratio": pa.array(cohort, from_pandas=True),
            "rejoin_seconds_p50": pa.array(p50, from_pandas=True),
            "rejoin_seconds_p95": pa.array(p50 * 3, from_pandas=True),
        }  # fmt: skip
        measures = OUTCOMES_FILE_SCHEMA
    schema = pa.schema([NAMESPACE_FIELD, DATE_FIELD, *measures])
    return pa.table({f.name: columns[f.name] for f in schema}, schema=schema)


PREVIOUS_RUN = datetime(2000, 1, 1, 23, 30, tzinfo=UTC)
"""The time of day the last day's rows were written by a run reading up to (the last run
before the measured ones, on a 15-minute schedule)."""
LATENESS = timedelta(minutes=10)
HORIZON = timedelta(hours=1)


def as_left_at(table: pa.Table, base: str, until: datetime) -> pa.Table:
    """The rows a run that read events up to ``until`` left: windows starting before it,
    final once the watermark (``until`` less the allowed lateness) passed their end (and
    the outcome horizon after it, for outcomes), the others provisional."""
    import pyarrow.compute as pc

    horizon = HORIZON if base == "disconnect_outcomes" else timedelta(0)
    table = table.filter(pc.less(table.column("window_start"), pa.scalar(until, UTC_US)))
    final = pc.less_equal(table.column("window_end"), pa.scalar(until - LATENESS - horizon, UTC_US))
    i = table.schema.get_field_index("is_final")
    return table.set_column(i, table.schema.field(i), final)


def old_spec(name: str, base: str) -> DatasetSpec:
    """A windowed dataset laid out as format 1: a file per namespace and date, the namespace
    and date in the path only."""
    measures = RATES_FILE_SCHEMA if base == "party_rates" else OUTCOMES_FILE_SCHEMA

    def relpath(row: dict[str, Any]) -> str:
        return old_window_relpath(name, row["namespace"], row["date"])

    return DatasetSpec(name, measures, relpath, ("window_start",), "is_final")


def new_spec(name: str, base: str, length: int) -> DatasetSpec:
    measures = RATES_FILE_SCHEMA if base == "party_rates" else OUTCOMES_FILE_SCHEMA
    return window_dataset(name, measures, length)


# --- writing a year -------------------------------------------------------------------


def write_year(root: Path, names: list[str], days: list[date], seed: int) -> None:
    """The year's windowed datasets in both layouts, ``root/format1`` and ``root/format2``."""
    old, new = Storage(str(root / "format1")), Storage(str(root / "format2"))
    rng = np.random.default_rng(seed)
    scale = rng.lognormal(0.0, 1.2, len(names)) * 3
    month_rows: dict[str, list[pa.Table]] = {}
    for i, day in enumerate(days):
        for name, base, length in DATASETS:
            table = day_table(rng, names, day, base, length, scale)
            if i == len(days) - 1:
                table = as_left_at(table, base, PREVIOUS_RUN.replace(
                    year=day.year, month=day.month, day=day.day))  # fmt: skip
            spec_old, spec_new = old_spec(name, base), new_spec(name, base, length)
            measures = spec_old.file_schema
            per = table.num_rows // len(names)  # as many windows in each namespace
            old.write_tables(
                [
                    (
                        old_window_relpath(name, ns, day),
                        table.slice(k * per, per).select(measures.names).cast(measures),
                    )
                    for k, ns in enumerate(names)
                ],
                spec_old.write_parquet,
            )
            if length < DAY:
                new_table = table.select(spec_new.file_schema.names).cast(spec_new.file_schema)
                new.write_tables([(window_relpath(name, length, day), new_table)],
                                 spec_new.write_parquet)  # fmt: skip
            else:
                month_rows.setdefault(name, []).append(table)
                last = i == len(days) - 1 or days[i + 1].month != day.month
                if last:
                    whole = pa.concat_tables(month_rows.pop(name)).sort_by(spec_new.sorting)
                    new.write_tables([(window_relpath(name, length, day), whole)],
                                     spec_new.write_parquet)  # fmt: skip
        if day.day == 1:
            print(f"bench-year: writing {day:%Y-%m}", file=sys.stderr, flush=True)


def write_runs(root: Path, days: list[date]) -> None:
    """A manifest for every run of a 15-minute schedule over the year, each with the
    modification time of its run's end; in format 2's output, ``--retain 30d`` applied at
    the year's end."""
    sample: dict[str, Any] = {
        "run_id": "", "started_at": "", "ended_at": "", "status": "completed",
        "settings": {f"setting_{i}": f"value-{i}" for i in range(40)},
        "partitions": {str(p): {"from": 1_000_000 * p, "to": 1_000_000 * p + 5_000,
                                "end": 1_000_000 * p + 5_000} for p in range(12)},
        "counts": {"messages": 60_000, "counted": 24_000, "skipped": 36_000,
                   "duplicates": 0, "late": 0, "dead_letters": 0, "before_start": 0,
                   "reread": 0},
        "gaps": [], "rebuild": None, "group_commit_error": None,
    }  # fmt: skip
    first = datetime(days[0].year, days[0].month, days[0].day, tzinfo=UTC)
    end = first + timedelta(days=len(days))
    t = first
    ids = []
    for layout in ("format1", "format2"):
        (root / layout / "_runs").mkdir(parents=True, exist_ok=True)
    while t < end:
        run_id = f"{t:%Y%m%dT%H%M%SZ}-bench"
        manifest = sample | {"run_id": run_id, "started_at": t.isoformat(),
                             "ended_at": (t + timedelta(seconds=20)).isoformat()}  # fmt: skip
        data = json.dumps(manifest, indent=2, sort_keys=True)
        stamp = (t + timedelta(seconds=20)).timestamp()
        for layout in ("format1", "format2"):
            path = root / layout / "_runs" / f"{run_id}.json"
            path.write_text(data)
            os.utime(path, (stamp, stamp))
        ids.append(run_id)
        t += timedelta(minutes=15)
    retention.apply(Storage(str(root / "format2")), 30 * DAY, ids[-1], end)


def census(root: Path) -> tuple[int, int, int, int]:
    """(windowed files, their bytes, _runs files, their bytes)."""
    counts = [0, 0, 0, 0]
    for path in root.rglob("*"):
        if path.is_file():
            k = 2 if path.relative_to(root).parts[0] == "_runs" else 0
            counts[k] += 1
            counts[k + 1] += path.stat().st_size
    return counts[0], counts[1], counts[2], counts[3]


# --- loads ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    label: str
    namespace: str | None
    start: date
    end: date  # exclusive


def _pandas(base: Path, q: Query) -> int:
    # pyarrow infers Hive date= values as strings: ISO dates compare as dates do
    filters: list[Any] = [("date", ">=", q.start.isoformat()), ("date", "<", q.end.isoformat())]
    if q.namespace is not None:
        filters.append(("namespace", "==", q.namespace))
    return len(pd.read_parquet(base / "party_rates", filters=filters))


def _duckdb(base: Path, q: Query) -> int:
    layout = "*/*/*.parquet" if base.name == "format1" else "*/*.parquet"
    where = "date >= ? AND date < ?" + (" AND namespace = ?" if q.namespace else "")
    args: list[Any] = [f"{base}/party_rates/{layout}", q.start, q.end]
    if q.namespace:
        args.append(q.namespace)
    con = duckdb.connect()
    query = f"SELECT * FROM read_parquet(?, hive_partitioning = true) WHERE {where}"
    return len(con.execute(query, args).df())


def _polars(base: Path, q: Query) -> int:
    frame = pl.scan_parquet(f"{base}/party_rates/**/*.parquet", hive_partitioning=True)
    cond = (pl.col("date") >= q.start) & (pl.col("date") < q.end)
    if q.namespace:
        cond &= pl.col("namespace") == q.namespace
    return frame.filter(cond).collect().height


READERS: dict[str, Callable[[Path, Query], int]] = {
    "pandas": _pandas, "DuckDB": _duckdb, "Polars": _polars,
}  # fmt: skip


def best_of(repeat: int, work: Callable[[], int]) -> tuple[float, int]:
    times, rows = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        rows = work()
        times.append(time.perf_counter() - started)
    return min(times), rows


# --- writes of a run ------------------------------------------------------------------


def run_rows(
    names: list[str], day: date, until: datetime, round_: int, span: timedelta
) -> dict[str, list[dict[str, Any]]]:
    """The rows a run writes when it has read up to ``until``, having read ``span`` more
    than the run before (allowed lateness 10 minutes, outcome horizon an hour): the 5-minute
    windows made final since, and at its end every open window provisional (for a
    following run's flush, ``span`` alone and no provisional rows). Counts vary with
    ``round_`` so that every measured write changes its files."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name, _b, _n in DATASETS}
    watermark = until - timedelta(minutes=10)
    provisional = span == timedelta(minutes=15)

    def rows(name: str, base: str, length: int, first: datetime, last: datetime,
             final: bool) -> None:  # fmt: skip
        step = timedelta(microseconds=length)
        t = first
        while t < last:
            for k, ns in enumerate(names):
                n = 10 + (k + round_) % 7
                row = {"namespace": ns, "date": t.date(), "window_start": t,
                       "window_end": t + step, "is_final": final}  # fmt: skip
                for f in RATES_FILE_SCHEMA if base == "party_rates" else OUTCOMES_FILE_SCHEMA:
                    if f.name not in row:
                        row[f.name] = n if pa.types.is_integer(f.type) else n / 10
                out[name].append(row)
            t += step

    hour = timedelta(hours=1)
    rows("party_rates", "party_rates", 5 * MINUTE, watermark - span, watermark, True)
    horizon = watermark - hour
    rows("disconnect_outcomes", "disconnect_outcomes", 5 * MINUTE, horizon - span, horizon, True)
    if provisional:
        rows("party_rates", "party_rates", 5 * MINUTE, watermark, until, False)
        rows("disconnect_outcomes", "disconnect_outcomes", 5 * MINUTE, horizon, until, False)
        this_hour = until.replace(minute=0)
        rows("party_rates_1h", "party_rates", 60 * MINUTE, this_hour, until, False)
        rows("disconnect_outcomes_1h", "disconnect_outcomes", 60 * MINUTE, this_hour - hour,
             until, False)  # fmt: skip
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        for name, base in (("party_rates_1d", "party_rates"),
                           ("disconnect_outcomes_1d", "disconnect_outcomes")):  # fmt: skip
            rows(name, base, DAY, midnight, until, False)
    return out


def _last_files(root: Path, day: date) -> dict[Path, tuple[int, int, int]]:
    """(inode, modification time, size) of the files that hold ``day``'s windows."""
    patterns = (f"*/date={day}/*.parquet", f"date={day}/*.parquet", f"month={day:%Y-%m}/*.parquet")
    out = {}
    for name, _base, _length in DATASETS:
        for pattern in patterns:
            for path in (root / name).glob(pattern):
                st = path.stat()
                out[path] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def write_run(
    storage: Storage, layout: str, rows: dict[str, list[dict[str, Any]]], day: date
) -> tuple[float, int, int]:
    """Seconds the sinks take to write a run's rows (of ``day``), one worker (one sink
    partition after another, as a run with one worker writes them); and the files and
    bytes they wrote (on an object store, each file is one upload of the whole object)."""
    before = _last_files(Path(storage.root), day)
    started = time.perf_counter()
    for name, base, length in DATASETS:
        if not rows[name]:
            continue
        spec = old_spec(name, base) if layout == "format1" else new_spec(name, base, length)
        part = ParquetSink(storage, spec, flush_seconds=None, parts=1).build_part(
            name, f"{name}-0", None
        )
        part.write_batch([item for _key, item in route(spec)(rows[name])])
        part.close()
    seconds = time.perf_counter() - started
    after = _last_files(Path(storage.root), day)
    written = [after[p][2] for p in after if before.get(p) != after[p]]
    return seconds, len(written), sum(written)


# --- the report -----------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def _s(x: float) -> str:
    return f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.year", description=__doc__)
    parser.add_argument("--namespaces", type=int, default=300)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--start", default="2026-01-01", help="first day of the year")
    parser.add_argument("--repeat", type=int, default=3, help="loads and writes measured")
    parser.add_argument("--dir", help="where to write the outputs (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    parser.add_argument("--report", default=str(HERE / "LAYOUT.md"), help="the results file")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    names = namespaces(args.namespaces)
    first = date.fromisoformat(args.start)
    days = [first + timedelta(days=d) for d in range(args.days)]
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-year-"))
    shutil.rmtree(root / "format1", ignore_errors=True)
    shutil.rmtree(root / "format2", ignore_errors=True)
    try:
        started = time.perf_counter()
        write_year(root, names, days, args.seed)
        write_runs(root, days)
        written = time.perf_counter() - started
        layouts = ("format1", "format2")
        sizes = {layout: census(root / layout) for layout in layouts}

        last = days[-1]
        month_start = max(first, last.replace(day=1))
        queries = [
            Query(f"one namespace's month ({month_start:%Y-%m})", names[len(names) // 2],
                  month_start, last + timedelta(days=1)),
            Query("every namespace's week", None, last - timedelta(days=6),
                  last + timedelta(days=1)),
        ]  # fmt: skip
        loads: dict[tuple[str, str, str], float] = {}
        for q in queries:
            for reader, load in READERS.items():
                counts = set()
                for layout in layouts:
                    seconds, n = best_of(args.repeat, partial(load, root / layout, q))
                    loads[(q.label, reader, layout)] = seconds
                    counts.add(n)
                assert len(counts) == 1 and counts != {0}, (q, reader, counts)

        end = datetime(last.year, last.month, last.day, 23, 45, tzinfo=UTC)
        writes: dict[tuple[str, str], list[tuple[float, int, int]]] = {}
        # each scheduled run again at 23:45 (its provisional rows changed), each flush five
        # minutes after the one before (the next window made final)
        for label, span, step in (
            ("steady-state scheduled run (15 minutes of rows)", timedelta(minutes=15),
             timedelta(0)),
            ("following run's flush (a 5-minute window made final)", timedelta(minutes=5),
             timedelta(minutes=5)),
        ):  # fmt: skip
            for layout in layouts:
                storage = Storage(str(root / layout))
                writes[(label, layout)] = [
                    write_run(storage, layout, run_rows(names, last, end + step * r, r, span), last)
                    for r in range(1, args.repeat + 1)
                ]
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(root, ignore_errors=True)

    report = render(args, names, days, sizes, loads, writes, written, queries)
    print(report)
    Path(args.report).write_text(report)
    print(f"bench-year: written to {args.report}", file=sys.stderr)
    return 0


def render(
    args: argparse.Namespace,
    names: list[str],
    days: list[date],
    sizes: dict[str, tuple[int, int, int, int]],
    loads: dict[tuple[str, str, str], float],
    writes: dict[tuple[str, str], list[tuple[float, int, int]]],
    written: float,
    queries: list[Query],
) -> str:
    f1, f2 = sizes["format1"], sizes["format2"]
    lines = [
        "# A year of output: format 1 against format 2",
        "",
        f"Measured by `make bench-year` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: "
        f"{len(names)} namespaces, {len(days)} days from {days[0]}, every namespace with a row "
        "in every window of the 5-minute, hourly and daily rates and outcomes; a run every "
        f"15 minutes. Writing both outputs took {written:,.0f} s.",
        "",
        f"Machine: {platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB.",
        "",
        "## Files",
        "",
        "| | format 1 (a file per namespace and date) | format 2 (a file per date; per month "
        "for day roll-ups) | format 1 ÷ format 2 |",
        "|---|---:|---:|---:|",
        f"| windowed datasets: files | {f1[0]:,} | {f2[0]:,} | {f1[0] / max(f2[0], 1):,.0f} |",
        f"| windowed datasets: MiB | {_mib(f1[1])} | {_mib(f2[1])} | "
        f"{f1[1] / max(f2[1], 1):,.2f} |",
        f"| `_runs/`: files (format 2: `--retain 30d`) | {f1[2]:,} | {f2[2]:,} | "
        f"{f1[2] / max(f2[2], 1):,.0f} |",
        f"| `_runs/`: MiB | {_mib(f1[3])} | {_mib(f2[3])} | {f1[3] / max(f2[3], 1):,.2f} |",
        "",
        f"Files overall: **{(f1[0] + f1[2]) / max(f2[0] + f2[2], 1):,.0f} times fewer** "
        "(target: at least 50 times).",
        "",
        f"## Loads (seconds, best of {args.repeat}, files warm in the page cache)",
        "",
        "`party_rates` (5-minute windows): pandas `read_parquet(dir, filters=…)`, DuckDB "
        "`read_parquet(glob, hive_partitioning = true) WHERE …`, Polars "
        "`scan_parquet(glob, hive_partitioning=True).filter(…)`.",
        "",
        "| load | reader | format 1 | format 2 | format 2 ÷ format 1 |",
        "|---|---|---:|---:|---:|",
    ]
    slower = []
    for q in queries:
        for reader in READERS:
            a, b = loads[(q.label, reader, "format1")], loads[(q.label, reader, "format2")]
            lines.append(f"| {q.label} | {reader} | {_s(a)} | {_s(b)} | {b / a:.2f} |")
            if b > a:
                slower.append(f"{q.label} with {reader}")
    lines += [
        "",
        "Target: no load slower than format 1: "
        + ("**met**." if not slower else "**not met** for " + ", ".join(slower) + "."),
        "",
        f"## Writes (seconds, the sinks of one worker; median of {args.repeat}, min-max)",
        "",
        "The rows of the year's last day, at 23:45: a scheduled run merges 15 minutes of "
        "rows into every dataset (final 5-minute rates and outcomes, every open window "
        "provisional: the day's files, and the month's for day roll-ups, at their fullest); "
        "a following run's flush merges one 5-minute window's final rows (23:50, 23:55, …).",
        "",
        "| write | format 1: seconds | files, MiB written | format 2: seconds "
        "| files, MiB written |",
        "|---|---:|---:|---:|---:|",
    ]
    for label in dict.fromkeys(k[0] for k in writes):
        cells = []
        for layout in ("format1", "format2"):
            t = [w[0] for w in writes[(label, layout)]]
            _seconds, files, nbytes = writes[(label, layout)][-1]
            cells.append(f"{_s(statistics.median(t))} ({_s(min(t))}-{_s(max(t))})")
            cells.append(f"{files:,}, {_mib(nbytes)}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    steady = statistics.median(
        w[0] for w in writes[("steady-state scheduled run (15 minutes of rows)", "format2")]
    )
    lines += [
        "",
        f"Target: the steady-state scheduled run's writes within 1 s: "
        f"**{'met' if steady <= 1.0 else 'not met'}** ({_s(steady)} s).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
