"""The one settings object: every flag of ``party-rates run``, also as ``PARTY_RATES_<FLAG>``.

Built once at the entry point (the CLI, or ``build_flow()`` for ``python -m bytewax.run``)
and passed down; nothing else reads the environment.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flows import secretfiles
from flows.core.eventtime import (
    EventTimeError,
    check_range,
    duration_label,
    format_us,
    parse_duration_us,
    parse_rfc3339_exact,
)

SECRET_WORDS = ("password", "secret", "pem", "token", "credential", "jaas")


def new_run_id() -> str:
    """A sortable, unique run id: UTC start time plus a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)


def redact(config: dict[str, str]) -> dict[str, str]:
    """librdkafka settings with secret values replaced, safe to print or store."""
    return {k: "***" if any(w in k.lower() for w in SECRET_WORDS) else v for k, v in config.items()}


START_WORDS = ("earliest", "latest")


def normalise_start(text: str) -> str:
    """``earliest``, ``latest`` or an RFC 3339 time, the time in UTC (``…Z``); ValueError
    otherwise. The normal form is what the state records and compares."""
    text = text.strip()
    if text.lower() in START_WORDS:
        return text.lower()
    try:
        us = check_range(parse_rfc3339_exact(text))
    except EventTimeError:
        raise ValueError(
            f"expects earliest, latest or an RFC 3339 time like 2026-11-01T00:00:00Z, got {text!r}"
        ) from None
    return format_us(us).replace("+00:00", "Z")


def start_time_us(start_at: str) -> int | None:
    """The time of a normalised ``--start-at``, or None for earliest and latest."""
    return None if start_at in START_WORDS else parse_rfc3339_exact(start_at)


