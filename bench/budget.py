"""``make budget``: the job's CPU per message, stage by stage, written to bench/BUDGET.md.

Ablation: each row of the budget is the job built from its own pieces up to one stage and
run as its own process (``python -m bench.budget variant STAGE -- RUN ARGS``) against the
same embedded-broker topic; each row adds one stage to the row before it, so the difference
of their CPU per message is what that stage costs. The rows are run in turn, several times
(interleaved, so a slow moment of the machine hits them all), on the bench's mixed topic and
its hot-namespace topic, with 1 worker and with 2 processes. Nothing here is a flag of the
job: a variant replaces pieces of the job in its own process (and in the processes of its
local cluster) before it runs ``party-rates run``.

Each variant tallies what it did (messages seen, candidates found, events decoded, events
folded, rows that reached the writer) into a file beside its output, and the budget checks
every tally against what the stages before and after it say: a row that skipped work it
claims to do is refused, not reported.

A last, untimed run of 2 processes counts what crosses between them: the items of the job's
own types that Bytewax pickles, and their pickled size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PY = sys.executable


@dataclass(frozen=True)
class Stage:
    """One row of the budget: what the variant runs, and what this row adds."""

    name: str
    adds: str  # what this row adds to the one before (what the row before removed)
    check: str  # how the tallies show the rest still ran
    args: tuple[str, ...] = ()  # extra ``party-rates run`` arguments


STAGES: tuple[Stage, ...] = (
    Stage(
        "consume",
        "the job's frame: start-up, the reader (consume, end offsets), Bytewax, the clock, "
        "the manifest; every message counted as skipped, nothing looked at",
        "messages seen = the topic's messages",
    ),
    Stage(
        "skip",
        "the skip test on every message (a counted name in the bytes, else an object's braces)",
        "candidates = those the same test finds in the produced messages",
    ),
    Stage(
        "decode",
        "decoding each candidate into the envelope's struct (with its pre-checks)",
        "decoded = those the decoder accepts among the produced messages",
    ),
    Stage(
        "scan",
        "the whole per-message pass: the rest of validation, event time, before-start, "
        "dedup, lateness, dead letters and late rows (to the sinks, not written), marks",
        "the manifest's counts equal the full job's",
    ),
    Stage(
        "fold",
        "folding counted events into partial aggregates (three 64-bit hashes an event), "
        "the parts then dropped before the keyed steps",
        "events folded = the full job's",
    ),
    Stage(
        "keyed",
        "the keyed steps: parts to their shards, merge, ticks, the rows step; no roll-ups "
        "(--rollups ''), outcome events dropped from the parts",
        "party_rates rows reaching the writer = the full job's",
        ("--rollups", ""),
    ),
    Stage(
        "rollups",
        "the roll-ups (1h, 1d: their step, their reports, their rows)",
        "roll-up rows reaching the writer = the full job's",
    ),
    Stage(
        "outcomes",
        "outcome matching: the events in the parts, matched, disconnect_outcomes rows",
        "every dataset's rows reaching the writer = the full job's",
    ),
    Stage(
        "writes",
        "writing Parquet (Arrow tables, files, renames): the full job",
        "rows written = the rows of the row before",
    ),
    Stage(
        "snapshots-off",
        "snapshots only at the end of the run (--snapshot-interval 1d), else the full job: "
        "the row before less this one is what snapshots at their 10 s interval cost",
        "the manifest's counts and rows written equal the full job's",
        ("--snapshot-interval", "1d"),
    ),
)
"""Cumulative: each stage runs everything of the stages before it."""

NO_ROLLUPS = Stage(
    "no-rollups",
    "the full job without roll-ups (--rollups ''): the writes row less this one is what "
    "the roll-ups cost in all, their step and their four datasets' writes",
    "party_rates and disconnect_outcomes rows written equal the full job's",
    ("--rollups", ""),
)

EMPTY = Stage(
    "empty-topic",
    "the full job on an empty topic (start-up, checks, the dataflow, the manifest, the record)",
    "the manifest counts no message",
)


# ---------------------------------------------------------------------------------------
# In a variant's process


class Tally:
    """What a variant did, written at its end for the budget to check."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(dict(self.counts)))


