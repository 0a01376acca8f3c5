"""A run against its output and its state: the checks at the start, the rebuild of a state
that is missing, unreadable or made for other shards or roll-ups, the migration of an
output of an older layout (flows.edges.layout), and the output's record written at the end
(flows.edges.table).

How a state and an output are told apart:

* **The output's record names the state that writes it** (``state_id``, made with the
  state). A state that has run before (it holds saved state) and is not the one named is
  another job's state: refused, whatever its settings.
* **A state directory that is empty, missing or cannot be read** is not another job's:
  it is lost, and is rebuilt from the output's record and the topic. So is a state of a
  format this version does not read, or one made for other ``--shards`` or ``--rollups``
  (the output keeps what they wrote; the new state makes the rest). The rebuilt state then
  owns the output.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flows.core.coverage import Window
from flows.core.eventtime import duration_label
from flows.core.items import CLOCK, CLOCK_STEP, SOURCE_STEP
from flows.core.partition import PartitionSnapshot
from flows.core.watermark import Clock
from flows.edges import layout
from flows.edges.metrics import METRICS
from flows.edges.statedir import STATE_FORMAT, StateDir, StateError, state_meta
from flows.edges.storage import Storage
from flows.edges.table import (
    OUTPUT_FORMAT,
    RECORD,
    Incomplete,
    OutputView,
    TableError,
    TableRecord,
    check_meaning,
    datasets,
    meaning,
    now_text,
    partition_cover,
    plan_json,
    plan_rebuild,
    read_record,
    view_of,
)
from flows.settings import RulesSettings

Bounds = dict[int, tuple[int, int]]
"""Partition -> (earliest offset, end offset), as the topic has them now."""


def windows_of(rules: RulesSettings) -> list[Window]:
    return datasets(rules.window, rules.rollups)


def rules_meaning(topic: str, rules: RulesSettings, start_at: str | None) -> dict[str, Any]:
    return meaning(
        topic,
        rules.window,
        rules.allowed_lateness,
        rules.outcome_horizon,
        rules.dedup_us,
        start_at,  # type: ignore[arg-type]
    )


def check_topic(record: TableRecord, bounds: Bounds, topic: str) -> None:
    """Refuse a topic that is not the one the output was made from: a partition that ends
    before the output's position in it (a topic deleted and made again restarts its
    offsets; the output's rows could not be told from its new ones)."""
    for p, cover in sorted(record.partitions.items()):
        high = bounds.get(p, (0, 0))[1]
        if cover.end > high:
            raise TableError(
                f"partition {p} of {topic} ends at offset {high}, but the output covers it up "
                f"to {cover.end}: the topic is not the one the output was made from "
                "(deleted and made again?); write it to a new --output and --state"
            )


def prepare(
    state: StateDir,
    storage: Storage,
    bounds: Callable[[], Bounds],
    *,
    topic: str,
    rules: RulesSettings,
    recompute: bool,
    run_id: str,
) -> OutputView:
    """Check the settings against the output's record and the state, then keep, make or
    rebuild the state; returns what the run takes from the output. Refusals are TableError
    or StateError, one line each (the command exits 4 for both). ``bounds``: the topic's
    partitions and their offsets, asked for only when needed."""
    record = read_record(storage)
    windows = windows_of(rules)
    horizon = rules.outcome_horizon
    want = state_meta(topic, rules, storage_output(storage))
    if record is not None:  # a recompute's start is its own
        start_at = None if recompute else rules.start_at
        check_meaning(record, rules_meaning(topic, rules, start_at), storage.uri)
    with state.preparing():
        verdict = state.inspect(want, rules.start_at)
        if record is None or not record.claims:
            if verdict.kind == "rebuild":
                raise StateError(
                    f"state in {state.path} cannot be used ({verdict.reason}) and the output "
                    f"has no {RECORD} to rebuild it from; start with a fresh --state and "
                    "--output"
                )
            if verdict.kind == "fresh" and not recompute and any(storage.list_files("_runs")):
                raise TableError(
                    f"the output {storage.uri} holds rows but no {RECORD} saying what they "
                    "cover, and the state is empty: run with the state that wrote it, or use "
                    "--recompute to let this run replace its final rows"
                )
            state.create(want)
        elif verdict.kind == "usable":
            owner = (verdict.meta or {}).get("state_id")
            if owner != record.state_id:
                raise StateError(
                    f"the output {storage.uri} is written by another state "
                    f"({record.state_id}), not {state.path} ({owner or 'no id'}): one "
                    "output, one state; use the state that writes it, or an empty --state "
                    "to rebuild one from the output"
                )
            check_topic(record, bounds(), topic)
        elif verdict.kind == "fresh" and recompute:
            state.create(want)  # a deliberate recompute starts where --start-at says
        else:
            found = bounds()
            check_topic(record, found, topic)
            why = "the state directory is empty" if verdict.kind == "fresh" else (
                f"the state could not be used: {verdict.reason}"
            )  # fmt: skip
            added = {
                duration_label(n): n
                for n in rules.rollups
                if duration_label(n) not in record.rollups
            }
            plan = plan_rebuild(record, found, windows, horizon, added, rules.window)
            start_at = rules.start_at or record.settings.get("start_at") or "earliest"
            # the rebuilt state takes the output's state id: it is the state that writes it
            state.rebuild(
                want | {"start_at": start_at}, plan_json(plan, why, run_id), record.state_id
            )
        # an output of an older layout is migrated before anything is read or written
        record = layout.migrate(
            storage, state, record, rules.window, [w.name for w in windows],
            lambda: unclaimed_record(topic, rules, state),
        )  # fmt: skip
    view = view_of(record, state.rebuild_plan(), windows, horizon, run_id)
    METRICS.incomplete_windows(incomplete_counts(view.covered.incomplete, windows))
    return view


