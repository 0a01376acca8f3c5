"""``party-rates status``: one screen for on-call, from the output's record, its last run's
manifest and (when given) the state directory and the brokers.

What the table is, the last run and its result, the read positions and how far behind the
topic they are, the watermark and its age, the windows left incomplete, and whether the
state matches the output. Nothing here writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from flows.core.eventtime import format_us, parse_duration_us
from flows.edges.statedir import STATE_FORMAT, StateDir
from flows.edges.storage import Storage
from flows.edges.table import RECORD, read_record


def last_manifest(storage: Storage) -> dict[str, Any] | None:
    """The manifest of the run that started last."""
    newest: tuple[str, dict[str, Any]] | None = None
    for relpath in storage.list_files("_runs"):
        if not relpath.endswith(".json"):
            continue
        data = storage.read_bytes(relpath)
        if data is None:
            continue
        try:
            run = json.loads(data)
        except ValueError:
            continue
        started = str(run.get("started_at", ""))
        if newest is None or started > newest[0]:
            newest = (started, run)
    return newest[1] if newest else None


def state_verdict(state_dir: str | None, owner: str | None) -> dict[str, Any]:
    """Whether the state directory is the one that writes the output."""
    if state_dir is None:
        return {"given": False}
    state = StateDir(state_dir)
    meta = state.meta()
    out: dict[str, Any] = {"given": True, "path": state_dir}
    if meta is None:
        out["matches"] = False
        out["detail"] = (
            "holds saved state it cannot describe: the next run rebuilds it from the output"
            if state.has_saved_state()
            else "empty: the next run rebuilds it from the output"
        )
        return out
    out |= {"state_id": meta.get("state_id"), "format": meta.get("format")}
    if owner is None:
        out["matches"] = True
        out["detail"] = "the output has no record yet: this state's next run writes it"
    elif meta.get("state_id") == owner:
        out["matches"] = True
        out["detail"] = "it writes this output"
        if meta.get("format") != STATE_FORMAT:
            out["detail"] += f" (format {meta.get('format')}: this version reads it)"
    else:
        out["matches"] = False
        out["detail"] = f"another state ({meta.get('state_id')}): runs with it are refused"
    return out


def gather(
    storage: Storage,
    state_dir: str | None,
    ends: Callable[[str, list[int]], dict[int, int]] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Everything the screen shows, as data (``--json`` prints it as it is). ``ends``: the
    partitions' end offsets in a topic from the brokers, when they can be asked."""
    now = time.time() if now is None else now
    record = read_record(storage)
    out: dict[str, Any] = {"output": storage.uri, "record": record is not None}
    if record is not None:
        out["table"] = {
            "format": record.format,
            "settings": record.settings,
            "rollups": {
                label: _z(since)
                for label, since in sorted(
                    record.rollups.items(), key=lambda kv: parse_duration_us(kv[0])
                )
            },
            "state_id": record.state_id,
            "written_at": record.written_at,
            "written_by_run": record.run_id,
        }
        wm = record.watermark_us
        out["watermark"] = {
            "watermark": _z(wm),
            "age_seconds": round(now - wm / 1e6, 1) if wm is not None else None,
            "final_until": _z(record.closed_until_us),
        }
        topic = str(record.settings.get("topic"))
        live = ends(topic, sorted(record.partitions)) if ends is not None else {}
        out["partitions"] = {
            str(p): {"position": c.end, "end": live.get(p), "lag": live[p] - c.end}
            if p in live
            else {"position": c.end}
            for p, c in sorted(record.partitions.items())
        }
        out["incomplete"] = [i.describe() for i in record.incomplete]
    run = last_manifest(storage)
    if run is not None:
        out["last_run"] = {
            k: run.get(k) for k in ("run_id", "status", "started_at", "ended_at", "counts")
        }
        if run.get("group_commit_error"):
            out["last_run"]["group_commit_error"] = run["group_commit_error"]
        if run.get("rebuild"):
            out["last_run"]["rebuild"] = run["rebuild"]
    out["state"] = state_verdict(state_dir, record.state_id if record else None)
    return out


def ago(seconds: float) -> str:
    """A duration as on-call reads it: ``3 d 4 h``, ``2 h 5 min``, ``40 s``."""
    s = int(max(0.0, seconds))
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d} d {h} h"
    if h:
        return f"{h} h {m} min"
    return f"{m} min" if m else f"{s} s"


def _z(us: int | None) -> str | None:
    return None if us is None else format_us(us).replace("+00:00", "Z")


def render(info: dict[str, Any]) -> str:
    """The screen, as text."""
    lines = [f"output      {info['output']}"]
    table = info.get("table")
    if table is None:
        lines.append(f"table       no {RECORD}: no run of this version has completed here")
    else:
        s = table["settings"]
        rollups = ", ".join(
            label + (f" (from {since})" if since else "")
            for label, since in table["rollups"].items()
        )
        lines.append(
            f"table       format {table['format']}: topic {s['topic']}, window {s['window']}, "
            f"lateness {s['allowed_lateness']}, outcome horizon {s['outcome_horizon']}, "
            f"dedup horizon {s['dedup_horizon']}, start {s['start_at']}; "
            f"roll-ups {rollups or 'none'}"
        )
        by = table["written_by_run"]
        by = f"by run {by}" if by else "when its layout was migrated: no run has ended since"
        lines.append(f"record      written {table['written_at']} {by}")
    run = info.get("last_run")
    if run is None:
        lines.append("last run    none")
    else:
        c = run.get("counts") or {}
        lines.append(
            f"last run    {run['run_id']} {run['status']}, ended {run.get('ended_at') or '-'}: "
            f"{c.get('messages', 0):,} messages, {c.get('counted', 0):,} counted, "
            f"{c.get('late', 0):,} late, {c.get('dead_letters', 0):,} dead letters"
            + (f", {c['reread']:,} read again" if c.get("reread") else "")
        )
        if run.get("group_commit_error"):
            lines.append(f"            group commit failed: {run['group_commit_error']}")
        if run.get("rebuild"):
            lines.append(f"            rebuilt its state: {run['rebuild']['reason']}")
    wm = info.get("watermark")
    if wm is not None and wm["watermark"] is not None:
        age = ago(wm["age_seconds"])
        lines.append(
            f"watermark   {wm['watermark']} ({age} ago); final rows up to {wm['final_until']}"
        )
    elif wm is not None:
        lines.append("watermark   none yet: no window is final")
    for p, pos in (info.get("partitions") or {}).items():
        lag = f", end {pos['end']:,}, lag {pos['lag']:,}" if "lag" in pos else ""
        lines.append(f"partition   {p}: position {pos['position']:,}{lag}")
    incomplete = info.get("incomplete") or []
    lines.append(f"incomplete  {'none' if not incomplete else incomplete[0]}")
    lines += [f"            {line}" for line in incomplete[1:]]
    state = info["state"]
    if state["given"]:
        mark = "matches" if state["matches"] else "DOES NOT MATCH"
        lines.append(f"state       {state['path']}: {mark}: {state['detail']}")
    else:
        lines.append("state       not given (--state): not checked")
    return "\n".join(lines)