TALLY = Tally()


def _consume_only(state: Any, partition: int, messages: list[Any], **kw: Any) -> Any:
    """process_batch that looks at nothing: every message skipped."""
    return _stub_result(state, partition, messages, kw, lambda: None)


def _skip_only(state: Any, partition: int, messages: list[Any], **kw: Any) -> Any:
    from flows.core.parsing import NAMES_COUNTED, looks_like_object

    def work() -> None:
        search = NAMES_COUNTED.search
        found = objects = 0
        for msg in messages:
            value = msg.value()
            if value is not None and search(value) is not None:
                found += 1
            elif value is not None and (
                (value and value[0] == 123 and value[-1] == 125) or looks_like_object(value)
            ):
                objects += 1
        TALLY.counts["candidates"] += found
        TALLY.counts["other_objects"] += objects

    return _stub_result(state, partition, messages, kw, work)


def _skip_decode(state: Any, partition: int, messages: list[Any], **kw: Any) -> Any:
    from flows.core.parsing import NAMES_COUNTED, fast_decode, looks_like_object
    from schemas.events import KIND_OF_NAME

    def work() -> None:
        search = NAMES_COUNTED.search
        found = decoded = kinds = 0
        for msg in messages:
            value = msg.value()
            if value is not None and search(value) is not None:
                found += 1
                env = fast_decode(value)
                if env is not None:
                    decoded += 1
                    kinds += KIND_OF_NAME.get(env.name) is not None
            elif value is not None and (
                (value and value[0] == 123 and value[-1] == 125) or looks_like_object(value)
            ):
                pass
        TALLY.counts["candidates"] += found
        TALLY.counts["decoded"] += decoded
        TALLY.counts["decoded_counted_names"] += kinds

    return _stub_result(state, partition, messages, kw, work)


def _stub_result(
    state: Any, partition: int, messages: list[Any], kw: dict[str, Any], work: Callable[[], None]
) -> Any:
    """A batch result that reads the batch (``work``) and folds nothing: the manifest still
    sums (every message skipped), the clock still hears of the partition."""
    from flows.core.items import BatchResult, BatchStats, Counts, Progress

    work()
    TALLY.counts["messages"] += len(messages)
    if messages:
        state.next_offset = messages[-1].offset() + 1
    progress = None
    if kw.get("report"):
        progress = Progress(partition, state.next_offset, None, kw.get("pending", True), {}, [])
    counts = Counts(len(messages), 0, len(messages))
    stats = BatchStats(partition, kw["first_offset"], state.next_offset, kw["end_offset"], counts)
    return BatchResult([], progress, [], [], stats)


def _folded_tally(fold: Callable[..., Any]) -> Callable[..., Any]:
    def counting_fold(events: Any, window_us: int, shards: int) -> Any:
        events = list(events)
        TALLY.counts["folded"] += len(events)
        return fold(events, window_us, shards)

    return counting_fold


def _no_outcome_events(to_parts: Callable[..., Any]) -> Callable[..., Any]:
    def parts_without_events(folded: Any, partition: int, next_offset: int) -> Any:
        parts, latest = to_parts(folded, partition, next_offset)
        return [(k, p._replace(events=[])) for k, p in parts], latest

    return parts_without_events


def _rows_tally(write_files: Callable[..., Any], write: bool) -> Callable[..., Any]:
    def counting_write(storage: Any, files: Any, spec: Any) -> None:
        files = [(relpath, list(rows)) for relpath, rows in files]
        TALLY.counts[f"rows:{spec.name}"] += sum(len(rows) for _relpath, rows in files)
        if write:
            write_files(storage, files, spec)

    return counting_write