def storage_output(storage: Storage) -> str:
    """The output as the state records it (its ``--output``)."""
    return storage.given


def unclaimed_record(topic: str, rules: RulesSettings, state: StateDir) -> TableRecord:
    """The record of an output that has none, which only says its format and its state: it
    claims no rows (a run's record, written when the run ends, does)."""
    meta = state.meta() or {}
    return TableRecord(
        format=OUTPUT_FORMAT,
        settings=rules_meaning(topic, rules, meta.get("start_at", "earliest")),
        rollups={},
        state_id=str(meta.get("state_id", "")),
        state_format=STATE_FORMAT,
        run_id="",
        written_at=now_text(),
        closed_until_us=None,
        watermark_us=None,
        partitions={},
    )


def incomplete_counts(incomplete: list[Incomplete], windows: list[Window]) -> dict[str, int]:
    """Per dataset, how many windows its incomplete ranges hold."""
    lengths = {w.name: w.length_us for w in windows}
    out: dict[str, int] = {}
    for inc in incomplete:
        n = lengths.get(inc.dataset)
        if n:
            out[inc.dataset] = out.get(inc.dataset, 0) + (inc.until_us - inc.from_us) // n
    return out


def write_record(
    state: StateDir,
    storage: Storage,
    view: OutputView,
    *,
    topic: str,
    rules: RulesSettings,
    run_id: str,
    processes: int = 1,
    wait_s: float = 30.0,
) -> TableRecord | None:
    """After a run whose dataflow returned with everything written: the output's record,
    from the state the next run resumes from. In a cluster, process 0 writes it once every
    process has said its part is written (their markers in the state directory); if one
    has not within ``wait_s``, the record stays as it was (it then claims less than the
    rows hold, never more). Returns the record written, or None."""
    deadline = time.monotonic() + wait_s
    while not state.all_done(run_id, processes):
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)  # polling the markers the other processes write
    sources, settled = state.durable(SOURCE_STEP)
    clocks, settled_clock = state.durable(CLOCK_STEP)
    if not (settled and settled_clock):
        return None
    previous = read_record(storage)
    partition_max, closed = Clock.saved_progress(clocks[CLOCK]) if CLOCK in clocks else ({}, None)
    if closed is None and previous is not None:
        closed = previous.closed_until_us
    watermark = min(partition_max.values()) - rules.allowed_lateness if partition_max else None
    w, horizon = rules.window, rules.outcome_horizon
    partitions = {}
    for key, saved in sources.items():
        snap = PartitionSnapshot.read(saved, w)
        partitions[int(key)] = partition_cover(
            snap.next_offset, snap.max_t_us, snap.origin, snap.marks, snap.marks_complete,
            closed, rules.lengths, horizon, rules.dedup_us, w,
        )  # fmt: skip
    if previous is not None:  # partitions this run did not read keep their cover
        for p, cover in previous.partitions.items():
            partitions.setdefault(p, cover)
    incomplete = list(previous.incomplete) if previous is not None else []
    known = {(i.dataset, i.from_us, i.until_us) for i in incomplete}
    incomplete += [
        i for i in view.covered.incomplete if (i.dataset, i.from_us, i.until_us) not in known
    ]
    rollups: dict[str, int | None] = {}
    for n in rules.rollups:
        label = duration_label(n)
        if previous is not None and label in previous.rollups:
            rollups[label] = previous.rollups[label]
        else:
            since = [
                i.until_us
                for i in incomplete
                if i.dataset == f"party_rates_{label}" and i.from_us == 0
            ]
            rollups[label] = max(since) if since else None
    meta = state.meta() or {}
    record = TableRecord(
        format=OUTPUT_FORMAT,
        settings=rules_meaning(topic, rules, meta.get("start_at", "earliest")),
        rollups=rollups,
        state_id=str(meta.get("state_id", "")),
        state_format=STATE_FORMAT,
        run_id=run_id,
        written_at=now_text(),
        closed_until_us=closed,
        watermark_us=watermark,
        partitions=partitions,
        incomplete=incomplete,
    )
    storage.write_bytes(RECORD, record.to_json())
    state.forget_done(run_id)
    return record
