"""A static HTML report of an output directory: one file, the plots embedded as PNG.

``party-rates report --output DIR`` calls :func:`render_report`. The page opens with the
incidents (:func:`flows.analysis.find_incidents`: what happened, and each incident against
its baseline), then holds the headline numbers, the worst namespaces, the rates over time,
the hour-of-day heatmap, the cohort drop ratio beside the window drop ratio and the rejoin
times (from ``disconnect_outcomes/``, when the output has it) and the data health (late
events, dead letters, runs); it needs no server and no other file.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from flows import analysis
from flows.analysis import plots

TOP_RANKED = 15
TOP_SERIES = 5
INCIDENT_PLOTS = 20
"""Incidents the report plots, strongest first (each is a panel pair 3.6 in tall); the rest
are in its table, and the report says how many were not plotted."""

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1150px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.muted { color: #666; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; height: auto; display: block; margin: 0.8em 0; }
.note { background: #f8f8f0; border-left: 4px solid #cc9; padding: 0.5em 1em; }
"""


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _img(fig: Figure, alt: str) -> str:
    data = base64.b64encode(figure_png(fig)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt_time(value: Any) -> str:
    if value is None or pd.isna(value):
        return ""
    ts = pd.Timestamp(value)
    return ts.strftime("%Y-%m-%d %H:%M:%S UTC") if ts.tzinfo else ts.isoformat()


def _table(df: pd.DataFrame, formatters: dict[str, Any] | None = None) -> str:
    if df.empty:
        return '<p class="muted">none</p>'
    return df.to_html(
        index=False, escape=True, border=0, formatters=formatters, na_rep="", justify="left"
    )


def _ranked_table(ranked: pd.DataFrame) -> str:
    table = ranked.head(TOP_RANKED).copy()
    table["95% interval"] = [
        f"{lo:.3f} to {hi:.3f}" for lo, hi in zip(table["ci_low"], table["ci_high"], strict=True)
    ]
    columns = ["rank", "namespace", "drop_ratio", "95% interval", "dropped", "disconnected"]
    columns += ["rejoin_ratio", "rejected", "windows"]
    return _table(
        table[columns],
        {
            "drop_ratio": "{:.3f}".format,
            "rejoin_ratio": "{:.3f}".format,
            "dropped": "{:,}".format,
            "disconnected": "{:,}".format,
            "rejected": "{:,}".format,
        },
    )


def _cohort_table(summary: pd.DataFrame) -> str:
    table = summary.head(TOP_RANKED).copy()
    table["95% interval"] = [
        f"{lo:.3f} to {hi:.3f}"
        for lo, hi in zip(table["cohort_ci_low"], table["cohort_ci_high"], strict=True)
    ]
    table = table.rename(
        columns={
            "drop_ratio": "window drop_ratio",
            "cohort_drop_ratio": "cohort drop ratio",
            "cohort_dropped": "dropped (cohort)",
            "cohort_rejoined": "rejoined (cohort)",
        }
    )
    columns = ["namespace", "cohort drop ratio", "95% interval", "window drop_ratio"]
    columns += ["difference", "disconnects", "dropped (cohort)", "rejoined (cohort)"]
    columns += ["unresolved", "superseded"]
    ratio = "{:.3f}".format
    count = "{:,}".format
    return _table(
        table[columns],
        {
            "cohort drop ratio": ratio,
            "window drop_ratio": ratio,
            "difference": "{:+.3f}".format,
            "disconnects": count,
            "dropped (cohort)": count,
            "rejoined (cohort)": count,
            "unresolved": count,
            "superseded": count,
        },
    )


def _rejoin_table(summary: pd.DataFrame) -> str:
    seconds = "{:.1f}".format
    return _table(
        summary.head(TOP_RANKED),
        {
            "windows": "{:,}".format,
            "rejoined": "{:,}".format,
            **{c: seconds for c in ("p50_q25", "p50_median", "p50_q75", "p95_median", "p95_max")},
        },
    )


def _outcomes_sections(
    rates: pd.DataFrame, outcomes: pd.DataFrame, manifests: list[dict[str, Any]]
) -> list[str]:
    """The cohort drop ratio and rejoin-time sections, or a note when there is no data."""
    heading = "<h2>Cohort drop ratio</h2>"
    if outcomes.empty:
        return [
            heading,
            '<p class="muted">This output has no <code>disconnect_outcomes/</code> rows (it was '
            "written before the dataset existed, or no disconnect has been read yet): the "
            "cohort drop ratio and the rejoin times are not shown.</p>",
        ]
    horizon = analysis.outcome_horizon(manifests)
    summary = analysis.cohort_summary(rates, outcomes)
    rejoins = analysis.rejoin_time_summary(outcomes)
    final = int(outcomes["is_final"].sum())
    return [
        heading,
        '<div class="note"><p><b>Window vs cohort.</b> The window <code>drop_ratio</code> '
        "divides the drops <i>in</i> a window by the disconnects <i>in</i> it. A drop arrives "
        "an inactive timeout after its disconnect, so at window edges it is counted in a later "
        "window than its disconnect: the window ratio is biased window by window. The "
        "<b>cohort drop ratio</b> (<code>disconnect_outcomes/</code>) follows each window's "
        "own disconnects to their outcome, the player's next rejoin or drop: dropped ÷ "
        "(rejoined + dropped) of those disconnects. A disconnect with no outcome within the "
        f"outcome horizon ({html.escape(horizon)}) is unresolved, and a row is final only an "
        "outcome horizon after its window, so the comparison covers the windows that are "
        f"final in both datasets ({final:,} of {len(outcomes):,} outcome rows are final). "
        "Summed over many windows the two agree; where they differ, the cohort ratio is the one "
        "that describes what became of the disconnects.</p></div>",
        "<p>Left: both ratios hourly for the namespaces with the highest cohort drop ratio "
        "(among those with at least 20 disconnects). Right: per namespace over "
        "the whole range, window ratio against cohort ratio with the cohort ratio's 95% Wilson "
        "interval; on the dotted diagonal they agree.</p>",
        _img(
            plots.plot_cohort_vs_window(rates, outcomes, top=TOP_SERIES - 1),
            "window drop ratio and cohort drop ratio",
        ),
        _cohort_table(summary),
        "<h2>Rejoin times</h2>",
        "<p>Seconds from a disconnect to the player's rejoin. Each final window of "
        "<code>disconnect_outcomes/</code> with rejoins carries the median "
        "(<code>rejoin_seconds_p50</code>) and 95th percentile (<code>rejoin_seconds_p95</code>) "
        "of its rejoins; the boxes show how those per-window values spread over the windows of "
        "each namespace, one value per window, not weighted by its number of rejoins (box: "
        "quartiles, whiskers: 5th to 95th percentile). The table: quartiles of the per-window "
        "medians, and the median and maximum of the per-window 95th percentiles, slowest "
        "first.</p>",
        _img(plots.plot_rejoin_times(outcomes), "rejoin time distribution per namespace"),
        _rejoin_table(rejoins),
    ]


def _incidents_section(outcomes: pd.DataFrame, incidents: pd.DataFrame) -> list[str]:
    """What happened: the incidents found, each against its baseline, or a line saying
    there was none (or nothing to search)."""
    heading = "<h2>Incidents</h2>"
    if outcomes.empty:
        return [
            heading,
            '<p class="muted">Incidents are found in <code>disconnect_outcomes/</code>, which '
            "this output does not have (it was written before the dataset existed, or no "
            "disconnect has been read yet).</p>",
        ]
    lines = analysis.describe_incidents(incidents)
    fdr = float(incidents.attrs.get("fdr", 0.01))
    strength = float(incidents.attrs.get("min_strength", 1.5))
    parts = [
        heading,
        "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>",
        '<div class="note"><p><b>How incidents are found.</b> For each namespace, every '
        "one-hour stretch (starting every half hour) of its final "
        "<code>disconnect_outcomes/</code> windows is compared with the namespace's own "
        "baseline: its cohort drop ratio (dropped ÷ decided disconnects) over the rest of the "
        "range, leaving out an hour either side and the incidents found. The test is a "
        "one-sided binomial test on the decided disconnects divided by the namespace's "
        "dispersion (how much more its drop counts vary than independent disconnects would: "
        "a flapping player's disconnects are not independent). Across all namespaces and "
        f"stretches, the Benjamini-Hochberg procedure keeps the false discovery rate at "
        f"{fdr:.0%}; a stretch also needs a drop ratio at least {strength:g} times its "
        "baseline. An incident's start and end are the windows that best separate it from "
        "the baseline. <b>Strength</b> is its drop ratio ÷ the baseline. The cohort ratio is "
        "used because each outcome counts in the window of its disconnect, so an incident "
        "starts and ends where its disconnects do; its rows are final an outcome horizon "
        "after their window, so the newest hour or so is not searched yet.</p></div>",
    ]
    if not incidents.empty:
        shown = min(len(incidents), INCIDENT_PLOTS)
        figure = plots.plot_incidents(outcomes, incidents, top=shown)
        parts.append(_img(figure, "incidents against their baseline"))
        if len(incidents) > shown:
            note = plots.not_plotted(len(incidents) - shown)
            parts.append(f"<p><b>{html.escape(note)}.</b></p>")
        table = incidents.copy()
        table["start"] = table["start"].map(_fmt_time)
        table["end"] = table["end"].map(_fmt_time)
        ratio = "{:.3f}".format
        parts.append(
            _table(
                table,
                {
                    "drop_ratio": ratio,
                    "baseline": ratio,
                    "strength": "{:.1f}".format,
                    "excess_drops": "{:,.0f}".format,
                    "z": "{:.1f}".format,
                    "q_value": "{:.1e}".format,
                    "dispersion": "{:.2f}".format,
                },
            )
        )
    return parts


def _overview(rates: pd.DataFrame, runs: pd.DataFrame) -> str:
    o = analysis.overview(rates)
    items = [
        ("rows (one per namespace and window)", f"{o['rows']:,}"),
        ("final / provisional", f"{o['final_rows']:,} / {o['provisional_rows']:,}"),
        ("namespaces", f"{o['namespaces']:,}"),
        ("windows from", _fmt_time(o["first_window"])),
        ("windows to (start of the last)", _fmt_time(o["last_window"])),
        ("window length", f"{analysis.window_length(rates) / pd.Timedelta(minutes=1):g} min"),
        (
            "disconnected / dropped / rejoined",
            f"{o['disconnected']:,} / {o['dropped']:,} / {o['rejoined']:,}",
        ),
        ("rejected (invite rejections)", f"{o['rejected']:,}"),
        ("runs", f"{len(runs):,}"),
    ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in items)
    return f"<table>{rows}</table>"


def render_report(output: Path, dest: Path) -> pd.DataFrame:
    """Write the HTML report of the output directory ``output`` to ``dest``; return the
    incidents it found (:func:`flows.analysis.find_incidents`)."""
    import matplotlib

    matplotlib.use("Agg")
    output, dest = Path(output), Path(dest)
    rates = analysis.load_party_rates(output)
    outcomes = analysis.load_disconnect_outcomes(output)
    late = analysis.load_late_events(output)
    dead = analysis.load_dead_letters(output)
    manifests = analysis.load_manifests(output)
    runs = analysis.runs_frame(manifests)
    ranked = analysis.rank_namespaces(rates)
    worst = list(ranked["namespace"].head(TOP_SERIES))
    incidents = analysis.find_incidents(outcomes)

    times = {"started_at": _fmt_time, "ended_at": _fmt_time}
    reasons = analysis.dead_letter_reasons(dead)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>Party health report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Party health report</h1>",
        f'<p class="muted">Output directory: <code>{html.escape(str(output))}</code></p>',
        *_incidents_section(outcomes, incidents),
        "<h2>Overview</h2>",
        _overview(rates, runs),
        '<div class="note"><p><b>How to read the rates.</b> <code>drop_ratio</code> compares the '
        "drops <i>in</i> a window with the disconnects <i>in the same</i> window. A drop arrives "
        "an inactive timeout (one to a few minutes) after its disconnect, so near window edges "
        "a window counts drops of earlier disconnects: the ratio of a single window is biased "
        "(it can exceed 1); read it over many windows. Rejected events are invitations being "
        "rejected, not connection problems: they are in none of the ratios.</p>"
        "<p>Provisional rows (<code>is_final</code> false) belong to windows still open when "
        "the last run stopped; a later run replaces them. The ranking uses final windows "
        "only; the time series shows provisional buckets dashed with hollow markers.</p></div>",
        "<h2>Worst namespaces</h2>",
        "<p>Drop ratio over all final windows (summed drops ÷ summed disconnects), namespaces "
        "with at least 20 disconnects, with a 95% Wilson interval: overlapping intervals are "
        "not a real difference.</p>",
        _ranked_table(ranked),
        _img(plots.plot_ranking(ranked, TOP_RANKED), "namespaces ranked by drop ratio"),
        "<h2>Rates over time</h2>",
        f"<p>The {len(worst)} worst namespaces, hourly.</p>",
        _img(plots.plot_namespace_rates(rates, worst, "1h"), "disconnects and drop ratio"),
        "<h2>By hour of day</h2>",
        "<p>Drop ratio by UTC hour of day for the busiest namespaces (final windows).</p>",
        _img(plots.plot_hour_heatmap(rates), "drop ratio by hour of day and namespace"),
        *_outcomes_sections(rates, outcomes, manifests),
        "<h2>Data health</h2>",
        "<p>Late events are events of the four counted kinds that arrived more than the allowed "
        "lateness behind their partition; they are in <code>late_events/</code>, not in the rates. "
        "Dead letters "
        "are messages naming a counted event that could not be used.</p>",
        _img(plots.plot_data_health(late, dead, manifests), "late events and dead letters"),
        "<h3>Dead letters by reason</h3>",
        _table(reasons, {"first_seen": _fmt_time, "last_seen": _fmt_time}),
        "<h3>Runs</h3>",
        _table(runs, times),
        "</body></html>",
    ]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return incidents


def save_main_plot(
    output: Path,
    png_path: Path,
    *,
    top: int = 4,
    size: tuple[float, float] = (8.0, 4.6),
    dpi: int = 100,
) -> None:
    """A small PNG of the main view (the worst namespaces' rates over time), e.g. for docs."""
    import matplotlib

    matplotlib.use("Agg")
    rates = analysis.load_party_rates(output)
    worst = list(analysis.rank_namespaces(rates)["namespace"].head(top))
    fig = plots.plot_namespace_rates(rates, worst or None, "1h", top=top, figsize=size)
    if worst:
        fig.suptitle(f"The {len(worst)} namespaces with the highest drop ratio", fontsize=12)
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, format="png", dpi=dpi)
