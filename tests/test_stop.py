"""A graceful stop: SIGTERM ends a run at the next batch boundary, whoever gets the signal.

Scheduled, following, one process or a local cluster, the signal sent to the process (the
leader of a cluster) or to its whole process group (as systemd and ``kill -- -PGID`` send
it): the run writes what is final and what it holds as provisional rows, takes its final
snapshot, commits the group, says so in one line and exits with the documented code (130
scheduled, 0 following), with no panic and no traceback. The next run goes on exactly
where it stopped and ends with the output of a run never stopped.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest

from flows.analysis import load_manifests
from flows.tooling.simulator import SimConfig, generate, produce
from tests.helpers import (
    assert_same_output,
    assert_same_rows,
    group_offsets,
    job_rows,
    run_job,
    start_slow_run,
)
from tests.test_crash import assert_resumed

pytestmark = [pytest.mark.broker, pytest.mark.slow]
DATA = SimConfig(messages=60_000, namespaces=5, hours=48, seed=41)
KEY = ["namespace", "window_start"]


@pytest.fixture(scope="module")
def stop_topic(broker, tmp_path_factory) -> tuple[str, Path, int]:
    """A topic, and the output of one run over it that nothing stopped."""
    topic = broker.new_topic()
    messages, _ = generate(DATA)
    produce(broker.bootstrap, topic, messages)
    clean = tmp_path_factory.mktemp("clean")
    run_job(broker.bootstrap, topic, clean / "out", clean / "state")
    return topic, clean / "out", len(messages)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(
    ("mode", "processes", "to"),
    [
        ("scheduled", 1, "process"),
        ("scheduled", 1, "group"),
        ("following", 1, "process"),
        ("following", 1, "group"),
        ("scheduled", 2, "process"),
        ("scheduled", 2, "group"),
        ("following", 2, "group"),
    ],
)
def test_a_stopped_run_ends_at_a_batch_boundary_and_the_next_goes_on(
    broker, stop_topic, tmp_path: Path, mode: str, processes: int, to: str
) -> None:
    topic, clean, total = stop_topic
    out, state, group = tmp_path / "out", tmp_path / "state", f"stop-{uuid.uuid4().hex[:8]}"
    extra = ["--group-id", group, "--processes", str(processes), "--batch-size", "1"]
    extra += ["--metrics-file", str(tmp_path / "m.prom")]
    if mode == "following":
        extra.append("--follow")
    proc = start_slow_run(broker.bootstrap, topic, out, state, *extra)
    if to == "process":
        proc.send_signal(signal.SIGTERM)  # the process, or the leader of a local cluster
    else:
        os.killpg(proc.pid, signal.SIGTERM)  # every process of its group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (130 if mode == "scheduled" else 0), err
    assert "stopped by a signal" in err
    for wrong in ("panicked", "Traceback", "KeyboardInterrupt", "failed", "error:"):
        assert wrong not in err, err
    # Every process of a cluster has ended (they share the leader's process group).
    assert not _group_alive(proc.pid)

    # A stop is no failure (an alert on failures must not page on a rollout).
    for prom in tmp_path.glob("m*.prom"):
        assert "party_rates_last_failure_timestamp_seconds" not in prom.read_text()
    assert list(tmp_path.glob("m*.prom"))
    (stopped,) = load_manifests(out)
    assert stopped["status"] == "stopped"
    assert 0 < stopped["counts"]["messages"] < total
    # The final snapshot holds everything read, and the group has it.
    ends = {int(p): span["to"] for p, span in stopped["partitions"].items()}
    assert group_offsets(broker.bootstrap, group, topic) == ends
    # What was final is written as the uncut run wrote it; the open windows are written
    # provisional, as at the end of any run.
    rows = job_rows(out)
    assert (~rows["is_final"]).any()
    final = rows[rows["is_final"]].reset_index(drop=True)
    want = job_rows(clean).merge(final[KEY], on=KEY)
    assert_same_rows(final, want.sort_values(KEY, ignore_index=True))

    run_job(broker.bootstrap, topic, out, state, "--group-id", group)
    assert_same_output(out, clean)
    # The next run began where the stopped one ended: nothing read twice, nothing lost.
    assert_resumed(out, total, cut=("stopped",))
