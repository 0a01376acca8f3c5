"""Adapters from the pure window and clock classes to Bytewax's stateful operator API."""

from __future__ import annotations

from typing import Any

from bytewax.operators import StatefulBatchLogic

from flows.core.items import Chunk, Progress
from flows.core.watermark import Clock
from flows.core.windows import NamespaceWindows, Output


class ClockLogic(StatefulBatchLogic[Progress, Any, Any]):
    def __init__(
        self,
        window_us: int,
        lateness_us: int,
        horizon_us: int,
        partitions: list[int],
        snap: Any | None,
    ) -> None:
        self.clock = (
            Clock(window_us, lateness_us, partitions, horizon_us)
            if snap is None
            else Clock.restore(window_us, lateness_us, partitions, snap, horizon_us)
        )

    def on_batch(self, values: list[Progress]) -> tuple[list[Any], bool]:
        out = []
        for progress in values:
            out.extend(self.clock.on_progress(progress))
        return out, self.RETAIN

    def snapshot(self) -> Any:
        return self.clock.snapshot()


class WindowsLogic(StatefulBatchLogic[Any, Output, Any]):
    def __init__(self, window_us: int, horizon_us: int, snap: Any | None) -> None:
        self.ns = (
            NamespaceWindows(window_us, horizon_us)
            if snap is None
            else NamespaceWindows.restore(window_us, snap, horizon_us)
        )

    def on_batch(self, values: list[Any]) -> tuple[list[Output], bool]:
        out: list[Output] = []
        for item in values:
            out.extend(self.ns.on_chunk(item) if isinstance(item, Chunk) else self.ns.on_tick(item))
        return out, self.RETAIN

    def on_eof(self) -> tuple[list[Output], bool]:
        return self.ns.provisional(), self.RETAIN

    def snapshot(self) -> Any:
        return self.ns.snapshot()
