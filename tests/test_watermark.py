"""Clock: the watermark over partitions, rounds of ticks to the shards, fresh partitions."""

from __future__ import annotations

from flows.core.eventtime import US_PER_S, parse_rfc3339_us
from flows.core.items import EventRef, Progress, ShardPart, Tick, shard_key
from flows.core.watermark import Clock
from schemas.events import DISCONNECTED, DROPPED

MIN = 60 * US_PER_S
W = 5 * MIN
LATE = 2 * MIN
T0 = parse_rfc3339_us("2024-05-01T12:00:00Z")  # a window boundary
A0, A1, B0 = shard_key("a", 0), shard_key("a", 1), shard_key("b", 0)


def prog(
    partition: int,
    max_t: int | None,
    next_offset: int = 1,
    pending: bool = True,
    keys: dict[str, int] | None = None,
    fresh: list[EventRef] | None = None,
) -> Progress:
    return Progress(partition, next_offset, max_t, pending, keys or {}, fresh or [])


def feed(clock: Clock, *progress: Progress, force: bool = False) -> dict[str, Tick]:
    """What the clock's step does with a batch of progress: the round's ticks by key."""
    for p in progress:
        clock.on_progress(p)
    return {key: tick for kind, (key, tick) in clock.round(force) if kind == "to_shard"}


def test_no_watermark_until_every_partition_reported() -> None:
    clock = Clock(W, LATE, [0, 1, 2])
    assert clock.watermark() is None
    assert feed(clock, prog(0, T0 + 20 * MIN, keys={A0: T0})) == {}
    assert feed(clock, prog(1, T0 + 20 * MIN)) == {}
    assert clock.watermark() is None
    assert clock.closed_until() is None
    ticks = feed(clock, prog(2, T0 + 20 * MIN))
    assert clock.watermark() == T0 + 18 * MIN
    assert ticks == {A0: Tick(T0 + 15 * MIN, {0: 1}, (0,))}


def test_pending_partition_without_a_max_holds_the_watermark() -> None:
    clock = Clock(W, LATE, [0, 1])
    feed(clock, prog(0, T0 + 20 * MIN, keys={A0: T0}))
    assert feed(clock, prog(1, None, pending=True)) == {}
    assert clock.watermark() is None
    # once it has read everything and found no counted event, it no longer holds it
    ticks = feed(clock, prog(1, None, pending=False))
    assert clock.watermark() == T0 + 18 * MIN
    assert list(ticks) == [A0]


def test_empty_partition_does_not_hold_the_watermark() -> None:
    clock = Clock(W, LATE, [0, 1])
    feed(clock, prog(1, None, pending=False))
    assert clock.watermark() is None
    feed(clock, prog(0, T0 + 7 * MIN, pending=False))
    assert clock.watermark() == T0 + 5 * MIN


def test_no_partition_with_events_means_no_watermark() -> None:
    clock = Clock(W, LATE, [0, 1])
    feed(clock, prog(0, None, pending=False), prog(1, None, pending=False))
    assert clock.watermark() is None
    assert clock.round(force=True) == []


def test_watermark_is_min_of_maxima_minus_lateness() -> None:
    clock = Clock(W, LATE, [0, 1])
    feed(clock, prog(0, T0 + 30 * MIN), prog(1, T0 + 10 * MIN))
    assert clock.watermark() == T0 + 8 * MIN
    assert clock.closed_until() == T0 + 5 * MIN


def test_fast_partition_does_not_advance_past_a_slow_one() -> None:
    clock = Clock(W, LATE, [0, 1])
    feed(clock, prog(0, T0 + 60 * MIN), prog(1, T0 + 3 * MIN))
    assert clock.closed_until() == T0  # the watermark is T0 + 1 min
    feed(clock, prog(0, T0 + 120 * MIN))
    assert clock.watermark() == T0 + MIN


def test_partition_max_never_goes_back() -> None:
    clock = Clock(W, LATE, [0])
    feed(clock, prog(0, T0 + 30 * MIN), prog(0, T0 + 10 * MIN))
    assert clock.partition_max == {0: T0 + 30 * MIN}


def test_rounds_are_window_boundaries_and_one_per_step_over_a_backlog() -> None:
    clock = Clock(W, LATE, [0], horizon_us=0, step_us=60 * MIN)
    first = feed(clock, prog(0, T0 + 12 * MIN, 2, keys={A0: T0 + 12 * MIN}))
    assert first == {A0: Tick(T0 + 10 * MIN, {0: 2}, (0,))}  # the first round at once
    # the watermark moves on by less than a step while data waits: no round yet
    assert feed(clock, prog(0, T0 + 40 * MIN, 3, keys={A0: T0 + 40 * MIN})) == {}
    assert feed(clock, prog(0, T0 + 71 * MIN, 4, keys={A0: T0 + 71 * MIN})) == {}  # 55 min
    assert feed(clock, prog(0, T0 + 73 * MIN, 5, keys={A0: T0 + 73 * MIN})) == {
        A0: Tick(T0 + 70 * MIN, {0: 5}, (0,))
    }
    for tick in (first[A0],):
        assert tick.closed_until % W == 0


