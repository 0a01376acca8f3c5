"""The tree's architecture as rules: which part may import which, and the built wheel."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

FLOWS = REPO / "flows"
PIP = [sys.executable, "-m", "pip"]

STANDARD_LIBRARY_ONLY = (
    "pandas", "matplotlib", "pydantic", "bytewax", "confluent_kafka", "pyarrow",
    "flows.analysis", "flows.tooling", "flows.edges", "flows.core", "flows.settings",
)  # fmt: skip
FORBIDDEN = {
    # part: modules it must not import, at module level or inside functions
    "flows.core": (
        "bytewax", "confluent_kafka", "pyarrow", "pandas", "matplotlib", "flows.edges",
        "flows.analysis", "flows.tooling", "flows.party_rates", "flows.steps", "flows.cli",
        "flows.settings",
    ),
    "flows.edges": ("pandas", "matplotlib", "flows.analysis", "flows.tooling", "flows.cli"),
    "flows.analysis": ("bytewax", "confluent_kafka", "flows.edges", "flows.steps", "flows.cli"),
    "flows.tooling": ("bytewax", "pandas", "matplotlib", "flows.edges", "flows.analysis"),
    "flows.party_rates": ("pandas", "matplotlib", "flows.analysis", "flows.tooling"),
    "flows.steps": ("pandas", "matplotlib", "flows.analysis", "flows.tooling"),
    "flows.settings": ("pandas", "matplotlib", "flows.analysis", "flows.tooling", "flows.edges"),
    "flows.failpoints": ("pandas", "matplotlib", "flows.analysis", "flows.tooling", "flows.edges"),
    "flows.secretfiles": (
        "pandas", "matplotlib", "pydantic", "bytewax", "confluent_kafka", "flows.analysis",
        "flows.tooling", "flows.edges", "flows.core", "flows.settings",
    ),
    "flows.errors": STANDARD_LIBRARY_ONLY,
    "flows.logs": STANDARD_LIBRARY_ONLY,
    "flows.run": ("pandas", "matplotlib", "flows.analysis", "flows.cli"),
}  # fmt: skip
MODULE_LEVEL_FORBIDDEN = {
    # the CLI's status, demo and report commands import these inside their own functions
    "flows.cli": ("pandas", "matplotlib", "flows.analysis", "flows.tooling", "flows.edges"),
    # --processes takes a free port from the broker's tooling
    "flows.run": ("flows.tooling",),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def _imports(tree: ast.Module, module_level_only: bool) -> list[tuple[int, str]]:
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    if module_level_only:  # imports under a module-level if/try count as module level
        nodes = [n for top in tree.body for n in ast.walk(top) if not _in_function(top, n)]
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, node.module)]
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return out


def _in_function(top: ast.AST, node: ast.AST) -> bool:
    if isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef):
        return True
    if isinstance(top, ast.ClassDef):
        return any(
            node in ast.walk(f)
            for f in top.body
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        )
    return False


def _violations(rules: dict[str, tuple[str, ...]], module_level_only: bool) -> list[str]:
    found = []
    for path in sorted(FLOWS.rglob("*.py")):
        name = _module_name(path)
        for part, banned in rules.items():
            if name != part and not name.startswith(part + "."):
                continue
            tree = ast.parse(path.read_text(), str(path))
            for line, imported in _imports(tree, module_level_only):
                for ban in banned:
                    if imported == ban or imported.startswith(ban + "."):
                        found.append(f"{path.relative_to(REPO)}:{line} imports {imported}")
    return sorted(set(found))


def test_each_part_imports_only_what_its_docstring_allows() -> None:
    assert _violations(FORBIDDEN, module_level_only=False) == []
    assert _violations(MODULE_LEVEL_FORBIDDEN, module_level_only=True) == []


def test_the_rules_cover_every_module() -> None:
    parts = set(FORBIDDEN) | set(MODULE_LEVEL_FORBIDDEN) | {"flows"}
    for path in FLOWS.rglob("*.py"):
        name = _module_name(path)
        assert any(name == p or name.startswith(p + ".") for p in parts if p != "flows") or (
            name == "flows"
        ), f"{name} belongs to no part of the layout"


def test_the_rule_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    tree = ast.parse("import os\ndef f():\n    import pandas\n")
    assert (3, "pandas") in _imports(tree, module_level_only=False)
    assert (3, "pandas") not in _imports(tree, module_level_only=True)


RUN_IMPORTS = """
import json, sys
import flows.party_rates, flows.cli, flows.steps
from flows.cli import build_parser
from flows.run import run_job
from flows.edges import source, sinks, storage, statedir, manifest
build_parser()
print(json.dumps(sorted(sys.modules)))
"""


def test_the_job_loads_nothing_of_the_analysis_side() -> None:
    """In a fresh interpreter, the flow and the CLI for ``run`` load no analysis code,
    no pandas and no matplotlib: that is start-up time of every scheduled run."""
    result = subprocess.run(
        [sys.executable, "-c", RUN_IMPORTS], capture_output=True, text=True, cwd=REPO, check=True
    )
    loaded = json.loads(result.stdout)
    assert "flows.party_rates" in loaded  # the check itself works
    unwanted = ("flows.analysis", "flows.tooling", "pandas", "matplotlib")
    assert [m for m in loaded if m.split(".")[0] in unwanted or m.startswith(unwanted)] == []


def _architecture_section() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Architecture") :]
    return section[: section.index("\n## ", 1)]


def _not_in_architecture(section: str) -> list[str]:
    """The parts and modules of ``flows/`` that the Architecture table does not name: every
    top-level module as `flows/NAME.py` in the first column of a row, every sub-package as
    the first column of its own row, and each of its modules as `NAME.py` in that row."""
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| `")]
    parts = {cells[1].strip(): cells[2] for cells in rows if len(cells) > 3}
    first_column = " ".join(parts)
    missing = []
    for path in sorted(FLOWS.glob("*.py")):
        if path.name != "__init__.py" and f"`flows/{path.name}`" not in first_column:
            missing.append(f"flows/{path.name}")
    for init in sorted(FLOWS.glob("*/__init__.py")):
        package = init.parent
        row = parts.get(f"`flows/{package.name}/`")
        if row is None:
            missing.append(f"flows/{package.name}/")
            continue
        for module in sorted(package.rglob("*.py")):
            name = module.relative_to(package).as_posix()
            if module.name != "__init__.py" and f"`{name}`" not in row:
                missing.append(f"flows/{package.name}/{name}")
    return missing


def test_the_readme_architecture_names_every_part_and_module() -> None:
    packages = sorted(p.parent.name for p in FLOWS.glob("*/__init__.py"))
    assert {"core", "edges", "analysis", "tooling"} <= set(packages)
    assert _not_in_architecture(_architecture_section()) == []


def test_the_architecture_check_sees_a_module_left_out() -> None:
    section = _architecture_section()
    cases = [
        ("(`paths.py`)", "", ["flows/core/paths.py"]),
        ("| `flows/failpoints.py` |", "| failpoints |", ["flows/failpoints.py"]),
        ("| `flows/tooling/` |", "| tooling |", ["flows/tooling/"]),
        ("(`group.py`)", "", ["flows/edges/group.py"]),
    ]
    for old, new, expected in cases:
        assert old in section, old
        assert _not_in_architecture(section.replace(old, new)) == expected, old
    # Named, but in another part's row: still missing from its own.
    moved = section.replace("(`group.py`)", "").replace("(`items.py`)", "(`group.py`)")
    assert _not_in_architecture(moved) == ["flows/core/items.py", "flows/edges/group.py"]


def test_every_test_the_guarantees_name_exists() -> None:
    import re

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Guarantees") :]
    section = section[: section.index("\n## ", 1)]
    named = set(re.findall(r"\b(test_\w+)", section)) - {"test_sinks", "test_crash"}
    named -= {n for n in named if (REPO / "tests" / f"{n}.py").exists()}
    defined = set()
    for path in (REPO / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
    assert named, "no test named"
    assert sorted(named - defined) == []
