"""``party-rates status``: what an output is and covers, its last run, and whether a state
matches it, as text and as JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.helpers import run_cli
from tests.test_recovery import FIRST, WHOLE, lose_state, run, trimmed


def status(*args: str) -> str:
    result = run_cli("status", *args)
    assert result.returncode == 0, result.stderr
    return str(result.stdout)


def test_status_of_an_output_and_its_state(tmp_path: Path) -> None:
    run(tmp_path, FIRST, "first-run")
    out, state = str(tmp_path / "out"), str(tmp_path / "state")
    text = status("--output", out, "--state", state)
    assert "window 5m, lateness 10m, outcome horizon 1h, dedup horizon 10m" in text
    assert "last run    first-run completed" in text
    assert "final rows up to 2026-03-01T22:50:00Z" in text
    assert "partition   0: position 1,226" in text
    assert "incomplete  none" in text
    assert f"state       {state}: matches: it writes this output" in text
    info = json.loads(status("--output", out, "--json"))
    assert info["partitions"] == {"0": {"position": 1226}, "1": {"position": 1208},
                                  "2": {"position": 1209}}  # fmt: skip
    assert info["last_run"]["counts"]["messages"] == 3643
    assert info["state"] == {"given": False}


def test_status_says_what_a_rebuild_left_incomplete_and_whose_state_it_is(
    tmp_path: Path,
) -> None:
    run(tmp_path, FIRST, "first")
    lose_state(tmp_path)
    out = str(tmp_path / "out")
    assert "empty: the next run rebuilds it" in status(
        "--output", out, "--state", str(tmp_path / "state")
    )
    run(tmp_path, trimmed(WHOLE, 0.55), "second")
    text = status("--output", out)
    assert "rebuilt its state: the state directory is empty" in text
    assert "incomplete  disconnect_outcomes windows from" in text
    other = tmp_path / "other"
    run(other, FIRST, "other")
    shutil.rmtree(other / "out")
    text = status("--output", out, "--state", str(other / "state"))
    assert "DOES NOT MATCH: another state" in text


def test_status_of_a_directory_without_a_record(tmp_path: Path) -> None:
    text = status("--output", str(tmp_path))
    assert "no _table.json" in text and "last run    none" in text
