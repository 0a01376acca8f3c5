"""The alternatives the job is measured against, each run as its own process.

``python -m bench.consumers handwritten|ceiling|naive BOOTSTRAP TOPIC PARTITIONS``
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

COUNTED = {
    "PartyDisconnectedEvent",
    "PartyRejoinedEvent",
    "PartyDroppedEvent",
    "PartyRejectedEvent",
}


def _consumer(bootstrap: str, topic: str, partitions: int) -> Consumer:
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench", "enable.partition.eof": True}
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    return c


def loop(bootstrap: str, topic: str, partitions: int, parse: bool) -> int:
    """A minimal consumer: consume() loop, orjson.loads, counts per (ns, 5-min window, name)."""
    c = _consumer(bootstrap, topic, partitions)
    counts: Counter[tuple[str, int, str]] = Counter()
    done: set[int] = set()
    n = 0
    while len(done) < partitions:
        for msg in c.consume(10_000, 1.0):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    done.add(msg.partition())
                continue
            n += 1
            if not parse:
                continue
            try:
                doc = orjson.loads(msg.value())
                name = doc["name"]
                if name in COUNTED:
                    ts = datetime.fromisoformat(doc["timestamp"])
                    counts[(doc["namespace"], int(ts.timestamp()) // 300, name)] += 1
            except (ValueError, KeyError, TypeError):
                pass
    c.close()
    return n


def naive(bootstrap: str, topic: str, partitions: int) -> int:
    """The obvious Bytewax flow: KafkaSource -> json.loads -> count_window with EventClock."""
    import bytewax.operators as op
    import bytewax.operators.windowing as win
    from bytewax.connectors.kafka import KafkaSource
    from bytewax.dataflow import Dataflow
    from bytewax.testing import run_main

    flow = Dataflow("naive")
    msgs = op.input("in", flow, KafkaSource([bootstrap], [topic], tail=False))
    docs = op.filter_map("parse", msgs, lambda m: _safe_json(m.value))
    party = op.filter("party", docs, lambda d: d.get("name") in COUNTED and "_t" in d)
    clock = win.EventClock(lambda d: d["_t"], wait_for_system_duration=timedelta(minutes=10))
    windower = win.TumblingWindower(
        length=timedelta(minutes=5), align_to=datetime(2020, 1, 1, tzinfo=UTC)
    )
    counted = win.count_window(
        "count", party, clock, windower, lambda d: d["namespace"] + "|" + d["name"]
    )
    out: list = []
    op.inspect("sink", counted.down, lambda _s, x: out.append(x))
    run_main(flow)
    return len(out)


def _safe_json(value: bytes) -> dict | None:
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    with contextlib.suppress(KeyError, TypeError, ValueError):
        doc["_t"] = datetime.fromisoformat(doc["timestamp"])
    return doc


if __name__ == "__main__":
    kind, bootstrap, topic, parts = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if kind == "naive":
        print(naive(bootstrap, topic, parts))
    else:
        print(loop(bootstrap, topic, parts, parse=kind == "handwritten"))
