"""The party-rates dataflow: session-history topic -> per-namespace windowed rates.

Run it with ``party-rates run`` or, in a Bytewax cluster,
``python -m bytewax.run "flows.party_rates:build_flow()"`` with ``PARTY_RATES_*`` set.

Two-phase aggregation: each partition folds its batches into partial aggregates per
(namespace, shard, window); shards merge them and match outcomes; a namespace's rows step
adds its shards' reports up into rows once the watermark has passed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource

from flows.core.items import CLOCK, FLOW_ID, KAFKA, BatchResult, FlushTick, Report, RollupPart
from flows.edges.layout import require_current
from flows.edges.manifest import ManifestSink
from flows.edges.metrics import METRICS, serve_with_bytewax
from flows.edges.sinks import DEAD_LETTERS, LATE_EVENTS, ParquetSink, route, window_datasets
from flows.edges.source import TopicSource
from flows.edges.statedir import StateDir
from flows.edges.storage import Storage
from flows.edges.table import OutputView, datasets, read_record, view_of
from flows.failpoints import Failpoints
from flows.settings import Settings
from flows.steps import ClockLogic, RollupsLogic, RowsLogic, ShardLogic


def _of_kind(kind: str) -> Callable[[tuple[str, tuple[str, Any]]], Any]:
    """The payload of a stateful step's outputs of one kind (None for the others)."""
    return lambda kv: kv[1][1] if kv[1][0] == kind else None


def _typed(cls: type) -> Callable[[tuple[str, Any]], tuple[str, Any] | None]:
    """Keep a keyed item whose value is of one type."""
    return lambda kv: kv if type(kv[1]) is cls else None


def _flush_ticks(sink: ParquetSink) -> Callable[[BatchResult], list[tuple[str, FlushTick]]]:
    return lambda _batch: sink.flush_ticks()


def build_flow(
    settings: Settings | None = None,
    source: FixedPartitionedSource | None = None,
    failpoints: Failpoints | None = None,
    view: OutputView | None = None,
) -> Dataflow:
    """Wire the dataflow. Without ``settings`` (``python -m bytewax.run``, an entry point)
    they come from ``PARTY_RATES_*``; ``source`` replaces the Kafka input (tests); ``view``:
    what the output's record says (read here when not given)."""
    if settings is None:
        settings = Settings()
        failpoints = failpoints or Failpoints.from_environ()
    failpoints = failpoints or Failpoints()
    kafka, rules, run = settings.kafka, settings.rules, settings.run
    recompute = settings.storage.recompute
    METRICS.use_topic(kafka.topic)
    if settings.metrics.metrics_port is not None:
        # prometheus_client's default registry, which Bytewax's API server serves
        serve_with_bytewax()
    storage = Storage.for_output(settings.storage, failpoints)
    w, late, horizon = rules.window, rules.allowed_lateness, rules.outcome_horizon
    rollups, shards = rules.rollups, rules.shards
    if view is None:
        plan = StateDir(run.state).rebuild_plan()
        record = read_record(storage)
        require_current(storage, record)  # party-rates run migrates an older layout
        view = view_of(record, plan, datasets(w, rollups), horizon)
    if source is None:
        start = StateDir(run.state).start(rules)
        source = TopicSource(kafka, rules, start, follow=run.follow, failpoints=failpoints)
    if isinstance(source, TopicSource):
        source.view = view
    partitions = [int(p) for p in source.list_parts()]
    flush = run.flush_s if run.follow else None
    flow = Dataflow(FLOW_ID)

    batches = op.input(KAFKA, flow, source)
    # BatchResult: one consumed batch of one partition, classified, deduplicated and folded

    parts = op.flat_map("parts", batches, lambda b: b.parts)
    # (shard key, ShardPart): the batch's partial aggregates and outcome events for one shard

    progress = op.flat_map(
        "progress", batches, lambda b: [(CLOCK, b.progress)] if b.progress else []
    )
    # ("clock", Progress): a partition's newest event time and the shards it touched

    spans = (w, *rollups)  # a roll-up need not divide the longest one
    floor = None if recompute else view.closed_floor  # a recompute closes all again
    clock = op.stateful_batch(
        CLOCK,
        progress,
        partial(
            ClockLogic, w, late, horizon, shards, spans, partitions,
            on_watermark=METRICS.watermark, closed_floor=floor,
        ),
    )  # fmt: skip
    # ("clock", ("to_shard", (shard key, Tick | ShardPart)) | ("late", row) | ("late_count", n))

    shard_out = op.stateful_batch(
        "shards",
        op.merge("shard_in", parts, op.filter_map("to_shards", clock, _of_kind("to_shard"))),
        partial(ShardLogic, w, horizon, rollups),
    )
    # (shard key, Report | RollupPart): what a shard closed on a tick, or holds at a run's end

    rollup_reports = op.stateful_batch(
        "rollups",
        op.filter_map("rollup_parts", shard_out, _typed(RollupPart)),
        partial(RollupsLogic, rollups, horizon),
    )
    # (shard key, Report): the shard's roll-ups that a tick made final

    reports = op.merge(
        "reports", op.filter_map("shard_reports", shard_out, _typed(Report)),
        rollup_reports,
    )  # fmt: skip
    outputs = op.stateful_batch(
        "rows", op.map("by_namespace", reports, lambda kv: (kv[1].namespace, kv[1])),
        partial(RowsLogic, w, rollups),
    )  # fmt: skip
    # (namespace, (dataset, [row])): rows once every shard of a tick has reported

    late_rows = op.merge(
        "late_rows",
        op.filter_map("late_at_partition", batches, lambda b: b.late or None),
        op.filter_map("late_at_window", clock, _of_kind("late")),
    )
    # [late_events row]: events that came after their window was final

    dead = op.filter_map("dead", batches, lambda b: b.dead or None)
    # [dead_letters row]: messages naming a counted event (or unreadable) that cannot be used

    stats = op.merge(
        "stats",
        op.map("batch_stats", batches, lambda b: b.stats),
        op.filter_map("late_counts", clock, _of_kind("late_count")),
    )
    # BatchStats | int: bookkeeping for the manifest and the progress display

    ticking = op.filter("flush_ticks", batches, lambda b: b.flush_tick)
    # BatchResult marked about every second while following: lets the sinks write on time

    windowed = [
        (spec.name, op.filter_map(f"{spec.name}_rows", outputs, _of_kind(spec.name)), spec, n)
        for spec, n in window_datasets(w, rollups, recompute)
    ]
    # [row] of one dataset: final rows as windows close, provisional rows at a run's end;
    # party_rates and disconnect_outcomes (final a horizon later), and their roll-ups

    for name, stream, spec, n in (
        *windowed,
        ("late_events", late_rows, LATE_EVENTS, 2),
        ("dead_letters", dead, DEAD_LETTERS, 2),
    ):
        sink = ParquetSink(storage, spec, flush_seconds=flush, parts=n)
        covered = None if spec.final_column is None or recompute else view.covered
        routed = op.flat_map(f"route_{name}", stream, route(spec, covered, n))
        ticks_in = op.flat_map(f"{name}_ticks", ticking, _flush_ticks(sink))
        op.output(name, op.merge(f"{name}_in", routed, ticks_in), sink)
        # (file path, [row]) | (flush key, FlushTick) -> one Parquet file per path
    manifest = ManifestSink(
        storage,
        run.run_id,
        settings.public(),
        run.progress,
        run.follow,
        run.flush_s,
        partitions,
        view,
    )
    op.output("manifest", op.map("route_stats", stats, lambda s: ("manifest", s)), manifest)
    return flow
