"""An independent reference of the job: what it must output, from the README's rules alone.

Nothing here imports ``flows``: JSON is decoded with the standard library, event time is
parsed with a regular expression and ``datetime``, and counting, distinct sets, lateness,
deduplication, the watermark and outcome matching are written out the simple way, one
partition and then one player at a time. A mistake in the job's parsing, event time,
aggregation or matching therefore shows up as a difference, not in both.

The rules, as the README states them ("How it decides", "The output contract"):

* A message whose bytes do not contain one of the four names as a JSON string is skipped
  when it looks like a JSON object (first and last non-blank bytes ``{`` and ``}``), else it
  is a dead letter; a tombstone is a dead letter.
* Otherwise it must be UTF-8 JSON (``NaN``, ``Infinity`` and numbers beyond a double read
  as numbers; an unpaired surrogate escape is no UTF-8 text), an object, nested at most
  200 levels (no value inside more than 200 arrays and objects; nested too deep for the
  standard library to decode at all, about a thousand levels, it is a dead letter whatever
  its name); an object whose
  ``name`` is a string other than the four is skipped; the envelope's fields have the types
  of the topic's page (strict: no bool for an integer, no float); ``namespace`` and ``id``
  are not empty (of any length: the namespace is a column of the output, no part of a
  path); the event time is ``timestampUnixNano`` (ns) when present, else ``timestamp``
  (RFC 3339, fractional digits truncated to µs), within [2000-01-01, 2100-01-01).
* Per partition, in offset order: an event before the state's start (``--start-at``, the
  first window boundary at or after its time) is ``before_start``; an id still remembered
  is a duplicate; an event more than the allowed lateness behind the partition's newest
  counted event time is late; the rest are counted. An id is remembered when an event of
  that id was counted earlier in the partition and that event's window-length bucket
  (``t // window``) is not wholly before the partition's newest counted event time (before
  this message) less the dedup horizon (at least the allowed lateness).
* The watermark is the minimum over partitions of their newest event time, less the
  allowed lateness; a window is final when it ends at or before the watermark's window
  boundary.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd

NAMES = ("PartyDisconnectedEvent", "PartyRejoinedEvent", "PartyDroppedEvent", "PartyRejectedEvent")
DISCONNECTED, REJOINED, DROPPED, REJECTED = NAMES
NAME_STRINGS = tuple(f'"{n}"'.encode() for n in NAMES)
MATCH_ORDER = {DISCONNECTED: 0, REJOINED: 1, DROPPED: 2}  # at equal times
MAX_DEPTH = 200
LOW_US = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp()) * 10**6
HIGH_US = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp()) * 10**6
STR_FIELDS = ("parentNamespace", "timestamp", "userId", "traceId", "sessionId", "spanContext")
PAYLOAD_STR = ("namespace", "topicName", "message")
TIME = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d\d):(\d\d))",
    re.ASCII,  # RFC 3339 digits are 0-9, not any Unicode digit
)
SURROGATE = re.compile("[\ud800-\udfff]")
"""A code point left over from an unpaired ``\\uD800``-``\\uDFFF`` escape: no UTF-8 text."""


@dataclass(frozen=True)
class Ev:
    partition: int
    offset: int
    id: str
    name: str
    namespace: str
    t_us: int
    user: Any
    session: Any


@dataclass
class Result:
    """Everything a run over the whole topic must produce."""

    events: list[Ev] = field(default_factory=list)  # counted
    late: list[Ev] = field(default_factory=list)
    dead: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset)
    counts: dict[str, int] = field(default_factory=dict)
    closed_until: int | None = None  # windows ending at or before it are final
    watermark: int | None = None  # µs: the newest event time of the slowest partition less
    # the allowed lateness


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _depth(doc: Any) -> int:
    """The most arrays and objects any value sits in (the document itself sits in none)."""
    deepest, todo = 0, [(doc, 0)]
    while todo:  # a loop, not recursion: documents may be nested a thousand levels
        v, enclosing = todo.pop()
        deepest = max(deepest, enclosing)
        if isinstance(v, dict):
            todo.extend((x, enclosing + 1) for x in v.values())
        elif isinstance(v, list):
            todo.extend((x, enclosing + 1) for x in v)
    return deepest


def _unpaired_surrogate(doc: Any) -> bool:
    """Whether a key or string of the document holds an unpaired surrogate escape."""
    todo = [doc]
    while todo:
        v = todo.pop()
        if isinstance(v, str):
            if SURROGATE.search(v):
                return True
        elif isinstance(v, dict):
            todo.extend(v.keys())
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
    return False


def _rfc3339_us(text: str) -> int | None:
    m = TIME.fullmatch(text)
    if m is None:
        return None
    y, mo, d, h, mi, s = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    leap = s == 60
    if leap:
        s = 59
    if m.group(9):
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            return None
        sign = 1 if m.group(9) == "+" else -1
        tz = timezone(sign * timedelta(hours=oh, minutes=om))
    else:
        tz = UTC
    try:
        dt = datetime(y, mo, d, h, mi, s, tzinfo=tz)
    except ValueError:
        return None
    micros = int(((m.group(7) or "") + "000000")[:6])
    whole = (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(seconds=1) + (1 if leap else 0)
    return whole * 10**6 + micros


def classify(value: bytes | None) -> tuple[str, Any]:
    """("skip", None) | ("dead", reason) | ("event", (id, name, ns, t_us, user, session))."""
    if value is None:
        return "dead", "tombstone"
    if not any(n in value for n in NAME_STRINGS):
        stripped = value.strip(b" \t\r\n")
        if stripped[:1] == b"{" and stripped[-1:] == b"}":
            return "skip", None
        return "dead", "not an object"
    try:
        doc = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "dead", "not JSON"
    if _unpaired_surrogate(doc):
        return "dead", "not UTF-8 JSON"
    if not isinstance(doc, dict):
        return "dead", "not an object"
    name = doc.get("name")
    if isinstance(name, str) and name not in NAMES:
        return "skip", None
    if _depth(doc) > MAX_DEPTH:
        return "dead", "too deep"
    if not isinstance(name, str):
        return "dead", "no name"
    ok = isinstance(doc.get("id"), str) and isinstance(doc.get("namespace"), str)
    ok = ok and all(doc.get(f) is None or isinstance(doc[f], str) for f in STR_FIELDS)
    ok = ok and all(doc.get(f) is None or _int(doc[f]) for f in ("version", "timestampUnixNano"))
    payload = doc.get("payload")
    if payload is not None:
        ok = ok and isinstance(payload, dict)
        ok = ok and all(payload.get(f) is None or isinstance(payload[f], str) for f in PAYLOAD_STR)
        ids = payload.get("userIds") if isinstance(payload, dict) else None
        ok = ok and (
            ids is None or (isinstance(ids, list) and all(isinstance(i, str) for i in ids))
        )
    if not ok:
        return "dead", "wrong types"
    ns, event_id = doc["namespace"], doc["id"]
    if not ns or not event_id:
        return "dead", "empty namespace or id"
    if doc.get("timestampUnixNano") is not None:
        t_us: int | None = doc["timestampUnixNano"] // 1000
    elif doc.get("timestamp") is not None:
        t_us = _rfc3339_us(doc["timestamp"])
    else:
        t_us = None
    if t_us is None or not LOW_US <= t_us < HIGH_US:
        return "dead", "no usable event time"
    return "event", (event_id, name, ns, t_us, doc.get("userId"), doc.get("sessionId"))


def run(
    messages: list[tuple[int, int, bytes | None]],
    window_us: int,
    lateness_us: int,
    start_us: int = 0,
    dedup_horizon_us: int = 0,
) -> Result:
    """The whole topic, partition by partition in offset order, as one run reads it;
    counting from ``start_us`` on (a window boundary), like a state made with ``--start-at``;
    ids remembered for ``dedup_horizon_us`` (never less than the allowed lateness)."""
    horizon_us = max(dedup_horizon_us, lateness_us)
    out = Result()
    counts = dict.fromkeys(("messages", "counted", "skipped", "duplicates", "late"), 0)
    counts["dead_letters"] = counts["before_start"] = 0
    by_partition: dict[int, list[tuple[int, bytes | None]]] = defaultdict(list)
    for partition, offset, value in messages:
        by_partition[partition].append((offset, value))
    newest: dict[int, int] = {}
    for partition, msgs in sorted(by_partition.items()):
        seen: dict[str, int] = {}  # id -> the window-length bucket of its counted event
        for offset, value in sorted(msgs, key=lambda m: m[0]):
            counts["messages"] += 1
            kind, what = classify(value)
            if kind == "skip":
                counts["skipped"] += 1
                continue
            if kind == "dead":
                counts["dead_letters"] += 1
                out.dead.append((partition, offset))
                continue
            ev = Ev(partition, offset, *what)
            if ev.t_us < start_us:
                counts["before_start"] += 1
            elif ev.id in seen and seen[ev.id] >= (newest[partition] - horizon_us) // window_us:
                counts["duplicates"] += 1
            elif partition in newest and ev.t_us < newest[partition] - lateness_us:
                counts["late"] += 1
                out.late.append(ev)
            else:
                counts["counted"] += 1
                seen[ev.id] = ev.t_us // window_us
                newest[partition] = max(newest.get(partition, ev.t_us), ev.t_us)
                out.events.append(ev)
    out.counts = counts
    if newest:
        watermark = min(newest.values()) - lateness_us
        out.watermark = watermark
        out.closed_until = watermark - watermark % window_us
    return out


RATES_COLUMNS = {
    "namespace": "str",
    "window_start": "datetime64[us, UTC]",
    "window_end": "datetime64[us, UTC]",
    "disconnected": "int64",
    "rejoined": "int64",
    "dropped": "int64",
    "rejected": "int64",
    "users_disconnected": "int64",
    "parties_affected": "int64",
    "disconnects_per_min": "float64",
    "drops_per_min": "float64",
    "drop_ratio": "float64",
    "rejoin_ratio": "float64",
    "is_final": "bool",
}
"""``party_rates`` as a reader loads it (the partition column ``date`` left out), with the
output contract's types."""

