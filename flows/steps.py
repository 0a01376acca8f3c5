"""Adapters from the pure clock, shard and rows classes to Bytewax's stateful operator API.

Each key's state is snapshotted as bytes pickled at once (see ``Shard.snapshot``): Bytewax
snapshots every key a batch touched, and the bytes cannot change after they were taken.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bytewax.operators import StatefulBatchLogic

from flows.core.items import Progress, Report, RollupPart, ShardPart
from flows.core.rollups import ShardRollups
from flows.core.rows import NamespaceRows, Output
from flows.core.shards import Shard, ShardOutput
from flows.core.watermark import Clock, ClockOutput


class ClockLogic(StatefulBatchLogic[Progress, ClockOutput, bytes]):
    def __init__(
        self,
        window_us: int,
        lateness_us: int,
        horizon_us: int,
        shards: int,
        spans_us: tuple[int, ...],
        partitions: list[int],
        snap: bytes | None,
        *,
        on_watermark: Callable[[int | None], None] | None = None,
        closed_floor: int | None = None,
    ) -> None:
        self.on_watermark = on_watermark  # told the watermark after each batch (metrics)
        args = (window_us, lateness_us, partitions)
        self.clock = (
            Clock(*args, horizon_us, shards, spans_us=spans_us, closed_floor=closed_floor)
            if snap is None
            else Clock.restore(*args, snap, horizon_us, shards, spans_us=spans_us)
        )

    def on_batch(self, values: list[Progress]) -> tuple[list[ClockOutput], bool]:
        out = []
        for progress in values:
            out += self.clock.on_progress(progress)
        out += self.clock.round()
        if self.on_watermark is not None:
            self.on_watermark(self.clock.watermark())
        return out, self.RETAIN

    def on_eof(self) -> tuple[list[ClockOutput], bool]:
        out = self.clock.round(force=True)
        if self.on_watermark is not None:
            self.on_watermark(self.clock.watermark())
        return out, self.RETAIN

    def snapshot(self) -> bytes:
        return self.clock.snapshot()


class ShardLogic(StatefulBatchLogic[Any, ShardOutput, bytes]):
    def __init__(
        self, window_us: int, horizon_us: int, rollups: tuple[int, ...], snap: bytes | None
    ) -> None:
        self.shard = (
            Shard(window_us, horizon_us, rollups)
            if snap is None
            else Shard.restore(window_us, snap, horizon_us, rollups)
        )

    def on_batch(self, values: list[Any]) -> tuple[list[ShardOutput], bool]:
        out: list[ShardOutput] = []
        shard = self.shard
        for item in values:
            out += shard.on_part(item) if type(item) is ShardPart else shard.on_tick(item)
        return out, self.RETAIN

    def on_eof(self) -> tuple[list[ShardOutput], bool]:
        return self.shard.provisional(), self.RETAIN

    def snapshot(self) -> bytes:
        return self.shard.snapshot()


class RollupsLogic(StatefulBatchLogic[RollupPart, Report, bytes]):
    def __init__(self, lengths: tuple[int, ...], horizon_us: int, snap: bytes | None) -> None:
        self.rollups = (
            ShardRollups(lengths, horizon_us)
            if snap is None
            else ShardRollups.restore(lengths, horizon_us, snap)
        )

    def on_batch(self, values: list[RollupPart]) -> tuple[list[Report], bool]:
        out: list[Report] = []
        for part in values:
            out += self.rollups.on_part(part)
        return out, self.RETAIN

    def on_eof(self) -> tuple[list[Report], bool]:
        return self.rollups.provisional(), self.RETAIN

    def snapshot(self) -> bytes:
        return self.rollups.snapshot()


class RowsLogic(StatefulBatchLogic[Report, Output, bytes]):
    def __init__(self, window_us: int, rollups: tuple[int, ...], snap: bytes | None) -> None:
        self.rows = (
            NamespaceRows(window_us, rollups)
            if snap is None
            else NamespaceRows.restore(window_us, snap, rollups)
        )

    def on_batch(self, values: list[Report]) -> tuple[list[Output], bool]:
        out: list[Output] = []
        for report in values:
            out += self.rows.on_report(report)
        return out, self.RETAIN

    def on_eof(self) -> tuple[list[Output], bool]:
        return self.rows.provisional(), self.RETAIN

    def snapshot(self) -> bytes:
        return self.rows.snapshot()
