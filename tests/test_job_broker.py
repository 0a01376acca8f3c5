"""End to end through the real broker and the real CLI: the job's semantics."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pandas as pd
import pytest
from confluent_kafka import Producer

from flows.analysis import load_dead_letters, load_late_events, load_manifests
from flows.edges.source import QUIET
from flows.tooling.simulator import SimConfig, chunks, envelope, generate, produce
from tests import reference
from tests.helpers import (
    assert_as_simulated,
    assert_matches_reference,
    assert_same_output,
    dead_rows,
    group_offsets,
    job_outcomes,
    job_rows,
    late_rows,
    partitioned,
    read_topic,
    run_cli,
    run_job,
    total_counts,
)

pytestmark = pytest.mark.broker
MIN = 60_000_000
WINDOW, LATENESS = 5 * MIN, 10 * MIN
SMALL = SimConfig(
    messages=20_000, namespaces=12, hours=6, anonymous_rate=0.02, stale_resend_rate=0.005
)
"""Six hours of twelve games; some events without a player or party, some copies re-sent
hours later (past the dedup horizon: late, not duplicates)."""


def _check_counts(manifest: dict) -> None:
    c = manifest["counts"]
    parts = c["counted"] + c["skipped"] + c["duplicates"] + c["late"] + c["dead_letters"]
    assert parts + c["before_start"] == c["messages"]


def test_scheduled_run_matches_reference(broker, tmp_path: Path) -> None:
    topic = broker.new_topic()
    messages, truth = generate(SMALL)
    produce(broker.bootstrap, topic, messages)
    out = tmp_path / "out"
    result = run_job(broker.bootstrap, topic, out, tmp_path / "state")

    topic_messages = read_topic(broker.bootstrap, topic, 4)
    assert len(topic_messages) == len(messages)
    assert_matches_reference(out, topic_messages)
    assert len(job_outcomes(out)) > 0
    (manifest,) = load_manifests(out)
    assert manifest["status"] == "completed"
    _check_counts(manifest)
    assert_as_simulated(out, manifest["counts"], messages, truth)
    assert "completed" in result.stderr and "counted" in result.stderr
    assert load_dead_letters(out)["error"].str.len().min() > 5


# The README's backfill example, as written, over data that crosses its start (and a UTC
# day); and a run far from every default, with two workers.
BACKFILL = ("--window", "1m", "--start-at", "2026-11-01T00:00:00Z")
BACKFILL_GROUP = ("--group-id", "party-rates-backfill-1m")
FAR = ("--window", "10m", "--allowed-lateness", "30m", "--outcome-horizon", "15m")
FAR += ("--dedup-horizon", "1h", "--shards", "2", "--rollups", "30m,2h", "--workers", "2")
FAR += ("--max-drift", "1s", "--batch-size", "50")  # partitions in step, pausing often


@pytest.mark.parametrize(
    ("flags", "cfg", "want"),
    [
        (
            (*BACKFILL, *BACKFILL_GROUP),
            replace(SMALL, start=datetime(2026, 10, 31, 23, tzinfo=UTC)),
            {"window_us": MIN, "start_us": 1_793_491_200 * 10**6},
        ),
        (
            FAR,
            replace(SMALL, seed=3),
            {
                "window_us": 10 * MIN, "lateness_us": 30 * MIN, "horizon_us": 15 * MIN,
                "dedup_horizon_us": 60 * MIN, "rollups_us": (30 * MIN, 120 * MIN),
            },
        ),
    ],
    ids=["readme-backfill", "far-from-defaults"],
)  # fmt: skip
def test_scheduled_run_matches_reference_at_other_settings(
    broker, tmp_path: Path, flags: tuple[str, ...], cfg: SimConfig, want: dict
) -> None:
    """Through the broker and the command, at settings other than the defaults: every
    dataset equals the reference at the same settings."""
    topic = broker.new_topic()
    messages, _truth = generate(cfg)
    produce(broker.bootstrap, topic, messages)
    out = tmp_path / "out"
    run_job(broker.bootstrap, topic, out, tmp_path / "state", *flags)
    result = assert_matches_reference(out, read_topic(broker.bootstrap, topic, 4), **want)
    (manifest,) = load_manifests(out)
    assert manifest["status"] == "completed"
    _check_counts(manifest)
    if "start_us" in want:  # the data crosses the start
        assert 0 < manifest["counts"]["before_start"] < manifest["counts"]["messages"]
        assert min(ev.t_us for ev in result.events) >= want["start_us"]
        ends = {int(p): span["to"] for p, span in manifest["partitions"].items()}
        assert group_offsets(broker.bootstrap, "party-rates-backfill-1m", topic) == ends
    assert len(result.late) > 0 and len(job_outcomes(out)) > 0


def _first_counted_everywhere(messages: list, partitions: int = 4) -> int:
    """How many messages are published before every partition has had a counted event
    (each partition's first usable event is counted: nothing is before it)."""
    seen: set[int] = set()
    for i, (p, _offset, value) in enumerate(partitioned(messages, partitions)):
        if reference.classify(value)[0] == "event":
            seen.add(p)
            if len(seen) == partitions:
                return i + 1
    raise AssertionError("a partition never has a counted event")


def _cuts(seed: int, messages: list, parts: int) -> list[int]:
    """Random cut points, all after every partition has had a counted event (before that,
    the README states an exception, tested on its own)."""
    rng = random.Random(seed)
    earliest = _first_counted_everywhere(messages)
    return sorted(rng.sample(range(earliest, len(messages)), parts - 1))


@pytest.mark.parametrize("seed", [1, 2])
def test_split_runs_equal_one_run(broker, tmp_path: Path, seed: int) -> None:
    """Runs cut at random points give exactly the output of one run: rates, outcomes,
    late events, dead letters and counts; each run reads on from where the last stopped."""
    messages, _ = generate(SMALL)
    one, split = broker.new_topic(), broker.new_topic()
    produce(broker.bootstrap, one, messages)
    # The messages lie in the partitions where _cuts counts them.
    assert read_topic(broker.bootstrap, one, 4) == sorted(partitioned(messages, 4))
    run_job(broker.bootstrap, one, tmp_path / "one", tmp_path / "one-state")
    cuts = [0, *_cuts(seed, messages, 4), len(messages)]
    for a, b in itertools.pairwise(cuts):
        produce(broker.bootstrap, split, messages[a:b])
        run_job(broker.bootstrap, split, tmp_path / "split", tmp_path / "split-state")

    assert_same_output(tmp_path / "split", tmp_path / "one")
    assert_matches_reference(tmp_path / "split", read_topic(broker.bootstrap, split, 4))
    parts = job_rows(tmp_path / "split")
    assert parts["is_final"].sum() > 0.9 * len(parts)
    assert len(late_rows(tmp_path / "split")) > 0 and len(dead_rows(tmp_path / "split")) > 0
    manifests = load_manifests(tmp_path / "split")
    assert len(manifests) == 4
    assert sum(m["counts"]["messages"] for m in manifests) == len(messages)
    for m in manifests:
        _check_counts(m)
    # Each run read on from where the previous one stopped.
    for p in map(str, range(4)):
        spans = [(m["partitions"][p]["from"], m["partitions"][p]["to"]) for m in manifests]
        assert spans[0][0] == 0
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    # Repeated runs do not pile up files: one per date, whatever the namespaces.
    for directory in (tmp_path / "split" / "party_rates").iterdir():
        assert directory.name.startswith("date=")
        assert [f.name for f in directory.iterdir()] == ["part-0.parquet"]


def _event(name: str, ns: str, t_us: int, user: str = "u1", party: str = "p1") -> dict:
    import random

    return envelope(random.Random(t_us), name, ns, t_us, user, party)


def _send(bootstrap: str, topic: str, docs: list[dict], partition: int | None = None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "logger": QUIET})
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
    # The namespace is a column, never a path: each dataset's directories are dates (months
    # for the day roll-ups), whatever the namespace's characters.
    expected = {"party_rates": "date=2026-11-18", "party_rates_1h": "date=2026-11-18"}
    expected["party_rates_1d"] = "month=2026-11"
    for dataset, directory in expected.items():
        assert {d.name for d in (out / dataset).iterdir()} == {directory}, dataset
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
    assert_same_output(tmp_path / "w2", tmp_path / "w1")
    assert_matches_reference(tmp_path / "w2", read_topic(broker.bootstrap, topic, partitions))


