"""The output's own record, ``_table.json``: what the table is and what its final rows cover.

The output outlives the state. Its record says:

* what the table is: the output format, the settings that give its rows their meaning
  (topic, window, allowed lateness, outcome horizon, dedup horizon, start) and the roll-up
  lengths it holds, each from when;
* which state writes it (``state_id``): another state that has run before is refused;
* what its final rows cover: the watermark and its window boundary (``closed_until``:
  windows ending at or before it are final), and per partition the read position, the
  newest event time reached and where a state would be rebuilt from (flows.core.coverage);
* the windows that could not be completed (their data was gone from the topic when a state
  was rebuilt): no run writes them.

A run writes the record when it ends, after every row it describes is written (one file
cannot be written atomically with others, locally or on S3): a crash leaves the previous
record, which claims less than the rows hold, never more. Every run checks its settings
against it, and never writes a row the record says is final (nor one of a window it says
is incomplete), so no run can make the table say less.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from flows.core.coverage import (
    Mark,
    Start,
    Window,
    affected_until,
    floor_of,
    max_before,
    rebuild_start,
    replay_time,
)
from flows.core.eventtime import duration_label, format_us
from flows.edges.storage import Storage
from flows.errors import ConflictError
from schemas.output import OUTPUT_FORMAT

RECORD = "_table.json"
OLD_FORMAT = 1
"""The format of an output without a record: one file per ``namespace=/date=`` directory."""

MEANING = (  # (key, shown as, flag)
    ("topic", "topic", "--topic"),
    ("window_us", "window", "--window"),
    ("allowed_lateness_us", "allowed lateness", "--allowed-lateness"),
    ("outcome_horizon_us", "outcome horizon", "--outcome-horizon"),
    ("dedup_horizon_us", "dedup horizon", "--dedup-horizon"),
    ("start_at", "start", "--start-at"),
)
"""The settings that give the rows their meaning: fixed for the life of an output."""


class TableError(ConflictError):
    """The output cannot be written by this run: its record says why, in one line."""


@dataclass
class PartitionCover:
    """What the final rows cover of one partition."""

    end: int  # every message before this offset is reflected in the output
    max_t_us: int | None  # the newest event time counted before ``end``
    origin: int  # where the table began reading the partition
    rebuild: Start | None  # where a lost state reads the partition again from
    marks: list[Mark]  # the marks from ``rebuild`` on (flows.core.coverage)
    marks_complete: bool

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PartitionCover:
        rebuild = d.get("rebuild")
        return cls(
            int(d["end"]),
            d.get("max_t_us"),
            int(d.get("origin", 0)),
            Start(rebuild["offset"], rebuild["max_before"], rebuild["exact_from"])
            if rebuild
            else None,
            [(int(b), int(o), m) for b, o, m in d.get("marks", [])],
            bool(d.get("marks_complete", False)),
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["rebuild"] = self.rebuild._asdict() if self.rebuild else None
        out["marks"] = [list(m) for m in self.marks]
        return out


@dataclass
class Incomplete:
    """Windows of one dataset that no run writes: ``[from_us, until_us)`` of window starts."""

    dataset: str
    from_us: int
    until_us: int
    reason: str

    def covers(self, start_us: int) -> bool:
        return self.from_us <= start_us < self.until_us

    def describe(self) -> str:
        return (
            f"{self.dataset} windows from {format_us(self.from_us)} to "
            f"{format_us(self.until_us)}: {self.reason}"
        )


@dataclass
class TableRecord:
    format: int
    settings: dict[str, Any]  # the MEANING settings, with labels
    rollups: dict[str, int | None]  # roll-up label -> first window start it is complete from
    state_id: str
    state_format: int
    run_id: str
    written_at: str
    closed_until_us: int | None
    watermark_us: int | None
    partitions: dict[int, PartitionCover]
    incomplete: list[Incomplete] = field(default_factory=list)

    @property
    def claims(self) -> bool:
        """Whether the record says what rows the output holds: one written by a run does;
        one written only to switch an output without a record to this layout (by a
        migration, flows.edges.layout) does not, and counts as no record but for its
        format and owner."""
        return bool(self.partitions)

    @classmethod
    def from_json(cls, data: bytes) -> TableRecord:
        d = json.loads(data)
        return cls(
            format=int(d["format"]),
            settings=dict(d["settings"]),
            rollups={k: v for k, v in d.get("rollups", {}).items()},
            state_id=str(d["state_id"]),
            state_format=int(d.get("state_format", 0)),
            run_id=str(d.get("run_id", "")),
            written_at=str(d.get("written_at", "")),
            closed_until_us=d.get("closed_until_us"),
            watermark_us=d.get("watermark_us"),
            partitions={
                int(p): PartitionCover.from_json(v) for p, v in d.get("partitions", {}).items()
            },
            incomplete=[Incomplete(**i) for i in d.get("incomplete", [])],
        )

    def to_json(self) -> bytes:
        d = asdict(self)
        d["partitions"] = {str(p): c.to_json() for p, c in sorted(self.partitions.items())}
        d["closed_until"] = format_us(self.closed_until_us) if self.closed_until_us else None
        d["watermark"] = format_us(self.watermark_us) if self.watermark_us else None
        return json.dumps(d, indent=1, sort_keys=True).encode()


def read_record(storage: Storage) -> TableRecord | None:
    """The output's record, None if it has none; TableError if it cannot be read."""
    data = storage.read_bytes(RECORD)
    if data is None:
        return None
    try:
        record = TableRecord.from_json(data)
    except (ValueError, KeyError, TypeError) as err:
        raise TableError(
            f"{storage.uri}/{RECORD} cannot be read ({err}); fix or restore it"
        ) from None
    if record.format > OUTPUT_FORMAT:
        raise TableError(
            f"the output {storage.uri} has format {record.format}, newer than this version's "
            f"{OUTPUT_FORMAT}: run a newer party-rates"
        )
    return record


