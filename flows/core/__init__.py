"""The job's pure logic: parsing, event time, per-partition batch processing, windows,
disconnect outcomes, the watermark, and the items passed between the dataflow's steps.

Plain functions and classes over plain values, tested without a dataflow. May import the
standard library, the decoders (msgspec, orjson, pydantic), ``schemas.events`` and each
other; never Bytewax, Kafka, Arrow, the file system, ``flows.edges`` or ``flows.analysis``.
"""
