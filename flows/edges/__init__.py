"""The job's IO at its edges: the Kafka source, the Parquet sinks, output storage (local or
object store), the state directory and the run manifest.

May import ``flows.core``, ``schemas``, ``flows.settings``, Bytewax's connector API,
confluent-kafka and pyarrow; never ``flows.analysis`` nor pandas.
"""
