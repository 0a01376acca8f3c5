"""Durations as the job's settings and its roll-up datasets write them: ``30s``, ``5m``,
``1h``, ``1d`` (or whole seconds), kept in microseconds.

The roll-up datasets are named by them (``party_rates_1h``), so the job and the readers of
its output share this one parser. Standard library only.
"""

from __future__ import annotations

import re

US_PER_S = 1_000_000
_UNITS = {
    "ms": 1_000,
    "s": US_PER_S,
    None: US_PER_S,
    "m": 60 * US_PER_S,
    "h": 3600 * US_PER_S,
    "d": 86400 * US_PER_S,
}

DEFAULT_OUTCOME_HORIZON_US = 3600 * US_PER_S
"""The outcome horizon when none is given (1 h): how long after a disconnect its rejoin or
drop is looked for, so how long after its window an outcome row becomes final."""


def parse_duration_us(text: str) -> int:
    """Parse ``90s``, ``5m``, ``1h``, ``1d`` or plain seconds into microseconds."""
    m = re.fullmatch(r"\s*([0-9]+)\s*(ms|s|m|h|d)?\s*", text)
    if m is None:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m, 1h or 1d")
    return int(m.group(1)) * _UNITS[m.group(2)]


def duration_label(us: int) -> str:
    """The shortest name of a duration: ``1d``, ``1h``, ``90m``, ``45s`` (roll-up datasets
    are named by it: ``party_rates_1h``)."""
    for unit, size in (("d", 86400 * US_PER_S), ("h", 3600 * US_PER_S), ("m", 60 * US_PER_S)):
        if us % size == 0:
            return f"{us // size}{unit}"
    return f"{us / US_PER_S:g}s"


DEFAULT_OUTCOME_HORIZON = duration_label(DEFAULT_OUTCOME_HORIZON_US)
