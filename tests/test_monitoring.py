"""The monitoring that ships in deploy/: rules, their unit tests, the dashboard, held to the
metrics the job really exports and run against a real Prometheus.

``promtool`` and ``prometheus`` come from Debian's ``prometheus`` package (``make test``
installs it, as it installs the Pushgateway). Grafana is not installable on the test
machines: the dashboard's queries are what is tested, each with its template variables
filled in, on a Prometheus server started here that scrapes a Pushgateway fed by real
scheduled runs (one that succeeds, one that fails) and a following run's ``/metrics``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.exposition import generate_latest

from flows.edges.metrics import RESULTS, RunMetrics
from flows.tooling.broker import free_port
from flows.tooling.simulator import generate, produce
from tests import test_operating
from tests.helpers import REPO, run_cli, run_job
from tests.test_operating import (
    SMALL,
    _follow,
    _Only,
    _stop,
    parse,
)

pushgateway = test_operating.pushgateway  # the fixture: a real Pushgateway
RULES = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "party-rates.json"
RULE_FILES = ("recording_rules.yml", "alerts.yml")
ADDED = {"job", "instance", "process"}  # labels a push or a scrape adds to the job's own
METRIC = re.compile(r"(?<![:\w])(party_rates_\w+)")
RECORDED = re.compile(r"\b(\w+:party_rates_\w+:\w+)\b")


def _tool(name: str) -> str:
    found = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(found).exists():
        pytest.fail(
            f"{name} is not installed (Debian package prometheus): `make test` installs it "
            "with apt-get where apt is available; install it and run the tests again"
        )
    return found


def exported() -> dict[str, set[str]]:
    """Every sample name the job exports, scraped or as a run's totals, with its labels."""
    metrics = RunMetrics()
    metrics.reset("t")
    metrics.set_counts({key: 1 for key in RESULTS})
    metrics.moved_late(1)
    metrics.position(0, 5, 10)
    metrics.watermark(1_700_000_000_000_000)
    metrics.wrote("party_rates", 3)
    metrics.group_commit(True)
    metrics.group_commit(False)
    metrics.finish(True)
    metrics.finish(False)  # a later run failed: both times are exported
    out: dict[str, set[str]] = {}
    for collect in (metrics.collect, metrics.collect_run_totals):
        for name, labels in parse(generate_latest(_Only(collect)).decode()):
            out.setdefault(name, set()).update(k for k, _v in labels)
    return out


def rules() -> list[dict[str, Any]]:
    return [
        rule
        for name in RULE_FILES
        for group in yaml.safe_load((RULES / name).read_text())["groups"]
        for rule in group["rules"]
    ]


