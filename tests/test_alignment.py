"""Event-time alignment: a partition read far ahead of the slowest one waits for it."""

from __future__ import annotations

import random

import hypothesis
import hypothesis.strategies as st
import orjson

from flows.core.alignment import Alignment
from flows.core.partition import PartitionState
from flows.edges.source import PartitionReader, TopicSource
from flows.edges.statedir import Start
from flows.settings import Settings
from flows.tooling.simulator import envelope
from tests.test_flow import FakeConsumer, FakeMessage

MIN = 60_000_000
T0 = 1_796_000_000 * 1_000_000


def test_a_partition_ahead_by_more_than_the_drift_waits() -> None:
    a = Alignment(10 * MIN)
    a.update(0, T0 + 30 * MIN, reading=True)
    a.update(1, T0, reading=True)
    assert a.ahead(0, T0 + 30 * MIN)
    assert not a.ahead(1, T0)  # the slowest never waits
    assert not a.ahead(0, T0 + 10 * MIN)  # at the drift exactly: reads
    a.update(1, T0 + 25 * MIN, reading=True)
    assert not a.ahead(0, T0 + 30 * MIN)


def test_a_partition_at_its_end_holds_nobody_back() -> None:
    a = Alignment(10 * MIN)
    a.update(0, T0 + 60 * MIN, reading=True)
    a.update(1, T0, reading=True)
    assert a.ahead(0, T0 + 60 * MIN)
    a.update(1, T0, reading=False)  # reached its end, or caught up while following
    assert not a.ahead(0, T0 + 60 * MIN)


def test_without_a_limit_or_an_event_time_nobody_waits() -> None:
    off = Alignment(None)
    off.update(1, T0, reading=True)
    assert not off.ahead(0, T0 + 1000 * MIN)
    on = Alignment(MIN)
    on.update(1, T0, reading=True)
    assert not on.ahead(0, None)  # no event time yet: nothing to compare


@hypothesis.given(
    st.dictionaries(st.integers(0, 7), st.integers(0, 10**6), min_size=1),
    st.integers(0, 10**5),
)
def test_the_slowest_partition_always_reads(newest: dict[int, int], drift: int) -> None:
    a = Alignment(drift)
    for p, t in newest.items():
        a.update(p, t, reading=True)
    slowest = min(newest, key=newest.__getitem__)
    assert not a.ahead(slowest, newest[slowest])
    assert all(a.ahead(p, t) == (t - newest[slowest] > drift) for p, t in newest.items())


def _partition(p: int, minutes: int) -> list[FakeMessage]:
    """A disconnect a minute for ``minutes`` minutes."""
    rng = random.Random(p)
    return [
        FakeMessage(
            i, b"k",
            orjson.dumps(envelope(rng, "PartyDisconnectedEvent", "ns", T0 + i * MIN, "u", "s")),
        )
        for i in range(minutes)
    ]  # fmt: skip


def _readers(max_drift: str, lengths: tuple[int, int] = (600, 600)) -> list[PartitionReader]:
    settings = Settings(output="unused", state="unused", group_id="", max_drift=max_drift)
    source = TopicSource(settings.kafka, settings.rules, Start("earliest", 0, None))
    readers = []
    for p, n in enumerate(lengths):
        consumer = FakeConsumer(_partition(p, n), 0)
        readers.append(PartitionReader(source, consumer, p, PartitionState(0, MIN), n, None))
    return readers


def test_a_reader_ahead_of_the_other_waits_for_it() -> None:
    fast, slow = _readers("30m")
    fast.next_batch(), slow.next_batch()  # both have an event time now
    for _ in range(20):  # only the fast one is asked: it stops once 30 minutes ahead
        fast.next_batch()
    assert fast.state.max_t_us is not None and slow.state.max_t_us is not None
    gap = fast.state.max_t_us - slow.state.max_t_us
    assert 30 * MIN < gap <= 30 * MIN + 250 * MIN  # at most one batch past the drift
    assert fast.next_batch() == [] and fast.next_awake() is not None
    for _ in range(100):  # asked in turn, as the dataflow asks them, both read to the end
        if fast.done and slow.done:
            break
        for reader in (slow, fast):
            if not reader.done:
                reader.next_batch()
    assert fast.state.next_offset == slow.state.next_offset == 600


def test_a_reader_at_its_end_holds_nobody_back() -> None:
    fast, slow = _readers("30m", (600, 40))
    fast.next_batch(), slow.next_batch()
    while fast.next_batch():
        pass  # until it waits for the other
    assert not fast.done
    while not slow.done:
        slow.next_batch()
    while not fast.done:
        assert fast.next_batch() != []


def test_with_no_limit_a_reader_runs_ahead() -> None:
    fast, slow = _readers("0s")
    fast.next_batch(), slow.next_batch()
    while not fast.done:
        assert fast.next_batch() != []
    assert slow.state.next_offset < 600
