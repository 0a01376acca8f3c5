"""The data dictionary, generated from the output schemas.

``python -m flows.analysis.dictionary`` prints it; ``docs/data_dictionary.md`` is this text, and a
test fails when the two differ, so the schemas and the dictionary always agree. Column
meanings come from each field's ``description`` metadata (the same text is in the Parquet
files); how each column of a windowed dataset combines across windows comes from its
``combine`` (and ``formula``) metadata; units and null rules are kept here, next to the
manifest fields.
"""

from __future__ import annotations

import sys

import pyarrow as pa

from flows.analysis.incidents import INCIDENT_COLUMNS
from schemas.output import (
    COMBINE_KINDS,
    DEAD_KEY,
    DEAD_LETTERS_SCHEMA,
    LATE_EVENTS_SCHEMA,
    LATE_KEY,
    OUTCOMES_SCHEMA,
    RATES_KEY,
    RATES_PARTITION_SCHEMA,
    RATES_SCHEMA,
)

UNITS: dict[str, str] = {
    "namespace": "—",
    "date": "UTC calendar day",
    "window_start": "instant, UTC, microseconds",
    "window_end": "instant, UTC, microseconds",
    "disconnected": "events",
    "rejoined": "events",
    "dropped": "events",
    "rejected": "events",
    "users_disconnected": "users",
    "parties_affected": "parties",
    "disconnects_per_min": "events per minute",
    "drops_per_min": "events per minute",
    "drop_ratio": "ratio (drops per disconnect)",
    "rejoin_ratio": "ratio (rejoins per disconnect)",
    "is_final": "—",
    "id": "—",
    "name": "—",
    "event_time": "instant, UTC, microseconds",
    "partition": "Kafka partition number",
    "offset": "Kafka offset",
    "key": "bytes",
    "value": "bytes",
    "error": "—",
    "seen_at": "instant, UTC, microseconds",
    "disconnects": "disconnect episodes (disconnect events)",
    "unresolved": "disconnect episodes",
    "superseded": "disconnect episodes",
    "orphan_outcomes": "events",
    "cohort_drop_ratio": "ratio (drops per decided disconnect episode)",
    "rejoin_seconds_p50": "seconds",
    "rejoin_seconds_p95": "seconds",
}
"""Unit of every output column, by column name (a name means the same in every dataset)."""

NULL_RULES: dict[tuple[str, str], str] = {
    ("party_rates", "drop_ratio"): "null when `disconnected` is 0",
    ("party_rates", "rejoin_ratio"): "null when `disconnected` is 0",
    ("disconnect_outcomes", "cohort_drop_ratio"): "null when `rejoined + dropped` is 0",
    ("disconnect_outcomes", "rejoin_seconds_p50"): "null when `rejoined` is 0",
    ("disconnect_outcomes", "rejoin_seconds_p95"): "null when `rejoined` is 0",
    ("late_events", "key"): "null when the message has no key",
    ("late_events", "value"): "nullable in the schema; always set (the event was read from it)",
    ("dead_letters", "key"): "null when the message has no key",
    ("dead_letters", "value"): "null for a tombstone (a message without a value)",
}
"""When a nullable column is null; a nullable column without an entry says "may be null"."""

NEVER_NULL = "never null"

