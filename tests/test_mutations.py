"""The mutations ``make mutations`` tries (``tests/mutations.py``) stay usable: each applies
to the code as it is, names tests that exist, is listed in the README, and a scratch copy
runs its own code, not this checkout's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.mutations import MUTATIONS, REPO, apply, imports_from, scratch_copy


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_every_mutation_applies_to_the_code_as_it_is(mutation, tmp_path: Path) -> None:
    for file, _old, _new in mutation.edits:
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file).write_text((REPO / file).read_text(encoding="utf-8"), encoding="utf-8")
    apply(mutation, tmp_path)
    for file, _old, new in mutation.edits:
        assert new in (tmp_path / file).read_text(encoding="utf-8")
        assert (tmp_path / file).read_text() != (REPO / file).read_text()


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_every_mutation_names_tests_that_exist(mutation) -> None:
    assert mutation.tests
    for nodeid in mutation.tests:
        path, _, name = nodeid.partition("::")
        assert (REPO / path).is_file(), nodeid
        if name:
            text = (REPO / path).read_text(encoding="utf-8")
            assert re.search(rf"^def {re.escape(name)}\(", text, re.M), nodeid


def test_the_readme_lists_every_mutation() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Guarantees") :]
    section = section[: section.index("\n## ", 1)]
    listed = re.findall(r"^- `([a-z-]+)`: ", section, re.M)
    assert listed == [m.name for m in MUTATIONS]
    for m in MUTATIONS:
        assert f"- `{m.name}`: {m.what}" in " ".join(section.split()), m.name


def test_a_scratch_copy_runs_its_own_code(tmp_path: Path) -> None:
    scratch = scratch_copy(tmp_path / "scratch")
    assert (scratch / "flows" / "core" / "partition.py").is_file()
    assert not (scratch / ".venv").exists()
    for where in imports_from(scratch):
        assert Path(where).resolve().is_relative_to(scratch.resolve()), where
