"""Matching disconnects to their outcomes: the rules, and independence of arrival order."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.core.outcomes import OutcomeMatcher, percentile
from schemas.events import DISCONNECTED, DROPPED, REJECTED, REJOINED

S = 1_000_000
MIN = 60 * S
W = 5 * MIN
H = 60 * MIN
T0 = 1_714_564_800 * S  # a window boundary


def matcher() -> OutcomeMatcher:
    return OutcomeMatcher(W, H)


def rows_after(m: OutcomeMatcher, closed: int) -> dict:
    m.advance(closed)
    return {r["window_start"]: r for r in m.final_rows("ns", closed)}


def only_row(m: OutcomeMatcher, closed: int = T0 + W + H) -> dict:
    (row,) = rows_after(m, closed).values()
    return row


def test_rejoin_resolves_and_measures_time() -> None:
    m = matcher()
    m.add(T0, DISCONNECTED, "d", "party", "user")
    m.add(T0 + 12 * S, REJOINED, "r", "party", "user")
    row = only_row(m)
    assert (row["disconnects"], row["rejoined"], row["dropped"]) == (1, 1, 0)
    assert row["rejoin_seconds_p50"] == 12.0
    assert row["cohort_drop_ratio"] == 0.0


def test_drop_resolves() -> None:
    m = matcher()
    m.add(T0, DISCONNECTED, "d", "party", "user")
    m.add(T0 + 2 * MIN, DROPPED, "x", "party", "user")
    row = only_row(m)
    assert (row["dropped"], row["cohort_drop_ratio"], row["rejoin_seconds_p50"]) == (1, 1.0, None)


def test_outcome_read_before_its_disconnect_still_matches() -> None:
    m = matcher()
    m.add(T0 + 30 * S, REJOINED, "r", "party", "user")  # arrived first, from another partition
    m.add(T0, DISCONNECTED, "d", "party", "user")
    row = only_row(m)
    assert (row["rejoined"], row["orphan_outcomes"]) == (1, 0)


def test_other_players_and_sessions_do_not_match() -> None:
    m = matcher()
    m.add(T0, DISCONNECTED, "d", "party", "user")
    m.add(T0 + S, REJOINED, "r1", "party", "someone-else")
    m.add(T0 + S, DROPPED, "r2", "other-party", "user")
    row = only_row(m)
    assert (row["rejoined"], row["dropped"], row["unresolved"], row["orphan_outcomes"]) == (
        0,
        0,
        1,
        2,
    )


def test_no_outcome_within_the_horizon_is_unresolved_and_a_later_outcome_an_orphan() -> None:
    m = matcher()
    m.add(T0, DISCONNECTED, "d", "party", "user")
    m.add(T0 + H + S, DROPPED, "x", "party", "user")
    rows = rows_after(m, T0 + 2 * H + W)
    assert rows[m_start(T0)]["unresolved"] == 1
    assert rows[m_start(T0 + H + S)]["orphan_outcomes"] == 1


def test_an_outcome_exactly_at_the_horizon_resolves() -> None:
    m = matcher()
    m.add(T0, DISCONNECTED, "d", "party", "user")
    m.add(T0 + H, DROPPED, "x", "party", "user")
    assert rows_after(m, T0 + 2 * H + W)[m_start(T0)]["dropped"] == 1


def test_second_disconnect_supersedes_the_first() -> None:
    m = matcher()
    m.add(T0, DISCONNECTED, "d1", "party", "user")
    m.add(T0 + 10 * S, DISCONNECTED, "d2", "party", "user")
    m.add(T0 + 20 * S, REJOINED, "r", "party", "user")
    row = only_row(m)
    assert (row["disconnects"], row["superseded"], row["rejoined"]) == (2, 1, 1)
    assert row["rejoin_seconds_p50"] == 10.0


def test_rejected_events_are_not_outcomes() -> None:
    m = matcher()
    m.add(T0, DISCONNECTED, "d", "party", "user")
    m.add(T0 + S, REJECTED, "j", "party", "user")
    assert only_row(m)["unresolved"] == 1


def test_rows_are_final_only_an_outcome_horizon_after_the_window() -> None:
    m = matcher()
    m.add(T0, DISCONNECTED, "d", "party", "user")
    assert rows_after(m, T0 + W + H - MIN) == {}
    (provisional,) = m.provisional_rows("ns")
    assert provisional["is_final"] is False
    assert only_row(m)["is_final"] is True


def m_start(t: int) -> object:
    from flows.core.eventtime import to_datetime

    return to_datetime(t - t % W)


@given(
    st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=30), st.sampled_from([50, 95])
)
def test_percentile_is_numpy_linear(values: list[float], q: int) -> None:
    assert abs(percentile(sorted(values), q) - float(np.percentile(values, q))) <= 1e-6 * max(
        1, max(values)
    )


EVENTS = st.lists(
    st.tuples(
        st.integers(0, 180),  # minutes after T0
        st.sampled_from([DISCONNECTED, DISCONNECTED, REJOINED, DROPPED]),
        st.sampled_from(["p1", "p2"]),
        st.sampled_from(["u1", "u2"]),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(EVENTS, st.randoms(use_true_random=False), st.lists(st.integers(0, 400), max_size=4))
def test_arrival_order_and_watermark_steps_do_not_matter(events, rnd, cut_minutes) -> None:
    shuffled = list(events)
    rnd.shuffle(shuffled)
    cuts = sorted(T0 + c * MIN - (T0 + c * MIN) % W for c in cut_minutes)
    # Same ids for the same events, whatever the order they arrive in.
    ids = {id(e): i for i, e in enumerate(events)}
    m1, m2 = matcher(), matcher()
    for e in events:
        m1.add(T0 + e[0] * MIN, e[1], f"e{ids[id(e)]}", e[2], e[3])
    for e in shuffled:
        m2.add(T0 + e[0] * MIN, e[1], f"e{ids[id(e)]}", e[2], e[3])
    end = T0 + 400 * MIN
    m1.advance(end)
    one = m1.final_rows("ns", end)
    many = []
    for closed in [*cuts, end]:
        m2.advance(closed)
        many += m2.final_rows("ns", closed)
    assert sorted(one, key=lambda r: r["window_start"]) == sorted(
        many, key=lambda r: r["window_start"]
    )
    total = sum(r["disconnects"] for r in one)
    decided = sum(r["rejoined"] + r["dropped"] + r["unresolved"] + r["superseded"] for r in one)
    assert total == decided == sum(1 for e in events if e[1] == DISCONNECTED)
