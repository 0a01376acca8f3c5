"""The analysis helpers, plots, report and data dictionary on small hand-made data."""

from __future__ import annotations

import base64
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from matplotlib.image import AxesImage
from matplotlib.patches import PathPatch, Rectangle

from flows import analysis
from flows.analysis import plots
from flows.analysis.dictionary import MANIFEST_FIELDS, UNITS, render_data_dictionary
from flows.analysis.report import render_report, save_main_plot
from schemas.output import (
    COMBINE_KINDS,
    DEAD_LETTERS_SCHEMA,
    LATE_EVENTS_SCHEMA,
    OUTCOMES_SCHEMA,
    RATES_PARTITIONING,
    RATES_SCHEMA,
)

REPO = Path(__file__).resolve().parent.parent
T0 = pd.Timestamp("2026-11-27T00:00:00Z")
FIVE = pd.Timedelta(minutes=5)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rates_frame(rows: list[tuple]) -> pd.DataFrame:
    """``party_rates`` rows from (namespace, minutes after T0, disconnected, dropped,
    rejoined, is_final[, rejected]), with the loader's columns and dtypes."""
    out = []
    for ns, minute, disc, drop, rejoin, final, *rest in rows:
        start = T0 + pd.Timedelta(minutes=minute)
        out.append(
            {
                "namespace": ns,
                "date": start.date(),
                "window_start": start,
                "window_end": start + FIVE,
                "disconnected": disc,
                "rejoined": rejoin,
                "dropped": drop,
                "rejected": rest[0] if rest else 0,
                "users_disconnected": disc,
                "parties_affected": disc,
                "disconnects_per_min": disc / 5,
                "drops_per_min": drop / 5,
                "drop_ratio": drop / disc if disc else None,
                "rejoin_ratio": rejoin / disc if disc else None,
                "is_final": final,
            }
        )
    table = pa.Table.from_pylist(out, schema=RATES_SCHEMA)
    return table.to_pandas().sort_values(["namespace", "window_start"], ignore_index=True)


# --- Wilson interval -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (0, 10, 0.0, 0.27753),
        (5, 10, 0.23659, 0.76341),
        (10, 10, 0.72247, 1.0),
        (1, 20, 0.00889, 0.23613),
        (81, 263, 0.25529, 0.36621),  # Newcombe (1998), example (c)
    ],
)
def test_wilson_interval_known_values(k: int, n: int, low: float, high: float) -> None:
    lo, hi = analysis.wilson_interval(k, n)
    assert lo[0] == pytest.approx(low, abs=5e-5)
    assert hi[0] == pytest.approx(high, abs=5e-5)


def test_wilson_interval_vectorised_zero_trials_and_excess() -> None:
    lo, hi = analysis.wilson_interval([3, 0, 12], [10, 0, 10])
    assert lo[0] < 0.3 < hi[0]
    assert math.isnan(lo[1]) and math.isnan(hi[1])
    # More drops than disconnects (edge bias) is taken as all of them.
    assert (lo[2], hi[2]) == pytest.approx(tuple(x[0] for x in analysis.wilson_interval(10, 10)))
    # Narrower with more trials at the same proportion.
    lo_small, hi_small = analysis.wilson_interval(30, 100)
    lo_big, hi_big = analysis.wilson_interval(300, 1000)
    assert hi_big[0] - lo_big[0] < hi_small[0] - lo_small[0]


# --- date filter -----------------------------------------------------------------------


def test_filter_dates_is_half_open_and_utc() -> None:
    rates = rates_frame([("a", m, 1, 0, 1, True) for m in (0, 55, 60, 65, 24 * 60)])
    hour = analysis.filter_dates(rates, "2026-11-27T00:55", "2026-11-27T01:05")
    assert list(hour["window_start"]) == [T0 + pd.Timedelta(minutes=m) for m in (55, 60)]
    # A date is midnight UTC; an offset is converted, not ignored.
    day = analysis.filter_dates(rates, "2026-11-27", "2026-11-28")
    assert len(day) == 4
    shifted = analysis.filter_dates(rates, start="2026-11-27T02:00+01:00")
    assert list(shifted["window_start"].dt.strftime("%H:%M")) == ["01:00", "01:05", "00:00"]
    assert len(analysis.filter_dates(rates)) == len(rates)
    assert len(analysis.filter_dates(rates, end=pd.Timestamp("2026-11-27T01:00Z"))) == 2


# --- ranking ---------------------------------------------------------------------------


def test_rank_namespaces_orders_by_ratio_with_volumes_and_intervals() -> None:
    rates = rates_frame(
        [
            ("low", 0, 20, 2, 18, True, 5),
            ("low", 5, 20, 2, 18, True),
            ("high", 0, 10, 5, 5, True),
            ("high", 5, 10, 5, 5, True),
            ("high", 10, 10, 10, 0, False),  # provisional: not ranked
            ("tie-big", 0, 40, 10, 30, True),
            ("tie-small", 0, 20, 5, 15, True),
            ("tiny", 0, 3, 3, 0, True),  # below min_disconnects
        ]
    )
    ranked = analysis.rank_namespaces(rates, min_disconnects=10)
    assert list(ranked["namespace"]) == ["high", "tie-big", "tie-small", "low"]
    assert list(ranked["rank"]) == [1, 2, 3, 4]
    high = ranked.iloc[0]
    assert (high["disconnected"], high["dropped"], high["windows"]) == (20, 10, 2)
    assert high["drop_ratio"] == pytest.approx(0.5)
    lo, hi = analysis.wilson_interval(10, 20)
    assert (high["ci_low"], high["ci_high"]) == pytest.approx((lo[0], hi[0]))
    low = ranked.set_index("namespace").loc["low"]
    assert (low["rejected"], low["rejoin_ratio"]) == (5, pytest.approx(0.9))

    with_open = analysis.rank_namespaces(rates, min_disconnects=10, final_only=False)
    assert with_open.set_index("namespace").loc["high", "disconnected"] == 30


