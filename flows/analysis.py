"""Loading the output for analysis: the same schemas and partitioning the job writes with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from schemas.output import (
    DEAD_LETTERS_SCHEMA,
    LATE_EVENTS_SCHEMA,
    RATES_PARTITIONING,
    RATES_SCHEMA,
)


def _dataset(path: Path, schema: pa.Schema, partitioning: Any = None) -> pa.Table:
    if not path.exists():
        return schema.empty_table()
    return ds.dataset(path, schema=schema, format="parquet", partitioning=partitioning).to_table()


def load_party_rates_table(output: str | Path) -> pa.Table:
    """``party_rates`` as an Arrow table with the contract's schema."""
    return _dataset(Path(output) / "party_rates", RATES_SCHEMA, RATES_PARTITIONING)


def load_party_rates(output: str | Path) -> pd.DataFrame:
    """``party_rates`` as a DataFrame sorted by namespace and window_start."""
    df = load_party_rates_table(output).to_pandas()
    return df.sort_values(["namespace", "window_start"], ignore_index=True)


def load_late_events(output: str | Path) -> pd.DataFrame:
    return _dataset(Path(output) / "late_events", LATE_EVENTS_SCHEMA).to_pandas()


def load_dead_letters(output: str | Path) -> pd.DataFrame:
    return _dataset(Path(output) / "dead_letters", DEAD_LETTERS_SCHEMA).to_pandas()


def load_manifests(output: str | Path) -> list[dict[str, Any]]:
    runs = Path(output) / "_runs"
    if not runs.exists():
        return []
    return [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]


def worst_namespaces(rates: pd.DataFrame, top: int = 10, min_disconnects: int = 20) -> pd.DataFrame:
    """Namespaces ranked by overall drop ratio over final windows, with their volumes."""
    final = rates[rates["is_final"]]
    agg = final.groupby("namespace", observed=True)[["disconnected", "dropped", "rejoined"]].sum()
    agg = agg[agg["disconnected"] >= min_disconnects]
    agg["drop_ratio"] = agg["dropped"] / agg["disconnected"]
    agg["rejoin_ratio"] = agg["rejoined"] / agg["disconnected"]
    return agg.sort_values("drop_ratio", ascending=False).head(top)
