"""Prometheus metrics of a run: what it read, how far behind it is, what it wrote.

One :data:`METRICS` object per process. The steps of the dataflow update it once per batch
(never per message) with plain numbers; it turns them into metric families only when they
are collected: by a scrape of the Dataflow API server while following, or at the end of a
run for the Pushgateway and the textfile collector.

Each process exports what it holds: the partitions its workers read (position, end, lag),
the files its sink partitions wrote, the watermark if the clock key lives on one of its
workers, and the message counts if the manifest's sink partition does.

Two expositions of the same numbers:

- **Scraped** (a following run's ``/metrics``): counters, ``*_total``, that never step
  down while the process lives. The manifest moves an event found late at its window from
  ``counted`` to ``late``; a counter cannot, so ``party_rates_messages_total`` counts
  results as the partitions decided them and ``party_rates_late_at_window_total`` counts
  the moves: the manifest's ``counted`` is ``counted`` minus the moves, its ``late`` is
  ``late`` plus them.
- **Run totals** (pushed to a Pushgateway, or a textfile, when a run ends): one run's
  numbers are not a counter across runs, so they are gauges named ``party_rates_last_run_*``,
  equal to the run's manifest. Every such family is exported by every run (zeros where
  it did nothing): a push-add replaces a family whole, so no number of an earlier run is
  left looking like this one's.

A collector that raises during a scrape would panic the API server's handler, which stops
a multi-worker dataflow (see README, "Operating it"): collecting never raises.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows import logs

if TYPE_CHECKING:  # imported where used: a run that exports nothing does not load it
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import GaugeMetricFamily, Metric

LOG = logs.logger(__name__)
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
            self.late_at_window = 0  # counted events moved to late at their window

    def use_topic(self, topic: str) -> None:
        """The topic label, for a flow built without ``party-rates run`` (which resets)."""
        self.topic = self.topic or topic

    # --- updates, once per batch -------------------------------------------------------

    def set_counts(self, counts: Mapping[str, int]) -> None:
        """The manifest's totals of this run."""
        self.counts = dict(counts)

    def moved_late(self, n: int) -> None:
        """The manifest moved ``n`` counted events to late (their window was final)."""
        with self._lock:
            self.late_at_window += n

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
        """The run ended: its duration stops; a success or failure time is set (neither,
        ``None``, for a run stopped by a signal: a following run ends only so, and a
        scheduled one stopped so has failed at nothing; the next run goes on)."""
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
        """The metric families as scraped: counters (never raises, see the module
        docstring)."""
        return self._safely(run_totals=False)

    def collect_run_totals(self) -> Iterator[Metric]:
        """The metric families as pushed or written at a run's end: the run's totals as
        ``party_rates_last_run_*`` gauges."""
        return self._safely(run_totals=True)

    def _safely(self, run_totals: bool) -> Iterator[Metric]:
        try:
            families = list(self._families(run_totals))
        except Exception as err:  # a scrape must never fail (see the module docstring)
            LOG.warning("collecting metrics failed: %s", err)
            return
        yield from families

    def _families(self, run_totals: bool) -> Iterator[Metric]:
        from prometheus_client.metrics_core import GaugeMetricFamily

        with self._lock:
            topic = self.topic
            counts = dict(self.counts) if self.counts is not None else None
            positions = dict(self.positions)
            rows, files, commits = dict(self.rows), dict(self.files), dict(self.commits)
            withheld, kept = dict(self.withheld_rows), dict(self.kept_rows)
            incomplete = dict(self.incomplete)
            moved = self.late_at_window
        now = time.time()
        yield build_info()
        if counts is not None or run_totals:
            by_result = {result: (counts or {}).get(key, 0) for key, result in RESULTS.items()}
            if not run_totals:  # as the partitions decided them (see the module docstring)
                by_result["counted"] += moved
                by_result["late"] -= moved
            yield _per_label(
                "party_rates_messages",
                "Messages read, by what became of them; the results sum to the messages read",
                topic, "result", by_result, run_totals,
            )  # fmt: skip
            if not run_totals:
                yield _per_label(
                    "party_rates_late_at_window",
                    "Counted events that then found their window final: the manifest counts "
                    "them late, not counted",
                    topic, None, {"": moved}, run_totals,
                )  # fmt: skip
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
        if files or run_totals:
            if not files:  # a family pushed with no sample would keep an earlier run's
                files, rows = {"party_rates": 0}, {"party_rates": 0}
            yield _per_label(
                "party_rates_rows_written",
                "Rows in the output files written (a file is written whole)",
                topic, "dataset", {d: rows.get(d, 0) for d in sorted(files)}, run_totals,
            )  # fmt: skip
            yield _per_label(
                "party_rates_files_written", "Output files written",
                topic, "dataset", {d: files[d] for d in sorted(files)}, run_totals,
            )  # fmt: skip
        if commits["ok"] or commits["failed"] or run_totals:
            yield _per_label(
                "party_rates_group_commits",
                "Commits of durable read positions to the consumer group, by result",
                topic, "result", commits, run_totals,
            )  # fmt: skip
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
            ("party_rates_rows_withheld", "Rows of incomplete windows not written", withheld),
            (
                "party_rates_final_rows_kept",
                "Final rows of the output kept against a different final row of a run",
                kept,
            ),
        ):
            if values or run_totals:
                yield _per_label(name, doc, topic, "dataset", values, run_totals)
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
                "When a run last failed (a run stopped by a signal has not failed)",
                topic,
                self.last_failure,
            )


LAST_SUCCESS = "party_rates_last_success_timestamp_seconds"


def _per_label(
    name: str,
    doc: str,
    topic: str,
    label: str | None,
    values: Mapping[str, float],
    run_totals: bool,
) -> Metric:
    """A counter ``NAME_total`` or, for a run's totals, a gauge ``party_rates_last_run_*``,
    with a sample per value of ``label`` (one sample without it)."""
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

    labels = ["topic"] if label is None else ["topic", label]
    family: Metric
    if run_totals:
        gauge_name = name.replace("party_rates_", "party_rates_last_run_", 1)
        family = GaugeMetricFamily(gauge_name, f"{doc} (the last run's totals)", labels=labels)
    else:
        family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in values.items():
        family.add_metric([topic] if label is None else [topic, key], value)
    return family


def build_info() -> GaugeMetricFamily:
    """``party_rates_build_info{version, state_format}``: always 1."""
    from prometheus_client.metrics_core import GaugeMetricFamily

    from flows.edges.statedir import STATE_FORMAT

    g = GaugeMetricFamily(
        "party_rates_build_info",
        "The job's version and the format of the state it keeps (always 1)",
        labels=["version", "state_format"],
    )
    g.add_metric([_version(), str(STATE_FORMAT)], 1)
    return g


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("party-rates")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


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

        families = list(METRICS.collect_run_totals())
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
    """Write the metrics in the text format for node_exporter's textfile collector
    (``prometheus_client.write_to_textfile``: a temporary name the collector does not read,
    then renamed, so it never reads half a file). In a cluster each process's file labels
    its series with ``process`` (the collector refuses a series that two files hold). A run
    without a success time (a failed one) keeps the last-success time the file held, as a
    push-add keeps it in the Pushgateway: the staleness alert always has its series."""
    dest = textfile_path(path, process_id)
    labels = {} if process_id is None else {"process": str(process_id)}
    from prometheus_client.exposition import write_to_textfile

    kept = None if METRICS.last_success is not None else _kept_success(dest, METRICS.topic)
    write_to_textfile(str(dest), _registry(labels, kept))
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
