"""Operable like any Kafka consumer: consumer-group offsets, Prometheus metrics, --start-at.

Every server is real and started here: the embedded broker (the session fixture), Bytewax's
own Dataflow API server (started by the job), and a Prometheus Pushgateway (the Debian
package ``prometheus-pushgateway``, which ``make test`` installs where it is missing).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from bytewax.recovery import init_db_dir
from confluent_kafka import Consumer
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flows.analysis import load_manifests
from flows.edges import group
from flows.edges.group import group_commits
from flows.edges.manifest import manifest_path
from flows.edges.metrics import RESULTS, RunMetrics
from flows.edges.source import seek_offset
from flows.edges.statedir import STATE_FORMAT, start_us_for
from flows.edges.storage import Storage
from flows.failpoints import Failpoints
from flows.run import commit_final_positions
from flows.settings import Settings, normalise_start
from flows.tooling.broker import free_port
from flows.tooling.simulator import SimConfig, generate, produce
from tests import reference
from tests.helpers import (
    CLI,
    assert_matches_reference,
    assert_same_rows,
    group_offsets,
    job_outcomes,
    job_rows,
    read_topic,
    run_cli,
    run_job,
    start,
)

MIN = 60_000_000
WINDOW, LATENESS, HORIZON = 5 * MIN, 10 * MIN, 60 * MIN
PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"
SMALL = SimConfig(messages=6_000, namespaces=4, hours=3, seed=21)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# --- helpers -------------------------------------------------------------------------------


def _deadline_loop(what: str, timeout: float = 60) -> Iterator[None]:
    """Yields until the caller breaks; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        yield
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)  # polling a server a test started


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (sample name, labels), as prometheus_client reads it."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def pick(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """Samples of one name whose labels include ``labels``."""
    want = set(labels.items())
    return {lab: v for (n, lab), v in samples.items() if n == name and want <= lab}


def by_label(samples: Samples, name: str, label: str, **labels: str) -> dict[str, float]:
    return {dict(lab)[label]: v for lab, v in pick(samples, name, **labels).items()}


def one(samples: Samples, name: str, **labels: str) -> float:
    (value,) = pick(samples, name, **labels).values()
    return value


def scrape(url: str) -> Samples | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return parse(response.read().decode())
    except OSError:
        return None


def topic_ends(bootstrap: str, topic: str, partitions: int) -> dict[str, int]:
    ends: dict[str, int] = {str(p): 0 for p in range(partitions)}
    for p, offset, _value in read_topic(bootstrap, topic, partitions):
        ends[str(p)] = max(ends[str(p)], offset + 1)
    return ends


def manifest_results(manifest: dict[str, Any]) -> dict[str, float]:
    """The manifest's counts under the metric's result names."""
    return {RESULTS[k]: float(v) for k, v in manifest["counts"].items() if k != "messages"}


def as_in_manifest(samples: Samples, **labels: str) -> dict[str, float]:
    """The scraped counters by result, as the manifest counts them: events found late at
    their window moved from counted to late."""
    results = by_label(samples, "party_rates_messages_total", "result", **labels)
    moved = sum(pick(samples, "party_rates_late_at_window_total", **labels).values())
    if results:
        results["counted"] -= moved
        results["late"] += moved
    return results


def assert_counters_never_decrease(before: Samples, after: Samples) -> None:
    for (name, labels), value in after.items():
        if name.endswith("_total") and (name, labels) in before:
            assert value >= before[(name, labels)], (name, dict(labels))


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive free loopback ports (a cluster's metrics ports)."""
    for _ in range(50):
        first = free_port()
        try:
            for port in range(first, first + n):
                with socket.socket() as s:
                    s.bind(("0.0.0.0", port))
        except OSError:
            continue
        return first
    raise AssertionError("no run of free ports found")


# --- consumer-group offsets ------------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.parametrize("processes", [1, 2])
def test_group_offsets_are_the_manifest_ends_after_a_scheduled_run(
    broker, tmp_path: Path, processes: int
) -> None:
    """What monitoring tools read from the group equals where the state says the job is;
    with two processes too (process 0 commits every partition from the recovery store)."""
    topic = broker.new_topic(partitions=3)
    messages, _ = generate(SMALL)
    produce(broker.bootstrap, topic, messages)
    out, state, group = tmp_path / "out", tmp_path / "state", f"g-{uuid.uuid4().hex[:8]}"
    extra = ["--group-id", group, "--processes", str(processes)]
    run_job(broker.bootstrap, topic, out, state, *extra, "--snapshot-interval", "100ms")
    (first,) = load_manifests(out)
    ends = {int(p): s["to"] for p, s in first["partitions"].items()}
    assert ends == {int(p): e for p, e in topic_ends(broker.bootstrap, topic, 3).items()}
    assert group_offsets(broker.bootstrap, group, topic) == ends

    more, _ = generate(SimConfig(messages=900, namespaces=4, hours=1, seed=22))
    produce(broker.bootstrap, topic, more)
    run_job(broker.bootstrap, topic, out, state, *extra)
    _first, second = load_manifests(out)
    assert second["status"] == "completed"
    moved = {int(p): s["to"] for p, s in second["partitions"].items()}
    assert sum(moved.values()) == sum(ends.values()) + len(more)
    assert group_offsets(broker.bootstrap, group, topic) == moved