def test_rank_namespaces_date_range() -> None:
    rates = rates_frame(
        [
            ("a", 0, 10, 1, 9, True),
            ("a", 60, 10, 9, 1, True),
            ("b", 0, 10, 5, 5, True),
            ("b", 60, 10, 5, 5, True),
        ]
    )
    first = analysis.rank_namespaces(rates, None, "2026-11-27T00:30", min_disconnects=1)
    assert list(first["namespace"]) == ["b", "a"]
    assert list(first["disconnected"]) == [10, 10]
    second = analysis.rank_namespaces(rates, "2026-11-27T00:30", None, min_disconnects=1)
    assert list(second["namespace"]) == ["a", "b"]
    assert analysis.rank_namespaces(rates, "2026-12-01", None).empty


# --- time series and heatmap -----------------------------------------------------------


def test_namespace_series_fills_gaps_and_sums_buckets() -> None:
    rates = rates_frame(
        [
            ("a", 0, 5, 1, 4, True),
            ("a", 15, 10, 5, 5, True),  # 5 and 10 missing: no events
            ("a", 60, 4, 4, 0, True),
            ("a", 70, 2, 0, 2, False),
            ("b", 0, 99, 99, 0, True),
        ]
    )
    windows = analysis.namespace_series(rates, "a")
    assert len(windows) == 15  # 00:00 .. 01:10 every 5 minutes
    gap = windows.set_index("bucket").loc[T0 + FIVE]
    assert gap["disconnected"] == 0 and math.isnan(gap["drop_ratio"]) and gap["is_final"]
    assert list(windows["is_final"].tail(2)) == [True, False]
    assert windows["disconnects_per_min"].iloc[0] == pytest.approx(1.0)

    hourly = analysis.namespace_series(rates, "a", "1h").set_index("bucket")
    assert list(hourly["disconnected"]) == [15, 6]
    assert hourly["drop_ratio"].iloc[0] == pytest.approx(6 / 15)
    assert hourly["disconnects_per_min"].iloc[1] == pytest.approx(6 / 60)
    assert list(hourly["is_final"]) == [True, False]
    with pytest.raises(ValueError, match="shorter"):
        analysis.namespace_series(rates, "a", "1min")


def test_drop_ratio_by_hour() -> None:
    rates = rates_frame(
        [
            ("a", 0, 10, 1, 9, True),
            ("a", 24 * 60 + 5, 10, 5, 5, True),  # next day, same hour: summed
            ("a", 3 * 60, 4, 2, 2, True),
            ("a", 5 * 60, 0, 1, 0, True),  # no disconnects: no ratio
            ("b", 60, 10, 10, 0, True),
            ("b", 120, 10, 0, 10, False),  # provisional
        ]
    )
    table = analysis.drop_ratio_by_hour(rates, ["b", "a"])
    assert table.shape == (2, 24)
    assert list(table.index) == ["b", "a"]
    assert table.loc["a", 0] == pytest.approx(6 / 20)
    assert table.loc["a", 3] == pytest.approx(0.5)
    assert math.isnan(table.loc["a", 5])
    assert table.loc["b", 1] == pytest.approx(1.0)
    assert math.isnan(table.loc["b", 2])


# --- disconnect outcomes ---------------------------------------------------------------


def outcomes_frame(rows: list[tuple]) -> pd.DataFrame:
    """``disconnect_outcomes`` rows from (namespace, minutes after T0, disconnects,
    rejoined, dropped, is_final[, unresolved[, p50, p95]]), as the loader returns them."""
    out = []
    for ns, minute, disc, rejoin, drop, final, *rest in rows:
        start = T0 + pd.Timedelta(minutes=minute)
        unresolved = rest[0] if rest else 0
        p50, p95 = (rest[1], rest[2]) if len(rest) > 1 else (None, None)
        if p50 is None and rejoin and len(rest) <= 1:
            p50, p95 = 10.0, 20.0
        out.append(
            {
                "namespace": ns,
                "date": start.date(),
                "window_start": start,
                "window_end": start + FIVE,
                "disconnects": disc,
                "rejoined": rejoin,
                "dropped": drop,
                "unresolved": unresolved,
                "superseded": disc - rejoin - drop - unresolved if final else 0,
                "orphan_outcomes": 0,
                "cohort_drop_ratio": drop / (rejoin + drop) if rejoin + drop else None,
                "rejoin_seconds_p50": p50,
                "rejoin_seconds_p95": p95,
                "is_final": final,
            }
        )
    table = pa.Table.from_pylist(out, schema=OUTCOMES_SCHEMA)
    return table.to_pandas().sort_values(["namespace", "window_start"], ignore_index=True)


