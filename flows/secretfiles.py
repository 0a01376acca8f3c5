"""Secrets read from files, as a mounted Kubernetes Secret holds them.

A flag's value shows in ``ps`` and in a pod's spec, and an environment variable in the
pod's spec too; a file mounted from a Secret shows nowhere. Two kinds:

- librdkafka settings, one ``KEY=VALUE`` a line (a Java client's ``.properties`` file:
  blank lines and lines starting with ``#`` or ``!`` are skipped, spaces around the key
  and the value are trimmed), for ``--kafka-config-file``;
- one secret, the whole file less its trailing line break, for ``--s3-secret-key-file``.

A file that cannot be read or parsed is refused with its path and line number, never
with what it holds. Standard library only: the settings read them.
"""

from __future__ import annotations

from pathlib import Path


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else "not UTF-8 text"
        raise ValueError(f"cannot read {path}: {reason}") from None


def read_properties(path: str) -> dict[str, str]:
    """``KEY=VALUE`` lines of a file; ValueError naming the path and line otherwise."""
    out: dict[str, str] = {}
    for n, line in enumerate(_read(path).splitlines(), start=1):
        text = line.strip()
        if not text or text[0] in "#!":
            continue
        key, eq, value = text.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{path}: line {n} is not KEY=VALUE (its content is not shown)")
        out[key.strip()] = value.strip()
    return out


def read_secret(path: str) -> str:
    """The file's content less its trailing line break; ValueError if it is empty."""
    secret = _read(path).rstrip("\r\n")
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret
