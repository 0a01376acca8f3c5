"""``make bench-year`` runs: a small year, both layouts, every measurement reported (the
figures themselves are measured by ``make bench-year`` only)."""

from __future__ import annotations

from pathlib import Path

from bench import year


def test_the_year_bench_writes_its_table(tmp_path: Path) -> None:
    report = tmp_path / "LAYOUT.md"
    args = ["--namespaces", "3", "--days", "3", "--start", "2026-01-30", "--repeat", "1"]
    assert year.main([*args, "--dir", str(tmp_path / "out"), "--report", str(report)]) == 0
    text = report.read_text()
    for reader in ("pandas", "DuckDB", "Polars"):
        assert text.count(f"| {reader} |") == 2  # one namespace's month, every namespace's week
    # files: 3 namespaces x 3 days x 6 datasets, against 3 days x 4 datasets of windows
    # shorter than a day and 2 months (January and February) x 2 day roll-ups
    assert "| windowed datasets: files | 54 | 16 |" in text
    assert "steady-state scheduled run" in text and "following run's flush" in text
    # both layouts were written where asked, format 2's manifests folded by --retain
    assert (tmp_path / "out" / "format1" / "party_rates").is_dir()
    assert list((tmp_path / "out" / "format2" / "_runs" / "archive").glob("*.parquet"))