def biased_pair() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Window drop ratios 0.1, 0.5, 0.2 where the windows' own disconnects ended 0.3, 0.4,
    1/9 dropped; outcomes final up to 00:15 (the rates one window further)."""
    rates = rates_frame(
        [
            ("a", 0, 10, 1, 9, True),
            ("a", 5, 10, 5, 5, True),
            ("a", 10, 10, 2, 8, True),
            ("a", 15, 4, 0, 4, True),  # final, but its cohort is not decided yet
            ("a", 20, 2, 0, 0, False),
            ("b", 0, 6, 3, 3, True),
            ("b", 10, 4, 1, 3, True),  # 00:05 missing: no event at all
        ]
    )
    outcomes = outcomes_frame(
        [
            ("a", 0, 10, 7, 3, True),
            ("a", 5, 10, 6, 4, True),
            ("a", 10, 10, 8, 1, True, 1),
            ("a", 15, 4, 1, 0, False),
            ("b", 0, 6, 3, 3, True),
            ("b", 10, 4, 3, 1, True),
        ]
    )
    return rates, outcomes


def test_cohort_vs_window_per_window_and_final_only() -> None:
    rates, outcomes = biased_pair()
    table = analysis.cohort_vs_window(rates, outcomes, ["a"], freq=None)
    assert list(table["bucket"]) == [T0, T0 + FIVE, T0 + 2 * FIVE]  # cut where outcomes end
    assert list(table["drop_ratio"]) == pytest.approx([0.1, 0.5, 0.2])
    assert list(table["cohort_drop_ratio"]) == pytest.approx([0.3, 0.4, 1 / 9])
    assert list(table["disconnected"]) == list(table["disconnects"]) == [10, 10, 10]
    assert list(table["unresolved"]) == [0, 0, 1]
    assert table["is_final"].all()

    hourly = analysis.cohort_vs_window(rates, outcomes, ["a"], freq="1h").iloc[0]
    assert (hourly["disconnected"], hourly["dropped"]) == (30, 8)
    assert (hourly["cohort_dropped"], hourly["cohort_rejoined"]) == (8, 21)
    assert hourly["drop_ratio"] == pytest.approx(8 / 30)
    assert hourly["cohort_drop_ratio"] == pytest.approx(8 / 29)

    everything = analysis.cohort_vs_window(rates, outcomes, ["a"], freq=None, final_only=False)
    assert list(everything["is_final"]) == [True, True, True, False, False]
    last = everything.iloc[-1]  # no outcomes row: no disconnect of its own decided
    assert last["disconnects"] == 0 and math.isnan(last["cohort_drop_ratio"])
    assert last["disconnected"] == 2 and last["drop_ratio"] == 0
    assert not analysis.cohort_vs_window(rates, outcomes, ["a"], final_only=False)["is_final"].all()


def test_cohort_vs_window_gaps_ranges_and_empty_outcomes() -> None:
    rates, outcomes = biased_pair()
    b = analysis.cohort_vs_window(rates, outcomes, ["b"], freq=None)
    assert list(b["bucket"]) == [T0, T0 + FIVE, T0 + 2 * FIVE]
    gap = b.iloc[1]
    assert gap["disconnected"] == gap["disconnects"] == 0 and gap["is_final"]
    assert math.isnan(gap["drop_ratio"]) and math.isnan(gap["cohort_drop_ratio"])
    assert list(b["cohort_drop_ratio"].dropna()) == pytest.approx([0.5, 0.25])
    # A gap is final when it is before the end of the last final outcomes window.
    late = rates_frame([("c", 5, 1, 0, 1, True), ("c", 20, 1, 0, 1, True)])
    c = analysis.cohort_vs_window(
        pd.concat([rates, late], ignore_index=True), outcomes, ["c"], None, final_only=False
    )
    assert list(c["bucket"]) == [T0 + i * FIVE for i in range(1, 5)]
    assert list(c["is_final"]) == [True, True, False, False]

    both = analysis.cohort_vs_window(rates, outcomes, freq=None)
    assert list(both["namespace"].unique()) == ["a", "b"]
    assert both["namespace"].map(type).eq(str).all()
    later = analysis.cohort_vs_window(rates, outcomes, freq=None, start="2026-11-27T00:05")
    assert later["bucket"].min() == T0 + FIVE
    with pytest.raises(ValueError, match="shorter"):
        analysis.cohort_vs_window(rates, outcomes, freq="1min")

    none = outcomes.head(0)  # an output written before disconnect_outcomes existed
    for final_only in (True, False):
        empty = analysis.cohort_vs_window(rates, none, final_only=final_only)
        if final_only:
            assert empty.empty
        else:  # nothing is final without outcomes
            assert len(empty) and not empty["is_final"].any()
            assert empty["cohort_drop_ratio"].isna().all()
    assert "cohort_drop_ratio" in analysis.cohort_vs_window(rates, none).columns
    assert analysis.cohort_summary(rates, none).empty
    assert analysis.cohort_vs_window(rates.head(0), outcomes.head(0)).empty


def test_cohort_summary_sums_the_same_windows() -> None:
    rates, outcomes = biased_pair()
    summary = analysis.cohort_summary(rates, outcomes, min_disconnects=1)
    assert list(summary["namespace"]) == ["b", "a"]  # 4/10 dropped, then 8/29
    a = summary.set_index("namespace").loc["a"]
    assert (a["windows"], a["disconnected"], a["dropped"], a["disconnects"]) == (3, 30, 8, 30)
    assert (a["cohort_dropped"], a["cohort_rejoined"], a["unresolved"]) == (8, 21, 1)
    assert a["drop_ratio"] == pytest.approx(8 / 30)
    assert a["cohort_drop_ratio"] == pytest.approx(8 / 29)
    assert a["difference"] == pytest.approx(8 / 29 - 8 / 30)
    lo, hi = analysis.wilson_interval(8, 29)
    assert (a["cohort_ci_low"], a["cohort_ci_high"]) == pytest.approx((lo[0], hi[0]))
    assert summary.set_index("namespace").loc["b", "windows"] == 2  # the gap is no window
    assert list(analysis.cohort_summary(rates, outcomes, min_disconnects=20)["namespace"]) == ["a"]


def test_rejoin_time_windows_and_summary() -> None:
    outcomes = outcomes_frame(
        [
            ("fast", 0, 5, 4, 1, True, 0, 2.0, 5.0),
            ("fast", 5, 5, 4, 1, True, 0, 4.0, 9.0),
            ("fast", 10, 5, 1, 4, True, 0, 30.0, 30.0),  # one rejoin
            ("fast", 15, 5, 0, 5, True, 0, None, None),  # no rejoin: no times
            ("fast", 20, 5, 5, 0, False, 0, 99.0, 99.0),  # provisional
            ("slow", 0, 5, 5, 0, True, 0, 20.0, 50.0),
            ("slow", 5, 5, 5, 0, True, 0, 40.0, 70.0),
        ]
    )
    rows = analysis.rejoin_time_windows(outcomes)
    assert list(rows.groupby("namespace").size()) == [3, 2]
    summary = analysis.rejoin_time_summary(outcomes).set_index("namespace")
    assert list(summary.index) == ["slow", "fast"]  # slowest median first
    fast = summary.loc["fast"]
    assert (fast["windows"], fast["rejoined"]) == (3, 9)
    assert fast["p50_median"] == pytest.approx(4.0)  # unweighted: one value per window
    assert (fast["p50_q25"], fast["p50_q75"]) == pytest.approx((3.0, 17.0))
    assert (fast["p95_median"], fast["p95_max"]) == pytest.approx((9.0, 30.0))
    assert summary.loc["slow", "p50_median"] == pytest.approx(30.0)

    busy = analysis.rejoin_time_summary(outcomes, min_rejoined=2).set_index("namespace")
    assert busy.loc["fast", "windows"] == 2 and busy.loc["fast", "p50_median"] == 3.0
    provisional = analysis.rejoin_time_summary(outcomes, final_only=False).set_index("namespace")
    assert provisional.loc["fast", "windows"] == 4
    assert analysis.rejoin_time_summary(outcomes.head(0)).empty


def test_outcome_horizon_from_the_newest_manifest() -> None:
    assert analysis.outcome_horizon([]) == "1h"
    manifests = [
        {"started_at": "2026-11-28T02:00:00+00:00", "settings": {"outcome_horizon": "30m"}},
        {"started_at": "2026-11-28T01:00:00+00:00", "settings": {"outcome_horizon": "2h"}},
        {"started_at": "2026-11-28T03:00:00+00:00", "settings": {}},  # older version
    ]
    assert analysis.outcome_horizon(manifests) == "30m"
    assert analysis.outcome_horizon(MANIFESTS) == "1h"


# --- data health ----------------------------------------------------------------------


def late_frame() -> pd.DataFrame:
    rows = [
        {
            "id": f"e{i}",
            "namespace": "a",
            "name": name,
            "event_time": T0 + pd.Timedelta(minutes=minute),
            "partition": 0,
            "offset": i,
            "key": b"k",
            "value": b"{}",
        }
        for i, (name, minute) in enumerate(
            [
                ("PartyDroppedEvent", 1),
                ("PartyDroppedEvent", 2),
                ("PartyRejoinedEvent", 3),
                ("PartyDroppedEvent", 185),
            ]
        )
    ]
    return pa.Table.from_pylist(rows, schema=LATE_EVENTS_SCHEMA).to_pandas()


def dead_frame() -> pd.DataFrame:
    errors = [
        "not JSON: unexpected end of data: line 1 column 5 (char 4)",
        "not JSON: unexpected end of data: line 1 column 9 (char 8)",
        "not a JSON object",
        "no namespace: field 'namespace' is empty",
        "not JSON: invalid UTF-8",
    ]
    rows = [
        {
            "partition": 1,
            "offset": i,
            "key": None,
            "value": None if i == 2 else b"x",
            "error": error,
            "seen_at": T0 + pd.Timedelta(seconds=i),
        }
        for i, error in enumerate(errors)
    ]
    return pa.Table.from_pylist(rows, schema=DEAD_LETTERS_SCHEMA).to_pandas()


MANIFESTS = [
    {
        "run_id": "r2",
        "started_at": "2026-11-28T01:00:00+00:00",
        "ended_at": None,
        "status": "interrupted",
        "counts": {"messages": 5, "counted": 5},
        "gaps": [{"partition": 0, "detail": "offsets 0..3 no longer exist (retention)"}],
    },
    {
        "run_id": "r1",
        "started_at": "2026-11-28T00:00:00+00:00",
        "ended_at": "2026-11-28T00:01:00+00:00",
        "status": "completed",
        "counts": {"messages": 10, "counted": 4, "skipped": 2, "late": 3, "dead_letters": 1},
        "gaps": [],
    },
]


def test_late_events_over_time() -> None:
    table = analysis.late_events_over_time(late_frame())
    assert list(table.index) == [T0 + pd.Timedelta(hours=h) for h in range(4)]
    assert list(table["PartyDroppedEvent"]) == [2, 0, 0, 1]
    assert list(table["PartyRejoinedEvent"]) == [1, 0, 0, 0]
    assert analysis.late_events_over_time(late_frame().head(0)).empty


def test_dead_letter_reasons_group_by_kind() -> None:
    reasons = analysis.dead_letter_reasons(dead_frame())
    assert list(reasons["reason"]) == ["not JSON", "no namespace", "not a JSON object"]
    assert list(reasons["count"]) == [3, 1, 1]
    first = reasons.iloc[0]
    assert first["first_seen"] == T0 and first["last_seen"] == T0 + pd.Timedelta(seconds=4)
    assert first["example"].startswith("not JSON: ")
    assert analysis.dead_letter_reasons(dead_frame().head(0)).empty


def test_runs_frame() -> None:
    runs = analysis.runs_frame(MANIFESTS)
    assert list(runs["run_id"]) == ["r1", "r2"]
    assert list(runs["late"]) == [3, 0]
    assert list(runs["gaps"]) == [0, 1]
    assert runs["started_at"].dt.tz is not None
    assert pd.isna(runs["ended_at"].iloc[1])
    assert analysis.runs_frame([]).empty


# --- plots -----------------------------------------------------------------------------


def demo_rates() -> pd.DataFrame:
    rows = []
    for ns, share in (("a", 0.5), ("b", 0.2), ("c", 0.3)):
        for minute in range(0, 180, 5):
            rows.append((ns, minute, 10, int(10 * share), 10 - int(10 * share), minute < 170))
    return rates_frame(rows)


def test_plot_namespace_rates_final_and_provisional_lines() -> None:
    fig = plots.plot_namespace_rates(demo_rates(), ["a", "b"], freq=None)
    ax_rate, ax_ratio = fig.axes[:2]
    for ax in (ax_rate, ax_ratio):
        lines = ax.get_lines()
        assert len(lines) == 4  # per namespace: final + provisional
        solid = [ln for ln in lines if ln.get_linestyle() == "-"]
        dashed = [ln for ln in lines if ln.get_linestyle() == "--"]
        assert len(solid) == 2 and len(dashed) == 2
        assert all(ln.get_markerfacecolor() == "none" for ln in dashed)
        # Final line: NaN over the provisional windows, and the reverse.
        y_final = np.asarray(solid[0].get_ydata(), dtype=float)
        assert np.isnan(y_final[-2:]).all() and not np.isnan(y_final[:-2]).any()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["a", "b", plots.FINAL, plots.PROVISIONAL]

    all_final = demo_rates().assign(is_final=True)
    hourly = plots.plot_namespace_rates(all_final, ["a"], freq="1h")
    assert len(hourly.axes[0].get_lines()) == 1
    default = plots.plot_namespace_rates(demo_rates(), top=2)
    assert len({ln.get_color() for ln in default.axes[0].get_lines()}) == 2


def test_plot_ranking_bars_errorbars_and_counts() -> None:
    ranked = analysis.rank_namespaces(demo_rates(), min_disconnects=1)
    fig = plots.plot_ranking(ranked, top=2)
    (ax,) = fig.axes
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bars) == 2
    assert [b.get_width() for b in bars] == pytest.approx([0.5, 0.3])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "c"]
    assert len(ax.containers) == 2  # the bars and their error bars
    texts = [t.get_text().strip() for t in ax.texts]
    assert texts == ["170 / 340", "102 / 340"]


def test_plot_hour_heatmap() -> None:
    fig = plots.plot_hour_heatmap(demo_rates())
    images = [a for a in fig.axes[0].get_children() if isinstance(a, AxesImage)]
    assert len(images) == 1
    assert images[0].get_array().shape == (3, 24)
    assert len(fig.axes) == 2  # the heatmap and its colour bar


def test_plot_data_health() -> None:
    fig = plots.plot_data_health(late_frame(), dead_frame(), MANIFESTS)
    ax_late, ax_runs = fig.axes
    late_bars = [p for p in ax_late.patches if isinstance(p, Rectangle) and p.get_height() > 0]
    assert len(late_bars) == 3  # hour 0: dropped + rejoined; hour 3: dropped
    assert len(ax_runs.patches) == 3 * 2  # late, dead letters, duplicates per run
    assert "5 rows in dead_letters/" in ax_runs.get_title(loc="left")
    assert "interrupted" in " ".join(t.get_text() for t in ax_runs.get_xticklabels())


def test_plot_cohort_vs_window_lines_and_scatter() -> None:
    rates, outcomes = biased_pair()
    fig = plots.plot_cohort_vs_window(rates, outcomes, freq=None, top=2, min_disconnects=1)
    *panels, ax_scatter = fig.axes
    assert [ax.get_title(loc="left") for ax in panels] == ["b", "a"]  # highest cohort first
    a_lines = panels[1].get_lines()
    assert [ln.get_label() for ln in a_lines] == [plots.WINDOW_RATIO, plots.COHORT_RATIO]
    assert list(a_lines[0].get_ydata()) == pytest.approx([0.1, 0.5, 0.2])
    assert list(a_lines[1].get_ydata()) == pytest.approx([0.3, 0.4, 1 / 9])
    (points,) = ax_scatter.collections[-1:]
    assert np.asarray(points.get_offsets()) == pytest.approx(
        np.array([[0.4, 0.4], [8 / 30, 8 / 29]])
    )
    assert {t.get_text() for t in ax_scatter.texts} == {"a", "b"}
    assert "cohort" in ax_scatter.get_ylabel() and "window" in ax_scatter.get_xlabel()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == [plots.WINDOW_RATIO, plots.COHORT_RATIO]

    chosen = plots.plot_cohort_vs_window(rates, outcomes, ["a"], freq="1h")
    assert len(chosen.axes) == 2
    # Below min_disconnects everywhere: the busiest are drawn, the scatter says why it is empty.
    few = plots.plot_cohort_vs_window(rates, outcomes, top=1, min_disconnects=1000)
    assert few.axes[0].get_title(loc="left") == "a"
    assert "enough disconnects" in few.axes[1].texts[0].get_text()


def test_plot_rejoin_times_boxes_per_namespace() -> None:
    outcomes = outcomes_frame(
        [("fast", m, 5, 4, 1, True, 0, 2.0 + m / 5, 5.0 + m / 5) for m in range(0, 60, 5)]
        + [("slow", m, 5, 5, 0, True, 0, 30.0 + m / 5, 60.0) for m in range(0, 30, 5)]
        + [("quiet", 0, 1, 1, 0, True, 0, 1.0, 1.0)]
    )
    fig = plots.plot_rejoin_times(outcomes, top=2)
    (ax,) = fig.axes
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert [t.split("\n")[0] for t in ticks] == ["slow", "fast"]  # slowest first; top 2 by rejoins
    assert ticks[1].split("\n")[1] == "12 windows, 48 rejoins"
    boxes = [p for p in ax.patches if isinstance(p, PathPatch)]
    assert len(boxes) == 4  # p50 and p95 per namespace
    assert "unweighted" in ax.get_xlabel() and "one value per final window" in ax.get_xlabel()
    medians = [ln for ln in ax.get_lines() if ln.get_color() == "0.1"]
    assert len(medians) == 4
    slow_p50 = np.asarray(medians[0].get_xdata(), dtype=float)
    assert slow_p50 == pytest.approx([32.5, 32.5])  # median of 30..35 by 1

    chosen = plots.plot_rejoin_times(outcomes, ["quiet"])
    assert [t.get_text().split("\n")[0] for t in chosen.axes[0].get_yticklabels()] == ["quiet"]
    assert "≥ 2 rejoins" in plots.plot_rejoin_times(outcomes, min_rejoined=2).axes[0].get_xlabel()


def test_plots_accept_empty_data() -> None:
    empty = demo_rates().head(0)
    for fig in (
        plots.plot_namespace_rates(empty),
        plots.plot_ranking(analysis.rank_namespaces(empty)),
        plots.plot_hour_heatmap(empty),
        plots.plot_data_health(late_frame().head(0), dead_frame().head(0), []),
        plots.plot_cohort_vs_window(empty, outcomes_frame([])),
        plots.plot_rejoin_times(outcomes_frame([])),
    ):
        assert fig.axes


def test_importing_the_helpers_leaves_the_backend_alone() -> None:
    code = (
        "import matplotlib\n"
        "before = dict.__getitem__(matplotlib.rcParams, 'backend')\n"
        "import flows.analysis, flows.analysis.plots, flows.analysis.report\n"
        "import sys\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert dict.__getitem__(matplotlib.rcParams, 'backend') is before\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env
    )
    assert result.returncode == 0, result.stderr


# --- report ----------------------------------------------------------------------------


def write_output(root: Path, rates: pd.DataFrame, outcomes: pd.DataFrame | None = None) -> None:
    """An output directory laid out as the job writes it (Hive-partitioned rates, and
    outcomes when given: outputs written before ``disconnect_outcomes`` have none)."""
    datasets = [("party_rates", rates, RATES_SCHEMA)]
    if outcomes is not None:
        datasets.append(("disconnect_outcomes", outcomes, OUTCOMES_SCHEMA))
    for name, frame, schema in datasets:
        ds.write_dataset(
            pa.Table.from_pandas(frame, schema=schema, preserve_index=False),
            root / name,
            format="parquet",
            partitioning=RATES_PARTITIONING,
            basename_template="part-{i}.parquet",
        )
    (root / "_runs").mkdir()
    (root / "_runs" / "r1.json").write_text(
        '{"run_id": "r1", "started_at": "2026-11-28T00:00:00+00:00", "ended_at": null,'
        ' "status": "completed", "counts": {"messages": 3, "late": 1}, "gaps": []}'
    )


def test_report_and_main_plot_from_an_output_dir(tmp_path: Path) -> None:
    rates = demo_rates()
    rates["namespace"] = rates["namespace"].replace({"a": "<b>a&b</b>"})
    write_output(tmp_path / "out", rates)
    assert set(analysis.load_party_rates(tmp_path / "out")["namespace"]) == {"<b>a&b</b>", "b", "c"}

    render_report(tmp_path / "out", tmp_path / "r" / "report.html")
    page = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4
    assert all(base64.b64decode(data).startswith(PNG_MAGIC) for data in images)
    assert "&lt;b&gt;a&amp;b&lt;/b&gt;" in page and "<b>a&b</b>" not in page
    assert "invite" in page and "same" in page  # the rate definitions
    assert "no <code>disconnect_outcomes/</code> rows" in page  # an output from before it

    save_main_plot(tmp_path / "out", tmp_path / "main.png")
    data = (tmp_path / "main.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_report_shows_cohort_ratio_and_rejoin_times(tmp_path: Path) -> None:
    rates = demo_rates()
    rows = []
    for ns, share in (("a", 0.5), ("b", 0.2), ("c", 0.3)):
        for minute in range(0, 180, 5):
            dropped = int(10 * share)
            p50 = 5.0 + minute / 30
            rows.append((ns, minute, 10, 10 - dropped, dropped, minute < 110, 0, p50, 2 * p50))
    outcomes = outcomes_frame(rows)
    write_output(tmp_path / "out", rates, outcomes)
    (tmp_path / "out" / "_runs" / "r2.json").write_text(
        '{"run_id": "r2", "started_at": "2026-11-28T01:00:00+00:00", "ended_at": null,'
        ' "status": "completed", "counts": {}, "gaps": [],'
        ' "settings": {"outcome_horizon": "45m"}}'
    )
    loaded = analysis.load_disconnect_outcomes(tmp_path / "out")
    assert len(loaded) == len(outcomes) and set(loaded["namespace"]) == {"a", "b", "c"}

    render_report(tmp_path / "out", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 6
    assert all(base64.b64decode(data).startswith(PNG_MAGIC) for data in images)
    assert 'alt="window drop ratio and cohort drop ratio"' in page
    assert 'alt="rejoin time distribution per namespace"' in page
    assert "<h2>Cohort drop ratio</h2>" in page and "<h2>Rejoin times</h2>" in page
    assert "inactive timeout" in page and "own disconnects" in page
    assert "outcome horizon (45m)" in page  # the horizon the newest run used
    assert "not weighted" in page
    assert "cohort drop ratio</th>" in page and "p50_median</th>" in page
    assert "no <code>disconnect_outcomes/</code> rows" not in page


# --- data dictionary -------------------------------------------------------------------


def test_data_dictionary_is_up_to_date() -> None:
    committed = (REPO / "docs" / "data_dictionary.md").read_text(encoding="utf-8")
    assert committed == render_data_dictionary(), (
        "docs/data_dictionary.md is out of date: python -m flows.analysis.dictionary > "
        "docs/data_dictionary.md"
    )


def test_data_dictionary_covers_every_column_and_manifest_field() -> None:
    text = render_data_dictionary()
    for schema in (RATES_SCHEMA, LATE_EVENTS_SCHEMA, DEAD_LETTERS_SCHEMA):
        for field in schema:
            assert field.name in UNITS, f"no unit for {field.name}"
            description = field.metadata[b"description"].decode()
            rows = [ln for ln in text.splitlines() if ln.startswith(f"| `{field.name}`")]
            assert any(description in row for row in rows), field.name
            null = "never null" if not field.nullable else "null"
            assert any(null in row for row in rows), field.name
    assert "| `drop_ratio` | `double` |" in text
    assert "null when `disconnected` is 0" in text
    for name in ("run_id", "started_at", "ended_at", "status", "settings", "gaps"):
        assert f"| `{name}` |" in text
    for name in ("from", "to", "end"):
        assert f"| `partitions.*.{name}` |" in text
    counts = ("messages", "counted", "skipped", "duplicates", "late", "dead_letters")
    for name in (*counts, "before_start", "reread"):
        assert f"| `counts.{name}` |" in text
    assert "| `group_commit_error` |" in text
    assert "| `rebuild` |" in text
    assert len(MANIFEST_FIELDS) == 26
    for name in ("older_than", "manifests_folded", "late_events_removed", "dead_letters_removed"):
        assert f"| `retention.{name}` |" in text
    for name in ("format", "state_id", "closed_until_us", "partitions.*.end", "incomplete"):
        assert f"`{name}`" in text
    assert "same" in text and "inactive timeout" in text and "invitation" in text


def test_dictionary_module_prints_it() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flows.analysis.dictionary"],
        capture_output=True,
        cwd=REPO,
        check=True,
    )
    assert result.stdout.decode("utf-8") == render_data_dictionary()


# --- combining windows and the roll-ups --------------------------------------------------


def test_every_windowed_column_says_how_it_combines() -> None:
    for schema in (RATES_SCHEMA, OUTCOMES_SCHEMA):
        for field in schema:
            kind, formula = analysis.combine_rule(field.name, schema)
            assert kind in COMBINE_KINDS, field.name
            assert (formula is not None) == (kind == "recompute"), field.name
    assert analysis.combine_rule("users_disconnected") == ("distinct", None)
    assert analysis.combine_rule("parties_affected") == ("distinct", None)
    assert analysis.combine_rule("drop_ratio") == ("recompute", "dropped / disconnected")
    assert analysis.combine_rule("rejoin_seconds_p95", OUTCOMES_SCHEMA) == ("percentile", None)
    assert analysis.combine_rule("dropped", OUTCOMES_SCHEMA) == ("sum", None)
    text = render_data_dictionary()
    assert "| column | type | unit | null | meaning | across windows |" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| `users_disconnected`"))
    assert row.endswith(
        "| cannot be combined: a distinct count (a sum counts whoever is in "
        "several windows once per window); read a roll-up |"
    )
    row = next(ln for ln in text.splitlines() if ln.startswith("| `cohort_drop_ratio`"))
    assert row.endswith("| recompute from the summed counts: `dropped / (rejoined + dropped)` |")
    assert "computed over every rejoin time (exact" in text
    assert "`users_disconnected` of `party_rates_1d`" in text
    # Datasets of single events have no such column.
    late = next(ln for ln in text.splitlines() if ln.startswith("| `event_time`"))
    assert late.count("|") == 6


def test_combined_windows_equal_longer_windows_except_what_cannot_combine() -> None:
    """Five-minute rows of a simulated day combined into hours by the schema's rules equal
    the independent reference's own hour-long windows, for every column that combines."""
    from flows.tooling.simulator import SimConfig, generate
    from tests.helpers import partitioned, reference_frames

    topic = partitioned(generate(SimConfig(messages=20_000, namespaces=6, hours=6))[0])
    rates, outcomes = reference_frames(topic)
    hour_rates, hour_outcomes = reference_frames(topic, window_us=3_600_000_000)

    combined = analysis.combine_windows(rates, "1h")
    key = ["namespace", "window_start"]
    assert list(combined.columns) == list(rates.columns)
    joined = combined.merge(hour_rates, on=key, suffixes=("", "_hour"))
    assert len(joined) == len(hour_rates) == len(combined)
    for column in ("disconnected", "rejoined", "dropped", "rejected", "window_end", "date"):
        assert (joined[column] == joined[f"{column}_hour"]).all(), column
    for column in ("disconnects_per_min", "drops_per_min", "drop_ratio", "rejoin_ratio"):
        assert np.allclose(joined[column], joined[f"{column}_hour"], equal_nan=True), column
    assert combined["users_disconnected"].isna().all()
    # Summing a distinct count would count a player in two windows twice.
    summed = rates.groupby(["namespace", rates["window_start"].dt.floor("1h")])[
        "users_disconnected"
    ].sum()
    exact = hour_rates.set_index(key)["users_disconnected"]
    assert (summed.to_numpy() >= exact.to_numpy()).all()
    assert (summed.to_numpy() > exact.to_numpy()).any()

    outcome_hours = analysis.combine_windows(outcomes, "1h")
    joined = outcome_hours.merge(hour_outcomes, on=key, suffixes=("", "_hour"))
    assert len(joined) == len(hour_outcomes) > 0
    for column in ("disconnects", "rejoined", "dropped", "unresolved", "superseded"):
        assert (joined[column] == joined[f"{column}_hour"]).all(), column
    assert np.allclose(
        joined["cohort_drop_ratio"], joined["cohort_drop_ratio_hour"], equal_nan=True
    )
    assert joined["rejoin_seconds_p50"].isna().all()
    with pytest.raises(ValueError, match="multiple"):
        analysis.combine_windows(rates, "7min")


