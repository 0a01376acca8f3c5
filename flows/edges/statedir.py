"""The state directory: Bytewax recovery partitions, what they belong to, and a run lock.

The state is only valid for the topic, window length and output it was made with. A
mismatch is refused with a message that says what to do, instead of silently producing
wrong numbers. One run at a time per state directory (per process of a cluster).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path

from bytewax.recovery import init_db_dir

from flows.core.eventtime import duration_label
from flows.settings import Settings

STATE_FORMAT = 3
"""Bumped whenever a class pickled in the state moves or changes: an older state is refused
with a clear message instead of failing to load (``tests/test_flow.py`` holds the list)."""
META = "party_rates_state.json"
RECOVERY_PARTITIONS = 1


FRESH = "needs a fresh --state and a fresh --output"
MUST_MATCH = (  # (compared key, what it is, key shown, what to do)
    ("topic", "topic", "topic", "use the state directory made for this topic"),
    ("window_us", "window", "window", f"changing the window length {FRESH}"),
    (
        "allowed_lateness_us",
        "allowed lateness",
        "allowed_lateness",
        f"windows already final were closed under the old lateness; changing it {FRESH}",
    ),
    (
        "outcome_horizon_us",
        "outcome horizon",
        "outcome_horizon",
        f"outcome rows already final used the old horizon; changing it {FRESH}",
    ),
    ("shards", "shards", "shards", f"namespaces are split by it; changing it {FRESH}"),
    (
        "rollup_lengths_us",
        "roll-ups",
        "rollups",
        f"roll-up windows already final were made with the old list; changing it {FRESH}",
    ),
    ("output", "output", "output", "use the state directory made for this output"),
)


class StateError(RuntimeError):
    """The state directory cannot be used with these settings."""


def state_meta(settings: Settings) -> dict[str, object]:
    return {
        "format": STATE_FORMAT,
        "topic": settings.topic,
        "window": settings.window,
        "window_us": settings.window_us,
        "allowed_lateness": settings.allowed_lateness,
        "outcome_horizon": settings.outcome_horizon,
        "outcome_horizon_us": settings.outcome_horizon_us,
        "allowed_lateness_us": settings.lateness_us,
        "shards": settings.shards,
        "rollups": ",".join(duration_label(n) for n in settings.rollup_lengths_us),
        "rollup_lengths_us": list(settings.rollup_lengths_us),
        "output": settings.output,
    }


class StateDir:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.recovery = self.path / "recovery"

    @contextlib.contextmanager
    def locked(self, process_id: int | None) -> Iterator[None]:
        """Hold the run lock, or raise StateError if another run holds it.

        A single-process run holds ``.lock`` alone. Each process of a cluster shares
        ``.lock`` with the other processes and holds ``.lock-<process id>`` alone.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            shared = process_id is not None
            self._flock(stack, ".lock", fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            if shared:
                self._flock(stack, f".lock-{process_id}", fcntl.LOCK_EX)
            yield

    def _flock(self, stack: contextlib.ExitStack, name: str, mode: int) -> None:
        handle = stack.enter_context(open(self.path / name, "a"))  # noqa: SIM115
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError(
                f"another run is using the state directory {self.path}; "
                "wait for it to finish (runs of one job must not overlap)"
            ) from None
        stack.callback(fcntl.flock, handle, fcntl.LOCK_UN)

    def prepare(self, settings: Settings) -> None:
        """Check the state belongs to these settings (or create it).

        Processes of a cluster may start together on a shared state directory: one at a
        time does this.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".prepare.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._prepare(settings)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _prepare(self, settings: Settings) -> None:
        meta_file = self.path / META
        want = state_meta(settings)
        if meta_file.exists():
            try:
                have = json.loads(meta_file.read_text())
            except ValueError:
                raise StateError(f"{meta_file} is not readable JSON") from None
            if have.get("format") != STATE_FORMAT:
                raise StateError(
                    f"state in {self.path} has format {have.get('format')}, this version uses "
                    f"{STATE_FORMAT}; start with a fresh --state and --output"
                )
            for key, label, shown, hint in MUST_MATCH:
                if have.get(key) != want[key]:
                    raise StateError(
                        f"state in {self.path} was made for {label} "
                        f"{have.get(shown, have.get(key))!r}, not {want[shown]!r}: {hint}"
                    )
        elif self.recovery.exists() and any(self.recovery.iterdir()):
            raise StateError(
                f"{self.path} holds recovery data but no {META}: it was not made by this "
                "version; start with a fresh --state and --output"
            )
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            meta_file.write_text(json.dumps(want, indent=2))
        if not self.recovery.exists():
            self.recovery.mkdir(parents=True)
            init_db_dir(self.recovery, RECOVERY_PARTITIONS)
