"""``make bench``: the job against the alternatives, same broker, same data, same run.

Starts the embedded broker and produces simulated topics (the simulator's flat shape: the
traffic the earlier figures were measured on), then runs each contender several times as its
own process (interleaved, so that a slow moment of the machine hits them all) and reports
messages/s (median and spread), CPU time per message and peak RSS:

* the mixed topic (4 partitions, about 60 % other event kinds, 60 namespaces): the job with
  1 worker (with and without roll-ups), 2 workers and 2 processes, a hand-written
  consume-and-count loop, the raw consume ceiling and a naive Bytewax flow;
* a hot topic (one namespace with about 90 % of the traffic): the job with 1 worker and
  with 2 processes, their rows compared, CPU per message less each one's fixed cost;
* fixed costs: a fresh run over an empty topic, and a scheduled run that finds nothing new
  on a state with open windows (the cron steady state).

Results go to stdout and to bench/RESULTS.md. ``--memory-scaling`` measures peak RSS over 1, 2,
4 and 8 times the messages instead (bench/MEMORY.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

from flows.tooling.broker import embedded_broker
from flows.tooling.simulator import SimConfig, generate, produce

HERE = Path(__file__).resolve().parent
PY = sys.executable


@dataclass
class Runs:
    """Measurements of one contender: wall seconds, peak RSS bytes, CPU seconds."""

    wall: list[float] = field(default_factory=list)
    peak: list[int] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, measured: tuple[float, int, float]) -> None:
        self.wall.append(measured[0])
        self.peak.append(measured[1])
        self.cpu.append(measured[2])

    def rate(self, n: int) -> float:
        return n / statistics.median(self.wall)


def measure(cmd: list[str]) -> tuple[float, int, float]:
    """Wall seconds, peak RSS (bytes) and CPU seconds (user + system) of a command, its
    children included."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [proc, *proc.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs))
        except psutil.Error:
            pass
        time.sleep(0.05)  # sampling memory of a running benchmark process
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {proc.stderr.read().decode()[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return elapsed, peak, cpu


def job(bootstrap: str, topic: str, d: Path, *extra: str, fresh: bool = True) -> list[str]:
    """The command of a scheduled run over ``topic`` with its output and state under ``d``."""
    if fresh:
        shutil.rmtree(d, ignore_errors=True)
    return [
        PY, "-m", "flows.cli", "run", "--brokers", bootstrap, "--topic", topic,
        "--output", str(d / "out"), "--state", str(d / "state"), "--progress", "off", *extra,
    ]  # fmt: skip


def without(measure: str, cmd: list[str]) -> list[str]:
    """``cmd`` (a one-process run) without one of the run's own measures (bench.without)."""
    assert cmd[:3] == [PY, "-m", "flows.cli"], cmd
    return [PY, "-m", "bench.without", measure, *cmd[3:]]


def produce_topic(broker: object, topic: str, cfg: SimConfig) -> int:
    """A topic of 4 partitions holding ``cfg``'s traffic, in the flat shape."""
    broker.create_topic(topic, partitions=4)  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    messages, _ = generate(replace(cfg, shape="flat"))
    n = produce(broker.bootstrap, topic, messages)  # type: ignore[attr-defined]
    print(f"{topic}: produced {n:,} messages in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return n


RETRIED: list[str] = []
"""Runs that failed and were run once more: (contender, the failure's last line)."""


def measure_again_once(cmd: Callable[[], list[str]], name: str) -> tuple[float, int, float]:
    """``measure(cmd())``; a run that fails is run once more, and the failure recorded for
    the report (a failing second run stops the benchmark)."""
    try:
        return measure(cmd())
    except RuntimeError as err:
        last = [line for line in str(err).splitlines() if line.strip()][-1:]
        RETRIED.append(f"{name}: {last[0] if last else err}")
        print(f"  {name} failed, run once more: {RETRIED[-1]}", file=sys.stderr)
        return measure(cmd())


def retried_note() -> list[str]:
    """The report's lines about runs that failed and were run again (none: no lines)."""
    if not RETRIED:
        return []
    return [
        f"{len(RETRIED)} run(s) failed and were run once more (the figures are of the second run):",
        "",
        *(f"- {r}" for r in RETRIED),
        "",
    ]


def interleaved(contenders: dict[str, Callable[[int], list[str]]], repeats: int) -> dict:
    results = {name: Runs() for name in contenders}
    for i in range(repeats):
        for name, cmd in contenders.items():
            results[name].add(measure_again_once(lambda cmd=cmd, i=i: cmd(i), name))
            w, peak, cpu = results[name].wall[-1], results[name].peak[-1], results[name].cpu[-1]
            print(f"  {name}: {w:.2f}s, {cpu:.2f}s CPU, {peak / 2**20:.0f} MiB", file=sys.stderr)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--hot-messages", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    parser.add_argument(
        "--memory-scaling",
        action="store_true",
        help="only the job's peak RSS over 1, 2, 4 and 8 x MESSAGES (written to MEMORY.md)",
    )
    args = parser.parse_args()
    if args.memory_scaling:
        return memory_scaling(args.messages, not args.no_write)
    compile_sources()
    work = Path(tempfile.mkdtemp(prefix="party-rates-bench-"))
    with embedded_broker() as broker:
        b = broker.bootstrap
        n = produce_topic(broker, "mixed", SimConfig(messages=args.messages, namespaces=60))
        hot_n = produce_topic(
            broker, "hot", SimConfig(messages=args.hot_messages, namespaces=60, hot_share=0.9)
        )
        broker.create_topic("empty", partitions=4)
        steady_n = produce_topic(
            broker, "steady", SimConfig(messages=41_000, namespaces=7, hours=50, seed=3)
        )

        print("throughput, mixed topic", file=sys.stderr)
        main_results = interleaved(
            {
                "party-rates run (1 worker)": lambda i: job(b, "mixed", work / "w1"),
                "party-rates run (1 worker, no roll-ups)": lambda i: job(
                    b, "mixed", work / "w0", "--rollups", ""
                ),
                "party-rates run (1 worker, default GC thresholds)": lambda i: without(
                    "gc", job(b, "mixed", work / "wgc")
                ),
                "party-rates run (2 workers)": lambda i: job(
                    b, "mixed", work / "w2", "--workers", "2"
                ),
                "party-rates run (2 processes)": lambda i: job(
                    b, "mixed", work / "p2", "--processes", "2"
                ),
                "hand-written consumer (orjson + dict)": lambda i: [
                    PY,
                    "-m",
                    "bench.consumers",
                    "handwritten",
                    b,
                    "mixed",
                    "4",
                ],
                "raw consume ceiling (no parsing)": lambda i: [
                    PY,
                    "-m",
                    "bench.consumers",
                    "ceiling",
                    b,
                    "mixed",
                    "4",
                ],
                "naive Bytewax flow (KafkaSource, json, EventClock)": lambda i: [
                    PY,
                    "-m",
                    "bench.consumers",
                    "naive",
                    b,
                    "mixed",
                    "4",
                ],
            },
            args.repeats,
        )

        print("hot namespace", file=sys.stderr)
        hot = interleaved(
            {
                "1 worker": lambda i: job(b, "hot", work / "hot1"),
                "2 processes": lambda i: job(b, "hot", work / "hot2", "--processes", "2"),
                "1 worker, empty topic": lambda i: job(b, "empty", work / "e1"),
                "2 processes, empty topic": lambda i: job(
                    b, "empty", work / "e2", "--processes", "2"
                ),
            },
            args.repeats,
        )
        same_rows = outputs_equal(work / "hot1" / "out", work / "hot2" / "out")

        print("fixed costs", file=sys.stderr)
        subprocess.run(job(b, "steady", work / "steady"), check=True, capture_output=True)
        shutil.copytree(work / "steady", work / "steady-saved")

        def steady(i: int) -> list[str]:
            """The state (and output) as the first run left them, restored before each run:
            the state belongs to its output path, so both stay where they were."""
            shutil.rmtree(work / "steady", ignore_errors=True)
            shutil.copytree(work / "steady-saved", work / "steady")
            return job(b, "steady", work / "steady", fresh=False)

        fixed = interleaved(
            {
                "fresh state, empty topic": lambda i: job(b, "empty", work / "fresh"),
                "existing state, nothing new to read": steady,
                "fresh state, empty topic, pandas importable": lambda i: without(
                    "pandas", job(b, "empty", work / "fresh-pd")
                ),
                "existing state, nothing new to read, pandas importable": lambda i: without(
                    "pandas", steady(i)
                ),
            },
            args.repeats,
        )
    shutil.rmtree(work, ignore_errors=True)
    report = render(n, hot_n, steady_n, args.repeats, main_results, hot, same_rows, fixed)
    print(report)
    if not args.no_write:
        (HERE / "RESULTS.md").write_text(report)
    return 0


def outputs_equal(a: Path, b: Path) -> bool:
    """Whether two outputs hold the same rows (party_rates and disconnect_outcomes)."""
    from flows.analysis import load_disconnect_outcomes, load_party_rates

    for load in (load_party_rates, load_disconnect_outcomes):
        x, y = load(a), load(b)
        if len(x) == 0 or not x.reset_index(drop=True).equals(y.reset_index(drop=True)):
            return False
    return True


def compile_sources() -> None:
    """Byte-compile the project once, as an installed package is: with
    PYTHONDONTWRITEBYTECODE set, each run would otherwise compile it again at start."""
    root = HERE.parent
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *(str(root / d) for d in ("flows", "schemas"))],
        check=True,
    )


