"""The job's Parquet reads back the same in pandas, pyarrow.dataset, DuckDB and Polars, and a
reader of one namespace reads only its row groups (output format 2)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest

from flows.analysis import load_party_rates
from flows.edges.sinks import rows_table, window_dataset
from flows.tooling.simulator import SimConfig, generate, produce
from schemas.output import RATES_FILE_SCHEMA, ROW_GROUP_ROWS, window_file_schema
from tests.helpers import run_job

AWKWARD = ("../x", "a/b=c", "with space", "ünï-名前", "plain")
COLUMNS = [
    "namespace",
    "window_start",
    "window_end",
    "disconnected",
    "rejoined",
    "dropped",
    "rejected",
    "drop_ratio",
    "is_final",
]
FIVE_MINUTES = 300_000_000


@pytest.fixture(scope="module")
def output(broker, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("readers")
    topic = broker.new_topic()
    messages, _ = generate(SimConfig(namespace_names=AWKWARD, messages=5000, hours=3))
    produce(broker.bootstrap, topic, messages)
    run_job(broker.bootstrap, topic, tmp / "out", tmp / "state")
    return tmp / "out"


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    df = df[COLUMNS].copy()
    df["namespace"] = df["namespace"].astype(str)
    for col in ("window_start", "window_end"):
        assert isinstance(df[col].dtype, pd.DatetimeTZDtype), (col, df[col].dtype)
        assert str(df[col].dt.tz) == "UTC", (col, df[col].dt.tz)
        df[col] = df[col].astype("datetime64[us, UTC]")
    for col in ("disconnected", "rejoined", "dropped", "rejected"):
        df[col] = df[col].astype("int64")
    df["is_final"] = df["is_final"].astype(bool)
    return df.sort_values(["namespace", "window_start"], ignore_index=True)


def _check_dates(df: pd.DataFrame) -> None:
    """The ``date`` partition is the UTC date of window_start, in every reader."""
    got = pd.to_datetime(df["date"].astype(str)).dt.date
    assert (got == df["window_start"].dt.tz_convert("UTC").dt.date).all()


@pytest.mark.broker
def test_pandas_pyarrow_duckdb_and_polars_read_the_same_rows(output: Path) -> None:
    rates_dir = output / "party_rates"
    by_loader = load_party_rates(output)
    by_pandas = pd.read_parquet(rates_dir)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    by_duckdb = con.execute(
        "SELECT * FROM read_parquet(?, hive_partitioning = true)",
        [f"{rates_dir}/*/*.parquet"],
    ).df()
    by_polars = pl.read_parquet(f"{rates_dir}/**/*.parquet", hive_partitioning=True).to_pandas()
    for df in (by_loader, by_pandas, by_duckdb, by_polars):
        _check_dates(df)

    loader, pandas_, duck, polars_ = map(_normalise, (by_loader, by_pandas, by_duckdb, by_polars))
    assert set(loader["namespace"]) == set(AWKWARD)
    assert not loader.duplicated(["namespace", "window_start"]).any()
    assert loader["disconnected"].sum() > 100 and loader["is_final"].any()
    assert (loader["window_start"].dt.minute % 5 == 0).all()
    assert loader["window_start"].min() >= pd.Timestamp("2026-11-27T00:00Z")
    assert loader["window_start"].max() <= pd.Timestamp("2026-11-27T03:05Z")
    for df in (pandas_, duck, polars_):
        pd.testing.assert_frame_equal(df, loader)
        # Every namespace reads back exactly, byte for byte.
        assert sorted(df["namespace"].unique()) == sorted(AWKWARD)


@pytest.mark.broker
def test_one_file_per_date_carrying_the_field_descriptions(output: Path) -> None:
    """Format 2: every namespace's windows of a day in one file, sorted by namespace and
    window start, with the schema's descriptions."""
    files = sorted((output / "party_rates").rglob("*.parquet"))
    assert [f.relative_to(output).as_posix() for f in files] == [
        "party_rates/date=2026-11-27/part-0.parquet"
    ]
    schema = pq.read_schema(files[0])
    want = window_file_schema(RATES_FILE_SCHEMA, FIVE_MINUTES)
    assert schema.names == want.names
    for field in want:
        assert schema.field(field.name).metadata == field.metadata, field.name
    table = pq.read_table(files[0])
    assert table.column("namespace").to_pylist() == sorted(table.column("namespace").to_pylist())


