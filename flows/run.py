"""A run of the job, from its settings to its exit code, in the order it happens.

:func:`run` is the whole of ``party-rates run``: a local cluster is started
(:func:`run_local_cluster`), or this process runs :func:`run_job`:

1. the run's own checks: its id is new, the Kafka settings and the metrics port and file
   are usable;
2. the output's record and the state (flows.edges.recovery): the settings are checked
   against both, and the state is kept, made, or rebuilt from the output and the topic;
3. where the state starts, the output prepared (stale temporary files removed);
4. the dataflow (flows.party_rates), until it has read what the run reads;
5. after it: this process's part marked written, the output's record written (process 0,
   once every process has written its part), the final positions committed to the consumer
   group;
6. whatever happened, the run's metrics exported where the settings say.

Errors are typed (flows.errors): each says its exit code; the command prints their one
line. What the run reports goes to the ``party_rates.run`` logger (flows.logs).
"""

from __future__ import annotations

import gc
import importlib.abc
import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from flows import logs
from flows.errors import (
    EXIT_FAILED,
    EXIT_KAFKA,
    EXIT_STOPPED,
    JobError,
    SettingsError,
    job_error,
    last_line,
    root_cause,
)
from flows.failpoints import Failpoints
from flows.settings import Settings

LOG = logs.logger(__name__)
API_ENV = (
    "BYTEWAX_DATAFLOW_API_ENABLED",
    "BYTEWAX_DATAFLOW_API_PORT",
    "BYTEWAX_DATAFLOW_API_CACHE_PATH",
)


class Stopped(Exception):
    """SIGINT or SIGTERM: the run stopped at a batch boundary; the next one goes on."""

    def __init__(self, manifest: dict[str, Any] | None = None) -> None:
        super().__init__("stopped by a signal")
        self.manifest = manifest


class RunFailed(JobError):
    """The dataflow failed, or ended before the run's end."""


def run(settings: Settings, argv: list[str], failpoints: Failpoints) -> int:
    """``party-rates run``: the exit code (flows.errors); JobError for a run that failed."""
    from flows.edges import stopping

    stopping.install()  # SIGINT, SIGTERM: stop at the next batch boundary
    if settings.cluster.processes > 1:
        return run_local_cluster(settings, argv)
    keep_pandas_out()
    try:
        manifest = run_job(settings, failpoints)
    except Stopped as stop:
        if stop.manifest:
            LOG.info(summary(stop.manifest), extra=_counts(stop.manifest))
        LOG.info("stopped by a signal; the next run resumes from the last snapshot")
        return 0 if settings.run.follow else EXIT_STOPPED
    if manifest:
        LOG.info(summary(manifest), extra=_counts(manifest))
    return 0


def run_job(
    settings: Settings, failpoints: Failpoints | None = None, quiet: bool = False
) -> dict[str, Any] | None:
    """Run the job once in this process: the checks, then the dataflow; returns the run's
    manifest. Whatever the outcome, the run's metrics go where the settings say."""
    from flows.edges import stopping
    from flows.edges.metrics import METRICS

    METRICS.reset(settings.kafka.topic)
    logs.set_run_id(settings.run.run_id)
    outcome: bool | None = False  # a scheduled run's success; None: following or stopped
    try:
        manifest = _run_job(settings, failpoints or Failpoints(), quiet)
        if stopping.requested() and (manifest or {}).get("status") != "completed":
            raise Stopped(manifest)  # at a batch boundary (flows/edges/stopping.py)
        if settings.run.follow:
            # A following dataflow ends only when stopped (above): one that returns was
            # stopped by something else, e.g. a panic in one of Bytewax's threads.
            raise RunFailed("the dataflow stopped by itself while following")
        if manifest is not None and manifest["status"] != "completed":
            raise RunFailed(
                f"the run ended {manifest['status']} before reading every partition to its "
                "end; the next run resumes from its last snapshot"
            )
        outcome = True
        return manifest
    except Stopped:
        outcome = None  # neither a success nor a failure: the next run goes on
        raise
    finally:
        METRICS.finish(outcome)
        export_metrics(settings)


