"""Where a row of a windowed dataset is stored: the layouts' path rules (schemas/output.py).

Format 2 (written): one file per UTC date, or per UTC month for windows of a day or longer;
the namespace is a column, so it is no part of any path and any namespace can be written.
Format 1 (read, to migrate it): one file per ``namespace=<ns>/date=<YYYY-MM-DD>/`` directory,
the namespace URI-encoded as pyarrow and Spark write Hive partitions.
"""

from __future__ import annotations

import functools
from datetime import date
from urllib.parse import quote, unquote

from schemas.output import DATA_FILE, window_dir

OLD_NAMESPACE = "namespace="
OLD_DATE = "date="


def window_relpath(dataset: str, window_us: int, day: date) -> str:
    """The format-2 file of ``dataset`` holding the windows that start on ``day``."""
    return f"{dataset}/{_dir(window_us, day)}/{DATA_FILE}"


@functools.lru_cache(maxsize=4096)
def _dir(window_us: int, day: date) -> str:
    return window_dir(window_us, day)


def hive_segment(column: str, value: str) -> str:
    """``column=value`` with the value URI-encoded as pyarrow and Spark read it back (format
    1's directory names). Every byte but unreserved ASCII is percent-encoded."""
    return f"{column}={quote(value, safe='')}"


def old_window_relpath(dataset: str, namespace: str, day: date) -> str:
    """The format-1 file of one namespace and date."""
    return (
        f"{dataset}/{hive_segment('namespace', namespace)}/{OLD_DATE}{day.isoformat()}/{DATA_FILE}"
    )


def parse_old_window_relpath(relpath: str) -> tuple[str, str, date] | None:
    """(dataset, namespace, date) of a format-1 data file, or None if ``relpath`` is not one."""
    parts = relpath.split("/")
    if len(parts) != 4 or parts[3] != DATA_FILE:
        return None
    dataset, ns_dir, date_dir, _name = parts
    if not (ns_dir.startswith(OLD_NAMESPACE) and date_dir.startswith(OLD_DATE)):
        return None
    try:
        day = date.fromisoformat(date_dir[len(OLD_DATE) :])
    except ValueError:
        return None
    return dataset, unquote(ns_dir[len(OLD_NAMESPACE) :]), day
