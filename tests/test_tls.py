"""Secured Kafka: the job over TLS with a certificate made here; refused trust or credentials
stop it with one line, and secrets stay out of every output.

The embedded broker cannot serve TLS itself (its ``--cert`` and ``--key`` flags refuse to be
given together), so clients reach it through a TLS endpoint on its advertised port,
``TlsFront``, holding a server certificate signed by a CA made for the test. Every
connection a client makes, bootstrap and partition leaders alike, is TLS and verifies that
certificate (chain and host name). Authentication is the broker's own SASL: with
``--authentication`` it takes SCRAM-SHA-512 only.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from flows.tooling.broker import RETENTION, EmbeddedBroker, free_port
from flows.tooling.simulator import SimConfig, generate, produce
from tests.helpers import assert_same_rows, job_rows, reference_rows, run_cli, run_job
from tests.test_cli_errors import _one_clear_line

pytestmark = pytest.mark.broker
MIN = 60_000_000
WINDOW, LATENESS = 5 * MIN, 10 * MIN
SECRET = "Sup3r-Secret-Pa55word"  # given as a SASL password: never printed or stored


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed the broker's certificate
    cert: Path  # the broker's certificate, for 127.0.0.1 and localhost
    key: Path
    other_ca: Path  # a CA that signed nothing here


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_pki(d: Path) -> Pki:
    """A throwaway CA, a server certificate it signs, and an unrelated CA (EC P-256 keys)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE"]
    ca_ext += ["-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    for name in ("ca", "other-ca"):
        subject = ["-subj", f"/CN=party-rates test {name}", "-days", "2", *ca_ext]
        _openssl(d, "req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.pem", *subject)
    _openssl(d, "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
    )
    signed_by_ca = ["-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "2", "-days", "2"]
    server = ["-in", "server.csr", "-extfile", "server.ext", "-out", "server.pem"]
    _openssl(d, "x509", "-req", *server, *signed_by_ca)
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "other-ca.pem")


class TlsFront:
    """TLS on a free loopback port; each connection is relayed to ``backend_port``."""

    def __init__(self, cert: Path, key: Path, backend_port: int) -> None:
        self.backend_port = backend_port
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._relay, "127.0.0.1", 0, ssl=ctx), self.loop
        ).result(timeout=10)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        finally:
            dst.close()

    def stop(self) -> None:
        """Refuse new connections, cut the open ones and end the relay's thread."""

        async def close() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@dataclass(frozen=True)
class TlsBroker:
    bootstrap: str  # the TLS endpoint, which is also the port the broker advertises
    pki: Pki

    @property
    def config(self) -> dict[str, str]:
        """librdkafka settings of a client that trusts the broker's CA."""
        return {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": "SSL",
            "ssl.ca.location": str(self.pki.ca),
        }

    def new_topic(self, name: str, partitions: int = 4) -> str:
        admin = AdminClient(self.config)
        admin.create_topics([NewTopic(name, partitions, 1, config=RETENTION)])[name].result(30)
        return name


@contextmanager
def tls_broker_running(pki: Pki, authentication: bool = False) -> Iterator[TlsBroker]:
    backend = free_port()
    front = TlsFront(pki.cert, pki.key, backend)
    try:
        broker = EmbeddedBroker(
            port=backend, advertised_port=front.port, authentication=authentication
        )
        try:
            yield TlsBroker(broker.bootstrap, pki)
        finally:
            broker.stop()
    finally:
        front.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(pki: Pki) -> Iterator[TlsBroker]:
    with tls_broker_running(pki) as broker:
        yield broker


