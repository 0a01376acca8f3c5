"""Incidents: stretches where a namespace's drop ratio is significantly above its own baseline.

**What is read.** Final ``disconnect_outcomes`` rows: per window, the window's own
disconnects that ended rejoined or dropped (*decided*) and those that ended dropped. The
drop ratio here is the cohort drop ratio, dropped ÷ decided. The window ``drop_ratio`` of
``party_rates`` is not used: a drop lands an inactive timeout after its disconnect, so an
incident's first windows would miss its drops and the windows after it would still show
them, shifting its start and end by the timeout. The cohort ratio puts every outcome in the
window of its disconnect, so an incident starts and ends where its disconnects do; the price
is that a row is final an outcome horizon (1 h by default) after its window, so the newest
hour or so is not searched yet.

**The test.** For every namespace, every one-hour stretch starting on a UTC half hour is
tested against the namespace's own baseline: its drop ratio over its other windows, leaving
out an hour on each side of the stretch and the incidents already found (so an incident
does not raise its own baseline). The unit is the decided disconnect, but a flapping player
contributes several (each rejoin, then maybe a drop), so they are not independent: the
dispersion φ (Pearson χ² over the baseline's half-hour blocks ÷ their number less one, at
least 1) measures how much more the namespace's drop counts vary than binomial counts would,
and the test counts ``decided ÷ φ`` independent units (quasi-binomial). The test is one-sided:
the exact binomial upper tail P(X ≥ dropped ÷ φ) for ``decided ÷ φ`` trials at the baseline
ratio. Over all namespaces and stretches at once, the Benjamini-Hochberg procedure keeps the
false discovery rate at ``fdr`` (1% by default): the expected share of false alarms among
the flagged stretches. On a day without incidents every flag is false, so that is then the
chance of flagging anything at all. (The procedure assumes tests that are independent or
positively dependent, as overlapping stretches are; a stretch is also a small part of the
other stretches' baselines, a weak negative dependence it does not cover.) A stretch is
flagged when it passes and its drop ratio is at least ``min_strength`` (1.5) times the
baseline: a rise too small to act on is no incident, however sure.

**The incident.** Flagged stretches of a namespace that overlap or touch form one incident.
Its start and end are found window by window: the contiguous run of windows, within the
flagged stretches and an hour either side, that maximises the binomial log-likelihood ratio
of "its own drop ratio inside, the baseline outside" (the maximum-likelihood change points).
The baseline is then re-estimated without the incidents found, and the search repeated until
the incidents stop changing.

**Assumptions.** Outside incidents, a namespace's drop ratio is steady over the searched
range (one whose ratio follows the time of day gets a larger φ, and its test becomes
conservative); half hours are independent given the baseline (a flapping player's
disconnects are seconds to minutes apart); φ is used as estimated, without allowing for its
own uncertainty (with few half hours of data, as in a quiet game, it is rough, but never
below 1). Stretches with a few decided disconnects can only pass with a very high ratio: the
exact tail does not lean on a normal approximation.

**Strength** is the incident's drop ratio divided by its baseline (4.0: four times as many
of its disconnects dropped as usual); ``z`` is the excess in standard errors,
(dropped - decided * baseline) / sqrt(φ * decided * baseline * (1 - baseline)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import betainc
from scipy.stats import false_discovery_control

from flows.analysis.tables import TimeLike, filter_dates

__all__ = [
    "INCIDENT_COLUMNS",
    "binomial_sf",
    "describe_incidents",
    "find_incidents",
    "incident_series",
]

INCIDENT_COLUMNS = [
    "namespace",
    "start",
    "end",
    "windows",
    "disconnects",
    "decided",
    "dropped",
    "drop_ratio",
    "baseline",
    "strength",
    "excess_drops",
    "z",
    "q_value",
    "dispersion",
]
"""Columns of :func:`find_incidents`, one row per incident."""

_EPOCH = pd.Timestamp(0, tz="UTC")
_TINY = 1e-300


# --- the binomial upper tail ---------------------------------------------------------------


def binomial_sf(successes: Any, trials: Any, p: Any) -> np.ndarray[Any, Any]:
    """P(X ≥ successes) for X ~ Binomial(trials, p), element-wise.

    Counts may be fractional (effective counts ``count ÷ φ``): the tail is the regularized
    incomplete beta function I_p(successes, trials - successes + 1) (``scipy.special.
    betainc``), which equals the sum of binomial probabilities for whole counts and
    interpolates between them. 1 where ``successes`` is 0 or less, 0 where it exceeds
    ``trials``. Always an array (1-d for scalars).
    """
    k, n, prob = np.broadcast_arrays(
        np.atleast_1d(np.asarray(successes, dtype=float)),
        np.atleast_1d(np.asarray(trials, dtype=float)),
        np.atleast_1d(np.asarray(p, dtype=float)),
    )
    out = np.ones(k.shape, dtype=float)
    out[k > n] = 0.0
    inner = (k > 0) & (k <= n) & (prob > 0) & (prob < 1)
    out[(k > 0) & (k <= n) & (prob <= 0)] = 0.0
    if inner.any():
        a, b = k[inner], n[inner] - k[inner] + 1.0
        out[inner] = betainc(a, b, prob[inner])
    return out


def _benjamini_hochberg(p: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Benjamini-Hochberg adjusted p-values (q-values), in the order given."""
    if len(p) == 0:
        return p.copy()
    return np.asarray(false_discovery_control(p, method="bh"))


