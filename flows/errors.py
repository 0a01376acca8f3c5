"""The errors a run stops with, each with its exit code, and how one is found in a chain.

Every error the job raises on purpose is a :class:`JobError` whose message is one line,
safe to print (no secret, no traceback), and whose class says the exit code. Bytewax wraps
an error raised inside the dataflow in its own; :func:`job_error` finds ours in the chain.
Standard library only: every part of the job may raise these.
"""

from __future__ import annotations

EXIT_FAILED = 1
"""Anything else: retried by a scheduler."""
EXIT_SETTINGS = 2
"""A setting wrong in itself: the command line or the environment must change."""
EXIT_KAFKA = 3
"""The brokers, the topic or the credentials: often transient, retried."""
EXIT_CONFLICT = 4
"""What the run is given does not belong to what it is pointed at: settings or a state
against the state or the output, another job's state, another topic, a state in use. Not
transient (like 2), but it depends on the stored data, not on the command line alone."""
EXIT_STORAGE = 5
"""The output storage cannot be reached or written: retried."""
EXIT_STOPPED = 130
"""A scheduled run stopped by a signal (128 + SIGINT), as a shell reports it."""


class JobError(Exception):
    """An error the job raises on purpose: one safe line, and the exit code it means."""

    exit_code = EXIT_FAILED


class SettingsError(JobError):
    """A setting is wrong in itself."""

    exit_code = EXIT_SETTINGS


class ConflictError(JobError):
    """Settings or a state that do not belong to the state or the output."""

    exit_code = EXIT_CONFLICT


def job_error(err: BaseException) -> JobError | None:
    """The first :class:`JobError` in the chain of causes of ``err`` (``err`` included)."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, JobError):
            return cause
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    return None


def last_line(err: BaseException) -> str:
    """The last line of an error's message (its type's name when it has none)."""
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


def root_cause(err: BaseException) -> BaseException:
    """The last error of the chain of causes of ``err``."""
    root, cause = err, err.__cause__ or err.__context__
    while cause is not None:
        root = cause
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    return root