@pytest.mark.broker
def test_an_empty_group_id_commits_nothing(broker, tmp_path: Path) -> None:
    topic = broker.new_topic(partitions=2)
    produce(broker.bootstrap, topic, generate(SimConfig(messages=1_000, seed=23))[0])
    run_job(broker.bootstrap, topic, tmp_path / "out", tmp_path / "state", "--group-id", "")
    assert group_offsets(broker.bootstrap, "party-rates", topic) == {}
    (manifest,) = load_manifests(tmp_path / "out")
    assert manifest["status"] == "completed"
    assert manifest["settings"]["group_id"] == ""


@pytest.mark.broker
def test_a_failing_group_commit_is_reported_once_and_the_run_goes_on(
    broker, tmp_path: Path
) -> None:
    """A group another consumer is subscribed to refuses the job's commits (Kafka answers a
    commit from outside the group's generation with UNKNOWN_MEMBER_ID), as a group the job
    has no right on would: one line on stderr, the reason in the manifest, the run
    completes with every number right, and the failures never count as lost brokers."""
    topic = broker.new_topic(partitions=2)
    messages, _ = generate(SMALL)
    produce(broker.bootstrap, topic, messages)
    group = f"busy-{uuid.uuid4().hex[:8]}"
    member = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            # short timeouts: the broker holds a join for up to the rebalance timeout
            "session.timeout.ms": 6000,
            "max.poll.interval.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    member.subscribe([topic])
    for _ in _deadline_loop("the other consumer to join the group", 30):
        member.poll(0.2)
        if member.assignment():
            break
    stop = threading.Event()
    keep = threading.Thread(target=lambda: [member.poll(0.2) for _ in iter(stop.is_set, True)])
    keep.start()
    try:
        result = run_job(
            broker.bootstrap, topic, tmp_path / "out", tmp_path / "state", "--group-id", group,
            "--snapshot-interval", "100ms", "--batch-size", "20", "--broker-timeout", "1s",
            "--metrics-file", str(tmp_path / "m.prom"),
        )  # fmt: skip
    finally:
        stop.set()
        keep.join(timeout=30)
        member.close()
    lines = [line for line in result.stderr.splitlines() if "cannot commit" in line]
    assert len(lines) == 1, result.stderr
    assert group in lines[0]
    assert "Traceback" not in result.stderr
    (manifest,) = load_manifests(tmp_path / "out")
    assert manifest["status"] == "completed"
    assert "Unknown member" in manifest["group_commit_error"]
    commits = by_label(
        parse((tmp_path / "m.prom").read_text()), "party_rates_last_run_group_commits", "result"
    )
    assert commits["failed"] > 1 and commits["ok"] == 0  # every one failed, reported once
    assert_matches_reference(tmp_path / "out", read_topic(broker.bootstrap, topic, 2))


class _Settled:
    """A state directory whose recovery store holds these positions, every worker settled."""

    def __init__(self, offsets: dict[int, int]) -> None:
        self.offsets = offsets

    def durable_offsets(self) -> tuple[dict[int, int], bool]:
        return dict(self.offsets), True


def _group_settings(bootstrap: str, topic: str, tmp_path: Path, **more: Any) -> Settings:
    group = f"g-{uuid.uuid4().hex[:8]}"
    return Settings(
        brokers=bootstrap, topic=topic, output=str(tmp_path / "out"),
        state=str(tmp_path / "state"), group_id=group, progress="off", **more,
    )  # fmt: skip


@pytest.fixture
def in_process_commits() -> Iterator[None]:
    """Commits made in the test process itself are forgotten after the test (their admin
    client would otherwise outlive the broker, retrying it until the process exits)."""
    yield
    group._CURRENT.clear()


