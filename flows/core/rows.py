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

from flows.core.eventtime import US_PER_S, window_columns
from flows.core.items import Report, Row
from flows.core.outcomes import OutcomeAgg
from schemas.events import DISCONNECTED, DROPPED, REJECTED, REJOINED

Output = tuple[str, list[Row]]
"""("row", party_rates rows) | ("outcome", disconnect_outcomes rows): the rows of one report
round or one end of a run, a list each."""


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
    """The shards' parts of some windows, added up."""

    __slots__ = ("outcomes", "rates")

    def __init__(self) -> None:
        self.rates: dict[int, list[int]] = {}
        self.outcomes: dict[int, OutcomeAgg] = {}

    def add(self, rates: dict[int, Any], outcomes: dict[int, tuple[Any, ...]]) -> None:
        for start, counts in rates.items():
            have = self.rates.get(start)
            if have is None:
                self.rates[start] = list(counts)
            else:
                for i, n in enumerate(counts):
                    have[i] += n
        for start, fields in outcomes.items():
            agg = OutcomeAgg.of(fields)
            have_agg = self.outcomes.get(start)
            self.outcomes[start] = agg if have_agg is None else have_agg.merge(agg)

    def rows(self, namespace: str, window_us: int, final: bool) -> list[Output]:
        out: list[Output] = []
        if self.rates:
            rates = sorted(self.rates.items())
            out.append(("row", [rates_row(namespace, s, window_us, c, final) for s, c in rates]))
        if self.outcomes:
            aggs = sorted(self.outcomes.items())
            out.append(("outcome", [a.to_row(namespace, s, window_us, final) for s, a in aggs]))
        return out


class NamespaceRows:
    """One namespace's reports waiting for the other shards of their tick."""

    def __init__(self, window_us: int) -> None:
        self.window_us = window_us
        self.namespace = ""
        # closed_until -> (shards expected, shards that answered, their parts so far)
        self.rounds: dict[int, tuple[frozenset[int], set[int], _Sums]] = {}
        self.open = _Sums()  # provisional parts, at the end of a run (not kept across runs)

    def on_report(self, report: Report) -> list[Output]:
        self.namespace = report.namespace
        if report.provisional:
            self.open.add(report.rates, report.outcomes)
            return []
        t = report.closed_until
        expected, answered, sums = self.rounds.get(t) or self.rounds.setdefault(
            t, (frozenset(report.expected), set(), _Sums())
        )
        answered.add(report.shard)
        sums.add(report.rates, report.outcomes)
        if not answered >= expected:
            return []
        del self.rounds[t]
        return sums.rows(self.namespace, self.window_us, True)

    def provisional(self) -> list[Output]:
        """At the end of a run, after every shard's provisional report: rows not final."""
        for _t, (_expected, _answered, sums) in sorted(self.rounds.items()):
            # Only if a shard never answered (it cannot, once all data is in): what there
            # is, marked not final, rather than nothing.
            self.open.add(sums.rates, {s: a.fields() for s, a in sums.outcomes.items()})
        out = self.open.rows(self.namespace, self.window_us, False)
        self.open = _Sums()
        return out

    def snapshot(self) -> bytes:
        return pickle.dumps((self.namespace, self.rounds), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def restore(cls, window_us: int, snap: bytes) -> NamespaceRows:
        self = cls(window_us)
        self.namespace, self.rounds = pickle.loads(snap)
        return self
