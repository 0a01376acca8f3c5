"""Hive partition path segments: how a namespace string becomes a safe directory name.

A pure rule shared by parsing (a namespace that cannot be a directory name is a dead letter)
and the sinks (which write the directories).
"""

from __future__ import annotations

import functools
from urllib.parse import quote

MAX_SEGMENT_BYTES = 200
"""Longest ``column=value`` directory name written; file systems allow 255 bytes."""


@functools.lru_cache(maxsize=65536)
def hive_segment(column: str, value: str) -> str:
    """``column=value`` with the value URI-encoded as pyarrow and Spark read it back.

    Every byte but unreserved ASCII is percent-encoded, so ``/``, ``=``, ``%``, ``..``-paths,
    spaces and non-ASCII can neither leave the directory nor change meaning.
    """
    return f"{column}={quote(value, safe='')}"


def fits_in_path(namespace: str) -> bool:
    """Whether the namespace's directory name stays within MAX_SEGMENT_BYTES."""
    # An encoded character takes at most 12 bytes: short names always fit.
    return len(namespace) <= 15 or len(hive_segment("namespace", namespace)) <= MAX_SEGMENT_BYTES
