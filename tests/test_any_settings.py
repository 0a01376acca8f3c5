"""The reference at any settings: drawn windows, lateness, horizons, shards and roll-ups.

Hypothesis draws the settings a run can be given (window 1 m to 1 h, allowed lateness 0
to 2 h, outcome horizon, dedup horizon, 1 to 8 shards, a roll-up list, none included,
batch size, one or two workers, the event-time drift allowed between partitions) and a
small simulated topic (late events, quick and stale re-sends past the dedup horizon,
events without a player or party, dead letters), runs the dataflow in process (the real
partition readers, steps and sinks; only the consumer is replaced, ``tests/test_flow.py``),
cut into one to three runs on one state, and compares every dataset with the independent
reference at those settings.

The examples are derandomized (the same ones every run, so a failure replays) and a
failing one is shrunk; ``note`` prints the settings and topic of the one that failed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import hypothesis
import hypothesis.strategies as st
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import cluster_main, run_main

from flows.analysis import load_manifests
from flows.core.eventtime import duration_label
from flows.party_rates import build_flow
from flows.settings import Settings
from flows.tooling.simulator import SimConfig, generate
from tests import reference
from tests.helpers import assert_matches_reference, job_outcomes, job_rows, partitioned
from tests.test_flow import FakeMessage, MemorySource

S_US = 1_000_000
Topic = list[tuple[int, int, bytes | None]]


@dataclass(frozen=True)
class Drawn:
    """One point of the settings space, as flags and as the reference's arguments."""

    window_s: int
    lateness_s: int
    horizon_s: int
    dedup_s: int | None
    shards: int
    rollups_s: tuple[int, ...] | None  # None: --rollups left out (the default list)
    batch_size: int
    workers: int
    max_drift_s: int  # 0: partitions read without event-time alignment

    def settings(self, tmp: Path, run: int) -> Settings:
        given: dict[str, object] = {}
        if self.rollups_s is not None:
            given["rollups"] = ",".join(duration_label(s * S_US) for s in self.rollups_s)
        if self.dedup_s is not None:
            given["dedup_horizon"] = f"{self.dedup_s}s"
        return Settings(
            output=str(tmp / "out"),
            state=str(tmp / "state"),
            window=f"{self.window_s}s",
            allowed_lateness=f"{self.lateness_s}s",
            outcome_horizon=f"{self.horizon_s}s",
            shards=self.shards,
            batch_size=self.batch_size,
            max_drift=f"{self.max_drift_s}s",
            progress="off",
            group_id="",
            run_id=f"run-{run:02d}",
            **given,
        )

    def reference_args(self) -> dict[str, object]:
        return {
            "window_us": self.window_s * S_US,
            "lateness_us": self.lateness_s * S_US,
            "horizon_us": self.horizon_s * S_US,
            "dedup_horizon_us": (self.dedup_s or 0) * S_US,
            "rollups_us": None
            if self.rollups_s is None
            else tuple(s * S_US for s in self.rollups_s),
        }


@st.composite
def drawn_settings(draw: st.DrawFn) -> Drawn:
    window_s = draw(st.sampled_from([60, 120, 300, 600, 900, 1800, 3600]) | st.integers(60, 3600))
    multiples = [k * window_s for k in (2, 3, 4, 6, 12, 24, 48)]
    multiples += [s for s in (3600, 86400) if s > window_s and s % window_s == 0]
    rollups = draw(
        st.none() | st.lists(st.sampled_from(sorted(set(multiples))), max_size=3, unique=True)
    )
    return Drawn(
        window_s=window_s,
        lateness_s=draw(st.sampled_from([0, 600, 7200]) | st.integers(0, 7200)),
        horizon_s=draw(st.sampled_from([0, 600, 3600]) | st.integers(0, 3 * 3600)),
        dedup_s=draw(st.none() | st.integers(0, 4 * 3600)),
        shards=draw(st.integers(1, 8)),
        rollups_s=None if rollups is None else tuple(rollups),
        batch_size=draw(st.sampled_from([1, 10_000]) | st.integers(1, 300)),
        workers=draw(st.sampled_from([1, 2])),
        max_drift_s=draw(st.sampled_from([0, 1, 600]) | st.integers(0, 4 * 3600)),
    )


@dataclass(frozen=True)
class SmallTopic:
    """A small simulated topic, its partition count, and where the runs are cut (fractions
    of the messages after every partition has had a counted event)."""

    cfg: SimConfig
    partitions: int
    cuts: tuple[float, ...] = ()


