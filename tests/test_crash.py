"""Killed at an exact moment, then run again: the same output as a run never killed.

A failpoint (``PARTY_RATES_FAILPOINT``) makes the process kill itself with SIGKILL at a
named point after its first durable snapshot: between writing a Parquet file's temporary
name and renaming it, just after the rename, just after a snapshot was committed, or just
before or after read positions were committed to the consumer group. The data spans
several days, so settled days are written in the middle of the run. The next run must
resume (not restart) and end with exactly the rows, late events, dead letters, outcomes
and counts of an uninterrupted run.

Every output is compared with the independent reference (``tests/reference.py``) for the
topic, and the uninterrupted run also with the simulator's own account, so a mistake the
job makes the same way with and without the kill is caught too.

The consumer group's offsets (read as monitoring tools read them) are never ahead of where
the next run resumes, whenever the kill came, and equal the last run's ends once it has
completed.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from flows.analysis import load_manifests, load_party_rates
from flows.tooling.simulator import SimConfig, generate, produce
from tests.helpers import (
    assert_as_simulated,
    assert_matches_reference,
    assert_same_output,
    group_offsets,
    job_rows,
    read_topic,
    run_cli,
    run_job,
    snapshotted_epoch,
    start_slow_run,
    total_counts,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]
# Three days: settled days are written mid-run; events without a player or party, and
# copies re-sent past the dedup horizon (late, not duplicates), go through the kills too.
DAYS = SimConfig(
    messages=40_000, namespaces=6, hours=72, seed=4, anonymous_rate=0.02, stale_resend_rate=0.005
)
SLOW = ("--batch-size", "20", "--snapshot-interval", "100ms")
Topic = list[tuple[int, int, bytes | None]]


@pytest.fixture(scope="module")
def days_topic(broker, tmp_path_factory) -> tuple[str, Path, Topic]:
    """A topic of three simulated days, the output of one uninterrupted run over it (equal
    to the reference and the simulator's account), and the topic's messages."""
    topic = broker.new_topic()
    messages, truth = generate(DAYS)
    produce(broker.bootstrap, topic, messages)
    clean = tmp_path_factory.mktemp("clean")
    run_job(broker.bootstrap, topic, clean / "out", clean / "state")
    read = read_topic(broker.bootstrap, topic, 4)
    assert_matches_reference(clean / "out", read)
    assert_as_simulated(clean / "out", total_counts(clean / "out"), messages, truth)
    return topic, clean / "out", read


def assert_the_truth(out: Path, clean: Path, messages: Topic) -> None:
    """All four datasets of runs with a kill equal the reference's, and the clean run's."""
    assert_matches_reference(out, messages)
    assert_same_output(out, clean)


def _temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def new_group() -> str:
    """A consumer group of one test's runs only (the tests share their topic)."""
    return f"crash-{uuid.uuid4().hex[:8]}"


def assert_group_never_ahead(committed: dict[int, int], out: Path) -> None:
    """Offsets committed before a kill are at or behind where the next run resumed, and
    after that run completed they are exactly its ends."""
    *_, resumed = load_manifests(out)
    assert resumed["status"] == "completed"
    for p, offset in committed.items():
        assert offset <= resumed["partitions"][str(p)]["from"], (p, offset, resumed)


def assert_group_at_the_end(bootstrap: str, group: str, topic: str, out: Path) -> None:
    *_, last = load_manifests(out)
    want = {int(p): span["to"] for p, span in last["partitions"].items()}
    assert group_offsets(bootstrap, group, topic) == want


def assert_resumed(out: Path, total: int, cut: tuple[str, ...] = ("interrupted",)) -> None:
    """The cut run's part (``interrupted``: written by the next run from the snapshot it
    resumed from) ends where the next run began, partition by partition: it resumed from
    the snapshot, not from 0, and no message is in two manifests."""
    manifests = load_manifests(out)
    assert [m["status"] for m in manifests][1:] == ["completed"]
    assert manifests[0]["status"] in cut
    killed, resumed = manifests
    assert killed["counts"]["messages"] > 0
    assert sum(m["counts"]["messages"] for m in manifests) == total
    assert set(resumed["partitions"]) == set(killed["partitions"])
    for p, span in resumed["partitions"].items():
        assert span["from"] == killed["partitions"][p]["to"], p
    assert sum(s["from"] for s in resumed["partitions"].values()) > 0


# after-snapshot@12: the twelfth partition snapshot seen durable (about the third epoch),
# so that the killed run has read something; before-snapshot-durable@12: the twelfth
# snapshot taken after the first durable one, before the store records its epoch (the
# next run resumes from the epoch before); before-group-commit@12 likewise (a partition
# commits at most once an epoch); after-group-commit@3: the third answer of the group
# coordinator (the partitions' positions of an epoch often share one request)
@pytest.mark.parametrize(
    "failpoint",
    [
        "before-rename",
        "after-rename",
        "before-snapshot-durable@12",
        "after-snapshot@12",
        "before-group-commit@12",
        "after-group-commit@3",
    ],
)
def test_killed_at_a_failpoint_then_resumed(
    broker, days_topic, tmp_path: Path, failpoint: str
) -> None:
    topic, clean, messages = days_topic
    total = len(messages)
    out, state, group = tmp_path / "out", tmp_path / "state", new_group()
    args = ["--brokers", broker.bootstrap, "--topic", topic, "--output", str(out)]
    args += ["--state", str(state), "--progress", "off", "--group-id", group, *SLOW]
    killed = run_cli("run", *args, env={"PARTY_RATES_FAILPOINT": failpoint})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert snapshotted_epoch(state) >= 1
    committed = group_offsets(broker.bootstrap, group, topic)
    if failpoint.startswith("after-group-commit"):
        assert committed, "the kill came after a commit the broker accepted"
    assert not (out / "_runs").exists()  # the manifest is written only at the end
    left = _temp_files(out)
    if failpoint == "before-rename":
        # The files being written (a flush writes them together) are hidden temporaries,
        # readers see the old data only.
        assert left and all(p.name.startswith(".") for p in left)
        visible = ds.dataset(out, format="parquet").files  # any dataset's may be first
        assert not any(f.endswith(".tmp") for f in visible)
        load_party_rates(out)  # readable, without the half-done files
    elif failpoint == "after-rename":
        assert list(out.rglob("part-0.parquet"))  # the renamed one; its batch's others wait
    else:
        assert left == []

    again = run_job(broker.bootstrap, topic, out, state, "--group-id", group)
    if left:
        assert f"removed {len(left)} temporary files of an earlier run" in again.stderr
    assert _temp_files(out) == []
    assert_the_truth(out, clean, messages)
    assert_resumed(out, total)
    assert_group_never_ahead(committed, out)
    assert_group_at_the_end(broker.bootstrap, group, topic, out)


@pytest.mark.parametrize("failpoint", ["before-group-commit", "after-group-commit"])
def test_killed_around_the_final_group_commit_then_resumed(
    broker, days_topic, tmp_path: Path, failpoint: str
) -> None:
    """A run whose only durable snapshot is its last (one epoch: the snapshot interval is
    longer than the run) commits once, after the dataflow returned: killed just before
    that commit the group has nothing; just after, it has the run's ends. The next run
    resumes at those ends and reads nothing again."""
    topic, clean, messages = days_topic
    out, state, group = tmp_path / "out", tmp_path / "state", new_group()
    args = ["--brokers", broker.bootstrap, "--topic", topic, "--output", str(out)]
    args += ["--state", str(state), "--progress", "off", "--group-id", group]
    args += ["--snapshot-interval", "1h"]
    killed = run_cli("run", *args, env={"PARTY_RATES_FAILPOINT": failpoint})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (first,) = load_manifests(out)  # written when the dataflow ended, before the commit
    assert first["status"] == "completed"
    committed = group_offsets(broker.bootstrap, group, topic)
    ends = {int(p): span["to"] for p, span in first["partitions"].items()}
    assert committed == ({} if failpoint == "before-group-commit" else ends)

    run_job(broker.bootstrap, topic, out, state, "--group-id", group)
    assert_the_truth(out, clean, messages)
    first, resumed = load_manifests(out)
    assert resumed["counts"]["messages"] == 0
    assert {int(p): s["from"] for p, s in resumed["partitions"].items()} == ends
    assert_group_never_ahead(committed, out)
    assert_group_at_the_end(broker.bootstrap, group, topic, out)


def test_kill_9_from_outside_mid_run_then_resume(broker, days_topic, tmp_path: Path) -> None:
    """A kill at no particular point (the operating system's, not a failpoint)."""
    topic, clean, messages = days_topic
    total = len(messages)
    out, state, group = tmp_path / "out", tmp_path / "state", new_group()
    proc = start_slow_run(broker.bootstrap, topic, out, state, "--group-id", group)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    committed = group_offsets(broker.bootstrap, group, topic)
    run_job(broker.bootstrap, topic, out, state, "--group-id", group)
    assert _temp_files(out) == []
    assert_the_truth(out, clean, messages)
    assert_resumed(out, total)
    assert_group_never_ahead(committed, out)
    assert_group_at_the_end(broker.bootstrap, group, topic, out)


def test_kill_9_while_following_then_resume(broker, days_topic, tmp_path: Path) -> None:
    """Following writes every flush interval: killed just after such a write."""
    topic, clean, messages = days_topic
    total = len(messages)
    out, state, group = tmp_path / "out", tmp_path / "state", new_group()
    args = ["--brokers", broker.bootstrap, "--topic", topic, "--output", str(out)]
    args += ["--state", str(state), "--progress", "off", "--follow", *SLOW]
    args += ["--flush-interval", "200ms", "--group-id", group]
    killed = run_cli("run", *args, env={"PARTY_RATES_FAILPOINT": "after-rename@3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    committed = group_offsets(broker.bootstrap, group, topic)
    assert committed, "a following run commits as its snapshots become durable"
    run_job(broker.bootstrap, topic, out, state, "--group-id", group)
    assert_the_truth(out, clean, messages)
    assert_resumed(out, total)
    assert_group_never_ahead(committed, out)
    assert_group_at_the_end(broker.bootstrap, group, topic, out)


# Away from every default: one-minute windows, lateness and horizons of their own, three
# shards, a roll-up list of its own.
OTHER = {"window": "1m", "allowed-lateness": "25m", "outcome-horizon": "20m"}
OTHER |= {"dedup-horizon": "2h", "shards": "3", "rollups": "30m,1d"}


def test_killed_at_other_settings_then_resumed(broker, days_topic, tmp_path: Path) -> None:
    """A kill before a snapshot is durable, at settings far from the defaults: the next
    run resumes, and all four datasets equal the reference at those settings."""
    topic, _clean, messages = days_topic
    out, state, group = tmp_path / "out", tmp_path / "state", new_group()
    flags = [x for k, v in OTHER.items() for x in (f"--{k}", v)]
    args = ["--brokers", broker.bootstrap, "--topic", topic, "--output", str(out)]
    args += ["--state", str(state), "--progress", "off", "--group-id", group, *SLOW, *flags]
    killed = run_cli("run", *args, env={"PARTY_RATES_FAILPOINT": "before-snapshot-durable@20"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    committed = group_offsets(broker.bootstrap, group, topic)
    run_job(broker.bootstrap, topic, out, state, "--group-id", group, *flags)
    minute = 60_000_000
    assert_matches_reference(
        out, messages, window_us=minute, lateness_us=25 * minute, horizon_us=20 * minute,
        dedup_horizon_us=120 * minute, rollups_us=(30 * minute, 1440 * minute),
    )  # fmt: skip
    assert job_rows(out, "party_rates_1d")["is_final"].any()
    assert_resumed(out, len(messages))
    assert_group_never_ahead(committed, out)
    assert_group_at_the_end(broker.bootstrap, group, topic, out)
