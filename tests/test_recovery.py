"""The output outlives its state: a lost, old, unreadable or changed state never costs a row.

In process, with the flow tests' memory source: the topic is the one kept beside the
state of format 4 (``tests/fixtures/state-format-4``: 30 hours over a day boundary, three
partitions); a run reads its first three fifths, then the state is lost, damaged, or
changed, and a second run reads the rest into the same output. A trimmed topic (retention)
is the same partitions with their first messages gone (their offsets kept).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from bytewax.recovery import RecoveryConfig
from bytewax.testing import run_main

from flows.analysis import load_manifests
from flows.edges import recovery
from flows.edges.statedir import META, StateDir, StateError
from flows.edges.storage import Storage
from flows.edges.table import RECORD, TableError, read_record
from flows.party_rates import build_flow
from flows.settings import Settings
from tests.helpers import (
    ROLLUPS,
    assert_matches_reference,
    assert_same_rows,
    dead_rows,
    job_outcomes,
    job_rows,
    late_rows,
    total_counts,
)
from tests.test_flow import FakeMessage, MemorySource

FIXTURE = Path(__file__).parent / "fixtures" / "state-format-4"
Parts = dict[int, list[FakeMessage]]


def _topic() -> tuple[Parts, Parts, list[tuple[int, int, bytes]]]:
    """The kept topic: every message, the part the format-4 state read, and the messages
    as (partition, offset, value)."""
    t = pq.read_table(FIXTURE / "topic.parquet").to_pylist()
    whole: Parts = {}
    first: Parts = {}
    for r in t:
        msg = FakeMessage(r["offset"], r["key"], r["value"])
        whole.setdefault(r["partition"], []).append(msg)
        first.setdefault(r["partition"], [])
        if r["read"]:
            first[r["partition"]].append(msg)
    flat = [(r["partition"], r["offset"], r["value"]) for r in t]
    return whole, first, flat


WHOLE, FIRST, FLAT = _topic()


def run(base: Path, parts: Parts, run_id: str, **settings: Any) -> dict[str, Any]:
    """One scheduled run as ``party-rates run`` makes it, in process: the checks against
    the output and the state, the dataflow, the output's record. Returns its manifest."""
    s = Settings(
        output=str(base / "out"), state=str(base / "state"), progress="off", group_id="",
        run_id=run_id, **settings,
    )  # fmt: skip
    state, storage = StateDir(s.run.state), Storage.for_output(s.storage)
    bounds = {
        p: (msgs[0].offset(), msgs[-1].offset() + 1) if msgs else (0, 0)
        for p, msgs in parts.items()
    }
    view = recovery.prepare(
        state, storage, lambda: bounds, topic=s.kafka.topic, rules=s.rules,
        recompute=s.storage.recompute, run_id=s.run.run_id,
    )  # fmt: skip
    run_main(
        build_flow(s, MemorySource(s, parts), view=view),
        recovery_config=RecoveryConfig(str(state.recovery)),
    )
    state.mark_done(s.run.run_id, 0)
    written = recovery.write_record(
        state, storage, view, topic=s.kafka.topic, rules=s.rules, run_id=s.run.run_id
    )
    assert written is not None
    (manifest,) = [m for m in load_manifests(base / "out") if m["run_id"] == run_id]
    return manifest


def trimmed(parts: Parts, share: float) -> Parts:
    """The partitions as retention leaves them: their first ``share`` of messages gone."""
    return {p: msgs[int(len(msgs) * share) :] for p, msgs in parts.items()}


@pytest.fixture(scope="module")
def uncut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run over the whole topic (checked against the reference)."""
    base = tmp_path_factory.mktemp("uncut")
    run(base, WHOLE, "uncut")
    assert_matches_reference(base / "out", FLAT)
    return base / "out"


def datasets() -> list[str]:
    names = ["party_rates", "disconnect_outcomes"]
    return names + [f"{n}_{label}" for n in names for label in ROLLUPS]


def frame(out: Path, dataset: str) -> pd.DataFrame:
    if dataset.startswith("party_rates"):
        return job_rows(out, dataset)
    return job_outcomes(out, False, dataset)


def counts_once(out: Path) -> dict[str, int]:
    """The manifests' counts with what was read again left out: each message once."""
    total = total_counts(out)
    total["messages"] -= total.pop("reread", 0)
    return total


def assert_same_as(got: Path, want: Path) -> None:
    """Every dataset, the logs, and the counts (each message counted once) as ``want``."""
    for dataset in datasets():
        assert_same_rows(frame(got, dataset), frame(want, dataset))
    assert_same_rows(late_rows(got), late_rows(want))
    assert_same_rows(dead_rows(got), dead_rows(want))
    want_counts = total_counts(want)
    want_counts.pop("reread", None)
    assert counts_once(got) == want_counts