MANIFEST_FIELDS: list[tuple[str, str, str]] = [
    ("run_id", "string", "Id of the run (`--run-id`, default start time + random); the file name."),
    (
        "started_at",
        "string (ISO 8601, UTC)",
        "When the run's manifest was begun, once the dataflow was running (its first "
        "messages can have been read a moment earlier).",
    ),
    (
        "ended_at",
        "string (ISO 8601, UTC) or null",
        "When the run ended; null while a `--follow` run is running.",
    ),
    (
        "status",
        "string",
        "`completed`; `interrupted` for a run that was killed (written by the next run); "
        "`running` while a `--follow` run writes it every flush interval.",
    ),
    (
        "settings",
        "object",
        "The settings the run used (every flag); secret librdkafka values are `***`.",
    ),
    (
        "partitions",
        "object",
        "Per Kafka partition (key: the partition number as a string), the offsets read.",
    ),
    (
        "partitions.*.from",
        "integer",
        "First offset this run read (where the previous run stopped).",
    ),
    ("partitions.*.to", "integer", "Offset after the last one read (exclusive)."),
    (
        "partitions.*.end",
        "integer or null",
        "End offset the run read up to (the partition's end when the run started); "
        "null when following.",
    ),
    (
        "counts",
        "object",
        "What happened to the messages read: `messages = counted + skipped + duplicates + "
        "late + dead_letters + before_start + reread`.",
    ),
    ("counts.messages", "integer", "Messages read."),
    ("counts.counted", "integer", "Events of the four Party names counted in a window."),
    (
        "counts.skipped",
        "integer",
        "Messages that name none of the four events (not parsed; most of the topic).",
    ),
    ("counts.duplicates", "integer", "Events whose id was already seen in their partition."),
    ("counts.late", "integer", "Events too late to count; they are in `late_events/`."),
    ("counts.dead_letters", "integer", "Unusable messages; they are in `dead_letters/`."),
    (
        "counts.before_start",
        "integer",
        "Events older than the state's start (`--start-at`): read, not counted. "
        "Absent from manifests written before it existed.",
    ),
    (
        "counts.reread",
        "integer",
        "Messages an earlier run counted, read again to rebuild a lost or changed state: "
        "counted there, not here (each message is in one manifest's other counts). Absent "
        "from manifests written before it existed.",
    ),
    (
        "rebuild",
        "object or null",
        "Why this run rebuilt its state from the output's record (`reason`), the offsets it "
        "found gone from the topic (`lost`), and the windows it could not complete "
        "(`incomplete`, as in `_table.json`); null when it did not rebuild.",
    ),
    (
        "gaps",
        "array of {partition, detail}",
        "Offsets that could not be read: lost to retention, or a saved offset past the end "
        "(topic recreated). Empty when every offset was read.",
    ),
    (
        "group_commit_error",
        "string or null",
        "Why committing read positions to the consumer group failed, if it did (the run "
        "went on); null otherwise. Absent from manifests written before it existed.",
    ),
]
"""Fields of ``_runs/<run_id>.json``."""

RECORD_FIELDS: list[tuple[str, str, str]] = [
    ("format", "integer", "Format of the output (its layout): 1, the layout above."),
    (
        "settings",
        "object",
        "The settings that give the rows their meaning, fixed for the life of the output: "
        "`topic`, `window`, `allowed_lateness`, `outcome_horizon`, `dedup_horizon` (each also "
        "in microseconds, `…_us`) and `start_at`. A run with another value is refused.",
    ),
    (
        "rollups",
        "object",
        "Each roll-up length the output holds (`1h`, `1d`, …) and the first window start it is "
        "complete from (null: from the beginning; later for a length added to an existing "
        "output, whose older windows stay absent).",
    ),
    ("state_id", "string", "The state that writes the output: another one is refused."),
    ("state_format", "integer", "Format of that state when the record was written."),
    ("run_id", "string", "The run that wrote the record."),
    ("written_at", "string (ISO 8601, UTC)", "When the record was written."),
    (
        "closed_until",
        "string (RFC 3339, UTC) or null",
        "Windows ending at or before it are final (outcome windows an outcome horizon "
        "later); `closed_until_us` in microseconds. Null while no window is final.",
    ),
    (
        "watermark",
        "string (RFC 3339, UTC) or null",
        "The watermark the final rows were made under; `watermark_us` in microseconds.",
    ),
    (
        "partitions.*.end",
        "integer",
        "Per Kafka partition: every message before this offset is reflected in the output.",
    ),
    (
        "partitions.*.max_t_us",
        "integer or null",
        "The newest event time (microseconds) counted in the partition before `end`.",
    ),
    (
        "partitions.*.origin",
        "integer",
        "The offset where the output began reading the partition.",
    ),
    (
        "partitions.*.rebuild",
        "object or null",
        "Where a lost state reads the partition again from: `offset`, `max_before` (the "
        "newest event time before it) and `exact_from` (from there every decision is the lost "
        "state's); null: from `origin`.",
    ),
    (
        "partitions.*.marks",
        "array of [bucket, offset, max before]",
        "Where the partition's newest event time entered each window-length bucket since "
        "`rebuild`: tells how much a trimmed topic lost.",
    ),
    (
        "incomplete",
        "array of {dataset, from_us, until_us, reason}",
        "Windows (their starts in `[from_us, until_us)`) that could not be completed: their "
        "events were gone from the topic when a state was rebuilt, or they began before a "
        "roll-up length was added. No run writes them; a row the output held stays as it was.",
    ),
]
"""Fields of ``_table.json``."""

