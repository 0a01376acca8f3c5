"""Bad settings, unreachable brokers, missing topics and misused state: one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.edges.statedir import StateDir, StateError, state_meta
from flows.settings import Settings
from flows.tooling.broker import free_port
from tests.helpers import run_cli, run_job


def _one_clear_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("party-rates: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(
    ("flag", "value", "word"),
    [
        ("--window", "five minutes", "window"),
        ("--allowed-lateness", "-1m", "allowed-lateness"),
        ("--workers", "0", "workers"),
        ("--rollups", "7m", "not a multiple of the window"),
        ("--rollups", "5m", "not a multiple of the window"),
        ("--kafka-config", "no-equals-sign", "KEY=VALUE"),
        ("--start-at", "yesterday", "start-at"),
        ("--pushgateway", "localhost:9091", "pushgateway"),
        ("--metrics-file", "metrics.txt", "metrics-file"),
        ("--metrics-port", "70000", "metrics-port"),
        ("--retain", "12h", "less than a day"),
    ],
)
def test_bad_setting_stops_with_one_line(tmp_path: Path, flag: str, value: str, word: str) -> None:
    result = run_cli(
        "run", "--output", str(tmp_path / "o"), "--state", str(tmp_path / "s"), f"{flag}={value}"
    )
    assert result.returncode == 2
    assert word in _one_clear_line(result.stderr)
    assert not (tmp_path / "o").exists()


def test_bad_setting_from_environment(tmp_path: Path) -> None:
    env = {"PARTY_RATES_OUTPUT": str(tmp_path / "o"), "PARTY_RATES_STATE": str(tmp_path / "s")}
    result = run_cli("run", env={**env, "PARTY_RATES_WINDOW": "0s"})
    assert result.returncode == 2
    assert "window" in _one_clear_line(result.stderr)


def test_unreachable_broker(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    result = run_cli(
        "run", "--brokers", dead, "--output", str(tmp_path / "o"), "--state", str(tmp_path / "s"),
        "--connect-timeout", "3s", timeout=30,
    )  # fmt: skip
    assert result.returncode == 3
    assert dead in _one_clear_line(result.stderr)
    assert not (tmp_path / "o").exists()


@pytest.mark.broker
def test_missing_topic_lists_what_exists(broker, tmp_path: Path) -> None:
    existing = broker.new_topic(partitions=1)
    result = run_cli(
        "run", "--brokers", broker.bootstrap, "--topic", "no-such-topic",
        "--output", str(tmp_path / "o"), "--state", str(tmp_path / "s"),
    )  # fmt: skip
    assert result.returncode == 3
    line = _one_clear_line(result.stderr)
    assert "no-such-topic" in line
    assert existing in line


@pytest.mark.broker
@pytest.mark.parametrize(
    ("then", "words"),
    [
        (("--window", "1m"), ("--window 1m", "window is 5m")),
        (("--allowed-lateness", "30m"), ("--allowed-lateness 30m", "allowed lateness is 10m")),
        (("--outcome-horizon", "2h"), ("--outcome-horizon 2h", "outcome horizon is 1h")),
        (("--dedup-horizon", "1h"), ("--dedup-horizon 1h", "dedup horizon is 10m")),
        (("--start-at", "latest"), ("--start-at latest", "start is earliest")),
    ],
)
def test_settings_that_change_the_output_meaning_are_refused(
    broker, tmp_path: Path, then: tuple[str, ...], words: tuple[str, ...]
) -> None:
    """Against the output itself: also with its state lost (exit 4, one line naming the
    setting and both values)."""
    topic = broker.new_topic(partitions=1)
    run_job(broker.bootstrap, topic, tmp_path / "o", tmp_path / "s")
    for state in ("s", "lost"):
        result = run_cli(
            "run", "--brokers", broker.bootstrap, "--topic", topic,
            "--output", str(tmp_path / "o"), "--state", str(tmp_path / state), *then,
        )  # fmt: skip
        assert result.returncode == 4
        line = _one_clear_line(result.stderr)
        assert all(w in line for w in words), line
    assert not (tmp_path / "lost" / "party_rates_state.json").exists()  # nothing was made


@pytest.mark.broker
@pytest.mark.parametrize("then", [("--rollups", "1h"), ("--shards", "8")])
def test_changed_shards_or_rollups_rebuild_the_state(
    broker, tmp_path: Path, then: tuple[str, ...]
) -> None:
    """The state remembers what it was made with; another value is refused, and nothing
    is read or written (the later flag wins over the same flag given before it)."""
    topic = broker.new_topic(partitions=1)
    run_job(broker.bootstrap, topic, tmp_path / "o", tmp_path / "s")
    result = run_job(broker.bootstrap, topic, tmp_path / "o", tmp_path / "s", *then)
    assert "rebuilding the state" in result.stderr


@pytest.mark.broker
@pytest.mark.parametrize(
    ("then", "word"),
    [
        (("--topic", "{other topic}"), "does not match the output"),
        (("--output", "{other output}"), "made for output"),
    ],
)
def test_a_state_of_another_topic_or_output_is_refused(
    broker, tmp_path: Path, then: tuple[str, ...], word: str
) -> None:
    topic = broker.new_topic(partitions=1)
    run_job(broker.bootstrap, topic, tmp_path / "o", tmp_path / "s")
    other = {
        "{other topic}": broker.new_topic(partitions=1),
        "{other output}": str(tmp_path / "o2"),
    }
    then = tuple(other.get(arg, arg) for arg in then)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    result = run_cli(
        "run", "--brokers", broker.bootstrap, "--topic", topic, "--output", str(tmp_path / "o"),
        "--state", str(tmp_path / "s"), *then,
    )  # fmt: skip
    assert result.returncode == 4
    assert word in _one_clear_line(result.stderr)
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert after == before


@pytest.mark.broker
def test_second_run_on_same_state_refuses(broker, tmp_path: Path) -> None:
    topic = broker.new_topic(partitions=1)
    with StateDir(str(tmp_path / "s")).locked(None):
        result = run_cli(
            "run", "--brokers", broker.bootstrap, "--topic", topic,
            "--output", str(tmp_path / "o"), "--state", str(tmp_path / "s"),
        )  # fmt: skip
    assert result.returncode == 4
    assert "another run" in _one_clear_line(result.stderr)


@pytest.mark.broker
def test_reused_run_id_is_refused(broker, tmp_path: Path) -> None:
    topic = broker.new_topic(partitions=1)
    run_job(broker.bootstrap, topic, tmp_path / "o", tmp_path / "s", "--run-id", "nightly")
    result = run_cli(
        "run", "--brokers", broker.bootstrap, "--topic", topic, "--output", str(tmp_path / "o"),
        "--state", str(tmp_path / "s"), "--run-id", "nightly",
    )  # fmt: skip
    assert result.returncode == 2
    assert "nightly" in _one_clear_line(result.stderr)


def test_single_process_and_cluster_runs_exclude_each_other(tmp_path: Path) -> None:
    state = StateDir(str(tmp_path / "s"))
    with state.locked(None), pytest.raises(StateError), state.locked(0):
        pass
    with state.locked(0), state.locked(1):  # processes of one cluster share the state
        with pytest.raises(StateError), state.locked(None):
            pass
        with pytest.raises(StateError), state.locked(1):
            pass


def test_kafka_setting_the_client_rejects(tmp_path: Path) -> None:
    result = run_cli(
        "run", "--output", str(tmp_path / "o"), "--state", str(tmp_path / "s"),
        "--kafka-config", "fetch.max.bytes=10",
    )  # fmt: skip
    assert result.returncode == 2
    assert "fetch.max.bytes" in _one_clear_line(result.stderr)


@pytest.mark.parametrize(
    ("meta", "word"),
    [
        ('{"format": 0, "topic": "t"}', "format 0"),
        (None, "holds saved state but no party_rates_state.json"),
        ("older", "has format 3, this version reads 4 and 5"),
    ],
)
def test_unusable_state_without_an_output_record_is_refused(
    tmp_path: Path, meta: str | None, word: str
) -> None:
    """A state this version cannot use is rebuilt from the output's record (tests in
    test_recovery.py); without one, it is refused in one line, before any broker is asked."""
    state = tmp_path / "s"
    (state / "recovery").mkdir(parents=True)
    (state / "recovery" / "part-0.sqlite3").write_bytes(b"old")
    if meta == "older":
        settings = Settings(output=str(tmp_path / "o"), state=str(state))
        meta = json.dumps(
            state_meta(settings.kafka.topic, settings.rules, settings.storage.output)
            | {"format": 3}
        )
    if meta is not None:
        (state / "party_rates_state.json").write_text(meta)
    result = run_cli("run", "--output", str(tmp_path / "o"), "--state", str(state))
    assert result.returncode == 4
    line = _one_clear_line(result.stderr)
    assert word in line and "_table.json" in line


def test_credentials_inside_an_object_store_output_are_refused(tmp_path: Path) -> None:
    result = run_cli(
        "run", "--output", "s3://KEY:hunter2@bucket/prefix", "--state", str(tmp_path / "s")
    )
    assert result.returncode == 2
    assert "--s3-access-key" in _one_clear_line(result.stderr)
    assert "hunter2" not in result.stderr
    assert not (tmp_path / "s").exists()


def test_unknown_failpoint_is_refused(tmp_path: Path) -> None:
    result = run_cli(
        "run", "--output", str(tmp_path / "o"), "--state", str(tmp_path / "s"),
        env={"PARTY_RATES_FAILPOINT": "after-lunch"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "unknown failpoint 'after-lunch'" in _one_clear_line(result.stderr)


def _topic_with_events(broker) -> str:
    from tests.test_job_broker import MIN, T0, _event, _send

    topic = broker.new_topic(partitions=1)
    _send(broker.bootstrap, topic, [_event("PartyDisconnectedEvent", "ns", T0 + MIN)])
    return topic


def test_an_unexpected_failure_exits_1_with_one_line(broker, tmp_path: Path) -> None:
    topic = _topic_with_events(broker)
    result = run_cli(
        "run", "--brokers", broker.bootstrap, "--topic", topic, "--output", str(tmp_path / "o"),
        "--state", str(tmp_path / "s"), "--progress", "off",
        env={"PARTY_RATES_FAILPOINT": "raise-in-batch"},
    )  # fmt: skip
    assert result.returncode == 1
    line = _one_clear_line(result.stderr)
    assert "the run failed" in line and "failpoint raise-in-batch reached" in line


def test_an_output_directory_that_cannot_be_made_exits_5(broker, tmp_path: Path) -> None:
    topic = _topic_with_events(broker)
    (tmp_path / "taken").write_text("a file where the output directory should be")
    result = run_cli(
        "run", "--brokers", broker.bootstrap, "--topic", topic,
        "--output", str(tmp_path / "taken" / "out"), "--state", str(tmp_path / "s"),
        "--progress", "off",
    )  # fmt: skip
    assert result.returncode == 5
    assert str(tmp_path / "taken" / "out") in _one_clear_line(result.stderr)