# --- per-namespace series ----------------------------------------------------------------


@dataclass
class _Series:
    """One namespace's final windows from ``first`` on, gaps as zero."""

    namespace: str
    decided: np.ndarray[Any, Any]
    dropped: np.ndarray[Any, Any]
    disconnects: np.ndarray[Any, Any]
    block: np.ndarray[Any, Any]
    """Half-hour block (UTC-aligned) of each window, counted from the first."""


def _window_series(
    outcomes: pd.DataFrame, start: TimeLike | None, end: TimeLike | None
) -> tuple[list[_Series], pd.Timestamp | None, pd.Timedelta, int]:
    """Final rows as per-namespace arrays over one shared range of windows."""
    df = filter_dates(outcomes, start, end)
    df = df[df["is_final"].astype(bool)]
    if df.empty:
        return [], None, pd.Timedelta(minutes=5), 0
    step = pd.Timedelta((df["window_end"] - df["window_start"]).iloc[0])
    index = ((df["window_start"] - _EPOCH) // step).to_numpy(dtype=np.int64)
    k0 = int(index.min())
    count = int(index.max()) - k0 + 1
    per_block = max(1, int(pd.Timedelta(minutes=30) // step))
    block = (np.arange(k0, k0 + count) // per_block) - k0 // per_block
    names = df["namespace"].astype(str).to_numpy()
    decided = (df["rejoined"] + df["dropped"]).to_numpy(dtype=float)
    dropped = df["dropped"].to_numpy(dtype=float)
    disconnects = df["disconnects"].to_numpy(dtype=float)
    out = []
    for ns in sorted(set(names)):
        rows = names == ns
        pos = index[rows] - k0
        arrays = []
        for values in (decided, dropped, disconnects):
            full = np.zeros(count)
            np.add.at(full, pos, values[rows])
            arrays.append(full)
        out.append(_Series(ns, arrays[0], arrays[1], arrays[2], block))
    first = _EPOCH + k0 * step
    return out, first, step, per_block


class _Reference:
    """A namespace's baseline data: the kept windows summed per half-hour block, with
    running sums, so that the baseline around any stretch is a few subtractions."""

    def __init__(self, s: _Series, keep: np.ndarray[Any, Any]) -> None:
        blocks = int(s.block[-1]) + 1
        n_b = np.bincount(s.block, weights=np.where(keep, s.decided, 0.0), minlength=blocks)
        x_b = np.bincount(s.block, weights=np.where(keep, s.dropped, 0.0), minlength=blocks)
        busy = n_b > 0
        square = np.where(busy, x_b**2 / np.where(busy, n_b, 1.0), 0.0)
        self.block = s.block
        self.sums = [np.concatenate([[0.0], np.cumsum(v)]) for v in (n_b, x_b, square, busy)]

    def around(
        self, lo: np.ndarray[Any, Any], hi: np.ndarray[Any, Any], guard: int
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Baseline ratio and dispersion over the kept windows outside the half-hour
        blocks that ``[lo - guard, hi + guard)`` touches, for each (lo, hi)."""
        last = len(self.block)
        first_block = self.block[np.maximum(0, lo - guard)]
        end_block = self.block[np.minimum(last, hi + guard) - 1] + 1
        n, x, square, busy = (c[-1] - (c[end_block] - c[first_block]) for c in self.sums)
        p0 = (x + 0.5) / (n + 1.0)  # never 0 or 1, even for a namespace without drops
        # Pearson χ² over the blocks: sum of (x - n p0)² / (n p0 (1 - p0)), expanded.
        chi2 = (square - 2 * p0 * x + p0 * p0 * n) / (p0 * (1 - p0))
        with np.errstate(divide="ignore", invalid="ignore"):
            phi = np.where(busy >= 2, np.maximum(1.0, chi2 / (busy - 1)), 1.0)
        return p0, phi


def _reference(
    s: _Series, keep: np.ndarray[Any, Any], lo: int, hi: int, guard: int
) -> tuple[float, float]:
    """Baseline ratio and dispersion of ``s`` over the windows in ``keep`` outside
    ``[lo - guard, hi + guard)``, in whole half-hour blocks."""
    p0, phi = _Reference(s, keep).around(np.array([lo]), np.array([hi]), guard)
    return float(p0[0]), float(phi[0])


# --- the search --------------------------------------------------------------------------


@dataclass
class _Found:
    series: _Series
    lo: int
    hi: int
    q_value: float


def _stretch_tests(
    series: list[_Series],
    incidents: list[_Found],
    per_block: int,
    min_strength: float,
) -> tuple[list[tuple[int, int, int, float, bool]], int]:
    """Every one-hour stretch on the half-hour grid of every namespace, tested.

    Returns (namespace index, first window, end window, p-value, strong enough) per tested
    stretch (those with a decided disconnect) and the number tested.
    """
    tests: list[tuple[int, int, int, float, bool]] = []
    guard = 2 * per_block
    for i, s in enumerate(series):
        keep = _keep_mask(s, incidents)
        cum_n = np.concatenate([[0.0], np.cumsum(s.decided)])
        cum_x = np.concatenate([[0.0], np.cumsum(s.dropped)])
        # Stretches are two half-hour blocks, starting at each block (the first and the
        # last block of the range may be partial).
        lo_a = np.flatnonzero(np.diff(np.concatenate([[-1], s.block])) != 0)
        hi_a = np.searchsorted(s.block, s.block[lo_a] + 2)
        n_a = cum_n[hi_a] - cum_n[lo_a]
        x_a = cum_x[hi_a] - cum_x[lo_a]
        tested = n_a > 0
        if not tested.any():
            continue
        lo_a, hi_a, n_a, x_a = lo_a[tested], hi_a[tested], n_a[tested], x_a[tested]
        p0_a, phi_a = _Reference(s, keep).around(lo_a, hi_a, guard)
        p_values = binomial_sf(x_a / phi_a, n_a / phi_a, p0_a)
        strong = x_a / n_a >= min_strength * p0_a
        tests += [
            (i, int(a), int(b), float(p), bool(ok))
            for a, b, p, ok in zip(lo_a, hi_a, p_values, strong, strict=True)
        ]
    return tests, len(tests)


def _keep_mask(s: _Series, incidents: list[_Found]) -> np.ndarray[Any, Any]:
    keep = np.ones(len(s.decided), dtype=bool)
    for inc in incidents:
        if inc.series is s:
            keep[inc.lo : inc.hi] = False
    return keep


def _best_segment(n: np.ndarray[Any, Any], x: np.ndarray[Any, Any], p0: float) -> tuple[int, int]:
    """The run [a, b) of windows maximising the log-likelihood ratio of "ratio x/n inside,
    p0 outside" (shortest first on ties, windows without decided disconnects trimmed)."""
    cum_n = np.concatenate([[0.0], np.cumsum(n)])
    cum_x = np.concatenate([[0.0], np.cumsum(x)])
    size = len(n)
    a = np.arange(size + 1)[:, None]
    b = np.arange(size + 1)[None, :]
    big_n = cum_n[b] - cum_n[a]
    big_x = cum_x[b] - cum_x[a]
    with np.errstate(divide="ignore", invalid="ignore"):
        p_hat = np.where(big_n > 0, big_x / big_n, 0.0)
        up = np.where(big_x > 0, big_x * np.log(np.maximum(p_hat, _TINY) / p0), 0.0)
        rest = big_n - big_x
        down = np.where(rest > 0, rest * np.log(np.maximum(1 - p_hat, _TINY) / (1 - p0)), 0.0)
    llr = np.where((b > a) & (p_hat > p0), up + down, -np.inf)
    llr = llr - 1e-9 * (b - a)  # ties: the shorter run
    best = np.unravel_index(int(np.argmax(llr)), llr.shape)
    lo, hi = int(best[0]), int(best[1])
    while lo < hi and n[lo] == 0:
        lo += 1
    while hi > lo and n[hi - 1] == 0:
        hi -= 1
    return lo, hi


def _regions(flagged: list[tuple[int, int, float]]) -> list[tuple[int, int, float]]:
    """Flagged stretches (lo, hi, q) that overlap or touch, merged; q the smallest."""
    out: list[tuple[int, int, float]] = []
    for lo, hi, q in sorted(flagged):
        if out and lo <= out[-1][1]:
            last = out[-1]
            out[-1] = (last[0], max(last[1], hi), min(last[2], q))
        else:
            out.append((lo, hi, q))
    return out


def _search_round(
    series: list[_Series],
    incidents: list[_Found],
    per_block: int,
    fdr: float,
    min_strength: float,
) -> tuple[list[_Found], int]:
    tests, m = _stretch_tests(series, incidents, per_block, min_strength)
    if not tests:
        return [], 0
    q = _benjamini_hochberg(np.array([t[3] for t in tests]))
    flagged: dict[int, list[tuple[int, int, float]]] = {}
    for (i, lo, hi, _p, strong), q_value in zip(tests, q, strict=True):
        if q_value <= fdr and strong:
            flagged.setdefault(i, []).append((lo, hi, float(q_value)))
    found: list[_Found] = []
    margin = 2 * per_block  # an hour either side of the flagged stretches
    for i, stretches in sorted(flagged.items()):
        s = series[i]
        keep = _keep_mask(s, [inc for inc in incidents if inc.series is s])
        regions = _regions(stretches)
        for j, (lo, hi, q_value) in enumerate(regions):
            left = max(0, lo - margin)
            right = min(len(s.decided), hi + margin)
            if j > 0:  # not past the middle of the gap to the neighbouring region
                left = max(left, (regions[j - 1][1] + lo) // 2)
            if j + 1 < len(regions):
                right = min(right, (hi + regions[j + 1][0] + 1) // 2)
            others = keep.copy()
            others[lo:hi] = True  # this region's own windows are not "another incident"
            p0, _phi = _reference(s, others, lo, hi, margin)
            a, b = _best_segment(s.decided[left:right], s.dropped[left:right], p0)
            if b > a:
                found.append(_Found(s, left + a, left + b, q_value))
    return found, m


def find_incidents(
    outcomes: pd.DataFrame,
    start: TimeLike | None = None,
    end: TimeLike | None = None,
    *,
    fdr: float = 0.01,
    min_strength: float = 1.5,
    max_rounds: int = 5,
) -> pd.DataFrame:
    """Incidents in the final ``disconnect_outcomes`` rows with windows in ``[start, end)``.

    One row per incident (columns :data:`INCIDENT_COLUMNS`), strongest first: ``namespace``;
    ``start`` and ``end`` (the incident's first window start and last window end);
    ``windows``; the incident's ``disconnects``, ``decided`` (rejoined + dropped) and
    ``dropped``; ``drop_ratio`` = dropped ÷ decided; ``baseline``, the namespace's own
    ratio outside the incident (an hour either side and other incidents left out);
    ``strength`` = drop_ratio ÷ baseline; ``excess_drops`` = dropped - decided * baseline;
    ``z``, the excess in quasi-binomial standard errors; ``q_value``, the smallest
    Benjamini-Hochberg adjusted p-value of its flagged stretches; ``dispersion`` φ.

    ``fdr`` is the false discovery rate over all tested stretches, ``min_strength`` the
    smallest ratio over the baseline that counts. See the module's documentation for the
    method. The frame's ``attrs`` say what was searched: ``searched_from``, ``searched_to``
    (the final windows' range), ``tests``, ``fdr`` and ``min_strength``.
    """
    series, first, step, per_block = _window_series(outcomes, start, end)
    incidents: list[_Found] = []
    tests = 0
    for _ in range(max(1, max_rounds)):
        found, tests = _search_round(series, incidents, per_block, fdr, min_strength)
        same = {(f.series.namespace, f.lo, f.hi) for f in found} == {
            (f.series.namespace, f.lo, f.hi) for f in incidents
        }
        incidents = found
        if same:
            break
    rows = []
    for inc in incidents:
        rows.append(_describe(inc, incidents, first, step, per_block, min_strength))
    table = pd.DataFrame([r for r in rows if r is not None], columns=INCIDENT_COLUMNS)
    if not table.empty:
        table = table.sort_values(["strength", "namespace"], ascending=[False, True])
        table = table.reset_index(drop=True)
    count = len(series[0].decided) if series else 0
    table.attrs.update(
        {
            "searched_from": first,
            "searched_to": None if first is None else first + count * step,
            "tests": tests,
            "fdr": fdr,
            "min_strength": min_strength,
        }
    )
    return table


def _describe(
    inc: _Found,
    incidents: list[_Found],
    first: pd.Timestamp | None,
    step: pd.Timedelta,
    per_block: int,
    min_strength: float,
) -> dict[str, Any] | None:
    assert first is not None
    s = inc.series
    keep = _keep_mask(s, [o for o in incidents if o is not inc])
    p0, phi = _reference(s, keep, inc.lo, inc.hi, 2 * per_block)
    n = float(s.decided[inc.lo : inc.hi].sum())
    x = float(s.dropped[inc.lo : inc.hi].sum())
    ratio = x / n
    if ratio < min_strength * p0:
        return None
    return {
        "namespace": s.namespace,
        "start": first + inc.lo * step,
        "end": first + inc.hi * step,
        "windows": inc.hi - inc.lo,
        "disconnects": int(s.disconnects[inc.lo : inc.hi].sum()),
        "decided": int(n),
        "dropped": int(x),
        "drop_ratio": ratio,
        "baseline": p0,
        "strength": ratio / p0,
        "excess_drops": x - n * p0,
        "z": (x - n * p0) / math.sqrt(phi * n * p0 * (1 - p0)),
        "q_value": inc.q_value,
        "dispersion": phi,
    }


# --- for people ----------------------------------------------------------------------------


def _hhmm(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y-%m-%d %H:%M")


def describe_incidents(incidents: pd.DataFrame) -> list[str]:
    """One line per incident, for people; one line saying so when there is none."""
    if incidents.empty:
        searched_from = incidents.attrs.get("searched_from")
        searched_to = incidents.attrs.get("searched_to")
        if searched_from is None:
            return ["No incident: there are no final disconnect_outcomes rows to search."]
        return [
            "No incident: no namespace's drop ratio was significantly above its own baseline "
            f"in the final windows from {_hhmm(searched_from)} to {_hhmm(searched_to)} UTC."
        ]
    lines = []
    for row in incidents.itertuples(index=False):
        minutes = int((row.end - row.start) / pd.Timedelta(minutes=1))
        lines.append(
            f"{row.namespace}: {_hhmm(row.start)} to {row.end:%H:%M} UTC ({minutes} min): "
            f"drop ratio {row.drop_ratio:.2f} against its usual {row.baseline:.2f} "
            f"({row.strength:.1f} times); {row.dropped:,} of {row.decided:,} decided disconnects "
            f"dropped, about {row.excess_drops:,.0f} more than usual (z = {row.z:.1f})."
        )
    return lines


def incident_series(
    outcomes: pd.DataFrame,
    incident: Any,
    margin: str | pd.Timedelta = "3h",
    *,
    level: float = 0.99,
) -> pd.DataFrame:
    """One incident's namespace window by window around it, for a plot.

    ``incident`` is a row of :func:`find_incidents`. Final ``disconnect_outcomes`` windows
    from ``margin`` before its start to ``margin`` after its end, gaps as zero: ``bucket``,
    ``decided``, ``dropped``, ``drop_ratio`` (NaN without decided disconnects),
    ``baseline``, and ``low``/``high``: where a window's ratio falls with probability
    ``level`` at the baseline (normal approximation with the incident's dispersion), and
    ``in_incident``.
    """
    ns = str(incident["namespace"])
    start, end = pd.Timestamp(incident["start"]), pd.Timestamp(incident["end"])
    pad = pd.Timedelta(margin)
    df = outcomes[(outcomes["namespace"].astype(str) == ns) & outcomes["is_final"].astype(bool)]
    df = filter_dates(df, start - pad, end + pad)
    columns = ["bucket", "decided", "dropped", "drop_ratio", "baseline", "low", "high"]
    columns.append("in_incident")
    if df.empty:
        return pd.DataFrame(columns=columns)
    step = pd.Timedelta((df["window_end"] - df["window_start"]).iloc[0])
    grouped = df.groupby("window_start")[["rejoined", "dropped"]].sum()
    full = pd.date_range(grouped.index.min(), grouped.index.max(), freq=step, name="bucket")
    grouped = grouped.reindex(full, fill_value=0)
    out = pd.DataFrame(
        {
            "decided": (grouped["rejoined"] + grouped["dropped"]).astype("int64"),
            "dropped": grouped["dropped"].astype("int64"),
        }
    )
    p0, phi = float(incident["baseline"]), float(incident["dispersion"])
    with np.errstate(divide="ignore", invalid="ignore"):
        out["drop_ratio"] = (out["dropped"] / out["decided"]).where(out["decided"] > 0)
        z = _normal_quantile(0.5 + level / 2)
        half = z * np.sqrt(phi * p0 * (1 - p0) / out["decided"].where(out["decided"] > 0))
    out["baseline"] = p0
    out["low"] = (p0 - half).clip(lower=0)
    out["high"] = (p0 + half).clip(upper=1)
    out["in_incident"] = (out.index >= start) & (out.index < end)
    return out.reset_index()[columns]


def _normal_quantile(q: float) -> float:
    """The standard normal quantile."""
    return NormalDist().inv_cdf(q)
