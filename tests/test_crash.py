"""Killed at an exact moment, then run again: the same output as a run never killed.

A failpoint (``PARTY_RATES_FAILPOINT``) makes the process kill itself with SIGKILL at a
named point after its first durable snapshot: between writing a Parquet file's temporary
name and renaming it, just after the rename, or just after a snapshot was committed. The
data spans several days, so settled days are written in the middle of the run. The next
run must resume (not restart) and end with exactly the rows, late events, dead letters,
outcomes and counts of an uninterrupted run.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from flows.analysis import load_manifests, load_party_rates
from flows.tooling.simulator import SimConfig, generate, produce
from tests.helpers import (
    assert_same_output,
    run_cli,
    run_job,
    snapshotted_epoch,
    start_slow_run,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]
DAYS = SimConfig(messages=40_000, namespaces=6, hours=72, seed=4)
SLOW = ("--batch-size", "20", "--snapshot-interval", "100ms")


@pytest.fixture(scope="module")
def days_topic(broker, tmp_path_factory) -> tuple[str, Path, int]:
    """A topic of three simulated days, and the output of one uninterrupted run over it."""
    topic = broker.new_topic()
    messages, _ = generate(DAYS)
    produce(broker.bootstrap, topic, messages)
    clean = tmp_path_factory.mktemp("clean")
    run_job(broker.bootstrap, topic, clean / "out", clean / "state")
    return topic, clean / "out", len(messages)


def _temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


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
# so that the killed run has read something
@pytest.mark.parametrize("failpoint", ["before-rename", "after-rename", "after-snapshot@12"])
def test_killed_at_a_failpoint_then_resumed(
    broker, days_topic, tmp_path: Path, failpoint: str
) -> None:
    topic, clean, total = days_topic
    out, state = tmp_path / "out", tmp_path / "state"
    args = ["--brokers", broker.bootstrap, "--topic", topic, "--output", str(out)]
    args += ["--state", str(state), "--progress", "off", *SLOW]
    killed = run_cli("run", *args, env={"PARTY_RATES_FAILPOINT": failpoint})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert snapshotted_epoch(state) >= 1
    assert not (out / "_runs").exists()  # the manifest is written only at the end
    left = _temp_files(out)
    if failpoint == "before-rename":
        # The file being written is a hidden temporary, readers see the old data only.
        assert len(left) == 1
        visible = ds.dataset(out / "party_rates", format="parquet").files
        assert not any(f.endswith(".tmp") for f in visible)
        load_party_rates(out)  # readable, without the half-done file
    else:
        assert left == []
    if failpoint == "after-rename":
        assert list(out.rglob("part-0.parquet"))

    again = run_job(broker.bootstrap, topic, out, state)
    if failpoint == "before-rename":
        assert "removed 1 temporary files of an earlier run" in again.stderr
    assert _temp_files(out) == []
    assert_same_output(out, clean)
    assert_resumed(out, total)


def test_kill_9_from_outside_mid_run_then_resume(broker, days_topic, tmp_path: Path) -> None:
    """A kill at no particular point (the operating system's, not a failpoint)."""
    topic, clean, total = days_topic
    out, state = tmp_path / "out", tmp_path / "state"
    proc = start_slow_run(broker.bootstrap, topic, out, state)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    run_job(broker.bootstrap, topic, out, state)
    assert _temp_files(out) == []
    assert_same_output(out, clean)
    assert_resumed(out, total)


def test_kill_9_while_following_then_resume(broker, days_topic, tmp_path: Path) -> None:
    """Following writes every flush interval: killed just after such a write."""
    topic, clean, total = days_topic
    out, state = tmp_path / "out", tmp_path / "state"
    args = ["--brokers", broker.bootstrap, "--topic", topic, "--output", str(out)]
    args += ["--state", str(state), "--progress", "off", "--follow", *SLOW]
    args += ["--flush-interval", "200ms"]
    killed = run_cli("run", *args, env={"PARTY_RATES_FAILPOINT": "after-rename@3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_job(broker.bootstrap, topic, out, state)
    assert_same_output(out, clean)
    assert_resumed(out, total)
