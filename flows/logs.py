"""What a run reports, through the standard ``logging`` module.

Each module logs to its own logger (``party_rates.<module>``); the command sets the handler
(:func:`configure`): ``text`` lines as a person reads them (``party-rates: …``, with
``warning:`` or ``error:`` when they are), or ``json``, one object a line for a log
pipeline (Loki, Cloud Logging, Elasticsearch): ``time``, ``level``, ``logger``, ``run_id``,
``message`` and the event's own fields (``partition``, ``offset``, counts…), given as
``extra``. Every line carries the run's id. No line holds a secret: what is logged is the
job's own words and redacted settings. Standard library only.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

ROOT = "party_rates"
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "run_id"}


def logger(module: str) -> logging.Logger:
    """The logger of one of the job's modules (``__name__``)."""
    return logging.getLogger(f"{ROOT}.{module.removeprefix('flows.')}")


class _RunId(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.run_id: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = self.run_id
        return True


_RUN_ID = _RunId()


def set_run_id(run_id: str | None) -> None:
    """The run id every line carries from now on."""
    _RUN_ID.run_id = run_id


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The event's own fields (what was given as ``extra``)."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """``party-rates: message``, ``party-rates: warning: …``, ``party-rates: error: …``."""

    def format(self, record: logging.LogRecord) -> str:
        level = "error: " if record.levelno >= logging.ERROR else ""
        if logging.WARNING <= record.levelno < logging.ERROR:
            level = "warning: "
        return f"party-rates: {level}{record.getMessage()}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "run_id": getattr(record, "run_id", None),
            "message": record.getMessage(),
        }
        line |= {k: v for k, v in fields(record).items() if k not in line}
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send the job's log lines to ``stream`` (stderr) in ``fmt`` (``text`` or ``json``),
    replacing what an earlier call set."""
    root = logging.getLogger(ROOT)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RUN_ID)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