RATE_DEFINITIONS = """\
- `disconnects_per_min` = `disconnected` ÷ window length in minutes; `drops_per_min` likewise.
- `drop_ratio` = `dropped` ÷ `disconnected` of the **same** window; `rejoin_ratio` =
  `rejoined` ÷ `disconnected`. Both are null when `disconnected` is 0.
- **Edge bias.** A drop arrives an inactive timeout (one to a few minutes) after its
  disconnect, so a window counts drops of disconnects from earlier windows and misses drops
  of its own late disconnects. The ratio of one window is biased and can exceed 1. Read it
  over many windows: sum `dropped` and `disconnected` over the period, then divide.
- `PartyRejectedEvent` (`rejected`) is an invitation being rejected, not a connection
  problem. It is reported beside the other counts and is in none of the ratios.
- `is_final` false marks a window still open when the last run stopped: a later run
  replaces the row. Rankings and totals should use final rows.
"""

COMBINING = """\
The last column of the `party_rates` and `disconnect_outcomes` tables says how a column
combines when windows are put together into hours, days or weeks
(`flows.analysis.combine_windows` applies it):

- **Adds up**: the counts. A day's `dropped` is the sum of its windows' `dropped`.
- **Recompute from the summed counts**: the ratios and the rates per minute. A day's drop
  ratio is its summed `dropped` ÷ its summed `disconnected` (`minutes` is the period's
  length in minutes); an average of the windows' ratios is not it.
- **Cannot be combined**: the distinct counts `users_disconnected` and `parties_affected`
  (a player who disconnected in ten windows is in each of them: the sum counts them ten
  times) and the percentiles `rejoin_seconds_p50` and `rejoin_seconds_p95`. Read these from
  a roll-up of the length you need (below): "how many players were hit today" is
  `users_disconnected` of `party_rates_1d`.
"""

ROLLUPS = """\
`party_rates_<length>/` and `disconnect_outcomes_<length>/` (`party_rates_1h/`,
`party_rates_1d/`, `disconnect_outcomes_1h/`, `disconnect_outcomes_1d/`, …) are the same
datasets over longer windows, written by the job beside the 5-minute ones when roll-ups are
on (`--rollups`): the same columns, types, partitioning (`date` is the UTC date of the
roll-up window's start) and guarantees, one row per (`namespace`, `window_start`) of the
roll-up window. Counts and ratios can also be had by combining the 5-minute windows as
above; what only a roll-up has:

- `users_disconnected` and `parties_affected` are the distinct users and parties of the
  whole roll-up window, each counted once however many of its windows they are in.
- `rejoin_seconds_p50` and `rejoin_seconds_p95` are percentiles of all the roll-up window's
  rejoins, computed over every rejoin time (exact, interpolated as in the 5-minute rows).
- `is_final` means the same as in the 5-minute datasets, at the roll-up window's end: a
  day's row stays provisional until the watermark passes the day's end (for
  `disconnect_outcomes_1d`, the day's end plus the outcome horizon).

Read them with `flows.analysis.load_party_rates(output, rollup="1d")` and
`load_disconnect_outcomes(output, rollup="1h")` (an empty frame when the output has none);
`flows.analysis.rollup_lengths(output)` lists the lengths an output has.
"""


