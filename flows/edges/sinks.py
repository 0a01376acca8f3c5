"""Parquet sinks that make Bytewax's at-least-once delivery effectively exactly-once.

**Idempotent by key.** Every row has a primary key (``namespace, window_start`` for rates,
``partition, offset`` for late events and dead letters) and a deterministic file: one file
per UTC date (or month, for day roll-ups) of a windowed dataset, whatever its namespaces
(schemas/output.py, format 2), and one file per Kafka partition and offset block for the
logs. Writing merges the buffered rows into the file's current rows by key, with Arrow
compute over the whole file (no per-row Python), and replaces the file atomically. Rows
are a deterministic function of the input, so replaying what came after the last snapshot
(after a crash) rewrites the same rows to the same place: no row is ever duplicated and no
file is half-written.

**Buffered in the snapshot.** Rows wait in the sink partition's state, which is part of
Bytewax's snapshot, and are written when the run ends (or every flush interval when
following, or when the buffer is large). A scheduled run over a backlog therefore writes
each file about once; a scheduled run that keeps up rewrites the current day's file of
each dataset (and the current month's of the day roll-ups).
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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from flows.core.eventtime import EPOCH
from flows.core.items import DaySeen, FlushTick, Row
from flows.core.paths import parse_old_window_relpath, window_relpath
from flows.core.rows import dataset_names
from flows.edges.metrics import METRICS
from flows.edges.storage import Storage, end_of_run_failure
from flows.edges.table import Covered
from schemas.output import (
    DEAD_LETTERS_SCHEMA,
    LATE_EVENTS_SCHEMA,
    OUTCOMES_FILE_SCHEMA,
    RATES_FILE_SCHEMA,
    ROW_GROUP_ROWS,
    monthly,
    window_file_schema,
)

ONE_US = timedelta(microseconds=1)
LOG_BLOCK = 10_000_000
"""Late events and dead letters go to one file per Kafka partition and block of offsets."""

MAX_BUFFERED_ROWS = 200_000
FLUSH_KEY = "\x00flush-"

FileRow = tuple[Any, ...]
"""A row as its file stores it: the values of the file schema's columns, in order (a daily
file's date is in its path). Compact to buffer and to snapshot."""

Buffer = dict[str, dict[Any, FileRow]]


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset is laid out and merged."""

    name: str
    file_schema: pa.Schema
    relpath: Callable[[Row], str]
    key_columns: tuple[str, ...]  # one row per key in a file; the file's row order
    final_column: str | None = None  # a final row is never replaced; without it the first
    # write of a key wins
    replace_final: bool = False  # a deliberate recompute: final rows may be replaced
    window_us: int | None = None  # a windowed dataset's window length
    group_column: str | None = None  # a row group holds whole runs of this column

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

    @cached_property
    def _start(self) -> int:
        return self._names.index("window_start")

    @cached_property
    def sorting(self) -> list[tuple[str, str]]:
        return [(c, "ascending") for c in self.key_columns]

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
        """The UTC day of a final row of a per-window dataset, else None."""
        final = self._final
        if final is None or not row[final]:
            return None
        start: datetime = row[self._start]
        return start.date()

    def upgraded(self, relpath: str, rows: Iterable[FileRow]) -> tuple[str, list[FileRow]]:
        """Rows buffered by a version that wrote format 1 (a state's snapshot from before
        the output was migrated), as this layout stores them: ``(relpath, rows)`` unchanged
        unless ``relpath`` is a format-1 file of this dataset."""
        old = parse_old_window_relpath(relpath) if self.window_us is not None else None
        if old is None or old[0] != self.name:
            return relpath, list(rows)
        assert self.window_us is not None
        _dataset, namespace, day = old
        keys: tuple[Any, ...] = (namespace, day) if monthly(self.window_us) else (namespace,)
        return window_relpath(self.name, self.window_us, day), [(*keys, *r) for r in rows]

    def write_parquet(self, table: pa.Table, where: Any) -> None:
        """Write a file's rows (in key order): statistics on every column; with a group
        column, row groups of about ROW_GROUP_ROWS rows that each hold whole runs of it,
        so a reader filtering on one namespace reads one row group of each file."""
        sorting = pq.SortingColumn.from_ordering(table.schema, self.sorting)
        groups = (
            row_groups(table.column(self.group_column), ROW_GROUP_ROWS)
            if self.group_column is not None
            else [(0, table.num_rows)]
        )
        with pq.ParquetWriter(where, table.schema, sorting_columns=sorting) as writer:
            for offset, length in groups:
                writer.write_table(table.slice(offset, length), row_group_size=max(length, 1))


def row_groups(column: pa.ChunkedArray, target: int) -> list[tuple[int, int]]:
    """(offset, length) of row groups over a sorted column: each at least ``target`` rows
    (but the last) and ending where the column's value changes."""
    import pyarrow.compute as pc  # on first use: its import costs every start

    n = len(column)
    if n <= target:
        return [(0, n)]
    values = column.combine_chunks()
    changes = pc.not_equal(values.slice(1), values.slice(0, n - 1))
    run_starts = np.flatnonzero(changes.to_numpy(zero_copy_only=False)) + 1
    groups = []
    begin = 0
    for at in run_starts.tolist():
        if at - begin >= target:
            groups.append((begin, at - begin))
            begin = at
    groups.append((begin, n - begin))
    return groups