def test_a_partition_at_its_end_and_the_end_of_the_input_bring_a_round() -> None:
    clock = Clock(W, LATE, [0, 1], step_us=60 * MIN)
    feed(clock, prog(0, T0 + 12 * MIN, 1, keys={A0: T0 + 12 * MIN}), prog(1, T0 + 12 * MIN, 1))
    assert feed(clock, prog(0, T0 + 30 * MIN, 2), prog(1, T0 + 30 * MIN, 2)) == {}
    caught_up = feed(clock, prog(1, T0 + 30 * MIN, 3, pending=False))
    assert {k: t.closed_until for k, t in caught_up.items()} == {A0: T0 + 25 * MIN}
    feed(clock, prog(0, T0 + 40 * MIN, 3, keys={A0: T0 + 40 * MIN}))
    assert feed(clock, prog(1, T0 + 50 * MIN, 4)) == {}
    at_eof = feed(clock, force=True)
    assert {k: t.closed_until for k, t in at_eof.items()} == {A0: T0 + 35 * MIN}


def test_ticks_go_to_shards_with_open_windows_and_name_each_other() -> None:
    clock = Clock(W, LATE, [0, 1], step_us=W)
    feed(clock, prog(0, T0 + MIN, 10, keys={A0: T0 + MIN, B0: T0}))
    ticks = feed(clock, prog(1, T0 + 15 * MIN, 20, keys={A1: T0 + 15 * MIN}))
    # the first watermark (partition 0 still at T0 + 1 min) closes nothing yet
    assert {t.closed_until for t in ticks.values()} == {T0 - 5 * MIN}
    ticks = feed(clock, prog(0, T0 + 16 * MIN, 11))
    assert ticks == {
        A0: Tick(T0 + 10 * MIN, {0: 10}, (0, 1)),
        A1: Tick(T0 + 10 * MIN, {1: 20}, (0, 1)),
        B0: Tick(T0 + 10 * MIN, {0: 10}, (0,)),
    }
    # later: a/0 and b/0 have nothing open any more; a/1 has a window at T0 + 15 min
    ticks = feed(clock, prog(0, T0 + 30 * MIN, 12), prog(1, T0 + 30 * MIN, 21))
    assert ticks == {A1: Tick(T0 + 25 * MIN, {1: 20}, (1,))}


def test_a_shard_is_ticked_until_its_outcome_horizon_passed() -> None:
    clock = Clock(W, LATE, [0], horizon_us=20 * MIN, step_us=W)
    feed(clock, prog(0, T0 + 8 * MIN, 1, keys={A0: T0}))
    assert list(feed(clock, prog(0, T0 + 20 * MIN, 2))) == [A0]  # T0 + 15m
    assert list(feed(clock, prog(0, T0 + 30 * MIN, 3))) == [A0]  # T0 + 25m: horizon ends here
    assert feed(clock, prog(0, T0 + 40 * MIN, 4)) == {}


def test_a_shard_is_ticked_until_every_roll_up_holding_its_data_has_ended() -> None:
    """Roll-ups of 10 and 15 minutes: the 10-minute one holding T0 + 11m ends at T0 + 20m,
    after the end of the longest roll-up's window (T0 + 15m); the shard hears of both."""
    clock = Clock(W, LATE, [0], step_us=W, spans_us=(W, 10 * MIN, 15 * MIN))
    feed(clock, prog(0, T0 + 11 * MIN, 1, keys={A0: T0 + 11 * MIN}))
    assert list(feed(clock, prog(0, T0 + 17 * MIN, 2))) == [A0]  # T0 + 15m
    assert list(feed(clock, prog(0, T0 + 22 * MIN, 3))) == [A0]  # T0 + 20m: the last end
    assert feed(clock, prog(0, T0 + 27 * MIN, 4)) == {}


def test_unknown_keys_get_no_tick() -> None:
    clock = Clock(W, LATE, [0])
    assert feed(clock, prog(0, T0 + 30 * MIN)) == {}


def test_tick_carries_required_offsets_per_partition_as_a_copy() -> None:
    clock = Clock(W, LATE, [0, 1, 2])
    feed(clock, prog(0, T0 + 9 * MIN, 100, keys={A0: T0 + 9 * MIN}))
    feed(clock, prog(1, T0 + 9 * MIN, 200, keys={A0: T0 + 8 * MIN, B0: T0}))
    feed(clock, prog(0, T0 + 9 * MIN, 150))  # a batch with nothing for a/0
    ticks = feed(clock, prog(2, T0 + 9 * MIN, 300))
    assert ticks == {
        A0: Tick(T0 + 5 * MIN, {0: 100, 1: 200}, (0,)),
        B0: Tick(T0 + 5 * MIN, {1: 200}, (0,)),
    }
    feed(clock, prog(0, T0 + 9 * MIN, 160, keys={A0: T0 + 9 * MIN}))
    assert ticks[A0].required == {0: 100, 1: 200}


