"""What a run reports: log lines as text or JSON, each with the run's id, no secret in any;
the processes of one cluster started host by host share one run id."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from flows.analysis import load_manifests
from flows.tooling.broker import free_port
from flows.tooling.simulator import SimConfig, generate, produce
from tests.helpers import CLI, REPO, run_cli, start

pytestmark = pytest.mark.broker
SMALL = SimConfig(messages=3_000, namespaces=3, hours=2, seed=5)


def test_json_log_lines_carry_the_run_id_and_their_fields(broker, tmp_path: Path) -> None:
    topic = broker.new_topic(partitions=2)
    sent = produce(broker.bootstrap, topic, generate(SMALL)[0])
    result = run_cli(
        "run", "--brokers", broker.bootstrap, "--topic", topic, "--output", str(tmp_path / "o"),
        "--state", str(tmp_path / "s"), "--log-format", "json", "--progress", "log",
        "--kafka-config", "sasl.password=hunter2", "--run-id", "json-run",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert lines and all(line["run_id"] == "json-run" for line in lines)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert all(line["logger"].startswith("party_rates.") for line in lines)
    last = lines[-1]
    assert last["message"].startswith("run json-run completed")
    assert last["messages"] == sent and last["status"] == "completed"
    assert "hunter2" not in result.stderr


def test_text_log_lines_and_the_one_error_line(tmp_path: Path) -> None:
    result = run_cli("run", "--output", str(tmp_path / "o"), "--state", "", "--window", "5m")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "party-rates: error: invalid setting --state / PARTY_RATES_STATE: must not be empty"
    ]


def test_processes_started_host_by_host_share_one_run_id(broker, tmp_path: Path) -> None:
    """``--process-id``/``--addresses`` without ``--run-id``, each process started on its
    own (as on two hosts): one run id in both processes' log lines and one manifest."""
    topic = broker.new_topic(partitions=2)
    produce(broker.bootstrap, topic, generate(SMALL)[0])
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    args = [
        *CLI, "run", "--brokers", broker.bootstrap, "--topic", topic,
        "--output", str(tmp_path / "o"), "--state", str(tmp_path / "s"),
        "--addresses", addresses, "--log-format", "json", "--progress", "off",
    ]  # fmt: skip
    procs = [
        start([*args, "--process-id", str(i)], cwd=REPO, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outs = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outs
    ids = {json.loads(line)["run_id"] for out in outs for line in out.splitlines()}
    (manifest,) = load_manifests(tmp_path / "o")
    assert ids == {manifest["run_id"]}
    assert manifest["status"] == "completed"
