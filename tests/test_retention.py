"""``--retain``: old run manifests folded into monthly archives that every reader of
manifests still reads, idle late-event and dead-letter files deleted, all counted in the
run's manifest; nothing a run needs is removed."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.analysis import load_manifests
from flows.edges import retention
from flows.edges.statedir import StateDir
from flows.edges.storage import Storage
from flows.edges.table import TableError
from flows.settings import Settings
from tests.helpers import prepare, total_counts
from tests.test_recovery import FIRST, WHOLE, run

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
DAY = 86_400_000_000


def _age(path: Path, days: float) -> None:
    """Make ``path`` look last written ``days`` before NOW."""
    t = (NOW - timedelta(days=days)).timestamp()
    os.utime(path, (t, t))


def _manifest(out: Path, run_id: str, started: str, days_old: float) -> Path:
    path = out / "_runs" / f"{run_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = {
        "run_id": run_id,
        "started_at": started,
        "ended_at": started,
        "status": "completed",
        "counts": {"messages": 1, "counted": 1},
        "partitions": {},
        "gaps": [],
    }
    path.write_text(json.dumps(manifest))
    _age(path, days_old)
    return path


def test_old_manifests_are_folded_and_still_read(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _manifest(out, "r-oct-1", "2026-10-02T00:00:00+00:00", 63)
    _manifest(out, "r-oct-2", "2026-10-30T23:00:00+00:00", 35)
    _manifest(out, "r-nov", "2026-11-01T00:00:00+00:00", 33)
    _manifest(out, "r-recent", "2026-11-20T00:00:00+00:00", 14)
    _manifest(out, "current", "2026-09-01T00:00:00+00:00", 90)  # a long following run
    storage = Storage(str(out))
    want = load_manifests(out)
    done = retention.apply(storage, 30 * DAY, "current", NOW)
    assert done == {
        "older_than": (NOW - timedelta(days=30)).isoformat(),
        "manifests_folded": 3,
        "late_events_removed": 0,
        "dead_letters_removed": 0,
    }
    assert sorted(p.name for p in (out / "_runs").iterdir()) == [
        "archive",
        "current.json",
        "r-recent.json",
    ]
    assert sorted(p.name for p in (out / "_runs" / "archive").iterdir()) == [
        "2026-10.parquet",
        "2026-11.parquet",
    ]
    got = load_manifests(out)
    current = got.pop(0)
    assert current["retention"] == done  # counted in the run's own manifest
    assert got == [m for m in want if m["run_id"] != "current"]
    assert retention.run_exists(storage, "r-oct-1")  # the run-id check sees folded runs
    assert not retention.run_exists(storage, "r-never")
    # A second pass folds into the same month without losing what it holds.
    _manifest(out, "r-oct-3", "2026-10-31T00:00:00+00:00", 34)
    assert retention.apply(storage, 30 * DAY, "current", NOW)["manifests_folded"] == 1
    assert {m["run_id"] for m in load_manifests(out)} == {
        "current", "r-recent", "r-nov", "r-oct-1", "r-oct-2", "r-oct-3",
    }  # fmt: skip


def test_a_fold_cut_before_its_deletes_reads_each_run_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    kept = _manifest(out, "r-old", "2026-10-02T00:00:00+00:00", 60)
    copy = kept.read_bytes()
    storage = Storage(str(out))
    retention.apply(storage, 30 * DAY, "current", NOW)
    kept.write_bytes(copy)  # as if the process had died before deleting it
    _age(kept, 60)
    assert [m["run_id"] for m in load_manifests(out)] == ["r-old"]
    assert retention.apply(storage, 30 * DAY, "current", NOW)["manifests_folded"] == 1
    assert [m["run_id"] for m in load_manifests(out)] == ["r-old"]
    assert not kept.exists()


def test_idle_log_files_are_deleted_and_counted(tmp_path: Path) -> None:
    """Late events and dead letters: a file not written to for the retention is deleted
    whole, its rows counted; one still written to is kept."""
    run(tmp_path, WHOLE, "first")
    out = tmp_path / "out"
    logs = sorted((out / "late_events").iterdir()) + sorted((out / "dead_letters").iterdir())
    assert len(logs) >= 3
    idle, active = logs[:-1], logs[-1]
    rows = {p: pq.read_metadata(p).num_rows for p in logs}
    for path in idle:
        _age(path, 40)
    _age(active, 2)
    done = retention.apply(Storage(str(out)), 30 * DAY, "first", NOW)
    assert done is not None
    late = sum(rows[p] for p in idle if p.parent.name == "late_events")
    dead = sum(rows[p] for p in idle if p.parent.name == "dead_letters")
    assert (done["late_events_removed"], done["dead_letters_removed"]) == (late, dead)
    assert late + dead > 0
    assert [p for p in logs if p.exists()] == [active]
    (first,) = load_manifests(out)
    assert first["retention"] == done


def test_without_retain_nothing_is_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    old = _manifest(out, "r-old", "2020-01-01T00:00:00+00:00", 2000)
    assert retention.apply(Storage(str(out)), None, "current", NOW) is None
    assert old.exists()


def test_a_run_keeps_counting_with_folded_manifests(tmp_path: Path) -> None:
    """The manifest totals (each message once over every run) and a lost state's rebuild
    read folded manifests as they read the others."""
    run(tmp_path, FIRST, "first")
    out = tmp_path / "out"
    for path in (out / "_runs").glob("*.json"):
        _age(path, 40)
    retention.apply(Storage(str(out)), 30 * DAY, "none-current", NOW)
    assert not list((out / "_runs").glob("*.json"))
    shutil.rmtree(tmp_path / "state")  # lost: rebuilt, its rereads counted apart
    second = run(tmp_path, WHOLE, "second")
    assert second["rebuild"] is not None
    counts = total_counts(out)
    assert counts["messages"] - counts["reread"] == sum(len(m) for m in WHOLE.values())


def test_a_lost_state_with_only_folded_manifests_and_no_record_is_refused(
    tmp_path: Path,
) -> None:
    """An output whose rows no record describes is refused with an empty state, as
    before: folded manifests still say that runs wrote it."""
    run(tmp_path, FIRST, "first")
    out = tmp_path / "out"
    for path in (out / "_runs").glob("*.json"):
        _age(path, 40)
    retention.apply(Storage(str(out)), 30 * DAY, "none-current", NOW)
    (out / "_table.json").unlink()
    shutil.rmtree(tmp_path / "state")
    s = Settings(output=str(out), state=str(tmp_path / "state"), progress="off", group_id="")
    with pytest.raises(TableError, match="holds rows but no"):
        prepare(s, StateDir(s.run.state), Storage(str(out)), lambda: {})


@pytest.mark.parametrize("value", ["12h", "0s", "1x"])
def test_a_retention_shorter_than_a_day_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="retain"):
        Settings(output="o", state="s", retain=value)


@pytest.mark.broker
def test_a_scheduled_run_applies_its_retention(broker, tmp_path: Path) -> None:
    """``party-rates run --retain``: at the end of the run, after its record."""
    from flows.tooling.simulator import SimConfig, chunks, generate, produce
    from tests.helpers import run_job

    topic = broker.new_topic(partitions=2)
    messages, _ = generate(SimConfig(messages=2_000, namespaces=3, hours=2))
    out, state = tmp_path / "out", tmp_path / "state"
    first, second = chunks(messages, 2)
    produce(broker.bootstrap, topic, first)
    run_job(broker.bootstrap, topic, out, state, "--retain", "1d")
    (old,) = (out / "_runs").glob("*.json")
    assert json.loads(old.read_text())["retention"]["manifests_folded"] == 0
    t = (datetime.now(UTC) - timedelta(days=3)).timestamp()
    os.utime(old, (t, t))
    produce(broker.bootstrap, topic, second)
    run_job(broker.bootstrap, topic, out, state, "--retain", "1d")
    (new,) = (out / "_runs").glob("*.json")
    assert json.loads(new.read_text())["retention"]["manifests_folded"] == 1
    assert len(list((out / "_runs" / "archive").iterdir())) == 1
    manifests = load_manifests(out)
    assert [m["run_id"] for m in manifests] == [old.stem, new.stem]
    assert sum(m["counts"]["messages"] for m in manifests) == len(messages)
