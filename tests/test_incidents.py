"""Incidents: the test's arithmetic, hand-made series, and the simulator's own incidents.

The simulator knows the incidents it makes (``Truth.incidents``). Its messages go through
the independent reference (``tests/reference.py``) to ``disconnect_outcomes`` rows, and the
search must find every incident within one window of its start and end, and nothing on a
day without incidents. One test does the same through the real job and the report.
"""

from __future__ import annotations

import base64
import html
import math
import re
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flows import analysis
from flows.analysis import plots
from flows.analysis.dictionary import render_data_dictionary
from flows.analysis.incidents import _benjamini_hochberg, binomial_sf, incident_series
from flows.analysis.report import render_report
from flows.tooling.simulator import SimConfig, generate, produce
from tests.helpers import partitioned, reference_frames, run_cli, run_job
from tests.test_analysis import PNG_MAGIC, T0, outcomes_frame

WINDOW = pd.Timedelta(minutes=5)


# --- the arithmetic ----------------------------------------------------------------------


def _exact_tail(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


@pytest.mark.parametrize(
    ("k", "n", "p"),
    [(1, 1, 0.2), (3, 3, 0.1), (5, 10, 0.5), (9, 26, 0.1), (40, 100, 0.2), (0, 5, 0.3)],
)
def test_binomial_tail_equals_the_exact_sum(k: int, n: int, p: float) -> None:
    assert binomial_sf(k, n, p)[0] == pytest.approx(_exact_tail(k, n, p), rel=1e-9, abs=1e-300)


def test_binomial_tail_far_out_edges_and_fractions() -> None:
    far = binomial_sf(300, 1000, 0.1)[0]
    assert 0 < far < 1e-60
    assert far == pytest.approx(_exact_tail(300, 1000, 0.1), rel=1e-6)
    assert list(binomial_sf([0, 11, 2], [10, 10, 10], [0.3, 0.3, 0.0])) == [1.0, 0.0, 0.0]
    # Effective counts (count ÷ φ) fall between the whole counts around them.
    low, mid, high = binomial_sf([4, 4.5, 5], [20, 20, 20], 0.1)
    assert high < mid < low


def test_benjamini_hochberg_adjusts_in_place() -> None:
    q = _benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.005]))
    assert list(q) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert list(_benjamini_hochberg(np.array([0.5, 0.9]))) == pytest.approx([0.9, 0.9])


# --- hand-made series --------------------------------------------------------------------


def _day(
    namespace: str,
    decided: int,
    ratio: float,
    *,
    elevated: tuple[int, int, float] | None = None,
    hours: int = 12,
    final_until: int | None = None,
) -> list[tuple]:
    """Windows of one namespace over ``hours``: ``decided`` decided disconnects each at
    ``ratio`` (rounded per window), ``elevated`` = (first minute, end minute, ratio)."""
    rows = []
    for minute in range(0, hours * 60, 5):
        r = ratio
        if elevated and elevated[0] <= minute < elevated[1]:
            r = elevated[2]
        dropped = round(decided * r)
        final = final_until is None or minute < final_until
        rows.append((namespace, minute, decided, decided - dropped, dropped, final))
    return rows


def test_an_elevated_stretch_is_found_with_its_numbers() -> None:
    outcomes = outcomes_frame(
        _day("big", 40, 0.1, elevated=(300, 370, 0.5)) + _day("other", 40, 0.25)
    )
    found = analysis.find_incidents(outcomes)
    assert list(found.columns) == analysis.INCIDENT_COLUMNS
    assert len(found) == 1
    inc = found.iloc[0]
    assert inc["namespace"] == "big"
    assert (inc["start"], inc["end"]) == (
        T0 + pd.Timedelta(minutes=300),
        T0 + pd.Timedelta(minutes=370),
    )
    assert (inc["windows"], inc["decided"], inc["dropped"], inc["disconnects"]) == (
        14,
        560,
        280,
        560,
    )
    assert inc["drop_ratio"] == pytest.approx(0.5)
    # Baseline: the other windows, leaving out an hour either side in whole half hours
    # (04:00 to 07:30); +0.5 and +1 keep it off 0.
    outside = 144 - 42
    assert inc["baseline"] == pytest.approx((outside * 4 + 0.5) / (outside * 40 + 1))
    assert inc["strength"] == pytest.approx(0.5 / inc["baseline"])
    assert inc["excess_drops"] == pytest.approx(280 - 560 * inc["baseline"])
    assert inc["dispersion"] == 1.0  # the baseline varies less than binomial counts would
    z = (280 - 560 * inc["baseline"]) / math.sqrt(560 * inc["baseline"] * (1 - inc["baseline"]))
    assert inc["z"] == pytest.approx(z)
    assert 0 < inc["q_value"] < 1e-10
    assert found.attrs["searched_from"] == T0
    assert found.attrs["searched_to"] == T0 + pd.Timedelta(hours=12)
    assert found.attrs["tests"] == 2 * 24
    (line,) = analysis.describe_incidents(found)
    assert line.startswith("big: 2026-11-27 05:00 to 06:10 UTC (70 min): drop ratio 0.50")
    assert "280 of 560 decided disconnects dropped" in line


