from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from flows.tooling.broker import EmbeddedBroker
from tests.helpers import end_started


class BrokerHandle:
    """The broker the integration tests use: embedded, or PARTY_RATES_TEST_BROKERS."""

    def __init__(self, bootstrap: str, embedded: EmbeddedBroker | None) -> None:
        self.bootstrap = bootstrap
        self.embedded = embedded

    def new_topic(self, partitions: int = 4) -> str:
        from confluent_kafka.admin import AdminClient, NewTopic

        from flows.tooling.broker import RETENTION

        name = f"t-{uuid.uuid4().hex[:10]}.mpv2SessionHistory"
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        fut = admin.create_topics([NewTopic(name, partitions, 1, config=RETENTION)])[name]
        fut.result(timeout=30)
        return name


@pytest.fixture(scope="session")
def broker() -> Iterator[BrokerHandle]:
    external = os.environ.get("PARTY_RATES_TEST_BROKERS")
    if external:
        yield BrokerHandle(external, None)
        return
    embedded = EmbeddedBroker()
    try:
        yield BrokerHandle(embedded.bootstrap, embedded)
    finally:
        embedded.stop()


@pytest.fixture(autouse=True)
def _end_started_processes() -> Iterator[None]:
    """A job a test started is ended when the test ends, also when it failed or timed out."""
    yield
    end_started()
