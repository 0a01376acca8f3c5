"""The command as the README describes driving it: flags and their environment variables,
librdkafka settings as JSON in the environment, the progress display."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from flows.analysis import load_manifests
from flows.tooling.simulator import SimConfig, generate, produce
from tests.helpers import job_rows, run_cli

pytestmark = pytest.mark.broker
TINY = SimConfig(messages=2_000, namespaces=3, hours=2, seed=31)


@pytest.fixture(scope="module")
def tiny_topic(broker) -> str:
    topic = broker.new_topic(partitions=2)
    produce(broker.bootstrap, topic, generate(TINY)[0])
    return topic


def _run(broker, topic: str, tmp_path: Path, *flags: str, env: dict[str, str] | None = None):
    args = ["--brokers", broker.bootstrap, "--topic", topic]
    args += ["--output", str(tmp_path / "out"), "--state", str(tmp_path / "state")]
    result = run_cli("run", *args, *flags, env=env)
    assert result.returncode == 0, result.stderr
    return result


def test_flags_win_over_the_environment(broker, tiny_topic: str, tmp_path: Path) -> None:
    """Every flag is also PARTY_RATES_<FLAG>; where both are given, the flag wins."""
    env = {"PARTY_RATES_WINDOW": "1m", "PARTY_RATES_SHARDS": "2", "PARTY_RATES_PROGRESS": "off"}
    _run(broker, tiny_topic, tmp_path, "--window", "10m", env=env)
    (manifest,) = load_manifests(tmp_path / "out")
    assert manifest["settings"]["window"] == "10m"  # the flag
    assert manifest["settings"]["shards"] == 2  # the environment, no flag given
    rows = job_rows(tmp_path / "out")
    assert set(rows["window_end"] - rows["window_start"]) == {pd.Timedelta(minutes=10)}
    state = json.loads((tmp_path / "state" / "party_rates_state.json").read_text())
    assert (state["window"], state["shards"]) == ("10m", 2)


def test_kafka_config_in_the_environment_is_json(broker, tiny_topic: str, tmp_path: Path) -> None:
    """``PARTY_RATES_KAFKA_CONFIG`` holds the librdkafka settings as a JSON object; they
    reach the client (a setting it refuses stops the run) and secrets are never stored."""
    config = {"client.id": "from-the-environment", "sasl.password": "hunter2"}
    env = {"PARTY_RATES_KAFKA_CONFIG": json.dumps(config)}
    result = _run(broker, tiny_topic, tmp_path, "--progress", "off", env=env)
    (manifest,) = load_manifests(tmp_path / "out")
    assert manifest["settings"]["kafka_config"] == {
        "client.id": "from-the-environment",
        "sasl.password": "***",
    }
    assert "hunter2" not in result.stderr
    refused = run_cli(
        "run", "--brokers", broker.bootstrap, "--topic", tiny_topic, "--output",
        str(tmp_path / "o2"), "--state", str(tmp_path / "s2"),
        env={"PARTY_RATES_KAFKA_CONFIG": json.dumps({"no.such.setting": "1"})},
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "no.such.setting" in refused.stderr


@pytest.mark.parametrize("mode", ["bar", "log", "off", "auto"])
def test_the_progress_display(broker, tiny_topic: str, tmp_path: Path, mode: str) -> None:
    """``bar``: one line redrawn in place; ``log``: ``party-rates:`` lines; ``off``:
    neither; ``auto`` on something that is not a terminal (here a pipe): log lines."""
    err = _run(broker, tiny_topic, tmp_path, "--progress", mode).stderr
    total = sum(m["counts"]["messages"] for m in load_manifests(tmp_path / "out"))
    final = f"{total:,} msgs of {total:,} (100%)"
    logged = [ln for ln in err.splitlines() if ln.startswith("party-rates: ") and " msgs" in ln]
    redraw = "\x1b[2K"  # erase the line (after a carriage return, read here as a newline)
    if mode == "bar":
        assert redraw in err and final in err.rsplit(redraw, 1)[1]
        assert logged == []
    elif mode in ("log", "auto"):
        assert redraw not in err
        assert logged and final in logged[-1]
    else:
        assert redraw not in err and logged == []
