"""Output to an S3-compatible object store (SeaweedFS on loopback) through the real CLI."""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from flows.analysis import (
    load_dead_letters,
    load_disconnect_outcomes,
    load_late_events,
    load_manifests,
    load_party_rates,
)
from flows.edges.storage import S3Target, Storage, StorageError
from flows.settings import Settings
from flows.tooling.simulator import SimConfig, chunks, generate, produce
from tests.helpers import _normalise, assert_same_rows, job_rows, prepare, run_cli, run_job
from tests.s3server import S3Server, seaweedfs_s3
from tests.test_cli_errors import _one_clear_line

pytestmark = [pytest.mark.broker, pytest.mark.slow]
SIM = SimConfig(messages=5_000, namespaces=5, hours=3)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with seaweedfs_s3() as server:
        yield server


def _run_s3(
    broker: Any, topic: str, uri: str, state: Path, server: S3Server, secret: str | None = None
) -> Any:
    """``party-rates run`` to ``uri``, the secret key in the environment as a user would."""
    return run_cli(
        "run", "--brokers", broker.bootstrap, "--topic", topic, "--output", uri,
        "--state", str(state), "--progress", "off",
        "--s3-endpoint", server.endpoint, "--s3-access-key", server.access_key,
        env={"PARTY_RATES_S3_SECRET_KEY": secret or server.secret_key},
        timeout=120,
    )  # fmt: skip


def test_split_runs_to_s3_equal_a_local_run(broker, s3: S3Server, tmp_path: Path) -> None:
    topic = broker.new_topic()
    messages, _ = generate(SIM)
    bucket, prefix = s3.bucket, "party"  # the bucket does not exist yet: the job creates it
    uri = f"s3://{bucket}/{prefix}"
    results = []
    for part in chunks(messages, 2):
        produce(broker.bootstrap, topic, part)
        result = _run_s3(broker, topic, uri, tmp_path / "s3-state", s3)
        assert result.returncode == 0, result.stderr
        results.append(result)
    run_job(broker.bootstrap, topic, tmp_path / "local", tmp_path / "local-state")

    fs = s3.filesystem()
    rows = _normalise(load_party_rates(f"{bucket}/{prefix}", filesystem=fs))
    assert len(rows) > 0
    assert_same_rows(rows, job_rows(tmp_path / "local"))
    assert not rows.duplicated(["namespace", "window_start"]).any()
    local, remote = tmp_path / "local", f"{bucket}/{prefix}"
    assert_same_rows(
        _normalise(load_disconnect_outcomes(remote, filesystem=fs)),
        _normalise(load_disconnect_outcomes(local)),
    )
    for load, drop in ((load_late_events, []), (load_dead_letters, ["seen_at"])):
        got, want = (
            load(*where).drop(columns=drop).sort_values(["partition", "offset"], ignore_index=True)
            for where in ((remote, fs), (local,))
        )
        assert_same_rows(got, want)

    # The objects as S3 lists them: each written by one PUT, one data file per date=
    # prefix (format 2), no directory markers, no temporary objects.
    objects = s3.list_objects(bucket, prefix + "/")
    keys = sorted(objects)
    assert not [k for k, etag in objects.items() if "-" in etag]  # single PUTs, no multipart
    rates = [k for k in keys if k.startswith(f"{prefix}/party_rates/")]
    per_partition = Counter(posixpath.dirname(k) for k in rates)
    assert per_partition and set(per_partition.values()) == {1}
    assert {posixpath.basename(k) for k in rates} == {"part-0.parquet"}
    assert all(posixpath.basename(posixpath.dirname(k)).startswith("date=") for k in rates)
    assert all(k.endswith((".parquet", ".json")) for k in keys), keys
    assert not [k for k in keys if posixpath.basename(k).startswith(".") or k.endswith("/")]

    manifests = load_manifests(f"{bucket}/{prefix}", filesystem=fs)
    assert len(manifests) == 2
    assert [m["status"] for m in manifests] == ["completed", "completed"]
    assert sum(m["counts"]["messages"] for m in manifests) == len(messages)
    assert [k for k in keys if k.startswith(f"{prefix}/_runs/")] == sorted(
        f"{prefix}/_runs/{m['run_id']}.json" for m in manifests
    )
    assert manifests[0]["settings"]["output"] == uri
    assert manifests[0]["settings"]["s3_secret_key"] == "***"

    secret = s3.secret_key
    for key in keys:
        with fs.open_input_stream(f"{bucket}/{key}") as f:
            assert secret.encode() not in f.read(), key
    for result in results:
        assert secret not in result.stderr and secret not in result.stdout
        assert uri in result.stderr and "completed" in result.stderr
    for path in (tmp_path / "s3-state").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert json.dumps(manifests).count(secret) == 0


