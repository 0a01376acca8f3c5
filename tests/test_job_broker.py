"""End to end through the real broker and the real CLI: the job's semantics."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import orjson
import pandas as pd
import pytest
from confluent_kafka import Producer

from flows.analysis import load_dead_letters, load_late_events, load_manifests
from flows.tooling.simulator import SimConfig, chunks, envelope, generate, produce
from tests.helpers import (
    assert_same_rows,
    job_outcomes,
    job_rows,
    read_topic,
    reference_outcomes,
    reference_rows,
    run_job,
)

pytestmark = pytest.mark.broker
MIN = 60_000_000
WINDOW, LATENESS = 5 * MIN, 10 * MIN
SMALL = SimConfig(messages=20_000, namespaces=12, hours=6)


def _check_counts(manifest: dict) -> None:
    c = manifest["counts"]
    parts = c["counted"] + c["skipped"] + c["duplicates"] + c["late"] + c["dead_letters"]
    assert parts == c["messages"]


def test_scheduled_run_matches_reference(broker, tmp_path: Path) -> None:
    topic = broker.new_topic()
    messages, truth = generate(SMALL)
    produce(broker.bootstrap, topic, messages)
    result = run_job(broker.bootstrap, topic, tmp_path / "out", tmp_path / "state")

    topic_messages = read_topic(broker.bootstrap, topic, 4)
    expected = reference_rows(topic_messages, WINDOW, LATENESS)
    assert_same_rows(job_rows(tmp_path / "out"), expected)
    outcomes = job_outcomes(tmp_path / "out")
    assert len(outcomes) > 0
    assert_same_rows(outcomes, reference_outcomes(topic_messages, WINDOW, LATENESS))
    (manifest,) = load_manifests(tmp_path / "out")
    assert manifest["status"] == "completed"
    assert manifest["counts"]["messages"] == len(messages)
    assert manifest["counts"]["dead_letters"] == truth.malformed
    assert set(load_late_events(tmp_path / "out")["id"]) <= truth.late_ids
    assert manifest["counts"]["late"] == len(load_late_events(tmp_path / "out"))
    _check_counts(manifest)
    assert "completed" in result.stderr and "counted" in result.stderr
    dead = load_dead_letters(tmp_path / "out")
    assert len(dead) == truth.malformed
    assert dead["error"].str.len().min() > 5
    by_position = {(p, off): value for p, off, value in topic_messages}
    for row in dead.itertuples():
        assert by_position[(row.partition, row.offset)] == row.value


def test_split_runs_equal_one_run(broker, tmp_path: Path) -> None:
    messages, _ = generate(SMALL)
    one, split = broker.new_topic(), broker.new_topic()
    produce(broker.bootstrap, one, messages)
    run_job(broker.bootstrap, one, tmp_path / "one", tmp_path / "one-state")
    for part in chunks(messages, 4):
        produce(broker.bootstrap, split, part)
        run_job(broker.bootstrap, split, tmp_path / "split", tmp_path / "split-state")

    whole = job_rows(tmp_path / "one")
    parts = job_rows(tmp_path / "split")
    assert_same_rows(parts, whole)
    assert_same_rows(job_outcomes(tmp_path / "split"), job_outcomes(tmp_path / "one"))
    assert parts["is_final"].sum() > 0.9 * len(parts)
    manifests = load_manifests(tmp_path / "split")
    assert len(manifests) == 4
    assert sum(m["counts"]["messages"] for m in manifests) == len(messages)
    for m in manifests:
        _check_counts(m)
    # Each run read on from where the previous one stopped.
    for p in map(str, range(4)):
        spans = sorted((m["partitions"][p]["from"], m["partitions"][p]["to"]) for m in manifests)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    # Repeated runs do not pile up files: one per namespace/date partition.
    for directory in (tmp_path / "split" / "party_rates").glob("*/*"):
        assert [f.name for f in directory.iterdir()] == ["part-0.parquet"]


def _event(name: str, ns: str, t_us: int, user: str = "u1", party: str = "p1") -> dict:
    import random

    return envelope(random.Random(t_us), name, ns, t_us, user, party)


def _send(bootstrap: str, topic: str, docs: list[dict], partition: int | None = None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for doc in docs:
        kwargs = {} if partition is None else {"partition": partition}
        producer.produce(topic, key=doc["id"].encode(), value=orjson.dumps(doc), **kwargs)
    assert producer.flush(30) == 0


T0 = 1_795_000_000_000_000 - 1_795_000_000_000_000 % (60 * MIN)  # an hour boundary


def test_slow_partition_events_are_not_late(broker, tmp_path: Path) -> None:
    """Partition 0 is a day ahead of partition 1; 1's later on-time events still count."""
    topic = broker.new_topic(partitions=2)
    ahead = [_event("PartyDisconnectedEvent", "fast", T0 + i * MIN) for i in range(0, 600, 5)]
    _send(broker.bootstrap, topic, ahead, partition=0)
    early = [_event("PartyDisconnectedEvent", "slow", T0 + i * MIN) for i in range(0, 30)]
    _send(broker.bootstrap, topic, early, partition=1)
    out, state = tmp_path / "out", tmp_path / "state"
    run_job(broker.bootstrap, topic, out, state)
    later = [_event("PartyDisconnectedEvent", "slow", T0 + i * MIN) for i in range(30, 120)]
    _send(broker.bootstrap, topic, later, partition=1)
    run_job(broker.bootstrap, topic, out, state)

    rows = job_rows(out)
    slow = rows[rows["namespace"] == "slow"]
    assert slow["disconnected"].sum() == 120
    assert len(load_late_events(out)) == 0