OUTCOMES_COLUMNS = {
    "namespace": "str",
    "window_start": "datetime64[us, UTC]",
    "window_end": "datetime64[us, UTC]",
    "disconnects": "int64",
    "rejoined": "int64",
    "dropped": "int64",
    "unresolved": "int64",
    "superseded": "int64",
    "orphan_outcomes": "int64",
    "cohort_drop_ratio": "float64",
    "rejoin_seconds_p50": "float64",
    "rejoin_seconds_p95": "float64",
    "is_final": "bool",
}
"""``disconnect_outcomes`` as a reader loads it, likewise."""


def _frame(rows: list[dict[str, Any]], columns: dict[str, str]) -> pd.DataFrame:
    """Rows as a frame of the given columns and types, in (namespace, window) order."""
    df = pd.DataFrame(rows, columns=list(columns))
    for col, dtype in columns.items():
        if dtype.startswith("datetime64"):
            df[col] = pd.to_datetime(df[col].astype("int64"), unit="us", utc=True).astype(dtype)
        elif dtype == "float64":
            df[col] = df[col].astype("float64")  # None: NaN, also in a column of only None
        else:
            df[col] = df[col].astype(dtype)
    return df.sort_values(["namespace", "window_start"], ignore_index=True)


def rates(result: Result, window_us: int) -> pd.DataFrame:
    """``party_rates`` rows, every window (final or not)."""
    windows: dict[tuple[str, int], dict[str, Any]] = {}
    for ev in result.events:
        start = ev.t_us - ev.t_us % window_us
        w = windows.setdefault(
            (ev.namespace, start), {"n": dict.fromkeys(NAMES, 0), "users": set(), "parties": set()}
        )
        w["n"][ev.name] += 1
        if ev.name != REJECTED and ev.session:
            w["parties"].add(ev.session)
        if ev.name == DISCONNECTED and ev.user:
            w["users"].add(ev.user)
    minutes = window_us / 60e6
    rows = []
    closed = result.closed_until
    for (ns, start), w in windows.items():
        n = w["n"]
        d, r, x = n[DISCONNECTED], n[REJOINED], n[DROPPED]
        rows.append(
            {
                "namespace": ns,
                "window_start": start,
                "window_end": start + window_us,
                "disconnected": d,
                "rejoined": r,
                "dropped": x,
                "rejected": n[REJECTED],
                "users_disconnected": len(w["users"]),
                "parties_affected": len(w["parties"]),
                "disconnects_per_min": d / minutes,
                "drops_per_min": x / minutes,
                "drop_ratio": x / d if d else None,
                "rejoin_ratio": r / d if d else None,
                "is_final": closed is not None and start + window_us <= closed,
            }
        )
    return _frame(rows, RATES_COLUMNS)


