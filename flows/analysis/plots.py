"""The analysis views as matplotlib Figures.

Each function returns a ``matplotlib.figure.Figure`` built without pyplot, so nothing is
shown or kept in a global figure list: a notebook displays the returned figure, the report
saves it. Importing this module does not choose a matplotlib backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from flows.analysis.incidents import incident_series
from flows.analysis.tables import (
    cohort_summary,
    cohort_vs_window,
    drop_ratio_by_hour,
    late_events_over_time,
    namespace_series,
    rank_namespaces,
    rejoin_time_summary,
    rejoin_time_windows,
    runs_frame,
)

PROVISIONAL = "provisional (is_final false)"
FINAL = "final"
_COLORS = [
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _series_lines(ax: Axes, series: pd.DataFrame, column: str, color: str, label: str) -> None:
    """Final buckets solid with filled markers; provisional ones dashed with hollow markers."""
    is_final = series["is_final"].to_numpy(dtype=bool)
    final = series[column].where(is_final)
    # The dashed part starts at the last final bucket before a provisional one, so the
    # line stays continuous; only provisional buckets get (hollow) markers.
    joins = is_final & np.append(~is_final[1:], False)
    provisional = series[column].where(~is_final | joins)
    marker = "o" if len(series) <= 60 else None
    ax.plot(
        series["bucket"],
        final,
        color=color,
        linestyle="-",
        marker=marker,
        markersize=3.5,
        linewidth=1.4,
        label=label,
    )
    if not is_final.all():
        ax.plot(
            series["bucket"],
            provisional,
            color=color,
            linestyle="--",
            marker="o",
            markevery=list(np.flatnonzero(~is_final)),
            markersize=5,
            markerfacecolor="none",
            linewidth=1.4,
        )


def plot_namespace_rates(
    rates: pd.DataFrame,
    namespaces: Sequence[str] | None = None,
    freq: str | None = "1h",
    *,
    top: int = 5,
    figsize: tuple[float, float] = (11, 6.5),
) -> Figure:
    """Disconnects per minute and drop ratio over time, one line per namespace.

    ``namespaces`` defaults to the ``top`` worst by drop ratio. ``freq`` sums windows into
    longer buckets (``None``: the windows themselves). Final buckets are solid lines with
    filled markers; buckets with a provisional window (``is_final`` false) are dashed with
    hollow markers. Each namespace has one line per axis, plus one when it has provisional
    buckets.
    """
    if namespaces is None:
        namespaces = list(rank_namespaces(rates)["namespace"].head(top))
        if not namespaces:
            counts = rates.groupby(rates["namespace"].astype(str))["disconnected"].sum()
            namespaces = list(counts.sort_values(ascending=False).index[:top])
    fig = Figure(figsize=figsize, layout="constrained")
    ax_rate, ax_ratio = fig.subplots(2, 1, sharex=True)
    if not namespaces:
        _empty(ax_rate, "no windows")
        _empty(ax_ratio, "no windows")
        return fig
    for i, ns in enumerate(namespaces):
        series = namespace_series(rates, ns, freq)
        color = _COLORS[i % len(_COLORS)]
        _series_lines(ax_rate, series, "disconnects_per_min", color, ns)
        _series_lines(ax_ratio, series, "drop_ratio", color, ns)
    bucket = "window" if freq is None else freq
    ax_rate.set_ylabel("disconnects / min")
    ax_rate.set_title(f"Disconnects per minute (per {bucket})", loc="left", fontsize=11)
    ax_ratio.set_ylabel("drops / disconnects")
    ax_ratio.set_title(f"Drop ratio (per {bucket})", loc="left", fontsize=11)
    ax_ratio.set_xlabel("window start (UTC)")
    ax_ratio.set_ylim(bottom=0)
    for ax in (ax_rate, ax_ratio):
        ax.grid(True, alpha=0.3)
    handles, labels = ax_rate.get_legend_handles_labels()
    handles += [
        Line2D([], [], color="0.3", linestyle="-", marker="o", markersize=4, label=FINAL),
        Line2D(
            [],
            [],
            color="0.3",
            linestyle="--",
            marker="o",
            markerfacecolor="none",
            label=PROVISIONAL,
        ),
    ]
    labels += [FINAL, PROVISIONAL]
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncol=min(len(labels), 4),
        fontsize=9,
        frameon=False,
    )
    locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
    ax_ratio.xaxis.set_major_locator(locator)
    ax_ratio.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz="UTC"))
    return fig


def plot_ranking(
    ranked: pd.DataFrame, top: int = 15, *, figsize: tuple[float, float] | None = None
) -> Figure:
    """The ``top`` rows of :func:`flows.analysis.rank_namespaces` as horizontal bars.

    Bars are the drop ratios, worst at the top, with the confidence interval as error bars
    and ``dropped / disconnected`` written beside each bar.
    """
    rows = ranked.head(top)
    height = figsize or (9, 1.2 + 0.38 * max(len(rows), 1))
    fig = Figure(figsize=height, layout="constrained")
    ax = fig.subplots()
    if rows.empty:
        _empty(ax, "no namespace with enough disconnects")
        return fig
    y = np.arange(len(rows))
    ratio = rows["drop_ratio"].to_numpy(dtype=float)
    err = np.vstack(
        [
            np.clip(ratio - rows["ci_low"].to_numpy(dtype=float), 0, None),
            np.clip(rows["ci_high"].to_numpy(dtype=float) - ratio, 0, None),
        ]
    )
    ax.barh(y, ratio, xerr=err, color="#d62728", alpha=0.75, ecolor="0.2", capsize=3)
    ax.set_yticks(y, [str(ns) for ns in rows["namespace"]])
    ax.invert_yaxis()
    right = float(np.nanmax(rows["ci_high"].to_numpy(dtype=float)))
    for yi, (_, row) in zip(y, rows.iterrows(), strict=True):
        ax.text(
            float(row["ci_high"]) + 0.01 * right,
            float(yi),
            f" {int(row['dropped']):,} / {int(row['disconnected']):,}",
            va="center",
            fontsize=8,
            color="0.25",
        )
    ax.set_xlim(0, right * 1.25)
    ax.set_xlabel("drop ratio (dropped / disconnected), 95% Wilson interval")
    ax.set_title("Namespaces by drop ratio (final windows)", loc="left", fontsize=11)
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def plot_hour_heatmap(
    rates: pd.DataFrame,
    namespaces: Sequence[str] | None = None,
    *,
    top: int = 20,
    cmap: str | Colormap = "magma_r",
) -> Figure:
    """Drop ratio by UTC hour of day (x) and namespace (y), final windows.

    ``namespaces`` defaults to the ``top`` namespaces by disconnects, busiest first.
    """
    if namespaces is None:
        final = rates[rates["is_final"]]
        counts = final.groupby(final["namespace"].astype(str))["disconnected"].sum()
        namespaces = list(counts.sort_values(ascending=False).index[:top])
    table = drop_ratio_by_hour(rates, namespaces)
    fig = Figure(figsize=(11, 1.6 + 0.3 * max(len(table), 1)), layout="constrained")
    ax = fig.subplots()
    if table.empty:
        _empty(ax, "no final windows")
        return fig
    values = np.ma.masked_invalid(table.to_numpy(dtype=float))
    vmax = float(np.nanpercentile(table.to_numpy(dtype=float), 98)) if values.count() else 1.0
    image = ax.imshow(values, aspect="auto", cmap=cmap, vmin=0, vmax=max(vmax, 1e-9))
    ax.set_xticks(range(24), [f"{h:02d}" for h in range(24)], fontsize=8)
    ax.set_yticks(range(len(table)), [str(ns) for ns in table.index], fontsize=8)
    ax.set_xlabel("hour of day (UTC)")
    ax.set_title(
        "Drop ratio by hour of day (all days summed; blank: no disconnects)",
        loc="left",
        fontsize=11,
    )
    fig.colorbar(image, ax=ax, label="drop ratio", shrink=0.9)
    return fig


def plot_data_health(
    late: pd.DataFrame,
    dead: pd.DataFrame,
    manifests: Sequence[dict[str, Any]],
    *,
    freq: str = "1h",
) -> Figure:
    """Data health: late events over event time, and late events / dead letters per run.

    Top: late events per ``freq`` of their event time, stacked by event name. Bottom: each
    run's late events, dead letters and duplicates from its manifest, at the run's start;
    the dead-letter count of the ``dead_letters`` dataset is in the title as a cross-check.
    """
    fig = Figure(figsize=(11, 6.5), layout="constrained")
    ax_late, ax_runs = fig.subplots(2, 1)
    table = late_events_over_time(late, freq)
    if table.empty:
        _empty(ax_late, "no late events")
    else:
        bottom = np.zeros(len(table))
        width = pd.Timedelta(freq) * 0.9
        for i, name in enumerate(table.columns):
            ax_late.bar(
                table.index,
                table[name],
                width=width,
                bottom=bottom,
                align="edge",
                label=str(name),
                color=_COLORS[i % len(_COLORS)],
            )
            bottom += table[name].to_numpy()
        ax_late.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax_late.set_ylabel(f"late events / {freq}")
        ax_late.set_xlabel("event time (UTC)")
        ax_late.grid(True, axis="y", alpha=0.3)
    ax_late.set_title(
        f"Late events by event time ({len(late):,} in late_events/)", loc="left", fontsize=11
    )
    runs = runs_frame(manifests)
    if runs.empty:
        _empty(ax_runs, "no run manifests")
    else:
        x = np.arange(len(runs))
        kinds = [("late", "#ff7f0e"), ("dead_letters", "#d62728"), ("duplicates", "#7f7f7f")]
        width = 0.8 / len(kinds)
        for j, (kind, color) in enumerate(kinds):
            ax_runs.bar(x + (j - 1) * width, runs[kind], width=width, color=color, label=kind)
        labels = [
            f"{ts:%m-%d %H:%M}" + ("" if status == "completed" else f"\n{status}")
            for ts, status in zip(runs["started_at"], runs["status"], strict=True)
        ]
        if len(runs) <= 12:
            for j, (kind, _) in enumerate(kinds):
                for xi, value in zip(x, runs[kind], strict=True):
                    ax_runs.annotate(
                        f"{int(value):,}",
                        (xi + (j - 1) * width, value),
                        ha="center",
                        va="bottom",
                        fontsize=8,
                    )
        ax_runs.set_xlim(-0.6, max(len(runs), 6) - 0.4)
        step = max(1, len(runs) // 24)
        ax_runs.set_xticks(x[::step], labels[::step], fontsize=8)
        ax_runs.set_xlabel("run start (UTC)")
        ax_runs.set_ylabel("messages")
        ax_runs.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax_runs.grid(True, axis="y", alpha=0.3)
    ax_runs.set_title(
        f"Per run, from _runs/ ({len(runs)} run{'' if len(runs) == 1 else 's'}; "
        f"{len(dead):,} rows in dead_letters/)",
        loc="left",
        fontsize=11,
    )
    return fig


WINDOW_RATIO = "window drop_ratio (drops in the bucket / its disconnects)"
COHORT_RATIO = "cohort drop ratio (the bucket's disconnects that ended dropped)"
_WINDOW_COLOR = "#7f7f7f"
_COHORT_COLOR = "#d62728"


def plot_cohort_vs_window(
    rates: pd.DataFrame,
    outcomes: pd.DataFrame,
    namespaces: Sequence[str] | None = None,
    freq: str | None = "1h",
    *,
    top: int = 4,
    min_disconnects: int = 20,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """The window drop ratio beside the cohort drop ratio, final windows only.

    Left, one panel per namespace (``namespaces``; default the ``top`` with the highest
    cohort drop ratio among those with ``min_disconnects``, else the busiest): both ratios
    over time per ``freq`` bucket (:func:`cohort_vs_window`), the window ratio grey, the
    cohort ratio red. Right, every namespace with at least ``min_disconnects`` disconnects:
    its window ratio (x) against its cohort ratio (y) over the whole range, the cohort
    ratio's 95% Wilson interval as error bar, marker area by disconnects; on the diagonal
    the two agree.
    """
    summary = cohort_summary(rates, outcomes, min_disconnects=min_disconnects)
    if namespaces is None:
        namespaces = list(summary["namespace"].head(top))
        if not namespaces:  # every namespace below min_disconnects: the busiest
            fallback = cohort_summary(rates, outcomes, min_disconnects=1)
            fallback = fallback.sort_values(["disconnects", "namespace"], ascending=[False, True])
            namespaces = list(fallback["namespace"].head(top))
    namespaces = list(namespaces)
    rows = max(len(namespaces), 1)
    fig = Figure(figsize=figsize or (11, 1.2 + 1.7 * max(rows, 2)), layout="constrained")
    grid = fig.add_gridspec(rows, 2, width_ratios=[2.0, 1.0])
    first = fig.add_subplot(grid[0, 0])
    lines = [first]
    for i in range(1, rows):
        lines.append(fig.add_subplot(grid[i, 0], sharex=first, sharey=first))
    ax_scatter = fig.add_subplot(grid[:, 1])
    bucket = "window" if freq is None else freq
    if not namespaces:
        _empty(first, "no final disconnect_outcomes rows")
    else:
        series = cohort_vs_window(rates, outcomes, namespaces, freq)
        for ax, ns in zip(lines, namespaces, strict=True):
            rows_ns = series[series["namespace"] == ns]
            marker = "o" if len(rows_ns) <= 60 else None
            for column, color, width, legend in (
                ("drop_ratio", _WINDOW_COLOR, 1.4, WINDOW_RATIO),
                ("cohort_drop_ratio", _COHORT_COLOR, 1.6, COHORT_RATIO),
            ):
                ax.plot(
                    rows_ns["bucket"],
                    rows_ns[column],
                    color=color,
                    marker=marker,
                    markersize=3.5,
                    linewidth=width,
                    label=legend,
                )
            ax.set_title(str(ns), loc="left", fontsize=9)
            ax.set_ylabel("drop ratio", fontsize=8)
            ax.grid(True, alpha=0.3)
        for ax in lines[:-1]:
            ax.tick_params(labelbottom=False)
        locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
        lines[-1].xaxis.set_major_locator(locator)
        lines[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz="UTC"))
        lines[-1].set_xlabel(f"window start (UTC), per {bucket}")
        first.set_ylim(bottom=0)
        fig.legend(
            *first.get_legend_handles_labels(),
            loc="outside lower center",
            ncol=2,
            fontsize=9,
            frameon=False,
        )
    if summary.empty:
        _empty(ax_scatter, "no namespace with enough disconnects")
    else:
        x = summary["drop_ratio"].to_numpy(dtype=float)
        y = summary["cohort_drop_ratio"].to_numpy(dtype=float)
        err = np.vstack(
            [
                np.clip(y - summary["cohort_ci_low"].to_numpy(dtype=float), 0, None),
                np.clip(summary["cohort_ci_high"].to_numpy(dtype=float) - y, 0, None),
            ]
        )
        volume = summary["disconnects"].to_numpy(dtype=float)
        sizes = 15 + 185 * volume / max(float(volume.max()), 1.0)
        ax_scatter.errorbar(x, y, yerr=err, fmt="none", ecolor="0.6", elinewidth=0.8)
        ax_scatter.scatter(x, y, s=sizes, color=_COHORT_COLOR, alpha=0.6, edgecolor="0.2")
        label = set(namespaces) if len(summary) > 15 else set(summary["namespace"])
        for xi, yi, ns in zip(x, y, summary["namespace"], strict=True):
            if ns in label:
                ax_scatter.annotate(
                    str(ns), (xi, yi), xytext=(4, 3), textcoords="offset points", fontsize=7
                )
        high = float(np.nanmax(np.concatenate([x, y, summary["cohort_ci_high"]])))
        high = max(high * 1.1, 0.05)
        ax_scatter.plot([0, high], [0, high], color="0.5", linestyle=":", linewidth=1)
        ax_scatter.set_xlim(0, high)
        ax_scatter.set_ylim(0, high)
        ax_scatter.set_xlabel("window drop_ratio (dropped / disconnected)")
        ax_scatter.set_ylabel("cohort drop ratio, 95% interval")
        ax_scatter.grid(True, alpha=0.3)
    ax_scatter.set_title(
        f"Whole range (namespaces ≥ {min_disconnects} disconnects)", loc="left", fontsize=9
    )
    fig.suptitle(
        f"Window vs cohort drop ratio (final windows, per {bucket})",
        x=0.01,
        horizontalalignment="left",
        fontsize=11,
    )
    return fig


def plot_rejoin_times(
    outcomes: pd.DataFrame,
    namespaces: Sequence[str] | None = None,
    *,
    top: int = 12,
    min_rejoined: int = 1,
    log: bool = False,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Per namespace, the distribution over final windows of the windows' rejoin times.

    Two horizontal boxes per namespace: the windows' median (``rejoin_seconds_p50``, blue)
    and 95th percentile (``rejoin_seconds_p95``, orange) seconds from disconnect to rejoin.
    Each window with at least ``min_rejoined`` rejoins is one value, unweighted by its
    number of rejoins. Boxes are the quartiles with the median line, whiskers the 5th and
    95th percentiles over the windows, dots the windows beyond. ``namespaces`` defaults to
    the ``top`` with the most rejoins; they are shown slowest median first.
    """
    windows = rejoin_time_windows(outcomes, min_rejoined=min_rejoined)
    summary = rejoin_time_summary(outcomes, min_rejoined=min_rejoined)
    if namespaces is None:
        busiest = summary.sort_values(["rejoined", "namespace"], ascending=[False, True])
        chosen = set(busiest["namespace"].head(top))
        namespaces = [ns for ns in summary["namespace"] if ns in chosen]
    namespaces = [str(ns) for ns in namespaces]
    fig = Figure(figsize=figsize or (11, 1.8 + 0.5 * max(len(namespaces), 1)), layout="constrained")
    ax = fig.subplots()
    ax.set_title(
        "Rejoin time per namespace: distribution over final windows (one value per window)",
        loc="left",
        fontsize=11,
    )
    if not namespaces or windows.empty:
        _empty(ax, "no final disconnect_outcomes rows with rejoins")
        return fig
    y = np.arange(len(namespaces), dtype=float)
    boxes = []
    for column, offset, color in (
        ("rejoin_seconds_p50", -0.18, "#1f77b4"),
        ("rejoin_seconds_p95", 0.18, "#ff7f0e"),
    ):
        data = [
            windows.loc[windows["namespace"] == ns, column].dropna().to_numpy(dtype=float)
            for ns in namespaces
        ]
        parts = ax.boxplot(
            data,
            positions=y + offset,
            orientation="horizontal",
            widths=0.32,
            whis=(5, 95),
            patch_artist=True,
            manage_ticks=False,
            medianprops={"color": "0.1"},
            flierprops={"marker": ".", "markersize": 3, "alpha": 0.5},
        )
        for box in parts["boxes"]:
            box.set_facecolor(color)
            box.set_alpha(0.7)
        boxes.append(parts["boxes"][0])
    counts = windows.groupby("namespace")["rejoined"].agg(["size", "sum"])
    labels = [
        f"{ns}\n{int(counts.loc[ns, 'size']):,} windows, {int(counts.loc[ns, 'sum']):,} rejoins"
        if ns in counts.index
        else ns
        for ns in namespaces
    ]
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    else:
        ax.set_xlim(left=0)
    min_note = "" if min_rejoined <= 1 else f" with ≥ {min_rejoined} rejoins"
    ax.set_xlabel(
        "seconds from disconnect to rejoin: each window's median (p50) and 95th percentile "
        f"(p95)\none value per final window{min_note}, unweighted by its rejoins; "
        "box: quartiles, whiskers: 5th-95th percentile of the windows"
    )
    fig.legend(
        boxes,
        ["per-window p50 (rejoin_seconds_p50)", "per-window p95 (rejoin_seconds_p95)"],
        fontsize=8,
        loc="outside upper right",
        ncol=2,
        frameon=False,
    )
    ax.grid(True, axis="x", alpha=0.3)
    return fig