def test_quiet_namespace_windows_become_final(broker, tmp_path: Path) -> None:
    topic = broker.new_topic(partitions=2)
    quiet = [_event("PartyDroppedEvent", "quiet", T0 + i * MIN) for i in range(10)]
    busy = [_event("PartyDisconnectedEvent", "busy", T0 + i * MIN) for i in range(0, 180)]
    _send(broker.bootstrap, topic, quiet + busy)
    run_job(broker.bootstrap, topic, tmp_path / "out", tmp_path / "state")
    rows = job_rows(tmp_path / "out")
    q = rows[rows["namespace"] == "quiet"]
    assert len(q) == 2
    assert q["is_final"].all()
    b = rows[rows["namespace"] == "busy"]
    assert not b["is_final"].all()  # the newest windows are still open


def test_duplicates_counted_once_across_runs(broker, tmp_path: Path) -> None:
    topic = broker.new_topic(partitions=2)
    docs = [_event("PartyDisconnectedEvent", "ns", T0 + i * MIN, user=f"u{i}") for i in range(20)]
    _send(broker.bootstrap, topic, docs)
    out, state = tmp_path / "out", tmp_path / "state"
    run_job(broker.bootstrap, topic, out, state)
    _send(broker.bootstrap, topic, docs[-3:])  # the publisher re-sends the last three
    run_job(broker.bootstrap, topic, out, state)
    rows = job_rows(out)
    assert rows["disconnected"].sum() == 20
    second = load_manifests(out)[-1] if load_manifests(out)[-1]["counts"]["messages"] == 3 else None
    assert second is not None and second["counts"]["duplicates"] == 3


AWKWARD = ["../x", "a/b=c", "with space", "ünïcödé-名前", "%41", ".."]


def test_awkward_namespaces_round_trip(broker, tmp_path: Path) -> None:
    topic = broker.new_topic(partitions=1)
    docs = [_event("PartyDisconnectedEvent", ns, T0 + i * MIN) for i, ns in enumerate(AWKWARD)]
    _send(broker.bootstrap, topic, docs)
    out = tmp_path / "nested" / "out"
    run_job(broker.bootstrap, topic, out, tmp_path / "state")

    assert sorted(job_rows(out)["namespace"]) == sorted(AWKWARD)
    read_back = pd.read_parquet(out / "party_rates")
    assert sorted(read_back["namespace"].astype(str)) == sorted(AWKWARD)
    outside = [p for p in tmp_path.rglob("*.parquet") if out not in p.parents]
    assert outside == []


def test_provisional_rows_are_replaced(broker, tmp_path: Path) -> None:
    topic = broker.new_topic(partitions=1)
    out, state = tmp_path / "out", tmp_path / "state"
    _send(broker.bootstrap, topic, [_event("PartyDisconnectedEvent", "ns", T0 + MIN)])
    run_job(broker.bootstrap, topic, out, state)
    first = job_rows(out)
    assert len(first) == 1 and not first["is_final"].iloc[0]
    more = [_event("PartyRejoinedEvent", "ns", T0 + 2 * MIN)]
    more += [_event("PartyRejectedEvent", "ns", T0 + i * MIN) for i in range(20, 40)]
    _send(broker.bootstrap, topic, more)
    run_job(broker.bootstrap, topic, out, state)
    rows = job_rows(out)
    assert rows["window_start"].is_unique
    head = rows.iloc[0]
    assert head["is_final"] and head["disconnected"] == 1 and head["rejoined"] == 1


def test_manifest_records_settings_without_secrets(broker, tmp_path: Path) -> None:
    topic = broker.new_topic(partitions=1)
    _send(broker.bootstrap, topic, [_event("PartyDisconnectedEvent", "ns", T0)])
    result = run_job(
        broker.bootstrap,
        topic,
        tmp_path / "out",
        tmp_path / "state",
        "--kafka-config",
        "sasl.password=hunter2",
        "--kafka-config",
        "security.protocol=PLAINTEXT",
    )
    text = json.dumps(load_manifests(tmp_path / "out"))
    assert "hunter2" not in text and "hunter2" not in result.stderr
    assert '"security.protocol": "PLAINTEXT"' in text


