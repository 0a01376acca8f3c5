"""The output contract: pyarrow schemas of every dataset the job writes, defined once.

Sinks build their tables with these schemas and readers load with them; no schema is
ever inferred from a batch. Each field carries a ``description`` in its metadata, which
is written into the Parquet files and rendered into the data dictionary.

Each column of a windowed dataset (``party_rates``, ``disconnect_outcomes`` and their
roll-ups) also says in its metadata how it combines across windows (``combine``, one of
:data:`COMBINE_KINDS`), and for a ratio or rate the ``formula`` that recomputes it from
the summed counts (``minutes`` is the combined period's length in minutes).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

UTC_US = pa.timestamp("us", tz="UTC")


COMBINE_KINDS = {
    "key": "a key: group by it",
    "first": "the first window's",
    "last": "the last window's",
    "sum": "adds up",
    "all": "true when it is true for every window",
    "recompute": "recompute from the summed counts",
    "distinct": "cannot be combined: a distinct count (a sum counts whoever is in several "
    "windows once per window); read a roll-up",
    "percentile": "cannot be combined: a percentile; read a roll-up",
}
"""How a column of a windowed dataset combines across windows, by ``combine`` kind."""


def _f(
    name: str,
    type_: pa.DataType,
    description: str,
    nullable: bool = True,
    combine: str | None = None,
    formula: str | None = None,
) -> pa.Field:
    metadata = {"description": description}
    if combine is not None:
        if combine not in COMBINE_KINDS or (formula is not None) != (combine == "recompute"):
            raise ValueError(f"{name}: combine {combine!r} with formula {formula!r}")
        metadata["combine"] = combine
    if formula is not None:
        metadata["formula"] = formula
    return pa.field(name, type_, nullable=nullable, metadata=metadata)


RATES_PARTITION_SCHEMA = pa.schema(
    [
        _f(
            "namespace",
            pa.string(),
            "Game namespace the events belong to (envelope `namespace`).",
            combine="key",
        ),
        _f("date", pa.date32(), "UTC date of `window_start`.", combine="first"),
    ]
)
"""Hive partition columns of ``party_rates/``: in the directory names only."""

RATES_FILE_SCHEMA = pa.schema(
    [
        _f(
            "window_start",
            UTC_US,
            "Start of the tumbling event-time window, inclusive.",
            False,
            combine="first",
        ),
        _f("window_end", UTC_US, "End of the window, exclusive.", False, combine="last"),
        _f(
            "disconnected",
            pa.int64(),
            "Distinct PartyDisconnectedEvent in the window.",
            False,
            combine="sum",
        ),
        _f(
            "rejoined",
            pa.int64(),
            "Distinct PartyRejoinedEvent in the window.",
            False,
            combine="sum",
        ),
        _f(
            "dropped", pa.int64(), "Distinct PartyDroppedEvent in the window.", False, combine="sum"
        ),
        _f(
            "rejected",
            pa.int64(),
            "Distinct PartyRejectedEvent (invite rejections).",
            False,
            combine="sum",
        ),
        _f(
            "users_disconnected",
            pa.int64(),
            "Distinct userId among the disconnects.",
            False,
            combine="distinct",
        ),
        _f(
            "parties_affected",
            pa.int64(),
            "Distinct sessionId (party) among disconnected, rejoined and dropped events.",
            False,
            combine="distinct",
        ),
        _f(
            "disconnects_per_min",
            pa.float64(),
            "disconnected / window minutes.",
            False,
            combine="recompute",
            formula="disconnected / minutes",
        ),
        _f(
            "drops_per_min",
            pa.float64(),
            "dropped / window minutes.",
            False,
            combine="recompute",
            formula="dropped / minutes",
        ),
        _f(
            "drop_ratio",
            pa.float64(),
            "dropped / disconnected; null when disconnected is 0.",
            combine="recompute",
            formula="dropped / disconnected",
        ),
        _f(
            "rejoin_ratio",
            pa.float64(),
            "rejoined / disconnected; null when disconnected is 0.",
            combine="recompute",
            formula="rejoined / disconnected",
        ),
        _f(
            "is_final",
            pa.bool_(),
            "True once the watermark passed window_end: the row never changes again. "
            "False: the window was still open when the run stopped; a later run replaces it.",
            False,
            combine="all",
        ),
    ]
)
"""Columns stored in each ``party_rates`` Parquet file."""

RATES_SCHEMA = pa.schema(list(RATES_PARTITION_SCHEMA) + list(RATES_FILE_SCHEMA))
"""What a reader of ``party_rates/`` sees: partition columns first, then the file columns."""


def __getattr__(name: str) -> Any:
    # RATES_PARTITIONING, built on first use: pyarrow.dataset is slow to import and the
    # job itself does not need it.
    if name == "RATES_PARTITIONING":
        import pyarrow.dataset as ds

        return ds.partitioning(RATES_PARTITION_SCHEMA, flavor="hive")
    raise AttributeError(name)


LATE_EVENTS_SCHEMA = pa.schema(
    [
        _f("id", pa.string(), "Event id (envelope `id`).", False),
        _f("namespace", pa.string(), "Event namespace.", False),
        _f("name", pa.string(), "Event name, one of the four counted Party events.", False),
        _f("event_time", UTC_US, "The event's time (timestampUnixNano, else timestamp).", False),
        _f("partition", pa.int32(), "Kafka partition the event was read from.", False),
        _f("offset", pa.int64(), "Kafka offset of the message.", False),
        _f("key", pa.binary(), "Raw message key."),
        _f("value", pa.binary(), "Raw message value, as read."),
    ]
)
"""``late_events/``: counted events that arrived after their window was final."""

DEAD_LETTERS_SCHEMA = pa.schema(
    [
        _f("partition", pa.int32(), "Kafka partition of the message.", False),
        _f("offset", pa.int64(), "Kafka offset of the message.", False),
        _f("key", pa.binary(), "Raw message key."),
        _f("value", pa.binary(), "Raw message value; null for a tombstone."),
        _f("error", pa.string(), "Why the message could not be used.", False),
        _f("seen_at", UTC_US, "Wall-clock time the job first read the message.", False),
    ]
)
"""``dead_letters/``: messages naming a counted event, or unreadable, that could not be used."""

OUTCOMES_FILE_SCHEMA = pa.schema(
    [
        _f(
            "window_start",
            UTC_US,
            "Start of the window the disconnects happened in.",
            False,
            combine="first",
        ),
        _f("window_end", UTC_US, "End of the window, exclusive.", False, combine="last"),
        _f(
            "disconnects",
            pa.int64(),
            "PartyDisconnectedEvent in the window (each opens a disconnect episode).",
            False,
            combine="sum",
        ),
        _f(
            "rejoined",
            pa.int64(),
            "Disconnect episodes whose next outcome was a PartyRejoinedEvent.",
            False,
            combine="sum",
        ),
        _f(
            "dropped",
            pa.int64(),
            "Disconnect episodes whose next outcome was a PartyDroppedEvent.",
            False,
            combine="sum",
        ),
        _f(
            "unresolved",
            pa.int64(),
            "Disconnect episodes with no outcome within the outcome horizon (default 1 h).",
            False,
            combine="sum",
        ),
        _f(
            "superseded",
            pa.int64(),
            "Disconnect episodes ended by a second disconnect of the same player before any "
            "outcome.",
            False,
            combine="sum",
        ),
        _f(
            "orphan_outcomes",
            pa.int64(),
            "Rejoins and drops in the window with no open disconnect episode (their disconnect was "
            "before the data kept).",
            False,
            combine="sum",
        ),
        _f(
            "cohort_drop_ratio",
            pa.float64(),
            "dropped / (rejoined + dropped) of this window's disconnects; null when both are 0.",
            combine="recompute",
            formula="dropped / (rejoined + dropped)",
        ),
        _f(
            "rejoin_seconds_p50",
            pa.float64(),
            "Median seconds from disconnect to rejoin (interpolated); null without rejoins.",
            combine="percentile",
        ),
        _f(
            "rejoin_seconds_p95",
            pa.float64(),
            "95th percentile seconds from disconnect to rejoin; null without rejoins.",
            combine="percentile",
        ),
        _f(
            "is_final",
            pa.bool_(),
            "True once the watermark passed window_end plus the outcome horizon: every "
            "disconnect of the window is decided and the row never changes again.",
            False,
            combine="all",
        ),
    ]
)
"""Columns stored in each ``disconnect_outcomes`` Parquet file."""

OUTCOMES_SCHEMA = pa.schema(list(RATES_PARTITION_SCHEMA) + list(OUTCOMES_FILE_SCHEMA))
"""What a reader of ``disconnect_outcomes/`` sees (same partitioning as ``party_rates``)."""

RATES_KEY = ("namespace", "window_start")
LATE_KEY = ("partition", "offset")
DEAD_KEY = ("partition", "offset")