def window_dataset(
    name: str, measures: pa.Schema, window_us: int, replace_final: bool = False
) -> DatasetSpec:
    """A per-(namespace, window) dataset: one file per UTC date of the window starts (per
    month for windows of a day or longer), a final row never replaced (but by a
    recompute), days settled once final."""

    def relpath(row: Row) -> str:
        return window_relpath(name, window_us, row["date"])

    return DatasetSpec(
        name,
        window_file_schema(measures, window_us),
        relpath,
        ("namespace", "window_start"),
        "is_final",
        replace_final,
        window_us,
        "namespace",
    )


def log_dataset(name: str, file_schema: pa.Schema) -> DatasetSpec:
    """A per-message log: one file per Kafka partition and offset block, first write wins."""

    def relpath(row: Row) -> str:
        block = row["offset"] // LOG_BLOCK
        return f"{name}/p{row['partition']:05d}-b{block:06d}.parquet"

    return DatasetSpec(name, file_schema, relpath, ("partition", "offset"))


def window_datasets(
    window_us: int, rollups: tuple[int, ...], replace_final: bool = False
) -> list[tuple[DatasetSpec, int]]:
    """Every per-window dataset with its number of sink partitions: ``party_rates`` and
    ``disconnect_outcomes``, and their roll-ups (fewer rows: fewer partitions)."""
    out = []
    for length, (rates, outcomes) in dataset_names(window_us, rollups).items():
        n = 8 if length == window_us else 2
        out += [
            (window_dataset(rates, RATES_FILE_SCHEMA, length, replace_final), n),
            (window_dataset(outcomes, OUTCOMES_FILE_SCHEMA, length, replace_final), n),
        ]
    return out


LATE_EVENTS = log_dataset("late_events", LATE_EVENTS_SCHEMA)
DEAD_LETTERS = log_dataset("dead_letters", DEAD_LETTERS_SCHEMA)


Routed = tuple[str, list[FileRow]]
"""(file path, the rows for it as the file stores them)."""


