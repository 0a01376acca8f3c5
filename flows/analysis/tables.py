"""Tables over the loaded output: combining windows, rankings with intervals, a
namespace's series, cohort outcomes against window ratios, rejoin times, late events, dead
letters and runs, for the notebook, the plots and the HTML report.

Each takes frames the loaders (``flows.analysis.loaders``) return, or manifests, and none
reads the wall clock: the same output gives the same tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa

from schemas.durations import DEFAULT_OUTCOME_HORIZON
from schemas.output import OUTCOMES_SCHEMA, RATES_SCHEMA

__all__ = [
    "COUNT_COLUMNS",
    "MANIFEST_COUNTS",
    "Z_95",
    "TimeLike",
    "cohort_summary",
    "cohort_vs_window",
    "combine_rule",
    "combine_windows",
    "dead_letter_reasons",
    "drop_ratio_by_hour",
    "error_reason",
    "filter_dates",
    "late_events_over_time",
    "namespace_series",
    "outcome_horizon",
    "overview",
    "rank_namespaces",
    "rejoin_time_summary",
    "rejoin_time_windows",
    "runs_frame",
    "utc_timestamp",
    "wilson_interval",
    "window_length",
]

Z_95 = 1.959963984540054
"""Two-sided 95% standard normal quantile."""

COUNT_COLUMNS = ("disconnected", "rejoined", "dropped", "rejected")
TimeLike: TypeAlias = str | date | datetime | pd.Timestamp | np.datetime64


# --- combining windows ------------------------------------------------------------------


def combine_rule(column: str, schema: pa.Schema = RATES_SCHEMA) -> tuple[str, str | None]:
    """The ``combine`` kind of a windowed dataset's column and, for ``recompute``, its
    formula over the summed columns (``minutes``: the combined period's minutes)."""
    meta = schema.field(column).metadata or {}
    formula = meta.get(b"formula")
    return meta[b"combine"].decode(), None if formula is None else formula.decode()


def combine_windows(
    frame: pd.DataFrame, freq: str | pd.Timedelta = "1h", schema: pa.Schema | None = None
) -> pd.DataFrame:
    """Windows of ``party_rates`` or ``disconnect_outcomes`` combined into ``freq``-long
    periods aligned to the UTC epoch, one row per (namespace, period), by each column's
    ``combine`` rule: counts summed, ratios and per-minute rates recomputed from the summed
    counts (null where the denominator is 0), ``is_final`` true when every window is.
    Distinct counts and percentiles cannot be combined: they come out null (read a roll-up
    for them). ``window_start``/``window_end`` are the period's bounds. ``schema`` defaults
    to the one whose columns the frame has.
    """
    if schema is None:
        schema = OUTCOMES_SCHEMA if "cohort_drop_ratio" in frame.columns else RATES_SCHEMA
    step = pd.Timedelta(freq)
    length = window_length(frame)
    if step < length or step % length:
        raise ValueError(f"freq {freq!r} is not a multiple of the windows ({length})")
    epoch = pd.Timestamp(0, tz="UTC")
    columns = [f.name for f in schema if f.name in frame.columns]
    df = frame.assign(
        namespace=frame["namespace"].astype(str),
        window_start=epoch + ((frame["window_start"] - epoch) // step) * step,
    )
    rules = {c: combine_rule(c, schema) for c in columns}
    sums = [c for c, (kind, _) in rules.items() if kind == "sum"]
    grouped = df.groupby(["namespace", "window_start"], sort=True)
    out = grouped[sums].sum()
    if "is_final" in columns:
        out["is_final"] = grouped["is_final"].all()
    out = out.reset_index()
    minutes = step / pd.Timedelta(minutes=1)
    for column, (kind, formula) in rules.items():
        if kind == "recompute":
            assert formula is not None
            with np.errstate(divide="ignore", invalid="ignore"):
                value = out.assign(minutes=minutes).eval(formula, engine="python")
            out[column] = value.astype(float).replace([np.inf, -np.inf], np.nan)
        elif kind in ("distinct", "percentile"):
            out[column] = pd.Series(
                pd.NA, index=out.index, dtype="Int64" if kind == "distinct" else "Float64"
            )
    out["window_end"] = out["window_start"] + step
    if "date" in columns:
        out["date"] = out["window_start"].dt.date
    return out[columns]


# --- time ranges -------------------------------------------------------------------------


def utc_timestamp(value: TimeLike) -> pd.Timestamp:
    """``value`` as a UTC timestamp; a value without a time zone is taken as UTC."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def filter_dates(
    df: pd.DataFrame,
    start: TimeLike | None = None,
    end: TimeLike | None = None,
    column: str = "window_start",
) -> pd.DataFrame:
    """Rows whose ``column`` is in ``[start, end)``; either bound may be None (open).

    Bounds are instants or dates (``"2026-11-27"`` is midnight UTC of that day), so
    ``start="2026-11-27", end="2026-11-28"`` keeps the windows that start on the 27th.
    """
    keep = pd.Series(True, index=df.index)
    if start is not None:
        keep &= df[column] >= utc_timestamp(start)
    if end is not None:
        keep &= df[column] < utc_timestamp(end)
    return df[keep]


# --- ranking -----------------------------------------------------------------------------


def wilson_interval(
    successes: Any, trials: Any, z: float = Z_95
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Wilson score interval of a binomial proportion, element-wise.

    Returns ``(low, high)`` arrays; NaN where ``trials`` is 0. ``successes`` above ``trials``
    (possible for drops over disconnects, see the rate definitions) are taken as ``trials``.
    """
    n = np.asarray(trials, dtype=float)
    k = np.minimum(np.asarray(successes, dtype=float), n)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        z2 = z * z
        denom = 1.0 + z2 / n
        center = (p + z2 / (2 * n)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
        low = np.where(n > 0, np.clip(center - half, 0.0, 1.0), np.nan)
        high = np.where(n > 0, np.clip(center + half, 0.0, 1.0), np.nan)
    return np.atleast_1d(low), np.atleast_1d(high)


def rank_namespaces(
    rates: pd.DataFrame,
    start: TimeLike | None = None,
    end: TimeLike | None = None,
    min_disconnects: int = 20,
    *,
    final_only: bool = True,
    z: float = Z_95,
) -> pd.DataFrame:
    """Namespaces from the worst drop ratio down, over the windows in ``[start, end)``.

    One row per namespace with at least ``min_disconnects`` disconnects in the range:
    ``rank``, ``namespace``, ``windows``, the summed counts, ``drop_ratio`` (summed drops over
    summed disconnects), ``ci_low``/``ci_high`` (Wilson interval, 95% by default),
    ``rejoin_ratio`` and the first and last window. Only final windows count unless
    ``final_only`` is False. Ties are broken by volume (more disconnects first), then name.
    """
    df = filter_dates(rates, start, end)
    if final_only:
        df = df[df["is_final"]]
    columns = [
        "rank",
        "namespace",
        "windows",
        *COUNT_COLUMNS,
        "drop_ratio",
        "ci_low",
        "ci_high",
        "rejoin_ratio",
        "first_window",
        "last_window",
    ]
    if df.empty:
        return pd.DataFrame(columns=columns)
    agg = df.groupby(df["namespace"].astype(str), observed=True).agg(
        windows=("window_start", "size"),
        disconnected=("disconnected", "sum"),
        rejoined=("rejoined", "sum"),
        dropped=("dropped", "sum"),
        rejected=("rejected", "sum"),
        first_window=("window_start", "min"),
        last_window=("window_start", "max"),
    )
    agg = agg[agg["disconnected"] >= max(min_disconnects, 1)].reset_index()
    agg["drop_ratio"] = agg["dropped"] / agg["disconnected"]
    agg["rejoin_ratio"] = agg["rejoined"] / agg["disconnected"]
    low, high = wilson_interval(agg["dropped"], agg["disconnected"], z)
    agg["ci_low"], agg["ci_high"] = low, high
    agg = agg.sort_values(
        ["drop_ratio", "disconnected", "namespace"], ascending=[False, False, True]
    ).reset_index(drop=True)
    agg["rank"] = np.arange(1, len(agg) + 1)
    return agg[columns]


# --- time series -------------------------------------------------------------------------


def window_length(rates: pd.DataFrame) -> pd.Timedelta:
    """The windows' length (every row of one output has the same)."""
    if rates.empty:
        return pd.Timedelta(minutes=5)
    return pd.Timedelta((rates["window_end"] - rates["window_start"]).iloc[0])


def namespace_series(
    rates: pd.DataFrame, namespace: str, freq: str | pd.Timedelta | None = None
) -> pd.DataFrame:
    """One namespace's rates over time, one row per bucket, gaps filled.

    The buckets are the windows themselves (``freq`` None) or ``freq``-long periods aligned
    to the UTC epoch (``"1h"``) whose counts are summed. A window without a row had no event,
    so a missing bucket has zero counts and no drop ratio. Columns: ``bucket``, the counts,
    ``disconnects_per_min``, ``drops_per_min``, ``drop_ratio``, ``rejoin_ratio`` and
    ``is_final`` (every window of the bucket is final; a gap is final when it comes before
    the namespace's first provisional window).
    """
    rows = rates[rates["namespace"].astype(str) == namespace]
    step = window_length(rates) if freq is None else pd.Timedelta(freq)
    if step < window_length(rates):
        raise ValueError(f"freq {freq!r} is shorter than the windows ({window_length(rates)})")
    cols = ["bucket", *COUNT_COLUMNS, "disconnects_per_min", "drops_per_min"]
    cols += ["drop_ratio", "rejoin_ratio", "is_final"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    epoch = pd.Timestamp(0, tz="UTC")
    bucket = epoch + ((rows["window_start"] - epoch) // step) * step
    agg = rows.groupby(bucket.rename("bucket")).agg(
        disconnected=("disconnected", "sum"),
        rejoined=("rejoined", "sum"),
        dropped=("dropped", "sum"),
        rejected=("rejected", "sum"),
        is_final=("is_final", "all"),
    )
    full = pd.date_range(agg.index.min(), agg.index.max(), freq=step, name="bucket")
    agg = agg.reindex(full)
    provisional = agg.index[agg["is_final"].eq(False)]
    first_provisional = provisional.min() if len(provisional) else None
    missing = agg["is_final"].isna()
    agg.loc[missing, "is_final"] = (
        True if first_provisional is None else agg.index[missing] < first_provisional
    )
    agg["is_final"] = agg["is_final"].astype(bool)
    for col in COUNT_COLUMNS:
        agg[col] = agg[col].fillna(0).astype("int64")
    minutes = step / pd.Timedelta(minutes=1)
    agg["disconnects_per_min"] = agg["disconnected"] / minutes
    agg["drops_per_min"] = agg["dropped"] / minutes
    with np.errstate(divide="ignore", invalid="ignore"):
        agg["drop_ratio"] = (agg["dropped"] / agg["disconnected"]).where(agg["disconnected"] > 0)
        agg["rejoin_ratio"] = (agg["rejoined"] / agg["disconnected"]).where(agg["disconnected"] > 0)
    return agg.reset_index()[cols]


def drop_ratio_by_hour(
    rates: pd.DataFrame, namespaces: Sequence[str] | None = None, *, final_only: bool = True
) -> pd.DataFrame:
    """Drop ratio by UTC hour of day (columns 0-23) and namespace (rows, in given order).

    Each cell sums the drops and the disconnects of that namespace's windows starting in
    that hour, over all days; NaN where there was no disconnect.
    """
    df = rates[rates["is_final"]] if final_only else rates
    df = df.assign(namespace=df["namespace"].astype(str), hour=df["window_start"].dt.hour)
    if namespaces is not None:
        df = df[df["namespace"].isin(list(namespaces))]
    sums = df.groupby(["namespace", "hour"])[["dropped", "disconnected"]].sum()
    ratio = (sums["dropped"] / sums["disconnected"]).where(sums["disconnected"] > 0)
    order = list(namespaces) if namespaces is not None else sorted(df["namespace"].unique())
    table = ratio.unstack("hour").reindex(index=order, columns=range(24))
    table.index.name, table.columns.name = "namespace", "hour"
    return table.astype(float)


# --- disconnect outcomes ---------------------------------------------------------------

_COHORT_COLUMNS = (
    "disconnected",
    "dropped",
    "disconnects",
    "cohort_rejoined",
    "cohort_dropped",
    "unresolved",
    "superseded",
)


def outcome_horizon(manifests: Iterable[dict[str, Any]]) -> str:
    """The outcome horizon of the newest run that records one (``1h`` when none does)."""
    horizon = DEFAULT_OUTCOME_HORIZON
    for m in sorted(manifests, key=lambda m: str(m.get("started_at") or "")):
        value = (m.get("settings") or {}).get("outcome_horizon")
        if value:
            horizon = str(value)
    return horizon


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    with np.errstate(divide="ignore", invalid="ignore"):
        return (num / den).where(den > 0).astype(float)


def cohort_vs_window(
    rates: pd.DataFrame,
    outcomes: pd.DataFrame,
    namespaces: Sequence[str] | None = None,
    freq: str | pd.Timedelta | None = "1h",
    *,
    start: TimeLike | None = None,
    end: TimeLike | None = None,
    final_only: bool = True,
) -> pd.DataFrame:
    """The window drop ratio beside the cohort drop ratio, per namespace and time bucket.

    One row per (namespace, bucket): from ``party_rates`` the summed ``disconnected`` and
    ``dropped`` and ``drop_ratio`` = dropped / disconnected (drops *in* the bucket over
    disconnects *in* it); from ``disconnect_outcomes`` the bucket's own ``disconnects`` and
    what became of them (``cohort_rejoined``, ``cohort_dropped``, ``unresolved``,
    ``superseded``) and ``cohort_drop_ratio`` = cohort_dropped / (cohort_rejoined +
    cohort_dropped). Ratios are NaN where their denominator is 0.

    Buckets are the windows (``freq`` None) or ``freq``-long periods aligned to the UTC
    epoch, from each namespace's first to last bucket (a gap has zero counts). A window is
    final when its rows in both datasets are final (a missing row counts as final) and it
    starts before the end of the last final ``disconnect_outcomes`` window: an outcomes row
    becomes final only an outcome horizon after its window, so the rates of later windows
    have no cohort to compare with yet. ``final_only`` (default) keeps only final windows;
    otherwise every window counts and ``is_final`` tells whether all of a bucket's did.
    """
    cols = ["namespace", "bucket", "disconnected", "dropped", "drop_ratio", "disconnects"]
    cols += ["cohort_rejoined", "cohort_dropped", "unresolved", "superseded"]
    cols += ["cohort_drop_ratio", "is_final"]
    key = ["namespace", "window_start"]
    r = filter_dates(rates, start, end)[[*key, "disconnected", "dropped", "is_final"]]
    o = filter_dates(outcomes, start, end)[
        [*key, "disconnects", "rejoined", "dropped", "unresolved", "superseded", "is_final"]
    ]
    r = r.assign(namespace=r["namespace"].astype(str))
    o = o.assign(namespace=o["namespace"].astype(str)).rename(
        columns={"rejoined": "cohort_rejoined", "dropped": "cohort_dropped"}
    )
    if namespaces is not None:
        r = r[r["namespace"].isin(list(namespaces))]
        o = o[o["namespace"].isin(list(namespaces))]
    final_outcomes = outcomes.loc[outcomes["is_final"].astype(bool), "window_end"]
    cutoff = final_outcomes.max() if len(final_outcomes) else None
    merged = r.merge(o, on=key, how="outer", suffixes=("_rates", "_outcomes"))
    if merged.empty:
        return pd.DataFrame(columns=cols)
    final = merged["is_final_rates"].fillna(True).astype(bool)
    final &= merged["is_final_outcomes"].fillna(True).astype(bool)
    if cutoff is None:  # no outcomes row is final yet: nothing to compare with
        final &= False
    else:
        final &= merged["window_start"] < cutoff
    merged["is_final"] = final
    if final_only:
        merged = merged[merged["is_final"]]
        if merged.empty:
            return pd.DataFrame(columns=cols)
    for col in _COHORT_COLUMNS:
        merged[col] = merged[col].fillna(0).astype("int64")
    step = window_length(rates if len(rates) else outcomes)
    if freq is not None:
        if pd.Timedelta(freq) < step:
            raise ValueError(f"freq {freq!r} is shorter than the windows ({step})")
        step = pd.Timedelta(freq)
    epoch = pd.Timestamp(0, tz="UTC")
    merged["bucket"] = epoch + ((merged["window_start"] - epoch) // step) * step
    agg = merged.groupby(["namespace", "bucket"])[[*_COHORT_COLUMNS, "is_final"]].agg(
        {**{c: "sum" for c in _COHORT_COLUMNS}, "is_final": "all"}
    )
    parts = []
    for ns, group in agg.groupby(level="namespace", sort=True):
        group = group.droplevel("namespace")
        full = pd.date_range(group.index.min(), group.index.max(), freq=step, name="bucket")
        group = group.reindex(full)
        gap = group["is_final"].isna()  # no row: final when before the cutoff
        group.loc[gap, "is_final"] = False if cutoff is None else group.index[gap] < cutoff
        group["is_final"] = group["is_final"].astype(bool)
        for col in _COHORT_COLUMNS:
            group[col] = group[col].fillna(0).astype("int64")
        parts.append(group.reset_index().assign(namespace=ns))
    out = pd.concat(parts, ignore_index=True)
    out["drop_ratio"] = _ratio(out["dropped"], out["disconnected"])
    decided = out["cohort_rejoined"] + out["cohort_dropped"]
    out["cohort_drop_ratio"] = _ratio(out["cohort_dropped"], decided)
    return out[cols]


def cohort_summary(
    rates: pd.DataFrame,
    outcomes: pd.DataFrame,
    start: TimeLike | None = None,
    end: TimeLike | None = None,
    min_disconnects: int = 20,
    *,
    final_only: bool = True,
    z: float = Z_95,
) -> pd.DataFrame:
    """Per namespace over ``[start, end)``: the window and the cohort drop ratio side by side.

    The sums of :func:`cohort_vs_window` over the range (same windows on both sides), for
    namespaces with at least ``min_disconnects`` disconnects in ``disconnect_outcomes``:
    ``namespace``, ``windows`` (those with a disconnect), the counts, ``drop_ratio``,
    ``cohort_drop_ratio`` with its Wilson interval (``cohort_ci_low``/``cohort_ci_high``) and
    ``difference`` (cohort minus window). Sorted from the highest cohort drop ratio down,
    ties by volume then name.
    """
    cols = ["namespace", "windows", *_COHORT_COLUMNS, "drop_ratio", "cohort_drop_ratio"]
    cols += ["cohort_ci_low", "cohort_ci_high", "difference"]
    per_window = cohort_vs_window(
        rates, outcomes, freq=None, start=start, end=end, final_only=final_only
    )
    if per_window.empty:
        return pd.DataFrame(columns=cols)
    active = (per_window["disconnected"] > 0) | (per_window["disconnects"] > 0)
    agg = (
        per_window.assign(active=active)
        .groupby("namespace")
        .agg(windows=("active", "sum"), **{c: (c, "sum") for c in _COHORT_COLUMNS})
    )
    agg = agg[agg["disconnects"] >= max(min_disconnects, 1)].reset_index()
    agg["drop_ratio"] = _ratio(agg["dropped"], agg["disconnected"])
    decided = agg["cohort_rejoined"] + agg["cohort_dropped"]
    agg["cohort_drop_ratio"] = _ratio(agg["cohort_dropped"], decided)
    low, high = wilson_interval(agg["cohort_dropped"], decided, z)
    agg["cohort_ci_low"], agg["cohort_ci_high"] = low, high
    agg["difference"] = agg["cohort_drop_ratio"] - agg["drop_ratio"]
    agg = agg.sort_values(
        ["cohort_drop_ratio", "disconnects", "namespace"], ascending=[False, False, True]
    )
    return agg.reset_index(drop=True)[cols]


def rejoin_time_windows(
    outcomes: pd.DataFrame,
    start: TimeLike | None = None,
    end: TimeLike | None = None,
    *,
    min_rejoined: int = 1,
    final_only: bool = True,
) -> pd.DataFrame:
    """The ``disconnect_outcomes`` rows that carry rejoin times: ``namespace`` (as str),
    ``window_start``, ``rejoined``, ``rejoin_seconds_p50``, ``rejoin_seconds_p95``.

    Rows with at least ``min_rejoined`` rejoins (a window's percentiles of one or two
    rejoins are mostly noise), final ones only unless ``final_only`` is False.
    """
    cols = ["namespace", "window_start", "rejoined", "rejoin_seconds_p50", "rejoin_seconds_p95"]
    df = filter_dates(outcomes, start, end)
    if final_only:
        df = df[df["is_final"].astype(bool)]
    df = df[(df["rejoined"] >= max(min_rejoined, 1)) & df["rejoin_seconds_p50"].notna()]
    df = df.assign(namespace=df["namespace"].astype(str))[cols]
    return df.sort_values(["namespace", "window_start"], ignore_index=True)


def rejoin_time_summary(
    outcomes: pd.DataFrame,
    start: TimeLike | None = None,
    end: TimeLike | None = None,
    *,
    min_rejoined: int = 1,
    final_only: bool = True,
) -> pd.DataFrame:
    """Per namespace, the distribution over windows of the windows' rejoin-time percentiles.

    Each window of :func:`rejoin_time_windows` is one value, whatever its number of rejoins
    (unweighted): ``windows``, ``rejoined`` (summed), the quartiles of the per-window median
    (``p50_q25``, ``p50_median``, ``p50_q75``) and the median and maximum of the per-window
    95th percentile (``p95_median``, ``p95_max``), in seconds. Slowest median first.
    """
    cols = ["namespace", "windows", "rejoined", "p50_q25", "p50_median", "p50_q75"]
    cols += ["p95_median", "p95_max"]
    df = rejoin_time_windows(outcomes, start, end, min_rejoined=min_rejoined, final_only=final_only)
    if df.empty:
        return pd.DataFrame(columns=cols)
    grouped = df.groupby("namespace")
    p50 = grouped["rejoin_seconds_p50"]
    p95 = grouped["rejoin_seconds_p95"]
    table = pd.DataFrame(
        {
            "windows": grouped.size(),
            "rejoined": grouped["rejoined"].sum(),
            "p50_q25": p50.quantile(0.25),
            "p50_median": p50.median(),
            "p50_q75": p50.quantile(0.75),
            "p95_median": p95.median(),
            "p95_max": p95.max(),
        }
    ).reset_index()
    table = table.sort_values(["p50_median", "namespace"], ascending=[False, True])
    return table.reset_index(drop=True)[cols]


# --- data health -------------------------------------------------------------------------


def late_events_over_time(late: pd.DataFrame, freq: str = "1h") -> pd.DataFrame:
    """Late events per ``freq`` of their event time (index), one column per event name."""
    if late.empty:
        return pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC", name="event_time"))
    table = (
        late.groupby([late["event_time"].dt.floor(freq), late["name"].astype(str)])
        .size()
        .unstack("name", fill_value=0)
    )
    full = pd.date_range(table.index.min(), table.index.max(), freq=freq, name="event_time")
    return table.reindex(full, fill_value=0)


def error_reason(error: str) -> str:
    """The kind of a dead letter's error: its text up to the first colon."""
    return error.split(":", 1)[0].strip()


def dead_letter_reasons(dead: pd.DataFrame) -> pd.DataFrame:
    """Dead letters by reason, most frequent first: count, first and last seen, an example."""
    columns = ["reason", "count", "first_seen", "last_seen", "example"]
    if dead.empty:
        return pd.DataFrame(columns=columns)
    df = dead.assign(reason=dead["error"].astype(str).map(error_reason))
    table = df.groupby("reason").agg(
        count=("error", "size"),
        first_seen=("seen_at", "min"),
        last_seen=("seen_at", "max"),
        example=("error", "first"),
    )
    table = table.reset_index().sort_values(["count", "reason"], ascending=[False, True])
    return table.reset_index(drop=True)[columns]


MANIFEST_COUNTS = (
    "messages",
    "counted",
    "skipped",
    "duplicates",
    "late",
    "dead_letters",
    "before_start",
)


def runs_frame(manifests: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per run manifest, oldest first: times, status, counts and number of gaps."""
    rows = []
    for m in manifests:
        counts = m.get("counts", {})
        rows.append(
            {
                "run_id": m["run_id"],
                "started_at": pd.Timestamp(m["started_at"]),
                "ended_at": pd.Timestamp(m["ended_at"]) if m.get("ended_at") else pd.NaT,
                "status": m.get("status"),
                **{c: int(counts.get(c, 0)) for c in MANIFEST_COUNTS},
                "gaps": len(m.get("gaps", [])),
            }
        )
    columns = ["run_id", "started_at", "ended_at", "status", *MANIFEST_COUNTS, "gaps"]
    df = pd.DataFrame(rows, columns=columns)
    for col in ("started_at", "ended_at"):
        df[col] = pd.to_datetime(df[col], utc=True)
    return df.sort_values("started_at", ignore_index=True)


def overview(rates: pd.DataFrame) -> dict[str, Any]:
    """Headline numbers of a ``party_rates`` frame."""
    return {
        "rows": len(rates),
        "final_rows": int(rates["is_final"].sum()),
        "provisional_rows": int((~rates["is_final"]).sum()),
        "namespaces": int(rates["namespace"].nunique()),
        "first_window": rates["window_start"].min() if len(rates) else None,
        "last_window": rates["window_start"].max() if len(rates) else None,
        **{c: int(rates[c].sum()) for c in COUNT_COLUMNS},
    }