def meaning(
    topic: str,
    window_us: int,
    lateness_us: int,
    horizon_us: int,
    dedup_us: int,
    start_at: str,
) -> dict[str, Any]:
    """The settings that give the rows their meaning, as the record keeps them."""
    return {
        "topic": topic,
        "window_us": window_us,
        "allowed_lateness_us": lateness_us,
        "outcome_horizon_us": horizon_us,
        "dedup_horizon_us": dedup_us,
        "start_at": start_at,
        "window": duration_label(window_us),
        "allowed_lateness": duration_label(lateness_us),
        "outcome_horizon": duration_label(horizon_us),
        "dedup_horizon": duration_label(dedup_us),
    }


def _shown(settings: dict[str, Any], key: str) -> Any:
    label = key.removesuffix("_us")
    return settings.get(label, settings.get(key)) if key.endswith("_us") else settings.get(key)


def check_meaning(record: TableRecord, want: dict[str, Any], uri: str) -> None:
    """Refuse settings that would change what the output's rows mean (TableError, naming the
    setting and both values)."""
    for key, label, flag in MEANING:
        if key == "start_at" and want.get(key) is None:
            continue  # left out: the output's own start goes on
        have = record.settings.get(key)
        if have is not None and have != want.get(key):
            raise TableError(
                f"{flag} {_shown(want, key)} does not match the output {uri}, whose {label} "
                f"is {_shown(record.settings, key)}: its rows were made with that; write "
                "another --output to use another"
            )


@dataclass
class Covered:
    """What a run may write into the output: nothing of a window the record says is final,
    nothing of a window it says is incomplete."""

    floors: dict[str, int] = field(default_factory=dict)  # dataset -> first open window start
    incomplete: list[Incomplete] = field(default_factory=list)

    def writable(self, dataset: str, start_us: int) -> str | None:
        """None if a row of this window may be written, else why not ("final" or the
        incomplete range's reason)."""
        floor = self.floors.get(dataset)
        if floor is not None and start_us < floor:
            return "final"
        for inc in self.incomplete:
            if inc.dataset == dataset and inc.covers(start_us):
                return inc.reason
        return None