INCIDENTS = """\
Not a dataset the job writes: the table `flows.analysis.find_incidents(outcomes)` returns,
computed from the final rows of `disconnect_outcomes`; the report and the notebook open
with it, and `party-rates demo` and `party-rates report` print it, one line per incident
(`flows.analysis.describe_incidents`). An incident is a stretch of windows in which one
namespace dropped a significantly larger share of its disconnects than it usually does.

- **Ratio read**: the cohort drop ratio, `dropped ÷ (rejoined + dropped)` of the final
  `disconnect_outcomes` windows, which counts each outcome in the window of its disconnect.
  The window `drop_ratio` of `party_rates` is not used: its drops land an inactive timeout
  after their disconnects, which would shift an incident's start and end. A row is final an
  outcome horizon after its window, so the newest hour or so is not searched yet.
- **Test**: every one-hour stretch of every namespace, starting on each UTC half hour, is
  tested against the namespace's own **baseline**: its cohort drop ratio over its other
  final windows, leaving out the half hours within an hour of the stretch and the incidents
  already found. The test is one-sided: the exact binomial upper tail
  P(X ≥ dropped ÷ φ) for decided ÷ φ trials at the baseline ratio.
- **Unit treated as independent**: the decided disconnect (rejoined or dropped), corrected
  for dependence by the dispersion φ (quasi-binomial): a flapping player's several
  disconnects are not independent, so φ (Pearson χ² of the baseline's half-hour blocks ÷
  their number less one, at least 1) scales the counts down. Half-hour blocks are taken as
  independent given the baseline.
- **Significance**: the Benjamini-Hochberg procedure over all namespaces and stretches at
  once keeps the false discovery rate at `fdr` (1% by default). A stretch is flagged when
  its adjusted p-value is at most `fdr` and its drop ratio is at least `min_strength`
  (1.5) times the baseline.
- **Start and end**: flagged stretches of a namespace that overlap or touch form one
  incident; its start and end are the run of windows, within the flagged stretches and an
  hour either side, that maximises the binomial log-likelihood ratio of "its own ratio
  inside, the baseline outside". The baselines are then re-estimated without the incidents
  and the search repeated until the incidents stop changing.

One row per incident, strongest first (by `strength`, then `namespace`). Types are the
pandas dtypes of a non-empty table (an empty one has the same columns); no column is null.
"""

INCIDENT_FIELDS: dict[str, tuple[str, str, str]] = {
    "namespace": ("`str`", "—", "The namespace (game) the incident is in."),
    "start": (
        "`datetime64` (UTC)",
        "instant, UTC",
        "`window_start` of the incident's first window.",
    ),
    "end": (
        "`datetime64` (UTC)",
        "instant, UTC",
        "`window_end` of the incident's last window (exclusive).",
    ),
    "windows": ("`int64`", "windows", "Windows from `start` to `end`, empty ones included."),
    "disconnects": (
        "`int64`",
        "disconnect episodes (disconnect events)",
        "`disconnects` of the namespace's final windows in the incident, summed.",
    ),
    "decided": (
        "`int64`",
        "disconnect episodes",
        "`rejoined + dropped` of those windows: the disconnects with a known outcome.",
    ),
    "dropped": ("`int64`", "disconnect episodes", "`dropped` of those windows."),
    "drop_ratio": (
        "`float64`",
        "ratio (drops per decided disconnect episode)",
        "The incident's cohort drop ratio, `dropped ÷ decided`.",
    ),
    "baseline": (
        "`float64`",
        "ratio (drops per decided disconnect episode)",
        "The namespace's usual cohort drop ratio: `(dropped + 0.5) ÷ (decided + 1)` over its "
        "final windows outside the incident, the half hours within an hour of it and its "
        "other incidents (never exactly 0 or 1).",
    ),
    "strength": (
        "`float64`",
        "times the baseline",
        "`drop_ratio ÷ baseline` (4.0: four times the usual share dropped); at least "
        "`min_strength`.",
    ),
    "excess_drops": (
        "`float64`",
        "disconnect episodes",
        "`dropped - decided * baseline`: the drops beyond the usual share.",
    ),
    "z": (
        "`float64`",
        "standard errors",
        "`excess_drops ÷ sqrt(dispersion * decided * baseline * (1 - baseline))`: the excess "
        "in quasi-binomial standard errors.",
    ),
    "q_value": (
        "`float64`",
        "probability",
        "The smallest Benjamini-Hochberg adjusted p-value of the incident's flagged one-hour "
        "stretches (at most `fdr`).",
    ),
    "dispersion": (
        "`float64`",
        "— (at least 1)",
        "φ of the namespace's baseline around the incident: how much more its drop counts "
        "vary between half hours than independent disconnects would (1: not at all).",
    ),
}
"""Columns of :func:`flows.analysis.find_incidents`: (type, unit, meaning), in its order."""