@pytest.mark.broker
@pytest.mark.usefixtures("in_process_commits")
def test_a_commit_failure_no_batch_reported_reaches_the_manifest_at_the_end(
    broker, tmp_path: Path
) -> None:
    """A commit that failed after the run's last batch (no batch took its reason to the
    manifest) is recorded in the manifest even when the final commit then succeeds."""
    topic = broker.new_topic(partitions=1)
    settings = _group_settings(broker.bootstrap, topic, tmp_path)
    storage = Storage.for_output(settings.storage)
    written = json.dumps({"group_commit_error": None}).encode()
    storage.write_bytes(manifest_path(settings.run.run_id), written)
    failpoints = Failpoints()
    commits = group_commits(
        settings.kafka.client_config, settings.kafka.group_id, topic, failpoints
    )
    commits.failed("the coordinator went away")  # a reader's commit, answered after its batch
    commit_final_positions(settings, _Settled({0: 0}), storage, failpoints, settled=True)
    assert group_offsets(broker.bootstrap, settings.kafka.group_id, topic) == {0: 0}
    manifest = json.loads(storage.read_bytes(manifest_path(settings.run.run_id)) or b"{}")
    assert manifest["group_commit_error"] == "the coordinator went away"


@pytest.mark.broker
@pytest.mark.usefixtures("in_process_commits")
def test_other_processes_end_with_their_partitions_at_the_final_positions(
    broker, tmp_path: Path
) -> None:
    """A process other than 0 may end a run with a reader's commit of an earlier snapshot
    still in flight, which could reach the group after process 0's final commit: it waits
    for it and then commits the final positions of the partitions it committed."""
    topic = broker.new_topic(partitions=2)
    produce(broker.bootstrap, topic, generate(SimConfig(messages=500, namespaces=2, seed=25))[0])
    final = {int(p): e for p, e in topic_ends(broker.bootstrap, topic, 2).items()}
    assert min(final.values()) > 1
    settings = _group_settings(
        broker.bootstrap, topic, tmp_path, process_id=1, addresses="127.0.0.1:1;127.0.0.1:2"
    )
    failpoints = Failpoints()
    commits = group_commits(
        settings.kafka.client_config, settings.kafka.group_id, topic, failpoints
    )
    commits.commit({0: 1})  # its reader of partition 0, at the run's end
    commit_final_positions(settings, _Settled(final), None, failpoints, settled=True)
    # Its own partition only: process 0 commits every partition.
    assert group_offsets(broker.bootstrap, settings.kafka.group_id, topic) == {0: final[0]}


# --- metrics while following -----------------------------------------------------------------


def _follow(broker, topic: str, tmp_path: Path, port: int, *extra: str) -> Any:
    args = ["run", "--brokers", broker.bootstrap, "--topic", topic]
    args += ["--output", str(tmp_path / "out"), "--state", str(tmp_path / "state")]
    args += ["--progress", "off", "--follow", "--snapshot-interval", "500ms"]
    args += ["--flush-interval", "1s", "--metrics-port", str(port), *extra]
    work = tmp_path / "cwd"
    work.mkdir()
    return start([*CLI, *args], cwd=work, stderr=subprocess.PIPE, text=True)


def _stop(proc: Any) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped by a signal" in err
    return str(err)