def _run_job(settings: Settings, failpoints: Failpoints, quiet: bool) -> dict[str, Any] | None:
    from bytewax.recovery import RecoveryConfig
    from bytewax.run import cli_main

    from flows.edges import recovery, retention, stopping
    from flows.edges.source import TopicSource, end_offsets, list_partitions, start_offsets
    from flows.edges.statedir import StateDir
    from flows.edges.storage import Storage, StorageError, take_end_of_run_failures
    from flows.party_rates import build_flow

    kafka, rules, cluster, run = settings.kafka, settings.rules, settings.cluster, settings.run
    state = StateDir(run.state)
    storage = Storage.for_output(settings.storage, failpoints)
    config = kafka.client_config
    parts: list[int] = []
    bounds: dict[int, tuple[int, int]] = {}

    def topic_bounds() -> dict[int, tuple[int, int]]:
        """The partitions and their offsets, asked for once, when first needed."""
        if not parts:
            parts.extend(list_partitions(config, kafka.topic, kafka.connect_s))
        if not bounds:
            bounds.update(end_offsets(config, kafka.topic, parts, kafka.connect_s))
        return bounds

    with state.locked(cluster.process_id):
        # 1. the run's own checks
        if cluster.first and retention.run_exists(storage, run.run_id):
            raise SettingsError(f"a run with id {run.run_id!r} already exists")
        check_kafka_settings(settings)
        check_metrics_settings(settings)
        # 2. the output and the state: they may refuse before the brokers are asked
        view = recovery.prepare(
            state, storage, topic_bounds, topic=kafka.topic, rules=rules,
            recompute=settings.storage.recompute, run_id=run.run_id,
        )  # fmt: skip
        if view.rebuilt:
            LOG.info("rebuilding the state: %s", view.rebuilt)
            for line in view.notes:
                LOG.warning(line)
            for inc in view.covered.incomplete:
                LOG.warning("incomplete: %s", inc.describe(), extra={"dataset": inc.dataset})
        # 3. where the state starts; the output prepared
        if not parts:
            parts.extend(list_partitions(config, kafka.topic, kafka.connect_s))
        start = state.start(
            rules,
            resolve=lambda start_at: start_offsets(
                config, kafka.topic, parts, start_at, rules.allowed_lateness, kafka.connect_s
            ),
        )
        removed = storage.prepare()
        if removed and not quiet:
            LOG.info("removed %d temporary files of an earlier run", removed)
        if not quiet:
            mode = "following" if run.follow else "reading to the current end"
            LOG.info(
                "run %s: %s (%d partitions) -> %s, %s",
                run.run_id, kafka.topic, len(parts), settings.storage.output, mode,
                extra={"partitions": len(parts)},
            )  # fmt: skip
        # 4. the dataflow
        source = TopicSource(
            kafka, rules, start, follow=run.follow, failpoints=failpoints, partitions=parts,
            bounds=bounds or None,
        )  # fmt: skip
        flow = build_flow(settings, source, failpoints, view)
        if stopping.requested():
            raise Stopped()
        bytewax_api_environment(settings, state.path)
        fewer_collections()
        cluster_args: dict[str, Any] = {}
        if cluster.process_id is not None:
            cluster_args = {"process_id": cluster.process_id, "addresses": cluster.address_list}
        try:
            cli_main(
                flow,
                workers_per_process=cluster.workers,
                epoch_interval=timedelta(seconds=run.snapshot_s),
                recovery_config=RecoveryConfig(str(state.recovery)),
                **cluster_args,
            )
        except BaseException as err:
            found = job_error(err)
            if found is None or found.exit_code != EXIT_KAFKA:  # brokers gone: no commit either
                commit_final_positions(settings, state, storage, failpoints, settled=False)
            if isinstance(err, KeyboardInterrupt):
                raise Stopped() from None
            if found is not None:
                raise found from None
            raise RunFailed(f"the run failed: {last_line(root_cause(err))}") from err
        # 5. after the dataflow: the record, then the final commit
        failpoints.run_durable()
        failures = take_end_of_run_failures()
        if not failures:
            state.mark_done(run.run_id, cluster.process_id or 0)
            if cluster.first:
                recovery.write_record(
                    state, storage, view, topic=kafka.topic, rules=rules, run_id=run.run_id,
                    processes=cluster.count,
                )  # fmt: skip
                retention.apply(storage, run.retain, run.run_id)  # --retain
        commit_final_positions(settings, state, storage, failpoints, settled=True)
        if failures:
            raise StorageError(f"{failures[0]}; the next run writes what is missing")
    data = storage.read_bytes(f"_runs/{run.run_id}.json")
    return json.loads(data) if data else None