def dashboard_queries(topic: str) -> list[str]:
    """Every panel's query, its template variables filled in as Grafana would."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    return [e.replace("$topic", topic).replace("$__rate_interval", "15s") for e in exprs]


def unknown_metrics(expr: str, known: set[str], recorded: set[str]) -> list[str]:
    """Names in a query that neither the job exports nor the recording rules record."""
    wrong = [m for m in METRIC.findall(expr) if m not in known]
    return wrong + [r for r in RECORDED.findall(expr) if r not in recorded]


# --- the rules, offline ----------------------------------------------------------------------


def test_promtool_checks_the_rules_and_the_scrape_config() -> None:
    promtool = _tool("promtool")
    for args in (["check", "rules", *RULE_FILES], ["check", "config", "prometheus.yml"]):
        result = subprocess.run(
            [promtool, *args], cwd=RULES, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = subprocess.run(
        [_tool("promtool"), "test", "rules", "rules_test.yml"],
        cwd=RULES,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rules_their_tests_and_the_dashboard_use_what_the_job_exports() -> None:
    """No drift between the metrics and what reads them: every name in a rule or a panel
    is exported by the job or recorded by a rule; every series of the promtool tests is
    one the job exports, with its labels (plus what a push or a scrape adds)."""
    known = exported()
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    for rule in rules():
        assert unknown_metrics(rule["expr"], set(known), recorded) == [], rule
    for expr in dashboard_queries("t"):
        assert unknown_metrics(expr, set(known), recorded) == [], expr
    tests = yaml.safe_load((RULES / "rules_test.yml").read_text())
    series = [s["series"] for t in tests["tests"] for s in t["input_series"]]
    assert series
    for text in series:
        name, _, labels = text.partition("{")
        keys = set(re.findall(r"(\w+)=", labels))
        assert name in known, text
        assert keys <= known[name] | ADDED, text
        result = re.search(r'result="(\w+)"', labels)
        if result and "messages" in name:
            assert result[1] in RESULTS.values(), text


def test_the_drift_check_sees_a_name_the_job_does_not_export() -> None:
    known = set(exported())
    assert "party_rates_last_run_messages" in known
    assert "party_rates_messages_total" in known
    expr = "sum(rate(party_rates_mesages_total[5m])) / topic:party_rates_nothing:sum"
    assert unknown_metrics(expr, known, set()) == [
        "party_rates_mesages_total",
        "topic:party_rates_nothing:sum",
    ]


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a README heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_alert_has_a_severity_and_a_runbook_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", readme, re.M)}
    alerts = [rule for rule in rules() if "alert" in rule]
    assert len(alerts) == 6
    for alert in alerts:
        assert alert["labels"]["severity"] in ("info", "warning", "critical"), alert
        url = alert["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == "README.md" and anchor == _anchor(alert["alert"]), url
        assert anchor in anchors, f"no README heading for {url}"


# --- against a real Prometheus ---------------------------------------------------------------


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[Any]:
    """Starts a Prometheus server with the shipped rules and scrape config (the targets
    given), on a free loopback port; yields a starter, returns the server's URL."""
    binary = _tool("prometheus")
    started: list[subprocess.Popen[Any]] = []

    def start(targets: dict[str, str]) -> str:
        config = yaml.safe_load((RULES / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(RULES / name) for name in config["rule_files"]]
        assert {c["job_name"] for c in config["scrape_configs"]} == set(targets)
        for scrape in config["scrape_configs"]:
            scrape["static_configs"] = [{"targets": [targets[scrape["job_name"]]]}]
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115  (the server's lifetime)
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=log,
        )
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while _get(f"{url}/-/ready") is None:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "Prometheus not ready in 60s"
            time.sleep(0.2)  # polling a server the test started
        return url

    yield start
    for proc in started:
        proc.kill()
        proc.wait(timeout=30)


def _get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
    except OSError:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body


def _query(url: str, expr: str) -> list[Any]:
    answer = _get(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer is None or answer["status"] == "success", answer
    return [] if answer is None else answer["data"]["result"]


@pytest.mark.broker
@pytest.mark.slow
def test_prometheus_answers_every_dashboard_query_and_fires_the_run_failed_alert(
    broker, pushgateway: str, prometheus_server: Any, tmp_path: Path
) -> None:
    topic = broker.new_topic(partitions=3)
    produce(broker.bootstrap, topic, generate(SMALL)[0])
    scheduled = tmp_path / "scheduled"
    group = f"mon-{uuid.uuid4().hex[:8]}"
    push = ["--pushgateway", pushgateway, "--group-id", group]
    run_job(broker.bootstrap, topic, scheduled / "out", scheduled / "state", *push)
    failed = run_cli(
        "run", "--brokers", broker.bootstrap, "--topic", topic, "--output",
        str(scheduled / "out"), "--state", str(scheduled / "state"), "--progress", "off",
        *push, env={"PARTY_RATES_FAILPOINT": "raise-in-batch"},
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    port = free_port()
    follower = _follow(broker, topic, tmp_path, port, "--group-id", f"{group}-following")
    try:
        url = prometheus_server(
            {
                "pushgateway": pushgateway.removeprefix("http://"),
                "party-rates-following": f"127.0.0.1:{port}",
            }
        )
        queries = dashboard_queries(topic)
        deadline = time.monotonic() + 120
        while True:
            empty = [q for q in queries if not _query(url, q)]
            alerts = (_get(f"{url}/api/v1/alerts") or {}).get("data", {}).get("alerts", [])
            firing = [
                a["labels"]
                for a in alerts
                if a["labels"]["alertname"] == "PartyRatesRunFailed" and a["state"] == "firing"
            ]
            if not empty and firing:
                break
            assert time.monotonic() < deadline, f"no series for {empty}; firing: {firing}"
            time.sleep(0.5)  # polling the server's evaluations
        topics = _get(
            f"{url}/api/v1/label/topic/values?"
            + urllib.parse.urlencode({"match[]": "party_rates_run_duration_seconds"})
        )
        # Both kinds of run are there: pushed run totals and a following run's counters.
        durations = _query(url, f'party_rates_run_duration_seconds{{topic="{topic}"}}')
    finally:
        _stop(follower)
    assert firing == [{"alertname": "PartyRatesRunFailed", "severity": "warning", "topic": topic}]
    assert topic in topics["data"]  # the dashboard's topic variable offers it
    assert {r["metric"]["job"] for r in durations} == {"party-rates", "party-rates-following"}
