"""The broker goes away in the middle of a run, then comes back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flows.analysis import load_manifests
from flows.tooling.broker import EmbeddedBroker, free_port
from flows.tooling.simulator import SimConfig, generate, produce
from tests.helpers import Lines, assert_matches_reference, read_topic, run_job, start_slow_run
from tests.tcpproxy import Proxy
from tests.test_crash import assert_resumed

pytestmark = [pytest.mark.broker, pytest.mark.slow]
TOPIC = "mpv2SessionHistory"
# Little prefetch, and (below) small record batches: a cut run has not fetched everything.
SMALL_PREFETCH = ("--kafka-config", "queued.max.messages.kbytes=256")


@pytest.fixture
def proxied_broker():
    """A broker whose clients all go through a proxy on the advertised port."""
    proxy_port = free_port()
    broker = EmbeddedBroker(advertised_port=proxy_port)
    proxy = Proxy(proxy_port, broker.port)
    proxy.start()
    try:
        yield f"127.0.0.1:{proxy_port}", broker, proxy
    finally:
        proxy.stop()
        broker.stop()


def _fill(bootstrap: str, broker: EmbeddedBroker, messages: int, seed: int) -> int:
    """The topic: a few hours of simulated traffic, in small record batches, so a run cut
    below cannot have fetched everything already."""
    broker.create_topic(TOPIC)
    cfg = SimConfig(messages=messages, namespaces=8, hours=6, seed=seed, anonymous_rate=0.02)
    generated, _ = generate(cfg)
    produce(bootstrap, TOPIC, generated, {"batch.num.messages": 200})
    return len(generated)


def test_broker_lost_mid_run_stops_cleanly_and_the_next_run_redoes_it(
    proxied_broker, tmp_path: Path
) -> None:
    bootstrap, broker, proxy = proxied_broker
    total = _fill(bootstrap, broker, messages=60_000, seed=8)

    out, state = tmp_path / "out", tmp_path / "state"
    proc = start_slow_run(bootstrap, TOPIC, out, state, "--broker-timeout", "3s", *SMALL_PREFETCH)
    proxy.stop()
    cut = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert time.monotonic() - cut < 60
    lines = [line for line in err.splitlines() if line.startswith("party-rates: error:")]
    assert len(lines) == 1, err
    assert "lost the Kafka brokers" in lines[0]
    assert "Traceback" not in err
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    proxy.start()
    run_job(bootstrap, TOPIC, out, state)
    assert_matches_reference(out, read_topic(bootstrap, TOPIC, 4))
    # stopped with nothing read after its last snapshot, or interrupted after it
    assert_resumed(out, total, cut=("stopped", "interrupted"))


def test_a_short_broker_outage_is_ridden_out(proxied_broker, tmp_path: Path) -> None:
    """The outage lasts until the job has reported it (it is retrying), then ends: the run
    goes on and completes, with all four datasets as the reference has them."""
    bootstrap, broker, proxy = proxied_broker
    _fill(bootstrap, broker, messages=40_000, seed=9)

    out, state = tmp_path / "out", tmp_path / "state"
    proc = start_slow_run(bootstrap, TOPIC, out, state, "--broker-timeout", "60s", *SMALL_PREFETCH)
    stderr = Lines(proc.stderr)
    proxy.stop()
    stderr.wait_for("(retrying)", timeout=60)  # the outage, held until the job noticed it
    assert proc.poll() is None, "the run ended during the outage"
    proxy.start()
    assert proc.wait(timeout=180) == 0, stderr.text()
    assert "Traceback" not in stderr.all()
    assert_matches_reference(out, read_topic(bootstrap, TOPIC, 4))
    (manifest,) = load_manifests(out)
    assert manifest["status"] == "completed"
