"""The dataflow under Bytewax's test runners, with an in-memory stand-in for Kafka.

The partition reader, the windows, the clock and the sinks are the real ones; only the
consumer is replaced, so these runs have no broker and no wall-clock dependence.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.strategies as st
import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import cluster_main, run_main

from flows.analysis import load_manifests
from flows.core.partition import PartitionState
from flows.edges.source import PartitionReader, TopicSource
from flows.edges.statedir import Start, StateDir
from flows.party_rates import build_flow
from flows.settings import Settings
from flows.tooling.simulator import SimConfig, generate
from tests.helpers import REPO, assert_matches_reference, assert_same_output

MIN = 60_000_000
PARTITIONS = 3


class FakeMessage:
    def __init__(self, offset: int, key: bytes, value: bytes) -> None:
        self._o, self._k, self._v = offset, key, value

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes:
        return self._k

    def value(self) -> bytes:
        return self._v

    def error(self) -> None:
        return None


class FakeConsumer:
    """Hands out a partition's messages in small, uneven batches."""

    def __init__(self, messages: list[FakeMessage], start: int) -> None:
        self.messages = messages
        self.pos = start
        self.sizes = itertools.cycle([7, 101, 33, 250])

    def consume(self, n: int, timeout: float) -> list[FakeMessage]:
        take = min(n, next(self.sizes))
        out = self.messages[self.pos : self.pos + take]
        self.pos += len(out)
        return out

    def get_watermark_offsets(self, tp: Any, cached: bool = False) -> tuple[int, int]:
        return 0, len(self.messages)

    def close(self) -> None:
        pass


class MemorySource(TopicSource):
    def __init__(self, settings: Settings, parts: dict[int, list[FakeMessage]]) -> None:
        start = StateDir(settings.run.state).start(settings.rules)
        super().__init__(settings.kafka, settings.rules, start, follow=settings.run.follow)
        self.parts = parts

    def list_parts(self) -> list[str]:
        return [str(p) for p in self.parts]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> PartitionReader:
        p = int(for_part)
        msgs = self.parts[p]
        low = msgs[0].offset() if msgs else 0  # a trimmed partition begins later
        high = msgs[-1].offset() + 1 if msgs else 0
        state, gap = self.initial_state(p, low, high, resume_state)
        consumer = FakeConsumer(msgs, state.next_offset - low)
        return PartitionReader(self, consumer, p, state, high, gap)


def _partitioned(
    n: int = 6_000,
) -> tuple[dict[int, list[FakeMessage]], list[tuple[int, int, bytes]]]:
    messages, _ = generate(SimConfig(messages=n, namespaces=8, hours=4, seed=11))
    parts: dict[int, list[FakeMessage]] = {p: [] for p in range(PARTITIONS)}
    flat = []
    for i, m in enumerate(messages):
        p = int(m.key.hex()[-4:], 16) % PARTITIONS if not m.key.startswith(b"bad") else i % 3
        parts[p].append(FakeMessage(len(parts[p]), m.key, m.value))
        flat.append((p, len(parts[p]) - 1, m.value))
    return parts, flat


def _settings(tmp: Path) -> Settings:
    # no consumer group: there is no broker to commit to
    return Settings(output=str(tmp / "out"), state=str(tmp / "state"), progress="off", group_id="")


@pytest.mark.parametrize("workers", [1, 2])
def test_flow_matches_reference(tmp_path: Path, workers: int) -> None:
    parts, flat = _partitioned()
    settings = _settings(tmp_path)
    flow = build_flow(settings, MemorySource(settings, parts))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    assert_matches_reference(tmp_path / "out", flat)
    (manifest,) = load_manifests(tmp_path / "out")
    assert manifest["status"] == "completed"


