"""The settings of a run, parsed once into typed parts.

Every flag of ``party-rates run`` is a field of one part, grouped by concern: Kafka
(:class:`KafkaSettings`), windows and the rules (:class:`RulesSettings`), the output and
its object store (:class:`StorageSettings`), the cluster (:class:`ClusterSettings`), the
run itself (:class:`RunSettings`) and its metrics (:class:`MetricsSettings`). Each field is
also the environment variable ``PARTY_RATES_<FLAG>``; a flag wins over the environment.
Names stay flat (``--window``, ``PARTY_RATES_WINDOW``): they are the interface.

Values are validated straight into the form the job uses: durations (``30s``, ``5m``,
``1h``) into microseconds, roll-up lists into sorted tuples of them, ``--start-at`` into
its normal form; a part's derived values are its properties. Each edge is handed the part
it needs (the Kafka source the Kafka and rules parts, the storage the storage part), never
the whole object. The command line is derived from these fields (flows/cli.py): their
descriptions are its help, their defaults its defaults.

Built once at an entry point (the command, or ``build_flow()`` for ``python -m
bytewax.run``); nothing else reads the environment.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from flows import secretfiles
from flows.core.eventtime import (
    EventTimeError,
    check_range,
    duration_label,
    format_us,
    parse_duration_us,
    parse_rfc3339_exact,
)
from schemas.durations import DEFAULT_OUTCOME_HORIZON_US

ENV_PREFIX = "PARTY_RATES_"
SECRET_WORDS = ("password", "secret", "pem", "token", "credential", "jaas")
START_WORDS = ("earliest", "latest")
DAY_US = 86_400_000_000


def new_run_id() -> str:
    """A sortable, unique run id: UTC start time plus a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)


def redact(config: Mapping[str, str]) -> dict[str, str]:
    """librdkafka settings with secret values replaced, safe to print or store."""
    return {k: "***" if any(w in k.lower() for w in SECRET_WORDS) else v for k, v in config.items()}


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