def test_two_processes_equal_one(broker, tmp_path: Path) -> None:
    """A Bytewax cluster of two local processes (-i/-a on loopback) gives the same rows."""
    topic = broker.new_topic(partitions=3)
    messages, _ = generate(SMALL)
    produce(broker.bootstrap, topic, messages)
    run_job(broker.bootstrap, topic, tmp_path / "p1", tmp_path / "s1")
    run_job(broker.bootstrap, topic, tmp_path / "p2", tmp_path / "s2", "--processes", "2")
    assert_same_output(tmp_path / "p2", tmp_path / "p1")
    assert_matches_reference(tmp_path / "p2", read_topic(broker.bootstrap, topic, 3))
    assert [m["status"] for m in load_manifests(tmp_path / "p2")] == ["completed"]
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


def test_recreated_topic_is_refused_and_the_output_kept(broker, tmp_path: Path) -> None:
    """A topic deleted and made again under the same name, with only newer messages: its
    offsets restart, so the run cannot tell its messages from those the output holds. With
    the state, and with the state lost, the run refuses in one line and writes nothing."""
    if broker.embedded is None:
        pytest.skip("needs the embedded broker to delete and recreate topics")
    topic = broker.new_topic(partitions=1)
    first = [_event("PartyDisconnectedEvent", "ns", T0 + i * MIN) for i in range(30)]
    _send(broker.bootstrap, topic, first)
    out, state = tmp_path / "out", tmp_path / "state"
    run_job(broker.bootstrap, topic, out, state)
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    broker.embedded.delete_topic(topic)
    broker.embedded.create_topic(topic, partitions=1)
    second = [_event("PartyDroppedEvent", "ns", T0 + (40 + i) * MIN) for i in range(5)]
    _send(broker.bootstrap, topic, second)
    for st in (state, tmp_path / "lost"):
        result = run_cli(
            "run", "--brokers", broker.bootstrap, "--topic", topic, "--output", str(out),
            "--state", str(st), "--progress", "off",
        )  # fmt: skip
        assert result.returncode == 4
        (line,) = result.stderr.strip().splitlines()
        assert "ends at offset 5, but the output covers it up to 30" in line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


