"""Event models of the session-history topic, the Parquet output schemas, and the durations
that name the roll-up datasets."""