def route(
    spec: DatasetSpec, covered: Covered | None = None, parts: int = 0
) -> Callable[[list[Row]], list[tuple[str, Routed | DaySeen]]]:
    """Key rows by their file, so one sink partition owns each file: one item per file, not
    per row (fewer items to hand over, and to pickle between processes). With ``covered``
    (a windowed dataset), rows of windows the output's record says are final or incomplete
    are left out (flows.edges.table).

    With ``parts`` (the sink's partitions), the first final row of a later day than any
    before is also announced to every partition (``DaySeen``): a file per date sits on one
    partition, which would otherwise learn of the next day only from its own files and keep
    its day's rows buffered to the end of the run."""
    writable = covered.writable if covered is not None else None
    announce = parts > 0 and spec.final_column is not None
    newest: list[date] = []  # the latest day announced (shared by this process's workers)

    def by_file(rows: list[Row]) -> list[tuple[str, Routed | DaySeen]]:
        files: dict[str, list[FileRow]] = {}
        latest: date | None = None  # of this batch's final rows
        for row in rows:
            if writable is not None:
                why = writable(spec.name, (row["window_start"] - EPOCH) // ONE_US)
                if why is not None:
                    if why != "final":
                        METRICS.withheld(spec.name)
                    continue
            file_row = spec.file_row(row)
            files.setdefault(spec.relpath(row), []).append(file_row)
            if announce and (day := spec.day(file_row)) is not None:
                latest = day if latest is None else max(latest, day)
        out: list[tuple[str, Routed | DaySeen]] = [
            (relpath, (relpath, group)) for relpath, group in files.items()
        ]
        if latest is not None and (not newest or latest > newest[0]):
            newest[:] = [latest]
            out += [(f"{FLUSH_KEY}{i}", DaySeen(latest)) for i in range(parts)]
        return out

    return by_file


def merge_into(rows: dict[Any, FileRow], new: FileRow, spec: DatasetSpec) -> bool:
    """Merge one row by key; True if that changed ``rows``."""
    key = spec.file_key(new)
    old = rows.get(key)
    if old is None or (old != new and spec.prefer_new(old, new)):
        rows[key] = new
        return True
    return False


class ParquetSink(FixedPartitionedSink[Routed | FlushTick | DaySeen, Buffer]):
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


class ParquetPart(StatefulSinkPartition[Routed | FlushTick | DaySeen, Buffer]):
    def __init__(self, sink: ParquetSink, buffer: Buffer) -> None:
        self.sink = sink
        # Rows a version that wrote format 1 buffered are left out: the migration of the
        # output wrote them (flows.edges.layout), and another partition may own their file.
        self.buffer: Buffer = {
            path: dict(rows)
            for path, rows in buffer.items()
            if parse_old_window_relpath(path) is None
        }
        self.buffered = sum(len(r) for r in self.buffer.values())
        self.last_flush = time.monotonic()
        self.newest_day: date | None = None  # of the final rows seen
        # Restored rows were written after the last snapshot of the previous run, or not
        # at all if it was killed. They stay in the buffer, merged by key with this run's
        # rows like any others, and are written with them (a file already up to date is
        # left alone): each file is read and written once a run, not once more at start.

    def write_batch(self, values: list[Routed | FlushTick | DaySeen]) -> None:
        spec = self.sink.spec
        for item in values:
            if isinstance(item, FlushTick):
                continue
            if isinstance(item, DaySeen):
                self.saw_day(item.day)
                continue
            relpath, group = item
            rows = self.buffer.setdefault(relpath, {})
            for row in group:
                before = len(rows)
                merge_into(rows, row, spec)
                self.buffered += len(rows) - before
                day = spec.day(row)
                if day is not None:
                    self.saw_day(day)
        due = self.sink.flush_seconds is not None and (
            time.monotonic() - self.last_flush >= self.sink.flush_seconds
        )
        if self.buffered >= MAX_BUFFERED_ROWS or (due and self.buffered):
            self.flush()

    def saw_day(self, day: date) -> None:
        """A final row of ``day`` was seen (here, or by the router of another partition's
        rows): write the days it settles."""
        if self.newest_day is None or day > self.newest_day:
            self.newest_day = day
            self.flush_settled_days()

    def flush_settled_days(self) -> None:
        """Write the files of days before the newest final row's day, if all final.

        Over a long backlog this keeps the buffer to about a day of rows. Such a file is
        written once unless one of its windows closes after the next day's first one did
        (then it is written again, with the same rows plus that one); a month's file of day
        roll-ups is written again as each of its days settles.
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
    atomically, in one write (see ``Storage.write_tables``)."""
    changed = []
    for relpath, rows in files:
        table = merged_table(storage, relpath, rows, spec)
        if table is not None:
            changed.append((relpath, table))
    if not changed:
        return
    storage.write_tables(changed, spec.write_parquet)
    for _relpath, table in changed:
        METRICS.wrote(spec.name, table.num_rows)


def merged_table(
    storage: Storage, relpath: str, new_rows: Iterable[FileRow], spec: DatasetSpec
) -> pa.Table | None:
    """The file's rows merged with ``new_rows`` (one per key) by key, in key order, or
    None if that changes nothing."""
    rows = list(new_rows)
    if not rows:
        return None
    new = rows_table(rows, spec.file_schema)
    existing = storage.read_table(relpath, spec.file_schema)
    if existing is None:
        return new.sort_by(spec.sorting)
    return merge_tables(existing, new, spec)


def merge_tables(existing: pa.Table, new: pa.Table, spec: DatasetSpec) -> pa.Table | None:
    """``existing`` with the rows of ``new`` (one per key) merged in by key, in key order;
    None if nothing changes.

    A new row takes the place of the existing row of its key when there is none, or when
    ``spec.prefer_new`` would: never a final row (but by a final one, recomputing); a log's
    first write wins. All of it in Arrow compute over whole columns: a day's file holds
    every namespace's windows of the day, and a scheduled run merges a few of them into it.
    """
    import pyarrow.compute as pc  # on first use: its import costs every start

    old_keys = _keys(existing, spec.key_columns)
    new_keys = _keys(new, spec.key_columns)
    where = pc.index_in(new_keys, value_set=old_keys)  # the existing row of each key, or null
    found = pc.is_valid(where)
    same = _rows_equal(new, existing.take(where))  # false where there is no existing row
    if spec.final_column is None:
        accept = pc.invert(found)
    else:
        old_final = pc.fill_null(existing.column(spec.final_column).take(where), False)
        new_final = new.column(spec.final_column)
        accept = pc.invert(old_final)  # no existing row, or a provisional one
        if spec.replace_final:
            accept = pc.or_(accept, new_final)
        else:  # a different final row: the output's stays
            kept = pc.and_(pc.and_(old_final, new_final), pc.invert(same))
            for _ in range(pc.sum(kept).as_py() or 0):
                METRICS.kept_final(spec.name)
    changed = pc.and_(accept, pc.invert(same))
    if not pc.any(changed).as_py():
        return None
    replaced = pc.is_in(old_keys, value_set=pc.filter(new_keys, accept))
    kept_rows = existing.filter(pc.invert(replaced))
    merged = pa.concat_tables([kept_rows, new.filter(accept)])
    return merged.sort_by(spec.sorting)


def _keys(table: pa.Table, columns: tuple[str, ...]) -> pa.Array:
    """One value per row that tells keys apart: the key column itself, or the key columns'
    values joined by a NUL (the last column is a number, which holds none, so the joined
    values of different keys differ)."""
    import pyarrow.compute as pc

    parts = []
    for name in columns:
        column = table.column(name).combine_chunks()
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        parts.append(column)
    if len(parts) == 1:
        return parts[0]
    return pc.binary_join_element_wise(*(p.cast(pa.string()) for p in parts), "\x00")


def _rows_equal(a: pa.Table, b: pa.Table) -> pa.Array:
    """Per row, whether every column of ``a`` equals ``b``'s (two nulls are equal)."""
    import pyarrow.compute as pc

    same = None
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        equal = pc.fill_null(pc.equal(x, y), False)
        both_null = pc.and_(pc.is_null(x), pc.is_null(y))
        column_same = pc.or_(equal, both_null)
        same = column_same if same is None else pc.and_(same, column_same)
    assert same is not None
    return same


def rows_table(rows: list[FileRow], schema: pa.Schema) -> pa.Table:
    """Rows as the file stores them, as an Arrow table of its schema."""
    columns = zip(*rows, strict=True)
    arrays = [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)]
    return pa.Table.from_arrays(arrays, schema=schema)
