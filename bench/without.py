"""A ``party-rates`` command without one of the run's own measures, for ``make bench`` to
weigh what each still buys: ``python -m bench.without gc|pandas run …``.

* ``gc``: the collector at Python's default thresholds (``flows.run.fewer_collections``
  not applied);
* ``pandas``: pandas importable, as pyarrow imports it on first use
  (``flows.run.keep_pandas_out`` not applied).

One process only (a ``--processes`` child would start without the change).
"""

from __future__ import annotations

import sys

import flows.run


def _nothing() -> None:
    return None


def main(argv: list[str]) -> int:
    measure, *rest = argv
    if measure == "gc":
        flows.run.fewer_collections = _nothing
    elif measure == "pandas":
        flows.run.keep_pandas_out = _nothing
    else:
        raise SystemExit(f"bench.without: unknown measure {measure!r} (gc or pandas)")
    from flows.cli import main as cli

    return cli(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
