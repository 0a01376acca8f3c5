"""What the demo prints after its run: the datasets written, the namespaces with the worst
drop ratio beside their cohort drop ratio, and the incidents found beside the simulated
ones."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flows.analysis.incidents import describe_incidents, find_incidents
from flows.analysis.loaders import load_disconnect_outcomes, load_party_rates, rollup_lengths
from flows.analysis.tables import rank_namespaces


def demo_summary(output: Path, simulated: Iterable[Any]) -> str:
    """The demo's account of an output (``simulated``: the simulator's incidents)."""
    rates = load_party_rates(output)
    outcomes = load_disconnect_outcomes(output)
    written = [("party_rates", rates), ("disconnect_outcomes", outcomes)]
    for length in rollup_lengths(output):  # the roll-ups the run wrote (--rollups)
        written += [
            (f"party_rates_{length}", load_party_rates(output, rollup=length)),
            (f"disconnect_outcomes_{length}", load_disconnect_outcomes(output, rollup=length)),
        ]
    width = max(len(name) for name, _ in written) + 3
    lines = [f"\nParquet written under {output.resolve()}:"]
    for name, frame in written:
        final = int(frame["is_final"].sum())
        lines.append(f"  {name + '/':<{width}}{len(frame):,} rows ({final:,} final)")
    lines.append("  late_events/  dead_letters/  _runs/")
    columns = ["namespace", "disconnected", "dropped", "drop_ratio", "ci_low", "ci_high"]
    worst = rank_namespaces(rates, min_disconnects=20).head(10)[columns].set_index("namespace")
    final = outcomes[outcomes["is_final"]]
    cohort = final.groupby("namespace", observed=True)[["dropped", "rejoined"]].sum()
    worst["cohort_drop_ratio"] = cohort["dropped"] / (cohort["dropped"] + cohort["rejoined"])
    lines.append(
        "\nWorst namespaces by drop ratio (final windows, at least 20 disconnects; "
        "ci: 95% Wilson interval):"
    )
    lines.append(worst.to_string(float_format=lambda v: f"{v:.3f}"))
    lines.append(
        "\nIncidents found (a namespace's cohort drop ratio significantly above its own "
        "baseline, final windows):"
    )
    lines += [f"  {line}" for line in describe_incidents(find_incidents(outcomes))]
    lines.append("The simulated day's incidents, as the simulator made them:")
    made = [
        f"  {inc.namespace}: {inc.start:%Y-%m-%d %H:%M} to {inc.end:%H:%M} UTC: "
        f"drop probability {inc.usual_drop_probability:.2f} -> {inc.drop_probability:.2f}"
        for inc in simulated
    ]
    lines += made or ["  none"]
    return "\n".join(lines)


__all__ = ["demo_summary"]
