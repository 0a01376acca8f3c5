"""The job's pure logic: parsing, event time, per-partition batch processing, partial
aggregates, shards, roll-ups, rows, disconnect outcomes, the watermark, path segments
(``paths``: how a namespace becomes a directory name, and whether it can), the items
passed between the dataflow's steps, and what the output's final rows cover and where a
lost state is read again from (``coverage``).

Plain functions and classes over plain values, tested without a dataflow. May import the
standard library, the decoders (msgspec, orjson, pydantic), xxhash, NumPy,
``schemas.events`` and each other; never Bytewax, Kafka, Arrow, the file system,
``flows.edges`` or ``flows.analysis``.
"""