INCIDENT_ATTRS: list[tuple[str, str]] = [
    (
        "searched_from",
        "`pandas.Timestamp` (UTC) or `None`: start of the first final window searched; "
        "`None` when there was no final row to search.",
    ),
    (
        "searched_to",
        "`pandas.Timestamp` (UTC) or `None`: end of the last final window searched.",
    ),
    ("tests", "`int`: one-hour stretches tested (in the search's last round)."),
    ("fdr", "`float`: the false discovery rate used (default 0.01)."),
    ("min_strength", "`float`: the smallest `strength` that counts (default 1.5)."),
]
"""The ``attrs`` of the :func:`flows.analysis.find_incidents` table."""


def _incident_tables() -> str:
    if list(INCIDENT_FIELDS) != list(INCIDENT_COLUMNS):
        raise ValueError(
            f"INCIDENT_FIELDS {list(INCIDENT_FIELDS)} differ from INCIDENT_COLUMNS "
            f"{list(INCIDENT_COLUMNS)}"
        )
    lines = ["| column | type | unit | meaning |", "|---|---|---|---|"]
    for name, (type_, unit, meaning) in INCIDENT_FIELDS.items():
        lines.append(f"| `{name}` | {_cell(type_)} | {_cell(unit)} | {_cell(meaning)} |")
    lines += ["", "The table's `attrs` say what was searched:", ""]
    lines += ["| attr | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {_cell(meaning)} |" for name, meaning in INCIDENT_ATTRS]
    return "\n".join(lines)


def _type(t: pa.DataType) -> str:
    return str(t)


def _null_rule(dataset: str, field: pa.Field, in_path: bool) -> str:
    if in_path:
        return f"{NEVER_NULL} (from the directory name)"
    if not field.nullable:
        return NEVER_NULL
    return NULL_RULES.get((dataset, field.name), "may be null")


def _description(field: pa.Field) -> str:
    meta = field.metadata or {}
    return meta.get(b"description", b"").decode("utf-8")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def combine_text(field: pa.Field) -> str:
    """How a windowed column combines across windows, from its ``combine`` metadata."""
    meta = field.metadata or {}
    kind = meta.get(b"combine", b"").decode("utf-8")
    if not kind:
        return "—"
    text = COMBINE_KINDS[kind]
    if kind == "recompute":
        return f"{text}: `{meta[b'formula'].decode('utf-8')}`"
    return text


def column_table(dataset: str, schema: pa.Schema, in_path: tuple[str, ...] = ()) -> str:
    """A markdown table of ``schema``'s columns: type, unit, null rule, meaning, and for a
    windowed dataset how each column combines across windows."""
    windowed = any(b"combine" in (f.metadata or {}) for f in schema)
    header = "| column | type | unit | null | meaning |"
    if windowed:
        header += " across windows |"
    lines = [header, "|---|---|---|---|---|" + ("---|" if windowed else "")]
    for field in schema:
        name = f"`{field.name}`" + (" (in the path)" if field.name in in_path else "")
        unit = UNITS.get(field.name, "—")
        null = _null_rule(dataset, field, field.name in in_path)
        row = [name, f"`{_type(field.type)}`", unit, null]
        row.append(_description(field))
        if windowed:
            row.append(combine_text(field))
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def _field_table(fields: list[tuple[str, str, str]]) -> str:
    lines = ["| field | type | meaning |", "|---|---|---|"]
    for name, type_, meaning in fields:
        lines.append(f"| `{name}` | {_cell(type_)} | {_cell(meaning)} |")
    return "\n".join(lines)


def _key(columns: tuple[str, ...]) -> str:
    return ", ".join(f"`{c}`" for c in columns)