def _topic(
    messages: int, namespaces: int, hours: float, seed: int, shape: str, stale_hours: float
) -> SimConfig:
    return SimConfig(
        messages=messages, namespaces=namespaces, hours=hours, seed=seed, shape=shape,
        late_rate=0.02, duplicate_rate=0.05, malformed_rate=0.005, anonymous_rate=0.05,
        stale_resend_rate=0.03, stale_resend_hours=stale_hours,
    )  # fmt: skip


@st.composite
def small_topics(draw: st.DrawFn) -> SmallTopic:
    cfg = _topic(
        messages=draw(st.integers(200, 1_500)),
        namespaces=draw(st.integers(1, 4)),
        hours=draw(st.sampled_from([1.0, 3.0, 8.0, 30.0])),
        seed=draw(st.integers(0, 2**16)),
        shape=draw(st.sampled_from(["day", "flat"])),
        stale_hours=draw(st.sampled_from([0.25, 1.0, 2.5])),
    )
    cuts = draw(st.lists(st.floats(0, 1, exclude_max=True), max_size=2, unique=True))
    return SmallTopic(cfg, draw(st.integers(1, 3)), tuple(sorted(cuts)))


def _first_counted_everywhere(flat: Topic, partitions: int) -> int | None:
    """How many messages come before every partition has had a counted event (None: a
    partition never has one). Cuts go after it: the README's exception lies before."""
    seen: set[int] = set()
    for i, (p, _off, value) in enumerate(flat):
        if reference.classify(value)[0] == "event":
            seen.add(p)
            if len(seen) == partitions:
                return i + 1
    return None


def run_in_pieces(tmp: Path, drawn: Drawn, flat: Topic, partitions: int, cuts: list[int]) -> None:
    """The topic as one run per piece between cuts, each reading on from the last, on one
    state (the recovery store)."""
    db = tmp / "state" / "recovery"
    db.mkdir(parents=True)
    init_db_dir(db, 1)
    for run, cut in enumerate([*cuts, len(flat)]):
        parts: dict[int, list[FakeMessage]] = {p: [] for p in range(partitions)}
        for p, off, value in flat[:cut]:
            assert value is not None
            parts[p].append(FakeMessage(off, b"k", value))
        settings = drawn.settings(tmp, run)
        flow = build_flow(settings, MemorySource(settings, parts))
        recovery = RecoveryConfig(str(db))
        if drawn.workers == 1:
            run_main(flow, recovery_config=recovery)
        else:
            cluster_main(flow, [], 0, worker_count_per_proc=drawn.workers, recovery_config=recovery)


# Corners every run reaches whatever the draws: no roll-up and several, the default list at
# a window it does not fit, no lateness and two hours, one shard and eight, a window that
# does not divide an hour, roll-ups that do not divide each other, split runs, two
# workers, a day and more (final 1d rows), partitions read in step (a drift of 1 s) and
# without alignment.
CORNERS = [
    (
        Drawn(60, 0, 0, None, 1, (), 1, 1, 0),
        SmallTopic(_topic(1_200, 3, 3.0, 1, "day", 0.25), 3, (0.3, 0.6)),
    ),
    (
        Drawn(420, 7200, 3 * 3600, 4 * 3600, 8, (840, 2940, 5880), 37, 2, 1),
        SmallTopic(_topic(1_500, 2, 8.0, 2, "flat", 2.5), 2, (0.5,)),
    ),
    (
        Drawn(3600, 600, 600, None, 3, None, 10_000, 2, 600),
        SmallTopic(_topic(1_500, 4, 30.0, 3, "day", 1.0), 3, (0.2, 0.9)),
    ),
    (
        Drawn(900, 1200, 3600, 2700, 4, (3600, 86400), 5, 1, 60),
        SmallTopic(_topic(1_500, 2, 30.0, 4, "flat", 2.5), 1, ()),
    ),
    (  # a roll-up (45 m) that does not divide the longest (1 h): its windows end later
        Drawn(900, 0, 0, None, 2, (1800, 2700, 3600), 1, 1, 0),
        SmallTopic(_topic(914, 2, 30.0, 0, "flat", 1.0), 1, ()),
    ),
]


def _cut_points(flat: Topic, partitions: int, fractions: tuple[float, ...]) -> list[int]:
    earliest = _first_counted_everywhere(flat, partitions)
    if earliest is None or earliest >= len(flat):
        return []
    span = len(flat) - earliest
    return sorted({earliest + int(f * span) for f in fractions})