def outcomes(
    result: Result, window_us: int, horizon_us: int, final_only: bool = True
) -> pd.DataFrame:
    """``disconnect_outcomes`` rows: each player's events in time order, one pass, as far
    as the watermark has passed them. ``final_only``: the final rows, without
    ``window_end`` and ``is_final``; else every row, provisional ones included, as a run
    that ends here writes them (a provisional row holds the outcomes decided so far)."""
    closed = result.closed_until
    aggs: dict[tuple[str, int], dict[str, Any]] = {}

    def agg(ns: str, t: int) -> dict[str, Any]:
        key = (ns, t - t % window_us)
        if key not in aggs:
            aggs[key] = dict.fromkeys(("d", "r", "x", "u", "s", "o"), 0) | {"times": []}
        return aggs[key]

    players: dict[tuple[str, str, str], list[Ev]] = defaultdict(list)
    for ev in result.events:
        if ev.name != REJECTED and ev.session and ev.user:
            players[(ev.namespace, ev.session, ev.user)].append(ev)
    for (ns, _s, _u), evs in players.items():
        if closed is None:
            break  # no watermark: nothing is matched yet
        evs.sort(key=lambda e: (e.t_us, MATCH_ORDER[e.name]))  # stable: equal ones alike
        opened: int | None = None
        for ev in [e for e in evs if e.t_us < closed]:
            if opened is not None and ev.t_us - opened > horizon_us:
                agg(ns, opened)["u"] += 1
                opened = None
            if ev.name == DISCONNECTED:
                agg(ns, ev.t_us)["d"] += 1
                if opened is not None:
                    agg(ns, opened)["s"] += 1
                opened = ev.t_us
            elif opened is None:
                agg(ns, ev.t_us)["o"] += 1
            else:
                a = agg(ns, opened)
                if ev.name == REJOINED:
                    a["r"] += 1
                    a["times"].append((ev.t_us - opened) / 1e6)
                else:
                    a["x"] += 1
                opened = None
        if opened is not None and opened + horizon_us < closed:
            agg(ns, opened)["u"] += 1
    rows = []
    for (ns, start), a in aggs.items():
        final = closed is not None and start + window_us + horizon_us <= closed
        if final_only and not final:
            continue
        decided = a["r"] + a["x"]
        times = a["times"]
        rows.append(
            {
                "namespace": ns,
                "window_start": start,
                "window_end": start + window_us,
                "disconnects": a["d"],
                "rejoined": a["r"],
                "dropped": a["x"],
                "unresolved": a["u"],
                "superseded": a["s"],
                "orphan_outcomes": a["o"],
                "cohort_drop_ratio": a["x"] / decided if decided else None,
                "rejoin_seconds_p50": float(np.percentile(times, 50)) if times else None,
                "rejoin_seconds_p95": float(np.percentile(times, 95)) if times else None,
                "is_final": final,
            }
        )
    df = _frame(rows, OUTCOMES_COLUMNS)
    return df.drop(columns=["window_end", "is_final"]) if final_only else df
