"""Loading the output for analysis: the same schemas and partitioning the job writes with.

The loaders read the datasets with the contract's schemas (``schemas/output.py``), in both
output formats (the record ``_table.json`` says which), locally or from an object store
(``filesystem``). The tables built on the loaded frames are in ``flows.analysis.tables``.
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from schemas.durations import parse_duration_us
from schemas.output import (
    DATE_PARTITIONING,
    DEAD_LETTERS_SCHEMA,
    LATE_EVENTS_SCHEMA,
    OUTCOMES_SCHEMA,
    OUTPUT_FORMAT,
    RATES_PARTITIONING,
    RATES_SCHEMA,
    RUNS_ARCHIVE_SCHEMA,
)

__all__ = [
    "load_dead_letters",
    "load_disconnect_outcomes",
    "load_disconnect_outcomes_table",
    "load_late_events",
    "load_manifests",
    "load_party_rates",
    "load_party_rates_table",
    "rollup_lengths",
]


def _dataset(
    path: str | Path,
    schema: pa.Schema,
    partitioning: Any = None,
    filesystem: pafs.FileSystem | None = None,
) -> pa.Table:
    if filesystem is None:
        if not Path(path).exists():
            return schema.empty_table()
    elif filesystem.get_file_info(str(path)).type == pafs.FileType.NotFound:
        return schema.empty_table()
    return ds.dataset(
        str(path) if filesystem else path,
        schema=schema,
        format="parquet",
        partitioning=partitioning,
        filesystem=filesystem,
    ).to_table()


def _record_format(output: str | Path, filesystem: pafs.FileSystem | None) -> int | None:
    """The layout the output's record ``_table.json`` names; None without a record."""
    path = _under(output, "_table.json", filesystem)
    try:
        if filesystem is None:
            data = Path(path).read_bytes()
        else:
            with filesystem.open_input_stream(str(path)) as f:
                data = f.read()
    except FileNotFoundError:
        return None
    try:
        found = int(json.loads(data)["format"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} cannot be read ({err})") from None
    if found > OUTPUT_FORMAT:
        raise ValueError(f"{path}: format {found} is newer than this version reads")
    return found


# The data files of a windowed dataset in each format, relative to its directory.
_LAYOUT_FILES = {
    1: re.compile(r"namespace=[^/]*/date=[^/]*/[^./_][^/]*\.parquet"),
    2: re.compile(r"(date|month)=[^/]*/[^./_][^/]*\.parquet"),
}


def _windowed(
    output: str | Path, name: str, schema: pa.Schema, filesystem: pafs.FileSystem | None
) -> pa.Table:
    """A windowed dataset with ``schema`` (namespace, date, then the measures), read from
    the files of the layout the output's record names (during a migration the files of the
    other may be there too; they are not read). Without a record (written by a version
    before it, or by the flow alone, ``bytewax.run``), a dataset with ``namespace=``
    directories is in format 1, any other in format 2."""
    fs = filesystem or pafs.LocalFileSystem()
    base = str(_under(output, name, filesystem))
    if filesystem is None:
        base = str(Path(base).resolve())
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    found = [
        posixpath.relpath(info.path, base)
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.File
    ]
    layout = _record_format(output, filesystem)
    if layout is None:
        layout = 1 if any(_LAYOUT_FILES[1].fullmatch(f) for f in found) else OUTPUT_FORMAT
    pattern = _LAYOUT_FILES[layout]
    files = sorted(posixpath.join(base, f) for f in found if pattern.fullmatch(f))
    daily = [f for f in files if not posixpath.relpath(f, base).startswith("month=")]
    monthly = [f for f in files if posixpath.relpath(f, base).startswith("month=")]
    tables = []
    if daily:
        layout = RATES_PARTITIONING if pattern is _LAYOUT_FILES[1] else DATE_PARTITIONING
        tables.append(
            ds.dataset(
                daily, schema=schema, format="parquet", filesystem=fs,
                partitioning=layout, partition_base_dir=base,
            ).to_table()
        )  # fmt: skip
    if monthly:  # the date is a column of the file
        tables.append(
            ds.dataset(monthly, schema=schema, format="parquet", filesystem=fs).to_table()
        )
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _under(output: str | Path, name: str, filesystem: pafs.FileSystem | None) -> str | Path:
    """``output/name``: a local path, or a path inside ``filesystem`` (``bucket/prefix``)."""
    if filesystem is None:
        return Path(output) / name
    return posixpath.join(str(output).rstrip("/"), name)


_ROLLUP = re.compile(r"[0-9]+[a-z]+")


def _dataset_name(name: str, rollup: str | None) -> str:
    """``party_rates`` or a roll-up of it such as ``party_rates_1h`` (same for outcomes)."""
    if rollup is None:
        return name
    if not _ROLLUP.fullmatch(rollup):
        raise ValueError(f"a roll-up is named by its length, like '1h' or '1d', not {rollup!r}")
    return f"{name}_{rollup}"


def load_party_rates_table(
    output: str | Path,
    filesystem: pafs.FileSystem | None = None,
    *,
    rollup: str | None = None,
) -> pa.Table:
    """``party_rates`` as an Arrow table with the contract's schema.

    ``output`` is a local directory, or with ``filesystem`` (a ``pyarrow.fs`` filesystem,
    e.g. ``S3FileSystem``) a path in it, like ``bucket/prefix`` for ``s3://bucket/prefix``.
    The other loaders take the same two arguments. ``rollup`` (``"1h"``, ``"1d"``) reads
    the roll-up of that length instead (``party_rates_1h/``): the same columns, one row per
    namespace and roll-up window. A dataset that does not exist reads as an empty table.
    """
    return _windowed(output, _dataset_name("party_rates", rollup), RATES_SCHEMA, filesystem)


def load_disconnect_outcomes_table(
    output: str | Path,
    filesystem: pafs.FileSystem | None = None,
    *,
    rollup: str | None = None,
) -> pa.Table:
    """``disconnect_outcomes`` (or its roll-up ``rollup``) as an Arrow table with the
    contract's schema; see :func:`load_party_rates_table`."""
    name = _dataset_name("disconnect_outcomes", rollup)
    return _windowed(output, name, OUTCOMES_SCHEMA, filesystem)


def load_party_rates(
    output: str | Path,
    filesystem: pafs.FileSystem | None = None,
    *,
    rollup: str | None = None,
) -> pd.DataFrame:
    """``party_rates`` (or with ``rollup``, e.g. ``"1d"``, its roll-up ``party_rates_1d``)
    as a DataFrame sorted by namespace and window_start."""
    df = load_party_rates_table(output, filesystem, rollup=rollup).to_pandas()
    return df.sort_values(["namespace", "window_start"], ignore_index=True)


def load_disconnect_outcomes(
    output: str | Path,
    filesystem: pafs.FileSystem | None = None,
    *,
    rollup: str | None = None,
) -> pd.DataFrame:
    """``disconnect_outcomes`` (or with ``rollup``, e.g. ``"1h"``, its roll-up
    ``disconnect_outcomes_1h``) as a DataFrame sorted by namespace and window_start."""
    table = load_disconnect_outcomes_table(output, filesystem, rollup=rollup)
    return table.to_pandas().sort_values(["namespace", "window_start"], ignore_index=True)


def rollup_lengths(output: str | Path, filesystem: pafs.FileSystem | None = None) -> list[str]:
    """The roll-up lengths the output has (``["1h", "1d"]``), shortest first: those with a
    ``party_rates_<length>/`` or ``disconnect_outcomes_<length>/`` directory."""
    if filesystem is None:
        root = Path(output)
        names = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    else:
        selector = pafs.FileSelector(str(output).rstrip("/"), allow_not_found=True)
        names = [
            posixpath.basename(info.path)
            for info in filesystem.get_file_info(selector)
            if info.type == pafs.FileType.Directory
        ]
    lengths = set()
    for name in names:
        for prefix in ("party_rates_", "disconnect_outcomes_"):
            rest = name.removeprefix(prefix)
            if rest != name and _ROLLUP.fullmatch(rest):
                lengths.add(rest)

    def length_us(length: str) -> float:
        try:
            return parse_duration_us(length)
        except ValueError:  # a directory named like a roll-up the job does not write
            return float("inf")

    return sorted(lengths, key=lambda n: (length_us(n), n))


def load_late_events(output: str | Path, filesystem: pafs.FileSystem | None = None) -> pd.DataFrame:
    path = _under(output, "late_events", filesystem)
    return _dataset(path, LATE_EVENTS_SCHEMA, filesystem=filesystem).to_pandas()


def load_dead_letters(
    output: str | Path, filesystem: pafs.FileSystem | None = None
) -> pd.DataFrame:
    path = _under(output, "dead_letters", filesystem)
    return _dataset(path, DEAD_LETTERS_SCHEMA, filesystem=filesystem).to_pandas()


def load_manifests(
    output: str | Path, filesystem: pafs.FileSystem | None = None
) -> list[dict[str, Any]]:
    """Every run's manifest, oldest first (by start time: run ids sort by second only):
    ``_runs/<run_id>.json`` and the manifests folded into ``_runs/archive/<YYYY-MM>.parquet``
    (``--retain``); a run in both (folding cut short) is read once, from its JSON file."""
    fs = filesystem or pafs.LocalFileSystem()
    runs = str(_under(output, "_runs", filesystem))
    if filesystem is None:
        runs = str(Path(runs).resolve())
    by_id: dict[str, dict[str, Any]] = {}
    for path in _files_in(fs, runs, ".json"):
        with fs.open_input_stream(path) as f:
            manifest = json.loads(f.read())
        by_id[manifest["run_id"]] = manifest
    for path in _files_in(fs, posixpath.join(runs, "archive"), ".parquet"):
        with fs.open_input_file(path) as f:
            table = pq.read_table(f, columns=["run_id", "manifest"], schema=RUNS_ARCHIVE_SCHEMA)
        for run_id, text in zip(
            table.column("run_id").to_pylist(), table.column("manifest").to_pylist(), strict=True
        ):
            by_id.setdefault(run_id, json.loads(text))
    return sorted(by_id.values(), key=lambda m: (m["started_at"], m["run_id"]))


def _files_in(fs: pafs.FileSystem, directory: str, suffix: str) -> list[str]:
    """The files directly in ``directory`` whose names end with ``suffix`` (not hidden)."""
    selector = pafs.FileSelector(directory, allow_not_found=True)
    return sorted(
        info.path
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.File
        and info.path.endswith(suffix)
        and not posixpath.basename(info.path).startswith(".")
    )
