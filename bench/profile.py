"""``make profile``: where the job's time goes, written to bench/PROFILE.md.

Runs one scheduled run under cProfile against the embedded broker and a simulated topic and
tabulates the functions with the most own time. cProfile slows Python code down, so read
the shares, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import pstats
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from flows.tooling.broker import embedded_broker
from flows.tooling.simulator import SimConfig, generate, produce

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(prog="make profile")
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="party-rates-profile-"))
    out = work / "job.prof"
    with embedded_broker() as broker:
        broker.create_topic("mpv2SessionHistory", partitions=4)
        messages, _ = generate(SimConfig(messages=args.messages))
        n = produce(broker.bootstrap, "mpv2SessionHistory", messages)
        del messages
        subprocess.run(
            [
                sys.executable, "-m", "cProfile", "-o", str(out), "-m", "flows.cli", "run",
                "--brokers", broker.bootstrap, "--output", str(work / "out"),
                "--state", str(work / "state"), "--progress", "off",
            ],
            check=True,
        )  # fmt: skip
    stats = pstats.Stats(str(out))
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[: args.top]  # type: ignore[attr-defined]
    lines = [
        "# Where the time goes",
        "",
        f"Measured by `make profile` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: one scheduled "
        f"run over {n:,} simulated messages under cProfile ({total:.1f} s in all, profiler "
        "overhead included). Own time per function, largest first.",
        "",
        "| function | calls | own time (s) | share |",
        "|---|---:|---:|---:|",
    ]
    for (file, line, func), (_cc, calls, tt, _ct, _callers) in rows:
        where = f"{Path(file).name}:{line}({func})" if line else func
        lines.append(f"| `{where}` | {calls:,} | {tt:.2f} | {100 * tt / total:.1f}% |")
    report = "\n".join(lines) + "\n"
    (HERE / "PROFILE.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
