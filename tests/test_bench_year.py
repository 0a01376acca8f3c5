"""``make bench-year`` runs: a small year, both layouts, every measurement reported (the
figures themselves are measured by ``make bench-year`` only)."""

from __future__ import annotations

import re
from pathlib import Path

from bench import year


def test_the_year_bench_writes_its_table(tmp_path: Path) -> None:
    report = tmp_path / "LAYOUT.md"
    args = ["--namespaces", "3", "--days", "32", "--start", "2026-01-01", "--repeat", "1"]
    assert year.main([*args, "--dir", str(tmp_path / "out"), "--report", str(report)]) == 0
    text = report.read_text()
    for reader in ("pandas", "DuckDB", "Polars"):
        assert text.count(f"| {reader} |") == 2  # one namespace's month, every namespace's week
    # files: 3 namespaces x 32 days x 6 datasets, against 32 days x 4 datasets of windows
    # shorter than a day and 2 months (January and February) x 2 day roll-ups
    assert "| windowed datasets: files | 576 | 132 |" in text
    # a run every 15 minutes: 32 x 96 manifests, against 30 days of them and an archive
    assert "| `_runs/`: files (format 2: `--retain 30d`) | 3,072 | 2,881 |" in text
    # the sinks' writes changed the files of the last day: a file per namespace and
    # dataset against a file per dataset
    cells = r" [^|]*\|[^|]*\| (\d+), [^|]*\|[^|]*\| (\d+), "
    steady = re.search(r"\| steady-state scheduled run" + cells, text)
    assert steady is not None and steady.groups() == ("18", "6")
    flush = re.search(r"\| following run's flush" + cells, text)
    assert flush is not None and flush.groups() == ("6", "2")  # 5-minute rates, outcomes
    # both layouts were written where asked, format 2's manifests folded by --retain
    assert (tmp_path / "out" / "format1" / "party_rates").is_dir()
    assert list((tmp_path / "out" / "format2" / "_runs" / "archive").glob("*.parquet"))
