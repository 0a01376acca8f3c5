"""``--follow``: keeps consuming, writes closed windows on time, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.analysis import load_manifests
from flows.tooling.simulator import SimConfig, generate, produce
from tests.helpers import (
    CLI,
    REPO,
    assert_matches_reference,
    job_rows,
    read_topic,
    run_job,
    start,
)
from tests.test_crash import assert_resumed

pytestmark = [pytest.mark.broker, pytest.mark.slow]
MIN = 60_000_000


def _wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)  # polling the output a running job writes


def _final_rows(out: Path) -> int:
    try:
        return int(job_rows(out)["is_final"].sum())
    except (FileNotFoundError, OSError, ValueError):
        return 0


def test_follow_writes_as_windows_close_and_resumes(broker, tmp_path: Path) -> None:
    topic = broker.new_topic(partitions=2)
    messages, _ = generate(SimConfig(messages=8_000, namespaces=5, hours=4, seed=5))
    half = len(messages) // 2
    produce(broker.bootstrap, topic, messages[:half])
    out, state = tmp_path / "out", tmp_path / "state"
    args = ["run", "--brokers", broker.bootstrap, "--topic", topic, "--output", str(out)]
    args += ["--state", str(state), "--follow", "--flush-interval", "1s", "--progress", "off"]
    args += ["--snapshot-interval", "1s"]
    proc = start([*CLI, *args], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _final_rows(out) > 0, "the first final rows")
        first = _final_rows(out)
        produce(broker.bootstrap, topic, messages[half:])
        _wait_for(lambda: _final_rows(out) > first, "rows of the data produced later")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped by a signal" in err
    assert "Traceback" not in err

    # A scheduled run on the same state resumes and finishes the job exactly.
    run_job(broker.bootstrap, topic, out, state)
    assert_matches_reference(out, read_topic(broker.bootstrap, topic, 2))
    assert_resumed(out, len(messages), cut=("stopped", "interrupted"))


def test_flow_runs_under_bytewax_run(broker, tmp_path: Path) -> None:
    """The flow is importable for a Bytewax cluster, settings from PARTY_RATES_*."""
    topic = broker.new_topic(partitions=2)
    messages, _ = generate(SimConfig(messages=3_000, namespaces=3, hours=2, seed=9))
    produce(broker.bootstrap, topic, messages)
    env = {
        "PARTY_RATES_BROKERS": broker.bootstrap,
        "PARTY_RATES_TOPIC": topic,
        "PARTY_RATES_OUTPUT": str(tmp_path / "out"),
        "PARTY_RATES_STATE": str(tmp_path / "state"),
        "PARTY_RATES_PROGRESS": "off",
    }
    result = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "flows.party_rates:build_flow()", "-w", "2"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert_matches_reference(tmp_path / "out", read_topic(broker.bootstrap, topic, 2))


def _produce_to(bootstrap: str, topic: str, messages: list, partitions: int) -> None:
    """Messages placed by their key over ``partitions`` (as a producer sees a topic of that
    many), each message to its partition explicitly."""
    import zlib

    from confluent_kafka import Producer

    from flows.edges.source import QUIET

    producer = Producer({"bootstrap.servers": bootstrap, "logger": QUIET, "linger.ms": 20})
    for msg in messages:
        p = zlib.crc32(msg.key) % partitions
        producer.produce(topic, key=msg.key, value=msg.value, partition=p)
        producer.poll(0)
    assert producer.flush(30) == 0


def test_sigint_stops_following_and_an_added_partition_is_read_from_the_next_start(
    broker, tmp_path: Path
) -> None:
    """Ctrl-C (SIGINT) stops a following run with exit 0; the run read the partitions the
    topic had when it started. A partition added afterwards is read from its beginning by
    the next start, which resumes the others where the stopped run left them.

    The embedded broker cannot add partitions (no CreatePartitions): the topic is made
    again with one more, its old partitions holding the same messages at the same offsets,
    which is what the job can see of partitions added."""
    if broker.embedded is None:
        pytest.skip("needs the embedded broker to delete and recreate topics")
    cfg = SimConfig(messages=8_000, namespaces=4, hours=4, seed=15, late_rate=0.0)
    messages, _ = generate(cfg)
    first, later = messages[: len(messages) // 2], messages[len(messages) // 2 :]
    topic = broker.new_topic(partitions=2)
    _produce_to(broker.bootstrap, topic, first, 2)
    out, state = tmp_path / "out", tmp_path / "state"
    args = ["run", "--brokers", broker.bootstrap, "--topic", topic, "--output", str(out)]
    args += ["--state", str(state), "--follow", "--flush-interval", "1s", "--progress", "off"]
    args += ["--snapshot-interval", "1s"]
    proc = start([*CLI, *args], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _final_rows(out) > 0, "the first final rows")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped by a signal" in err and "Traceback" not in err
    (stopped,) = load_manifests(out)
    assert stopped["status"] == "stopped" and set(stopped["partitions"]) == {"0", "1"}

    broker.embedded.delete_topic(topic)
    broker.embedded.create_topic(topic, partitions=3)
    _produce_to(broker.bootstrap, topic, first, 2)  # the old partitions as they were
    _produce_to(broker.bootstrap, topic, later, 3)  # then traffic over all three
    run_job(broker.bootstrap, topic, out, state)
    # (a stop that came after the last snapshot is rewritten "interrupted", to that snapshot)
    stopped, resumed = load_manifests(out)
    assert stopped["status"] in ("stopped", "interrupted") and resumed["status"] == "completed"
    assert resumed["partitions"]["2"]["from"] == 0
    for p in ("0", "1"):
        assert resumed["partitions"][p]["from"] == stopped["partitions"][p]["to"]
    assert resumed["partitions"]["2"]["to"] > 0 and not resumed["gaps"]
    assert_matches_reference(out, read_topic(broker.bootstrap, topic, 3))
