"""The output's layout: an output of format 1 moved to format 2 (schemas/output.py), once,
crash-safe, at the first start of a version that writes format 2 (``recovery.prepare``,
under the state's lock, before anything is read or written).

1. Every format-2 file is written whole, each atomically: the rows of the format-1 files of
   its date (or month) and dataset, and the rows the state's last durable snapshot still
   buffers for them (a run of the previous version killed before it wrote them). A format-2
   file left by an earlier attempt is written again from scratch.
2. The output's record is switched to format 2: the one atomic step that makes the new
   layout the output's. Readers and runs read only the files of the layout the record
   names; an output without a record is in format 1, and one without a record that needs
   migrating gets a record that claims no rows (``TableRecord.claims``), only its format.
3. The format-1 directories are deleted.

A crash before step 2 leaves a format-1 output with some format-2 files beside it, which
nothing reads: the next start migrates again, from scratch. A crash after it leaves a
format-2 output with format-1 directories beside it: every start of a format-2 output
deletes such leftovers.

The sinks of this version drop the rows a restored snapshot buffers for format-1 files
(flows.edges.sinks): step 1 wrote them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import date
from typing import Any

import pyarrow as pa

from flows.core.eventtime import parse_duration_us
from flows.core.items import FLOW_ID
from flows.core.paths import OLD_NAMESPACE, parse_old_window_relpath
from flows.edges.sinks import (
    DatasetSpec,
    FileRow,
    merge_into,
    merge_tables,
    rows_table,
    window_dataset,
)
from flows.edges.statedir import StateDir
from flows.edges.storage import Storage
from flows.edges.table import OLD_FORMAT, RECORD, TableError, TableRecord
from schemas.output import OUTCOMES_FILE_SCHEMA, OUTPUT_FORMAT, RATES_FILE_SCHEMA

WINDOWED = re.compile(r"(party_rates|disconnect_outcomes)(?:_([0-9]+[a-z]+))?")
BATCH = 64
"""Format-2 files written (and synced) together."""


def windowed_datasets(storage: Storage) -> list[str]:
    """The windowed datasets the output holds: its directories named like one."""
    return [name for name, is_dir in storage.list_dir("") if is_dir and WINDOWED.fullmatch(name)]


def dataset_spec(name: str, window_us: int) -> DatasetSpec:
    """A windowed dataset as this version writes it, from its name: ``party_rates`` has the
    output's window, ``party_rates_<length>`` the length its name says."""
    match = WINDOWED.fullmatch(name)
    assert match is not None, name
    measures = RATES_FILE_SCHEMA if match.group(1) == "party_rates" else OUTCOMES_FILE_SCHEMA
    length = window_us
    if match.group(2):
        try:
            length = parse_duration_us(match.group(2))
        except ValueError:
            raise TableError(
                f"{name}: not a roll-up length this version reads; move the directory away"
            ) from None
    return window_dataset(name, measures, length)


def old_directories(storage: Storage, dataset: str) -> list[str]:
    """The format-1 ``namespace=`` directories of a dataset."""
    return [
        f"{dataset}/{entry}"
        for entry, is_dir in storage.list_dir(dataset)
        if is_dir and entry.startswith(OLD_NAMESPACE)
    ]


def remove_old(storage: Storage, datasets: Iterable[str]) -> int:
    """Delete the format-1 directories of these datasets; returns how many."""
    removed = 0
    for dataset in datasets:
        for directory in old_directories(storage, dataset):
            storage.delete_dir(directory)
            removed += 1
    return removed


def require_current(storage: Storage, record: TableRecord | None) -> None:
    """Refuse an output that still has to be migrated (TableError): a flow started without
    ``party-rates run`` (``bytewax.run``) does not migrate it."""
    if record is not None and record.format >= OUTPUT_FORMAT:
        return
    if any(old_directories(storage, name) for name in windowed_datasets(storage)):
        raise TableError(
            f"the output {storage.uri} is in format {OLD_FORMAT}: run `party-rates run` on it "
            f"once to move it to format {OUTPUT_FORMAT}"
        )


