"""Parquet sinks that make Bytewax's at-least-once delivery effectively exactly-once.

**Idempotent by key.** Every row has a primary key (``namespace, window_start`` for rates,
``partition, offset`` for late events and dead letters) and a deterministic file: one file
per ``namespace=/date=`` partition, one file per Kafka partition and offset block for the
logs. Writing merges the buffered rows into the file's current rows by key and replaces the
file atomically. Rows are a deterministic function of the input, so replaying what came
after the last snapshot (after a crash) rewrites the same rows to the same place: no row
is ever duplicated and no file is half-written.

**Buffered in the snapshot.** Rows wait in the sink partition's state, which is part of
Bytewax's snapshot, and are written when the run ends (or every flush interval when
following, or when the buffer is large). A scheduled run over a backlog therefore writes
each file once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cached_property
from operator import itemgetter
from typing import Any
from zlib import adler32

import pyarrow as pa
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from flows.core.eventtime import EPOCH
from flows.core.items import FlushTick, Row
from flows.core.rows import dataset_names
from flows.edges.metrics import METRICS
from flows.edges.storage import Storage, end_of_run_failure, hive_segment
from flows.edges.table import Covered
from schemas.output import (
    DEAD_LETTERS_SCHEMA,
    LATE_EVENTS_SCHEMA,
    OUTCOMES_FILE_SCHEMA,
    RATES_FILE_SCHEMA,
)

ONE_US = timedelta(microseconds=1)
LOG_BLOCK = 10_000_000
"""Late events and dead letters go to one file per Kafka partition and block of offsets."""

MAX_BUFFERED_ROWS = 200_000
FLUSH_KEY = "\x00flush-"

FileRow = tuple[Any, ...]
"""A row as its file stores it: the values of the file schema's columns, in order (the
partition columns are in the path). Compact to buffer and to snapshot."""

Buffer = dict[str, dict[Any, FileRow]]


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset is laid out and merged."""

    name: str
    file_schema: pa.Schema
    relpath: Callable[[Row], str]
    key_columns: tuple[str, ...]  # one row per key in a file
    final_column: str | None = None  # a final row is never replaced; without it the first
    # write of a key wins
    replace_final: bool = False  # a deliberate recompute: final rows may be replaced

    @cached_property
    def _names(self) -> list[str]:
        return list(self.file_schema.names)

    @cached_property
    def _file_row(self) -> Callable[[Row], FileRow]:
        return itemgetter(*self._names)

    @cached_property
    def _key(self) -> Callable[[FileRow], Any]:
        return itemgetter(*(self._names.index(c) for c in self.key_columns))

    @cached_property
    def _final(self) -> int | None:
        return self._names.index(self.final_column) if self.final_column else None

    def file_row(self, row: Row) -> FileRow:
        """The row as the file stores it."""
        return self._file_row(row)

    def file_key(self, row: FileRow) -> Any:
        return self._key(row)

    def prefer_new(self, old: FileRow, new: FileRow) -> bool:
        """Replace ``old`` (same key) with ``new``? Never a final row (unless recomputing,
        and then only by a final one): the output is the truth."""
        final = self._final
        if final is None:
            return False
        if old[final]:
            return self.replace_final and bool(new[final])
        return True

    def day(self, row: FileRow) -> date | None:
        """The UTC day of a final row of a per-window dataset (its file's day), else None."""
        final = self._final
        if final is None or not row[final]:
            return None
        start: datetime = self._key(row)
        return start.date()


def window_dataset(name: str, file_schema: pa.Schema, replace_final: bool = False) -> DatasetSpec:
    """A per-(namespace, window) dataset: one file per ``namespace=/date=`` directory, a
    final row never replaced (but by a recompute), days settled once final."""

    def relpath(row: Row) -> str:
        day: date = row["date"]
        segment = hive_segment("namespace", row["namespace"])
        return f"{name}/{segment}/date={day.isoformat()}/part-0.parquet"

    return DatasetSpec(name, file_schema, relpath, ("window_start",), "is_final", replace_final)


def log_dataset(name: str, file_schema: pa.Schema) -> DatasetSpec:
    """A per-message log: one file per Kafka partition and offset block, first write wins."""

    def relpath(row: Row) -> str:
        block = row["offset"] // LOG_BLOCK
        return f"{name}/p{row['partition']:05d}-b{block:06d}.parquet"

    return DatasetSpec(name, file_schema, relpath, ("partition", "offset"))


