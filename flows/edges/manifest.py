"""The run manifest ``_runs/<run_id>.json`` and the progress display.

One sink partition receives every batch's bookkeeping. It accumulates, per run id, the
offsets read per partition and the counts, which are part of the snapshot. When a scheduled
run has read every partition to its end it writes the manifest as ``completed``; a run that
ends otherwise (stopped by a signal, failed) writes it as ``stopped``. What a run read after
its last durable snapshot is read again by the next run, so the next run finds the earlier
run's part in the snapshot it resumes from: unless the manifest already says exactly that,
it writes that part as the earlier run's manifest with status ``interrupted``. Every
message read is accounted for in exactly one manifest. Its totals are also the message
counts of the run's metrics (flows/edges/metrics.py), so the two always agree.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TextIO

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from flows import logs
from flows.core.items import BatchStats, Counts
from flows.edges.metrics import METRICS
from flows.edges.storage import Storage, end_of_run_failure
from flows.edges.table import OutputView

LOG = logs.logger(__name__)
RunState = dict[str, dict[str, Any]]  # run_id -> accumulated manifest


def manifest_path(run_id: str) -> str:
    return f"_runs/{run_id}.json"


def new_run(
    run_id: str, settings: dict[str, Any], now: datetime, rebuild: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "rebuild": rebuild,
        "run_id": run_id,
        "started_at": now.isoformat(),
        "ended_at": None,
        "status": "running",
        "settings": settings,
        "partitions": {},
        "counts": Counts()._asdict(),
        "gaps": [],
        "group_commit_error": None,
    }


def add_stats(run: dict[str, Any], stats: BatchStats) -> None:
    part = run["partitions"].setdefault(
        str(stats.partition), {"from": stats.first_offset, "to": stats.first_offset, "end": None}
    )
    part["to"] = max(part["to"], stats.next_offset)
    part["end"] = stats.end_offset
    total = Counts(**run["counts"]).plus(stats.counts)
    run["counts"] = total._asdict()
    if stats.gap:
        run["gaps"].append({"partition": stats.partition, "detail": stats.gap})
    if stats.group_error and not run.get("group_commit_error"):
        run["group_commit_error"] = stats.group_error


def add_late(run: dict[str, Any], n: int) -> None:
    """Events counted at their partition that found their window already final."""
    counts = dict(run["counts"])
    counts["counted"] -= n
    counts["late"] += n
    run["counts"] = counts


def note_group_error(storage: Storage, run_id: str, error: str) -> None:
    """Add a failed final commit to the consumer group to a run's written manifest (the
    manifest is written when the dataflow ends; the final commit comes after it)."""
    data = storage.read_bytes(manifest_path(run_id))
    if data is None:
        return
    run = json.loads(data)
    if run.get("group_commit_error"):
        return  # a failure of this run is already there
    run["group_commit_error"] = error
    storage.write_bytes(manifest_path(run_id), json.dumps(run, indent=2, sort_keys=True).encode())


class ManifestSink(FixedPartitionedSink[Any, RunState]):
    def __init__(
        self,
        storage: Storage,
        run_id: str,
        settings: dict[str, Any],
        progress: str,
        follow: bool,
        flush_seconds: float,
        partitions: list[int] | None = None,
        view: OutputView | None = None,
    ) -> None:
        self.partitions = list(partitions or [])
        self.rebuild: dict[str, Any] | None = None
        if view is not None and view.rebuilt is not None:
            # this run rebuilt the state: why, what was lost, what will stay incomplete
            self.rebuild = {
                "reason": view.rebuilt,
                "lost": list(view.notes),
                "incomplete": [asdict(i) for i in view.covered.incomplete],
            }
        self.storage = storage
        self.run_id = run_id
        self.settings = settings
        self.progress = progress
        self.follow = follow
        self.flush_seconds = flush_seconds

    def list_parts(self) -> list[str]:
        return ["manifest"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: RunState | None
    ) -> ManifestPart:
        return ManifestPart(self, resume_state or {})


class ManifestPart(StatefulSinkPartition[Any, RunState]):
    def __init__(self, sink: ManifestSink, runs: RunState) -> None:
        self.sink = sink
        self.runs = {rid: json.loads(json.dumps(run)) for rid, run in runs.items()}
        # An earlier run's part of the snapshot this run resumes from.
        for rid in list(self.runs):
            if rid != sink.run_id:
                if not self._written_as_in_snapshot(rid):
                    self._write(rid, "interrupted")
                del self.runs[rid]
        self.run = self.runs.setdefault(
            sink.run_id, new_run(sink.run_id, sink.settings, datetime.now(UTC), sink.rebuild)
        )
        self.display = ProgressDisplay(sink.progress, sys.stderr)
        self.last_flush = time.monotonic()
        METRICS.set_counts(self.run["counts"])

    def write_batch(self, values: list[Any]) -> None:
        for item in values:
            if isinstance(item, BatchStats):
                add_stats(self.run, item)
            else:
                add_late(self.run, item)
                METRICS.moved_late(item)  # counters cannot step down (metrics.py)
        METRICS.set_counts(self.run["counts"])  # the same totals as the manifest
        self.display.update(self.run)
        if self.sink.follow and time.monotonic() - self.last_flush >= self.sink.flush_seconds:
            self._write(self.sink.run_id, "running")
            self.last_flush = time.monotonic()

    def _written_as_in_snapshot(self, run_id: str) -> bool:
        """Whether the run's manifest was written when it ended with exactly what the
        snapshot holds (its last snapshot was durable); else the run was cut after it."""
        existing = self.sink.storage.read_bytes(manifest_path(run_id))
        if existing is None:
            return False
        written, snap = json.loads(existing), self.runs[run_id]
        return written.get("status") in ("completed", "stopped") and all(
            written.get(k) == snap[k] for k in ("counts", "partitions", "gaps")
        )

    def _complete(self) -> bool:
        """A scheduled run that read every partition to its end."""
        parts = self.run["partitions"]
        return not self.sink.follow and all(
            str(p) in parts and parts[str(p)]["end"] is not None
            and parts[str(p)]["to"] >= parts[str(p)]["end"]
            for p in self.sink.partitions
        )  # fmt: skip

    def _write(self, run_id: str, status: str) -> None:
        run = dict(self.runs[run_id])
        run["status"] = status
        if status != "running":
            run["ended_at"] = run["ended_at"] or datetime.now(UTC).isoformat()
        data = json.dumps(run, indent=2, sort_keys=True).encode()
        self.sink.storage.write_bytes(manifest_path(run_id), data)

    def snapshot(self) -> RunState:
        return json.loads(json.dumps(self.runs))

    def close(self) -> None:
        # Also called when the dataflow stops early (a signal, an error).
        self.display.finish(self.run)
        try:
            self._write(self.sink.run_id, "completed" if self._complete() else "stopped")
        except Exception as err:  # see end_of_run_failure
            end_of_run_failure(err)


class ProgressDisplay:
    """Messages read of the end offsets, rate and ETA: a bar on a terminal, else log lines."""

    def __init__(self, mode: str, out: TextIO) -> None:
        tty = out.isatty()
        self.mode = ("bar" if tty else "log") if mode == "auto" else mode
        self.out = out
        self.started = time.monotonic()
        self.last = 0.0
        self.interval = 0.5 if self.mode == "bar" else 10.0

    def update(self, run: dict[str, Any], force: bool = False) -> None:
        now = time.monotonic()
        if self.mode == "off" or (not force and now - self.last < self.interval):
            return
        self.last = now
        done = sum(p["to"] - p["from"] for p in run["partitions"].values())
        ends = [p["end"] for p in run["partitions"].values()]
        total = (
            sum(p["end"] - p["from"] for p in run["partitions"].values())
            if ends and None not in ends
            else None
        )
        elapsed = now - self.started
        rate = done / elapsed if elapsed >= 1.0 else 0.0
        c = run["counts"]
        line = f"{done:,} msgs"
        if total:
            line += f" of {total:,} ({100 * done / total:.0f}%)"
            if rate > 0:
                line += f", ETA {(total - done) / rate:.0f}s"
        if rate > 0:
            line += f", {rate:,.0f} msg/s"
        line += f"; counted {c['counted']:,}, late {c['late']:,}, "
        line += f"dead letters {c['dead_letters']:,}"
        if self.mode == "bar":
            self.out.write("\r\x1b[2K" + line)
        else:
            LOG.info(line, extra={"counts": dict(c)})
        self.out.flush()

    def finish(self, run: dict[str, Any]) -> None:
        self.update(run, force=True)
        if self.mode == "bar":
            self.out.write("\n")
