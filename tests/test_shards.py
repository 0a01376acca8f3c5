"""Partial aggregates (fold, merge), one shard (ticks, closing, reports) and a namespace's
rows step (the shards' reports added up)."""

from __future__ import annotations

import pickle
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.core.eventtime import US_PER_S, parse_rfc3339_us, to_datetime
from flows.core.items import Report, RollupPart, ShardPart, Tick, split_key
from flows.core.outcomes import OutcomeAgg, OutcomeMatcher
from flows.core.partials import Counted, fold, merge_window, merged, new_window, summary, to_parts
from flows.core.rollups import ShardRollups
from flows.core.rows import NamespaceRows, rates_row
from flows.core.shards import Shard
from schemas.events import DISCONNECTED, DROPPED, REJECTED, REJOINED
from schemas.output import RATES_SCHEMA

MIN = 60 * US_PER_S
W = 5 * MIN
H = 60 * MIN
T0 = parse_rfc3339_us("2024-05-01T12:00:00Z")  # a window boundary


def counted(t_us: int, kind: int = DISCONNECTED, eid: str = "e", ns: str = "ns-a",
            user: str | None = "u", session: str | None = "s") -> Counted:  # fmt: skip
    return (t_us, kind, eid, ns, user, session)


def slots(folded: dict) -> dict[tuple[int, str], tuple[dict, list]]:
    """(shard, namespace) -> (windows, outcome events) of a fold."""
    return {
        (shard, ns): slot
        for ns, (by_shard, _latest) in folded.items()
        for shard, slot in enumerate(by_shard)
        if slot is not None
    }


def whole(events: list[Counted], shards: int = 1) -> dict[int, list[int]]:
    """The summed summaries per window, over every shard: what the rows step computes."""
    out: dict[int, list[int]] = {}
    for windows, _events in slots(fold(events, W, shards)).values():
        for start, window in windows.items():
            have = out.setdefault(start, [0] * 6)
            for i, n in enumerate(summary(window)):
                have[i] += n
    return out


# --- rows from summed counts ----------------------------------------------------------------


def test_rates_row_counts_rates_and_ratios() -> None:
    events = [
        counted(T0, DISCONNECTED, "1", user="u1", session="p1"),
        counted(T0, DISCONNECTED, "2", user="u1", session="p1"),  # same user and party again
        counted(T0, DISCONNECTED, "3", user="u2", session="p2"),
        counted(T0, DISCONNECTED, "4", user=None, session=None),
        counted(T0, REJOINED, "5", user="u3", session="p3"),
        counted(T0, DROPPED, "6", user="u4", session="p4"),
        counted(T0, REJECTED, "7", user="u5", session="p5"),  # not a connection problem
        counted(T0, REJECTED, "8", user="u6", session="p6"),
    ]
    sums = whole(events, shards=4)[T0]
    row = rates_row("ns-a", T0, W, sums, True)
    assert row == {
        "namespace": "ns-a",
        "date": date(2024, 5, 1),
        "window_start": to_datetime(T0),
        "window_end": to_datetime(T0 + W),
        "disconnected": 4,
        "rejoined": 1,
        "dropped": 1,
        "rejected": 2,
        "users_disconnected": 2,  # u1, u2: only disconnects, only non-empty ids
        "parties_affected": 4,  # p1, p2, p3, p4: not p5/p6 from the rejections
        "disconnects_per_min": 4 / 5,
        "drops_per_min": 1 / 5,
        "drop_ratio": 1 / 4,
        "rejoin_ratio": 1 / 4,
        "is_final": True,
    }
    assert set(row) == set(RATES_SCHEMA.names)


def test_ratios_are_null_without_disconnects() -> None:
    sums = whole([counted(T0, REJOINED), counted(T0, DROPPED, "x")])[T0]
    row = rates_row("ns-a", T0, MIN, sums, False)
    assert (row["drop_ratio"], row["rejoin_ratio"]) == (None, None)
    assert (row["disconnects_per_min"], row["drops_per_min"]) == (0.0, 1.0)
    assert row["is_final"] is False
    assert (row["users_disconnected"], row["parties_affected"]) == (0, 1)