@pytest.mark.broker
@pytest.mark.slow
def test_a_following_run_serves_its_metrics_through_bytewax(broker, tmp_path: Path) -> None:
    topic = broker.new_topic(partitions=3)
    messages, _ = generate(SMALL)
    produce(broker.bootstrap, topic, messages)
    flat = read_topic(broker.bootstrap, topic, 3)
    ends = topic_ends(broker.bootstrap, topic, 3)
    want = reference.run(flat, WINDOW, LATENESS)
    assert want.watermark is not None
    port = free_port()
    proc = _follow(broker, topic, tmp_path, port)
    got: Samples = {}
    try:
        for _ in _deadline_loop("the metrics of everything read and written"):
            scraped_after = time.time()
            previous, got = got, scrape(f"http://127.0.0.1:{port}/metrics") or {}
            assert_counters_never_decrease(previous, got)
            results = as_in_manifest(got, topic=topic)
            lags = by_label(got, "party_rates_lag_messages", "partition", topic=topic)
            written = pick(got, "party_rates_files_written_total", dataset="party_rates")
            watermarks = pick(got, "party_rates_watermark_timestamp_seconds")
            read_all = sum(results.values()) == len(messages) and len(lags) == 3
            settled = results.get("counted") == want.counts["counted"]  # late moves settled
            # the clock takes the last progress after the manifest counted it
            clocked = list(watermarks.values()) == [want.watermark / 1e6]
            if read_all and settled and clocked and written:
                break
    finally:
        err = _stop(proc)
    assert "Traceback" not in err
    # Served by Bytewax's own server: its metrics are there too.
    assert any(name.startswith("bytewax_") for name, _labels in got)
    assert set(results) == set(RESULTS.values())
    assert sum(results.values()) == len(messages)
    counts = want.counts
    assert results["counted"] == counts["counted"] and results["late"] == counts["late"]
    assert results["dead_letter"] == counts["dead_letters"]
    assert results["duplicate"] == counts["duplicates"]
    assert results["before_start"] == 0
    nxt = by_label(got, "party_rates_next_offset", "partition", topic=topic)
    end = by_label(got, "party_rates_end_offset", "partition", topic=topic)
    assert nxt == {p: float(e) for p, e in ends.items()}
    assert end == nxt
    assert lags == {p: 0.0 for p in ends}
    watermark = one(got, "party_rates_watermark_timestamp_seconds", topic=topic)
    assert watermark == want.watermark / 1e6
    age = one(got, "party_rates_watermark_age_seconds", topic=topic)
    assert scraped_after - watermark <= age <= time.time() - watermark  # computed at scrape
    assert one(got, "party_rates_rows_written_total", dataset="party_rates") > 0
    assert one(got, "party_rates_run_duration_seconds", topic=topic) > 0
    assert not pick(got, "party_rates_last_success_timestamp_seconds")  # not while following
    assert not [name for name, _labels in got if "_last_run_" in name]  # counters here
    (info,) = pick(got, "party_rates_build_info")
    assert dict(info)["state_format"] == str(STATE_FORMAT)
    # The metrics and the manifest count from the same totals.
    (manifest,) = load_manifests(tmp_path / "out")
    assert manifest["status"] == "stopped"
    assert manifest_results(manifest) == results
    # Bytewax's dataflow.json goes under the state directory, not the working directory.
    assert (tmp_path / "state" / "api" / "process-0" / "dataflow.json").exists()
    assert not (tmp_path / "cwd" / "dataflow.json").exists()


@pytest.mark.broker
@pytest.mark.slow
def test_each_process_of_a_cluster_serves_its_own_metrics(broker, tmp_path: Path) -> None:
    """Port = the setting plus the process id. Each process exports the partitions it
    reads; the counts come from the process that holds the manifest, the watermark from
    the one that holds the clock; together they are the whole run."""
    topic = broker.new_topic(partitions=4)
    messages, _ = generate(SMALL)
    produce(broker.bootstrap, topic, messages)
    ends = topic_ends(broker.bootstrap, topic, 4)
    port = free_ports(2)
    proc = _follow(broker, topic, tmp_path, port, "--processes", "2")
    urls = [f"http://127.0.0.1:{port + i}/metrics" for i in range(2)]
    try:
        for _ in _deadline_loop("both processes' metrics of everything read"):
            got = [scrape(url) for url in urls]
            if None in got:
                continue
            assert got[0] is not None and got[1] is not None
            positions = [by_label(g, "party_rates_next_offset", "partition") for g in got]
            read = sum(sum(as_in_manifest(g).values()) for g in got)
            merged = {**positions[0], **positions[1]}
            # the watermark: once every partition has reported to the clock
            with_watermark = [g for g in got if pick(g, "party_rates_watermark_timestamp_seconds")]
            read_all = merged == {p: float(e) for p, e in ends.items()}
            if read == len(messages) and read_all and with_watermark:
                break
    finally:
        _stop(proc)
    assert positions[0] and positions[1], "each process reads some partitions"
    assert not set(positions[0]) & set(positions[1])
    with_counts = [g for g in got if pick(g, "party_rates_messages_total")]
    assert len(with_counts) == 1
    assert len(with_watermark) == 1


def test_counters_never_step_down_when_an_event_moves_to_late() -> None:
    """The manifest moves an event found late at its window from counted to late; the
    scraped counters keep counting up and say how many moved, the run totals are the
    manifest's."""
    metrics = RunMetrics()
    metrics.reset("t")
    counts = {key: 0 for key in RESULTS}
    metrics.set_counts({**counts, "counted": 10, "late": 1})
    before = parse(generate_latest(_Only(metrics.collect)).decode())
    metrics.moved_late(2)
    metrics.set_counts({**counts, "counted": 8, "late": 3})
    after = parse(generate_latest(_Only(metrics.collect)).decode())
    assert_counters_never_decrease(before, after)
    assert by_label(after, "party_rates_messages_total", "result")["counted"] == 10
    assert one(after, "party_rates_late_at_window_total") == 2
    assert as_in_manifest(after)["counted"] == 8 and as_in_manifest(after)["late"] == 3
    totals = parse(generate_latest(_Only(metrics.collect_run_totals)).decode())
    assert by_label(totals, "party_rates_last_run_messages", "result")["counted"] == 8