def test_nothing_is_found_in_steady_noisy_or_provisional_data() -> None:
    rng = np.random.default_rng(3)
    rows = []
    for ns, decided, ratio in (("steady", 40, 0.2), ("small", 3, 0.2), ("zero", 20, 0.0)):
        for minute in range(0, 24 * 60, 5):
            dropped = int(rng.binomial(decided, ratio))
            rows.append((ns, minute, decided, decided - dropped, dropped, True))
    # A jump in rows that are not final yet is not searched.
    rows += _day("late", 40, 0.1, elevated=(600, 700, 0.6), final_until=540)
    found = analysis.find_incidents(outcomes_frame(rows))
    assert found.empty
    assert list(found.columns) == analysis.INCIDENT_COLUMNS
    assert found.attrs["searched_to"] == T0 + pd.Timedelta(hours=24)
    (line,) = analysis.describe_incidents(found)
    assert line.startswith("No incident: no namespace's drop ratio was significantly above")
    assert "from 2026-11-27 00:00 to 2026-11-28 00:00 UTC" in line

    none = analysis.find_incidents(outcomes_frame([]))
    assert none.empty and none.attrs["searched_from"] is None
    assert analysis.describe_incidents(none) == [
        "No incident: there are no final disconnect_outcomes rows to search."
    ]


def test_a_weak_or_short_lived_rise_is_not_an_incident() -> None:
    # Significant (thousands of disconnects), but only 1.3 times the baseline.
    weak = analysis.find_incidents(
        outcomes_frame(_day("huge", 400, 0.2, elevated=(300, 420, 0.26)))
    )
    assert weak.empty
    assert not analysis.find_incidents(
        outcomes_frame(_day("huge", 400, 0.2, elevated=(300, 420, 0.26))), min_strength=1.2
    ).empty