def _to_us(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration_us(value)
    return value


def _to_lengths(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(sorted({parse_duration_us(p) for p in value.split(",") if p.strip()}))
    return value


Duration = Annotated[
    int, BeforeValidator(_to_us), PlainSerializer(duration_label, return_type=str), Field(ge=0)
]
"""A duration: written ``30s``, ``5m``, ``1h``, ``1d`` (or whole seconds), kept in
microseconds, shown again as written."""

Lengths = Annotated[
    tuple[int, ...],
    BeforeValidator(_to_lengths),
    PlainSerializer(lambda v: ",".join(duration_label(n) for n in v), return_type=str),
]
"""Comma-separated durations (``1h,1d``; empty: none), kept sorted in microseconds."""


def _optional_text(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


OptionalText = Annotated[str | None, BeforeValidator(_optional_text)]


class Part(BaseModel):
    """A part of the settings: frozen once validated."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class KafkaSettings(Part):
    """How the job reaches Kafka and reads the topic."""

    brokers: str = Field("localhost:9092", description="Kafka bootstrap servers, HOST:PORT[,…]")
    topic: str = Field("mpv2SessionHistory", description="the session-history topic")
    kafka_config: dict[str, str] = Field(
        default_factory=dict,
        description="extra librdkafka setting KEY=VALUE (security.protocol, sasl.*, ssl.*), "
        "repeatable; in the environment a JSON object",
    )
    kafka_config_file: OptionalText = Field(
        None, description="librdkafka settings from this file, KEY=VALUE lines (a mounted Secret)"
    )
    group_id: str = Field(
        "party-rates",
        description="consumer group the durable read positions are committed to, for "
        "monitoring (empty: none)",
    )
    batch_size: int = Field(10_000, ge=1, le=1_000_000, description="messages per consume call")
    max_drift: Duration = Field(
        parse_duration_us("10m"),
        description="how far ahead in event time a partition is read of the slowest one this "
        "process reads (bounds memory over a backlog; 0: no limit)",
    )
    connect_timeout: Duration = Field(
        parse_duration_us("20s"), description="how long to try reaching the brokers"
    )
    broker_timeout: Duration = Field(
        parse_duration_us("60s"),
        description="how long a run retries brokers that went away before it stops (exit 3)",
    )
    from_file: frozenset[str] = Field(frozenset(), exclude=True, json_schema_extra={"cli": False})
    """librdkafka settings read from ``kafka_config_file`` (never shown)."""

    @field_validator("brokers", "topic")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v.strip()

    @field_validator("group_id")
    @classmethod
    def _group_id(cls, v: str) -> str:
        v = v.strip()
        if any(ord(c) < 32 for c in v):
            raise ValueError("must not contain control characters")
        return v

    @model_validator(mode="before")
    @classmethod
    def _read_file(cls, data: Any) -> Any:
        """librdkafka settings from a file (flows/secretfiles.py): a flag's setting wins."""
        if isinstance(data, dict) and data.get("kafka_config_file"):
            try:
                from_file = secretfiles.read_properties(str(data["kafka_config_file"]))
            except ValueError:
                return data  # the field's own check names it
            given = dict(data.get("kafka_config") or {})
            data = {
                **data,
                "kafka_config": {**from_file, **given},
                "from_file": frozenset(set(from_file) - set(given)),
            }
        return data

    @field_validator("kafka_config_file")
    @classmethod
    def _kafka_config_file(cls, v: str | None) -> str | None:
        if v:
            secretfiles.read_properties(v)  # a file that cannot be used is refused here
        return v

    @property
    def broker_list(self) -> list[str]:
        return [b.strip() for b in self.brokers.split(",") if b.strip()]

    @property
    def client_config(self) -> dict[str, str]:
        """librdkafka settings shared by every client the job makes."""
        return {"bootstrap.servers": ",".join(self.broker_list), **self.kafka_config}

    @property
    def connect_s(self) -> float:
        return self.connect_timeout / 1e6

    @property
    def broker_s(self) -> float:
        return self.broker_timeout / 1e6

    def public_config(self) -> dict[str, str]:
        """The extra librdkafka settings with every secret shown as ``***``."""
        return {
            k: "***" if k in self.from_file else v for k, v in redact(self.kafka_config).items()
        }


class RulesSettings(Part):
    """The windows and the rules that give the rows their meaning."""

    window: Duration = Field(
        parse_duration_us("5m"), description="tumbling window length, aligned to the UTC epoch"
    )
    rollups: Lengths = Field(
        (parse_duration_us("1h"), parse_duration_us("1d")),
        description="roll-up window lengths, multiples of the window longer than it (left "
        "out, those of 1h,1d that fit the window; empty: none)",
    )
    allowed_lateness: Duration = Field(
        parse_duration_us("10m"),
        description="how far behind its partition an event may arrive and still count",
    )
    outcome_horizon: Duration = Field(
        DEFAULT_OUTCOME_HORIZON_US,
        description="how long after a disconnect its rejoin or drop is looked for",
    )
    dedup_horizon: Duration | None = Field(
        None,
        description="how long event ids are remembered (never less than the allowed "
        "lateness; default: the allowed lateness)",
    )
    shards: int = Field(
        4, ge=1, le=256, description="shards each namespace is split into (spreads a hot one)"
    )
    start_at: OptionalText = Field(
        None,
        description="where a new state starts: earliest (the default), latest or an RFC 3339 "
        "time (recorded in the state and the output)",
    )

    @field_validator("start_at")
    @classmethod
    def _start_at(cls, v: str | None) -> str | None:
        return None if v is None else normalise_start(v)

    @model_validator(mode="after")
    def _check(self) -> RulesSettings:
        if self.window < 1_000_000:
            raise ValueError("window must be at least 1s")
        if "rollups" in self.model_fields_set:
            for length in self.rollups:
                if length <= self.window or length % self.window:
                    raise ValueError(
                        f"rollups: {duration_label(length)} is not a multiple of the window "
                        f"({duration_label(self.window)}) longer than it"
                    )
        else:  # of the default, those that fit the window
            fit = tuple(n for n in self.rollups if n > self.window and n % self.window == 0)
            object.__setattr__(self, "rollups", fit)
        return self

    @property
    def dedup_us(self) -> int:
        """How long ids are remembered: the dedup horizon, at least the allowed lateness."""
        return max(self.dedup_horizon or 0, self.allowed_lateness)

    @property
    def lengths(self) -> tuple[int, ...]:
        """The window and every roll-up length."""
        return (self.window, *self.rollups)

    @property
    def marks_kept_us(self) -> int:
        """How long a partition keeps the marks of its event-time progress before its newest
        event (flows.core.coverage): enough to rebuild every row not final yet (the longest
        window, the outcome horizon, the dedup horizon, the lateness), and a day."""
        longest = max(self.lengths)
        return longest + self.outcome_horizon + self.dedup_us + self.allowed_lateness + DAY_US


class StorageSettings(Part):
    """Where the output is written: a local directory or an object store."""

    output: str = Field(description="output directory, or s3://BUCKET/PREFIX")
    s3_endpoint: OptionalText = Field(
        None, description="object store endpoint for an s3:// output, e.g. http://host:8333"
    )
    s3_access_key: OptionalText = Field(None, description="object store access key")
    s3_secret_key: SecretStr | None = Field(
        None, description="object store secret key (better: PARTY_RATES_S3_SECRET_KEY, or a file)"
    )
    s3_secret_key_file: OptionalText = Field(
        None, description="object store secret key from this file (a mounted Secret)"
    )
    s3_region: OptionalText = Field(None, description="object store region")
    recompute: bool = Field(
        False,
        description="let this run replace final rows of an existing output: a deliberate "
        "recompute, with an empty --state",
    )

    @field_validator("output")
    @classmethod
    def _output(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must not be empty")
        if "://" in v:
            rest = v.split("://", 1)[1]
            if "@" in rest.split("/", 1)[0] or "?" in rest or "#" in rest:
                raise ValueError(
                    "give object store credentials with --s3-access-key and "
                    "PARTY_RATES_S3_SECRET_KEY, not inside the --output URI"
                )
        return v

    @model_validator(mode="before")
    @classmethod
    def _read_file(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("s3_secret_key_file"):
            if data.get("s3_secret_key") is not None:
                raise ValueError("give s3_secret_key or s3_secret_key_file, not both")
            try:
                secret = secretfiles.read_secret(str(data["s3_secret_key_file"]))
            except ValueError:
                return data  # the field's own check names it
            data = {**data, "s3_secret_key": SecretStr(secret)}
        return data

    @field_validator("s3_secret_key_file")
    @classmethod
    def _s3_secret_key_file(cls, v: str | None) -> str | None:
        if v:
            secretfiles.read_secret(v)  # a file that cannot be used is refused here
        return v


class ClusterSettings(Part):
    """The Bytewax cluster this process is part of."""

    workers: int = Field(1, ge=1, le=256, description="worker threads in each process")
    processes: int = Field(
        1, ge=1, le=64, description="local processes of one Bytewax cluster (uses more cores)"
    )
    process_id: int | None = Field(None, ge=0, description="this process in a cluster (-i)")
    addresses: OptionalText = Field(
        None, description="every process of the cluster, HOST:PORT;HOST:PORT (-a)"
    )

    @model_validator(mode="after")
    def _check(self) -> ClusterSettings:
        if (self.process_id is None) != (self.addresses is None):
            raise ValueError("process_id and addresses go together")
        if self.processes > 1 and self.process_id is not None:
            raise ValueError("processes starts a local cluster; do not combine with process_id")
        return self

    @property
    def address_list(self) -> list[str]:
        return self.addresses.split(";") if self.addresses else []

    @property
    def count(self) -> int:
        """Processes in the cluster this process is part of."""
        return len(self.address_list) or 1

    @property
    def first(self) -> bool:
        """Process 0 (or the only one): it writes the manifest and the output's record."""
        return not self.process_id


class RunSettings(Part):
    """How this run goes: its state, whether it follows the topic, how it reports."""

    state: str = Field(description="state directory: offsets and open windows between runs")
    follow: bool = Field(False, description="keep consuming instead of stopping at the end")
    snapshot_interval: Duration = Field(
        parse_duration_us("10s"),
        description="how often state is snapshotted (a crash replays at most this much)",
    )
    flush_interval: Duration = Field(
        parse_duration_us("60s"), description="while following, how often Parquet is written"
    )
    run_id: str = Field(
        default_factory=new_run_id,
        description="id of this run's manifest (default: start time and a random suffix)",
    )
    progress: Literal["auto", "bar", "log", "off"] = Field(
        "auto", description="progress display: a bar on a terminal, log lines otherwise"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines as text, or as JSON lines for a log pipeline"
    )
    retain: Duration | None = Field(
        None,
        description="fold run manifests older than this into monthly archives and delete "
        "late-event and dead-letter files not written to for this long, at least 1d "
        "(left out: keep all)",
    )

    @field_validator("retain")
    @classmethod
    def _retain(cls, v: int | None) -> int | None:
        if v is not None and v < DAY_US:
            raise ValueError(
                f"{duration_label(v)} is less than a day (1d); leave it out to keep all"
            )
        return v

    @field_validator("state")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v.strip()

    @property
    def snapshot_s(self) -> float:
        return self.snapshot_interval / 1e6

    @property
    def flush_s(self) -> float:
        return self.flush_interval / 1e6


class MetricsSettings(Part):
    """Where the run's Prometheus metrics go."""

    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="serve Prometheus metrics on this port plus the process id (/metrics)",
    )
    pushgateway: OptionalText = Field(
        None, description="Prometheus Pushgateway URL: push the run's metrics when it ends"
    )
    metrics_file: OptionalText = Field(
        None,
        description="write the run's metrics to this .prom file when it ends (node_exporter "
        "textfile collector)",
    )

    @field_validator("pushgateway")
    @classmethod
    def _pushgateway(cls, v: str | None) -> str | None:
        if v is None:
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
        if v is not None and not v.endswith(".prom"):
            raise ValueError("must end in .prom (node_exporter's textfile collector reads those)")
        return v


PARTS: dict[str, type[Part]] = {
    "kafka": KafkaSettings,
    "rules": RulesSettings,
    "storage": StorageSettings,
    "cluster": ClusterSettings,
    "run": RunSettings,
    "metrics": MetricsSettings,
}
"""The parts of :class:`Settings`, in the order the command's help shows them."""


def flat_fields() -> dict[str, tuple[str, FieldInfo]]:
    """Every field a user sets (a flag and an environment variable each): name -> (part,
    field). Fields kept for the job's own use are left out."""
    out: dict[str, tuple[str, FieldInfo]] = {}
    for part, model in PARTS.items():
        for name, info in model.model_fields.items():
            extra = info.json_schema_extra
            if isinstance(extra, dict) and extra.get("cli") is False:
                continue
            out[name] = (part, info)
    return out


class _FlatEnvironment(PydanticBaseSettingsSource):
    """``PARTY_RATES_<FLAG>`` for every field, names kept flat (not one variable per part);
    ``PARTY_RATES_KAFKA_CONFIG`` holds a JSON object."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # values are read in __call__

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in flat_fields():
            value = self.environ.get(ENV_PREFIX + name.upper())
            if value is None:
                continue
            if name == "kafka_config":
                try:
                    out[name] = json.loads(value)
                except ValueError:
                    raise ValueError(
                        f"{ENV_PREFIX}KAFKA_CONFIG must be a JSON object of strings"
                    ) from None
            else:
                out[name] = value
        return out


class Settings(BaseSettings):
    """Settings of one run, in parts (see the module docstring). Built from flat names:
    ``Settings(output=…, state=…, window="1m")``, flags and ``PARTY_RATES_*``."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    kafka: KafkaSettings
    rules: RulesSettings
    storage: StorageSettings
    cluster: ClusterSettings
    run: RunSettings
    metrics: MetricsSettings

    def __init__(self, **values: Any) -> None:
        """From flat names, or from parts (``kafka=KafkaSettings(…)``)."""
        super().__init__(**values)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _FlatEnvironment(settings_cls, os.environ)

    @model_validator(mode="before")
    @classmethod
    def _into_parts(cls, data: Any) -> Any:
        """Flat names (flags, environment variables) into their parts."""
        if not isinstance(data, dict):
            return data
        fields = flat_fields()
        grouped: dict[str, dict[str, Any]] = {part: {} for part in PARTS}
        for key, value in data.items():
            if key in PARTS and isinstance(value, dict | Part):
                given = value.model_dump() if isinstance(value, Part) else value
                grouped[key].update(given)
            elif key in fields:
                grouped[fields[key][0]][key] = value
            else:
                grouped.setdefault("unknown", {})[key] = value
        if grouped.get("unknown"):
            name = next(iter(grouped["unknown"]))
            raise ValueError(f"unknown setting {name!r}")
        return grouped

    @model_validator(mode="after")
    def _across_parts(self) -> Settings:
        if self.run.follow and self.run.flush_interval < self.run.snapshot_interval:
            raise ValueError("flush_interval must not be shorter than snapshot_interval")
        last = (self.cluster.process_id or 0) + self.cluster.processes - 1
        if self.metrics.metrics_port is not None and self.metrics.metrics_port + last > 65535:
            raise ValueError("metrics_port plus the process id must stay below 65536")
        return self

    def replace(self, **changes: Any) -> Settings:
        """These settings with some fields changed (flat names), validated again."""
        data: dict[str, Any] = {}
        for part in PARTS:
            data |= getattr(self, part).model_dump(exclude={"from_file"})
        data["kafka_config"] = {
            k: v for k, v in self.kafka.kafka_config.items() if k not in self.kafka.from_file
        }
        return Settings(**(data | changes))

    @property
    def metrics_port_here(self) -> int | None:
        """The port this process serves metrics on: the setting plus its process id."""
        if self.metrics.metrics_port is None:
            return None
        return self.metrics.metrics_port + (self.cluster.process_id or 0)

    def public(self) -> dict[str, Any]:
        """Every setting by its flat name, secrets redacted: for manifests and logs."""
        out: dict[str, Any] = {}
        for part in PARTS:
            out |= getattr(self, part).model_dump(mode="json")
        out["kafka_config"] = self.kafka.public_config()
        out["s3_secret_key"] = "***" if self.storage.s3_secret_key else None
        return out
