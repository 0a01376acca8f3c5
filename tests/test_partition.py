"""process_batch: counting identity, duplicates, lateness, dedup memory, partials, progress."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from flows.core.eventtime import US_PER_S, parse_rfc3339_us, to_datetime
from flows.core.items import BatchResult, Counts, EventRef, Progress, split_key
from flows.core.partials import id_hash, player_hash
from flows.core.partition import DedupMemory, PartitionState, process_batch
from schemas.events import DISCONNECTED, DROPPED, REJOINED

T0 = parse_rfc3339_us("2024-05-01T12:00:00Z")
MIN = 60 * US_PER_S
LATENESS = 10 * MIN
HORIZON = 10 * MIN
BUCKET = MIN
SEEN_AT = datetime(2024, 5, 2, tzinfo=UTC)
PARTITION = 3
W = 5 * MIN
SHARDS = 4


@dataclass
class Msg:
    """The three methods of a Kafka message the processor calls."""

    _value: bytes | None
    _offset: int
    _key: bytes | None = None

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def offset(self) -> int:
        return self._offset


def event_bytes(
    event_id: str,
    t_us: int,
    name: str = "PartyDisconnectedEvent",
    namespace: str = "ns-a",
    **extra: Any,
) -> bytes:
    doc = {
        "id": event_id,
        "name": name,
        "namespace": namespace,
        "timestamp": "2000-01-01T00:00:00Z",
        "timestampUnixNano": t_us * 1000,
        "userId": f"u-{event_id}",
        "sessionId": f"s-{event_id}",
    }
    return orjson.dumps(doc | extra)


def other_bytes(event_id: str) -> bytes:
    return orjson.dumps({"id": event_id, "name": "PartyCreatedEvent", "namespace": "ns-a"})


def batch(values: list[bytes | None], first_offset: int = 0) -> list[Msg]:
    return [Msg(v, first_offset + i, f"k{first_offset + i}".encode()) for i, v in enumerate(values)]


def run(
    state: PartitionState,
    msgs: list[Msg],
    *,
    report: bool = False,
    pending: bool = True,
    start_us: int = 0,
) -> BatchResult:
    return process_batch(
        state,
        PARTITION,
        msgs,  # type: ignore[arg-type]
        window_us=W,
        shards=SHARDS,
        lateness_us=LATENESS,
        dedup_horizon_us=HORIZON,
        first_offset=0,
        end_offset=None,
        seen_at=SEEN_AT,
        report=report,
        pending=pending,
        start_us=start_us,
    )


def new_state(next_offset: int = 0, max_t_us: int | None = None) -> PartitionState:
    """A partition's state; with ``max_t_us`` one that already has an event time, whose
    events are folded into partial aggregates (else they go whole to the clock)."""
    state = PartitionState(next_offset, BUCKET)
    state.max_t_us = max_t_us
    return state


def folded_counts(result: BatchResult) -> dict[str, list[int]]:
    """Counts per namespace (by kind) in the batch's partial aggregates."""
    out: dict[str, list[int]] = {}
    for key, part in result.parts:
        namespace, _shard = split_key(key)
        have = out.setdefault(namespace, [0, 0, 0, 0])
        for window in part.windows.values():
            for kind in range(4):
                have[kind] += window[kind]
    return out


def player(event_id: str) -> int:
    """The player hash of a test event (its session is s-ID, its user u-ID)."""
    return player_hash(id_hash(f"s-{event_id}"), f"u-{event_id}")


def counted_ids(result: BatchResult, candidates: str = "abcdefghijklmnopqrstuvwxyz") -> list[str]:
    """Ids of the counted events (the test events all have a session and a user, so every
    non-rejection is an outcome event of its own player; rejections are only counted)."""
    fresh = [e.id for e in result.progress.fresh] if result.progress else []
    by_player = {player(c): c for c in [*candidates, "edge", "late", "new", "old"]}
    return fresh + sorted(by_player[e[2]] for _key, part in result.parts for e in part.events)


def identity_holds(c: Counts) -> bool:
    parts = c.counted + c.skipped + c.duplicates + c.late + c.dead_letters + c.before_start
    return parts == c.messages


# --- counting --------------------------------------------------------------------------------


