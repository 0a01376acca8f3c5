"""kill -9 in the middle of a run, then a normal run: the same output as no crash."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from flows.analysis import load_dead_letters, load_late_events, load_manifests
from flows.tooling.simulator import SimConfig, generate, produce
from tests.helpers import CLI, REPO, assert_same_rows, job_rows, run_job, start_slow_run

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _log_rows(out: Path) -> tuple[list, list]:
    late = sorted(map(tuple, load_late_events(out)[["partition", "offset"]].values.tolist()))
    dead = sorted(map(tuple, load_dead_letters(out)[["partition", "offset"]].values.tolist()))
    return late, dead


def test_kill_9_mid_run_then_resume(broker, tmp_path: Path) -> None:
    topic = broker.new_topic()
    messages, _ = generate(SimConfig(messages=60_000, namespaces=10, hours=8, seed=3))
    produce(broker.bootstrap, topic, messages)
    run_job(broker.bootstrap, topic, tmp_path / "clean", tmp_path / "clean-state")

    out, state = tmp_path / "out", tmp_path / "state"
    proc = start_slow_run(broker.bootstrap, topic, out, state)
    assert not (out / "_runs").exists(), "the run was already writing its output"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    run_job(broker.bootstrap, topic, out, state)
    assert_same_rows(job_rows(out), job_rows(tmp_path / "clean"))
    assert _log_rows(out) == _log_rows(tmp_path / "clean")
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    manifests = load_manifests(out)
    assert [m["status"] for m in manifests].count("interrupted") == 1
    assert sum(m["counts"]["messages"] for m in manifests) == len(messages)


def test_kill_9_right_after_a_parquet_write_then_resume(broker, tmp_path: Path) -> None:
    """Killed just after it wrote Parquet, before a later snapshot: the replay after resume
    rewrites the same rows, so nothing is doubled."""
    topic = broker.new_topic()
    messages, _ = generate(SimConfig(messages=20_000, namespaces=6, hours=6, seed=4))
    produce(broker.bootstrap, topic, messages)
    run_job(broker.bootstrap, topic, tmp_path / "clean", tmp_path / "clean-state")

    out, state = tmp_path / "out", tmp_path / "state"
    args = ["run", "--brokers", broker.bootstrap, "--topic", topic, "--output", str(out)]
    args += ["--state", str(state), "--progress", "off", "--follow", "--batch-size", "200"]
    args += ["--snapshot-interval", "2s", "--flush-interval", "2s"]
    proc = subprocess.Popen([*CLI, *args], cwd=REPO, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(out.glob("party_rates/*/*/part-0.parquet")) and time.monotonic() < deadline:
        assert proc.poll() is None
        time.sleep(0.01)  # polling the output the running job writes
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    run_job(broker.bootstrap, topic, out, state)
    assert_same_rows(job_rows(out), job_rows(tmp_path / "clean"))
    assert _log_rows(out) == _log_rows(tmp_path / "clean")
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert sum(m["counts"]["messages"] for m in load_manifests(out)) == len(messages)
