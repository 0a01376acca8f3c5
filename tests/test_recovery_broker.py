"""The output outlives its state, end to end through the broker and the command: a state
lost and then killed while it is rebuilt; another job's state refused in one line.

The topic is the one kept beside the state of format 4 (``tests/fixtures/state-format-4``),
produced partition by partition so its offsets are the fixture's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from confluent_kafka import Producer

from flows.analysis import load_manifests
from flows.edges.source import QUIET
from tests.helpers import run_cli, run_job
from tests.test_recovery import FIRST, WHOLE, Parts, assert_same_as

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def produce_parts(bootstrap: str, topic: str, parts: Parts, after: Parts | None = None) -> None:
    """The messages of ``parts`` (those not already in ``after``), each to its partition."""
    producer = Producer({"bootstrap.servers": bootstrap, "logger": QUIET, "linger.ms": 5})
    for p, msgs in parts.items():
        skip = len(after[p]) if after is not None else 0
        for msg in msgs[skip:]:
            producer.produce(topic, msg.value(), msg.key(), partition=p)
    assert producer.flush(30) == 0


@pytest.fixture(scope="module")
def uncut(broker, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole topic read by one run."""
    topic = broker.new_topic(partitions=3)
    produce_parts(broker.bootstrap, topic, WHOLE)
    base = tmp_path_factory.mktemp("uncut")
    run_job(broker.bootstrap, topic, base / "out", base / "state")
    return base / "out"


def test_killed_while_rebuilding_then_run_again(broker, uncut: Path, tmp_path: Path) -> None:
    topic = broker.new_topic(partitions=3)
    produce_parts(broker.bootstrap, topic, FIRST)
    out, state = tmp_path / "out", tmp_path / "state"
    run_job(broker.bootstrap, topic, out, state)
    produce_parts(broker.bootstrap, topic, WHOLE, after=FIRST)
    shutil.rmtree(state)
    # An epoch about every batch (1 ms), so that the fourth durable snapshot comes after a
    # few batches of the rebuild, however fast the machine reads the topic.
    killed = run_cli(
        "run", "--brokers", broker.bootstrap, "--topic", topic, "--output", str(out),
        "--state", str(state), "--progress", "off", "--batch-size", "50",
        "--snapshot-interval", "1ms",
        env={"PARTY_RATES_FAILPOINT": "after-snapshot@4"},
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    assert "rebuilding the state: the state directory is empty" in killed.stderr
    finished = run_job(broker.bootstrap, topic, out, state)
    assert "rebuilding the state" not in finished.stderr  # it goes on with the rebuilt one
    assert_same_as(out, uncut)
    statuses = [m["status"] for m in load_manifests(out)]
    assert statuses.count("interrupted") == 1


def test_a_second_state_on_an_owned_output_is_refused_in_one_line(broker, tmp_path: Path) -> None:
    topic = broker.new_topic(partitions=3)
    produce_parts(broker.bootstrap, topic, FIRST)
    run_job(broker.bootstrap, topic, tmp_path / "out", tmp_path / "state")
    run_job(broker.bootstrap, topic, tmp_path / "other-out", tmp_path / "other")
    meta_file = tmp_path / "other" / "party_rates_state.json"
    meta = json.loads(meta_file.read_text())  # as if it had been made for this output
    meta_file.write_text(json.dumps(meta | {"output": str(tmp_path / "out")}))
    result = run_cli(
        "run", "--brokers", broker.bootstrap, "--topic", topic, "--output",
        str(tmp_path / "out"), "--state", str(tmp_path / "other"), "--progress", "off",
    )  # fmt: skip
    assert result.returncode == 4
    (line,) = result.stderr.strip().splitlines()
    assert "is written by another state" in line
