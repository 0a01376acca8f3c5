"""A graceful stop: SIGTERM or SIGINT ends a run at the next batch boundary.

Every rollout, scale-down and node drain sends SIGTERM. The signal handler only sets a
flag; each partition reader sees it before its next batch and ends its input there
(flows/edges/source.py). The dataflow then ends as a scheduled run ends at its end
offsets: the stateful steps emit what they hold (provisional rows), the sinks write and
close, Bytewax takes its final snapshot, and the command commits the final positions to
the consumer group and exits with the documented code. No Python exception is raised
inside Bytewax's threads, so nothing panics.

A signal is a request, not a count: the same signal again, or one sent to the whole
process group as well as forwarded by the leader of a local cluster, changes nothing.
SIGKILL (Kubernetes sends it after the pod's grace period) is the hard stop.

The leader of a local cluster (``--processes``) starts its processes with both signals
blocked, so a signal that reaches them before they have installed the handler is kept
pending instead of killing them, and it forwards a stop to every process until all have
ended: the cluster stops whether the signal reached the leader only or the whole group.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
FORWARD_EVERY_S = 1.0
"""How often the leader of a local cluster repeats a stop to processes still running (a
process that was still starting when the first one came has it pending, see above)."""
GRACE_AFTER_FAILURE_S = 10.0
"""After one process of a local cluster failed, how long the others have to stop before
they are killed: a cluster missing a process cannot finish its dataflow."""

_REQUESTED = threading.Event()


def requested() -> bool:
    """Whether a stop was asked for (read by each partition reader once per batch)."""
    return _REQUESTED.is_set()


def request(signum: int | None = None, frame: Any = None) -> None:
    """Ask for a stop; the signal handler."""
    _REQUESTED.set()


def reset() -> None:
    """Forget a stop (a process that runs several jobs: the tests)."""
    _REQUESTED.clear()


def install() -> None:
    """Make SIGINT and SIGTERM ask for a stop (from the main thread), and take the signals
    that were held pending while this process started."""
    for sig in SIGNALS:
        signal.signal(sig, request)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM pending while processes are started: they inherit the
    mask, and so keep a stop that comes before they can take it (see the module
    docstring); this process takes its own as the block ends."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def exit_code(code: int) -> int:
    """A process's exit code as a shell shows it: killed by signal N is 128 + N."""
    return 128 - code if code < 0 else code


def wait_cluster(children: Sequence[subprocess.Popen[Any]]) -> int:
    """Wait for the processes of a local cluster; forward a stop to them; returns the
    cluster's exit code: that of the first process that failed on its own, else the
    first non-zero one (130: stopped), else 0.

    When one process fails, the others are asked to stop and, if they cannot (a cluster
    missing a process cannot finish), killed after a grace period.
    """
    first_failure: int | None = None
    failed_at: float | None = None
    forwarded_at: float | None = None
    while True:
        codes = [child.poll() for child in children]
        if all(code is not None for code in codes):
            break
        now = time.monotonic()
        if first_failure is None and not requested():
            failed = [c for c in codes if c is not None and c != 0]
            if failed:
                first_failure, failed_at = exit_code(failed[0]), now
        if (requested() or first_failure is not None) and (
            forwarded_at is None or now - forwarded_at >= FORWARD_EVERY_S
        ):
            forwarded_at = now
            _signal_running(children, signal.SIGTERM)
        if failed_at is not None and now - failed_at > GRACE_AFTER_FAILURE_S:
            _signal_running(children, signal.SIGKILL)
        live = next(child for child, code in zip(children, codes, strict=True) if code is None)
        with contextlib.suppress(subprocess.TimeoutExpired):
            live.wait(timeout=0.1)
    if first_failure is not None:
        return first_failure
    return next((exit_code(c) for c in codes if c), 0)


def _signal_running(children: Sequence[subprocess.Popen[Any]], sig: int) -> None:
    for child in children:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(sig)