def test_per_minute_rates_scale_with_the_window() -> None:
    sums = [30, 0, 0, 0, 30, 0]
    assert rates_row("ns", T0, 60 * MIN, sums, True)["disconnects_per_min"] == 0.5
    assert rates_row("ns", T0, 30 * US_PER_S, sums, True)["disconnects_per_min"] == 60.0


def test_users_only_from_disconnects_parties_not_from_rejections() -> None:
    events = [
        counted(T0, REJOINED, "1", user="u1", session=None),
        counted(T0, DROPPED, "2", user="u2", session=""),
        counted(T0, REJECTED, "3", user="u3", session="p0"),
    ]
    assert whole(events)[T0][4:] == [0, 0]
    events.append(counted(T0, DISCONNECTED, "4", user="u4", session="p1"))
    assert whole(events)[T0][4:] == [1, 1]


def test_events_go_to_epoch_aligned_windows() -> None:
    events = [counted(T0), counted(T0 + W - 1, eid="2"), counted(T0 + W), counted(T0 - 1)]
    sums = whole(events)
    assert sorted(sums) == [T0 - W, T0, T0 + W]
    assert sums[T0][DISCONNECTED] == 2


# --- fold and merge -----------------------------------------------------------------------------

EVENTS = st.lists(
    st.tuples(
        st.integers(0, 3 * W),
        st.sampled_from([DISCONNECTED, REJOINED, DROPPED, REJECTED]),
        st.sampled_from(["ns-a", "ns-b"]),
        st.none() | st.sampled_from(["", "u1", "u2", "u3", "u4", "u5"]),
        st.none() | st.sampled_from(["", "p1", "p2", "p3", "p4"]),
    ),
    max_size=60,
)


def _events(drawn: list[tuple[int, int, str, str | None, str | None]]) -> list[Counted]:
    return [(T0 + t, k, f"e{i}", ns, u, s) for i, (t, k, ns, u, s) in enumerate(drawn)]


def _merge_folds(*folds: dict) -> dict:
    out: dict = {}
    for folded in folds:
        for key, (windows, events) in slots(folded).items():
            have = out.setdefault(key, ({}, []))
            have[1].extend(events)
            for start, window in windows.items():
                merge_window(have[0].setdefault(start, new_window()), window)
    return out


def _canonical(merged_slots: dict) -> dict:
    return {k: (w, sorted(e)) for k, (w, e) in merged_slots.items()}


@given(events=EVENTS, data=st.data(), shards=st.sampled_from([1, 2, 4, 7]))
def test_merging_any_split_equals_folding_the_whole(events, data, shards: int) -> None:
    batch = _events(events)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(batch)), max_size=3)))
    pieces = [batch[a:b] for a, b in zip([0, *cuts], [*cuts, len(batch)], strict=True)]
    folds = [fold(piece, W, shards) for piece in pieces]
    want = _canonical(slots(fold(batch, W, shards)))
    assert _canonical(_merge_folds(*folds)) == want
    assert _canonical(_merge_folds(*reversed(folds))) == want  # in any order


@given(events=EVENTS, shards=st.sampled_from([1, 2, 3, 8]))
def test_distinct_counts_add_up_over_shards(events, shards: int) -> None:
    """The shards partition the hash space: the sum of their distinct counts is the distinct
    count of the whole, and the counts are those of the events."""
    batch = _events(events)
    sums = {
        (ns, start): counts
        for ns in ("ns-a", "ns-b")
        for start, counts in whole([e for e in batch if e[3] == ns], shards).items()
    }
    for (ns, start), counts in sums.items():
        inside = [e for e in batch if e[3] == ns and e[0] - e[0] % W == start]
        assert counts[:4] == [sum(1 for e in inside if e[1] == k) for k in range(4)]
        users = {e[4] for e in inside if e[1] == DISCONNECTED and e[4]}
        parties = {e[5] for e in inside if e[1] != REJECTED and e[5]}
        assert counts[4:] == [len(users), len(parties)]


