"""party-rates: the dataflow and its parts.

- ``flows.party_rates``: the dataflow (``build_flow``), wiring only; ``flows.steps``: its
  adapters from the pure classes to Bytewax's stateful operators.
- ``flows.cli`` and ``flows.settings``: the entry point and the one settings object.
- ``flows.failpoints``: test-only crash points (``PARTY_RATES_FAILPOINT``). It sits at the
  top because the edges and the flow import it, and they may not import ``flows.tooling``.
- ``flows.core``: the job's pure logic (no IO, no Bytewax, no Arrow).
- ``flows.edges``: the job's IO at its edges (Kafka, Parquet, storage, state, manifest,
  consumer-group commits, Prometheus metrics).
- ``flows.analysis``: what analysts import; the job never loads it.
- ``flows.tooling``: simulated traffic and the embedded broker, for the demo, tests and bench.
"""