def test_wrong_secret_key_is_one_clear_line(broker, s3: S3Server, tmp_path: Path) -> None:
    topic = broker.new_topic(partitions=1)
    wrong = "not-the-secret-" + s3.secret_key[:6]
    result = _run_s3(broker, topic, f"s3://{s3.bucket}/denied", tmp_path / "state", s3, wrong)
    assert result.returncode == 5  # output storage
    line = _one_clear_line(result.stderr)
    assert "access denied" in line and "secret" in line.lower()
    assert f"s3://{s3.bucket}/denied" in line
    assert wrong not in result.stderr and s3.secret_key not in result.stderr


def test_unreachable_endpoint_is_one_clear_line(broker, s3: S3Server, tmp_path: Path) -> None:
    from flows.tooling.broker import free_port

    topic = broker.new_topic(partitions=1)
    dead = S3Server(f"http://127.0.0.1:{free_port()}", s3.access_key, s3.secret_key, s3.bucket)
    result = _run_s3(broker, topic, f"s3://{s3.bucket}/x", tmp_path / "state", dead)
    assert result.returncode == 5  # output storage
    line = _one_clear_line(result.stderr)
    assert "cannot connect" in line and dead.endpoint in line
    assert s3.secret_key not in result.stderr


def test_storage_on_s3(s3: S3Server) -> None:
    """Every Storage operation against the object store, without the job."""
    import pyarrow as pa

    bucket = s3.new_bucket_name()
    target = S3Target.parse(
        f"s3://{bucket}/a/b/",
        endpoint=s3.endpoint,
        access_key=s3.access_key,
        secret_key=SecretStr(s3.secret_key),
    )
    storage = Storage(s3=target)
    assert s3.secret_key not in repr(storage) and s3.secret_key not in repr(target)
    assert storage.root == f"{bucket}/a/b"
    assert not storage.exists("_runs/x.json")
    assert storage.read_bytes("_runs/x.json") is None
    schema = pa.schema([("n", pa.int64())])
    assert storage.read_table("t/part-0.parquet", schema) is None
    assert list(storage.list_files("")) == []

    storage.write_tables([("t/k=1/part-0.parquet", pa.table({"n": [1, 2]}, schema=schema))])
    replaced = pa.table({"n": [3]}, schema=schema)
    storage.write_tables([("t/k=1/part-0.parquet", replaced)])
    storage.write_bytes("_runs/x.json", b"{}")
    table = storage.read_table("t/k=1/part-0.parquet", schema)
    assert table is not None and table.column("n").to_pylist() == [3]
    assert storage.read_bytes("_runs/x.json") == b"{}"
    assert storage.exists("_runs/x.json") and not storage.exists("_runs")
    assert sorted(storage.list_files("")) == ["_runs/x.json", "t/k=1/part-0.parquet"]
    assert list(storage.list_files("t")) == ["t/k=1/part-0.parquet"]
    assert storage.remove_stale_temp_files() == 0
    assert s3.list_keys(bucket) == ["a/b/_runs/x.json", "a/b/t/k=1/part-0.parquet"]
    assert storage.list_dir("") == [("_runs", True), ("t", True)]
    assert storage.list_dir("t") == [("k=1", True)]
    ((name, mtime),) = storage.files_in("_runs")
    assert name == "_runs/x.json" and mtime is not None and mtime.tzinfo is not None
    assert storage.parquet_rows("t/k=1/part-0.parquet") == 1
    storage.write_tables([("t/k=2/part-0.parquet", pa.table({"n": [4]}, schema=schema))])
    storage.delete_dir("t/k=1")
    storage.delete_dir("t/k=9")  # already gone: no error
    storage.delete_file("_runs/x.json")
    storage.delete_file("_runs/x.json")
    # pyarrow leaves an empty marker object for the parent of what it deletes (no option
    # turns it off): a key ending with "/", which listings and readers take for a directory
    left = s3.list_keys(bucket)
    assert [k for k in left if not k.endswith("/")] == ["a/b/t/k=2/part-0.parquet"]
    assert storage.list_dir("") == [("_runs", True), ("t", True)]
    assert list(storage.list_files("")) == ["t/k=2/part-0.parquet"]

    wrong = S3Target.parse(
        f"s3://{bucket}/a", endpoint=s3.endpoint, access_key=s3.access_key,
        secret_key=SecretStr("wrong-" + s3.secret_key),
    )  # fmt: skip
    with pytest.raises(StorageError, match="access denied") as denied:
        Storage(s3=wrong).exists("x")
    assert s3.secret_key not in str(denied.value)