def commit_final_positions(
    settings: Settings, state: Any, storage: Any, failpoints: Failpoints, settled: bool
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
    Its failures go to its log only (the manifest is process 0's to update).
    """
    from flows.edges.group import group_commits
    from flows.edges.manifest import note_group_error
    from flows.edges.source import quiet

    kafka = settings.kafka
    if not kafka.group_id:
        return
    first = settings.cluster.first
    config = kafka.client_config
    commits = group_commits({**quiet(config), **config}, kafka.group_id, kafka.topic, failpoints)
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
        ok = commits.flush(min(10.0, kafka.connect_s))
    except Exception as err:
        commits.failed(last_line(err))
        ok = False
    # A failure no batch took to the manifest is reported even if the final commit worked.
    error = commits.take_error() or (None if ok else commits.error)
    if first and error:
        try:
            note_group_error(storage, settings.run.run_id, error)
        except Exception as err:
            LOG.warning("could not update the manifest: %s", err)


def check_kafka_settings(settings: Settings) -> None:
    """Refuse librdkafka settings the client itself rejects, before anything starts."""
    from confluent_kafka import Consumer, KafkaException

    from flows.edges.source import quiet

    config = settings.kafka.client_config
    try:
        # It connects at once: a refusal is reported by the checks after, in one line.
        Consumer({**config, **quiet(config), "group.id": "party-rates"}).close()
    except KafkaException as err:
        raise SettingsError(f"invalid Kafka setting: {err.args[0].str()}") from None


def check_metrics_settings(settings: Settings) -> None:
    """Refuse a metrics port already in use and a metrics file that cannot be written.

    Bytewax's API server binds all interfaces; a port in use panics its thread, which in
    a multi-worker or multi-process run stops the dataflow without a word (README,
    "Operating it"), so the port is tried first.
    """
    port = settings.metrics_port_here
    metrics, process_id = settings.metrics, settings.cluster.process_id
    if port is not None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("0.0.0.0", port))
            except OSError as err:
                which = f"{metrics.metrics_port} + process id {process_id}"
                shown = f"{port} ({which})" if process_id else str(port)
                raise SettingsError(
                    f"--metrics-port: port {shown} is not free: {err.strerror}"
                ) from None
    if metrics.metrics_file:
        directory = Path(metrics.metrics_file).parent
        if not directory.is_dir() or not os.access(directory, os.W_OK):
            raise SettingsError(
                f"--metrics-file: {directory} is not a directory this process can write to"
            )


def export_metrics(settings: Settings) -> None:
    """Push the run's metrics and write its textfile, as the settings ask. A failure is
    reported in one line and changes nothing else: the run's own outcome stands."""
    from flows.edges.metrics import push, write_textfile

    metrics, topic, process_id = settings.metrics, settings.kafka.topic, settings.cluster.process_id
    if metrics.pushgateway:
        try:
            push(metrics.pushgateway, topic, process_id)
        except Exception as err:
            LOG.warning("pushing metrics to %s failed: %s", metrics.pushgateway, last_line(err))
    if metrics.metrics_file:
        try:
            write_textfile(metrics.metrics_file, process_id)
        except OSError as err:
            LOG.warning("writing the metrics file failed: %s", err)


def bytewax_api_environment(settings: Settings, state_path: Path) -> None:
    """Configure Bytewax's Dataflow API server, which serves ``/metrics``.

    Bytewax reads these from the environment of the process that runs the dataflow, and
    ``cli_main`` starts the server from them. Setting them is the entry point's job, for
    its own process, from the settings (nothing else under ``flows/`` touches the
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
    cache = state_path / "api" / f"process-{settings.cluster.process_id or 0}"
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["BYTEWAX_DATAFLOW_API_ENABLED"] = "1"
    os.environ["BYTEWAX_DATAFLOW_API_PORT"] = str(port)
    os.environ["BYTEWAX_DATAFLOW_API_CACHE_PATH"] = str(cache)
    serve_with_bytewax()


def run_local_cluster(settings: Settings, argv: list[str]) -> int:
    """``--processes N``: N processes of one Bytewax cluster on loopback, like ``-i/-a``.

    The state is checked, made or rebuilt once, here, before the processes start; they
    share this run's id. A stop reaches every process (flows.edges.stopping)."""
    from flows.edges import recovery, stopping
    from flows.edges.source import end_offsets, list_partitions
    from flows.edges.statedir import StateDir
    from flows.edges.storage import Storage
    from flows.tooling.broker import free_port

    kafka, config = settings.kafka, settings.kafka.client_config
    parts = list_partitions(config, kafka.topic, kafka.connect_s)
    recovery.prepare(
        StateDir(settings.run.state), Storage.for_output(settings.storage),
        lambda: end_offsets(config, kafka.topic, parts, kafka.connect_s),
        topic=kafka.topic, rules=settings.rules, recompute=settings.storage.recompute,
        run_id=settings.run.run_id,
    )  # fmt: skip
    n = settings.cluster.processes
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(n))
    base = [a for a in argv if not a.startswith("--processes")]
    if "--processes" in argv:  # drop "--processes N" given as two words
        i = argv.index("--processes")
        base = argv[:i] + argv[i + 2 :]
    children = []
    with stopping.held():  # a stop that comes while they start waits for them
        for i in range(n):
            extra = ["--process-id", str(i), "--addresses", addresses]
            extra += ["--run-id", settings.run.run_id]
            if i > 0:
                extra += ["--progress", "off"]
            cmd = [sys.executable, "-m", "flows.cli", *base, *extra]
            env = {**os.environ, "PARTY_RATES_PROCESSES": "1"}
            children.append(subprocess.Popen(cmd, env=env))
    return stopping.wait_cluster(children)


def cluster_run_id(settings: Settings) -> Settings:
    """The settings with the run id every process of a cluster started host by host shares.

    Without ``--run-id``, process 0 and the others would each make their own. The state
    directory, which they share, keeps the id of the run under way: the first process to
    prepare makes it, and a new one is made once the id's manifest exists (its run has
    begun its dataflow, which only starts once every process has prepared)."""
    from flows.edges.statedir import StateDir
    from flows.edges.storage import Storage

    if settings.cluster.process_id is None or "run_id" in settings.run.model_fields_set:
        return settings
    storage = Storage.for_output(settings.storage)
    run_id = StateDir(settings.run.state).shared_run_id(
        lambda candidate: storage.exists(f"_runs/{candidate}.json")
    )
    return settings.replace(run_id=run_id)


def fewer_collections() -> None:
    """Collect cyclic garbage less often during the run.

    The job allocates many short-lived tuples and dicts per event and holds few cycles; at
    the default thresholds the collector took about a sixth of the per-batch work in
    measurement (kept while ``make bench`` shows it pays: bench/RESULTS.md). Objects alive
    at start (modules, schemas) are frozen out of collections.
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


def summary(manifest: dict[str, Any]) -> str:
    """The run's counts in one line (its gaps on lines of their own)."""
    c = manifest["counts"]
    line = (
        f"run {manifest['run_id']} {manifest['status']}: {c['messages']:,} messages: "
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


def _counts(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's counts as a log line's fields."""
    return {"status": manifest.get("status"), **dict(manifest.get("counts", {}))}


__all__ = ["EXIT_FAILED", "RunFailed", "Stopped", "run", "run_job", "summary"]