def test_rescaling_between_runs(broker, tmp_path: Path) -> None:
    """1 worker, then 2 processes, then 1 worker on the same state: as one run."""
    messages, _ = generate(SMALL)
    one, split = broker.new_topic(partitions=3), broker.new_topic(partitions=3)
    produce(broker.bootstrap, one, messages)
    run_job(broker.bootstrap, one, tmp_path / "one", tmp_path / "one-state")
    for part, extra in zip(chunks(messages, 3), ([], ["--processes", "2"], []), strict=True):
        produce(broker.bootstrap, split, part)
        run_job(broker.bootstrap, split, tmp_path / "split", tmp_path / "split-state", *extra)
    assert_same_output(tmp_path / "split", tmp_path / "one")
    assert_matches_reference(tmp_path / "split", read_topic(broker.bootstrap, split, 3))
    assert sum(m["counts"]["messages"] for m in load_manifests(tmp_path / "split")) == len(messages)


def test_multi_day_backlog_matches_reference(broker, tmp_path: Path) -> None:
    """Days that settle during a run are written early; the output is the same."""
    topic = broker.new_topic(partitions=2)
    messages, truth = generate(SimConfig(messages=8_000, namespaces=3, hours=96))
    produce(broker.bootstrap, topic, messages)
    out = tmp_path / "out"
    run_job(broker.bootstrap, topic, out, tmp_path / "state")
    assert_matches_reference(out, read_topic(broker.bootstrap, topic, 2))
    days = sorted(d.name for d in (out / "party_rates").iterdir())
    assert len(days) >= 4 and all(d.startswith("date=") for d in days)
    # one file per day of every namespace (format 2); the day roll-ups one per month
    assert [f.name for d in days for f in (out / "party_rates" / d).iterdir()] == [
        "part-0.parquet"
    ] * len(days)
    months = {d.name for d in (out / "party_rates_1d").iterdir()}
    assert "month=2026-11" in months and all(m.startswith("month=") for m in months)
    assert_as_simulated(out, total_counts(out), messages, truth)
    # The comparison above held final day rows: settled days, in both day roll-ups.
    assert job_rows(out, "party_rates_1d")["is_final"].sum() >= 3
    assert job_outcomes(out, True, "disconnect_outcomes_1d").shape[0] >= 3


def test_a_partition_without_counted_events_can_meet_a_final_window(broker, tmp_path: Path) -> None:
    """The README's one exception to "cut anywhere": a partition that never had a counted
    event does not hold the watermark back, so an old event it delivers later can find its
    window final. It is a late event (kept whole, counted as late); in one uncut run the
    same event counts."""
    topic = broker.new_topic(partitions=2)
    busy = [_event("PartyDisconnectedEvent", "ns", T0 + i * MIN, user=f"u{i}") for i in range(120)]
    _send(broker.bootstrap, topic, busy, partition=0)
    _send(broker.bootstrap, topic, [_event("PartyCreatedEvent", "ns", T0)], partition=1)
    out, state = tmp_path / "out", tmp_path / "state"
    run_job(broker.bootstrap, topic, out, state)
    old = _event("PartyDroppedEvent", "ns", T0 + 5 * MIN, user="u5")
    _send(broker.bootstrap, topic, [old], partition=1)
    run_job(broker.bootstrap, topic, out, state)

    late = load_late_events(out)
    assert len(late) == 1
    row = late.iloc[0]
    assert (row["id"], row["partition"], row["offset"]) == (old["id"], 1, 1)
    assert row["key"] == old["id"].encode() and row["value"] == orjson.dumps(old)
    assert row["name"] == "PartyDroppedEvent" and row["namespace"] == "ns"
    second = load_manifests(out)[-1]["counts"]
    assert (second["messages"], second["late"], second["counted"]) == (1, 1, 0)
    rows = job_rows(out).set_index("window_start")
    window = rows.loc[pd.Timestamp(T0 + 5 * MIN, unit="us", tz="UTC")]
    assert window["is_final"] and window["dropped"] == 0

    # One run over the same messages counts it.
    run_job(broker.bootstrap, topic, tmp_path / "one", tmp_path / "one-state")
    assert len(load_late_events(tmp_path / "one")) == 0
    assert job_rows(tmp_path / "one")["dropped"].sum() == 1
