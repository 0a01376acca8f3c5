"""``--retain AGE``: what an output keeps of its run manifests and its logs.

Applied by process 0 at the end of a run that wrote everything it read, after the output's
record (no sink writes then), so nothing it touches is being written:

* **Run manifests** (``_runs/<run_id>.json``) last written more than AGE ago are folded into
  ``_runs/archive/<YYYY-MM>.parquet`` (the month the run started in; one row per run, its
  manifest whole), which the loaders and the run-id check read as well. The archive is
  written (atomically) before the manifests are deleted: a fold cut short leaves a
  manifest in both, which is read once and folded again by the next run. The current
  run's manifest, which the next run reads, is never folded.
* **Late events and dead letters**: a file (one per Kafka partition and block of offsets)
  not written to for AGE is deleted whole. A block still being written keeps its older
  rows until AGE after its last one.

Age is the file's modification time (the object's, on an object store) against the wall
clock: listing a directory tells it, so a run reads only what it folds or deletes. What
was removed is counted in the run's manifest (``retention``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flows.edges.manifest import manifest_path
from flows.edges.storage import Storage
from schemas.output import RUNS_ARCHIVE_DIR, RUNS_ARCHIVE_SCHEMA, runs_archive

LOGS = ("late_events", "dead_letters")


def _older(mtime: datetime | None, cutoff: datetime) -> bool:
    return mtime is not None and mtime < cutoff


def archived_run_ids(storage: Storage) -> set[str]:
    """The ids of the runs whose manifests are folded into archives."""
    ids: set[str] = set()
    for relpath, _mtime in storage.files_in(RUNS_ARCHIVE_DIR):
        if relpath.endswith(".parquet"):
            table = storage.read_table(relpath, RUNS_ARCHIVE_SCHEMA)
            if table is not None:
                ids.update(table.column("run_id").to_pylist())
    return ids


def run_exists(storage: Storage, run_id: str) -> bool:
    """Whether a run with this id has a manifest, folded or not."""
    return storage.exists(manifest_path(run_id)) or run_id in archived_run_ids(storage)


def fold_manifests(storage: Storage, cutoff: datetime, current: str) -> int:
    """Fold the manifests last written before ``cutoff`` (but ``current``'s) into their
    months' archives, then delete them; returns how many."""
    due = [
        relpath
        for relpath, mtime in storage.files_in("_runs")
        if relpath.endswith(".json") and relpath != manifest_path(current) and _older(mtime, cutoff)
    ]
    by_month: dict[str, dict[str, tuple[str, str]]] = {}
    folded = []
    for relpath in due:
        data = storage.read_bytes(relpath)
        if data is None:
            continue
        try:
            manifest = json.loads(data)
            run_id, started = str(manifest["run_id"]), str(manifest["started_at"])
        except (ValueError, KeyError, TypeError):
            continue  # not a manifest this version wrote: left as it is
        by_month.setdefault(runs_archive(started), {})[run_id] = (started, data.decode())
        folded.append(relpath)
    for archive, runs in sorted(by_month.items()):
        existing = storage.read_table(archive, RUNS_ARCHIVE_SCHEMA)
        rows = {}
        if existing is not None:
            for run_id, started, text in zip(*existing.to_pydict().values(), strict=True):
                rows[run_id] = (started, text)
        rows |= runs
        ordered = sorted(rows.items(), key=lambda kv: (kv[1][0], kv[0]))
        table = pa.table(
            {
                "run_id": [r for r, _ in ordered],
                "started_at": [s for _, (s, _t) in ordered],
                "manifest": [t for _, (_s, t) in ordered],
            },
            schema=RUNS_ARCHIVE_SCHEMA,
        )
        storage.write_tables([(archive, table)], _write_archive)
    for relpath in folded:
        storage.delete_file(relpath)
    return len(folded)


def _write_archive(table: pa.Table, where: Any) -> None:
    pq.write_table(table, where, compression="zstd")


def delete_idle_logs(storage: Storage, cutoff: datetime) -> dict[str, int]:
    """Delete the log files last written before ``cutoff``; returns per log the rows they
    held (from the files' footers)."""
    removed = {}
    for log in LOGS:
        rows = 0
        for relpath, mtime in storage.files_in(log):
            if relpath.endswith(".parquet") and _older(mtime, cutoff):
                rows += storage.parquet_rows(relpath)
                storage.delete_file(relpath)
        removed[log] = rows
    return removed


def apply(
    storage: Storage, retain_us: int | None, run_id: str, now: datetime | None = None
) -> dict[str, Any] | None:
    """Fold and delete what is older than ``retain_us`` (nothing without it), and record
    what in the run's manifest; returns that record."""
    if not retain_us:
        return None
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(microseconds=retain_us)
    logs = delete_idle_logs(storage, cutoff)
    done = {
        "older_than": cutoff.isoformat(),
        "manifests_folded": fold_manifests(storage, cutoff, run_id),
        "late_events_removed": logs["late_events"],
        "dead_letters_removed": logs["dead_letters"],
    }
    note_in_manifest(storage, run_id, done)
    return done


def note_in_manifest(storage: Storage, run_id: str, done: dict[str, Any]) -> None:
    data = storage.read_bytes(manifest_path(run_id))
    if data is None:
        return
    run = json.loads(data)
    run["retention"] = done
    storage.write_bytes(manifest_path(run_id), json.dumps(run, indent=2, sort_keys=True).encode())


__all__ = ["apply", "archived_run_ids", "run_exists"]
