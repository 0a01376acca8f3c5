"""WindowAgg (add/merge/to_row) and NamespaceWindows (ticks, closing, late events, snapshots)."""

from __future__ import annotations

import pickle
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flows.core.eventtime import US_PER_S, parse_rfc3339_us, to_datetime
from flows.core.items import Chunk, EventRef, Tick
from flows.core.windows import NamespaceWindows, WindowAgg
from schemas.events import COUNTED_NAMES, DISCONNECTED, DROPPED, REJECTED, REJOINED
from schemas.output import RATES_SCHEMA

MIN = 60 * US_PER_S
W = 5 * MIN
T0 = parse_rfc3339_us("2024-05-01T12:00:00Z")  # a window boundary


def ev(t_us: int, kind: int = DISCONNECTED, eid: str = "e", user: str | None = "u",
       session: str | None = "s", offset: int = 0) -> EventRef:  # fmt: skip
    return EventRef(t_us, kind, eid, user, session, offset, f"k{offset}".encode(), b"{}")


def chunk(events: list[EventRef], partition: int = 0, next_offset: int = 1) -> Chunk:
    return Chunk("ns-a", partition, next_offset, events)


def rows(outputs: list[tuple[str, object]]) -> list[dict[str, object]]:
    return [o[1] for o in outputs if o[0] == "row"]  # type: ignore[misc]


# --- WindowAgg -------------------------------------------------------------------------------


def test_to_row_counts_rates_and_ratios() -> None:
    agg = WindowAgg()
    for kind, user, session in [
        (DISCONNECTED, "u1", "p1"),
        (DISCONNECTED, "u1", "p1"),  # same user and party again
        (DISCONNECTED, "u2", "p2"),
        (DISCONNECTED, None, None),
        (REJOINED, "u3", "p3"),
        (DROPPED, "u4", "p4"),
        (REJECTED, "u5", "p5"),  # a rejection is not a connection problem
        (REJECTED, "u6", "p6"),
    ]:
        agg.add(kind, user, session)
    row = agg.to_row("ns-a", T0, W, True)
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
    agg = WindowAgg()
    agg.add(REJOINED, "u", "p")
    agg.add(DROPPED, "u", "p")
    row = agg.to_row("ns-a", T0, MIN, False)
    assert row["drop_ratio"] is None
    assert row["rejoin_ratio"] is None
    assert row["disconnects_per_min"] == 0.0
    assert row["drops_per_min"] == 1.0
    assert row["is_final"] is False
    assert row["users_disconnected"] == 0
    assert row["parties_affected"] == 1


def test_empty_agg_row() -> None:
    row = WindowAgg().to_row("ns", T0, W, True)
    assert row["disconnected"] == row["rejected"] == 0
    assert row["drop_ratio"] is None


def test_per_minute_rates_scale_with_the_window() -> None:
    agg = WindowAgg()
    for i in range(30):
        agg.add(DISCONNECTED, f"u{i}", None)
    assert agg.to_row("ns", T0, 60 * MIN, True)["disconnects_per_min"] == 0.5
    assert agg.to_row("ns", T0, 30 * US_PER_S, True)["disconnects_per_min"] == 60.0


def test_users_only_from_disconnects() -> None:
    agg = WindowAgg()
    agg.add(REJOINED, "u1", None)
    agg.add(DROPPED, "u2", None)
    agg.add(REJECTED, "u3", None)
    assert agg.users == set()
    agg.add(DISCONNECTED, "u4", None)
    assert agg.users == {"u4"}


def test_parties_from_disconnected_rejoined_dropped_not_rejected() -> None:
    agg = WindowAgg()
    agg.add(REJECTED, None, "p0")
    assert agg.sessions == set()
    agg.add(DISCONNECTED, None, "p1")
    agg.add(REJOINED, None, "p2")
    agg.add(DROPPED, None, "p3")
    agg.add(DROPPED, None, "")
    assert agg.sessions == {"p1", "p2", "p3"}


def test_merge_and_copy_do_not_alias() -> None:
    a, b = WindowAgg(), WindowAgg()
    a.add(DISCONNECTED, "u1", "p1")
    b.add(DISCONNECTED, "u2", "p1")
    b.add(REJECTED, None, None)
    merged = a.merge(b)
    assert merged.counts == [2, 0, 0, 1]
    assert merged.users == {"u1", "u2"}
    assert merged.sessions == {"p1"}
    assert a.counts == [1, 0, 0, 0]
    assert a.users == {"u1"}
    c = merged.copy()
    c.add(DROPPED, "u9", "p9")
    assert merged.counts == [2, 0, 0, 1]
    assert merged.sessions == {"p1"}
    assert c != merged


EVENTS = st.lists(
    st.tuples(
        st.sampled_from([DISCONNECTED, REJOINED, DROPPED, REJECTED]),
        st.none() | st.sampled_from(["", "u1", "u2", "u3", "u4"]),
        st.none() | st.sampled_from(["", "p1", "p2", "p3"]),
    ),
    max_size=40,
)