@given(a=EVENTS, b=EVENTS, c=EVENTS)
@settings(max_examples=50)
def test_merge_is_associative_and_commutative(a, b, c) -> None:
    parts = [slots(fold(_events(x), W, 1)).get((0, "ns-a"), ({}, []))[0].get(T0, new_window())
             for x in (a, b, c)]  # fmt: skip
    x, y, z = parts
    assert merged(merged(x, y), z) == merged(x, merged(y, z))
    assert merged(x, y) == merged(y, x)


def test_a_party_and_its_players_share_one_shard() -> None:
    """Outcome matching is per player within its party: all of a party's events are in one
    shard, whatever the user."""
    events = [counted(T0 + i, k, f"e{i}", user=f"u{i % 3}", session="party-9")
              for i, k in enumerate([DISCONNECTED, REJOINED, DROPPED, DISCONNECTED])]  # fmt: skip
    folded = slots(fold(events, W, 16))
    with_events = [key for key, (_w, evs) in folded.items() if evs]
    assert len(with_events) == 1
    assert len(folded[with_events[0]][1]) == 4


def test_parts_are_keyed_by_shard_and_carry_their_batch_position() -> None:
    parts, latest = to_parts(fold([counted(T0), counted(T0 + 9, eid="2")], W, 4), 3, 77)
    for key, part in parts:
        assert (part.namespace, part.shard) == split_key(key)
        assert (part.partition, part.next_offset) == (3, 77)
    assert set(latest) == {key for key, _ in parts}
    assert max(latest.values()) == T0 + 9


def test_parts_pickle_small() -> None:
    """What crosses processes grows with windows and distinct ids, not with events."""
    many = [counted(T0 + i, REJECTED, f"e{i}", user="u", session="p") for i in range(5000)]
    parts, _ = to_parts(fold(many, W, 4), 0, 1)
    assert len(pickle.dumps(parts)) < 1000


# --- Shard ----------------------------------------------------------------------------------


def part(events: list[Counted], partition: int = 0, next_offset: int = 1) -> ShardPart:
    """Every event's part, as one shard's (the tests use one shard)."""
    ((_key, p),), _latest = to_parts(fold(events, W, 1), partition, next_offset)
    return p


def test_tick_waits_for_required_offsets() -> None:
    shard = Shard(W, H)
    shard.on_part(part([counted(T0)], partition=0, next_offset=5))
    assert shard.on_tick(Tick(T0 + W, {0: 5, 1: 9}, (0,))) == []  # partition 1 not seen yet
    (report,) = shard.on_part(part([counted(T0 + 1, eid="2")], partition=1, next_offset=9))
    assert report.closed_until == T0 + W
    assert report.rates == {T0: (2, 0, 0, 0, 1, 1)}


def test_tick_is_applied_at_once_when_data_already_seen() -> None:
    shard = Shard(W, H)
    shard.on_part(part([counted(T0)], next_offset=5))
    (report,) = shard.on_tick(Tick(T0 + W, {0: 4}, (0,)))
    assert (report.namespace, report.shard, report.expected) == ("ns-a", 0, (0,))
    assert shard.windows == {}


def test_closes_windows_ending_at_or_before_closed_until_only() -> None:
    shard = Shard(W, H)
    shard.on_part(part([counted(T0), counted(T0 + W, eid="2"), counted(T0 + 2 * W, eid="3")]))
    (report,) = shard.on_tick(Tick(T0 + 2 * W, {0: 1}, (0,)))
    assert sorted(report.rates) == [T0, T0 + W]
    assert sorted(shard.windows) == [T0 + 2 * W]


def test_an_older_tick_closes_nothing_but_is_answered() -> None:
    shard = Shard(W, H)
    shard.on_part(part([counted(T0)]))
    shard.on_tick(Tick(T0 + 2 * W, {0: 1}, (0,)))
    (report,) = shard.on_tick(Tick(T0 + W, {0: 1}, (0, 1)))
    assert (report.closed_until, report.rates, report.outcomes) == (T0 + W, {}, {})
    assert report.expected == (0, 1)
    assert shard.closed_until == T0 + 2 * W