def datasets(window_us: int, rollups: tuple[int, ...]) -> list[Window]:
    """Every windowed dataset of these settings, rates and outcomes of each length."""
    out = [Window("party_rates", window_us, False), Window("disconnect_outcomes", window_us, True)]
    for n in rollups:
        label = duration_label(n)
        out += [
            Window(f"party_rates_{label}", n, False),
            Window(f"disconnect_outcomes_{label}", n, True),
        ]
    return out


def covered(record: TableRecord | None, windows: list[Window], horizon_us: int) -> Covered:
    """The record's final rows and incomplete windows, per dataset of this run."""
    if record is None:
        return Covered()
    floors = {}
    for w in windows:
        floor = floor_of(w, record.closed_until_us, horizon_us)
        if floor is not None:
            floors[w.name] = floor
    return Covered(floors, list(record.incomplete))


def partition_cover(
    next_offset: int,
    max_t_us: int | None,
    origin: int,
    marks: list[Mark],
    marks_complete: bool,
    closed_until_us: int | None,
    lengths: tuple[int, ...],
    horizon_us: int,
    dedup_us: int,
    bucket_us: int,
) -> PartitionCover:
    """A partition's cover, from its saved state and the watermark's boundary: where a lost
    state would read it again from (flows.core.coverage), and the marks from there on."""
    if max_t_us is None:  # nothing counted yet: nothing to read again
        start: Start | None = Start(next_offset, None, next_offset)
    elif closed_until_us is None:  # nothing final: every counted event again
        start = Start(marks[0][1], None, marks[0][1]) if marks_complete and marks else None
    else:
        replay = replay_time(closed_until_us, lengths, horizon_us)
        start = rebuild_start(marks, marks_complete, replay, dedup_us, bucket_us)
    kept = marks if start is None else [m for m in marks if m[1] >= start.offset]
    complete = marks_complete and len(kept) == len(marks)
    return PartitionCover(next_offset, max_t_us, origin, start, kept, complete)


@dataclass
class RebuildPlan:
    """How a state is rebuilt from the record and the topic: where each partition starts,
    and the windows that cannot be completed because the topic no longer holds their data."""

    starts: dict[int, tuple[int, int | None, list[Mark], bool, int]]
    # partition -> (first offset, newest event time before it, marks, marks complete, origin)
    incomplete: list[Incomplete]
    notes: list[str]  # one line each: what was lost, for the log and the manifest