@given(events=EVENTS, data=st.data())
def test_fold_equals_merge_of_any_split(
    events: list[tuple[int, str | None, str | None]], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(events)))
    whole, left, right = WindowAgg(), WindowAgg(), WindowAgg()
    for e in events:
        whole.add(*e)
    for e in events[:cut]:
        left.add(*e)
    for e in events[cut:]:
        right.add(*e)
    merged = left.merge(right)
    assert merged == whole
    assert merged.to_row("ns", T0, W, True) == whole.to_row("ns", T0, W, True)
    assert sum(whole.counts) == len(events)


# --- NamespaceWindows ----------------------------------------------------------------------


def test_events_go_to_epoch_aligned_windows() -> None:
    ns = NamespaceWindows(W)
    assert ns.on_chunk(chunk([ev(T0), ev(T0 + W - 1), ev(T0 + W), ev(T0 - 1)])) == []
    assert sorted(ns.windows) == [T0 - W, T0, T0 + W]
    assert ns.windows[T0].counts[DISCONNECTED] == 2
    assert ns.namespace == "ns-a"


def test_tick_waits_for_required_offsets() -> None:
    ns = NamespaceWindows(W)
    assert ns.on_chunk(chunk([ev(T0)], partition=0, next_offset=5)) == []
    assert ns.on_tick(Tick(T0 + W, {0: 10, 1: 3})) == []
    assert ns.closed_until is None
    # partition 0 caught up, partition 1 not yet
    assert ns.on_chunk(chunk([ev(T0 + 1, REJOINED)], partition=0, next_offset=10)) == []
    assert ns.closed_until is None
    out = ns.on_chunk(chunk([ev(T0 + 2, DROPPED)], partition=1, next_offset=3))
    assert [kind for kind, _ in out] == ["row"]
    (row,) = rows(out)
    # every event the tick was computed from is in the final row
    assert (row["disconnected"], row["rejoined"], row["dropped"]) == (1, 1, 1)
    assert row["is_final"] is True
    assert row["window_start"] == to_datetime(T0)
    assert row["namespace"] == "ns-a"
    assert ns.closed_until == T0 + W
    assert ns.windows == {}
    assert ns.pending == []


def test_tick_is_applied_at_once_when_data_already_seen() -> None:
    ns = NamespaceWindows(W)
    ns.on_chunk(chunk([ev(T0)], partition=2, next_offset=8))
    out = ns.on_tick(Tick(T0 + W, {2: 8}))
    assert len(rows(out)) == 1


def test_ticks_apply_in_order() -> None:
    ns = NamespaceWindows(W)
    ns.on_chunk(chunk([ev(T0), ev(T0 + W)], partition=0, next_offset=1))
    assert ns.on_tick(Tick(T0 + W, {0: 2})) == []
    # a later tick whose data is here still waits behind the first
    assert ns.on_tick(Tick(T0 + 2 * W, {0: 1})) == []
    out = ns.on_chunk(chunk([], partition=0, next_offset=2))
    assert [r["window_start"] for r in rows(out)] == [to_datetime(T0), to_datetime(T0 + W)]


def test_closes_windows_ending_at_or_before_closed_until() -> None:
    ns = NamespaceWindows(W)
    ns.on_chunk(chunk([ev(T0 - W), ev(T0), ev(T0 + W), ev(T0 + 2 * W)]))
    out = ns.on_tick(Tick(T0 + W, {0: 1}))
    final = rows(out)
    assert [r["window_start"] for r in final] == [to_datetime(T0 - W), to_datetime(T0)]
    assert all(r["is_final"] is True for r in final)
    assert sorted(ns.windows) == [T0 + W, T0 + 2 * W]
    # closed_until inside a window does not close it
    assert ns.on_tick(Tick(T0 + 2 * W - 1, {0: 1})) == []
    assert sorted(ns.windows) == [T0 + W, T0 + 2 * W]


def test_an_older_tick_does_not_move_closed_until_back() -> None:
    ns = NamespaceWindows(W)
    ns.on_chunk(chunk([ev(T0)]))
    ns.on_tick(Tick(T0 + 2 * W, {0: 1}))
    assert ns.on_tick(Tick(T0 + W, {0: 1})) == []
    assert ns.closed_until == T0 + 2 * W