def _count_crossings() -> None:
    """Count (and size) every item of the job's own types that is pickled in this process:
    between processes, Bytewax pickles each item a step on another process receives."""
    from flows.core import items

    guard = [False]

    def hook(cls: type) -> None:
        own = cls.__dict__.get("__reduce__")

        def reduce(self: Any) -> Any:
            if not guard[0]:
                guard[0] = True
                try:
                    size = len(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))
                finally:
                    guard[0] = False
                TALLY.counts[f"crossed:{cls.__name__}"] += 1
                TALLY.counts[f"crossed_bytes:{cls.__name__}"] += size
            if own is not None:
                return own(self)
            return (cls._make, (tuple(self),))  # type: ignore[attr-defined]

        cls.__reduce__ = reduce  # type: ignore[method-assign,assignment]

    for cls in (
        items.ShardPart, items.Progress, items.Tick, items.Report, items.RollupPart,
        items.BatchStats, items.BatchResult, items.EventRef,
    ):  # fmt: skip
        hook(cls)


def apply(stage: str) -> None:
    """Replace the job's pieces in this process as ``stage`` says (cumulative)."""
    import flows.core.partition as partition
    import flows.core.watermark as watermark
    import flows.edges.sinks as sinks
    import flows.edges.source as source

    order = [s.name for s in STAGES]
    if stage == "crossing":
        _count_crossings()
        stage = "writes"
    at = order.index(stage) if stage in order else len(order)
    if stage in (EMPTY.name, NO_ROLLUPS.name):
        at = order.index("writes")
    stub = {"consume": _consume_only, "skip": _skip_only, "decode": _skip_decode}.get(stage)
    if stub is not None:
        source.process_batch = stub  # type: ignore[assignment]
    elif at == order.index("scan"):
        partition.fold = lambda events, window_us, shards: {}  # type: ignore[assignment,misc]
        partition.to_parts = lambda folded, p, off: ([], {})  # type: ignore[assignment,misc]
    else:
        partition.fold = _folded_tally(partition.fold)  # type: ignore[assignment]
        # a partition's first events (before it has an event time) are folded by the clock
        watermark.fold = _folded_tally(watermark.fold)  # type: ignore[assignment]
        if at == order.index("fold"):
            partition.to_parts = lambda folded, p, off: ([], {})  # type: ignore[assignment,misc]
        elif at < order.index("outcomes"):
            partition.to_parts = _no_outcome_events(partition.to_parts)  # type: ignore[assignment]
    sinks.write_files = _rows_tally(sinks.write_files, write=at >= order.index("writes"))


def variant(stage: str, tally: Path, argv: list[str]) -> int:
    """``party-rates run ARGV`` with the job's pieces replaced as ``stage`` says; a local
    cluster's processes run the same variant."""
    import flows.run
    from flows.cli import main

    apply(stage)

    class _Popen:
        """Starts a cluster's processes as this variant (flows.run.run_local_cluster)."""

        @staticmethod
        def Popen(cmd: list[str], **kw: Any) -> subprocess.Popen[bytes]:
            i = cmd.index("flows.cli")
            pid = cmd[cmd.index("--process-id") + 1]
            own = ["bench.budget", "variant", stage, str(tally) + f".p{pid}", "--"]
            return subprocess.Popen([*cmd[:i], *own, *cmd[i + 1 :]], **kw)

    flows.run.subprocess = _Popen  # type: ignore[assignment]
    try:
        return main(argv)
    finally:
        TALLY.write(tally)


# ---------------------------------------------------------------------------------------
# The budget


@dataclass
class Cell:
    """Runs of one stage in one setting."""

    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    tallies: list[dict[str, int]] = field(default_factory=list)
    counts: list[dict[str, int]] = field(default_factory=list)


def read_tallies(path: Path) -> dict[str, int]:
    """The tallies of a variant and of its cluster's processes, added up."""
    total: Counter[str] = Counter()
    for p in [path, *path.parent.glob(path.name + ".p*")]:
        if p.exists():
            total.update(json.loads(p.read_text()))
    return dict(total)


def manifest_counts(out: Path) -> dict[str, int]:
    runs = sorted((out / "_runs").glob("*.json"))
    return json.loads(runs[-1].read_text())["counts"] if runs else {}


