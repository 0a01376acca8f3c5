"""The simulated topic: seeded, the former flat traffic kept, and the realistic day's shape.

The day is read back through the independent reference (``tests/reference.py``), as the
job would count it: its rhythm, its games, its flapping players and its incidents.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from flows.tooling.simulator import SimConfig, SimMessage, generate
from tests import reference
from tests.helpers import partitioned, reference_frames

DAY = SimConfig(messages=100_000, namespaces=10, other_share=0.0, seed=0)
HOUR_US = 3600 * 10**6


def _digest(messages: list[SimMessage]) -> str:
    h = hashlib.sha256()
    for m in messages:
        h.update(m.key)
        h.update(m.value)
        h.update(str(m.publish_us).encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def day() -> tuple:
    """The day, its truth, the events the reference counts and its final outcome rows."""
    messages, truth = generate(DAY)
    topic = partitioned(messages)
    events = reference.run(topic, 5 * 60 * 10**6, 10 * 60 * 10**6).events
    _rates, outcomes = reference_frames(topic)
    return messages, truth, events, outcomes


def test_the_same_config_gives_the_same_messages_and_truth() -> None:
    cfg = SimConfig(messages=5_000, namespaces=6, hours=6)
    first, second = generate(cfg), generate(cfg)
    assert first == second
    assert generate(replace(cfg, seed=8))[0] != first[0]


@pytest.mark.parametrize(
    ("cfg", "digest", "count"),
    [
        (
            SimConfig(messages=3000, namespaces=5, hours=2, seed=3, shape="flat"),
            "40b798839d44155fa24df4a6c0d4ed3562520c7b56033f46b189896e9cb7edfb",
            3037,
        ),
        (
            SimConfig(messages=3000, namespaces=4, hours=30, seed=1, hot_share=0.5, shape="flat"),
            "f235755735d9decbd785f8119a7222195504c5c1068f6392ceb9b7241e9953a1",
            3034,
        ),
    ],
)
def test_the_flat_shape_is_the_former_traffic_message_for_message(
    cfg: SimConfig, digest: str, count: int
) -> None:
    """The digests are of the messages the simulator made before it had a realistic day,
    so benchmark figures measured then stay comparable."""
    messages, truth = generate(cfg)
    assert (len(messages), _digest(messages)) == (count, digest)
    assert truth.incidents == () and truth.games == ()


def test_an_unknown_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        generate(SimConfig(messages=100, shape="weekly"))


def _hour(t_us: int) -> int:
    return (t_us // HOUR_US) % 24


def test_each_game_peaks_in_its_evening(day) -> None:
    _messages, truth, events, _outcomes = day
    per_hour: dict[str, Counter[int]] = defaultdict(Counter)
    for ev in events:
        if ev.name == reference.DISCONNECTED:
            per_hour[ev.namespace][_hour(ev.t_us)] += 1
    for game in truth.games[:4]:  # the big ones: thousands of disconnects
        hours = per_hour[game.namespace]
        busiest = max(range(24), key=lambda h: hours[h])
        off = abs(busiest + 0.5 - game.peak_hour_utc) % 24
        assert min(off, 24 - off) <= 3, (game, hours)
        assert hours[busiest] > 2.5 * min(hours[h] for h in range(24)), (game, hours)
    peaks = {round(g.peak_hour_utc) % 24 for g in truth.games}
    assert len(peaks) >= 4  # games in several time zones


def test_games_differ_and_one_is_quiet(day) -> None:
    _messages, truth, events, outcomes = day
    games = truth.games
    assert [g.namespace for g in games] == [f"game-{i:03d}" for i in range(10)]
    assert sum(g.share for g in games) == pytest.approx(1.0)
    assert len({g.inactive_timeout_s for g in games}) >= 2
    assert np.std([g.drop_probability for g in games]) > 0.02
    quiet = games[-1]
    assert quiet.share < 0.1 * float(np.median([g.share for g in games]))
    counted = Counter(ev.namespace for ev in events)
    assert 0 < counted[quiet.namespace] < 0.1 * counted[games[-2].namespace]

    # A game drops more of its players' disconnects the higher its drop tendency (outside
    # incidents), and a drop comes its inactive timeout after the disconnect.
    incident = {i.namespace for i in truth.incidents}
    calm = outcomes[~outcomes["namespace"].isin(incident)]
    sums = calm.groupby("namespace", observed=True)[["dropped", "rejoined"]].sum()
    ratio = sums["dropped"] / (sums["dropped"] + sums["rejoined"])
    tendency = pd.Series({g.namespace: g.drop_probability for g in games})[ratio.index]
    big = sums.sum(axis=1) > 500
    assert ratio[big].rank().corr(tendency[big].rank()) > 0.8
    last_disconnect: dict[tuple[str, str], int] = {}
    gaps: dict[str, set[int]] = defaultdict(set)
    for ev in sorted(events, key=lambda e: e.t_us):
        if ev.name == reference.DISCONNECTED:
            last_disconnect[(ev.session, ev.user)] = ev.t_us
        elif ev.name == reference.DROPPED and (ev.session, ev.user) in last_disconnect:
            gaps[ev.namespace].add(ev.t_us - last_disconnect[(ev.session, ev.user)])
    for game in games[:4]:  # give or take the second a whole-second timestamp loses
        timeout = game.inactive_timeout_s * 10**6
        assert gaps[game.namespace]
        assert all(abs(gap - timeout) < 10**6 for gap in gaps[game.namespace])


def test_flapping_players_disconnect_several_times(day) -> None:
    _messages, _truth, events, outcomes = day
    per_player = Counter(
        (ev.namespace, ev.session, ev.user) for ev in events if ev.name == reference.DISCONNECTED
    )
    several = sum(1 for n in per_player.values() if n >= 3)
    assert several > 100
    totals = outcomes[["disconnects", "rejoined", "dropped", "superseded"]].sum()
    # A disconnect followed by another before any outcome is superseded.
    assert totals["superseded"] > 0.01 * totals["disconnects"]


def test_incidents_are_in_busy_games_well_inside_the_day(day) -> None:
    _messages, truth, _events, outcomes = day
    assert len(truth.incidents) == DAY.incidents == 2
    assert len({i.namespace for i in truth.incidents}) == 2
    start = pd.Timestamp(DAY.start)
    for inc in truth.incidents:
        assert inc.namespace != truth.games[-1].namespace
        assert start + timedelta(hours=0.2 * 24) <= inc.start
        assert inc.end <= start + timedelta(hours=0.72 * 24)
        assert timedelta(minutes=45) <= inc.end - inc.start <= timedelta(minutes=80)
        assert inc.drop_probability >= max(0.4, 2.5 * inc.usual_drop_probability)
        game = next(g for g in truth.games if g.namespace == inc.namespace)
        assert inc.usual_drop_probability == game.drop_probability
        rows = outcomes[outcomes["namespace"] == inc.namespace]
        inside = rows[
            (rows["window_start"] >= pd.Timestamp(inc.start))
            & (rows["window_end"] <= pd.Timestamp(inc.end))
        ]
        outside = rows.drop(inside.index)
        decided = inside["rejoined"] + inside["dropped"]
        assert decided.mean() >= 20  # tens of decided disconnects per window
        during = inside["dropped"].sum() / decided.sum()
        usual = outside["dropped"].sum() / (outside["rejoined"] + outside["dropped"]).sum()
        assert during > 2.5 * usual


def test_no_incident_when_asked_or_flat() -> None:
    assert generate(SimConfig(messages=5_000, incidents=0))[1].incidents == ()
    assert generate(SimConfig(messages=5_000, shape="flat"))[1].incidents == ()


def test_the_knobs_still_hold() -> None:
    cfg = SimConfig(
        messages=20_000,
        namespaces=5,
        hours=5,
        start=pd.Timestamp("2026-03-01T10:00Z").to_pydatetime(),
        hot_share=0.5,
        duplicate_rate=0.05,
        malformed_rate=0.002,
    )
    messages, truth = generate(cfg)
    assert 0.95 * cfg.messages < len(messages) < 1.15 * cfg.messages
    events = reference.run(partitioned(messages), 5 * 60 * 10**6, 10 * 60 * 10**6).events
    first = int(cfg.start.timestamp()) * 10**6
    times = [ev.t_us for ev in events]
    # Outcomes come at most a few minutes after a disconnect near the end.
    assert first <= min(times) and max(times) < first + 5 * HOUR_US + 10 * 60 * 10**6
    spaces = Counter(ev.namespace for ev in events)
    assert sorted(spaces) == [f"game-{i:03d}" for i in range(5)]
    assert spaces["game-000"] / sum(spaces.values()) == pytest.approx(0.5, abs=0.05)
    assert truth.duplicates > 0.03 * len(events)
    assert truth.malformed == int((len(messages) - truth.malformed) * 0.002)
    assert generate(replace(cfg, namespace_names=("a", "b", "c")))[1].games[2].namespace == "c"
