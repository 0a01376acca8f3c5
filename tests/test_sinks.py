"""The sinks' merge rules and the storage's atomic replace, without a dataflow."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from flows.edges.sinks import DEAD_LETTERS, ParquetSink, window_dataset, write_merged
from flows.edges.storage import Storage, StorageError, take_end_of_run_failures
from schemas.output import RATES_FILE_SCHEMA

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
RATES = window_dataset("party_rates", RATES_FILE_SCHEMA, 5 * 60_000_000)


def _rate(disconnected: int, is_final: bool, start: datetime = T0) -> dict:
    return {
        "namespace": "ns",
        "date": start.date(),
        "window_start": start,
        "window_end": start + timedelta(minutes=5),
        "disconnected": disconnected,
        "rejoined": 0,
        "dropped": 0,
        "rejected": 0,
        "users_disconnected": disconnected,
        "parties_affected": disconnected,
        "disconnects_per_min": disconnected / 5,
        "drops_per_min": 0.0,
        "drop_ratio": 0.0 if disconnected else None,
        "rejoin_ratio": 0.0 if disconnected else None,
        "is_final": is_final,
    }


def _dead(offset: int, error: str) -> dict:
    return {
        "partition": 0,
        "offset": offset,
        "key": b"k",
        "value": b"v",
        "error": error,
        "seen_at": T0,
    }


RATES_FILE = RATES.relpath(_rate(1, False))


def _read(storage: Storage, relpath: str) -> list[dict]:
    return pq.read_table(Path(storage.root) / relpath).to_pylist()


def test_a_final_row_replaces_a_provisional_one(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    write_merged(storage, RATES_FILE, [RATES.file_row(r) for r in [_rate(1, False)]], RATES)
    write_merged(storage, RATES_FILE, [RATES.file_row(r) for r in [_rate(3, True)]], RATES)
    (row,) = _read(storage, RATES_FILE)
    assert (row["disconnected"], row["is_final"]) == (3, True)


def test_a_provisional_row_never_replaces_a_final_one(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    write_merged(storage, RATES_FILE, [RATES.file_row(r) for r in [_rate(3, True)]], RATES)
    write_merged(storage, RATES_FILE, [RATES.file_row(r) for r in [_rate(1, False)]], RATES)
    (row,) = _read(storage, RATES_FILE)
    assert (row["disconnected"], row["is_final"]) == (3, True)


def test_a_later_provisional_row_replaces_an_earlier_one(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    write_merged(storage, RATES_FILE, [RATES.file_row(r) for r in [_rate(1, False)]], RATES)
    write_merged(storage, RATES_FILE, [RATES.file_row(r) for r in [_rate(2, False)]], RATES)
    (row,) = _read(storage, RATES_FILE)
    assert (row["disconnected"], row["is_final"]) == (2, False)


def test_rows_of_other_windows_are_kept_one_per_key(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    later = T0 + timedelta(minutes=5)
    write_merged(
        storage,
        RATES_FILE,
        [RATES.file_row(r) for r in [_rate(1, True), _rate(2, False, later)]],
        RATES,
    )
    write_merged(storage, RATES_FILE, [RATES.file_row(r) for r in [_rate(5, True, later)]], RATES)
    rows = _read(storage, RATES_FILE)
    assert [(r["window_start"], r["disconnected"]) for r in rows] == [(T0, 1), (later, 5)]


def test_log_rows_first_write_wins(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    relpath = DEAD_LETTERS.relpath(_dead(7, "first"))
    write_merged(
        storage, relpath, [DEAD_LETTERS.file_row(r) for r in [_dead(7, "first")]], DEAD_LETTERS
    )
    write_merged(
        storage,
        relpath,
        [DEAD_LETTERS.file_row(r) for r in [_dead(7, "second"), _dead(8, "other")]],
        DEAD_LETTERS,
    )
    rows = _read(storage, relpath)
    assert [(r["offset"], r["error"]) for r in rows] == [(7, "first"), (8, "other")]


def test_rewriting_the_same_rows_leaves_the_file_alone(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    write_merged(storage, RATES_FILE, [RATES.file_row(r) for r in [_rate(3, True)]], RATES)
    path = tmp_path / RATES_FILE
    before = path.stat().st_mtime_ns, path.stat().st_ino
    write_merged(
        storage, RATES_FILE, [RATES.file_row(r) for r in [_rate(3, True)]], RATES
    )  # a replay after a crash
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before


def test_a_file_is_replaced_whole_under_its_name(tmp_path: Path) -> None:
    """The new content appears under the name at once (a rename of a complete file)."""
    storage = Storage(str(tmp_path))
    write_merged(storage, RATES_FILE, [RATES.file_row(r) for r in [_rate(1, False)]], RATES)
    path = tmp_path / RATES_FILE
    inode = path.stat().st_ino
    write_merged(storage, RATES_FILE, [RATES.file_row(r) for r in [_rate(2, True)]], RATES)
    assert path.stat().st_ino != inode  # a new file, renamed over the old one
    assert [p.name for p in path.parent.iterdir()] == ["part-0.parquet"]


def test_stale_temporary_files_are_removed_and_real_files_kept(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    write_merged(storage, RATES_FILE, [RATES.file_row(r) for r in [_rate(1, True)]], RATES)
    real = tmp_path / RATES_FILE
    stale = [
        real.parent / ".part-0.parquet.1a2b3c4d.tmp",
        tmp_path / "_runs" / ".run-1.json.tmp",
        tmp_path / "dead_letters" / ".p00000-b000000.parquet.99999999.tmp",
    ]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    assert storage.prepare() == len(stale)  # what a run does before it reads anything
    assert not any(p.exists() for p in stale)
    assert _read(storage, RATES_FILE)[0]["disconnected"] == 1
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["part-0.parquet"]
    assert date(2026, 11, 27).isoformat() in str(real)


class BrokenStorage(Storage):
    def write_tables(self, tables: object, write: object = None) -> None:
        raise StorageError("object store s3://b/p: cannot connect (check --s3-endpoint)")


def test_a_write_failing_at_the_end_of_a_run_is_reported_not_raised(tmp_path: Path) -> None:
    """Bytewax calls close() while dropping the dataflow, where raising would abort the
    process: the failure is recorded for the command to report (the rows stay in the last
    snapshot for the next run)."""
    sink = ParquetSink(BrokenStorage(str(tmp_path)), RATES, flush_seconds=None)
    part = sink.build_part("party_rates", "party_rates-0", None)
    row = _rate(1, True)
    part.write_batch([(RATES_FILE, [RATES.file_row(row)])])
    assert part.snapshot()  # the row waits in the snapshot
    part.close()
    assert take_end_of_run_failures() == [
        "object store s3://b/p: cannot connect (check --s3-endpoint)"
    ]
    assert take_end_of_run_failures() == []