def run_stage(bootstrap: str, topic: str, d: Path, stage: Stage, processes: int) -> tuple:
    from bench.run import measure_again_once

    tally = d / "tally.json"
    args = [
        "run", "--brokers", bootstrap, "--topic", topic, "--output", str(d / "out"),
        "--state", str(d / "state"), "--progress", "off", *stage.args,
    ]  # fmt: skip
    if processes > 1:
        args += ["--processes", str(processes)]
    cmd = [PY, "-m", "bench.budget", "variant", stage.name, str(tally), "--", *args]

    def fresh() -> list[str]:
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return cmd

    wall, _peak, cpu = measure_again_once(fresh, f"{topic}, {processes} process(es), {stage.name}")
    return wall, cpu, read_tallies(tally), manifest_counts(d / "out")


def expected_tallies(messages: list[Any]) -> dict[str, int]:
    """What the first stages must find, computed here from the produced messages."""
    from flows.core.parsing import NAMES_COUNTED, fast_decode

    candidates = [m.value for m in messages if NAMES_COUNTED.search(m.value) is not None]
    return {
        "messages": len(messages),
        "candidates": len(candidates),
        "decoded": sum(fast_decode(v) is not None for v in candidates),
    }


def check(results: dict[str, Cell], expected: dict[str, int]) -> list[str]:
    """Each row's tallies against the others'; the problems found (none: all ran)."""
    problems = []

    def same(stage: str, what: str, got: Any, want: Any) -> None:
        if got != want:
            problems.append(f"{stage}: {what} {got!r}, expected {want!r}")

    def rows(cell: Cell, prefix: str = "rows:") -> dict[str, int]:
        return {k: v for k, v in cell.tallies[-1].items() if k.startswith(prefix)}

    full = results["writes"]
    counts = full.counts[-1]
    folded = full.tallies[-1].get("folded", 0)  # the counted events, and those the clock
    if folded < counts["counted"]:  # then found late at their window
        problems.append(f"writes: {folded} events folded, fewer than {counts['counted']} counted")
    for name, cell in results.items():
        for t in cell.tallies:
            if name in ("consume", "skip", "decode"):
                same(name, "messages seen", t.get("messages"), expected["messages"])
            if name in ("skip", "decode"):
                same(name, "candidates", t.get("candidates"), expected["candidates"])
            if name == "decode":
                same(name, "decoded", t.get("decoded"), expected["decoded"])
            if name in ("fold", "keyed", "rollups", "outcomes", "snapshots-off", "no-rollups"):
                same(name, "events folded", t.get("folded"), folded)
        for c in cell.counts:
            if name not in ("consume", "skip", "decode", EMPTY.name):
                same(name, "manifest counts", c, counts)
            if name == EMPTY.name:
                same(name, "messages", c.get("messages"), 0)
    base = rows(results["writes"])
    keyed = {k: v for k, v in rows(results["keyed"]).items() if k.endswith("party_rates")}
    same("keyed", "party_rates rows", keyed, {k: base[k] for k in keyed})
    for k, v in rows(results["rollups"]).items():
        if "outcomes" not in k:
            same("rollups", k, v, base.get(k))
    same("outcomes", "rows", rows(results["outcomes"]), base)
    same("snapshots-off", "rows", rows(results["snapshots-off"]), base)
    no_rollups = rows(results[NO_ROLLUPS.name])
    same(NO_ROLLUPS.name, "rows", no_rollups, {k: base.get(k) for k in no_rollups})
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(prog="make budget")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--topics", default="mixed,hot")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--no-write", action="store_true", help="do not update BUDGET.md")
    args = parser.parse_args()
    if sys.argv[1:2] == ["variant"]:  # pragma: no cover (dispatched in __main__)
        raise SystemExit("variant is dispatched before argparse")

    from dataclasses import replace

    from bench.run import compile_sources
    from flows.tooling.broker import embedded_broker
    from flows.tooling.simulator import SimConfig, generate, produce

    compile_sources()
    work = Path(tempfile.mkdtemp(prefix="party-rates-budget-"))
    configs = {
        "mixed": SimConfig(messages=args.messages, namespaces=60, shape="flat"),
        "hot": SimConfig(messages=args.messages, namespaces=60, hot_share=0.9, shape="flat"),
    }
    topics = args.topics.split(",")
    shapes = [int(p) for p in args.processes.split(",")]
    stages = (*STAGES, NO_ROLLUPS, EMPTY)
    results: dict[tuple[str, int], dict[str, Cell]] = {}
    sizes: dict[str, int] = {}
    crossed: dict[str, dict[str, int]] = {}
    ceiling: dict[str, list[float]] = {}
    problems: list[str] = []
    with embedded_broker() as broker:
        b = broker.bootstrap
        broker.create_topic("empty", partitions=4)
        expected = {}
        for topic in topics:
            broker.create_topic(topic, partitions=4)
            messages, _ = generate(replace(configs[topic], shape="flat"))
            sizes[topic] = produce(b, topic, messages)
            expected[topic] = expected_tallies(messages)
            del messages
            print(f"{topic}: {sizes[topic]:,} messages", file=sys.stderr)
        for topic in topics:
            for procs in shapes:
                cells = results[(topic, procs)] = {s.name: Cell() for s in stages}
                for _ in range(args.repeats):
                    if procs == 1:
                        from bench.run import measure

                        ceiling.setdefault(topic, []).append(
                            measure([PY, "-m", "bench.consumers", "ceiling", b, topic, "4"])[2]
                        )
                    for stage in stages:
                        t = "empty" if stage is EMPTY else topic
                        d = work / f"{topic}-{procs}-{stage.name}"
                        wall, cpu, tally, counts = run_stage(b, t, d, stage, procs)
                        cell = cells[stage.name]
                        cell.wall.append(wall)
                        cell.cpu.append(cpu)
                        cell.tallies.append(tally)
                        cell.counts.append(counts)
                        print(
                            f"  {topic} x{procs} {stage.name}: {cpu:.2f}s CPU "
                            f"({cpu / sizes[topic] * 1e6:.2f} µs/msg), {wall:.2f}s wall",
                            file=sys.stderr,
                        )
                for p in check(cells, expected[topic]):
                    problems.append(f"{topic}, {procs} process(es): {p}")
            if 2 in shapes:
                d = work / f"{topic}-crossing"
                crossing = Stage("crossing", "", "")
                _w, _c, tally, _counts = run_stage(b, topic, d, crossing, 2)
                crossed[topic] = {k: v for k, v in tally.items() if k.startswith("crossed")}
    shutil.rmtree(work, ignore_errors=True)
    report = render(args, sizes, results, ceiling, crossed, problems)
    print(report)
    if not args.no_write:
        (HERE / "BUDGET.md").write_text(report)
    return 1 if problems else 0


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def render(
    args: argparse.Namespace,
    sizes: dict[str, int],
    results: dict[tuple[str, int], dict[str, Cell]],
    ceiling: dict[str, list[float]],
    crossed: dict[str, dict[str, int]],
    problems: list[str],
) -> str:
    import psutil

    lines = [
        "# CPU budget by stage",
        "",
        f"Measured by `make budget` (`python -m bench.budget`) on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC ({platform.platform()}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB; the broker on the same cores). "
        f"Each row is the job built up to one stage and run as its own process "
        f"({args.repeats} times, the rows in turn), on the topics of `make bench` "
        "(the simulator's flat shape, 4 partitions, 60 namespaces). CPU is user + system "
        "time of the run's processes (not the broker's), divided by the topic's messages.",
        "",
        "A row adds its stage to the row above it: the **stage** column is the difference "
        "of the two medians, what that stage costs a message. Each variant tallies what it "
        "did and the budget checks the tallies (the last column says against what); "
        + (
            "**every check held**."
            if not problems
            else "**some checks failed** (listed at the end): read those rows with care."
        ),
        "",
    ]
    for (topic, procs), cells in results.items():
        n = sizes[topic]
        label = "1 worker" if procs == 1 else f"{procs} processes"
        lines += [
            f"## {topic} topic, {n:,} messages, {label}",
            "",
            "| row | adds | CPU µs/msg (median) | min-max | stage µs/msg | checked |",
            "|---|---|---:|---:|---:|---|",
        ]
        if procs == 1 and topic in ceiling:
            cs = ceiling[topic]
            lines.append(
                f"| raw consume ceiling | `bench.consumers ceiling`: a consume loop, no "
                f"Bytewax, nothing looked at | {_med(cs) / n * 1e6:.2f} | "
                f"{min(cs) / n * 1e6:.2f}-{max(cs) / n * 1e6:.2f} | | |"
            )
        before: float | None = None
        for stage in STAGES:
            cpu = cells[stage.name].cpu
            us = _med(cpu) / n * 1e6
            diff = "" if before is None else f"{us - before:+.2f}"
            if stage.name == "snapshots-off":
                diff = f"{us - _med(cells['writes'].cpu) / n * 1e6:+.2f} (vs writes)"
            else:
                before = us
            lines.append(
                f"| {stage.name} | {stage.adds} | {us:.2f} | {min(cpu) / n * 1e6:.2f}-"
                f"{max(cpu) / n * 1e6:.2f} | {diff} | {stage.check} |"
            )
        empty = cells[EMPTY.name].cpu
        full = _med(cells["writes"].cpu) / n * 1e6
        plain = cells[NO_ROLLUPS.name].cpu
        step = (_med(cells["rollups"].cpu) - _med(cells["keyed"].cpu)) / n * 1e6
        lines += [
            "",
            f"Roll-ups in all: the full job {full:.2f} µs/msg, without roll-ups "
            f"{_med(plain) / n * 1e6:.2f} ({min(plain) / n * 1e6:.2f}-"
            f"{max(plain) / n * 1e6:.2f}): {full - _med(plain) / n * 1e6:+.2f} µs/msg, of "
            f"which their step (the rollups row) {step:+.2f}; the rest is their rows' way to "
            "the sinks and their writes.",
            "",
            f"Fixed costs, {EMPTY.adds}: {_med(empty):.2f} s of CPU "
            f"({min(empty):.2f}-{max(empty):.2f}), {_med(empty) / n * 1e6:.2f} µs over this "
            f"topic's messages; the full job less them: "
            f"{(_med(cells['writes'].cpu) - _med(empty)) / n * 1e6:.2f} µs/msg.",
            "",
        ]
    if crossed:
        lines += [
            "## What crosses between 2 processes",
            "",
            "One untimed run of the full job with 2 processes per topic, counting each item of "
            "the job's own types that is pickled (Bytewax pickles what a step on the other "
            "process receives) and its pickled size. Rows to the sinks (plain tuples) and "
            "snapshots are not counted here.",
            "",
            "| topic | item | items | KiB | items per 1,000 messages |",
            "|---|---|---:|---:|---:|",
        ]
        for topic, tally in crossed.items():
            for key in sorted(k for k in tally if k.startswith("crossed:")):
                cls = key.split(":", 1)[1]
                count, size = tally[key], tally.get(f"crossed_bytes:{cls}", 0)
                lines.append(
                    f"| {topic} | {cls} | {count:,} | {size / 1024:,.0f} | "
                    f"{count / sizes[topic] * 1000:.2f} |"
                )
        lines.append("")
    from bench.run import retried_note

    lines += retried_note()
    if problems:
        lines += ["## Checks that failed", ""] + [f"- {p}" for p in problems] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["variant"]:
        stage_name, tally_path = sys.argv[2], Path(sys.argv[3])
        rest = sys.argv[sys.argv.index("--") + 1 :]
        with contextlib.suppress(KeyboardInterrupt):
            sys.exit(variant(stage_name, tally_path, rest))
    sys.exit(main())
