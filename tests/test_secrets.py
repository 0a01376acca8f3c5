"""Secrets from files, as a mounted Kubernetes Secret holds them: librdkafka settings
(``--kafka-config-file``) and the object store's secret key (``--s3-secret-key-file``).
They reach the clients, and are never printed, never in the manifest, never in the state.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.analysis import load_manifests
from flows.settings import Settings
from flows.tooling.simulator import SimConfig, generate, produce
from tests.helpers import run_cli, run_job
from tests.s3server import S3Server, seaweedfs_s3
from tests.test_cli_errors import _one_clear_line
from tests.test_tls import SECRET, TlsBroker, files_containing, make_pki, tls_broker_running

SMALL = SimConfig(messages=2_000, namespaces=3, hours=2, seed=51)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    with tls_broker_running(make_pki(tmp_path_factory.mktemp("pki"))) as broker:
        yield broker


@pytest.mark.broker
def test_kafka_settings_from_a_file_reach_the_client_and_are_never_shown(
    tls_broker: TlsBroker, tmp_path: Path
) -> None:
    """Without the file's CA the run could not connect; every value the file gave is
    ``***`` in the manifest, whatever its key's name."""
    topic = tls_broker.new_topic("file.mpv2SessionHistory", partitions=2)
    messages, _ = generate(SMALL)
    produce(tls_broker.bootstrap, topic, messages, dict(tls_broker.config))
    secret_file = tmp_path / "secret" / "kafka.properties"
    secret_file.parent.mkdir()
    secret_file.write_text(
        "# librdkafka settings, from a Secret\n"
        "security.protocol = SSL\n"
        f"ssl.ca.location={tls_broker.pki.ca}\n"
        "\n"
        "sasl.username=party-rates\n"
        f"sasl.password={SECRET}\n"
    )
    out, state = tmp_path / "out", tmp_path / "state"
    result = run_job(
        tls_broker.bootstrap, topic, out, state, "--kafka-config-file", str(secret_file)
    )
    (manifest,) = load_manifests(out)
    assert manifest["status"] == "completed"
    assert manifest["counts"]["messages"] == len(messages)
    kafka = manifest["settings"]["kafka_config"]
    assert set(kafka) == {"security.protocol", "ssl.ca.location", "sasl.username", "sasl.password"}
    assert set(kafka.values()) == {"***"}
    assert manifest["settings"]["kafka_config_file"] == str(secret_file)
    assert SECRET not in result.stderr + result.stdout
    assert files_containing(out, SECRET) == []
    assert files_containing(state, SECRET) == []


def test_a_flag_wins_over_the_file_and_is_shown_as_before(tmp_path: Path) -> None:
    path = tmp_path / "kafka.properties"
    path.write_text("client.id=from-file\nsasl.password=p\nsocket.timeout.ms=1000\n")
    settings = Settings(
        output="o", state="s", kafka_config_file=str(path), kafka_config={"client.id": "flag"}
    )
    config = settings.kafka.client_config
    assert config["client.id"] == "flag" and config["socket.timeout.ms"] == "1000"
    shown = settings.public()["kafka_config"]
    assert shown == {"client.id": "flag", "sasl.password": "***", "socket.timeout.ms": "***"}


@pytest.mark.parametrize(
    ("content", "flag", "says"),
    [
        (f"sasl.password {SECRET}\n", "--kafka-config-file", "line 1 is not KEY=VALUE"),
        (f"# ok\n={SECRET}\n", "--kafka-config-file", "line 2 is not KEY=VALUE"),
        (None, "--kafka-config-file", "No such file"),
        ("\n", "--s3-secret-key-file", "is empty"),
        (None, "--s3-secret-key-file", "No such file"),
    ],
)
def test_an_unusable_secret_file_stops_with_one_line_that_never_shows_it(
    tmp_path: Path, content: str | None, flag: str, says: str
) -> None:
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)
    result = run_cli(
        "run", "--output", str(tmp_path / "o"), "--state", str(tmp_path / "s"), flag, str(path)
    )
    assert result.returncode == 2, result.stderr
    line = _one_clear_line(result.stderr)
    assert flag in line and str(path) in line and says in line
    assert SECRET not in result.stderr


def test_the_s3_secret_key_comes_from_a_file_or_the_environment_not_both(tmp_path: Path) -> None:
    path = tmp_path / "s3-secret"
    path.write_text("s3cr3t-from-a-file\n")
    settings = Settings(output="s3://b/p", state="s", s3_secret_key_file=str(path))
    secret = settings.storage.s3_secret_key
    assert secret is not None and secret.get_secret_value() == "s3cr3t-from-a-file"
    assert "s3cr3t" not in json.dumps(settings.public())
    with pytest.raises(ValueError, match="not both"):
        Settings(output="o", state="s", s3_secret_key_file=str(path), s3_secret_key="x")


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with seaweedfs_s3() as server:
        yield server


@pytest.mark.broker
@pytest.mark.slow
def test_an_s3_output_with_the_secret_key_from_a_file(broker, s3: S3Server, tmp_path: Path) -> None:
    """The right key from the file writes the output; a wrong one is refused (exit 5), so
    the file is what the client used."""
    topic = broker.new_topic(partitions=1)
    produce(broker.bootstrap, topic, generate(SMALL)[0])
    results = []
    for name, key in (("right", s3.secret_key), ("wrong", "wrong-" + s3.secret_key)):
        path = tmp_path / f"{name}-key"
        path.write_text(key + "\n")
        args = ["run", "--brokers", broker.bootstrap, "--topic", topic, "--progress", "off"]
        args += ["--output", f"s3://{s3.bucket}/{name}", "--state", str(tmp_path / name)]
        args += ["--s3-endpoint", s3.endpoint, "--s3-access-key", s3.access_key]
        results.append(run_cli(*args, "--s3-secret-key-file", str(path), timeout=120))
    right, wrong = results
    assert right.returncode == 0, right.stderr
    assert wrong.returncode == 5, wrong.stderr
    for result in results:
        assert s3.secret_key not in result.stderr + result.stdout