def lose_state(base: Path) -> None:
    shutil.rmtree(base / "state")


def test_a_lost_state_is_rebuilt_exactly(tmp_path: Path, uncut: Path) -> None:
    first = run(tmp_path, FIRST, "first")
    assert first["counts"]["reread"] == 0
    lose_state(tmp_path)
    second = run(tmp_path, WHOLE, "second")
    assert second["rebuild"]["reason"] == "the state directory is empty"
    assert second["rebuild"]["incomplete"] == []
    assert second["counts"]["reread"] > 0  # read again, counted once (in the first run)
    assert_same_as(tmp_path / "out", uncut)


def test_a_state_killed_before_it_wrote_anything_is_rebuilt(tmp_path: Path, uncut: Path) -> None:
    """A state directory left with saved state but no metadata (a rebuild killed before it
    began, or a damaged one) is rebuilt, not refused."""
    run(tmp_path, FIRST, "first")
    (tmp_path / "state" / META).write_text("{not json")
    second = run(tmp_path, WHOLE, "second")
    assert "cannot be read" in second["rebuild"]["reason"]
    assert_same_as(tmp_path / "out", uncut)


def test_lost_state_and_trimmed_topic_keep_every_final_row(tmp_path: Path, uncut: Path) -> None:
    """The topic's older messages are gone to retention when the state is lost: no final
    row changes, the windows that cannot be completed are reported and keep their rows,
    and every other row is the uninterrupted run's."""
    run(tmp_path, FIRST, "first")
    before = {d: frame(tmp_path / "out", d) for d in datasets()}
    record = read_record(Storage(str(tmp_path / "out")))
    assert record is not None
    lose_state(tmp_path)
    second = run(tmp_path, trimmed(WHOLE, 0.55), "second")
    incomplete = second["rebuild"]["incomplete"]
    assert incomplete, "the lost messages change windows that were not final"
    assert any(i["dataset"] == "party_rates_1d" for i in incomplete)
    by_dataset = {d: [(i["from_us"], i["until_us"]) for i in incomplete if i["dataset"] == d]
                  for d in datasets()}  # fmt: skip
    for dataset in datasets():
        after, old = frame(tmp_path / "out", dataset), before[dataset]
        want = frame(uncut, dataset)
        final = old[old["is_final"]]
        kept = after.merge(final, how="inner", on=list(final.columns))
        assert len(kept) == len(final), f"{dataset}: a final row changed"
        starts_us = after["window_start"].astype("int64")
        lacking = pd.Series(False, index=after.index)
        for lo, hi in by_dataset[dataset]:
            lacking |= (starts_us >= lo) & (starts_us < hi)
        # incomplete windows keep what the output held before
        held = after[lacking].reset_index(drop=True)
        old_starts = old["window_start"].astype("int64")
        old_lacking = pd.Series(False, index=old.index)
        for lo, hi in by_dataset[dataset]:
            old_lacking |= (old_starts >= lo) & (old_starts < hi)
        assert_same_rows(held, old[old_lacking].reset_index(drop=True))
        # the rest equals the uninterrupted run
        want_starts = want["window_start"].astype("int64")
        want_lacking = pd.Series(False, index=want.index)
        for lo, hi in by_dataset[dataset]:
            want_lacking |= (want_starts >= lo) & (want_starts < hi)
        assert_same_rows(
            after[~lacking].reset_index(drop=True), want[~want_lacking].reset_index(drop=True)
        )
    # the output's record keeps them, so that no later run writes them either
    third = run(tmp_path, trimmed(WHOLE, 0.55), "third")
    assert third["counts"]["messages"] == 0
    kept_record = read_record(Storage(str(tmp_path / "out")))
    assert kept_record is not None
    assert {(i.dataset, i.from_us, i.until_us) for i in kept_record.incomplete} == {
        (i["dataset"], i["from_us"], i["until_us"]) for i in incomplete
    }