def test_outcomes_are_reported_an_outcome_horizon_after_their_window() -> None:
    shard = Shard(W, H)
    shard.on_part(part([counted(T0, DISCONNECTED), counted(T0 + 10 * US_PER_S, REJOINED, "r")]))
    (report,) = shard.on_tick(Tick(T0 + W, {0: 1}, (0,)))
    assert report.rates and report.outcomes == {}
    (report,) = shard.on_tick(Tick(T0 + W + H, {0: 1}, (0,)))
    (agg,) = report.outcomes.values()
    assert (agg[0], agg[1], agg[6]) == (1, 1, [10.0])  # disconnects, rejoined, rejoin times


def test_provisional_applies_ready_ticks_then_reports_what_is_open() -> None:
    shard = Shard(W, H)
    shard.on_part(part([counted(T0), counted(T0 + W, eid="2")]))
    shard.pending.append(Tick(T0 + W, {0: 1}, (0,)))
    final, provisional = shard.provisional()
    assert not final.provisional and sorted(final.rates) == [T0]
    assert provisional.provisional and sorted(provisional.rates) == [T0 + W]
    assert sorted(provisional.outcomes) == [T0]  # matched, not decided yet


def test_snapshot_restore_round_trip_and_independence() -> None:
    shard = Shard(W, H)
    shard.on_part(part([counted(T0), counted(T0 + 1, REJOINED, "r")], next_offset=3))
    shard.on_tick(Tick(T0 + 3 * W, {0: 9}, (0,)))  # waits for offset 9
    snap = shard.snapshot()
    shard.on_part(part([counted(T0 + 2, eid="later")], next_offset=4))
    restored = Shard.restore(W, snap, H)
    assert restored.seen == {0: 3}
    assert restored.windows[T0][:4] == [1, 1, 0, 0]
    assert [t.closed_until for t in restored.pending] == [T0 + 3 * W]
    assert restored.snapshot() == snap


@pytest.mark.parametrize("window_us", [MIN, W, 60 * MIN])
def test_window_end_is_start_plus_window(window_us: int) -> None:
    row = rates_row("ns", T0, window_us, [1, 0, 0, 0, 1, 1], True)
    assert row["window_end"] == to_datetime(T0 + window_us)


# --- NamespaceRows ----------------------------------------------------------------------------


def report(shard: int, expected: tuple[int, ...], rates: dict, outcomes: dict | None = None,
           closed: int = T0 + W, provisional: bool = False) -> Report:  # fmt: skip
    return Report("ns-a", closed, shard, expected, rates, outcomes or {}, provisional)


def test_rows_wait_for_every_shard_the_tick_went_to_and_add_them_up() -> None:
    rows = NamespaceRows(W)
    assert rows.on_report(report(0, (0, 2), {T0: (3, 1, 1, 0, 2, 3)})) == []
    ((kind, (row,)),) = rows.on_report(report(2, (0, 2), {T0: (1, 0, 1, 2, 1, 1)}))
    assert kind == "party_rates" and row["is_final"]
    assert [row[c] for c in ("disconnected", "rejoined", "dropped", "rejected")] == [4, 1, 2, 2]
    assert (row["users_disconnected"], row["parties_affected"]) == (3, 4)
    assert rows.rounds == {}


def test_a_shard_with_nothing_in_a_window_does_not_hold_its_row_back() -> None:
    rows = NamespaceRows(W)
    rows.on_report(report(0, (0, 1), {T0: (1, 0, 0, 0, 1, 1)}))
    out = rows.on_report(report(1, (0, 1), {}))  # shard 1 had nothing to close
    assert [kind for kind, _ in out] == ["party_rates"]