def test_every_message_is_counted_once() -> None:
    msgs = batch(
        [
            event_bytes("a", T0 + 20 * MIN),  # counted, sets the max
            other_bytes("x"),  # skipped
            event_bytes("b", T0 + 15 * MIN, "PartyRejoinedEvent"),  # counted
            event_bytes("a", T0 + 20 * MIN),  # duplicate
            event_bytes("c", T0 + 5 * MIN),  # late: more than 10 min behind the max
            None,  # dead letter: tombstone
            b"not json",  # dead letter
            event_bytes("d", T0, timestamp="1999-12-31T23:59:59Z", timestampUnixNano=None),  # range
        ]
    )
    result = run(new_state(), msgs)
    counts = result.stats.counts
    assert counts == Counts(messages=8, counted=2, skipped=1, duplicates=1, late=1, dead_letters=3)
    assert identity_holds(counts)
    assert len(result.late) == counts.late
    assert len(result.dead) == counts.dead_letters
    assert len(result.progress.fresh) == counts.counted  # type: ignore[union-attr]


def test_events_before_the_start_are_read_and_not_counted() -> None:
    """With a start (--start-at), an event before it is ``before_start``, whatever else it
    would be, and leaves no trace: not folded, not remembered as an id, not the partition's
    event time (so it can make no later event late or a duplicate)."""
    state = new_state(max_t_us=T0)
    msgs = batch(
        [
            event_bytes("old", T0 + 5 * MIN - 1),  # before the start
            event_bytes("a", T0 + 5 * MIN),  # at the start: counted
            event_bytes("old", T0 + 5 * MIN - 1),  # a copy of the first: before the start too
            event_bytes("far", T0 - 60 * MIN),  # would be late: before the start
            b"not json",  # a dead letter has no time: still a dead letter
            other_bytes("x"),  # skipped
        ]
    )
    result = run(state, msgs, start_us=T0 + 5 * MIN)
    counts = result.stats.counts
    assert counts == Counts(messages=6, counted=1, skipped=1, dead_letters=1, before_start=3)
    assert identity_holds(counts)
    assert counted_ids(result) == ["a"]
    assert result.late == []
    assert "old" not in state.dedup.ids
    assert state.max_t_us == T0 + 5 * MIN
    # without a start the same batch counts the first event
    assert run(new_state(max_t_us=T0), msgs).stats.counts.before_start == 0


def test_dead_letter_rows() -> None:
    msgs = batch([None, b"[1]"], first_offset=40)
    result = run(new_state(40), msgs)
    assert [(r["offset"], r["key"], r["value"]) for r in result.dead] == [
        (40, b"k40", None),
        (41, b"k41", b"[1]"),
    ]
    for row in result.dead:
        assert row["partition"] == PARTITION
        assert row["seen_at"] == SEEN_AT
        assert isinstance(row["error"], str)
        assert row["error"]
    assert "tombstone" in result.dead[0]["error"]


def test_empty_batch() -> None:
    state = new_state(17)
    result = run(state, [])
    assert result.stats.counts == Counts()
    assert result.parts == []
    assert result.progress is None
    assert state.next_offset == 17
    assert result.stats.next_offset == 17


# --- duplicates --------------------------------------------------------------------------------


def test_duplicates_within_a_batch_are_counted_once() -> None:
    msgs = batch([event_bytes("a", T0), event_bytes("a", T0), event_bytes("a", T0 + 1)])
    result = run(new_state(), msgs)
    assert result.stats.counts.counted == 1
    assert result.stats.counts.duplicates == 2
    assert result.progress is not None
    assert [(e.id, e.offset) for e in result.progress.fresh] == [("a", 0)]


def test_duplicates_across_batches() -> None:
    state = new_state()
    first = run(state, batch([event_bytes("a", T0), event_bytes("b", T0)]))
    assert first.stats.counts.counted == 2
    second = run(state, batch([event_bytes("b", T0 + MIN), event_bytes("c", T0)], 2))
    assert second.stats.counts.counted == 1
    assert second.stats.counts.duplicates == 1
    assert counted_ids(second) == ["c"]
    assert identity_holds(second.stats.counts)


def test_duplicates_are_per_partition_state() -> None:
    run(new_state(), batch([event_bytes("a", T0)]))
    other = run(new_state(), batch([event_bytes("a", T0)]))
    assert other.stats.counts.counted == 1