def test_new_partition_joins_the_watermark() -> None:
    clock = Clock(W, LATE, [0])
    feed(clock, prog(0, T0 + 30 * MIN), prog(1, T0 + 12 * MIN))
    assert clock.partitions == [0, 1]
    assert clock.watermark() == T0 + 10 * MIN


def test_snapshot_restore() -> None:
    clock = Clock(W, LATE, [0, 1], step_us=W)
    feed(clock, prog(0, T0 + 20 * MIN, 10, keys={A0: T0 + 20 * MIN}))
    feed(clock, prog(1, T0 + 9 * MIN, 20, keys={B0: T0 + 9 * MIN}))
    restored = Clock.restore(W, LATE, [0, 1], clock.snapshot(), step_us=W)
    assert restored.partition_max == clock.partition_max
    assert restored.snapshot() == clock.snapshot()
    # a restored clock waits for every partition to report in this run
    assert restored.watermark() is None
    assert feed(restored, prog(0, T0 + 20 * MIN, 10, pending=False)) == {}
    assert restored.watermark() is None
    # then carries on as the original would
    more = prog(1, T0 + 21 * MIN, 21, keys={B0: T0 + 21 * MIN})
    assert (
        feed(restored, more)
        == feed(clock, more)
        == {
            A0: Tick(T0 + 15 * MIN, {0: 10}, (0,)),
            B0: Tick(T0 + 15 * MIN, {1: 21}, (0,)),
        }
    )
    assert restored.snapshot() == clock.snapshot()


def test_restore_remembers_sent_ticks() -> None:
    clock = Clock(W, LATE, [0])
    assert feed(clock, prog(0, T0 + 8 * MIN, 1, keys={A0: T0 + 3 * MIN}))
    restored = Clock.restore(W, LATE, [0], clock.snapshot())
    # a/0 already had its only window closed: nothing is sent again
    assert feed(restored, prog(0, T0 + 40 * MIN, 2), force=True) == {}


def _event(t_us: int, event_id: str, offset: int) -> EventRef:
    return EventRef(t_us, DROPPED, event_id, "a", "u", "s", offset, b"k", b"{}")


def test_events_of_a_fresh_partition_for_a_final_window_are_late() -> None:
    clock = Clock(W, LATE, [0, 1], shards=2, step_us=W)
    feed(clock, prog(0, T0 + 60 * MIN, 5, keys={A0: T0 + 60 * MIN}), prog(1, None, 0, False))
    assert clock.emitted == T0 + 55 * MIN
    fresh = [_event(T0 + MIN, "old", 0), _event(T0 + 57 * MIN, "new", 1)]
    out = clock.on_progress(prog(1, T0 + 57 * MIN, 2, fresh=fresh))
    late = [row for kind, rows in out if kind == "late" for row in rows]
    assert [(r["id"], r["partition"], r["offset"], r["key"]) for r in late] == [("old", 1, 0, b"k")]
    assert [n for kind, n in out if kind == "late_count"] == [1]
    parts = [item for kind, item in out if kind == "to_shard"]
    ((key, part),) = parts
    assert isinstance(part, ShardPart)
    assert (part.namespace, part.partition, part.next_offset) == ("a", 1, 2)
    assert [(e[0], e[1]) for e in part.events] == [(T0 + 57 * MIN, DROPPED)]  # "new"
    # the on-time event's shard now waits for that partition's data before its next tick
    assert clock.keys[key].required[1] == 2


def test_fresh_events_before_any_round_are_on_time() -> None:
    clock = Clock(W, LATE, [0])
    out = clock.on_progress(prog(0, T0, 1, fresh=[_event(T0, "first", 0)]))
    assert [kind for kind, _ in out] == ["to_shard"]


def test_snapshot_is_independent_of_later_changes() -> None:
    clock = Clock(W, LATE, [0])
    feed(clock, prog(0, T0 + 8 * MIN, 1, keys={A0: T0}))
    snap = clock.snapshot()
    feed(clock, prog(0, T0 + 30 * MIN, 2, keys={A0: T0 + 30 * MIN}))
    assert Clock.restore(W, LATE, [0], snap).partition_max == {0: T0 + 8 * MIN}


def test_disconnects_count_toward_the_namespace_only_once() -> None:
    """A fresh disconnect lands in its party's shard, its user in the user's shard."""
    clock = Clock(W, LATE, [0], shards=8)
    ev = EventRef(T0, DISCONNECTED, "d", "a", "user-7", "party-3", 0, b"k", b"{}")
    out = clock.on_progress(prog(0, T0, 1, fresh=[ev]))
    parts = [part for kind, (_key, part) in out if kind == "to_shard"]
    assert sum(w[DISCONNECTED] for p in parts for w in p.windows.values()) == 1
    assert sum(len(w[4]) for p in parts for w in p.windows.values()) == 1
    assert sum(len(w[5]) for p in parts for w in p.windows.values()) == 1
