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
    OUTPUT_FORMAT,
    RATES_KEY,
    RATES_SCHEMA,
    ROW_GROUP_ROWS,
    RUNS_ARCHIVE_SCHEMA,
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
        "What happened to the messages read: "
        "`messages = counted + skipped + duplicates + late + dead_letters + before_start`.",
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
        "Messages an earlier run counted, read again to rebuild a lost state: in no other "
        "count, so `messages = counted + skipped + duplicates + late + dead_letters + "
        "before_start + reread`.",
    ),
    (
        "rebuild",
        "object or null",
        "Why the run rebuilt its state (`reason`), the offsets it found gone from the topic "
        "(`lost`) and the windows it could not complete (`incomplete`); null when it did not.",
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
    (
        "retention",
        "object or absent",
        "What the run's `--retain` removed at its end; absent without `--retain`.",
    ),
    (
        "retention.older_than",
        "string (ISO 8601, UTC)",
        "Files last written before this were folded or deleted (the run's end less the retention).",
    ),
    (
        "retention.manifests_folded",
        "integer",
        "Manifests folded into `_runs/archive/` (and deleted as files of their own).",
    ),
    (
        "retention.late_events_removed",
        "integer",
        "Rows of the `late_events/` files deleted.",
    ),
    (
        "retention.dead_letters_removed",
        "integer",
        "Rows of the `dead_letters/` files deleted.",
    ),
]
"""Fields of ``_runs/<run_id>.json``."""