def render_data_dictionary() -> str:
    """The data dictionary as markdown (ends with one newline)."""
    partition_columns = tuple(f.name for f in RATES_PARTITION_SCHEMA)
    sections = [
        "# party-rates data dictionary",
        "<!-- Generated from schemas/output.py by `python -m flows.analysis.dictionary`; "
        "do not edit by hand. -->",
        "Everything the job writes under its `--output` directory. Types are Arrow types as "
        "stored in Parquet; timestamps are UTC with microsecond precision. The meaning column "
        "is each field's `description`, which the Parquet files also carry in their schema "
        "metadata.",
        "## `party_rates/`",
        "`party_rates/namespace=<ns>/date=<YYYY-MM-DD>/part-0.parquet`: one row per "
        f"({_key(RATES_KEY)}) in the whole dataset. "
        f"{_key(partition_columns)} are Hive partition columns, in the directory names only, "
        "URI-encoded (`../x` is `namespace=..%2Fx`): read the dataset with Hive partitioning "
        "(`pandas.read_parquet(dir)`, `pyarrow.dataset`, DuckDB `hive_partitioning=true`) "
        "and they come back as columns, decoded.",
        column_table("party_rates", RATES_SCHEMA, partition_columns),
        "### Rate definitions",
        RATE_DEFINITIONS.rstrip("\n"),
        "### Combining windows",
        COMBINING.rstrip("\n"),
        "## `disconnect_outcomes/`",
        "`disconnect_outcomes/namespace=<ns>/date=<YYYY-MM-DD>/part-0.parquet`, partitioned "
        "like `party_rates`: one row per (namespace, window of the disconnects). Each "
        "PartyDisconnectedEvent opens a disconnect episode for its (namespace, sessionId, "
        "userId); the player's next PartyRejoinedEvent or PartyDroppedEvent at or after it, "
        "within the outcome horizon (`--outcome-horizon`, default 1 h), resolves it. A second "
        "disconnect before any outcome supersedes the first; an outcome with no open episode "
        "is an orphan (counted in the window of the outcome); an episode with no outcome "
        "within the horizon is unresolved. (An *incident* is something else: a stretch of a "
        "namespace's windows, below.) Events are matched in event-time order, so the order they "
        "arrive in does not matter. `disconnects = rejoined + dropped + unresolved + "
        "superseded` once a row is final (an outcome horizon after `window_end`). "
        "`cohort_drop_ratio` is the unbiased counterpart of `party_rates.drop_ratio`: it "
        "follows this window's own disconnects to their outcome.",
        column_table("disconnect_outcomes", OUTCOMES_SCHEMA, partition_columns),
        "## Roll-ups: `party_rates_<length>/`, `disconnect_outcomes_<length>/`",
        ROLLUPS.rstrip("\n"),
        "## `late_events/`",
        "Events of the four counted names that came too late to be counted: more than the "
        "allowed lateness behind the newest event already read from their partition, so their "
        "window may already be final. They are in none of the `party_rates` counts. "
        f"One row per Kafka message ({_key(LATE_KEY)}).",
        column_table("late_events", LATE_EVENTS_SCHEMA),
        "## `dead_letters/`",
        "Messages that name a counted event, or do not even look like a JSON object, but "
        "cannot be used (not JSON, invalid UTF-8, not an object, no namespace, no event id, no "
        "usable event time, wrong field types, tombstones). "
        f"One row per Kafka message ({_key(DEAD_KEY)}).",
        column_table("dead_letters", DEAD_LETTERS_SCHEMA),
        "## `_runs/<run_id>.json`",
        "One JSON manifest per run. Every message read is in exactly one manifest's counts.",
        _field_table(MANIFEST_FIELDS),
        "## `_table.json`",
        "The output's own record: what the table is, the state that writes it and what its "
        "final rows cover. Rewritten by every run that ends having written all it read, after "
        "the rows it describes (see the README, Upgrading and recovery).",
        _field_table(RECORD_FIELDS),
        "## Incidents (`flows.analysis.find_incidents`)",
        INCIDENTS.rstrip("\n"),
        _incident_tables(),
    ]
    return "\n\n".join(sections) + "\n"


def main() -> int:
    sys.stdout.write(render_data_dictionary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