class _Only:
    """Stands for a registry whose only collector is ``collect`` (for generate_latest)."""

    def __init__(self, collect: Any) -> None:
        self.collect = collect


def test_a_metrics_port_in_use_is_refused(tmp_path: Path) -> None:
    """Bytewax's server would panic on it, which stops a multi-worker run without a word."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "run", "--output", str(tmp_path / "o"), "--state", str(tmp_path / "s"),
            "--metrics-port", str(port), "--connect-timeout", "1s",
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("party-rates: error:")]
    assert len(lines) == 1 and f"--metrics-port: port {port}" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


# --- metrics of scheduled runs: Pushgateway and textfile ---------------------------------------


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory) -> Iterator[str]:
    """A real Prometheus Pushgateway on a free loopback port."""
    binary = shutil.which("prometheus-pushgateway") or PUSHGATEWAY
    if not Path(binary).exists():
        pytest.fail(
            "prometheus-pushgateway is not installed (Debian package prometheus-pushgateway): "
            "`make test` installs it with apt-get where apt is available; install it and "
            "run the tests again"
        )
    port = free_port()
    log = tmp_path_factory.mktemp("pushgateway") / "log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{port}"], stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in _deadline_loop("the Pushgateway to be ready", 30):
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                continue
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _pushed(gateway: str, topic: str) -> Samples:
    got = scrape(f"{gateway}/metrics")
    assert got is not None
    mine = {"job": "party-rates", "topic": topic, "process": "0"}
    return {k: v for k, v in got.items() if set(mine.items()) <= k[1]}


@pytest.mark.broker
def test_scheduled_runs_push_their_metrics_and_write_a_textfile(
    broker, pushgateway: str, tmp_path: Path
) -> None:
    topic = broker.new_topic(partitions=3)
    messages, _ = generate(SMALL)
    produce(broker.bootstrap, topic, messages)
    out, state = tmp_path / "out", tmp_path / "state"
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    prom = textfiles / "party_rates.prom"
    before = time.time()
    run_job(
        broker.bootstrap, topic, out, state, "--pushgateway", pushgateway,
        "--metrics-file", str(prom),
    )  # fmt: skip
    (manifest,) = load_manifests(out)
    pushed = _pushed(pushgateway, topic)
    # One run's totals are gauges: a counter pushed per run would restart at every run.
    assert not [name for name, _labels in pushed if name.endswith("_total")]
    results = by_label(pushed, "party_rates_last_run_messages", "result")
    assert results == manifest_results(manifest)
    assert sum(results.values()) == manifest["counts"]["messages"] == len(messages)
    nxt = by_label(pushed, "party_rates_next_offset", "partition")
    assert nxt == {p: float(s["to"]) for p, s in manifest["partitions"].items()}
    assert set(by_label(pushed, "party_rates_lag_messages", "partition").values()) == {0.0}
    success = one(pushed, "party_rates_last_success_timestamp_seconds")
    assert before < success <= time.time()
    assert not pick(pushed, "party_rates_last_failure_timestamp_seconds")
    assert one(pushed, "party_rates_last_run_files_written", dataset="party_rates") > 0
    (info,) = pick(pushed, "party_rates_build_info")
    assert dict(info)["state_format"] == str(STATE_FORMAT) and dict(info)["version"]
    # The textfile holds the same, and nothing is left under a temporary name.
    assert [p.name for p in textfiles.iterdir()] == ["party_rates.prom"]
    local = parse(prom.read_text())
    assert by_label(local, "party_rates_last_run_messages", "result") == results
    assert one(local, "party_rates_last_success_timestamp_seconds") == success

    # A failed run pushes too: its failure time, without replacing the last success.
    failed = run_cli(
        "run", "--brokers", broker.bootstrap, "--topic", topic, "--output", str(out),
        "--state", str(state), "--progress", "off", "--pushgateway", pushgateway,
        env={"PARTY_RATES_FAILPOINT": "raise-in-batch"},
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    again = _pushed(pushgateway, topic)
    assert one(again, "party_rates_last_success_timestamp_seconds") == success
    # Its own totals replace the earlier run's (it read nothing before it failed).
    assert set(by_label(again, "party_rates_last_run_messages", "result").values()) == {0.0}
    assert one(again, "party_rates_last_failure_timestamp_seconds") > success


@pytest.mark.broker
def test_a_failed_run_keeps_the_last_success_time_in_the_textfile(broker, tmp_path: Path) -> None:
    """The staleness alert is written on the last-success series: a failed run's textfile
    holds its failure time and still the success time of the run before it."""
    topic = broker.new_topic(partitions=1)
    produce(broker.bootstrap, topic, generate(SimConfig(messages=500, namespaces=2, seed=24))[0])
    out, state, prom = tmp_path / "out", tmp_path / "state", tmp_path / "party_rates.prom"
    run_job(broker.bootstrap, topic, out, state, "--metrics-file", str(prom))
    success = one(parse(prom.read_text()), "party_rates_last_success_timestamp_seconds")
    failed = run_cli(
        "run", "--brokers", broker.bootstrap, "--topic", topic, "--output", str(out),
        "--state", str(state), "--progress", "off", "--metrics-file", str(prom),
        env={"PARTY_RATES_FAILPOINT": "raise-in-batch"},
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    after = parse(prom.read_text())
    assert one(after, "party_rates_last_failure_timestamp_seconds", topic=topic) > success
    assert one(after, "party_rates_last_success_timestamp_seconds", topic=topic) == success


LABELS = {"topic", "partition", "dataset", "result"}
"""The README's labels of the job's own series (no label per namespace)."""


def _own_label_names(samples: Samples) -> set[str]:
    """The label names of the job's series (``party_rates_build_info`` apart: its labels are
    the version and the state format, one series a process)."""
    return {
        name
        for (metric, labels) in samples
        for name, _v in labels
        if metric.startswith("party_rates_") and metric != "party_rates_build_info"
    }


@pytest.mark.broker
def test_a_failed_push_is_one_line_and_leaves_the_exit_code(broker, tmp_path: Path) -> None:
    """Nothing listens at the Pushgateway's address: a run that worked still exits 0, one
    that failed still exits 1, each with one line about the push and no traceback."""
    topic = broker.new_topic(partitions=1)
    produce(broker.bootstrap, topic, generate(SimConfig(messages=300, namespaces=2, seed=25))[0])
    nowhere = f"http://127.0.0.1:{free_port()}"
    args = ["run", "--brokers", broker.bootstrap, "--topic", topic, "--progress", "off"]
    args += ["--output", str(tmp_path / "out"), "--state", str(tmp_path / "state")]
    args += ["--pushgateway", nowhere, "--connect-timeout", "5s"]
    for env, code in (({}, 0), ({"PARTY_RATES_FAILPOINT": "raise-in-batch"}, 1)):
        result = run_cli(*args, env=env)
        assert result.returncode == code, result.stderr
        pushed = [ln for ln in result.stderr.splitlines() if "pushing metrics" in ln]
        assert len(pushed) == 1, result.stderr
        assert pushed[0].startswith(f"party-rates: warning: pushing metrics to {nowhere} failed: ")
        assert "Traceback" not in result.stderr


@pytest.mark.broker
def test_each_process_of_a_cluster_writes_its_own_textfile(broker, tmp_path: Path) -> None:
    """``--metrics-file PATH.prom`` in a cluster: ``PATH.N.prom`` per process, its series
    labelled ``process``; the labels are the README's, none per namespace; together the
    files count every message once."""
    topic = broker.new_topic(partitions=4)
    messages, _ = generate(SMALL)
    produce(broker.bootstrap, topic, messages)
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    run_job(
        broker.bootstrap, topic, tmp_path / "out", tmp_path / "state", "--processes", "2",
        "--metrics-file", str(textfiles / "party_rates.prom"),
    )  # fmt: skip
    files = sorted(p.name for p in textfiles.iterdir())
    assert files == ["party_rates.0.prom", "party_rates.1.prom"]
    counted = 0.0
    for i, name in enumerate(files):
        samples = parse((textfiles / name).read_text())
        own = {k: v for k, v in samples.items() if k[0].startswith("party_rates_")}
        assert own and all(("process", str(i)) in labels for _n, labels in own)
        assert _own_label_names(own) <= LABELS | {"process"}
        counted += sum(pick(samples, "party_rates_last_run_messages").values())
        assert by_label(samples, "party_rates_next_offset", "partition"), name  # its own
    assert counted == len(messages)


@pytest.mark.broker
@pytest.mark.slow
def test_metrics_under_bytewax_run_with_the_metrics_port_set(broker, tmp_path: Path) -> None:
    """Under ``python -m bytewax.run``, Bytewax's ``BYTEWAX_DATAFLOW_API_*`` variables turn
    its API server on, and with ``PARTY_RATES_METRICS_PORT`` as well the job's metrics are
    in its ``/metrics``, labelled as the README says."""
    topic = broker.new_topic(partitions=2)
    messages, _ = generate(SimConfig(messages=3_000, namespaces=3, hours=2, seed=26))
    produce(broker.bootstrap, topic, messages)
    port = free_port()
    env = {
        "PARTY_RATES_BROKERS": broker.bootstrap,
        "PARTY_RATES_TOPIC": topic,
        "PARTY_RATES_OUTPUT": str(tmp_path / "out"),
        "PARTY_RATES_STATE": str(tmp_path / "state"),
        "PARTY_RATES_PROGRESS": "off",
        "PARTY_RATES_FOLLOW": "true",
        "PARTY_RATES_METRICS_PORT": str(port),
        "BYTEWAX_DATAFLOW_API_ENABLED": "true",
        "BYTEWAX_DATAFLOW_API_PORT": str(port),
        "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(tmp_path),
    }
    (tmp_path / "state" / "recovery").mkdir(parents=True)
    init_db_dir(tmp_path / "state" / "recovery", 1)
    cmd = [sys.executable, "-m", "bytewax.run", "flows.party_rates:build_flow()"]
    cmd += ["-r", str(tmp_path / "state" / "recovery"), "-s", "1", "-b", "0"]
    proc = start(cmd, cwd=tmp_path, env={**os.environ, **env}, stderr=subprocess.PIPE, text=True)
    try:
        for _ in _deadline_loop("the job's metrics in Bytewax's /metrics"):
            assert proc.poll() is None, proc.communicate()[1]
            got = scrape(f"http://127.0.0.1:{port}/metrics")
            if got is None:
                continue
            results = by_label(got, "party_rates_messages_total", "result", topic=topic)
            if sum(results.values()) == len(messages):
                break
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert any(name.startswith("bytewax_") for name, _labels in got)
    assert _own_label_names(got) <= LABELS
    assert by_label(got, "party_rates_next_offset", "partition", topic=topic) == {
        p: float(e) for p, e in topic_ends(broker.bootstrap, topic, 2).items()
    }


def test_an_unwritable_metrics_file_is_refused(tmp_path: Path) -> None:
    result = run_cli(
        "run", "--output", str(tmp_path / "o"), "--state", str(tmp_path / "s"),
        "--metrics-file", str(tmp_path / "no-such-dir" / "m.prom"),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--metrics-file" in result.stderr and "Traceback" not in result.stderr


# --- start from a point in time --------------------------------------------------------------


def test_start_at_values_are_normalised() -> None:
    assert normalise_start("Earliest") == "earliest"
    assert normalise_start(" latest ") == "latest"
    assert normalise_start("2026-11-01T02:00:00+02:00") == "2026-11-01T00:00:00Z"
    assert normalise_start("2026-11-01 00:00:00.250z") == "2026-11-01T00:00:00.250000Z"
    for bad in ("yesterday", "2026-11-01", "1999-12-31T23:59:59Z"):
        with pytest.raises(ValueError, match="RFC 3339"):
            normalise_start(bad)


def test_counting_starts_at_the_first_window_boundary_at_or_after_the_time() -> None:
    boundary = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp()) * 1_000_000
    assert start_us_for("2026-11-01T00:00:00Z", WINDOW) == boundary
    assert start_us_for("2026-11-01T00:00:00.000001Z", WINDOW) == boundary + WINDOW
    assert start_us_for("2026-10-31T23:55:01Z", WINDOW) == boundary
    assert start_us_for("earliest", WINDOW) == start_us_for("latest", WINDOW) == 0


def test_the_seek_never_leaves_the_partition() -> None:
    assert seek_offset(42, 10, 100) == 42
    assert seek_offset(5, 10, 100) == 10  # before what retention kept
    assert seek_offset(-1, 10, 100) == 100  # nothing at or after the time: the end
    assert seek_offset(None, 10, 100) == 100
    assert seek_offset(500, 10, 100) == 100


@pytest.mark.broker
def test_start_at_latest_counts_only_what_comes_after(broker, tmp_path: Path) -> None:
    topic = broker.new_topic(partitions=2)
    messages, _ = generate(SimConfig(messages=6_000, namespaces=4, hours=4, seed=31))
    half = len(messages) // 2
    produce(broker.bootstrap, topic, messages[:half])
    out, state = tmp_path / "out", tmp_path / "state"
    run_job(broker.bootstrap, topic, out, state, "--start-at", "latest")
    (first,) = load_manifests(out)
    ends = topic_ends(broker.bootstrap, topic, 2)
    assert first["counts"]["messages"] == 0
    assert {p: (s["from"], s["to"]) for p, s in first["partitions"].items()} == {
        p: (e, e) for p, e in ends.items()
    }
    produce(broker.bootstrap, topic, messages[half:])
    run_job(broker.bootstrap, topic, out, state)  # goes on as recorded
    later = [m for m in read_topic(broker.bootstrap, topic, 2) if m[1] >= ends[str(m[0])]]
    assert len(later) == len(messages) - half
    assert_matches_reference(out, later)
    refused = run_cli(
        "run", "--brokers", broker.bootstrap, "--topic", topic, "--output", str(out),
        "--state", str(state), "--start-at", "earliest",
    )  # fmt: skip
    assert refused.returncode == 4, refused.stderr
    assert "--start-at earliest does not match the output" in refused.stderr
    assert "whose start is latest" in refused.stderr


@pytest.mark.broker
@pytest.mark.slow
def test_start_at_a_time_gives_the_rows_of_a_full_run_from_there_on(broker, tmp_path: Path) -> None:
    """Rates from the start's window boundary on are exactly a full run's; outcome rows
    too, except, in the first outcome horizon, ``orphan_outcomes`` (a rejoin or drop
    whose disconnect came before the start has no disconnect to resolve)."""
    topic = broker.new_topic(partitions=3)
    messages, _ = generate(SimConfig(messages=12_000, namespaces=5, hours=6, seed=32))
    produce(broker.bootstrap, topic, messages)
    flat = read_topic(broker.bootstrap, topic, 3)
    full = tmp_path / "full"
    run_job(broker.bootstrap, topic, full / "out", full / "state")
    first_event = min(ev.t_us for ev in reference.run(flat, WINDOW, LATENESS).events)
    t = first_event + 2 * 3600 * 1_000_000 + 17_123_000  # not on a window boundary
    when = datetime.fromtimestamp(t / 1e6, tz=timezone(timedelta(hours=2)))
    start_us = math.ceil(t / WINDOW) * WINDOW
    out, state = tmp_path / "out", tmp_path / "state"
    run_job(broker.bootstrap, topic, out, state, "--start-at", when.isoformat())
    meta = json.loads((state / "party_rates_state.json").read_text())
    assert meta["start_at"] == normalise_start(when.isoformat())
    assert meta["start_at"].endswith("Z")
    begin = pd.Timestamp(start_us, unit="us", tz="UTC")

    rates = job_rows(out)
    assert rates["window_start"].min() == begin
    full_rates = job_rows(full / "out")
    assert_same_rows(rates, full_rates[full_rates["window_start"] >= begin].reset_index(drop=True))

    outcomes = job_outcomes(out, final_only=False)
    full_outcomes = job_outcomes(full / "out", final_only=False)
    after = begin + pd.Timedelta(microseconds=HORIZON)
    assert_same_rows(
        outcomes[outcomes["window_start"] >= after].reset_index(drop=True),
        full_outcomes[full_outcomes["window_start"] >= after].reset_index(drop=True),
    )
    first = outcomes[outcomes["window_start"] < after]
    key = ["namespace", "window_start"]
    both = first.merge(full_outcomes, on=key, how="left", suffixes=("", "_full"))
    assert (both["orphan_outcomes"] > both["orphan_outcomes_full"].fillna(0)).any()
    assert (both["orphan_outcomes"] >= both["orphan_outcomes_full"].fillna(0)).all()
    only_here = both[both["disconnects_full"].isna()]
    assert (only_here["disconnects"] == 0).all()
    matched = both[both["disconnects_full"].notna()]
    for col in ("disconnects", "rejoined", "dropped", "unresolved", "superseded", "is_final"):
        assert (matched[col] == matched[f"{col}_full"]).all(), col

    # The reference with the same start (over what the run read) holds every number.
    starts = json.loads((state / "start_offsets.json").read_text())
    read = [m for m in flat if m[1] >= starts[str(m[0])]]
    result = assert_matches_reference(out, read, start_us=start_us)
    assert result.counts["before_start"] > 0
    (manifest,) = load_manifests(out)
    assert manifest["counts"]["before_start"] == result.counts["before_start"]

    # Recorded in the state: later runs go on without it; another start is refused.
    again = run_job(broker.bootstrap, topic, out, state, "--start-at", when.isoformat())
    assert "0 messages" in again.stderr
    refused = run_cli(
        "run", "--brokers", broker.bootstrap, "--topic", topic, "--output", str(out),
        "--state", str(state), "--start-at", "earliest",
    )  # fmt: skip
    assert refused.returncode == 4, refused.stderr
    lines = [ln for ln in refused.stderr.splitlines() if ln.startswith("party-rates: error:")]
    assert len(lines) == 1 and "--start-at" in lines[0] and "whose start is" in lines[0]