RECORD_FIELDS: list[tuple[str, str, str]] = [
    (
        "format",
        "integer",
        f"The layout of the output's files: {OUTPUT_FORMAT} (this version's; see above). An "
        "output without a record is in format 1 (one file per `namespace=<ns>/date=` "
        "directory); the first run of this version moves it.",
    ),
    (
        "settings",
        "object",
        "What gives the rows their meaning, fixed for the life of the output: `topic`, "
        "`window_us`, `allowed_lateness_us`, `outcome_horizon_us`, `dedup_horizon_us`, "
        "`start_at`, and the durations as labels (`window`, …).",
    ),
    (
        "rollups",
        "object",
        "Per roll-up length (`1h`, …), the first window start (µs since the epoch) it is "
        "complete from; null: from the beginning.",
    ),
    ("state_id", "string", "The state that writes the output; another one is refused."),
    ("state_format", "integer", "The format of that state."),
    (
        "run_id",
        "string",
        "The run that wrote the record; empty in a record written by a migration of an "
        "output that had none (it claims no rows: `partitions` is empty).",
    ),
    ("written_at", "string (ISO 8601, UTC)", "When the record was written."),
    (
        "closed_until_us, closed_until",
        "integer or null, string or null",
        "Windows ending at or before it are final (outcome windows an outcome horizon "
        "later); µs since the epoch, and as text.",
    ),
    (
        "watermark_us, watermark",
        "integer or null, string or null",
        "The watermark when the record was written.",
    ),
    (
        "partitions",
        "object",
        "Per Kafka partition (key: its number as a string), what the final rows cover.",
    ),
    (
        "partitions.*.end",
        "integer",
        "Every message before this offset is reflected in the output.",
    ),
    ("partitions.*.max_t_us", "integer or null", "The newest event time counted before it."),
    ("partitions.*.origin", "integer", "Where the output began reading the partition."),
    (
        "partitions.*.rebuild, partitions.*.marks, partitions.*.marks_complete",
        "object or null, array, boolean",
        "Where a lost state reads the partition again from.",
    ),
    (
        "incomplete",
        "array of {dataset, from_us, until_us, reason}",
        "Windows (by start, `[from_us, until_us)`) that could not be completed because "
        "their events were gone from the topic when a state was rebuilt: no run writes them.",
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
on (`--rollups`): the same columns, types and guarantees (`date` is the UTC date of the
roll-up window's start), one row per (`namespace`, `window_start`) of the roll-up window.
A roll-up of windows shorter than a day is laid out as `party_rates/` (a file per date);
one of a day or longer (`party_rates_1d/`) has one file per UTC month of `window_start`,
`party_rates_1d/month=<YYYY-MM>/part-0.parquet`, sorted the same way, with `date` a column
of the file (Hive-partitioned readers add the directory's `month` as a column too). Counts
and ratios can also be had by combining the 5-minute windows as above; what only a roll-up
has:

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


def _fields_table(fields: list[tuple[str, str, str]]) -> str:
    lines = ["| field | type | meaning |", "|---|---|---|"]
    for name, type_, meaning in fields:
        shown = ", ".join(f"`{n}`" for n in name.split(", "))
        lines.append(f"| {shown} | {_cell(type_)} | {_cell(meaning)} |")
    return "\n".join(lines)


def _key(columns: tuple[str, ...]) -> str:
    return ", ".join(f"`{c}`" for c in columns)


def render_data_dictionary() -> str:
    """The data dictionary as markdown (ends with one newline)."""
    sections = [
        "# party-rates data dictionary",
        "<!-- Generated from schemas/output.py by `python -m flows.analysis.dictionary`; "
        "do not edit by hand. -->",
        "Everything the job writes under its `--output` directory. Types are Arrow types as "
        "stored in Parquet; timestamps are UTC with microsecond precision. The meaning column "
        "is each field's `description`, which the Parquet files also carry in their schema "
        "metadata.",
        "## `party_rates/`",
        "`party_rates/date=<YYYY-MM-DD>/part-0.parquet` (output format "
        f"{OUTPUT_FORMAT}): one file per UTC date, holding every namespace's windows that "
        f"start on it; one row per ({_key(RATES_KEY)}) in the whole dataset. Rows are sorted "
        "by `namespace`, then `window_start`; a row group holds whole namespaces (about "
        f"{ROW_GROUP_ROWS:,} rows) and its statistics say which, so a reader filtering on "
        "`namespace` (pyarrow and pandas `filters`, DuckDB `WHERE`, Polars `filter`) reads "
        "one row group of each file. `date` is a Hive partition column, in the directory "
        "name only: read the dataset with Hive partitioning (`pandas.read_parquet(dir)`, "
        "`pyarrow.dataset`, DuckDB `hive_partitioning = true`, Polars "
        "`hive_partitioning=True`) and it comes back as a column. (An output of format 1, "
        "written before, had one file per `namespace=<ns>/date=<YYYY-MM-DD>/` directory; "
        "the first run of a version that writes format 2 moves it.)",
        column_table("party_rates", RATES_SCHEMA, ("date",)),
        "### Rate definitions",
        RATE_DEFINITIONS.rstrip("\n"),
        "### Combining windows",
        COMBINING.rstrip("\n"),
        "## `disconnect_outcomes/`",
        "`disconnect_outcomes/date=<YYYY-MM-DD>/part-0.parquet`, laid out like "
        "`party_rates`: one row per (namespace, window of the disconnects). Each "
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
        column_table("disconnect_outcomes", OUTCOMES_SCHEMA, ("date",)),
        "## Roll-ups: `party_rates_<length>/`, `disconnect_outcomes_<length>/`",
        ROLLUPS.rstrip("\n"),
        "## `late_events/`",
        "Events of the four counted names that came too late to be counted: more than the "
        "allowed lateness behind the newest event already read from their partition, so their "
        "window may already be final. They are in none of the `party_rates` counts. "
        f"One row per Kafka message ({_key(LATE_KEY)}), in one file per Kafka partition "
        "and block of 10,000,000 offsets (`p<partition>-b<block>.parquet`); with "
        "`--retain AGE`, a file not written to for AGE is deleted.",
        column_table("late_events", LATE_EVENTS_SCHEMA),
        "## `dead_letters/`",
        "Messages that name a counted event, or do not even look like a JSON object, but "
        "cannot be used (not JSON, invalid UTF-8, not an object, no namespace, no event id, no "
        "usable event time, wrong field types, tombstones). "
        f"One row per Kafka message ({_key(DEAD_KEY)}), in files laid out and "
        "kept as those of `late_events/`.",
        column_table("dead_letters", DEAD_LETTERS_SCHEMA),
        "## `_runs/<run_id>.json`",
        "One JSON manifest per run. Every message read is in exactly one manifest's counts.",
        _fields_table(MANIFEST_FIELDS),
        "## `_runs/archive/<YYYY-MM>.parquet`",
        "With `--retain AGE`, the manifests last written more than AGE ago are folded into "
        "one file per UTC month of their start, one row per run, and their own files "
        "deleted; `flows.analysis.load_manifests` reads both (the current run's manifest is "
        "never folded).",
        column_table("runs_archive", RUNS_ARCHIVE_SCHEMA),
        "## `_table.json`",
        "The output's own record, rewritten by every run that ends having written all it "
        "read, after the rows it describes (README, Upgrading and recovery).",
        _fields_table(RECORD_FIELDS),
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
