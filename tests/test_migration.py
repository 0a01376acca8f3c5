"""An output of format 1 (one file per namespace=/date= directory) is moved to format 2 at
the first start of this version, crash-safe: cut before the record's switch, the output is
still all format 1; cut after it, all format 2; either way the next start finishes it, and
readers see the same rows throughout.

The format-1 outputs are the one kept beside the state of format 4
(``tests/fixtures/state-format-4``, no record: written before there was one) and one this
version writes and then lays out as the previous version did, with its record of format 1.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from flows.analysis import load_disconnect_outcomes, load_party_rates
from flows.core.paths import old_window_relpath
from flows.edges.layout import require_current
from flows.edges.statedir import META, StateDir
from flows.edges.storage import Storage
from flows.edges.table import RECORD, TableError, read_record
from flows.party_rates import build_flow
from flows.settings import Settings
from schemas.output import OUTCOMES_FILE_SCHEMA, OUTPUT_FORMAT, RATES_FILE_SCHEMA
from tests.helpers import ROLLUPS, assert_same_rows, job_outcomes, job_rows
from tests.helpers import prepare as prepare_from
from tests.test_recovery import FIRST, FIXTURE, WHOLE, assert_same_as, run

DATASETS = ["party_rates", "disconnect_outcomes"] + [
    f"{n}_{label}" for n in ("party_rates", "disconnect_outcomes") for label in ROLLUPS
]


def frames(out: Path) -> dict[str, pd.DataFrame]:
    """Every windowed dataset as the loaders read it (final and provisional rows)."""
    return {
        d: job_rows(out, d) if d.startswith("party_rates") else job_outcomes(out, False, d)
        for d in DATASETS
    }


def assert_same_frames(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    for dataset in DATASETS:
        assert len(want[dataset]) > 0, dataset
        assert_same_rows(got[dataset], want[dataset])


def old_directories(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.glob("*/namespace=*") if p.is_dir())


def new_files(out: Path) -> list[str]:
    return sorted(
        p.relative_to(out).as_posix()
        for pattern in ("*/date=*/*.parquet", "*/month=*/*.parquet")
        for p in out.glob(pattern)
    )


def settings_for(base: Path, **more: Any) -> Settings:
    return Settings(
        output=str(base / "out"), state=str(base / "state"), progress="off", group_id="",
        run_id="migrating", **more,
    )  # fmt: skip


def copy_fixture(base: Path) -> None:
    """The format-1 output and the format-4 state that wrote it, pointed at each other."""
    shutil.copytree(FIXTURE / "state", base / "state")
    shutil.copytree(FIXTURE / "output", base / "out")
    meta_file = base / "state" / META
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps(meta | {"output": str(base / "out")}))


def prepare(base: Path, storage: Storage | None = None) -> None:
    """What a run does first: the checks, and the migration."""
    s = settings_for(base)
    bounds = {p: (m[0].offset(), m[-1].offset() + 1) for p, m in WHOLE.items()}
    prepare_from(s, StateDir(s.run.state), storage or Storage.for_output(s.storage), lambda: bounds)


class Cut(Exception):
    """The process killed at this point (raised where a kill would stop it)."""


class CutStorage(Storage):
    """A storage that fails at one point of a migration: before the record is written
    (``switch``), or at the second format-1 directory deleted (``delete``)."""

    def __init__(self, root: str, at: str) -> None:
        super().__init__(root)
        self.at = at
        self.deleted = 0

    def write_bytes(self, relpath: str, data: bytes) -> None:
        if self.at == "switch" and relpath == RECORD:
            raise Cut(relpath)
        super().write_bytes(relpath, data)

    def delete_dir(self, reldir: str) -> None:
        if self.at == "delete" and self.deleted == 1:
            raise Cut(reldir)
        self.deleted += 1
        super().delete_dir(reldir)


@pytest.fixture(scope="module")
def fixture_rows() -> dict[str, pd.DataFrame]:
    """The rows of the kept format-1 output, as the loaders read them."""
    return frames(FIXTURE / "output")


def test_the_first_start_migrates_and_the_rows_stay(
    tmp_path: Path, fixture_rows: dict[str, pd.DataFrame]
) -> None:
    copy_fixture(tmp_path)
    out = tmp_path / "out"
    before = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    assert len(old_directories(out)) == 5 * len(DATASETS)
    prepare(tmp_path)
    assert old_directories(out) == []
    assert new_files(out) == sorted(
        [f"{d}/date=2026-03-01/part-0.parquet" for d in DATASETS if not d.endswith("_1d")]
        + [f"{d}/month=2026-03/part-0.parquet" for d in DATASETS if d.endswith("_1d")]
    )
    record = read_record(Storage(str(out)))
    assert record is not None and record.format == OUTPUT_FORMAT == 2
    assert not record.claims  # the output had no record: this one only names the layout
    assert_same_frames(frames(out), fixture_rows)
    # nothing but the windowed datasets changed
    after = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    assert {p for p in after if p.parts[0] in ("_runs", "late_events", "dead_letters")} == {
        p for p in before if p.parts[0] in ("_runs", "late_events", "dead_letters")
    }
    prepare(tmp_path)  # once is all: a second start changes nothing
    assert_same_frames(frames(out), fixture_rows)


def test_cut_before_the_switch_the_output_is_format_1_and_the_next_start_migrates(
    tmp_path: Path, fixture_rows: dict[str, pd.DataFrame]
) -> None:
    copy_fixture(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(Cut):
        prepare(tmp_path, CutStorage(str(out), "switch"))
    assert new_files(out) and len(old_directories(out)) == 5 * len(DATASETS)  # both
    assert not (out / RECORD).exists()
    assert_same_frames(frames(out), fixture_rows)  # format 1, its files alone
    with pytest.raises(TableError, match="format 1: run `party-rates run`"):
        build_flow(settings_for(tmp_path))  # a flow started alone does not migrate
    prepare(tmp_path)
    assert old_directories(out) == []
    assert_same_frames(frames(out), fixture_rows)


def test_cut_after_the_switch_the_output_is_format_2_and_the_next_start_cleans_up(
    tmp_path: Path, fixture_rows: dict[str, pd.DataFrame]
) -> None:
    copy_fixture(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(Cut):
        prepare(tmp_path, CutStorage(str(out), "delete"))
    record = read_record(Storage(str(out)))
    assert record is not None and record.format == 2
    assert len(old_directories(out)) == 5 * len(DATASETS) - 1  # one deleted, then cut
    assert_same_frames(frames(out), fixture_rows)  # format 2, its files alone
    require_current(Storage(str(out)), record)  # a flow started alone may run on it
    prepare(tmp_path)
    assert old_directories(out) == []
    assert_same_frames(frames(out), fixture_rows)


def test_rows_the_previous_version_buffered_are_written_by_the_migration(
    tmp_path: Path, fixture_rows: dict[str, pd.DataFrame]
) -> None:
    """The state's last snapshot holds rows its sinks had not written yet (a run killed
    before it wrote them): the migration writes them, as the run would have."""
    copy_fixture(tmp_path)
    out = tmp_path / "out"
    for namespace in ("game-001", "game-003"):  # never written, as the kill left them
        shutil.rmtree(out / f"party_rates/namespace={namespace}")
        shutil.rmtree(out / f"disconnect_outcomes_1d/namespace={namespace}")
    damaged = frames(out)
    assert len(damaged["party_rates"]) < len(fixture_rows["party_rates"])
    prepare(tmp_path)
    assert_same_frames(frames(out), fixture_rows)


def test_a_migrated_output_continues_as_one_run(tmp_path: Path) -> None:
    """The rest of the topic read into the migrated output: every dataset as one run of
    this version over the whole topic (see test_recovery.py)."""
    uncut = tmp_path / "uncut"
    uncut.mkdir()
    run(uncut, WHOLE, "uncut")
    base = tmp_path / "old"
    base.mkdir()
    copy_fixture(base)
    run(base, WHOLE, "next")
    assert old_directories(base / "out") == []
    assert_same_as(base / "out", uncut / "out")


def as_format_1(out: Path) -> None:
    """Lay a format-2 output out as the previous version wrote it: one file per
    namespace=/date= directory, its record saying format 1."""
    for dataset in DATASETS:
        measures = RATES_FILE_SCHEMA if dataset.startswith("party_rates") else OUTCOMES_FILE_SCHEMA
        for path in sorted((out / dataset).glob("*=*/part-0.parquet")):
            table = pq.read_table(path)
            for namespace in sorted(set(table.column("namespace").to_pylist())):
                rows = table.filter(pc.equal(table.column("namespace"), namespace))
                starts = rows.column("window_start").to_pylist()
                for day in sorted({s.date() for s in starts}):
                    keep = [s.date() == day for s in starts]
                    part = rows.filter(keep).select(measures.names).cast(measures)
                    target = out / old_window_relpath(dataset, namespace, day)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    pq.write_table(part, target)
            shutil.rmtree(path.parent)
    record = json.loads((out / RECORD).read_text())
    (out / RECORD).write_text(json.dumps(record | {"format": 1}, indent=1, sort_keys=True))


def test_an_output_with_a_record_of_format_1_is_switched_keeping_the_record(
    tmp_path: Path,
) -> None:
    """The previous version's output: its record says format 1 and what its rows cover;
    the migration changes the format alone, and the run goes on as if nothing happened."""
    uncut = tmp_path / "uncut"
    uncut.mkdir()
    run(uncut, WHOLE, "uncut")
    base = tmp_path / "old"
    base.mkdir()
    run(base, FIRST, "first")
    out = base / "out"
    want = frames(out)
    as_format_1(out)
    old_record = json.loads((out / RECORD).read_text())
    assert old_record["format"] == 1 and old_directories(out)
    assert_same_frames(frames(out), want)  # the loaders read format 1 as it is
    s = settings_for(base)
    state = StateDir(s.run.state)
    bounds = {p: (m[0].offset(), m[-1].offset() + 1) for p, m in WHOLE.items()}
    prepare_from(s, state, Storage.for_output(s.storage), lambda: bounds)
    new_record = json.loads((out / RECORD).read_text())
    assert new_record == old_record | {"format": 2}
    assert old_directories(out) == []
    assert_same_frames(frames(out), want)
    run(base, WHOLE, "second")
    assert_same_as(out, uncut / "out")


def test_a_namespace_of_any_length_is_written(tmp_path: Path) -> None:
    """Format 2 has no namespace in a path: one far longer than a directory name is a
    row like any other (format 1 made it a dead letter)."""
    from tests.test_flow import FakeMessage

    long_ns = "名" * 3000
    messages = list(WHOLE[0])
    for i, msg in enumerate(messages):
        if b'"PartyDisconnectedEvent"' in msg.value():
            doc = json.loads(msg.value())
            doc["namespace"] = long_ns
            messages[i] = FakeMessage(msg.offset(), msg.key(), json.dumps(doc).encode())
            break
    run(tmp_path, {0: messages}, "long")
    assert long_ns in set(load_party_rates(tmp_path / "out")["namespace"])
    assert long_ns in set(load_disconnect_outcomes(tmp_path / "out")["namespace"])