def read_topic_tls(
    config: dict[str, str], topic: str, partitions: int, timeout_s: float = 30
) -> list[tuple[int, int, bytes | None]]:
    """Every message of the topic as (partition, offset, value), in offset order."""
    consumer = Consumer({**config, "group.id": "test-readback", "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[tuple[int, int, bytes | None]] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, f"{topic} not read back in {timeout_s}s"
            for msg in consumer.consume(10_000, 0.5):
                err = msg.error()
                if err is None:
                    out.append((msg.partition(), msg.offset(), msg.value()))
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                else:
                    raise AssertionError(err.str())
    finally:
        consumer.close()
    return sorted(out)


def files_containing(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_job_runs_over_tls_and_keeps_secrets(tls_broker: TlsBroker, tmp_path: Path) -> None:
    topic = tls_broker.new_topic("tls.mpv2SessionHistory")
    messages, _ = generate(SimConfig(messages=8_000, namespaces=8, hours=3, seed=11))
    produce(tls_broker.bootstrap, topic, messages, dict(tls_broker.config))
    out, state = tmp_path / "out", tmp_path / "state"
    result = run_job(
        tls_broker.bootstrap, topic, out, state,
        "--kafka-config", "security.protocol=SSL",
        "--kafka-config", f"ssl.ca.location={tls_broker.pki.ca}",
        # SASL settings beside SSL are passed through unused; the password is still a secret.
        "--kafka-config", "sasl.username=party-rates",
        "--kafka-config", f"sasl.password={SECRET}",
    )  # fmt: skip

    want = reference_rows(read_topic_tls(tls_broker.config, topic, 4), WINDOW, LATENESS)
    assert_same_rows(job_rows(out), want)
    (manifest_file,) = (out / "_runs").glob("*.json")
    manifest = json.loads(manifest_file.read_text())
    assert manifest["status"] == "completed"
    assert manifest["counts"]["messages"] == len(messages)
    kafka = manifest["settings"]["kafka_config"]
    assert kafka["security.protocol"] == "SSL"
    assert kafka["ssl.ca.location"] == str(tls_broker.pki.ca)
    assert kafka["sasl.username"] == "party-rates"
    assert kafka["sasl.password"] == "***"
    assert SECRET not in result.stderr + result.stdout
    assert files_containing(out, SECRET) == []
    assert files_containing(state, SECRET) == []


@pytest.mark.parametrize("other_ca", [True, False], ids=["another-ca", "system-cas"])
def test_untrusted_certificate_stops_with_one_line(
    tls_broker: TlsBroker, tmp_path: Path, other_ca: bool
) -> None:
    topic = tls_broker.new_topic(f"untrusted-{other_ca}.mpv2SessionHistory", partitions=1)
    ca = [f"ssl.ca.location={tls_broker.pki.other_ca}"] if other_ca else []
    started = time.monotonic()
    result = run_cli(
        "run", "--brokers", tls_broker.bootstrap, "--topic", topic,
        "--output", str(tmp_path / "o"), "--state", str(tmp_path / "s"),
        "--connect-timeout", "5s", "--progress", "off",
        *(f"--kafka-config={kv}" for kv in ["security.protocol=SSL", *ca]), timeout=60,
    )  # fmt: skip

    assert time.monotonic() - started < 30
    assert result.returncode == 3
    line = _one_clear_line(result.stderr)
    assert tls_broker.bootstrap in line
    assert "certificate verify failed" in line
    assert not (tmp_path / "o").exists()


def test_refused_password_stops_with_one_line_and_is_never_shown(pki: Pki, tmp_path: Path) -> None:
    # This broker keeps SCRAM users in memory and adds them only through a listener without
    # authentication, so an authenticating one knows no user: it refuses every password.
    out, state = tmp_path / "o", tmp_path / "s"
    with tls_broker_running(pki, authentication=True) as secured:
        started = time.monotonic()
        result = run_cli(
            "run", "--brokers", secured.bootstrap, "--output", str(out), "--state", str(state),
            "--connect-timeout", "5s", "--progress", "off",
            "--kafka-config", "security.protocol=SASL_SSL",
            "--kafka-config", f"ssl.ca.location={pki.ca}",
            "--kafka-config", "sasl.mechanism=SCRAM-SHA-512",
            "--kafka-config", "sasl.username=party-rates",
            "--kafka-config", f"sasl.password={SECRET}", timeout=60,
        )  # fmt: skip
        elapsed = time.monotonic() - started

    assert elapsed < 30
    assert result.returncode == 3
    line = _one_clear_line(result.stderr)
    assert secured.bootstrap in line
    assert "SASL authentication" in line
    assert SECRET not in result.stderr + result.stdout
    assert not out.exists()
    assert files_containing(state, SECRET) == []