def test_outcome_rows_merge_the_shards_parts_percentiles_included() -> None:
    a, b = OutcomeAgg(), OutcomeAgg()
    a.disconnects, a.rejoined, a.rejoin_s = 2, 2, [10.0, 30.0]
    b.disconnects, b.dropped, b.rejoined, b.rejoin_s = 2, 1, 1, [20.0]
    rows = NamespaceRows(W)
    rows.on_report(report(0, (0, 1), {}, {T0: a.fields()}, closed=T0 + W + H))
    ((kind, (row,)),) = rows.on_report(report(1, (0, 1), {}, {T0: b.fields()}, closed=T0 + W + H))
    assert kind == "disconnect_outcomes"
    assert (row["disconnects"], row["rejoined"], row["dropped"]) == (4, 3, 1)
    assert row["rejoin_seconds_p50"] == 20.0
    assert row["cohort_drop_ratio"] == 0.25


def test_provisional_rows_at_the_end_of_a_run_are_not_kept() -> None:
    rows = NamespaceRows(W)
    rows.on_report(report(0, (), {T0: (1, 0, 0, 0, 1, 1)}, provisional=True))
    rows.on_report(report(1, (), {T0: (2, 0, 0, 0, 2, 2)}, provisional=True))
    ((kind, (row,)),) = rows.provisional()
    assert kind == "party_rates" and not row["is_final"] and row["disconnected"] == 3
    assert rows.provisional() == []
    assert NamespaceRows.restore(W, rows.snapshot()).rounds == {}


def test_rows_snapshot_keeps_waiting_rounds() -> None:
    rows = NamespaceRows(W)
    rows.on_report(report(0, (0, 1), {T0: (1, 0, 0, 0, 1, 1)}))
    restored = NamespaceRows.restore(W, rows.snapshot())
    out = restored.on_report(report(1, (0, 1), {T0: (1, 0, 0, 0, 1, 1)}))
    assert out[0][1][0]["disconnected"] == 2


# --- matching split over shards ---------------------------------------------------------------

PLAYER_EVENTS = st.lists(
    st.tuples(
        st.integers(0, 90),  # minutes after T0
        st.sampled_from([DISCONNECTED, DISCONNECTED, REJOINED, DROPPED]),
        st.sampled_from(["p1", "p2", "p3", "p4", "p5"]),
        st.sampled_from(["u1", "u2"]),
    ),
    max_size=50,
)


@settings(max_examples=100, deadline=None)
@given(PLAYER_EVENTS, st.sampled_from([2, 3, 8]))
def test_matching_split_over_shards_merges_to_the_unsplit_rows(events, shards: int) -> None:
    batch = [counted(T0 + m * MIN, k, f"e{i}", user=u, session=s)
             for i, (m, k, s, u) in enumerate(events)]  # fmt: skip
    end = T0 + 200 * MIN
    one = OutcomeMatcher(W, H)
    one.extend([e for (_w, evs) in slots(fold(batch, W, 1)).values() for e in evs])
    one.advance(end)
    want = one.final_rows("ns-a", end)
    merged_aggs: dict[int, OutcomeAgg] = {}
    for _w, evs in slots(fold(batch, W, shards)).values():
        m = OutcomeMatcher(W, H)
        m.extend(evs)
        m.advance(end)
        for start, agg in m.final_aggs(end).items():
            have = merged_aggs.get(start)
            merged_aggs[start] = agg if have is None else have.merge(agg)
    got = [agg.to_row("ns-a", s, W, True) for s, agg in sorted(merged_aggs.items())]
    assert got == want


# --- roll-ups ---------------------------------------------------------------------------------

HOUR = 60 * MIN


class WithRollups:
    """A shard and its roll-ups, wired as in the dataflow: what a tick closes goes on."""

    def __init__(self) -> None:
        self.shard = Shard(W, H, (HOUR,))
        self.rollups = ShardRollups((HOUR,), H)

    def _route(self, outputs: list) -> list[Report]:
        reports = [o for o in outputs if isinstance(o, Report)]
        for o in outputs:
            if isinstance(o, RollupPart):
                reports += self.rollups.on_part(o)
        return reports

    def part(self, p: ShardPart) -> list[Report]:
        return self._route(self.shard.on_part(p))

    def tick(self, tick: Tick) -> list[Report]:
        return self._route(self.shard.on_tick(tick))

    def end(self) -> list[Report]:
        return self._route(self.shard.provisional()) + self.rollups.provisional()


