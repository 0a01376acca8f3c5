"""The analysis notebook runs on real job output; the HTML report embeds real PNGs."""

from __future__ import annotations

import base64
import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from flows.analysis import (
    describe_incidents,
    find_incidents,
    load_disconnect_outcomes,
    load_party_rates,
)
from flows.tooling.simulator import SimConfig, generate, produce
from tests.helpers import REPO, run_cli, run_job

NOTEBOOK = REPO / "notebooks" / "party_health.ipynb"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KERNEL = "party-rates-test"


@pytest.fixture(scope="module")
def output(broker, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("notebook")
    topic = broker.new_topic()
    messages, _ = generate(SimConfig(messages=4000, namespaces=8, hours=4))
    produce(broker.bootstrap, topic, messages)
    run_job(broker.bootstrap, topic, tmp / "out", tmp / "state")
    return tmp / "out"


def _kernel_manager(tmp: Path) -> KernelManager:
    """A kernel running this interpreter, whatever ``python`` is on the PATH."""
    spec_dir = tmp / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "party-rates test",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(tmp / "kernels")])
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)


def test_committed_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [], cell.source
        assert cell.execution_count is None, cell.source
    first = code[0].source.splitlines()[0]
    assert first.startswith('OUTPUT = "../demo/output"')
    # It opens with the incidents: the first section after loading the data.
    headings = [c.source.splitlines()[0] for c in nb.cells if c.cell_type == "markdown"]
    assert headings[1] == "## Incidents"
    assert "find_incidents(outcomes)" in code[2].source
    assert "plot_incidents(outcomes, incidents)" in code[3].source
    text = NOTEBOOK.read_text(encoding="utf-8")
    assert "PARTY_RATES_NOTEBOOK_OUTPUT" in text
    assert "namespace=" not in text  # loads through the package, never by parsing paths


@pytest.mark.broker
def test_notebook_runs_on_job_output(output: Path, tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        km=_kernel_manager(tmp_path),
        timeout=120,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    env = {**os.environ, "PARTY_RATES_NOTEBOOK_OUTPUT": str(output)}
    client.execute(env=env)  # raises CellExecutionError on the first failing cell

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [
        base64.b64decode(o.data["image/png"]) for o in outputs if "image/png" in o.get("data", {})
    ]
    # Incidents, ranking, rates over time, hour heatmap, cohort vs window, rejoin times,
    # data health.
    assert len(images) >= 7
    assert all(img.startswith(PNG_MAGIC) and len(img) > 5_000 for img in images)
    # It read the output it was pointed at, not the demo's.
    rows = len(load_party_rates(output))
    texts = " ".join(o.get("data", {}).get("text/plain", "") for o in outputs)
    assert f"'rows': {rows}" in texts
    # The job's output has final disconnect_outcomes rows, and the new section shows them.
    outcomes = load_disconnect_outcomes(output)
    assert outcomes["is_final"].any() and outcomes["rejoin_seconds_p50"].notna().any()
    streams = " ".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "outcome horizon of the newest run: 1h" in streams
    tables = " ".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "cohort_drop_ratio" in tables and "p50_median" in tables
    finals = outcomes[outcomes["is_final"]]
    assert str(finals["namespace"].iloc[0]) in tables
    # The incidents of this output, as the package finds them, are what it printed first.
    lines = describe_incidents(find_incidents(outcomes))
    first_stream = next(o for o in outputs if o.output_type == "stream")
    assert first_stream.text.splitlines() == lines
    assert "roll-ups in this output: ['1h', '1d']" in streams  # the job writes them by default


@pytest.mark.broker
def test_report_command_embeds_png_plots(output: Path) -> None:
    result = run_cli("report", "--output", str(output))
    assert result.returncode == 0, result.stderr
    page = (output / "report.html").read_text(encoding="utf-8")
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 6  # the four views, the cohort drop ratio and the rejoin times
    for data in images:
        png = base64.b64decode(data, validate=True)
        assert png.startswith(PNG_MAGIC) and len(png) > 5_000
    assert "Worst namespaces" in page and "Dead letters by reason" in page
    assert 'alt="window drop ratio and cohort drop ratio"' in page
    assert 'alt="rejoin time distribution per namespace"' in page
    assert "<h2>Cohort drop ratio</h2>" in page and "<h2>Rejoin times</h2>" in page
    assert "outcome horizon (1h)" in page
    assert "no <code>disconnect_outcomes/</code> rows" not in page
    assert "not JSON" in page or "not a JSON object" in page

    other = output.parent / "elsewhere" / "r.html"
    result = run_cli("report", "--output", str(output), "--to", str(other))
    assert result.returncode == 0, result.stderr
    assert other.read_text(encoding="utf-8").count("data:image/png;base64,") == len(images)


def test_report_writes_the_main_plot_as_png(output: Path, tmp_path: Path) -> None:
    png = tmp_path / "main.png"
    result = run_cli(
        "report", "--output", str(output), "--to", str(tmp_path / "r.html"), "--png", str(png)
    )
    assert result.returncode == 0, result.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