def test_event_for_a_closed_window_is_late() -> None:
    ns = NamespaceWindows(W)
    ns.on_chunk(chunk([ev(T0, offset=0)], next_offset=1))
    ns.on_tick(Tick(T0 + W, {0: 1}))
    late_a = ev(T0 + W - 1, DROPPED, "late-a", offset=7)
    late_b = ev(T0 - 10 * W, REJECTED, "late-b", offset=8)
    on_time = ev(T0 + W, REJOINED, "ok", offset=9)
    out = ns.on_chunk(chunk([late_a, on_time, late_b], partition=4, next_offset=10))
    assert out == [
        (
            "late",
            {
                "id": "late-a",
                "namespace": "ns-a",
                "name": COUNTED_NAMES[DROPPED],
                "event_time": to_datetime(T0 + W - 1),
                "partition": 4,
                "offset": 7,
                "key": b"k7",
                "value": b"{}",
            },
        ),
        (
            "late",
            {
                "id": "late-b",
                "namespace": "ns-a",
                "name": "PartyRejectedEvent",
                "event_time": to_datetime(T0 - 10 * W),
                "partition": 4,
                "offset": 8,
                "key": b"k8",
                "value": b"{}",
            },
        ),
        ("late_count", 2),
    ]
    assert sorted(ns.windows) == [T0 + W]
    assert ns.windows[T0 + W].counts[REJOINED] == 1


def test_no_late_count_without_late_events() -> None:
    ns = NamespaceWindows(W)
    ns.on_tick(Tick(T0, {}))
    assert ns.on_chunk(chunk([ev(T0)])) == []


def test_provisional_rows_for_open_windows() -> None:
    ns = NamespaceWindows(W)
    ns.on_chunk(chunk([ev(T0 + W), ev(T0), ev(T0 + 3 * W, REJOINED)]))
    out = ns.provisional()
    provisional = rows(out)
    assert [r["window_start"] for r in provisional] == [
        to_datetime(T0),
        to_datetime(T0 + W),
        to_datetime(T0 + 3 * W),
    ]
    assert all(r["is_final"] is False for r in provisional)
    assert provisional[2]["rejoined"] == 1
    # provisional rows do not close anything
    assert sorted(ns.windows) == [T0, T0 + W, T0 + 3 * W]


def test_provisional_applies_ready_ticks_first() -> None:
    ns = NamespaceWindows(W)
    ns.on_chunk(chunk([ev(T0), ev(T0 + W)]))
    ns.pending.append(Tick(T0 + W, {0: 1}))  # arrived, not yet applied
    out = ns.provisional()
    assert [(r["window_start"], r["is_final"]) for r in rows(out)] == [
        (to_datetime(T0), True),
        (to_datetime(T0 + W), False),
    ]


def test_snapshot_restore_round_trip() -> None:
    ns = NamespaceWindows(W)
    ns.on_chunk(chunk([ev(T0, user="u1", session="p1"), ev(T0 + W)], next_offset=4))
    ns.on_tick(Tick(T0 + W, {0: 4}))  # closes T0
    ns.on_chunk(chunk([ev(T0 + 2 * W, DROPPED)], partition=1, next_offset=2))
    ns.on_tick(Tick(T0 + 3 * W, {0: 4, 1: 9}))  # waits for partition 1
    snap = pickle.loads(pickle.dumps(ns.snapshot()))

    restored = NamespaceWindows.restore(W, snap)
    assert restored.namespace == "ns-a"
    assert restored.closed_until == T0 + W
    assert restored.seen == {0: 4, 1: 2}
    assert restored.pending == [Tick(T0 + 3 * W, {0: 4, 1: 9})]
    assert restored.windows == ns.windows

    # both continue identically
    more = chunk([ev(T0 + 2 * W + 1, REJOINED), ev(T0, offset=3)], partition=1, next_offset=9)
    assert restored.on_chunk(more) == ns.on_chunk(more)
    assert restored.provisional() == ns.provisional()


def test_snapshot_is_independent_of_later_changes() -> None:
    ns = NamespaceWindows(W)
    ns.on_chunk(chunk([ev(T0)]))
    snap = ns.snapshot()
    ns.on_chunk(chunk([ev(T0, REJOINED)], partition=1, next_offset=5))
    restored = NamespaceWindows.restore(W, snap)
    assert restored.windows[T0].counts == [1, 0, 0, 0]
    assert restored.seen == {0: 1}
    restored.on_chunk(chunk([ev(T0, DROPPED)], partition=2))
    assert ns.windows[T0].counts == [1, 1, 0, 0]


@pytest.mark.parametrize("window_us", [MIN, W, 60 * MIN])
def test_window_end_is_start_plus_window(window_us: int) -> None:
    ns = NamespaceWindows(window_us)
    ns.on_chunk(chunk([ev(T0 + 1)]))
    (row,) = rows(ns.provisional())
    assert row["window_end"] == to_datetime(T0 + window_us)


def test_chunk_crosses_processes_as_plain_tuples() -> None:
    """A pickled chunk comes back equal, its events EventRefs again, but they travel as plain
    tuples: no per-event reference to the EventRef class in the bytes."""
    sent = chunk([ev(T0, eid="a", offset=1), ev(T0 + 1, REJOINED, "b", None, None, offset=2)])
    raw = pickle.dumps(sent)
    back = pickle.loads(raw)
    assert back == sent
    assert all(type(e) is EventRef for e in back.events)
    assert back.events[1].user_id is None
    assert b"EventRef" not in raw
