"""The job's IO at its edges: the Kafka source, the Parquet sinks, output storage (local or
object store), the state directory, the run manifest, the consumer-group commits of durable
read positions (``group``), the Prometheus metrics (``metrics``), the graceful stop
(``stopping``), the output's record (``table``), a run's checks, rebuild and record
against its output and state (``recovery``) and ``party-rates status`` (``status``).

May import ``flows.core``, ``schemas``, ``flows.settings``, ``flows.failpoints``, Bytewax's
input, output and recovery API (``bytewax.inputs``, ``bytewax.outputs``,
``bytewax.recovery``), confluent-kafka, pyarrow and prometheus_client; never
``flows.analysis``, ``flows.tooling`` nor pandas.
"""
