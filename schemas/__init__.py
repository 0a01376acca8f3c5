"""Event models of the session-history topic and the Parquet output schemas."""
