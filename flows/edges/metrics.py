"""Prometheus metrics of a run: what it read, how far behind it is, what it wrote.

One :data:`METRICS` object per process. The steps of the dataflow update it once per batch
(never per message) with plain numbers; it turns them into metric families only when they
are collected: by a scrape of the Dataflow API server while following, or at the end of a
run for the Pushgateway and the textfile collector.

Each process exports what it holds: the partitions its workers read (position, end, lag),
the files its sink partitions wrote, the watermark if the clock key lives on one of its
workers, and the message counts if the manifest's sink partition does. The counts are the
manifest's own totals, so an event found late at its window (it moves from ``counted`` to
``late`` there) moves in the metrics too, and the metrics and the manifest agree.

A collector that raises during a scrape would panic the API server's handler, which stops
a multi-worker dataflow (see README, "Operating it"): collecting never raises.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: a run that exports nothing does not load it
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import GaugeMetricFamily, Metric

JOB = "party-rates"

RESULTS = {  # manifest count -> the metric's result label
    "counted": "counted",
    "skipped": "skipped",
    "duplicates": "duplicate",
    "late": "late",
    "dead_letters": "dead_letter",
    "before_start": "before_start",
    "reread": "reread",
}


class RunMetrics:
    """The numbers a run exports, as plain values; metric families are built on collect
    (a ``prometheus_client`` collector)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset("")

    def reset(self, topic: str) -> None:
        """A new run in this process (tests run several in one)."""
        with self._lock:
            self.topic = topic
            self.started = time.time()
            self.ended: float | None = None
            self.counts: dict[str, int] | None = None
            self.positions: dict[int, tuple[int, int]] = {}  # partition -> (next, end)
            self.watermark_us: int | None = None
            self.rows: dict[str, int] = {}
            self.files: dict[str, int] = {}
            self.commits = {"ok": 0, "failed": 0}
            self.withheld_rows: dict[str, int] = {}  # rows of incomplete windows not written
            self.kept_rows: dict[str, int] = {}  # final rows kept against a different one
            self.incomplete: dict[str, int] = {}  # dataset -> windows the output lacks
            self.last_success: float | None = None
            self.last_failure: float | None = None

    def use_topic(self, topic: str) -> None:
        """The topic label, for a flow built without ``party-rates run`` (which resets)."""
        self.topic = self.topic or topic

    # --- updates, once per batch -------------------------------------------------------

    def set_counts(self, counts: Mapping[str, int]) -> None:
        """The manifest's totals of this run."""
        self.counts = dict(counts)

    def position(self, partition: int, next_offset: int, end_offset: int) -> None:
        """A partition's read position and end (the newest offset the broker reported)."""
        self.positions[partition] = (next_offset, max(end_offset, next_offset))

    def watermark(self, watermark_us: int | None) -> None:
        if watermark_us is not None:
            self.watermark_us = watermark_us

    def wrote(self, dataset: str, rows: int) -> None:
        with self._lock:
            self.files[dataset] = self.files.get(dataset, 0) + 1
            self.rows[dataset] = self.rows.get(dataset, 0) + rows

    def withheld(self, dataset: str) -> None:
        with self._lock:
            self.withheld_rows[dataset] = self.withheld_rows.get(dataset, 0) + 1

    def kept_final(self, dataset: str) -> None:
        with self._lock:
            self.kept_rows[dataset] = self.kept_rows.get(dataset, 0) + 1

    def incomplete_windows(self, counts: Mapping[str, int]) -> None:
        """Per dataset, how many of its windows the output's record says are incomplete."""
        self.incomplete = dict(counts)

    def group_commit(self, ok: bool) -> None:
        with self._lock:
            self.commits["ok" if ok else "failed"] += 1

    def finish(self, success: bool | None) -> None:
        """The run ended: its duration stops; a success or failure time is set (neither
        for a following run stopped as it should be, ``None``)."""
        now = time.time()
        self.ended = now
        if success:
            self.last_success = now
        elif success is not None:
            self.last_failure = now

    # --- collection --------------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        return []  # no name checks at registration: names are fixed here

    def collect(self) -> Iterator[Metric]:
        """The metric families (never raises, see the module docstring)."""
        try:
            families = list(self._families())
        except Exception as err:  # a scrape must never fail (see the module docstring)
            print(f"party-rates: collecting metrics failed: {err}", file=sys.stderr)
            return
        yield from families

    def _families(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        with self._lock:
            topic = self.topic
            counts = dict(self.counts) if self.counts is not None else None
            positions = dict(self.positions)
            rows, files, commits = dict(self.rows), dict(self.files), dict(self.commits)
            withheld, kept = dict(self.withheld_rows), dict(self.kept_rows)
            incomplete = dict(self.incomplete)
        now = time.time()
        if counts is not None:
            m = CounterMetricFamily(
                "party_rates_messages",
                "Messages read, by what became of them; the results sum to the messages read",
                labels=["topic", "result"],
            )
            for key, result in RESULTS.items():
                m.add_metric([topic, result], counts.get(key, 0))
            yield m
        if positions:
            nxt = GaugeMetricFamily(
                "party_rates_next_offset",
                "Read position: the next offset to read from the partition",
                labels=["topic", "partition"],
            )
            end = GaugeMetricFamily(
                "party_rates_end_offset",
                "The partition's end offset (high watermark) as last seen",
                labels=["topic", "partition"],
            )
            lag = GaugeMetricFamily(
                "party_rates_lag_messages",
                "Messages behind the end of the partition: end offset minus next offset",
                labels=["topic", "partition"],
            )
            for p, (n, e) in sorted(positions.items()):
                nxt.add_metric([topic, str(p)], n)
                end.add_metric([topic, str(p)], e)
                lag.add_metric([topic, str(p)], e - n)
            yield from (nxt, end, lag)
        if self.watermark_us is not None:
            wm = self.watermark_us / 1e6
            yield _gauge(
                "party_rates_watermark_timestamp_seconds",
                "Event time before which the topic is complete (windows before it are final)",
                topic,
                wm,
            )
            yield _gauge(
                "party_rates_watermark_age_seconds",
                "How far the watermark is behind the wall clock (freshness of final windows)",
                topic,
                now - wm,
            )
        if files:
            rows_m = CounterMetricFamily(
                "party_rates_rows_written",
                "Rows in the output files written (a file is written whole)",
                labels=["topic", "dataset"],
            )
            files_m = CounterMetricFamily(
                "party_rates_files_written", "Output files written", labels=["topic", "dataset"]
            )
            for dataset in sorted(files):
                rows_m.add_metric([topic, dataset], rows.get(dataset, 0))
                files_m.add_metric([topic, dataset], files[dataset])
            yield from (rows_m, files_m)
        if commits["ok"] or commits["failed"]:
            c = CounterMetricFamily(
                "party_rates_group_commits",
                "Commits of durable read positions to the consumer group, by result",
                labels=["topic", "result"],
            )
            for result in ("ok", "failed"):
                c.add_metric([topic, result], commits[result])
            yield c
        if incomplete:
            g = GaugeMetricFamily(
                "party_rates_incomplete_windows",
                "Windows the output will not hold complete: their events were gone from the "
                "topic when a state was rebuilt (the output's record lists them)",
                labels=["topic", "dataset"],
            )
            for dataset, n in sorted(incomplete.items()):
                g.add_metric([topic, dataset], n)
            yield g
        for name, doc, values in (
            (
                "party_rates_rows_withheld",
                "Rows of incomplete windows this run did not write",
                withheld,
            ),
            (
                "party_rates_final_rows_kept",
                "Final rows of the output kept against a different final row of this run",
                kept,
            ),
        ):
            if values:
                c = CounterMetricFamily(name, doc, labels=["topic", "dataset"])
                for dataset, n in sorted(values.items()):
                    c.add_metric([topic, dataset], n)
                yield c
        yield _gauge(
            "party_rates_run_duration_seconds",
            "How long this run has run (or ran)",
            topic,
            (self.ended or now) - self.started,
        )
        if self.last_success is not None:
            yield _last_success(topic, self.last_success)
        if self.last_failure is not None:
            yield _gauge(
                "party_rates_last_failure_timestamp_seconds",
                "When a run last failed or was stopped before its end",
                topic,
                self.last_failure,
            )


LAST_SUCCESS = "party_rates_last_success_timestamp_seconds"


def _last_success(topic: str, value: float) -> GaugeMetricFamily:
    return _gauge(
        LAST_SUCCESS,
        "When a scheduled run last completed (read everything, wrote everything)",
        topic,
        value,
    )


def _gauge(name: str, doc: str, topic: str, value: float) -> GaugeMetricFamily:
    from prometheus_client.metrics_core import GaugeMetricFamily

    g = GaugeMetricFamily(name, doc, labels=["topic"])
    g.add_metric([topic], value)
    return g


METRICS = RunMetrics()
_REGISTERED = False
_REGISTER_LOCK = threading.Lock()


def serve_with_bytewax() -> None:
    """Put the run's metrics in ``prometheus_client``'s default registry, which Bytewax's
    Dataflow API server serves under ``/metrics`` (with its own metrics)."""
    from prometheus_client import REGISTRY

    global _REGISTERED
    with _REGISTER_LOCK:
        if not _REGISTERED:
            collector: Any = METRICS
            REGISTRY.register(collector)
            _REGISTERED = True


class _Labelled:
    """The run's metrics with extra labels on every sample (a process of a cluster), and
    an earlier run's last-success time where this run has none (``kept_success``)."""

    def __init__(self, labels: dict[str, str], kept_success: float | None = None) -> None:
        self.labels = labels
        self.kept_success = kept_success

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import Metric

        families = list(METRICS.collect())
        if self.kept_success is not None and all(f.name != LAST_SUCCESS for f in families):
            families.append(_last_success(METRICS.topic, self.kept_success))
        for family in families:
            out = Metric(family.name, family.documentation, family.type, family.unit)
            for s in family.samples:
                out.add_sample(s.name, {**s.labels, **self.labels}, s.value, s.timestamp)
            yield out


def _registry(
    labels: dict[str, str] | None = None, kept_success: float | None = None
) -> CollectorRegistry:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    collector: Any = _Labelled(labels or {}, kept_success)
    registry.register(collector)
    return registry


def push(url: str, topic: str, process_id: int | None, timeout_s: float = 10.0) -> None:
    """Push-add the run's metrics, grouped by job, topic and process id: a push replaces
    the metrics of the same names in its group only, so a failed run, which has no
    last-success time, leaves the last success of an earlier run in place."""
    from prometheus_client.exposition import pushadd_to_gateway

    pushadd_to_gateway(
        url,
        job=JOB,
        registry=_registry(),
        grouping_key={"topic": topic, "process": str(process_id or 0)},
        timeout=timeout_s,
    )


def textfile_path(path: str, process_id: int | None) -> Path:
    """Where this process writes: the path itself, or ``NAME.<process id>.prom`` in a
    cluster (one file per process)."""
    p = Path(path)
    if process_id is None:
        return p
    return p.with_name(f"{p.name.removesuffix('.prom')}.{process_id}.prom")


def write_textfile(path: str, process_id: int | None) -> Path:
    """Write the metrics in the text format for node_exporter's textfile collector:
    to a hidden temporary name, then renamed (the collector never reads half a file).
    In a cluster each process's file labels its series with ``process`` (the collector
    refuses a series that two files hold). A run without a success time (a failed one)
    keeps the last-success time the file held, as a push-add keeps it in the Pushgateway:
    the staleness alert always has its series."""
    dest = textfile_path(path, process_id)
    labels = {} if process_id is None else {"process": str(process_id)}
    from prometheus_client.exposition import generate_latest

    kept = None if METRICS.last_success is not None else _kept_success(dest, METRICS.topic)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_bytes(generate_latest(_registry(labels, kept)))
    os.replace(tmp, dest)
    return dest


def _kept_success(dest: Path, topic: str) -> float | None:
    """The topic's last-success time in the textfile an earlier run wrote, if any (a file
    that is missing or does not parse holds none)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = dest.read_text(encoding="utf-8")
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == LAST_SUCCESS and s.labels.get("topic") == topic:
                    return float(s.value)
    except Exception:  # an unreadable earlier file keeps nothing; writing goes on
        return None
    return None
