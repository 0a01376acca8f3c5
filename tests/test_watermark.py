"""Clock: the watermark over partitions and the ticks it sends to namespaces."""

from __future__ import annotations

import pickle

from flows.core.eventtime import US_PER_S, parse_rfc3339_us
from flows.core.items import Progress, Tick
from flows.core.watermark import Clock

MIN = 60 * US_PER_S
W = 5 * MIN
LATE = 2 * MIN
T0 = parse_rfc3339_us("2024-05-01T12:00:00Z")  # a window boundary


def prog(
    partition: int,
    max_t: int | None,
    next_offset: int = 1,
    pending: bool = True,
    namespaces: dict[str, int] | None = None,
) -> Progress:
    return Progress(partition, next_offset, max_t, pending, namespaces or {})


def test_no_watermark_until_every_partition_reported() -> None:
    clock = Clock(W, LATE, [0, 1, 2])
    assert clock.watermark() is None
    assert clock.on_progress(prog(0, T0 + 20 * MIN, namespaces={"a": T0})) == []
    assert clock.on_progress(prog(1, T0 + 20 * MIN)) == []
    assert clock.watermark() is None
    assert clock.closed_until() is None
    ticks = clock.on_progress(prog(2, T0 + 20 * MIN))
    assert clock.watermark() == T0 + 18 * MIN
    assert ticks == [("a", Tick(T0 + 15 * MIN, {0: 1}))]


def test_pending_partition_without_a_max_holds_the_watermark() -> None:
    clock = Clock(W, LATE, [0, 1])
    clock.on_progress(prog(0, T0 + 20 * MIN, namespaces={"a": T0}))
    assert clock.on_progress(prog(1, None, pending=True)) == []
    assert clock.watermark() is None
    # once it has read everything and found no counted event, it no longer holds it
    ticks = clock.on_progress(prog(1, None, pending=False))
    assert clock.watermark() == T0 + 18 * MIN
    assert [ns for ns, _ in ticks] == ["a"]


def test_empty_partition_does_not_hold_the_watermark() -> None:
    clock = Clock(W, LATE, [0, 1])
    clock.on_progress(prog(1, None, pending=False))
    assert clock.watermark() is None
    clock.on_progress(prog(0, T0 + 7 * MIN, pending=False))
    assert clock.watermark() == T0 + 5 * MIN


def test_no_partition_with_events_means_no_watermark() -> None:
    clock = Clock(W, LATE, [0, 1])
    clock.on_progress(prog(0, None, pending=False))
    clock.on_progress(prog(1, None, pending=False))
    assert clock.watermark() is None


def test_watermark_is_min_of_maxima_minus_lateness() -> None:
    clock = Clock(W, LATE, [0, 1, 2])
    clock.on_progress(prog(0, T0 + 30 * MIN))
    clock.on_progress(prog(1, T0 + 11 * MIN))
    clock.on_progress(prog(2, T0 + 40 * MIN))
    assert clock.watermark() == T0 + 9 * MIN
    assert clock.closed_until() == T0 + 5 * MIN


def test_fast_partition_does_not_advance_past_a_slow_one() -> None:
    clock = Clock(W, LATE, [0, 1])
    clock.on_progress(prog(0, T0 + 10 * MIN, namespaces={"a": T0 + 10 * MIN}))
    clock.on_progress(prog(1, T0 + 7 * MIN, namespaces={"a": T0 + 7 * MIN}))
    assert clock.watermark() == T0 + 5 * MIN
    for step in range(1, 5):
        t = T0 + step * 60 * MIN
        assert clock.on_progress(prog(0, t, 1 + step, namespaces={"a": t})) == []
        assert clock.watermark() == T0 + 5 * MIN
    ticks = clock.on_progress(prog(1, T0 + 30 * MIN, 2, namespaces={"a": T0 + 30 * MIN}))
    assert clock.watermark() == T0 + 28 * MIN
    assert ticks == [("a", Tick(T0 + 25 * MIN, {0: 5, 1: 2}))]


def test_partition_max_never_goes_back() -> None:
    clock = Clock(W, LATE, [0])
    clock.on_progress(prog(0, T0 + 20 * MIN))
    clock.on_progress(prog(0, T0 + 10 * MIN))
    assert clock.watermark() == T0 + 18 * MIN


def test_ticks_are_quantized_to_window_boundaries() -> None:
    clock = Clock(W, LATE, [0])
    ns = {"a": T0 + 30 * MIN}
    (first,) = clock.on_progress(prog(0, T0 + 8 * MIN, 1, namespaces=ns))
    assert first == ("a", Tick(T0 + 5 * MIN, {0: 1}))  # watermark T0 + 6 min
    # the watermark moves within the same window: no new tick
    assert clock.on_progress(prog(0, T0 + 11 * MIN + 59 * US_PER_S, 2, namespaces=ns)) == []
    (second,) = clock.on_progress(prog(0, T0 + 12 * MIN, 3, namespaces=ns))
    assert second == ("a", Tick(T0 + 10 * MIN, {0: 3}))
    for _, tick in (first, second):
        assert tick.closed_until % W == 0