def rollup_of(reports: list[Report]) -> Report:
    (report,) = [r for r in reports if r.from_rollups]
    return report


def test_a_rollup_counts_distinct_players_of_the_whole_window_not_a_sum() -> None:
    """The same player disconnecting in two 5-minute windows of one hour is one player of
    the hour (summing the windows' distinct counts would say two)."""
    s = WithRollups()
    s.part(part([counted(T0, eid="1", user="u1", session="p1"),
                 counted(T0 + W, eid="2", user="u1", session="p1"),
                 counted(T0 + 2 * W, eid="3", user="u2", session="p2")]))  # fmt: skip
    reports = s.tick(Tick(T0 + HOUR, {0: 1}, (0,)))
    (base,) = [r for r in reports if not r.from_rollups]
    assert [base.rates[t][4] for t in sorted(base.rates)] == [1, 1, 1]
    assert base.rollups_follow
    assert rollup_of(reports).rollup_rates == {(HOUR, T0): (3, 0, 0, 0, 2, 2)}


def test_a_rollup_is_final_when_its_last_window_is() -> None:
    s = WithRollups()
    s.part(part([counted(T0), counted(T0 + W, eid="2")]))
    reports = s.tick(Tick(T0 + HOUR - W, {0: 1}, (0,)))
    # its last window is still open: the roll-ups neither report nor are awaited
    assert [r for r in reports if r.from_rollups] == []
    assert not any(r.rollups_follow for r in reports)
    # no window of this shard closes at the hour, yet its roll-up hears of the tick
    reports = s.tick(Tick(T0 + HOUR, {0: 1}, (0,)))
    assert rollup_of(reports).rollup_rates == {(HOUR, T0): (2, 0, 0, 0, 1, 1)}
    # its outcomes are final an outcome horizon later (two disconnects, one unresolved
    # within the horizon, one superseded)
    later = rollup_of(s.tick(Tick(T0 + HOUR + H, {0: 1}, (0,))))
    assert later.rollup_rates == {}
    assert later.rollup_outcomes[(HOUR, T0)][:6] == (2, 0, 0, 1, 1, 0)


def test_rollup_outcomes_keep_every_rejoin_time() -> None:
    s = WithRollups()
    events = [counted(T0 + i * W, DISCONNECTED, f"d{i}", user=f"u{i}", session=f"p{i}")
              for i in range(3)]  # fmt: skip
    events += [counted(T0 + i * W + (i + 1) * 10 * US_PER_S, REJOINED, f"r{i}", user=f"u{i}",
                       session=f"p{i}") for i in range(3)]  # fmt: skip
    s.part(part(events))
    fields = rollup_of(s.tick(Tick(T0 + HOUR + H, {0: 1}, (0,)))).rollup_outcomes[(HOUR, T0)]
    assert fields[:2] == (3, 3) and sorted(fields[6]) == [10.0, 20.0, 30.0]
    agg = OutcomeAgg.of(fields)
    assert agg.to_row("ns", T0, HOUR, True)["rejoin_seconds_p50"] == 20.0


def test_provisional_rollups_take_the_open_windows_in() -> None:
    s = WithRollups()
    s.part(part([counted(T0, user="u1"), counted(T0 + W, eid="2", user="u2")]))
    s.tick(Tick(T0 + W, {0: 1}, (0,)))  # the first window closes into the roll-up
    provisional = [r for r in s.end() if r.from_rollups]
    assert [r.rollup_rates for r in provisional] == [{(HOUR, T0): (2, 0, 0, 0, 2, 1)}]
    assert all(r.provisional for r in provisional)


