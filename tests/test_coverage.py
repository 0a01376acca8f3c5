"""What the output's final rows cover, and where a lost state is read again from
(flows.core.coverage): pure functions, and the property the rebuild rests on."""

from __future__ import annotations

from datetime import UTC, datetime

import hypothesis
import hypothesis.strategies as st
import orjson

from flows.core.coverage import (
    Window,
    affected_until,
    find_mark,
    first_open,
    first_open_outcome,
    floor_of,
    max_before,
    prune_marks,
    rebuild_start,
    replay_time,
)
from flows.core.partition import PartitionState, process_batch

MIN = 60_000_000
HOUR = 60 * MIN
T0 = 1_772_323_200_000_000  # 2026-03-01T00:00:00Z


def test_first_open_windows() -> None:
    assert first_open(60, 60) == 60  # [0, 60) is final, [60, 120) is not
    assert first_open(90, 60) == 60
    assert first_open(120, 60) == 120
    # outcomes: final once end + horizon <= closed
    assert first_open_outcome(200, 60, 50) == 120  # [60,120): 170 <= 200 final; [120,180) not
    assert first_open_outcome(230, 60, 50) == 180  # [120,180): 230 <= 230 final


def test_replay_time_is_the_earliest_need() -> None:
    closed = T0 + 14 * HOUR
    # the open outcome day began at T0: its first disconnects' outcomes an hour before that
    assert replay_time(closed, (5 * MIN, HOUR, 24 * HOUR), HOUR) == T0 - HOUR
    # the first open outcome window began at 13:00 (13:05 + 1 h is after 14:00), less an hour
    assert replay_time(closed, (5 * MIN, HOUR), HOUR) == closed - 2 * HOUR
    assert replay_time(closed, (5 * MIN,), HOUR) == closed - 2 * HOUR


def test_floors_and_affected_windows() -> None:
    rates, outcomes = Window("party_rates", 5 * MIN, False), Window("o", 5 * MIN, True)
    assert floor_of(rates, None, HOUR) is None
    assert floor_of(rates, T0 + 12 * MIN, HOUR) == T0 + 10 * MIN
    assert floor_of(outcomes, T0 + 2 * HOUR, HOUR) == T0 + HOUR - 5 * MIN + 5 * MIN
    assert affected_until(rates, T0 + 7 * MIN, HOUR) == T0 + 10 * MIN
    assert affected_until(outcomes, T0 + 7 * MIN, HOUR) == T0 + HOUR + 10 * MIN


def test_marks_answer_from_the_last_mark_at_or_before() -> None:
    marks = [(10, 100, None), (12, 150, 10 * 7), (13, 190, 12 * 7)]
    assert find_mark(marks, True, 12) == marks[1]
    assert find_mark(marks, True, 11) == marks[0]  # an offset that is early enough
    assert find_mark(marks, True, 99) == marks[2]
    assert find_mark(marks, True, 3) == marks[0]  # nothing counted before the first
    assert find_mark(marks, False, 3) is None  # older marks were dropped: unknown
    assert max_before(marks, 120, 999) == 10 * 7
    assert max_before(marks, 191, 999) == 999
    kept = list(marks)
    assert prune_marks(kept, 13)
    assert kept == marks[1:]  # the last one before the limit still answers for its bucket
    assert not prune_marks(kept, 13)


def _event(event_id: str, t_us: int) -> bytes:
    return orjson.dumps(
        {
            "id": event_id,
            "name": "PartyDisconnectedEvent",
            "namespace": "ns",
            "timestampUnixNano": t_us * 1000,
            "userId": "u",
            "sessionId": "s",
        }
    )


class _Msg:
    def __init__(self, offset: int, value: bytes) -> None:
        self._o, self._v = offset, value

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes:
        return self._v

    def key(self) -> bytes:
        return b"k"


def _decisions(
    msgs: list[_Msg], state: PartitionState, window: int, lateness: int, dedup: int
) -> dict[int, str]:
    """Each message's fate, one message a batch."""
    out = {}
    for msg in msgs:
        r = process_batch(
            state, 0, [msg], window_us=window, shards=1, lateness_us=lateness,
            dedup_horizon_us=dedup, first_offset=0, end_offset=None,
            seen_at=datetime.now(UTC),
        )  # fmt: skip
        c = r.stats.counts
        out[msg.offset()] = next(
            k for k in ("counted", "duplicates", "late", "skipped") if getattr(c, k)
        )
    return out


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(
    steps=st.lists(
        st.tuples(
            st.integers(-15 * MIN, 12 * MIN),  # event time: a walk, mostly forward
            st.integers(0, 5),  # 0: a copy of an earlier event, re-sent now
            st.integers(0, 10**6),
        ),
        min_size=60,
        max_size=200,
    ),
    window=st.sampled_from([MIN, 5 * MIN, 15 * MIN]),
    lateness=st.sampled_from([0, 2 * MIN, 10 * MIN]),
    dedup=st.sampled_from([0, 10 * MIN, 40 * MIN]),
    closed_back=st.integers(0, 2 * HOUR),
)
def test_read_again_from_the_rebuild_start_every_decision_is_the_same(
    steps: list[tuple[int, int, int]], window: int, lateness: int, dedup: int, closed_back: int
) -> None:
    """The rebuild's promise, on any partition: read again from its rebuild start with the
    newest event time recorded there, every message from the exact point on is decided as
    the state that read it all decided it, and every counted event at or after the replay
    time is at or after that point. (A copy carries its event's time, as a re-send does.)"""
    msgs: list[_Msg] = []
    events: list[tuple[str, int]] = []
    t = T0
    for i, (delta, kind, pick) in enumerate(steps):
        if kind == 0 and events:
            event_id, at = events[pick % len(events)]
        else:
            t = T0 + len(events) * 3 * MIN + delta  # about in order, some far behind
            event_id, at = f"e{i}", t
            events.append((event_id, at))
        msgs.append(_Msg(i, _event(event_id, at)))
    horizon = HOUR
    full = PartitionState(0, window)
    first = _decisions(msgs, full, window, lateness, dedup)
    if full.max_t_us is None:
        return
    closed = full.max_t_us - lateness - closed_back
    closed -= closed % window
    lengths = (window, 4 * window)
    replay = replay_time(closed, lengths, horizon)
    start = rebuild_start(full.marks, full.marks_complete, replay, max(dedup, lateness), window)
    assert start is not None  # nothing was dropped: the marks reach back to the beginning
    hypothesis.event(f"read again from the start: {start.offset == 0}")
    hypothesis.event(f"a warm-up before the exact point: {start.offset < start.exact_from}")
    for offset, fate in first.items():
        if fate == "counted" and _time(msgs[offset]) >= replay:
            assert offset >= start.exact_from
    again = PartitionState(0, window)
    again.marks = [m for m in full.marks if m[1] >= start.offset]
    again.begin_at(start.offset, start.max_before)
    second = _decisions(msgs[start.offset :], again, window, lateness, dedup)
    assert {o: f for o, f in second.items() if o >= start.exact_from} == {
        o: f for o, f in first.items() if o >= start.exact_from
    }
    assert again.max_t_us == full.max_t_us


def _time(msg: _Msg) -> int:
    return int(orjson.loads(msg.value())["timestampUnixNano"]) // 1000
