"""``make bench``: the job against the alternatives, same broker, same data, same run.

Starts the embedded broker, produces a simulated mixed topic (4 partitions; the simulator's
flat shape, the traffic the recorded figures were measured on), then runs each
contender several times as its own process and reports messages/s (median and spread) and
peak RSS. Results go to stdout and to bench/RESULTS.md.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

from flows.tooling.broker import embedded_broker
from flows.tooling.simulator import SimConfig, generate, produce

HERE = Path(__file__).resolve().parent


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


def main() -> int:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    parser.add_argument(
        "--memory-scaling",
        action="store_true",
        help="only the job's peak RSS over MESSAGES and 4 x MESSAGES (written to MEMORY.md)",
    )
    args = parser.parse_args()
    if args.memory_scaling:
        return memory_scaling(args.messages, not args.no_write)
    py = sys.executable
    compile_sources()
    work = Path(tempfile.mkdtemp(prefix="party-rates-bench-"))
    results: dict[str, list[tuple[float, int, float]]] = {}
    with embedded_broker() as broker:
        topic = "mpv2SessionHistory"
        broker.create_topic(topic, partitions=4)
        t0 = time.perf_counter()
        messages, _ = generate(SimConfig(messages=args.messages, namespaces=60, shape="flat"))
        n = produce(broker.bootstrap, topic, messages)
        del messages
        print(f"produced {n:,} messages in {time.perf_counter() - t0:.0f}s", file=sys.stderr)

        def job(i: int, *extra: str) -> list[str]:
            d = work / f"job-{'-'.join(extra)}-{i}"
            shutil.rmtree(d, ignore_errors=True)
            return [
                py, "-m", "flows.cli", "run", "--brokers", broker.bootstrap,
                "--output", str(d / "out"), "--state", str(d / "state"),
                "--progress", "off", *extra,
            ]  # fmt: skip

        contenders = {
            "party-rates run (1 worker)": lambda i: job(i),
            "party-rates run (2 workers)": lambda i: job(i, "--workers", "2"),
            "party-rates run (2 processes)": lambda i: job(i, "--processes", "2"),
            "hand-written consumer (orjson + dict)": lambda i: [
                py, "-m", "bench.consumers", "handwritten", broker.bootstrap, topic, "4"
            ],
            "raw consume ceiling (no parsing)": lambda i: [
                py, "-m", "bench.consumers", "ceiling", broker.bootstrap, topic, "4"
            ],
            "naive Bytewax flow (KafkaSource, json, EventClock)": lambda i: [
                py, "-m", "bench.consumers", "naive", broker.bootstrap, topic, "4"
            ],
        }  # fmt: skip
        for i in range(args.repeats):
            for name, cmd in contenders.items():
                elapsed, peak, cpu = measure(cmd(i))
                results.setdefault(name, []).append((elapsed, peak, cpu))
                print(f"{name}: {n / elapsed:,.0f} msg/s, {peak / 2**20:.0f} MiB", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    report = render(n, args.repeats, results)
    print(report)
    if not args.no_write:
        (HERE / "RESULTS.md").write_text(report)
    return 0


def compile_sources() -> None:
    """Byte-compile the project once, as an installed package is: with
    PYTHONDONTWRITEBYTECODE set, each run would otherwise compile it again at start."""
    root = HERE.parent
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *(str(root / d) for d in ("flows", "schemas"))],
        check=True,
    )


def memory_scaling(n: int, write: bool) -> int:
    """Peak RSS of the job over n and over 4n messages: bounded by open windows, not input."""
    py = sys.executable
    compile_sources()
    work = Path(tempfile.mkdtemp(prefix="party-rates-mem-"))
    rows = []
    with embedded_broker() as broker:
        for scale in (1, 4):
            topic = f"mem-{scale}"
            broker.create_topic(topic, partitions=4)
            produced = 0
            for seed in range(scale):  # 4n as four simulated days in a row
                start = SimConfig().start + timedelta(days=seed)
                cfg = SimConfig(messages=n, namespaces=60, seed=seed, start=start, shape="flat")
                messages, _ = generate(cfg)
                produced += produce(broker.bootstrap, topic, messages)
                del messages
            d = work / topic
            cmd = [
                py, "-m", "flows.cli", "run", "--brokers", broker.bootstrap, "--topic", topic,
                "--output", str(d / "out"), "--state", str(d / "state"), "--progress", "off",
            ]  # fmt: skip
            elapsed, peak, _cpu = measure(cmd)
            rows.append((produced, elapsed, peak))
            print(f"{produced:,} messages: peak RSS {peak / 2**20:.0f} MiB", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    (small, _, p1), (big, _, p4) = rows
    report = "\n".join(
        [
            "# Memory scaling",
            "",
            "Measured by `make bench BENCH_ARGS=--memory-scaling` on "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC ({platform.platform()}, "
            f"{os.cpu_count()} CPUs): the job's peak RSS (process and children, sampled "
            "every 50 ms) over one simulated day and over four days in a row.",
            "",
            "| messages | peak RSS (MiB) |",
            "|---:|---:|",
            f"| {small:,} | {p1 / 2**20:.0f} |",
            f"| {big:,} | {p4 / 2**20:.0f} |",
            "",
            f"4x the input: peak RSS x **{p4 / p1:.2f}**.",
            "",
        ]
    )
    print(report)
    if write:
        (HERE / "MEMORY.md").write_text(report)
    return 0


def render(n: int, repeats: int, results: dict[str, list[tuple[float, int, float]]]) -> str:
    rate = {k: [n / e for e, _, _ in v] for k, v in results.items()}
    med = {k: statistics.median(v) for k, v in rate.items()}
    lines = [
        "# Benchmark results",
        "",
        f"Measured by `make bench` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {n:,} simulated "
        f"messages (4 partitions, about 60 % other event names, 60 namespaces, duplicates, "
        f"late and malformed messages), each contender run {repeats} times as its own process "
        "against the same embedded broker and data.",
        "",
        f"Machine: {platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB.",
        "",
        "| contender | median msg/s | min-max msg/s | CPU µs per message (median) "
        "| peak RSS (MiB, max) |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, v in rate.items():
        peak = max(p for _, p, _ in results[k]) / 2**20
        cpu_us = statistics.median(c for _, _, c in results[k]) / n * 1e6
        lines.append(
            f"| {k} | {med[k]:,.0f} | {min(v):,.0f}-{max(v):,.0f} | {cpu_us:.1f} | {peak:.0f} |"
        )
    job = med["party-rates run (1 worker)"]
    naive = med["naive Bytewax flow (KafkaSource, json, EventClock)"]
    lines += [
        "",
        f"- job ÷ hand-written: **{job / med['hand-written consumer (orjson + dict)']:.2f}**",
        f"- job ÷ raw consume ceiling: **{job / med['raw consume ceiling (no parsing)']:.2f}**",
        f"- job ÷ naive Bytewax flow: **{job / naive:.2f}**",
        f"- 2 workers ÷ 1 worker: **{med['party-rates run (2 workers)'] / job:.2f}**",
        f"- 2 processes ÷ 1 worker: **{med['party-rates run (2 processes)'] / job:.2f}**",
        "",
        "The job's time is the whole run (start-up, partition checks, consume, validate, "
        "window, match disconnect outcomes, write Parquet and the manifest); the others only "
        "consume and count in memory. CPU time is user + system of the contender's processes "
        "(not the broker's): on this machine the broker shares the same cores.",
        "",
        "Where the time goes: [PROFILE.md](PROFILE.md) (`make profile`). Memory over 1x and "
        "4x the input: [MEMORY.md](MEMORY.md) (`make bench BENCH_ARGS=--memory-scaling`). "
        "What limits the job, and the gap to the targets: [LIMITS.md](LIMITS.md).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