def test_a_state_of_the_previous_format_continues(tmp_path: Path, uncut: Path) -> None:
    """A state (and output, in format 1: one file per namespace=/date= directory) written
    by the version with STATE_FORMAT 4, continued by this one: the output is migrated to
    format 2 and equals an uninterrupted run's."""
    shutil.copytree(FIXTURE / "state", tmp_path / "state")
    shutil.copytree(FIXTURE / "output", tmp_path / "out")
    meta_file = tmp_path / "state" / META
    meta = json.loads(meta_file.read_text())
    assert meta["format"] == 4
    meta_file.write_text(json.dumps(meta | {"output": str(tmp_path / "out")}))
    assert list((tmp_path / "out").glob("*/namespace=*"))
    run(tmp_path, WHOLE, "next")
    assert json.loads(meta_file.read_text())["format"] == 5
    assert not list((tmp_path / "out").glob("*/namespace=*"))
    record = read_record(Storage(str(tmp_path / "out")))
    assert record is not None and record.format == 2 and record.run_id == "next"
    assert_same_as(tmp_path / "out", uncut)


def test_changed_shards_rebuild_the_state(tmp_path: Path, uncut: Path) -> None:
    run(tmp_path, FIRST, "first", shards=4)
    second = run(tmp_path, WHOLE, "second", shards=3)
    assert "shards" in second["rebuild"]["reason"]
    assert_same_as(tmp_path / "out", uncut)


def test_an_added_rollup_starts_from_the_data_still_read(tmp_path: Path, uncut: Path) -> None:
    """A roll-up length added to an existing output: its windows before the data read again
    stay absent (not wrong), the later ones are the uninterrupted run's."""
    run(tmp_path, FIRST, "first", rollups="1h")
    assert not (tmp_path / "out" / "party_rates_1d").exists()
    second = run(tmp_path, WHOLE, "second", rollups="1h,1d")
    assert "roll-ups" in second["rebuild"]["reason"]
    record = read_record(Storage(str(tmp_path / "out")))
    assert record is not None
    since = record.rollups["1d"]
    assert since is not None
    for dataset in datasets():
        got, want = frame(tmp_path / "out", dataset), frame(uncut, dataset)
        if dataset.endswith("_1d"):
            begin = pd.Timestamp(since, unit="us", tz="UTC")
            assert (got["window_start"] >= begin).all()
            want = want[want["window_start"] >= begin].reset_index(drop=True)
            assert not want.empty
        assert_same_rows(got, want)


def test_settings_that_change_the_meaning_are_refused(tmp_path: Path) -> None:
    run(tmp_path, FIRST, "first")
    lose_state(tmp_path)
    with pytest.raises(TableError, match=r"--allowed-lateness 20m .* allowed lateness is 10m"):
        run(tmp_path, WHOLE, "second", allowed_lateness="20m")
    with pytest.raises(TableError, match=r"--dedup-horizon 1h .* dedup horizon is 10m"):
        run(tmp_path, WHOLE, "second", dedup_horizon="1h")


def test_a_second_state_on_an_owned_output_is_refused(tmp_path: Path) -> None:
    run(tmp_path, FIRST, "first")
    other = tmp_path / "other"
    other.mkdir()
    run(other, FIRST, "other")
    shutil.rmtree(other / "out")
    shutil.copytree(tmp_path / "out", other / "out")
    with pytest.raises(StateError, match="is written by another state"):
        run(other, WHOLE, "again")


def test_a_record_is_written_after_the_rows_it_describes(tmp_path: Path) -> None:
    """The record claims nothing before a run has written it: a run whose record is
    missing (killed before it) leaves the output as a run that never wrote one."""
    run(tmp_path, FIRST, "first")
    (tmp_path / "out" / RECORD).unlink()
    lose_state(tmp_path)
    with pytest.raises(TableError, match=r"holds rows but no _table\.json"):
        run(tmp_path, WHOLE, "second")


def test_only_a_deliberate_recompute_replaces_a_final_row(tmp_path: Path, uncut: Path) -> None:
    """A final row made wrong (say by a bug since fixed) stays through any run, also one
    that rebuilds a lost state; ``--recompute`` with an empty state replaces it."""
    import pyarrow as pa

    run(tmp_path, WHOLE, "first")
    files = sorted((tmp_path / "out" / "party_rates").rglob("*.parquet"))
    table = pq.read_table(files[0])
    rows = table.to_pylist()
    assert rows[0]["is_final"]
    rows[0]["disconnected"] += 1000
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), files[0])
    wrong = frame(tmp_path / "out", "party_rates")
    lose_state(tmp_path)
    run(tmp_path, WHOLE, "rebuilt")
    assert_same_rows(frame(tmp_path / "out", "party_rates"), wrong)
    lose_state(tmp_path)
    fixed = run(tmp_path, WHOLE, "recomputed", recompute=True)
    assert fixed["rebuild"] is None
    assert fixed["counts"]["reread"] == fixed["counts"]["messages"]  # counted before
    assert_same_rows(frame(tmp_path / "out", "party_rates"), frame(uncut, "party_rates"))