# --- reading one namespace -------------------------------------------------------------

T0 = datetime(2026, 11, 27, tzinfo=UTC)
NAMESPACES = [f"game-{i:03d}" for i in range(40)]
TARGET = "game-017"


def _day_file(root: Path) -> Path:
    """A day of 5-minute windows of 40 namespaces, written by the job's own writer."""
    spec = window_dataset("party_rates", RATES_FILE_SCHEMA, FIVE_MINUTES)
    rows = []
    for n, ns in enumerate(NAMESPACES):
        for w in range(288):
            start = T0 + timedelta(minutes=5 * w)
            count = n * 1000 + w
            rows.append(
                (ns, start, start + timedelta(minutes=5), count, 0, 0, 0, count, count,
                 count / 5, 0.0, 0.0, 0.0, True)
            )  # fmt: skip
    path = root / "party_rates" / "date=2026-11-27" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as out:
        spec.write_parquet(rows_table(rows, spec.file_schema).sort_by(spec.sorting), out)
    return path


def _spoil_other_row_groups(path: Path, namespace: str) -> int:
    """Overwrite every column chunk of the row groups whose statistics exclude
    ``namespace`` (the footer stays whole): a reader that decodes one of them fails.
    Returns how many row groups the file has."""
    meta = pq.ParquetFile(path).metadata
    data = bytearray(path.read_bytes())
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        stats = group.column(0).statistics
        assert group.column(0).path_in_schema == "namespace" and stats.has_min_max
        if stats.min <= namespace <= stats.max:
            continue
        for j in range(group.num_columns):
            chunk = group.column(j)
            start = chunk.dictionary_page_offset if chunk.has_dictionary_page else None
            start = start if start is not None else chunk.data_page_offset
            data[start : start + chunk.total_compressed_size] = (
                b"\xff" * chunk.total_compressed_size
            )
    path.write_bytes(bytes(data))
    return meta.num_row_groups


def _duckdb(root: Path, where: str) -> pd.DataFrame:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    query = f"SELECT * FROM read_parquet(?, hive_partitioning = true) {where}"
    return con.execute(query, [f"{root}/party_rates/*/*.parquet"]).df()


def _polars(root: Path, namespace: str | None) -> pd.DataFrame:
    frame = pl.scan_parquet(f"{root}/party_rates/**/*.parquet", hive_partitioning=True)
    if namespace is not None:
        frame = frame.filter(pl.col("namespace") == namespace)
    return frame.collect().to_pandas()


READERS: dict[str, Callable[[Path, str | None], pd.DataFrame]] = {
    "pyarrow": lambda root, ns: pq.read_table(
        root / "party_rates", filters=None if ns is None else [("namespace", "==", ns)]
    ).to_pandas(),
    "pandas": lambda root, ns: pd.read_parquet(
        root / "party_rates", filters=None if ns is None else [("namespace", "==", ns)]
    ),
    "duckdb": lambda root, ns: _duckdb(root, "" if ns is None else f"WHERE namespace = '{ns}'"),
    "polars": _polars,
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_one_namespace_is_read_from_its_row_group_alone(tmp_path: Path, reader: str) -> None:
    """A row group holds whole namespaces, and its statistics say which: pyarrow, pandas,
    DuckDB and Polars filtering on one namespace decode only the row group holding it,
    shown by spoiling every other row group of the file."""
    path = _day_file(tmp_path)
    groups = _spoil_other_row_groups(path, TARGET)
    assert ROW_GROUP_ROWS == 2048 and groups == 5  # 8 whole namespaces (2,304 rows) each
    read = READERS[reader]
    with pytest.raises(Exception):  # noqa: B017, PT011 (each reader words it its own way)
        read(tmp_path, None)  # the spoiled row groups cannot be read: they were not, below
    got = read(tmp_path, TARGET)
    assert list(got["namespace"].astype(str).unique()) == [TARGET]
    assert sorted(got["disconnected"]) == [17_000 + w for w in range(288)]