@pytest.mark.parametrize(
    ("uri", "settings", "word"),
    [
        ("s3://KEY:hunter2@bucket/p", {}, "s3://BUCKET/PREFIX"),
        ("s3:///p", {}, "s3://BUCKET/PREFIX"),
        ("s3://bucket/../p", {}, ".."),
        ("s3://bucket/p", {"access_key": "k"}, "go together"),
        ("s3://bucket/p", {"endpoint": "ftp://host:1"}, "--s3-endpoint"),
    ],
)
def test_unusable_s3_settings_fail_on_first_use(uri: str, settings: dict, word: str) -> None:
    storage = Storage(s3=S3Target.parse(uri, **settings))  # no request, no error yet
    with pytest.raises(StorageError, match=word) as err:
        storage.exists("x")
    assert "hunter2" not in str(err.value) and "hunter2" not in repr(storage)


def test_a_format_1_output_on_s3_is_migrated(s3: S3Server, tmp_path: Path) -> None:
    """The format-1 output kept beside the state of format 4, in an object store: moved to
    format 2 by the first start, nothing of format 1 left, the same rows read back."""
    import shutil

    from flows.edges.statedir import META, StateDir
    from tests.test_migration import DATASETS, assert_same_frames, frames
    from tests.test_recovery import FIXTURE, WHOLE

    bucket = s3.new_bucket_name()
    uri = f"s3://{bucket}/old"
    settings = Settings(
        output=uri, state=str(tmp_path / "state"), progress="off", group_id="",
        s3_endpoint=s3.endpoint, s3_access_key=s3.access_key,
        s3_secret_key=SecretStr(s3.secret_key),
    )  # fmt: skip
    storage = Storage.for_output(settings.storage)
    for path in sorted((FIXTURE / "output").rglob("*")):
        if path.is_file():
            storage.write_bytes(path.relative_to(FIXTURE / "output").as_posix(), path.read_bytes())
    shutil.copytree(FIXTURE / "state", tmp_path / "state")
    meta = json.loads((tmp_path / "state" / META).read_text())
    (tmp_path / "state" / META).write_text(json.dumps(meta | {"output": uri}))
    fs = s3.filesystem()
    want = frames(FIXTURE / "output")
    bounds = {p: (m[0].offset(), m[-1].offset() + 1) for p, m in WHOLE.items()}
    prepare(settings, StateDir(settings.run.state), storage, lambda: bounds)
    keys = s3.list_keys(bucket)
    assert not [k for k in keys if "namespace=" in k]
    assert len([k for k in keys if k.endswith("/part-0.parquet")]) == len(DATASETS)
    got = {}
    for dataset in DATASETS:
        load = load_party_rates if dataset.startswith("party_rates") else load_disconnect_outcomes
        rollup = dataset.split("_")[-1] if dataset[-2:] in ("1h", "1d") else None
        got[dataset] = _normalise(load(f"{bucket}/old", filesystem=fs, rollup=rollup))
    assert_same_frames(got, {d: _normalise(f) for d, f in want.items()})