def test_ticks_only_to_namespaces_with_open_windows() -> None:
    clock = Clock(W, LATE, [0, 1])
    clock.on_progress(prog(0, T0 + MIN, 10, namespaces={"old": T0 + MIN}))
    clock.on_progress(prog(1, T0 + MIN, 20, namespaces={"new": T0 + MIN}))
    # watermark T0 + 13 min: closes [T0, T0 + 5m), the only window of both namespaces
    ticks = clock.on_progress(prog(0, T0 + 15 * MIN, 11))
    assert ticks == []  # partition 1 still at T0 + 1 min
    ticks = clock.on_progress(prog(1, T0 + 15 * MIN, 21, namespaces={"new": T0 + 15 * MIN}))
    assert dict(ticks) == {
        "old": Tick(T0 + 10 * MIN, {0: 10}),
        "new": Tick(T0 + 10 * MIN, {1: 21}),
    }
    # later: "old" has nothing open any more, "new" has a window at T0 + 15 min
    ticks = clock.on_progress(prog(0, T0 + 30 * MIN, 12))
    ticks += clock.on_progress(prog(1, T0 + 30 * MIN, 22))
    assert ticks == [("new", Tick(T0 + 25 * MIN, {1: 21}))]
    # "new" is now closed too: no ticks for anyone
    assert clock.on_progress(prog(0, T0 + 60 * MIN, 13)) == []
    assert clock.on_progress(prog(1, T0 + 60 * MIN, 23)) == []
    # an event for "old" in a new window opens it again
    assert clock.on_progress(prog(1, T0 + 70 * MIN, 24)) == []
    ticks = clock.on_progress(prog(0, T0 + 70 * MIN, 14, namespaces={"old": T0 + 62 * MIN}))
    assert ticks == [("old", Tick(T0 + 65 * MIN, {0: 14}))]


def test_unknown_namespace_gets_no_tick() -> None:
    clock = Clock(W, LATE, [0])
    assert clock.on_progress(prog(0, T0 + 30 * MIN)) == []


def test_tick_carries_required_offsets_per_partition() -> None:
    clock = Clock(W, LATE, [0, 1, 2])
    clock.on_progress(prog(0, T0 + 9 * MIN, 100, namespaces={"a": T0 + 9 * MIN}))
    clock.on_progress(prog(1, T0 + 9 * MIN, 200, namespaces={"a": T0 + 8 * MIN, "b": T0}))
    clock.on_progress(prog(0, T0 + 9 * MIN, 150))  # batch with no events for "a"
    ticks = dict(clock.on_progress(prog(2, T0 + 9 * MIN, 300)))
    assert ticks == {
        "a": Tick(T0 + 5 * MIN, {0: 100, 1: 200}),
        "b": Tick(T0 + 5 * MIN, {1: 200}),
    }


def test_tick_required_is_a_copy() -> None:
    clock = Clock(W, LATE, [0])
    ((_, tick),) = clock.on_progress(prog(0, T0 + 9 * MIN, 5, namespaces={"a": T0 + 9 * MIN}))
    clock.on_progress(prog(0, T0 + 9 * MIN, 6, namespaces={"a": T0 + 9 * MIN}))
    assert tick.required == {0: 5}


def test_new_partition_joins_the_watermark() -> None:
    clock = Clock(W, LATE, [0])
    clock.on_progress(prog(0, T0 + 30 * MIN))
    clock.on_progress(prog(1, T0 + 12 * MIN))
    assert clock.partitions == [0, 1]
    assert clock.watermark() == T0 + 10 * MIN


def test_snapshot_restore() -> None:
    clock = Clock(W, LATE, [0, 1])
    clock.on_progress(prog(0, T0 + 20 * MIN, 10, namespaces={"a": T0 + 20 * MIN}))
    clock.on_progress(prog(1, T0 + 9 * MIN, 20, namespaces={"b": T0 + 9 * MIN}))
    snap = pickle.loads(pickle.dumps(clock.snapshot()))

    restored = Clock.restore(W, LATE, [0, 1], snap)
    assert restored.partition_max == clock.partition_max
    assert restored.snapshot() == clock.snapshot()
    # a restored clock waits for every partition to report in this run
    assert restored.watermark() is None
    assert restored.on_progress(prog(0, T0 + 20 * MIN, 10, pending=False)) == []
    assert restored.watermark() is None
    # then carries on as the original would
    more = prog(1, T0 + 21 * MIN, 21, namespaces={"b": T0 + 21 * MIN})
    expected = clock.on_progress(more)
    assert restored.on_progress(more) == expected
    assert expected == [
        ("a", Tick(T0 + 15 * MIN, {0: 10})),
        ("b", Tick(T0 + 15 * MIN, {1: 21})),
    ]
    assert restored.snapshot() == clock.snapshot()


def test_restore_remembers_sent_ticks() -> None:
    clock = Clock(W, LATE, [0])
    assert clock.on_progress(prog(0, T0 + 8 * MIN, 1, namespaces={"a": T0 + 3 * MIN}))
    restored = Clock.restore(W, LATE, [0], clock.snapshot())
    # "a" already had its only window closed: nothing is sent again
    assert restored.on_progress(prog(0, T0 + 40 * MIN, 2)) == []


def test_snapshot_is_independent_of_later_changes() -> None:
    clock = Clock(W, LATE, [0])
    clock.on_progress(prog(0, T0 + 8 * MIN, 1, namespaces={"a": T0}))
    snap = clock.snapshot()
    clock.on_progress(prog(0, T0 + 30 * MIN, 2, namespaces={"a": T0 + 30 * MIN}))
    assert snap["partition_max"] == {0: T0 + 8 * MIN}
    assert snap["namespaces"]["a"][0] == {0: 1}