# --- lateness ------------------------------------------------------------------------------


def test_late_event_goes_to_late_rows() -> None:
    state = new_state()
    run(state, batch([event_bytes("a", T0 + 30 * MIN)]))
    assert state.max_t_us == T0 + 30 * MIN
    msgs = batch(
        [
            event_bytes("edge", T0 + 20 * MIN),  # exactly max - lateness: on time
            event_bytes("late", T0 + 20 * MIN - 1, "PartyDroppedEvent", "ns-b"),
        ],
        first_offset=1,
    )
    result = run(state, msgs)
    assert result.stats.counts.counted == 1
    assert result.stats.counts.late == 1
    assert counted_ids(result) == ["edge"]
    assert set(folded_counts(result)) == {"ns-a"}
    (row,) = result.late
    assert row == {
        "id": "late",
        "namespace": "ns-b",
        "name": "PartyDroppedEvent",
        "event_time": to_datetime(T0 + 20 * MIN - 1),
        "partition": PARTITION,
        "offset": 2,
        "key": b"k2",
        "value": msgs[1].value(),
    }


def test_lateness_uses_the_max_reached_earlier_in_the_same_batch() -> None:
    msgs = batch([event_bytes("new", T0 + 60 * MIN), event_bytes("old", T0)])
    result = run(new_state(), msgs)
    assert result.stats.counts.counted == 1
    assert [r["id"] for r in result.late] == ["old"]


def test_first_event_is_never_late_and_max_only_grows() -> None:
    state = new_state()
    run(state, batch([event_bytes("a", T0)]))
    run(state, batch([event_bytes("b", T0 - 5 * MIN)], 1))
    assert state.max_t_us == T0


def test_late_and_duplicate_events_do_not_move_the_max() -> None:
    state = new_state()
    run(state, batch([event_bytes("a", T0 + 30 * MIN)]))
    run(state, batch([event_bytes("b", T0)], 1))  # late
    assert state.max_t_us == T0 + 30 * MIN


# --- dedup memory -----------------------------------------------------------------------------


def test_dedup_memory_add_and_forget() -> None:
    mem = DedupMemory(BUCKET)
    assert mem.add("a", T0)
    assert mem.add("b", T0 + BUCKET)
    assert not mem.add("a", T0 + 5 * BUCKET)
    assert len(mem) == 2
    mem.forget_before(T0 + BUCKET - 1)  # a's bucket is not wholly before: kept
    assert len(mem) == 2
    mem.forget_before(T0 + BUCKET)
    assert len(mem) == 1
    assert mem.add("a", T0)  # forgotten, so new again
    assert not mem.add("b", T0)
    mem.forget_before(T0 + 10 * BUCKET)
    assert len(mem) == 0


def test_process_batch_forgets_ids_beyond_the_horizon() -> None:
    state = new_state()
    run(state, batch([event_bytes("a", T0), event_bytes("b", T0 + 5 * MIN)]))
    assert len(state.dedup) == 2
    # max - horizon = T0 + 5m30s: a's minute is wholly before it, b's minute is not
    run(state, batch([event_bytes("c", T0 + 15 * MIN + 30 * US_PER_S)], 2))
    assert len(state.dedup) == 2
    assert state.dedup.add("a", T0)
    assert not state.dedup.add("b", T0)
    assert not state.dedup.add("c", T0)


def test_a_forgotten_id_coming_back_is_late_not_counted() -> None:
    state = new_state()
    run(state, batch([event_bytes("a", T0)]))
    run(state, batch([event_bytes("z", T0 + 60 * MIN)], 1))
    assert len(state.dedup) == 1
    again = run(state, batch([event_bytes("a", T0)], 2))
    assert again.stats.counts.late == 1
    assert again.stats.counts.counted == 0


def _one_batch_and_one_by_one(values: list[bytes]) -> tuple[Counts, Counts]:
    """The counts of ``values`` read as one batch, and as one batch per message."""
    whole = run(new_state(), batch(values)).stats.counts
    state, counts = new_state(), []
    for i, value in enumerate(values):
        counts.append(run(state, batch([value], i)).stats.counts)
    by_one = Counts(*(sum(c[k] for c in counts) for k in range(len(Counts._fields))))
    return whole, by_one


