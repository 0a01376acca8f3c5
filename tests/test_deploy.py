"""deploy/ speaks the CLI's own language and has the structure the README promises.

No base image registry and no recent ``kubectl`` can be reached from the machines the
tests run on, so the Containerfile is not built and the manifests are not applied. What
is checked instead: every flag and ``PARTY_RATES_*`` variable the manifests give is the
command's own and the command accepts their values (no drift), secrets come from Secrets
only, and the Jobs hold the failure policy, deadline, resources and volumes they need.
tests/test_install.py installs the wheel as the Containerfile does.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.cli import build_parser, settings_from
from flows.errors import EXIT_CONFLICT as EXIT_STATE
from flows.errors import EXIT_FAILED, EXIT_KAFKA, EXIT_SETTINGS, EXIT_STORAGE
from flows.settings import SECRET_WORDS, flat_fields
from tests.helpers import REPO

DEPLOY = REPO / "deploy"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
STOPPED = 130  # a scheduled run stopped by a signal (README, "Running the job")
INDEX = "$(JOB_COMPLETION_INDEX)"


def documents(name: str) -> list[dict[str, Any]]:
    text = (DEPLOY / "kubernetes" / name).read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def job_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]


def run_parser() -> argparse.ArgumentParser:
    actions = build_parser()._subparsers._group_actions  # type: ignore[union-attr]
    return actions[0].choices["run"]  # type: ignore[no-any-return]


def drift(container: dict[str, Any]) -> list[str]:
    """Flags and variables of a container that ``party-rates run`` does not know."""
    flags = {s for a in run_parser()._actions for s in a.option_strings}
    args = container.get("args", [])
    wrong = [] if args[:1] == ["run"] else [f"args start with {args[:1]}, not run"]
    wrong += [a for a in args if a.startswith("--") and a.split("=")[0] not in flags]
    for env in container.get("env", []):
        name = env["name"]
        field = name.removeprefix("PARTY_RATES_").lower()
        if not name.startswith("PARTY_RATES_") or field not in flat_fields():
            wrong.append(name)
    return wrong


def containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(file, pod spec, container) of every manifest's job."""
    out = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in documents(path.name):
            if doc["kind"] in ("CronJob", "Job"):
                pod = job_spec(doc)["template"]["spec"]
                out += [(path.name, pod, c) for c in pod["containers"]]
    return out


def test_the_manifests_use_the_clis_flags_and_variables_only() -> None:
    found = containers()
    assert {name for name, _pod, _c in found} == {"cronjob.yaml", "cluster.yaml"}
    for name, _pod, container in found:
        assert drift(container) == [], name


def test_the_drift_check_sees_what_the_cli_does_not_know() -> None:
    container = {
        "args": ["run", "--process-id", "0", "--no-such-flag", "1"],
        "env": [{"name": "PARTY_RATES_TOPIC"}, {"name": "PARTY_RATES_NO_SUCH"}, {"name": "X"}],
    }
    assert drift(container) == ["--no-such-flag", "PARTY_RATES_NO_SUCH", "X"]
    assert drift({"args": ["demo"]}) == ["args start with ['demo'], not run"]


