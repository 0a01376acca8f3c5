"""The sinks' merge rules and the storage's atomic replace, without a dataflow."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from flows.core.items import DaySeen
from flows.edges.sinks import DEAD_LETTERS, ParquetSink, route, window_dataset, write_files
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


def write_merged(storage: Storage, relpath: str, rows: list, spec) -> None:
    """One file's rows merged in, as a flush writes them (``write_files``)."""
    write_files(storage, [(relpath, rows)], spec)


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


def test_a_partition_writes_its_day_once_another_partition_sees_a_later_day(
    tmp_path: Path,
) -> None:
    """A file per date sits on one sink partition; the router tells every partition of a
    later day's first final row, so a partition that owns only an earlier day writes it
    then (over a backlog, the buffer holds about a day, not the run's every day)."""
    storage = Storage(str(tmp_path))
    sink = ParquetSink(storage, RATES, flush_seconds=None, parts=8)
    by_file = route(RATES, parts=8)
    first_day = by_file([_rate(1, True)])
    assert [v for _k, v in first_day if isinstance(v, DaySeen)] == [DaySeen(T0.date())] * 8
    owner = sink.build_part("party_rates", "party_rates-0", None)
    owner.write_batch([v for _k, v in first_day])  # its file, and the day it announces
    assert not (tmp_path / RATES_FILE).exists()  # the day may still get rows

    next_day = by_file([_rate(2, True, T0 + timedelta(days=1))])  # for another partition
    marks = [(k, v) for k, v in next_day if isinstance(v, DaySeen)]
    assert [v for _k, v in marks] == [DaySeen(T0.date() + timedelta(days=1))] * 8
    assert {sink.part_fn(k) for k, _v in marks} == set(range(8))  # one for each partition
    owner.write_batch([marks[0][1]])
    assert [r["disconnected"] for r in _read(storage, RATES_FILE)] == [1]  # written
    assert owner.snapshot() == {}
    again = by_file([_rate(3, True, T0 + timedelta(days=1))])
    assert len(again) == 1 and not isinstance(again[0][1], DaySeen)  # each day told once


# --- format 2: a file per date (per month for day roll-ups), every namespace in it -------

DAY_US = 86_400_000_000
RATES_1D = window_dataset("party_rates_1d", RATES_FILE_SCHEMA, DAY_US)


def _row(spec_row: dict, namespace: str, **changes: object) -> dict:
    return spec_row | {"namespace": namespace} | changes


def test_every_namespace_of_a_day_goes_to_one_file_in_key_order(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    later = T0 + timedelta(minutes=5)
    rows = [_row(_rate(1, True, s), ns) for ns in ("zz", "a/b", "m") for s in (later, T0)]
    assert {RATES.relpath(r) for r in rows} == {"party_rates/date=2026-11-27/part-0.parquet"}
    write_merged(storage, RATES_FILE, [RATES.file_row(r) for r in rows], RATES)
    got = [(r["namespace"], r["window_start"]) for r in _read(storage, RATES_FILE)]
    assert got == sorted(got) and len(got) == 6


def test_day_rollups_go_to_one_file_per_month_with_their_date(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    days = [T0.replace(hour=0) + timedelta(days=d) for d in (0, 3, 5)]  # Nov 27 to Dec 2
    rows = [_rate(1, True, d) | {"window_end": d + timedelta(days=1)} for d in days]
    files = sorted({RATES_1D.relpath(r) for r in rows})
    assert files == [
        "party_rates_1d/month=2026-11/part-0.parquet",
        "party_rates_1d/month=2026-12/part-0.parquet",
    ]
    for relpath in files:
        mine = [RATES_1D.file_row(r) for r in rows if RATES_1D.relpath(r) == relpath]
        write_merged(storage, relpath, mine, RATES_1D)
    november = _read(storage, files[0])
    assert [(r["namespace"], r["date"]) for r in november] == [
        ("ns", date(2026, 11, 27)),
        ("ns", date(2026, 11, 30)),
    ]


def test_one_namespace_final_row_kept_while_another_provisional_is_replaced(
    tmp_path: Path,
) -> None:
    """The merge decides per key (namespace, window_start) over the whole day's file."""
    from flows.edges.metrics import METRICS

    storage = Storage(str(tmp_path))
    first = [_row(_rate(3, True), "a"), _row(_rate(1, False), "b"), _row(_rate(7, True), "c")]
    write_merged(storage, RATES_FILE, [RATES.file_row(r) for r in first], RATES)
    kept_before = METRICS.kept_rows.get("party_rates", 0)
    again = [_row(_rate(9, True), "a"), _row(_rate(2, True), "b")]  # "a" is final already
    write_merged(storage, RATES_FILE, [RATES.file_row(r) for r in again], RATES)
    got = {r["namespace"]: (r["disconnected"], r["is_final"]) for r in _read(storage, RATES_FILE)}
    assert got == {"a": (3, True), "b": (2, True), "c": (7, True)}
    assert METRICS.kept_rows.get("party_rates", 0) == kept_before + 1  # a different final row


def test_a_recompute_replaces_final_rows_by_final_ones_only(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    recompute = window_dataset("party_rates", RATES_FILE_SCHEMA, 5 * 60_000_000, True)
    write_merged(
        storage, RATES_FILE, [RATES.file_row(_row(_rate(3, True), n)) for n in "ab"], RATES
    )
    new = [_row(_rate(5, True), "a"), _row(_rate(1, False), "b")]
    write_merged(storage, RATES_FILE, [recompute.file_row(r) for r in new], recompute)
    got = {r["namespace"]: (r["disconnected"], r["is_final"]) for r in _read(storage, RATES_FILE)}
    assert got == {"a": (5, True), "b": (3, True)}


def test_row_groups_hold_whole_namespaces(tmp_path: Path) -> None:
    """A row group ends where a namespace does once it has ROW_GROUP_ROWS rows, so each
    namespace's rows are in one row group, found by its statistics."""
    from schemas.output import ROW_GROUP_ROWS

    storage = Storage(str(tmp_path))
    rows = [
        _row(_rate(1, True, T0.replace(hour=0) + timedelta(minutes=5 * w)), f"ns-{n:02d}")
        for n in range(30)
        for w in range(288)
    ]
    write_merged(storage, RATES_FILE, [RATES.file_row(r) for r in rows], RATES)
    meta = pq.ParquetFile(tmp_path / RATES_FILE).metadata
    assert meta.num_row_groups > 1
    spans = []
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        stats = group.column(0).statistics
        spans.append((stats.min, stats.max))
        assert group.num_rows % 288 == 0  # whole namespaces
        assert group.num_rows >= ROW_GROUP_ROWS or i == meta.num_row_groups - 1
        assert group.sorting_columns[0].column_index == 0  # sorted by namespace
    assert all(a[1] < b[0] for a, b in itertools.pairwise(spans))