def _examples(test):  # type: ignore[no-untyped-def]
    for drawn, topic in CORNERS:
        test = hypothesis.example(drawn=drawn, topic=topic)(test)
    return test


@hypothesis.settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow, hypothesis.HealthCheck.data_too_large],
)
@_examples
@hypothesis.given(drawn=drawn_settings(), topic=small_topics())
def test_every_dataset_matches_the_reference_at_drawn_settings(
    drawn: Drawn, topic: SmallTopic
) -> None:
    messages, _truth = generate(topic.cfg)
    flat = partitioned(messages, topic.partitions)
    cuts = _cut_points(flat, topic.partitions, topic.cuts)
    hypothesis.note(f"{drawn}\n{topic}: cut at {cuts}")
    with tempfile.TemporaryDirectory() as tmp:
        run_in_pieces(Path(tmp), drawn, flat, topic.partitions, cuts)
        out = Path(tmp) / "out"
        assert_matches_reference(out, flat, **drawn.reference_args())  # type: ignore[arg-type]
        manifests = load_manifests(out)
        assert [m["status"] for m in manifests] == ["completed"] * (len(cuts) + 1)


def test_the_corners_reach_what_they_are_meant_to() -> None:
    """The fixed examples hold what the comment above them says they hold (the drawn ones
    may or may not): a property test whose examples never reach a case does not test it."""
    drawn = [d for d, _t in CORNERS]
    topics = [t for _d, t in CORNERS]
    assert any(d.rollups_s == () for d in drawn)
    assert any(len(d.rollups_s or ()) > 1 for d in drawn)
    assert any(d.rollups_s is None and 86400 % d.window_s == 0 for d in drawn)
    assert {0, 7200} <= {d.lateness_s for d in drawn}
    assert {1, 8} <= {d.shards for d in drawn}
    assert any(3600 % d.window_s for d in drawn)
    assert any(max(d.rollups_s) % n for d in drawn if d.rollups_s for n in d.rollups_s)
    assert any((d.dedup_s or 0) > d.lateness_s for d in drawn)
    assert any(d.workers == 2 for d in drawn) and any(d.batch_size == 1 for d in drawn)
    assert any(len(t.cuts) == 2 for t in topics)
    assert any(t.cfg.hours > 24 for t in topics)
    for d in drawn:
        d.settings(Path("unused"), 0)  # valid settings


def test_stale_copies_and_anonymous_events_reach_the_job_at_non_default_settings(
    tmp_path: Path,
) -> None:
    """One fixed point away from the defaults, checked for what the property test relies
    on: stale copies are late (not duplicates) past the dedup horizon, and duplicates
    within it; events without a player or party are counted, in no distinct count; the
    final roll-ups exist."""
    drawn = Drawn(
        window_s=600, lateness_s=1200, horizon_s=1800, dedup_s=2400, shards=3,
        rollups_s=(3600, 7200), batch_size=50, workers=1, max_drift_s=600,
    )  # fmt: skip
    cfg = SimConfig(
        messages=4_000, namespaces=3, hours=8, seed=5, anonymous_rate=0.1,
        stale_resend_rate=0.02, stale_resend_hours=2.0, duplicate_rate=0.03,
    )  # fmt: skip
    messages, truth = generate(cfg)
    flat = partitioned(messages, 2)
    run_in_pieces(tmp_path, drawn, flat, 2, [])
    out = tmp_path / "out"
    result = assert_matches_reference(out, flat, **drawn.reference_args())  # type: ignore[arg-type]
    # the simulator's account holds: the horizon (40 m) and window (10 m) are within the
    # stale re-sends' two hours less one
    counts = load_manifests(out)[0]["counts"]
    assert (counts["late"], counts["duplicates"]) == (truth.late, truth.duplicates)
    assert {ev.id for ev in result.late} == truth.late_ids
    anonymous = [ev for ev in result.events if not (ev.user and ev.session)]
    assert anonymous, "no event without a player or party reached the job"
    rows = job_rows(out)
    assert rows["disconnected"].sum() == sum(
        ev.name == reference.DISCONNECTED for ev in result.events
    )
    for suffix in ("_1h", "_2h"):
        assert job_rows(out, f"party_rates{suffix}")["is_final"].any()
        assert job_outcomes(out, True, f"disconnect_outcomes{suffix}").shape[0] > 0