def buffered_rows(
    state: StateDir, specs: dict[str, DatasetSpec]
) -> dict[str, dict[str, dict[Any, FileRow]]]:
    """Per dataset and format-2 file, the rows the state's last durable snapshot buffers for
    format-1 files (its sinks' state), as format 2 stores them."""
    out: dict[str, dict[str, dict[Any, FileRow]]] = {}
    for name, spec in specs.items():
        saved, _settled = state.durable(f"{FLOW_ID}.{name}")
        for buffer in saved.values():
            for relpath, rows in buffer.items():
                if parse_old_window_relpath(relpath) is None:
                    continue
                target, upgraded = spec.upgraded(relpath, rows.values())
                into = out.setdefault(name, {}).setdefault(target, {})
                for row in upgraded:
                    merge_into(into, row, spec)
    return out


def migrate(
    storage: Storage,
    state: StateDir,
    record: TableRecord | None,
    window_us: int,
    datasets: Iterable[str],
    fresh_record: Callable[[], TableRecord],
) -> TableRecord | None:
    """Make the output's layout this version's; returns the record it then has.

    ``window_us``: the output's window (``party_rates``); ``datasets``: the windowed
    datasets this run writes (besides those on disk: a state may buffer rows of one that
    has no file yet); ``fresh_record``: the record of an output that has none (it claims
    no rows).
    """
    on_disk = windowed_datasets(storage)
    if record is not None and record.format >= OUTPUT_FORMAT:
        remove_old(storage, on_disk)  # left by a migration cut after its switch
        return record
    specs = {name: dataset_spec(name, window_us) for name in sorted({*on_disk, *datasets})}
    buffered = buffered_rows(state, specs)
    old: dict[str, dict[str, list[tuple[str, str, date]]]] = {}
    for name in on_disk:
        for relpath in storage.list_files(name):
            parsed = parse_old_window_relpath(relpath)
            if parsed is not None and parsed[0] == name:
                target = specs[name].upgraded(relpath, ())[0]
                old.setdefault(name, {}).setdefault(target, []).append((relpath, *parsed[1:]))
    if record is None and not old and not buffered:
        return None  # nothing of format 1: the first record this version writes says 2
    for name, spec in specs.items():
        sources = old.get(name, {})
        rows = buffered.get(name, {})
        targets = sorted({*sources, *rows})
        for i in range(0, len(targets), BATCH):
            tables = [
                (t, _migrated(storage, spec, sources.get(t, []), rows.get(t, {}).values()))
                for t in targets[i : i + BATCH]
            ]
            storage.write_tables(tables, spec.write_parquet)
    switched = (
        fresh_record() if record is None else replace(record, format=OUTPUT_FORMAT)
    )  # fmt: skip
    assert switched.format == OUTPUT_FORMAT > OLD_FORMAT
    storage.write_bytes(RECORD, switched.to_json())
    remove_old(storage, on_disk)
    return switched


def _migrated(
    storage: Storage,
    spec: DatasetSpec,
    sources: list[tuple[str, str, date]],
    buffered: Iterable[FileRow],
) -> pa.Table:
    """A format-2 file's rows: its format-1 files' (namespace and date from their paths),
    then the buffered rows merged in as a run merges its rows."""
    measures = pa.schema([f for f in spec.file_schema if f.name not in ("namespace", "date")])
    monthly = "date" in spec.file_schema.names
    parts = []
    for relpath, namespace, day in sources:
        table = storage.read_table(relpath, measures)
        if table is None:
            continue
        n = table.num_rows
        keys = [pa.array([namespace] * n, pa.string())]
        if monthly:
            keys.append(pa.array([day] * n, pa.date32()))
        parts.append(pa.Table.from_arrays(keys + table.columns, schema=spec.file_schema))
    table = pa.concat_tables(parts) if parts else spec.file_schema.empty_table()
    rows = list(buffered)
    if rows:
        merged = merge_tables(table, rows_table(rows, spec.file_schema), spec)
        if merged is not None:
            table = merged
    return table.sort_by(spec.sorting)
