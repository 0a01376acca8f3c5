"""``make profile``: where the job's time goes, written to bench/PROFILE.md.

Runs one scheduled run under the sampling profiler py-spy (250 samples per second, Python
frames) against the embedded broker and a simulated topic, and tabulates the share of
samples by step of the job and by function. Sampling barely slows the job down; read the
shares, and the seconds as approximate.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench.run import compile_sources
from flows.tooling.broker import embedded_broker
from flows.tooling.simulator import SimConfig, generate, produce

HERE = Path(__file__).resolve().parent
RATE = 250

STEPS = (  # (step, a frame that marks it), the first that matches a sample's stack wins
    ("start-up: imports", "_find_and_load"),
    ("partition step: consume", "source.py:"),
    ("partition step: skip, parse, dedup", "process_batch"),
    ("shards: merge parts, match outcomes", "ShardLogic"),
    ("roll-ups: hour and day windows", "RollupsLogic"),
    ("rows: add shards' reports up", "RowsLogic"),
    ("clock: watermark, ticks", "ClockLogic"),
    ("sinks: buffer rows", "ParquetPart.write_batch"),
    ("sinks: write Parquet", "ParquetPart.close"),
    ("manifest", "Manifest"),
)


def _step(frames: list[str]) -> str:
    joined = ";".join(frames)
    if "process_batch" in joined:
        if "fold (" in joined or "to_parts (" in joined:
            return "partition step: fold into partial aggregates"
        if "parse_candidate" in joined:
            return "partition step: decode counted events"
        return "partition step: skip, dedup, lateness"
    for step, marker in STEPS:
        if marker in joined:
            return step
    if any("bytewax" in f for f in frames) or frames[-1].startswith("run_job"):
        return "Bytewax (operators, routing, snapshots)"
    return "other"


def main() -> int:
    parser = argparse.ArgumentParser(prog="make profile")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    compile_sources()
    work = Path(tempfile.mkdtemp(prefix="party-rates-profile-"))
    raw = work / "profile.txt"
    with embedded_broker() as broker:
        broker.create_topic("mpv2SessionHistory", partitions=4)
        messages, _ = generate(SimConfig(messages=args.messages, namespaces=60, shape="flat"))
        n = produce(broker.bootstrap, "mpv2SessionHistory", messages)
        del messages
        spy = Path(sys.executable).parent / "py-spy"
        subprocess.run(
            [
                str(spy), "record", "-r", str(RATE), "-f", "raw", "-o", str(raw), "--",
                sys.executable, "-m", "flows.cli", "run", "--brokers", broker.bootstrap,
                "--output", str(work / "out"), "--state", str(work / "state"),
                "--progress", "off",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    steps: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [re.sub(r"\(/\S*?/(site-packages|main)/", "(", f) for f in stack.split(";")]
        samples = int(count)
        total += samples
        steps[_step(frames)] += samples
        own[frames[-1]] += samples
    shutil.rmtree(work, ignore_errors=True)
    seconds = total / RATE
    lines = [
        "# Where the time goes",
        "",
        f"Measured by `make profile` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: one scheduled "
        f"run over {n:,} simulated messages (the mixed topic of `make bench`) under py-spy, "
        f"{RATE} samples a second of the job's Python frames, {total:,} samples "
        f"(about {seconds:.1f} s of the run's main thread).",
        "",
        "## By step",
        "",
        "| step | share of samples | about (s) |",
        "|---|---:|---:|",
    ]
    for step, samples in steps.most_common():
        lines.append(f"| {step} | {100 * samples / total:.1f}% | {samples / RATE:.2f} |")
    lines += [
        "",
        "Bytewax's own work (routing items between steps, calling the steps, snapshots) runs "
        "in its Rust core and shows as samples with no Python frame of the job below them.",
        "",
        "## By function (own time)",
        "",
        "| function (file:line) | share of samples |",
        "|---|---:|",
    ]
    for frame, samples in own.most_common(args.top):
        lines.append(f"| `{frame[:110]}` | {100 * samples / total:.1f}% |")
    report = "\n".join(lines) + "\n"
    (HERE / "PROFILE.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
