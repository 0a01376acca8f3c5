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


NAMESPACE_FIELD = _f(
    "namespace",
    pa.string(),
    "Game namespace the events belong to (envelope `namespace`).",
    False,
    combine="key",
)
DATE_FIELD = _f("date", pa.date32(), "UTC date of `window_start`.", False, combine="first")

RATES_PARTITION_SCHEMA = pa.schema([NAMESPACE_FIELD, DATE_FIELD])
"""The two columns of a windowed dataset that are not measures of the window: the namespace
and the UTC date of ``window_start``. Where each is stored depends on the layout (below)."""

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
"""What a reader of ``party_rates/`` sees: namespace and date first, then the measures."""


def __getattr__(name: str) -> Any:
    # The partitionings, built on first use: pyarrow.dataset is slow to import and the job
    # itself does not need it.
    fields = {
        "RATES_PARTITIONING": RATES_PARTITION_SCHEMA,  # format 1: namespace=/date= directories
        "DATE_PARTITIONING": pa.schema([DATE_FIELD]),  # format 2, shorter windows: date=
    }
    if name not in fields:
        raise AttributeError(name)
    import pyarrow.dataset as ds

    return ds.partitioning(fields[name], flavor="hive")


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


# --- the layout ---------------------------------------------------------------------------

OUTPUT_FORMAT = 2
"""The layout of the output, recorded in its ``_table.json`` (``format``); an output without
one is in format 1.

* **1**: one Parquet file per ``namespace=<ns>/date=<YYYY-MM-DD>/`` directory of each windowed
  dataset (``RATES_FILE_SCHEMA`` or ``OUTCOMES_FILE_SCHEMA``: namespace and date in the path).
* **2**: the number of files grows with days, not with namespaces. A dataset of windows
  shorter than a day has one file per UTC date, ``<dataset>/date=<YYYY-MM-DD>/part-0.parquet``
  (the date in the path, the namespace a column); one of windows of a day or longer (the day
  roll-ups) one file per UTC month of ``window_start``,
  ``<dataset>/month=<YYYY-MM>/part-0.parquet`` (namespace and date both columns). Rows are
  sorted by (namespace, window_start); a row group holds whole namespaces (about
  :data:`ROW_GROUP_ROWS` rows), so a reader filtering on ``namespace`` reads only the row
  group its statistics point to.
"""

DAY_US = 86_400_000_000
ROW_GROUP_ROWS = 2048
"""Rows a row group of a windowed dataset grows to before the next namespace starts a new one."""

DATA_FILE = "part-0.parquet"


def monthly(window_us: int) -> bool:
    """Whether a dataset of windows this long has one file per month (else one per date)."""
    return window_us >= DAY_US


def window_file_schema(measures: pa.Schema, window_us: int) -> pa.Schema:
    """The columns of a format-2 file of a windowed dataset: the namespace, the date too in a
    monthly file (a daily file has it in its path), then ``measures``."""
    keys = [NAMESPACE_FIELD, DATE_FIELD] if monthly(window_us) else [NAMESPACE_FIELD]
    return pa.schema(keys + list(measures))


def window_dir(window_us: int, day: Any) -> str:
    """The partition directory of a format-2 file: ``date=YYYY-MM-DD`` or ``month=YYYY-MM``."""
    if monthly(window_us):
        return f"month={day.year:04d}-{day.month:02d}"
    return f"date={day.isoformat()}"


# --- folded run manifests -----------------------------------------------------------------

RUNS_ARCHIVE_SCHEMA = pa.schema(
    [
        _f("run_id", pa.string(), "The run's id (its manifest's `run_id`).", False),
        _f("started_at", pa.string(), "The manifest's `started_at` (ISO 8601, UTC).", False),
        _f("manifest", pa.string(), "The run's whole manifest, as JSON.", False),
    ]
)
"""``_runs/archive/<YYYY-MM>.parquet``: the manifests of the runs that started in that UTC
month and are older than ``--retain``, folded into one file (one row per run)."""


RUNS_ARCHIVE_DIR = "_runs/archive"


def runs_archive(started_at: str) -> str:
    """The archive file (relative to the output) of a run that started at ``started_at``."""
    return f"{RUNS_ARCHIVE_DIR}/{started_at[:7]}.parquet"