INCIDENT_RATIO = "cohort drop ratio per window"
INCIDENT_BASELINE = "baseline (the namespace's own ratio outside the incident)"
INCIDENT_BAND = "99% of windows at the baseline fall here"
INCIDENT_SPAN = "incident"


def not_plotted(count: int) -> str:
    """The note for incidents a figure leaves out: "3 more incidents not plotted (see the
    table)"."""
    noun = "incident" if count == 1 else "incidents"
    return f"{count} more {noun} not plotted (see the table)"


def plot_incidents(
    outcomes: pd.DataFrame,
    incidents: pd.DataFrame,
    *,
    top: int | None = 6,
    margin: str = "3h",
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Each incident against its baseline: two panels per incident, the ``top`` strongest
    (every incident with ``top=None``); when some are left out, the figure's title says how
    many ("2 more incidents not plotted (see the table)").

    Upper panel: the namespace's cohort drop ratio window by window from ``margin`` before
    the incident to ``margin`` after (final ``disconnect_outcomes`` rows), its baseline as a
    dashed line, the band where 99% of windows at the baseline would fall (it widens where
    a window has few decided disconnects), and the incident shaded. Lower panel: the
    decided disconnects per window (rejoined + dropped) and the dropped ones. Without
    incidents the figure says so.
    """
    rows = incidents if top is None else incidents.head(top)
    count = len(rows)
    left_out = len(incidents) - count
    fig = Figure(figsize=figsize or (11, 1.2 + 3.6 * max(count, 1)), layout="constrained")
    if count == 0:
        ax = fig.subplots()
        searched_from = incidents.attrs.get("searched_from")
        searched_to = incidents.attrs.get("searched_to")
        text = "No incident"
        if searched_from is not None and searched_to is not None:
            text += (
                f" in the final windows from {searched_from:%Y-%m-%d %H:%M} "
                f"to {searched_to:%Y-%m-%d %H:%M} UTC"
            )
        _empty(ax, text)
        return fig
    grid = fig.add_gridspec(2 * count, 1, height_ratios=[3, 1] * count)
    for i, (_, incident) in enumerate(rows.iterrows()):
        ax_ratio = fig.add_subplot(grid[2 * i, 0])
        ax_volume = fig.add_subplot(grid[2 * i + 1, 0], sharex=ax_ratio)
        series = incident_series(outcomes, incident, margin)
        step = series["bucket"].diff().min() if len(series) > 1 else pd.Timedelta(minutes=5)
        x = series["bucket"] + step / 2  # at the middle of each window
        ax_ratio.fill_between(
            x, series["low"], series["high"], step="mid", color="0.85", label=INCIDENT_BAND
        )
        ax_ratio.axhline(
            float(incident["baseline"]), color="0.3", linestyle="--", linewidth=1.2,
            label=INCIDENT_BASELINE,
        )  # fmt: skip
        ax_ratio.axvspan(
            incident["start"], incident["end"], color=_COHORT_COLOR, alpha=0.12,
            label=INCIDENT_SPAN,
        )  # fmt: skip
        ax_ratio.plot(
            x, series["drop_ratio"], color=_COHORT_COLOR, marker="o", markersize=3,
            linewidth=1.2, label=INCIDENT_RATIO,
        )  # fmt: skip
        ax_ratio.set_ylim(0, 1)
        ax_ratio.set_ylabel("dropped / decided", fontsize=8)
        ax_ratio.grid(True, alpha=0.3)
        ax_ratio.tick_params(labelbottom=False)
        minutes = int((incident["end"] - incident["start"]) / pd.Timedelta(minutes=1))
        ax_ratio.set_title(
            f"{incident['namespace']}: {incident['start']:%Y-%m-%d %H:%M} to "
            f"{incident['end']:%H:%M} UTC ({minutes} min): drop ratio "
            f"{incident['drop_ratio']:.2f} against its usual {incident['baseline']:.2f} "
            f"({incident['strength']:.1f} times), {int(incident['dropped']):,} of "
            f"{int(incident['decided']):,} decided disconnects dropped",
            loc="left",
            fontsize=9,
        )
        ax_volume.bar(x, series["decided"], width=step * 0.9, color="0.7", label="decided")
        ax_volume.bar(x, series["dropped"], width=step * 0.9, color=_COHORT_COLOR, label="dropped")
        ax_volume.axvspan(incident["start"], incident["end"], color=_COHORT_COLOR, alpha=0.12)
        ax_volume.set_ylabel("per window", fontsize=8)
        ax_volume.grid(True, axis="y", alpha=0.3)
        locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
        ax_volume.xaxis.set_major_locator(locator)
        ax_volume.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz="UTC"))
    first_ratio, first_volume = fig.axes[0], fig.axes[1]
    handles, labels = first_ratio.get_legend_handles_labels()
    more, more_labels = first_volume.get_legend_handles_labels()
    fig.legend(
        handles + more,
        labels + [f"{label} disconnects per window" for label in more_labels],
        loc="outside lower center",
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    title = "Incidents: the cohort drop ratio against the namespace's own baseline (UTC)"
    if left_out:
        title += f"\n{not_plotted(left_out)}"
    fig.suptitle(
        title,
        x=0.01,
        horizontalalignment="left",
        fontsize=11,
    )
    return fig