def plan_rebuild(
    record: TableRecord,
    bounds: dict[int, tuple[int, int]],
    windows: list[Window],
    horizon_us: int,
    new_rollups: dict[str, int],
    bucket_us: int,
) -> RebuildPlan:
    """Where a state without usable saved state starts each partition (``bounds``: the
    partition's earliest and end offsets now), and what cannot be completed.

    A partition is read again from its rebuild start when the topic still holds it. When
    it does not (retention), it is read from its earliest offset, with the newest event time
    of what was lost as its event-time maximum; the windows that lost events can change
    (those holding events no newer than that, and an outcome horizon more for outcomes) are
    incomplete, unless the output already holds them final. A roll-up length the output did
    not hold is complete from its first window after the replayed data begins."""
    starts: dict[int, tuple[int, int | None, list[Mark], bool, int]] = {}
    lost_until: int | None = None
    notes: list[str] = []
    for p, (low, _high) in sorted(bounds.items()):
        cover = record.partitions.get(p)
        if cover is None:  # a partition the output never read: all of it is new
            starts[p] = (low, None, [], True, low)
            continue
        start = cover.rebuild
        if start is not None and start.offset >= low:
            starts[p] = (start.offset, start.max_before, cover.marks, cover.marks_complete,
                         cover.origin)  # fmt: skip
            continue
        needed = start.offset if start is not None else cover.origin
        if start is None and needed >= low:
            # the marks do not reach back far enough: all of it again, from where it began
            starts[p] = (needed, None, [], True, cover.origin)
            continue
        newest = max_before(cover.marks, low, cover.max_t_us)
        starts[p] = (low, newest, [], False, cover.origin)
        if newest is not None:
            lost_until = newest if lost_until is None else max(lost_until, newest)
        notes.append(
            f"partition {p}: offsets {needed}..{low - 1} are gone from the topic (retention)"
        )
    incomplete: list[Incomplete] = []
    closed = record.closed_until_us
    if lost_until is not None:
        for w in windows:
            floor = floor_of(w, closed, horizon_us)
            until = affected_until(w, lost_until, horizon_us)
            begin = floor if floor is not None else 0
            if until > begin:
                incomplete.append(
                    Incomplete(w.name, begin, until, "events of these windows were gone from "
                               "the topic when the state was rebuilt")
                )  # fmt: skip
    if new_rollups and closed is not None:
        added = set(new_rollups.values())  # the data read again is what the others need
        lengths = tuple(
            w.length_us
            for w in windows
            if w.name.startswith("party_rates") and w.length_us not in added
        )
        replay = replay_time(closed, lengths, horizon_us)
        for label, n in new_rollups.items():
            for name, extra in (
                (f"party_rates_{label}", 0),
                (f"disconnect_outcomes_{label}", horizon_us),
            ):
                since = -(-(replay + extra) // n) * n
                incomplete.append(
                    Incomplete(name, 0, since, "a roll-up added after the data before it was read")
                )
    return RebuildPlan(starts, incomplete, notes)


def now_text() -> str:
    return datetime.now(UTC).isoformat()


__all__ = [
    "OLD_FORMAT",
    "OUTPUT_FORMAT",
    "RECORD",
    "Covered",
    "Incomplete",
    "PartitionCover",
    "RebuildPlan",
    "TableError",
    "TableRecord",
    "check_meaning",
    "covered",
    "datasets",
    "meaning",
    "partition_cover",
    "plan_rebuild",
    "read_record",
]


@dataclass(frozen=True)
class OutputView:
    """What a run takes from the output's record (and from the plan its state was rebuilt
    with): the rows it may write, the messages earlier runs already counted, where the
    clock of a state without saved state starts, and where a rebuilt partition starts."""

    covered: Covered = field(default_factory=Covered)
    reread: dict[int, int] = field(default_factory=dict)  # partition -> the record's end
    closed_floor: int | None = None
    starts: dict[int, tuple[int, int | None, list[Mark], bool, int]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # what a rebuild found lost
    rebuilt: str | None = None  # why the state was rebuilt in this run, if it was


def view_of(
    record: TableRecord | None,
    plan: dict[str, Any] | None,
    windows: list[Window],
    horizon_us: int,
    run_id: str = "",
) -> OutputView:
    """The run's view of the output: its record, with the incomplete windows and starts of
    the plan the state was rebuilt with (they reach the record when the run ends); why it
    was rebuilt, if run ``run_id`` rebuilt it."""
    cover = covered(record, windows, horizon_us)
    starts: dict[int, tuple[int, int | None, list[Mark], bool, int]] = {}
    notes: tuple[str, ...] = ()
    rebuilt = None
    if plan is not None:
        if run_id and plan.get("run_id") == run_id:
            rebuilt = str(plan.get("reason"))
        known = {(i.dataset, i.from_us, i.until_us) for i in cover.incomplete}
        for item in plan.get("incomplete", []):
            inc = Incomplete(**item)
            if (inc.dataset, inc.from_us, inc.until_us) not in known:
                cover.incomplete.append(inc)
        for p, (offset, max_t, marks, complete, origin) in plan.get("starts", {}).items():
            kept: list[Mark] = [(int(b), int(o), m) for b, o, m in marks]
            starts[int(p)] = (int(offset), max_t, kept, bool(complete), int(origin))
        notes = tuple(plan.get("notes", ()))
    if record is None:
        return OutputView(cover, {}, None, starts, notes, rebuilt)
    reread = {p: c.end for p, c in record.partitions.items()}
    return OutputView(cover, reread, record.closed_until_us, starts, notes, rebuilt)


def plan_json(plan: RebuildPlan, reason: str, run_id: str) -> dict[str, Any]:
    return {
        "reason": reason,
        "run_id": run_id,
        "starts": {str(p): [o, m, [list(x) for x in marks], c, origin]
                   for p, (o, m, marks, c, origin) in plan.starts.items()},
        "incomplete": [asdict(i) for i in plan.incomplete],
        "notes": plan.notes,
    }  # fmt: skip
