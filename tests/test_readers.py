"""The job's Parquet reads back the same in pandas, pyarrow.dataset and DuckDB."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from flows.analysis import load_party_rates
from flows.tooling.simulator import SimConfig, generate, produce
from schemas.output import RATES_FILE_SCHEMA
from tests.helpers import run_job

pytestmark = pytest.mark.broker

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


def test_pandas_pyarrow_and_duckdb_read_the_same_rows(output: Path) -> None:
    rates_dir = output / "party_rates"
    by_loader = load_party_rates(output)
    by_pandas = pd.read_parquet(rates_dir)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    by_duckdb = con.execute(
        "SELECT * FROM read_parquet(?, hive_partitioning = true)",
        [f"{rates_dir}/**/*.parquet"],
    ).df()
    for df in (by_loader, by_pandas, by_duckdb):
        _check_dates(df)

    loader, pandas_, duck = map(_normalise, (by_loader, by_pandas, by_duckdb))
    assert set(loader["namespace"]) == set(AWKWARD)
    assert not loader.duplicated(["namespace", "window_start"]).any()
    assert loader["disconnected"].sum() > 100 and loader["is_final"].any()
    assert (loader["window_start"].dt.minute % 5 == 0).all()
    assert loader["window_start"].min() >= pd.Timestamp("2026-11-27T00:00Z")
    assert loader["window_start"].max() <= pd.Timestamp("2026-11-27T03:05Z")
    pd.testing.assert_frame_equal(pandas_, loader)
    pd.testing.assert_frame_equal(duck, loader)
    # Every namespace reads back exactly, byte for byte, in all three.
    for df in (pandas_, duck):
        assert sorted(df["namespace"].unique()) == sorted(AWKWARD)


def test_parquet_files_carry_the_field_descriptions(output: Path) -> None:
    files = sorted((output / "party_rates").rglob("*.parquet"))
    assert len(files) >= len(AWKWARD)
    for path in files:
        schema = pq.read_schema(path)
        metadata = schema.field("drop_ratio").metadata
        assert metadata is not None
        assert (
            metadata[b"description"]
            == RATES_FILE_SCHEMA.field("drop_ratio").metadata[b"description"]
        )
        for field in RATES_FILE_SCHEMA:
            assert schema.field(field.name).metadata == field.metadata, (path, field.name)