def test_rollups_load_by_length_and_read_empty_when_missing(tmp_path: Path) -> None:
    hourly = rates_frame([("a", 0, 30, 6, 24, True), ("a", 60, 10, 1, 9, False)])
    hourly["window_end"] = hourly["window_start"] + pd.Timedelta(hours=1)
    daily = outcomes_frame([("a", 0, 40, 33, 7, False)])
    daily["window_end"] = daily["window_start"] + pd.Timedelta(days=1)
    out = tmp_path / "out"
    for name, frame, schema in (
        ("party_rates_1h", hourly, RATES_SCHEMA),
        ("disconnect_outcomes_1d", daily, OUTCOMES_SCHEMA),
    ):
        ds.write_dataset(
            pa.Table.from_pandas(frame, schema=schema, preserve_index=False),
            out / name,
            format="parquet",
            partitioning=RATES_PARTITIONING,
            basename_template="part-{i}.parquet",
        )
    (out / "party_rates_30m").mkdir()  # a roll-up without rows yet
    (out / "party_rates_old").mkdir()  # not a length: not a roll-up
    loaded = analysis.load_party_rates(out, rollup="1h")
    assert list(loaded["disconnected"]) == [30, 10]
    assert analysis.window_length(loaded) == pd.Timedelta(hours=1)
    outcomes = analysis.load_disconnect_outcomes(out, rollup="1d")
    assert list(outcomes["dropped"]) == [7]
    missing = analysis.load_party_rates(out, rollup="1d")
    assert missing.empty and list(missing.columns) == RATES_SCHEMA.names
    assert analysis.load_party_rates(out).empty  # the 5-minute dataset is not there
    assert analysis.rollup_lengths(out) == ["30m", "1h", "1d"]
    assert analysis.rollup_lengths(tmp_path / "nowhere") == []
    with pytest.raises(ValueError, match="length"):
        analysis.load_party_rates(out, rollup="../x")