def test_overdispersion_widens_what_counts_as_usual() -> None:
    """Half hours alternate between 0.1 and 0.3 dropped: the counts vary far more than
    independent disconnects would (as flapping players make them), so a stretch at 0.32
    is within what this namespace does. Read as binomial, it would be an incident."""
    rows = []
    for minute in range(0, 24 * 60, 5):
        ratio = 0.1 if (minute // 30) % 2 else 0.3
        if 600 <= minute < 660:
            ratio = 0.34
        dropped = round(20 * ratio)
        rows.append(("wavy", minute, 20, 20 - dropped, dropped, True))
    outcomes = outcomes_frame(rows)
    assert analysis.find_incidents(outcomes).empty
    # Taken as binomial (dispersion 1) the stretch would be far out; with this namespace's
    # dispersion (each half hour's 120 decided disconnects 12 away from the 24 expected),
    # it is not.
    n, x, p0 = 12 * 20, 12 * 7, 0.2
    assert binomial_sf(x, n, p0)[0] < 1e-6
    phi = (36 - 24) ** 2 / (120 * p0 * (1 - p0))
    assert phi == pytest.approx(7.5) and binomial_sf(x / phi, n / phi, p0)[0] > 1e-3


def test_two_incidents_of_one_namespace_are_told_apart() -> None:
    rows = [
        r for r in _day("big", 40, 0.1, hours=24) if not (300 <= r[1] < 360 or 900 <= r[1] < 960)
    ]
    rows += [("big", m, 40, 20, 20, True) for m in range(300, 360, 5)]
    rows += [("big", m, 40, 16, 24, True) for m in range(900, 960, 5)]
    found = analysis.find_incidents(outcomes_frame(rows)).sort_values("start")
    assert [(r.start, r.end) for r in found.itertuples()] == [
        (T0 + pd.Timedelta(minutes=300), T0 + pd.Timedelta(minutes=360)),
        (T0 + pd.Timedelta(minutes=900), T0 + pd.Timedelta(minutes=960)),
    ]
    # Each one's baseline leaves the other out: it is the namespace's usual 0.1.
    assert list(found["baseline"]) == pytest.approx([0.1, 0.1], abs=0.002)


def test_incident_series_and_plot() -> None:
    outcomes = outcomes_frame(_day("big", 40, 0.1, elevated=(300, 370, 0.5)))
    found = analysis.find_incidents(outcomes)
    series = incident_series(outcomes, found.iloc[0], margin="1h")
    assert len(series) == 14 + 2 * 12
    assert series["in_incident"].sum() == 14
    assert series.loc[series["in_incident"], "drop_ratio"].tolist() == pytest.approx([0.5] * 14)
    assert (series["low"] < series["baseline"]).all() and (
        series["baseline"] < series["high"]
    ).all()

    fig = plots.plot_incidents(outcomes, found)
    ax_ratio, ax_volume = fig.axes
    assert "big: 2026-11-27 05:00 to 06:10 UTC (70 min)" in ax_ratio.get_title(loc="left")
    line = next(ln for ln in ax_ratio.get_lines() if ln.get_label() == plots.INCIDENT_RATIO)
    assert np.nanmax(np.asarray(line.get_ydata(), dtype=float)) == pytest.approx(0.5)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert plots.INCIDENT_BASELINE in labels and plots.INCIDENT_SPAN in labels
    assert len(ax_volume.patches) >= 2 * len(series)

    empty = plots.plot_incidents(outcomes, found.head(0))
    assert "No incident" in empty.axes[0].texts[0].get_text()


def _two_incidents() -> pd.DataFrame:
    return outcomes_frame(
        _day("a", 40, 0.1, elevated=(300, 370, 0.5)) + _day("b", 40, 0.1, elevated=(400, 470, 0.6))
    )


def test_the_figure_says_how_many_incidents_it_leaves_out() -> None:
    outcomes = _two_incidents()
    found = analysis.find_incidents(outcomes)
    assert list(found["namespace"]) == ["b", "a"]  # strongest first
    capped = plots.plot_incidents(outcomes, found, top=1)
    assert len(capped.axes) == 2
    assert "1 more incident not plotted (see the table)" in capped.get_suptitle()
    for top in (6, None):
        every = plots.plot_incidents(outcomes, found, top=top)
        assert len(every.axes) == 4
        assert "not plotted" not in every.get_suptitle()
    assert plots.not_plotted(3) == "3 more incidents not plotted (see the table)"


def test_the_report_plots_every_incident_or_says_how_many_it_did_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.analysis import report
    from tests.test_analysis import demo_rates, write_output

    write_output(tmp_path / "out", demo_rates(), _two_incidents())
    found = render_report(tmp_path / "out", tmp_path / "all.html")
    assert len(found) == 2 <= report.INCIDENT_PLOTS
    page = (tmp_path / "all.html").read_text(encoding="utf-8")
    assert 'alt="incidents against their baseline"' in page and "not plotted" not in page
    monkeypatch.setattr(report, "INCIDENT_PLOTS", 1)
    render_report(tmp_path / "out", tmp_path / "capped.html")
    page = (tmp_path / "capped.html").read_text(encoding="utf-8")
    note = page.index("<p><b>1 more incident not plotted (see the table).</b></p>")
    assert page.index('alt="incidents against their baseline"') < note < page.index("<table")


def test_the_data_dictionary_describes_the_incidents_table() -> None:
    text = render_data_dictionary()
    section = text[text.index("## Incidents (`flows.analysis.find_incidents`)") :]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    found = analysis.find_incidents(_two_incidents())
    assert [row.split("`")[1] for row in rows] == [*found.columns, *found.attrs]
    assert list(found.columns) == analysis.INCIDENT_COLUMNS
    assert "Benjamini-Hochberg" in section and "1%" in section and "φ" in section
    # A player's disconnect-to-outcome episode is not called an incident anywhere else.
    before = text[: text.index("## Incidents")]
    assert "opens an incident" not in before and "open incident" not in before


# --- the simulator's incidents, through the independent reference -------------------------

BUSY_DAY = SimConfig(messages=100_000, namespaces=10, other_share=0.0)
"""A day in ten games, counted events only (skipped ones change nothing here): the games
with an incident have a few dozen decided disconnects per window at the time."""


def _window_of(instant: pd.Timestamp) -> pd.Timestamp:
    return instant.floor(WINDOW)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_every_simulated_incident_is_found_within_a_window(seed: int) -> None:
    messages, truth = generate(replace(BUSY_DAY, seed=seed))
    _rates, outcomes = reference_frames(partitioned(messages))
    found = analysis.find_incidents(outcomes)
    assert len(truth.incidents) == 2
    # One incident found in each simulated incident's namespace, and none anywhere else.
    assert sorted(found["namespace"]) == sorted(inc.namespace for inc in truth.incidents)
    for inc in truth.incidents:
        assert inc.drop_probability >= 2.5 * inc.usual_drop_probability
        rows = found[found["namespace"] == inc.namespace]
        assert len(rows) == 1, (inc, found)
        row = rows.iloc[0]
        # The window holding the first (last) minute of the incident, give or take one.
        first = _window_of(pd.Timestamp(inc.start))
        last = _window_of(pd.Timestamp(inc.end) - pd.Timedelta(microseconds=1))
        assert abs(row["start"] - first) <= WINDOW, (inc, row)
        assert abs(row["end"] - WINDOW - last) <= WINDOW, (inc, row)
        assert row["strength"] > 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nothing_is_flagged_on_a_simulated_day_without_incidents(seed: int) -> None:
    messages, truth = generate(SimConfig(messages=100_000, other_share=0.0, incidents=0, seed=seed))
    assert truth.incidents == ()
    _rates, outcomes = reference_frames(partitioned(messages))
    assert outcomes["namespace"].nunique() > 50
    found = analysis.find_incidents(outcomes)
    assert found.empty, found
    assert found.attrs["tests"] > 60 * 40  # every namespace's day was searched


# --- through the job and the report --------------------------------------------------------


INCIDENT_DAY = SimConfig(messages=60_000, namespaces=6, other_share=0.0, incidents=1, seed=0)


@pytest.fixture(scope="module")
def incident_topic(broker, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A day with one incident on the broker, the simulator's truth, and one run's output."""
    topic = broker.new_topic()
    messages, truth = generate(INCIDENT_DAY)
    produce(broker.bootstrap, topic, messages)
    out = tmp_path_factory.mktemp("incident") / "out"
    run_job(broker.bootstrap, topic, out, out.parent / "state")
    return topic, messages, truth, out


def _job_incidents(out: Path) -> pd.DataFrame:
    return analysis.find_incidents(analysis.load_disconnect_outcomes(out))


def assert_found_whole(found: pd.DataFrame, truth: Any) -> None:
    """One incident per simulated one, in its namespace, starting and ending within a
    window of where the simulator made it start and end."""
    assert sorted(found["namespace"]) == sorted(inc.namespace for inc in truth.incidents)
    for inc in truth.incidents:
        (row,) = found[found["namespace"] == inc.namespace].itertuples()
        first = _window_of(pd.Timestamp(inc.start))
        last = _window_of(pd.Timestamp(inc.end) - pd.Timedelta(microseconds=1))
        assert abs(row.start - first) <= WINDOW, (inc, row)
        assert abs(row.end - WINDOW - last) <= WINDOW, (inc, row)


@pytest.mark.broker
@pytest.mark.slow
def test_incidents_through_the_job_are_the_same_however_it_ran(
    broker, incident_topic: tuple, tmp_path: Path
) -> None:
    """The job's outcome rows give the incidents the simulator made, start and end, and
    the very same incidents whether the job ran once, in three runs, killed and resumed,
    or with two workers."""
    from flows.tooling.simulator import chunks

    topic, messages, truth, once = incident_topic
    found = _job_incidents(once)
    assert_found_whole(found, truth)
    outputs = {}
    split = broker.new_topic()
    for part in chunks(messages, 3):
        produce(broker.bootstrap, split, part)
        run_job(broker.bootstrap, split, tmp_path / "split", tmp_path / "split-state")
    outputs["split"] = tmp_path / "split"
    crash, crash_state = tmp_path / "crash", tmp_path / "crash-state"
    args = ["--brokers", broker.bootstrap, "--topic", topic, "--output", str(crash)]
    args += ["--state", str(crash_state), "--progress", "off", "--batch-size", "20"]
    killed = run_cli(
        "run", *args, "--snapshot-interval", "100ms",
        env={"PARTY_RATES_FAILPOINT": "after-snapshot@12"},
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_job(broker.bootstrap, topic, crash, crash_state)
    outputs["crash"] = crash
    run_job(broker.bootstrap, topic, tmp_path / "w2", tmp_path / "w2-state", "--workers", "2")
    outputs["two workers"] = tmp_path / "w2"
    for how, out in outputs.items():
        pd.testing.assert_frame_equal(_job_incidents(out), found, obj=how)


@pytest.mark.broker
def test_the_report_opens_with_the_incidents_in_the_job_output(incident_topic: tuple) -> None:
    _topic, _messages, truth, out = incident_topic
    (inc,) = truth.incidents

    result = run_cli("report", "--output", str(out))
    assert result.returncode == 0, result.stderr
    found = analysis.find_incidents(analysis.load_disconnect_outcomes(out))
    assert list(found["namespace"]) == [inc.namespace]
    assert abs(found.iloc[0]["start"] - _window_of(pd.Timestamp(inc.start))) <= WINDOW
    (line,) = analysis.describe_incidents(found)
    assert f"party-rates: {line}" in result.stderr
    page = (out / "report.html").read_text(encoding="utf-8")
    # The page opens with the incidents: the first section, its line, then its plot.
    assert page.index("<h2>Incidents</h2>") < page.index("<h2>Overview</h2>")
    assert page.index(f"<li>{html.escape(line)}</li>") < page.index("<h2>Overview</h2>")
    image = re.search(
        r'<img alt="incidents against their baseline" src="data:image/png;base64,([^"]+)"', page
    )
    assert image is not None and base64.b64decode(image.group(1)).startswith(PNG_MAGIC)
    assert "Benjamini-Hochberg" in page


def test_the_report_says_when_there_is_no_incident(tmp_path: Path) -> None:
    from tests.test_analysis import demo_rates, write_output

    rows = _day("a", 10, 0.2, hours=3)
    write_output(tmp_path / "out", demo_rates(), outcomes_frame(rows))
    incidents = render_report(tmp_path / "out", tmp_path / "r.html")
    assert incidents.empty
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "No incident: no namespace" in page
    assert 'alt="incidents against their baseline"' not in page
    write_output(tmp_path / "old", demo_rates())
    render_report(tmp_path / "old", tmp_path / "old.html")
    old = (tmp_path / "old.html").read_text(encoding="utf-8")
    assert "Incidents are found in <code>disconnect_outcomes/</code>, which" in old


@pytest.mark.slow
def test_the_demo_prints_the_incidents_beside_the_worst_namespaces(tmp_path: Path) -> None:
    result = run_cli("demo", "--dir", str(tmp_path / "demo"), "--messages", "150000")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    worst = text.index("Worst namespaces by drop ratio")
    found = text.index("Incidents found")
    made = text.index("The simulated day's incidents, as the simulator made them:")
    assert worst < found < made
    out = tmp_path / "demo" / "output"
    listed = text[text.index("Parquet written under") : worst]
    assert analysis.rollup_lengths(out) == ["1h", "1d"]  # the default roll-ups
    for length in ("1h", "1d"):
        for name, load in (
            ("party_rates", analysis.load_party_rates),
            ("disconnect_outcomes", analysis.load_disconnect_outcomes),
        ):
            rows = len(load(out, rollup=length))
            assert rows > 0
            assert re.search(rf"^  {name}_{length}/ +{rows:,} rows \(", listed, re.M), listed
    outcomes = analysis.load_disconnect_outcomes(out)
    lines = analysis.describe_incidents(analysis.find_incidents(outcomes))
    assert text[found:made].splitlines()[1:] == [f"  {line}" for line in lines]
    truth = generate(SimConfig(messages=150_000))[1]
    printed = text[made:].splitlines()[1 : 1 + len(truth.incidents)]
    for line, inc in zip(printed, truth.incidents, strict=True):
        assert line.startswith(f"  {inc.namespace}: {inc.start:%Y-%m-%d %H:%M} to {inc.end:%H:%M}")