def test_rollup_state_survives_a_snapshot() -> None:
    s = WithRollups()
    s.part(part([counted(T0, user="u1")]))
    s.tick(Tick(T0 + W, {0: 1}, (0,)))
    s.shard = Shard.restore(W, s.shard.snapshot(), H, (HOUR,))
    s.rollups = ShardRollups.restore((HOUR,), H, s.rollups.snapshot())
    s.part(part([counted(T0 + W, eid="2", user="u1")], next_offset=2))
    reports = s.tick(Tick(T0 + HOUR, {0: 2}, (0,)))
    assert rollup_of(reports).rollup_rates == {(HOUR, T0): (2, 0, 0, 0, 1, 1)}


def test_rows_wait_for_the_rollups_a_shard_announced() -> None:
    rows = NamespaceRows(W, (HOUR,))
    base = Report("ns-a", T0 + HOUR, 0, (0,), {T0: (1, 0, 0, 0, 1, 1)}, {}, rollups_follow=True)
    assert rows.on_report(base) == []
    rollup = Report("ns-a", T0 + HOUR, 0, (), {}, {}, rollup_rates={(HOUR, T0): (1, 0, 0, 0, 1, 1)},
                    from_rollups=True)  # fmt: skip
    assert sorted(name for name, _ in rows.on_report(rollup)) == ["party_rates", "party_rates_1h"]


def test_rows_step_names_the_rollup_datasets() -> None:
    rows = NamespaceRows(W, (HOUR, 24 * HOUR))
    out = rows.on_report(
        Report("ns-a", T0 + HOUR, 0, (0,), {}, {}, False, {(HOUR, T0): (4, 1, 1, 0, 3, 3)}, {})
    )  # a report carrying roll-ups (as the roll-ups' own do) with nothing else awaited
    ((name, (row,)),) = out
    assert name == "party_rates_1h"
    assert (row["window_end"] - row["window_start"]).total_seconds() == 3600
    assert row["disconnects_per_min"] == 4 / 60


def test_closed_windows_go_to_the_rollups_together_and_the_shard_holds_few() -> None:
    """The shard holds closed windows for its roll-ups until one becomes final (one item
    then, not one a tick), and sends them on unannounced once it holds many: the day's
    roll-up is the same, and the shard's state stays bounded."""
    day = 24 * HOUR
    shard, rollups = Shard(W, H, (day,)), ShardRollups((day,), H)
    sent: list[RollupPart] = []
    answers: list[Report] = []
    windows = 8 * 12  # eight hours of 5-minute windows in one day, a player each
    for i in range(windows):
        t = T0 + i * W
        shard.on_part(part([counted(t, eid=f"e{i}", user=f"u{i % 7}")], next_offset=i + 1))
        out = shard.on_tick(Tick(t + W, {0: i + 1}, (0,)))
        assert len(shard.held_windows) + len(shard.held_aggs) < 24
        for o in out:
            if isinstance(o, RollupPart):
                sent.append(o)
                answers += rollups.on_part(o)
    assert 0 < len(sent) < windows // 5
    assert not any(p.answer for p in sent) and answers == []  # the day is not final yet
    (end,) = [r for r in shard.provisional() if isinstance(r, RollupPart)]
    rollups.on_part(end)
    (report,) = rollups.provisional()
    day_start = T0 - T0 % day
    assert report.rollup_rates[(day, day_start)] == (windows, 0, 0, 0, 7, 1)


def test_rollup_hashes_pickle_as_buffers() -> None:
    import random

    rng = random.Random(1)
    hashes = {rng.getrandbits(64) for _ in range(300)}  # as big as real hashes
    rollups = ShardRollups((HOUR,), H)
    rollups.on_part(RollupPart("ns", 0, T0, {T0: [3, 0, 0, 0, hashes, {1, 2}]}, {}, answer=False))
    snap = rollups.snapshot()
    # the hashes as 8 bytes each: pickled one object each they would take 10 and more
    assert len(snap) < 300 * 8 + 400
    again = ShardRollups.restore((HOUR,), H, snap)
    (report,) = again.provisional()
    assert report.rollup_rates == {(HOUR, T0): (3, 0, 0, 0, len(hashes), 2)}