class Settings(BaseSettings):
    """Settings of one run. Durations are strings like ``30s``, ``5m``, ``1h``."""

    model_config = SettingsConfigDict(env_prefix="PARTY_RATES_", extra="forbid")

    brokers: str = Field("localhost:9092", description="Kafka bootstrap servers, HOST:PORT[,…]")
    topic: str = Field("mpv2SessionHistory", description="Session-history topic name")
    output: str = Field(description="Output directory")
    state: str = Field(description="State directory (offsets and open windows)")
    window: str = Field("5m", description="Tumbling window length")
    rollups: str = Field(
        "1h,1d",
        description="Roll-up window lengths, comma-separated multiples of the window (empty: none)",
    )
    allowed_lateness: str = Field("10m", description="How far behind an event may arrive")
    outcome_horizon: str = Field(
        "1h", description="How long after a disconnect its rejoin or drop is looked for"
    )
    dedup_horizon: str | None = Field(
        None, description="How long event ids are remembered (default: allowed lateness)"
    )
    workers: int = Field(1, ge=1, le=256, description="Worker threads in each process")
    processes: int = Field(
        1, ge=1, le=64, description="Local processes of one Bytewax cluster (uses more cores)"
    )
    follow: bool = Field(False, description="Keep consuming instead of stopping at the end")
    batch_size: int = Field(10_000, ge=1, le=1_000_000, description="Messages per consume call")
    shards: int = Field(
        4, ge=1, le=256, description="Shards each namespace is split into (fixed with the state)"
    )
    snapshot_interval: str = Field("10s", description="How often state is snapshotted")
    flush_interval: str = Field("60s", description="With --follow: how often Parquet is written")
    kafka_config: dict[str, str] = Field(
        default_factory=dict,
        description="Extra librdkafka settings (security.protocol, sasl.*, ssl.*)",
    )
    process_id: int | None = Field(None, ge=0, description="This process in a cluster (-i)")
    addresses: str | None = Field(None, description="Cluster processes, HOST:PORT;… (-a)")
    connect_timeout: str = Field("20s", description="How long to try reaching the brokers")
    broker_timeout: str = Field(
        "60s", description="How long a run keeps retrying brokers that went away before it stops"
    )
    s3_endpoint: str | None = Field(
        None, description="Object store endpoint for an s3:// --output, e.g. http://host:8333"
    )
    s3_access_key: str | None = Field(None, description="Object store access key")
    s3_secret_key: SecretStr | None = Field(None, description="Object store secret key")
    s3_region: str | None = Field(None, description="Object store region")
    kafka_config_file: str | None = Field(
        None, description="librdkafka settings from this file, KEY=VALUE lines (never shown)"
    )
    s3_secret_key_file: str | None = Field(
        None, description="Object store secret key from this file (a mounted Secret)"
    )
    _secret_keys: set[str] = PrivateAttr(default_factory=set)  # settings read from a file
    progress: Literal["auto", "bar", "log", "off"] = Field("auto", description="Progress display")
    run_id: str = Field(default_factory=new_run_id, description="Id of this run's manifest")
    group_id: str = Field(
        "party-rates",
        description="Consumer group the durable read positions are committed to, for "
        "monitoring (empty: none)",
    )
    start_at: str | None = Field(
        None,
        description="Where a new state starts: earliest, latest or an RFC 3339 time "
        "(recorded in the state; default earliest)",
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve Prometheus metrics on this port (plus the process id in a cluster)",
    )
    pushgateway: str | None = Field(
        None, description="Prometheus Pushgateway URL the run's metrics are pushed to at its end"
    )
    metrics_file: str | None = Field(
        None, description="Write the run's metrics here at its end (node_exporter textfile)"
    )
    recompute: bool = Field(
        False,
        description="Let this run replace final rows of the output: a deliberate recompute "
        "into an existing output, with an empty --state (see README, Upgrading and recovery)",
    )
    retain: str | None = Field(
        None,
        description="Fold run manifests older than this into monthly archives and delete "
        "late-event and dead-letter files not written to for this long (default: keep all)",
    )
    failpoint: str | None = Field(
        None, description="Tests only (PARTY_RATES_FAILPOINT): stop the process at this point"
    )

    @field_validator(
        "window",
        "allowed_lateness",
        "outcome_horizon",
        "snapshot_interval",
        "flush_interval",
        "connect_timeout",
        "broker_timeout",
    )
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration_us(v)
        return v

    @field_validator("dedup_horizon")
    @classmethod
    def _opt_duration(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration_us(v)
        return v

    @field_validator("retain")
    @classmethod
    def _retain(cls, v: str | None) -> str | None:
        if v is not None and parse_duration_us(v) < 86_400_000_000:
            raise ValueError(f"{v!r} is less than a day (1d); leave it out to keep everything")
        return v

    @field_validator("failpoint")
    @classmethod
    def _failpoint(cls, v: str | None) -> str | None:
        if v:
            from flows.failpoints import parse

            parse(v)
        return v or None

    @field_validator("group_id")
    @classmethod
    def _group_id(cls, v: str) -> str:
        v = v.strip()
        if any(ord(c) < 32 for c in v):
            raise ValueError("must not contain control characters")
        return v

    @field_validator("start_at")
    @classmethod
    def _start_at(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        return normalise_start(v)

    @field_validator("pushgateway")
    @classmethod
    def _pushgateway(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        split = urlsplit(v.strip())
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"expects http(s)://HOST:PORT, got {v!r}")
        try:
            split.port  # noqa: B018  (raises on a port that is not a number)
        except ValueError:
            raise ValueError(f"expects http(s)://HOST:PORT, got {v!r}") from None
        if split.username or split.password or split.query or split.fragment:
            raise ValueError("give the Pushgateway as http(s)://HOST:PORT[/PATH] only")
        return v.strip().rstrip("/")

    @field_validator("metrics_file")
    @classmethod
    def _metrics_file(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if not v.endswith(".prom"):
            raise ValueError("must end in .prom (node_exporter's textfile collector reads those)")
        return v

    @field_validator("kafka_config_file")
    @classmethod
    def _kafka_config_file(cls, v: str | None) -> str | None:
        if v:
            secretfiles.read_properties(v)
        return v or None

    @field_validator("s3_secret_key_file")
    @classmethod
    def _s3_secret_key_file(cls, v: str | None) -> str | None:
        if v:
            secretfiles.read_secret(v)
        return v or None

    @model_validator(mode="after")
    def _from_files(self) -> Settings:
        """Secrets from files (flows/secretfiles.py); a flag's setting wins over the file's."""
        if self.kafka_config_file:
            from_file = secretfiles.read_properties(self.kafka_config_file)
            self._secret_keys = set(from_file) - set(self.kafka_config)
            self.kafka_config = {**from_file, **self.kafka_config}
        if self.s3_secret_key_file:
            if self.s3_secret_key is not None:
                raise ValueError("give s3_secret_key or s3_secret_key_file, not both")
            self.s3_secret_key = SecretStr(secretfiles.read_secret(self.s3_secret_key_file))
        return self

    @field_validator("brokers", "topic", "output", "state")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v.strip()

    @field_validator("output")
    @classmethod
    def _no_secrets_in_output(cls, v: str) -> str:
        if "://" in v:
            rest = v.split("://", 1)[1]
            if "@" in rest.split("/", 1)[0] or "?" in rest or "#" in rest:
                raise ValueError(
                    "give object store credentials with --s3-access-key and "
                    "PARTY_RATES_S3_SECRET_KEY, not inside the --output URI"
                )
        return v

    @field_validator("rollups")
    @classmethod
    def _durations(cls, v: str) -> str:
        for part in v.split(","):
            if part.strip():
                parse_duration_us(part)
        return v

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.window_us < 1_000_000:
            raise ValueError("window must be at least 1s")
        if "rollups" in self.model_fields_set:
            for length in self._rollups_given():
                if length <= self.window_us or length % self.window_us:
                    raise ValueError(
                        f"rollups: {duration_label(length)} is not a multiple of the window "
                        f"({self.window}) longer than it"
                    )
        if (self.process_id is None) != (self.addresses is None):
            raise ValueError("process_id and addresses go together")
        if self.follow and parse_duration_us(self.flush_interval) < parse_duration_us(
            self.snapshot_interval
        ):
            raise ValueError("flush_interval must not be shorter than snapshot_interval")
        if self.processes > 1 and self.process_id is not None:
            raise ValueError("processes starts a local cluster; do not combine with process_id")
        last = (self.process_id or 0) + self.processes - 1
        if self.metrics_port is not None and self.metrics_port + last > 65535:
            raise ValueError("metrics_port plus the process id must stay below 65536")
        return self

    @property
    def window_us(self) -> int:
        return parse_duration_us(self.window)

    def _rollups_given(self) -> list[int]:
        return sorted({parse_duration_us(p) for p in self.rollups.split(",") if p.strip()})

    @property
    def rollup_lengths_us(self) -> tuple[int, ...]:
        """Roll-up window lengths: of the default, those that are multiples of the window
        and longer than it (an explicit list that does not fit is refused)."""
        w = self.window_us
        return tuple(n for n in self._rollups_given() if n > w and n % w == 0)

    @property
    def retain_us(self) -> int | None:
        return parse_duration_us(self.retain) if self.retain else None

    @property
    def lateness_us(self) -> int:
        return parse_duration_us(self.allowed_lateness)

    @property
    def outcome_horizon_us(self) -> int:
        return parse_duration_us(self.outcome_horizon)

    @property
    def dedup_horizon_us(self) -> int:
        horizon = parse_duration_us(self.dedup_horizon) if self.dedup_horizon else 0
        return max(horizon, self.lateness_us)

    @property
    def snapshot_seconds(self) -> float:
        return parse_duration_us(self.snapshot_interval) / 1e6

    @property
    def flush_seconds(self) -> float:
        return parse_duration_us(self.flush_interval) / 1e6

    @property
    def connect_seconds(self) -> float:
        return parse_duration_us(self.connect_timeout) / 1e6

    @property
    def broker_seconds(self) -> float:
        return parse_duration_us(self.broker_timeout) / 1e6

    @property
    def metrics_port_here(self) -> int | None:
        """The port this process serves metrics on: the setting plus its process id."""
        if self.metrics_port is None:
            return None
        return self.metrics_port + (self.process_id or 0)

    def broker_list(self) -> list[str]:
        return [b.strip() for b in self.brokers.split(",") if b.strip()]

    def kafka_base_config(self) -> dict[str, str]:
        """librdkafka settings shared by every client the job makes."""
        return {"bootstrap.servers": ",".join(self.broker_list()), **self.kafka_config}

    def public(self) -> dict[str, Any]:
        """The settings with secrets redacted, for manifests and logs."""
        data = self.model_dump()
        data["kafka_config"] = {
            k: "***" if k in self._secret_keys else v for k, v in redact(self.kafka_config).items()
        }
        data["s3_secret_key"] = "***" if self.s3_secret_key else None
        return data