SCALES = (1, 2, 4, 8)
"""Simulated days in a row of ``make bench --memory-scaling``; the target compares 4 with 1."""
UNALIGNED = (4, 8)
"""Scales also run without event-time alignment (``--max-drift 0``), to weigh it."""


def memory_scaling(n: int, write: bool) -> int:
    """Peak RSS of the job over n, 2n, 4n and 8n messages (simulated days in a row): bounded
    by open windows, not input; at 4n and 8n also without event-time alignment."""
    compile_sources()
    work = Path(tempfile.mkdtemp(prefix="party-rates-mem-"))
    rows = []
    with embedded_broker() as broker:
        produced = dict.fromkeys(SCALES, 0)
        for scale in SCALES:
            broker.create_topic(f"mem-{scale}", partitions=4)
        for day in range(max(SCALES)):  # each day generated once, produced where it belongs
            start = SimConfig().start + timedelta(days=day)
            cfg = SimConfig(messages=n, namespaces=60, seed=day, start=start, shape="flat")
            messages, _ = generate(cfg)
            for scale in SCALES:
                if day < scale:
                    produced[scale] += produce(broker.bootstrap, f"mem-{scale}", messages)
            del messages
        for scale in SCALES:
            topic = f"mem-{scale}"
            _wall, peak, _cpu = measure(job(broker.bootstrap, topic, work / topic))
            unaligned = None
            if scale in UNALIGNED:
                cmd = job(broker.bootstrap, topic, work / topic, "--max-drift", "0")
                unaligned = measure(cmd)[1]
            rows.append((scale, produced[scale], peak, unaligned))
            print(f"{produced[scale]:,} messages: peak RSS {peak / 2**20:.0f} MiB", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    base = rows[0][2]
    at4 = next(r[2] for r in rows if r[0] == 4)
    table = [
        f"| {scale} | {count:,} | {peak / 2**20:.0f} | {peak / base:.2f} | "
        + ("" if unaligned is None else f"{unaligned / 2**20:.0f}")
        + " |"
        for scale, count, peak, unaligned in rows
    ]
    report = "\n".join(
        [
            "# Memory scaling",
            "",
            "Measured by `make bench BENCH_ARGS=--memory-scaling` on "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC ({platform.platform()}, "
            f"{os.cpu_count()} CPUs): the job's peak RSS (process and children, sampled "
            "every 50 ms) over simulated days in a row, one run of each; at 4 and 8 days also "
            "without event-time alignment (`--max-drift 0`).",
            "",
            "| days | messages | peak RSS (MiB) | x one day | without alignment (MiB) |",
            "|---:|---:|---:|---:|---:|",
            *table,
            "",
            f"4x the input: peak RSS x **{at4 / base:.2f}**.",
            "",
        ]
    )
    print(report)
    if write:
        (HERE / "MEMORY.md").write_text(report)
    return 0


def _peak(results: dict[str, Runs], name: str) -> float:
    return statistics.median(results[name].peak)


def _us(seconds: float, n: int) -> str:
    return f"{seconds / n * 1e6:.2f}"


def render(
    n: int,
    hot_n: int,
    steady_n: int,
    repeats: int,
    results: dict[str, Runs],
    hot: dict[str, Runs],
    same_rows: bool,
    fixed: dict[str, Runs],
) -> str:
    med = {k: v.rate(n) for k, v in results.items()}
    lines = [
        "# Benchmark results",
        "",
        f"Measured by `make bench` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, each contender "
        f"run {repeats} times as its own process (the contenders of a table in turn), against "
        "the same embedded broker and data.",
        "",
        f"Machine: {platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB; the broker "
        "runs on the same cores.",
        "",
        f"## Throughput: the mixed topic, {n:,} messages",
        "",
        "4 partitions, about 60 % other event names, 60 namespaces, duplicates, late and "
        "malformed messages.",
        "",
        "| contender | median msg/s | min-max msg/s | CPU µs per message (median) "
        "| peak RSS (MiB, max) |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, v in results.items():
        rates = [n / w for w in v.wall]
        lines.append(
            f"| {k} | {med[k]:,.0f} | {min(rates):,.0f}-{max(rates):,.0f} | "
            f"{_us(statistics.median(v.cpu), n)} | {max(v.peak) / 2**20:.0f} |"
        )
    one, plain = "party-rates run (1 worker)", "party-rates run (1 worker, no roll-ups)"
    gc = "party-rates run (1 worker, default GC thresholds)"

    def ratio(a: str, b: str) -> str:
        """Throughput of a ÷ of b, medians, and the spread of the ratio run by run (the
        runs of one repeat were made one after the other)."""
        each = [wb / wa for wa, wb in zip(results[a].wall, results[b].wall, strict=True)]
        return f"**{med[a] / med[b]:.2f}** (run by run {min(each):.2f}-{max(each):.2f})"

    lines += [
        "",
        f"- job ÷ hand-written: {ratio(one, 'hand-written consumer (orjson + dict)')}"
        " (target ≥ 1.5)",
        f"- job ÷ raw consume ceiling: {ratio(one, 'raw consume ceiling (no parsing)')}"
        " (stretch target ≥ 0.6)",
        f"- job ÷ naive Bytewax flow: "
        f"{ratio(one, 'naive Bytewax flow (KafkaSource, json, EventClock)')}",
        f"- roll-ups (1h, 1d) cost: throughput ÷ without them {ratio(one, plain)} "
        f"(target ≥ 0.90), peak RSS ÷ without them "
        f"**{_peak(results, one) / _peak(results, plain):.2f}** (target ≤ 1.10)",
        f"- 2 workers ÷ 1 worker: {ratio('party-rates run (2 workers)', one)}",
        f"- 2 processes ÷ 1 worker: {ratio('party-rates run (2 processes)', one)}",
        f"- the run's collector thresholds (`flows.run.fewer_collections`): throughput ÷ at "
        f"Python's default thresholds "
        f"{ratio(one, gc)}; CPU µs per message {_us(statistics.median(results[one].cpu), n)} "
        f"against {_us(statistics.median(results[gc].cpu), n)}",
        "",
        "The job's time is the whole run (start-up, partition checks, consume, validate, "
        "fold, window, match disconnect outcomes, write Parquet and the manifest); the others "
        "only consume and count in memory. CPU time is user + system of the contender's "
        "processes, not the broker's.",
        "",
    ]
    one, two = hot["1 worker"], hot["2 processes"]
    e1, e2 = hot["1 worker, empty topic"], hot["2 processes, empty topic"]
    cpu1 = statistics.median(one.cpu) - statistics.median(e1.cpu)
    cpu2 = statistics.median(two.cpu) - statistics.median(e2.cpu)
    lines += [
        f"## A hot namespace: {hot_n:,} messages, one namespace with about 90 % of them",
        "",
        "| run | median wall (s) | CPU (s, median) | CPU of a run on an empty topic (s) "
        "| CPU µs per message, less that |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, runs, empty, cpu in (("1 worker", one, e1, cpu1), ("2 processes", two, e2, cpu2)):
        lines.append(
            f"| {label} | {statistics.median(runs.wall):.2f} | "
            f"{statistics.median(runs.cpu):.2f} | {statistics.median(empty.cpu):.2f} | "
            f"{_us(cpu, hot_n)} |"
        )
    each = [
        (c2 - f2) / (c1 - f1)
        for c1, f1, c2, f2 in zip(one.cpu, e1.cpu, two.cpu, e2.cpu, strict=True)
    ]
    lines += [
        "",
        f"- 2 processes ÷ 1 worker, CPU per message less the fixed cost: **{cpu2 / cpu1:.2f}**"
        f" (run by run {min(each):.2f}-{max(each):.2f}; target ≤ 1.15)",
        f"- the two runs wrote the same rows: **{'yes' if same_rows else 'NO'}**",
        "",
        "On 2 cores shared with the broker the wall-clock gain of a second process cannot "
        "show; the CPU it costs can.",
        "",
        "## Fixed costs",
        "",
        "| run | median wall (s) | min-max (s) | CPU (s, median) | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, v in fixed.items():
        lines.append(
            f"| {k} | {statistics.median(v.wall):.2f} | {min(v.wall):.2f}-{max(v.wall):.2f} | "
            f"{statistics.median(v.cpu):.2f} | {max(v.peak) / 2**20:.0f} |"
        )
    lines += [
        "",
        "The runs marked *pandas importable* leave out `flows.run.keep_pandas_out`, so that "
        "pyarrow imports pandas on first use, as it does by default: what keeping it out buys "
        "is the difference of each pair.",
        "",
        f"The steady state: a topic of 50 simulated hours, {steady_n:,} messages, 7 "
        "namespaces, read once; then runs that find nothing new, each on a copy of that state "
        "(it rewrites the open windows' provisional rows). Targets: under 0.6 s and under 1 s.",
        "",
        *retried_note(),
        "Where the time goes, stage by stage: [BUDGET.md](BUDGET.md) (`make budget`); "
        "[PROFILE.md](PROFILE.md) (`make profile`). Memory over 1x and "
        "4x the input: [MEMORY.md](MEMORY.md) (`make bench BENCH_ARGS=--memory-scaling`). "
        "What limits the job, and the gap to the targets: [LIMITS.md](LIMITS.md).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