def test_whether_a_copy_is_a_duplicate_does_not_depend_on_batch_boundaries() -> None:
    """An id is remembered while its bucket is not wholly before the newest event time
    *before the copy* less the horizon: the same whether the copy comes in the batch that
    moved the partition on, or in a later one."""
    values = [
        event_bytes("a", T0),
        event_bytes("z", T0 + 60 * MIN),  # moves the partition an hour on
        event_bytes("a", T0),  # a's minute is long forgotten: late, not a duplicate
        event_bytes("y", T0 + 55 * MIN),
        event_bytes("y", T0 + 55 * MIN),  # remembered: a duplicate
    ]
    whole, by_one = _one_batch_and_one_by_one(values)
    assert whole == by_one
    assert (whole.counted, whole.late, whole.duplicates) == (3, 1, 1)


def test_a_copy_is_a_duplicate_until_its_bucket_is_wholly_before_the_horizon() -> None:
    """The edge, to the microsecond: the newest event time less the horizon reaching the
    end of the copy's bucket makes the id forgotten (and the copy, that far behind, late)."""
    end_of_bucket = T0 + BUCKET  # a's bucket is [T0, T0 + 1m)
    for newest, readme in (
        (end_of_bucket + HORIZON - 1, "duplicate"),
        (end_of_bucket + HORIZON, "late"),
    ):
        values = [event_bytes("a", T0), event_bytes("z", newest), event_bytes("a", T0)]
        for counts in _one_batch_and_one_by_one(values):
            assert (counts.duplicates, counts.late) == ((1, 0) if readme == "duplicate" else (0, 1))
            assert counts.counted == 2


def test_batch_end_forgetting_keeps_what_a_later_message_could_find_remembered() -> None:
    """Ids leave memory at the end of a batch only when no later message can find them
    remembered: the newest event time only grows."""
    state = new_state()
    run(state, batch([event_bytes("a", T0), event_bytes("z", T0 + BUCKET + HORIZON - 1)]))
    assert "a" in state.dedup.ids
    again = run(state, batch([event_bytes("a", T0)], 2))
    assert again.stats.counts.duplicates == 1


def test_longer_dedup_horizon_keeps_ids() -> None:
    state = new_state()
    msgs = batch([event_bytes("a", T0), event_bytes("z", T0 + 30 * MIN)])
    process_batch(
        state,
        PARTITION,
        msgs,  # type: ignore[arg-type]
        window_us=W,
        shards=SHARDS,
        lateness_us=LATENESS,
        dedup_horizon_us=60 * MIN,
        first_offset=0,
        end_offset=None,
        seen_at=SEEN_AT,
    )
    assert len(state.dedup) == 2


# --- partial aggregates --------------------------------------------------------------------


def test_parts_fold_the_batch_per_namespace_and_shard() -> None:
    msgs = batch(
        [
            event_bytes("1", T0, "PartyDisconnectedEvent", "ns-a"),
            event_bytes("2", T0 + 1, "PartyRejoinedEvent", "ns-b"),
            other_bytes("x"),
            event_bytes("3", T0 + 2, "PartyDroppedEvent", "ns-a"),
            event_bytes("4", T0 + 3, "PartyRejectedEvent", "ns-b"),
            b"garbage",  # the last message is not an event: still sets next_offset
        ],
        first_offset=100,
    )
    state = new_state(100, max_t_us=T0)
    result = run(state, msgs)
    assert folded_counts(result) == {"ns-a": [1, 0, 1, 0], "ns-b": [0, 1, 0, 1]}
    assert {(part.partition, part.next_offset) for _k, part in result.parts} == {(PARTITION, 106)}
    for key, part in result.parts:
        assert (part.namespace, part.shard) == split_key(key)
        assert set(part.windows) == {T0}  # all in the window starting at T0
    assert state.next_offset == 106
    assert result.stats.next_offset == 106
    events = sorted(e for _k, part in result.parts for e in part.events)
    assert events == [
        (T0, DISCONNECTED, player("1")),
        (T0 + 1, REJOINED, player("2")),
        (T0 + 2, DROPPED, player("3")),
    ]  # the rejection is counted, not matched
    assert result.progress is not None and result.progress.fresh == []