RATES = window_dataset("party_rates", RATES_FILE_SCHEMA)
OUTCOMES = window_dataset("disconnect_outcomes", OUTCOMES_FILE_SCHEMA)


def window_datasets(
    window_us: int, rollups: tuple[int, ...], replace_final: bool = False
) -> list[tuple[DatasetSpec, int]]:
    """Every per-window dataset with its number of sink partitions: ``party_rates`` and
    ``disconnect_outcomes``, and their roll-ups (fewer rows: fewer partitions)."""
    out = []
    for length, (rates, outcomes) in dataset_names(window_us, rollups).items():
        n = 8 if length == window_us else 2
        out += [
            (window_dataset(rates, RATES_FILE_SCHEMA, replace_final), n),
            (window_dataset(outcomes, OUTCOMES_FILE_SCHEMA, replace_final), n),
        ]
    return out


LATE_EVENTS = log_dataset("late_events", LATE_EVENTS_SCHEMA)
DEAD_LETTERS = log_dataset("dead_letters", DEAD_LETTERS_SCHEMA)


Routed = tuple[str, list[FileRow]]
"""(file path, the rows for it as the file stores them)."""


def route(
    spec: DatasetSpec, covered: Covered | None = None
) -> Callable[[list[Row]], list[tuple[str, Routed]]]:
    """Key rows by their file, so one sink partition owns each file: one item per file, not
    per row (fewer items to hand over, and to pickle between processes). With ``covered``
    (a windowed dataset), rows of windows the output's record says are final or incomplete
    are left out (flows.edges.table)."""
    writable = covered.writable if covered is not None else None

    def by_file(rows: list[Row]) -> list[tuple[str, Routed]]:
        files: dict[str, list[FileRow]] = {}
        for row in rows:
            if writable is not None:
                why = writable(spec.name, (row["window_start"] - EPOCH) // ONE_US)
                if why is not None:
                    if why != "final":
                        METRICS.withheld(spec.name)
                    continue
            relpath = spec.relpath(row)
            group = files.get(relpath)
            if group is None:
                files[relpath] = [spec.file_row(row)]
            else:
                group.append(spec.file_row(row))
        return [(relpath, (relpath, group)) for relpath, group in files.items()]

    return by_file


def merge_into(rows: dict[Any, FileRow], new: FileRow, spec: DatasetSpec) -> bool:
    """Merge one row by key; True if that changed ``rows``."""
    key = spec.file_key(new)
    old = rows.get(key)
    if old is None or (old != new and spec.prefer_new(old, new)):
        rows[key] = new
        return True
    return False


class ParquetSink(FixedPartitionedSink[Routed | FlushTick, Buffer]):
    """Idempotent, atomic Parquet writer of one dataset (see the module docstring)."""

    def __init__(
        self, storage: Storage, spec: DatasetSpec, *, flush_seconds: float | None, parts: int = 8
    ) -> None:
        self.storage = storage
        self.spec = spec
        self.flush_seconds = flush_seconds
        self.parts = parts

    def list_parts(self) -> list[str]:
        return [f"{self.spec.name}-{i}" for i in range(self.parts)]

    def part_fn(self, item_key: str) -> int:
        if item_key.startswith(FLUSH_KEY):
            return int(item_key[len(FLUSH_KEY) :])
        return adler32(item_key.encode())

    def flush_ticks(self) -> list[tuple[str, FlushTick]]:
        """One tick for each of this sink's partitions."""
        return [(f"{FLUSH_KEY}{i}", FlushTick()) for i in range(self.parts)]

    def build_part(self, step_id: str, for_part: str, resume_state: Buffer | None) -> ParquetPart:
        return ParquetPart(self, resume_state or {})


class ParquetPart(StatefulSinkPartition[Routed | FlushTick, Buffer]):
    def __init__(self, sink: ParquetSink, buffer: Buffer) -> None:
        self.sink = sink
        self.buffer: Buffer = {path: dict(rows) for path, rows in buffer.items()}
        self.buffered = sum(len(r) for r in self.buffer.values())
        self.last_flush = time.monotonic()
        self.newest_day: date | None = None  # of the final rows seen
        # Restored rows were written after the last snapshot of the previous run, or not
        # at all if it was killed. They stay in the buffer, merged by key with this run's
        # rows like any others, and are written with them (a file already up to date is
        # left alone): each file is read and written once a run, not once more at start.

    def write_batch(self, values: list[Routed | FlushTick]) -> None:
        spec = self.sink.spec
        for item in values:
            if isinstance(item, FlushTick):
                continue
            relpath, group = item
            rows = self.buffer.setdefault(relpath, {})
            for row in group:
                before = len(rows)
                merge_into(rows, row, spec)
                self.buffered += len(rows) - before
                day = spec.day(row)
                if day is not None and (self.newest_day is None or day > self.newest_day):
                    self.newest_day = day
                    self.flush_settled_days()
        due = self.sink.flush_seconds is not None and (
            time.monotonic() - self.last_flush >= self.sink.flush_seconds
        )
        if self.buffered >= MAX_BUFFERED_ROWS or (due and self.buffered):
            self.flush()

    def flush_settled_days(self) -> None:
        """Write the files of days before the newest final row's day, if all final.

        Over a long backlog this keeps the buffer to about a day of rows. Such a file is
        written once unless one of its namespace's windows closes after the next day's first
        one did (then it is written again, with the same rows plus that one).
        """
        assert self.newest_day is not None
        spec = self.sink.spec
        settled = self.newest_day - timedelta(days=1)
        done = []
        for relpath, rows in self.buffer.items():
            days = [spec.day(row) for row in rows.values()]
            if all(d is not None and d <= settled for d in days):
                done.append(relpath)
        write_files(self.sink.storage, [(r, self.buffer[r].values()) for r in done], spec)
        for relpath in done:
            self.buffered -= len(self.buffer.pop(relpath))

    def flush(self) -> None:
        spec = self.sink.spec
        write_files(
            self.sink.storage, [(r, rows.values()) for r, rows in sorted(self.buffer.items())], spec
        )
        self.buffer = {}
        self.buffered = 0
        self.last_flush = time.monotonic()

    def snapshot(self) -> Buffer:
        return {path: dict(rows) for path, rows in self.buffer.items()}

    def close(self) -> None:
        try:
            self.flush()
        except Exception as err:  # see end_of_run_failure
            end_of_run_failure(err)


def write_files(
    storage: Storage, files: list[tuple[str, Iterable[FileRow]]], spec: DatasetSpec
) -> None:
    """Merge rows into their files by key and replace the files that change, each
    atomically, in one write (see ``Storage.write_tables``).

    The rows of all the files that change are built into one Arrow table, which each file
    writes a slice of: building arrays costs about the same for one row as for thousands,
    and a flush of roll-ups writes hundreds of files of a row or two.
    """
    changed = []
    for relpath, rows in files:
        ordered = merged_rows(storage, relpath, rows, spec)
        if ordered is not None:
            changed.append((relpath, ordered))
    if not changed:
        return
    table = _table([row for _relpath, rows in changed for row in rows], spec.file_schema)
    tables = []
    offset = 0
    for relpath, rows in changed:
        tables.append((relpath, table.slice(offset, len(rows))))
        offset += len(rows)
    storage.write_tables(tables)
    for _relpath, rows in changed:
        METRICS.wrote(spec.name, len(rows))


def write_merged(
    storage: Storage, relpath: str, new_rows: Iterable[FileRow], spec: DatasetSpec
) -> None:
    """Merge rows into the file at ``relpath`` by key and replace it atomically; a file
    that would not change is left alone."""
    write_files(storage, [(relpath, new_rows)], spec)


def merged_rows(
    storage: Storage, relpath: str, new_rows: Iterable[FileRow], spec: DatasetSpec
) -> list[FileRow] | None:
    """The file's rows merged with ``new_rows`` by key, in key order, or None if that
    changes nothing."""
    merged: dict[Any, FileRow] = {}
    existing = storage.read_table(relpath, spec.file_schema)
    if existing is None:
        for row in new_rows:
            merge_into(merged, row, spec)
    else:
        columns = existing.to_pydict()
        for row in zip(*(columns[name] for name in spec.file_schema.names), strict=True):
            merged[spec.file_key(row)] = row
        changed = False
        final = spec._final
        for row in new_rows:
            if merge_into(merged, row, spec):
                changed = True
            elif final is not None and row[final] and merged[spec.file_key(row)] != row:
                METRICS.kept_final(spec.name)  # a different final row: the output's stays
        if not changed:
            return None
    return [merged[k] for k in sorted(merged, key=_sort_key)]


def _table(rows: list[FileRow], schema: pa.Schema) -> pa.Table:
    columns = zip(*rows, strict=True)
    arrays = [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)]
    return pa.Table.from_arrays(arrays, schema=schema)


def _sort_key(key: Any) -> Any:
    return key.timestamp() if isinstance(key, datetime) else key