@pytest.mark.parametrize(("partitions", "workers"), [(3, 2), (1, 3)])
def test_more_workers_equal_one(broker, tmp_path: Path, partitions: int, workers: int) -> None:
    """Fewer workers than partitions, and more: the same rows (one namespace is hot)."""
    topic = broker.new_topic(partitions=partitions)
    messages, _ = generate(SMALL)
    produce(broker.bootstrap, topic, messages)
    run_job(broker.bootstrap, topic, tmp_path / "w1", tmp_path / "s1")
    run_job(broker.bootstrap, topic, tmp_path / "w2", tmp_path / "s2", "--workers", str(workers))
    assert_same_rows(job_rows(tmp_path / "w2"), job_rows(tmp_path / "w1"))
    (m1,), (m2,) = load_manifests(tmp_path / "w1"), load_manifests(tmp_path / "w2")
    assert m1["counts"] == m2["counts"]


def test_two_processes_equal_one(broker, tmp_path: Path) -> None:
    """A Bytewax cluster of two local processes (-i/-a on loopback) gives the same rows."""
    topic = broker.new_topic(partitions=3)
    messages, _ = generate(SMALL)
    produce(broker.bootstrap, topic, messages)
    run_job(broker.bootstrap, topic, tmp_path / "p1", tmp_path / "s1")
    run_job(broker.bootstrap, topic, tmp_path / "p2", tmp_path / "s2", "--processes", "2")
    assert_same_rows(job_rows(tmp_path / "p2"), job_rows(tmp_path / "p1"))
    (m1,), (m2,) = load_manifests(tmp_path / "p1"), load_manifests(tmp_path / "p2")
    assert m1["counts"] == m2["counts"]
    assert sorted((tmp_path / "s2").glob(".lock-*")) == [
        tmp_path / "s2" / ".lock-0",
        tmp_path / "s2" / ".lock-1",
    ]


def test_a_run_without_new_data_rewrites_nothing(broker, tmp_path: Path) -> None:
    topic = broker.new_topic(partitions=2)
    produce(broker.bootstrap, topic, generate(SimConfig(messages=3_000, namespaces=4, hours=2))[0])
    out, state = tmp_path / "out", tmp_path / "state"
    run_job(broker.bootstrap, topic, out, state)
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    run_job(broker.bootstrap, topic, out, state)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == files


def test_recreated_topic_is_reported_and_read_from_the_start(broker, tmp_path: Path) -> None:
    if broker.embedded is None:
        pytest.skip("needs the embedded broker to delete and recreate topics")
    topic = broker.new_topic(partitions=1)
    first = [_event("PartyDisconnectedEvent", "ns", T0 + i * MIN) for i in range(30)]
    _send(broker.bootstrap, topic, first)
    out, state = tmp_path / "out", tmp_path / "state"
    run_job(broker.bootstrap, topic, out, state)
    broker.embedded.delete_topic(topic)
    broker.embedded.create_topic(topic, partitions=1)
    second = [_event("PartyDroppedEvent", "ns", T0 + (40 + i) * MIN) for i in range(5)]
    _send(broker.bootstrap, topic, second)
    result = run_job(broker.bootstrap, topic, out, state)

    assert "past the end" in result.stderr
    last = load_manifests(out)[-1]
    assert last["gaps"] and last["gaps"][0]["partition"] == 0
    assert last["counts"]["messages"] == 5
    assert last["counts"]["counted"] == 5
    assert job_rows(out)["dropped"].sum() == 5


def test_rescaling_between_runs(broker, tmp_path: Path) -> None:
    """1 worker, then 2 processes, then 1 worker on the same state: as one run."""
    messages, _ = generate(SMALL)
    one, split = broker.new_topic(partitions=3), broker.new_topic(partitions=3)
    produce(broker.bootstrap, one, messages)
    run_job(broker.bootstrap, one, tmp_path / "one", tmp_path / "one-state")
    for part, extra in zip(chunks(messages, 3), ([], ["--processes", "2"], []), strict=True):
        produce(broker.bootstrap, split, part)
        run_job(broker.bootstrap, split, tmp_path / "split", tmp_path / "split-state", *extra)
    assert_same_rows(job_rows(tmp_path / "split"), job_rows(tmp_path / "one"))
    assert sum(m["counts"]["messages"] for m in load_manifests(tmp_path / "split")) == len(messages)


def test_multi_day_backlog_matches_reference(broker, tmp_path: Path) -> None:
    """Days that settle during a run are written early; the output is the same."""
    topic = broker.new_topic(partitions=2)
    produce(broker.bootstrap, topic, generate(SimConfig(messages=8_000, namespaces=3, hours=96))[0])
    run_job(broker.bootstrap, topic, tmp_path / "out", tmp_path / "state")
    expected = reference_rows(read_topic(broker.bootstrap, topic, 2), WINDOW, LATENESS)
    assert_same_rows(job_rows(tmp_path / "out"), expected)
    assert len({d.name for d in (tmp_path / "out" / "party_rates").glob("*/*")}) >= 4
