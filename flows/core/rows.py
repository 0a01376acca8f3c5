"""A namespace's rows: the shards' reports added up, once every shard has reported.

Each tick goes to some shards of a namespace and names them (``Tick.expected``); each of
them answers with a report. When all the shards a tick went to have answered, the windows
they closed on it are final: their counts and distinct counts are the sums of the shards'
(the shards partition the hash space of users and parties), their outcome aggregates the
merge of the shards' (see flows.core.outcomes). At the end of a run, what the shards still
hold open is added up into provisional rows.
"""

from __future__ import annotations

import pickle
from typing import Any

from flows.core.eventtime import US_PER_S, duration_label, window_columns
from flows.core.items import Report, Row
from flows.core.outcomes import OutcomeAgg
from schemas.events import DISCONNECTED, DROPPED, REJECTED, REJOINED

Output = tuple[str, list[Row]]
"""(dataset name, rows): the rows of one dataset from one report round or one end of a run:
``party_rates``, ``disconnect_outcomes`` and their roll-ups (``party_rates_1h``, …)."""


def rates_row(
    namespace: str, start_us: int, window_us: int, sums: list[int] | tuple[int, ...], final: bool
) -> Row:
    """A party_rates row from the summed counts ``(disconnected, rejoined, dropped, rejected,
    distinct users, distinct parties)``."""
    disconnected, rejoined, dropped = sums[DISCONNECTED], sums[REJOINED], sums[DROPPED]
    minutes = window_us / (60 * US_PER_S)
    return window_columns(namespace, start_us, window_us) | {
        "disconnected": disconnected,
        "rejoined": rejoined,
        "dropped": dropped,
        "rejected": sums[REJECTED],
        "users_disconnected": sums[4],
        "parties_affected": sums[5],
        "disconnects_per_min": disconnected / minutes,
        "drops_per_min": dropped / minutes,
        "drop_ratio": dropped / disconnected if disconnected else None,
        "rejoin_ratio": rejoined / disconnected if disconnected else None,
        "is_final": final,
    }


class _Sums:
    """The shards' parts of some windows, added up; keyed by (window length, start), the
    base windows and the roll-ups alike."""

    __slots__ = ("outcomes", "rates")

    def __init__(self) -> None:
        self.rates: dict[tuple[int, int], list[int]] = {}
        self.outcomes: dict[tuple[int, int], OutcomeAgg] = {}

    def add_report(self, report: Report, window_us: int) -> None:
        self.add({(window_us, s): c for s, c in report.rates.items()}, report.rollup_rates)
        self.add_outcomes({(window_us, s): f for s, f in report.outcomes.items()})
        self.add_outcomes(report.rollup_outcomes)

    def add(self, *rates: dict[tuple[int, int], Any]) -> None:
        for part in rates:
            for key, counts in part.items():
                have = self.rates.get(key)
                if have is None:
                    self.rates[key] = list(counts)
                else:
                    for i, n in enumerate(counts):
                        have[i] += n

    def add_outcomes(self, outcomes: dict[tuple[int, int], tuple[Any, ...]]) -> None:
        for key, fields in outcomes.items():
            agg = OutcomeAgg.of(fields)
            have = self.outcomes.get(key)
            self.outcomes[key] = agg if have is None else have.merge(agg)

    def absorb(self, other: _Sums) -> None:
        self.add(other.rates)
        self.add_outcomes({k: a.fields() for k, a in other.outcomes.items()})

    def rows(
        self, namespace: str, datasets: dict[int, tuple[str, str]], final: bool
    ) -> list[Output]:
        """The rows, a list per dataset: ``datasets`` maps a window length to the names of
        its rates and outcomes datasets."""
        by_dataset: dict[str, list[Row]] = {}
        for (length, start), sums in sorted(self.rates.items()):
            rows = by_dataset.setdefault(datasets[length][0], [])
            rows.append(rates_row(namespace, start, length, sums, final))
        for (length, start), agg in sorted(self.outcomes.items()):
            rows = by_dataset.setdefault(datasets[length][1], [])
            rows.append(agg.to_row(namespace, start, length, final))
        return list(by_dataset.items())


def dataset_names(window_us: int, rollups: tuple[int, ...]) -> dict[int, tuple[str, str]]:
    """Window length -> (rates dataset, outcomes dataset): ``party_rates`` and
    ``disconnect_outcomes`` for the base window, ``party_rates_1h`` … for the roll-ups."""
    names = {window_us: ("party_rates", "disconnect_outcomes")}
    for length in rollups:
        label = duration_label(length)
        names[length] = (f"party_rates_{label}", f"disconnect_outcomes_{label}")
    return names


class _Round:
    """The reports of one tick (closed_until) of a namespace."""

    __slots__ = ("answered", "awaited", "sums")

    def __init__(self) -> None:
        self.awaited: set[tuple[str, int]] = set()  # ("shard" | "rollups", shard)
        self.answered: set[tuple[str, int]] = set()
        self.sums = _Sums()


class NamespaceRows:
    """One namespace's reports waiting for the other shards of their tick."""

    def __init__(self, window_us: int, rollups: tuple[int, ...] = ()) -> None:
        self.window_us = window_us
        self.datasets = dataset_names(window_us, rollups)
        self.namespace = ""
        # closed_until -> the round: its shards expected, the reports still awaited, the
        # reports in, and their parts so far
        self.rounds: dict[int, _Round] = {}
        self.open = _Sums()  # provisional parts, at the end of a run (not kept across runs)

    def on_report(self, report: Report) -> list[Output]:
        self.namespace = report.namespace
        if report.provisional:
            self.open.add_report(report, self.window_us)
            return []
        t = report.closed_until
        r = self.rounds.get(t)
        if r is None:
            r = self.rounds[t] = _Round()
        if report.from_rollups:
            r.answered.add(("rollups", report.shard))
        else:
            r.awaited.update(("shard", s) for s in report.expected)
            r.answered.add(("shard", report.shard))
            if report.rollups_follow:
                r.awaited.add(("rollups", report.shard))
        r.sums.add_report(report, self.window_us)
        # complete: every shard the tick went to has answered, and the roll-ups they said
        # would answer too (the shards' reports name the tick's shards)
        if not r.awaited or not r.answered >= r.awaited:
            return []
        del self.rounds[t]
        return r.sums.rows(self.namespace, self.datasets, True)

    def provisional(self) -> list[Output]:
        """At the end of a run, after every shard's provisional report: rows not final."""
        for _t, r in sorted(self.rounds.items()):
            # Only if a shard never answered (it cannot, once all data is in): what there
            # is, marked not final, rather than nothing.
            self.open.absorb(r.sums)
        out = self.open.rows(self.namespace, self.datasets, False)
        self.open = _Sums()
        return out

    def snapshot(self) -> bytes:
        return pickle.dumps((self.namespace, self.rounds), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def restore(cls, window_us: int, snap: bytes, rollups: tuple[int, ...] = ()) -> NamespaceRows:
        self = cls(window_us, rollups)
        self.namespace, self.rounds = pickle.loads(snap)
        return self