@pytest.mark.parametrize("manifest", ["cronjob.yaml", "cluster.yaml"])
def test_the_cli_accepts_the_manifests_settings(
    manifest: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings a pod would get, parsed by the command itself: the files a Secret
    mounts are stood in for by files made here, a Secret's value by a made-up one."""
    container = next(c for n, _p, c in containers() if n == manifest)
    for env in container["env"]:
        name = env["name"]
        if "valueFrom" in env:
            monkeypatch.setenv(name, "from-a-secret")
        elif name.endswith("_FILE"):
            stand_in = tmp_path / name
            stand_in.write_text("security.protocol=SSL\n" if "KAFKA" in name else "s3cr3t\n")
            monkeypatch.setenv(name, str(stand_in))
        else:
            monkeypatch.setenv(name, env["value"])
    args = [a.replace(INDEX, "1") for a in container["args"]]
    settings = settings_from(run_parser().parse_args(args[1:]))
    assert settings.kafka.kafka_config == {"security.protocol": "SSL"}  # the file was read
    if manifest == "cluster.yaml":
        assert settings.cluster.process_id == 1 and settings.cluster.addresses
        secret = settings.storage.s3_secret_key
        assert secret is not None and secret.get_secret_value() == "s3cr3t"


def test_secrets_come_from_secrets_only() -> None:
    """No secret value in a manifest: secret-like settings come from a Secret, as a
    mounted file or a secretKeyRef, and no Secret object with data ships in deploy/."""
    for name, pod, container in containers():
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = container["volumeMounts"]
        for env in container["env"]:
            key = env["name"].lower()
            secret_like = any(w in key for w in SECRET_WORDS) or key.endswith("_key")
            if env["name"] in ("PARTY_RATES_KAFKA_CONFIG", "PARTY_RATES_S3_SECRET_KEY"):
                raise AssertionError(f"{name}: {env['name']} in the manifest; use its _FILE")
            if key.endswith("_file"):
                mount = next(m for m in mounts if env["value"].startswith(m["mountPath"] + "/"))
                assert "secret" in volumes[mount["name"]], (name, env)
                assert mount.get("readOnly") is True, (name, mount)
            elif secret_like:
                assert "secretKeyRef" in env.get("valueFrom", {}), (name, env)
        assert any(e["name"] == "PARTY_RATES_KAFKA_CONFIG_FILE" for e in container["env"]), name
    for path in (DEPLOY / "kubernetes").glob("*.yaml"):
        assert all(d["kind"] != "Secret" for d in documents(path.name)), path


def _failure_policy(spec: dict[str, Any]) -> dict[str, set[Any]]:
    """podFailurePolicy as action -> exit codes (and pod conditions)."""
    out: dict[str, set[Any]] = {}
    for rule in spec["podFailurePolicy"]["rules"]:
        codes = rule.get("onExitCodes")
        if codes:
            assert codes["operator"] == "In" and codes["containerName"] == "party-rates"
            out.setdefault(rule["action"], set()).update(codes["values"])
        for condition in rule.get("onPodConditions", []):
            out.setdefault(rule["action"], set()).add(condition["type"])
    return out


@pytest.mark.parametrize("manifest", ["cronjob.yaml", "cluster.yaml"])
def test_each_job_fails_at_once_on_what_a_retry_cannot_fix(manifest: str) -> None:
    docs = documents(manifest)
    job = next(d for d in docs if d["kind"] in ("CronJob", "Job"))
    spec = job_spec(job)
    assert _failure_policy(spec) == {
        "FailJob": {EXIT_SETTINGS, EXIT_STATE},
        "Ignore": {STOPPED, "DisruptionTarget"},
        "Count": {EXIT_FAILED, EXIT_KAFKA, EXIT_STORAGE},
    }
    assert spec["backoffLimit"] >= 1 and spec["activeDeadlineSeconds"] > 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy needs it
    assert pod["terminationGracePeriodSeconds"] >= 30  # time to stop at a batch boundary
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["name"] == "party-rates"
    version = PYPROJECT["project"]["version"]
    assert container["image"] == f"party-rates:{version}"
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    # The state directory is a mounted persistent volume.
    env = {e["name"]: e.get("value") for e in container["env"]}
    (state,) = [m for m in container["volumeMounts"] if m["mountPath"] == env["PARTY_RATES_STATE"]]
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes[state["name"]]["persistentVolumeClaim"]["claimName"]
    pvc = next(
        d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim
    )
    if manifest == "cluster.yaml":  # every process shares the recovery store
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_cronjob_never_overlaps_its_runs() -> None:
    cron = one(documents("cronjob.yaml"), "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    minutes = re.fullmatch(r"\*/(\d+) \* \* \* \*", cron["spec"]["schedule"])
    assert minutes is not None
    # A run that outlasts the period is stopped (at a batch boundary) before the next.
    assert job_spec(cron)["activeDeadlineSeconds"] < int(minutes[1]) * 60


def test_the_cluster_gives_each_process_its_id_and_every_address() -> None:
    docs = documents("cluster.yaml")
    job, service = one(docs, "Job"), one(docs, "Service")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[args.index("--process-id") + 1] == INDEX
    addresses = args[args.index("--addresses") + 1].split(";")
    assert spec["completions"] == spec["parallelism"] == len(addresses)
    assert service["spec"]["clusterIP"] == "None"
    assert pod["subdomain"] == service["metadata"]["name"]
    labels = spec["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    name = job["metadata"]["name"]
    assert addresses == [
        f"{name}-{i}.{pod['subdomain']}:{port['port']}" for i in range(len(addresses))
    ]
    assert {"containerPort": port["port"], "name": port["name"]} in container["ports"]


def test_the_containerfile_installs_the_wheel_without_extras() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    lines = [ln for ln in text.replace("\\\n", " ").splitlines() if ln and not ln.startswith("#")]
    bases = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    for base in bases:
        python = re.search(r"python:(3\.\d+)", base)
        assert python is not None and python[1] in ("3.11", "3.12"), base  # requires-python
    installs = [ln for ln in lines if "pip install" in ln]
    (install,) = installs
    assert "-c /tmp/requirements.lock" in install and "party_rates-*.whl" in install
    assert "[" not in install  # no extra: the slim install
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in {p.split(".")[0] for p in packages}:
        assert f"COPY {package} {package}" in lines
    (user,) = [ln for ln in lines if ln.startswith("USER ")]
    assert not user.split()[1].startswith(("0", "root"))
    (script,) = PYPROJECT["project"]["scripts"]
    assert f'ENTRYPOINT ["{script}"]' in lines