def test_next_offset_follows_gaps_in_offsets() -> None:
    msgs = [Msg(event_bytes("a", T0), 10), Msg(event_bytes("b", T0), 25)]
    state = new_state(10, max_t_us=T0)
    result = run(state, msgs)
    assert {part.next_offset for _key, part in result.parts} == {26}
    assert state.next_offset == 26


# --- progress ----------------------------------------------------------------------------------


def test_progress_only_with_events_or_when_asked() -> None:
    state = new_state()
    skipped_only = run(state, batch([other_bytes("x"), b"junk"]))
    assert skipped_only.progress is None

    reported = run(state, batch([other_bytes("y")], 2), report=True, pending=False)
    assert reported.progress == Progress(PARTITION, 3, None, False, {}, [])

    state.max_t_us = T0
    with_events = run(
        state,
        batch(
            [
                event_bytes("a", T0 + 5, namespace="ns-a"),
                event_bytes("b", T0 + 9, namespace="ns-b"),
                event_bytes("c", T0 + 7, namespace="ns-a"),
            ],
            3,
        ),
    )
    progress = with_events.progress
    assert progress is not None
    assert (progress.partition, progress.next_offset, progress.max_t_us) == (PARTITION, 6, T0 + 9)
    latest: dict[str, int] = {}
    for key, t_us in progress.keys.items():
        namespace, _shard = split_key(key)
        latest[namespace] = max(latest.get(namespace, t_us), t_us)
    assert latest == {"ns-a": T0 + 7, "ns-b": T0 + 9}
    assert set(progress.keys) == {key for key, _part in with_events.parts}


def test_progress_not_sent_when_all_events_were_duplicates_or_late() -> None:
    state = new_state()
    run(state, batch([event_bytes("a", T0 + 60 * MIN)]))
    result = run(state, batch([event_bytes("a", T0 + 60 * MIN), event_bytes("b", T0)], 1))
    assert result.stats.counts.duplicates == 1
    assert result.stats.counts.late == 1
    assert result.progress is None
    reported = run(state, [], report=True)
    assert reported.progress == Progress(PARTITION, 3, T0 + 60 * MIN, True, {}, [])


def test_progress_max_is_the_partition_max_not_the_batch_max() -> None:
    state = new_state()
    run(state, batch([event_bytes("a", T0 + 9 * MIN)]))
    result = run(state, batch([event_bytes("b", T0 + MIN)], 1))
    assert result.progress is not None
    assert result.progress.max_t_us == T0 + 9 * MIN
    assert set(result.progress.keys.values()) == {T0 + MIN}


def test_a_remembered_id_arriving_late_is_a_duplicate() -> None:
    """A re-send of a counted event is a duplicate even when it comes after the lateness:
    late_events only holds events that are not in the rates."""
    state = new_state()
    run(state, batch([event_bytes("a", T0), event_bytes("z", T0 + 5 * MIN)]))
    # the partition moved on: "a" is more than the lateness behind, and still remembered
    # (its minute is not wholly before the newest time less the horizon)
    state.max_t_us = T0 + BUCKET + HORIZON - 1
    again = run(state, batch([event_bytes("a", T0)], 2))
    assert again.stats.counts.duplicates == 1
    assert again.late == []


def test_raw_bytes_travel_only_while_the_partition_has_no_event_time() -> None:
    state = new_state()
    first = run(state, batch([event_bytes("a", T0)]))
    later = run(state, batch([event_bytes("b", T0 + MIN)], 1))
    assert first.progress is not None and later.progress is not None
    assert first.parts == [] and first.progress.keys == {}
    (whole,) = first.progress.fresh
    assert whole == EventRef(T0, DISCONNECTED, "a", "ns-a", "u-a", "s-a", 0, b"k0", whole.value)
    assert whole.value == event_bytes("a", T0)
    assert later.progress.fresh == [] and later.parts


def test_offset_shift_keeps_downstream_offsets_growing() -> None:
    state = new_state(max_t_us=T0)
    state.offset_shift = 1000  # the topic was recreated after offset 1000
    result = run(state, batch([event_bytes("a", T0)], 0))
    assert result.stats.next_offset == 1
    assert {part.next_offset for _key, part in result.parts} == {1001}
    assert result.progress is not None and result.progress.next_offset == 1001