def test_resume_from_snapshot_equals_one_run(tmp_path: Path) -> None:
    """A run cut short, resumed from its recovery state, ends like an uncut run."""
    parts, flat = _partitioned()
    settings = _settings(tmp_path)
    db = tmp_path / "recovery"
    db.mkdir()
    init_db_dir(db, 1)
    half = {p: msgs[: len(msgs) // 2] for p, msgs in parts.items()}
    run_main(
        build_flow(settings, MemorySource(settings, half)), recovery_config=RecoveryConfig(str(db))
    )
    later = settings.replace(run_id=settings.run.run_id + "-2")
    run_main(build_flow(later, MemorySource(later, parts)), recovery_config=RecoveryConfig(str(db)))
    assert_matches_reference(tmp_path / "out", flat)
    manifests = load_manifests(tmp_path / "out")
    assert [m["status"] for m in manifests] == ["completed", "completed"]


class GappyConsumer(FakeConsumer):
    """Offsets 0-9, a transaction marker at 10, then messages produced after the run began."""

    def consume(self, n: int, timeout: float) -> list[FakeMessage]:
        out = self.messages[self.pos : self.pos + n]
        self.pos += len(out)
        return out


def test_run_ends_when_the_last_offset_before_the_end_is_a_marker() -> None:
    settings = Settings(output="unused", state="unused", group_id="")
    messages, _ = generate(SimConfig(messages=40, namespaces=2, hours=1, seed=2))
    msgs = [FakeMessage(i, m.key, m.value) for i, m in enumerate(messages[:10])]
    msgs += [FakeMessage(11 + i, m.key, m.value) for i, m in enumerate(messages[10:])]
    source = TopicSource(settings.kafka, settings.rules, Start("earliest", 0, None))
    reader = PartitionReader(source, GappyConsumer(msgs, 0), 0, PartitionState(0, MIN), 11, None)
    (result,) = reader.next_batch()
    assert result.stats.counts.messages == 10
    assert result.stats.next_offset == 11
    with pytest.raises(StopIteration):
        reader.next_batch()


PICKLED_CLASSES = {
    # STATE_FORMAT -> the project's classes its snapshots may pickle (by module path).
    # Moving or changing one of them needs a new STATE_FORMAT and a new entry here.
    1: {("flows.windows", "WindowAgg"), ("flows.outcomes", "OutcomeAgg"), ("flows.items", "Tick")},
    2: {
        ("flows.core.windows", "WindowAgg"),
        ("flows.core.outcomes", "OutcomeAgg"),
        ("flows.core.items", "Tick"),
    },
    3: {
        ("flows.core.outcomes", "OutcomeAgg"),
        ("flows.core.items", "Tick"),
        ("flows.core.rollups", "RollupRates"),
        ("flows.core.rollups", "RollupOutcomes"),
        ("flows.core.rollups", "_Distinct"),
    },
    4: {
        ("flows.core.outcomes", "OutcomeAgg"),
        ("flows.core.items", "Tick"),
        ("flows.core.rollups", "RollupRates"),
        ("flows.core.rollups", "RollupOutcomes"),
        ("flows.core.rollups", "_distinct"),
    },
    5: {
        ("flows.core.outcomes", "OutcomeAgg"),
        ("flows.core.items", "Tick"),
        ("flows.core.rollups", "RollupRates"),
        ("flows.core.rollups", "RollupOutcomes"),
        ("flows.core.rollups", "_distinct"),
        ("flows.core.partition", "PartitionSnapshot"),
    },
}


def _pickled_classes(db: Path) -> set[tuple[str, str]]:
    import io
    import pickle
    import sqlite3

    found: set[tuple[str, str]] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            found.add((module, name))
            return super().find_class(module, name)

    def load(blob: bytes) -> None:
        state = Recorder(io.BytesIO(blob)).load()
        if isinstance(state, bytes) and state[:1] == b"\x80":  # a state pickled by its step
            load(state)

    with sqlite3.connect(db / "part-0.sqlite3") as conn:
        for (blob,) in conn.execute("SELECT ser_change FROM snaps WHERE ser_change IS NOT NULL"):
            load(blob)
    return {(m, n) for m, n in found if m.startswith("flows")}


def test_state_format_names_every_class_the_state_pickles(tmp_path: Path) -> None:
    """A class of the state that moved without a new STATE_FORMAT would make an existing
    ``--state`` fail with a traceback instead of the clear refusal."""
    from flows.edges.statedir import STATE_FORMAT

    parts, _flat = _partitioned()
    settings = _settings(tmp_path)
    db = tmp_path / "recovery"
    db.mkdir()
    init_db_dir(db, 1)
    half = {p: msgs[: len(msgs) // 2] for p, msgs in parts.items()}
    run_main(
        build_flow(settings, MemorySource(settings, half)), recovery_config=RecoveryConfig(str(db))
    )
    found = _pickled_classes(db)
    assert ("flows.core.outcomes", "OutcomeAgg") in found  # the check sees the state
    assert found <= PICKLED_CLASSES[STATE_FORMAT]
    assert max(PICKLED_CLASSES) == STATE_FORMAT
    entries = [frozenset(v) for v in PICKLED_CLASSES.values()]
    assert len(set(entries)) == len(entries), "a new format must differ from the older ones"


def _first_counted_everywhere(flat: list[tuple[int, int, bytes]]) -> int:
    """How many messages of the stream come before every partition has had a counted event."""
    from tests.reference import classify

    seen: set[int] = set()
    for i, (p, _off, value) in enumerate(flat):
        if classify(value)[0] == "event":
            seen.add(p)
            if len(seen) == PARTITIONS:
                return i + 1
    raise AssertionError("a partition never has a counted event")


def _run_in_pieces(out: Path, flat: list[tuple[int, int, bytes]], cuts: list[int]) -> None:
    """The stream as one run per piece between cuts, on one state (recovery store)."""
    db = out / "recovery"
    db.mkdir(parents=True)
    init_db_dir(db, 1)
    for i, cut in enumerate([*cuts, len(flat)]):
        parts: dict[int, list[FakeMessage]] = {p: [] for p in range(PARTITIONS)}
        for p, off, value in flat[:cut]:
            parts[p].append(FakeMessage(off, b"k", value))
        settings = _settings(out).replace(run_id=f"run-{i:02d}")
        flow = build_flow(settings, MemorySource(settings, parts))
        run_main(flow, recovery_config=RecoveryConfig(str(db)))


@pytest.fixture(scope="module")
def uncut(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, Path]:
    """The stream, and the output of one uncut run over it (checked against the reference)."""
    _parts, flat = _partitioned()
    base = tmp_path_factory.mktemp("uncut")
    _run_in_pieces(base, flat, [])
    assert_matches_reference(base / "out", flat)
    return flat, base / "out"


# Derandomized: the same cuts every run, so a failure replays; a failing one is shrunk.
@hypothesis.settings(max_examples=10, deadline=None, derandomize=True, database=None)
@hypothesis.given(data=st.data())
def test_runs_cut_anywhere_equal_one_run(uncut: tuple[list, Path], data: st.DataObject) -> None:
    """Random cut points (after every partition has had a counted event; the README's
    exception before that is tested on its own): the same output as one run, all four
    datasets and the counts, and the reference's."""
    flat, one = uncut
    earliest = _first_counted_everywhere(flat)
    cuts = data.draw(
        st.lists(st.integers(earliest, len(flat) - 1), min_size=1, max_size=3, unique=True)
    )
    with tempfile.TemporaryDirectory() as tmp:
        _run_in_pieces(Path(tmp), flat, sorted(cuts))
        assert_same_output(Path(tmp) / "out", one)
        assert_matches_reference(Path(tmp) / "out", flat)


STORE_READER = """
import json, sys
from flows.edges.statedir import StateDir
store = StateDir(sys.argv[1])
for _line in sys.stdin:
    offsets, _settled = store.durable_offsets()
    print(json.dumps(offsets), flush=True)
"""


class CommitsReadingTheStore:
    """Stands in for the consumer group: at each commit of read positions, reads what the
    recovery store holds at that moment (what the next run would resume from).

    The store is read by a process of its own: a second SQLite library in the process that
    writes the store (Bytewax's) would release that library's file locks when its own
    connection closes, and could find the store's shared memory truncated under it."""

    def __init__(self, state: Path) -> None:
        self.reader = subprocess.Popen(
            [sys.executable, "-c", STORE_READER, str(state)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        self.seen: list[tuple[dict[int, int], dict[int, int]]] = []
        self.lock = threading.Lock()  # the readers of several workers commit

    def commit(self, offsets: dict[int, int]) -> None:
        assert self.reader.stdin is not None and self.reader.stdout is not None
        with self.lock:
            self.reader.stdin.write("read\n")
            self.reader.stdin.flush()
            answer = json.loads(self.reader.stdout.readline())
            durable = {int(p): o for p, o in answer.items()}
            self.seen.append((dict(offsets), durable))

    def take_error(self) -> None:
        return None

    def close(self) -> None:
        assert self.reader.stdin is not None
        self.reader.stdin.close()
        self.reader.wait(timeout=30)


@pytest.mark.parametrize("workers", [1, 2])
def test_no_group_commit_is_ahead_of_the_durable_snapshot(tmp_path: Path, workers: int) -> None:
    """What the job's group commits rest on (Bytewax asks a reader for the next epoch's
    first batch only once its snapshot's epoch is recorded in the recovery store): at every
    commit, the recovery store already holds that position for that partition, so a kill at
    that moment resumes there or later, never before."""
    from datetime import timedelta

    parts, _flat = _partitioned()
    state = tmp_path / "state"
    settings = _settings(tmp_path).replace(batch_size=50)
    db = state / "recovery"
    db.mkdir(parents=True)
    init_db_dir(db, 1)
    source = MemorySource(settings, parts)
    commits = CommitsReadingTheStore(state)
    source.commits = commits  # type: ignore[assignment]
    flow = build_flow(settings, source)
    recovery, epoch = RecoveryConfig(str(db)), timedelta(milliseconds=20)
    if workers == 1:
        run_main(flow, epoch_interval=epoch, recovery_config=recovery)
    else:
        cluster_main(
            flow, [], 0, epoch_interval=epoch, recovery_config=recovery,
            worker_count_per_proc=workers,
        )  # fmt: skip
    commits.close()
    moved = [(offsets, durable) for offsets, durable in commits.seen if any(offsets.values())]
    assert len(moved) >= 2 * PARTITIONS, f"only {len(moved)} commits: the run had few epochs"
    for offsets, durable in commits.seen:
        for p, offset in offsets.items():
            assert offset <= durable.get(p, 0), (p, offset, durable)
