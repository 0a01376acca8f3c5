"""Mutations of the job that the tests must catch, and the command that shows they do.

Each mutation is a small edit of the job's code (the text it replaces, exactly once, and
what it puts there) with the tests expected to catch it. ``make mutations`` (``python -m
tests.mutations [NAME ...]``) copies the working tree to a scratch directory for each
mutation, applies it there, runs its tests there with this checkout's ``.venv`` and the
copy first on ``PYTHONPATH`` (nothing is installed, the checkout is never touched), and
prints which tests failed. A mutation no test catches makes the command fail.

It is not part of ``make test`` (a run per mutation); ``tests/test_mutations.py`` checks
there that every mutation still applies to the code as it is, and that a scratch copy
imports its own code.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str  # as the README lists it
    edits: tuple[tuple[str, str, str], ...]  # (file, text replaced exactly once, new text)
    tests: tuple[str, ...]  # pytest node ids expected to catch it


MUTATIONS = (
    Mutation(
        "dedup-off",
        "deduplication turned off",
        (
            (
                "flows/core/partition.py",
                "        if seen is not None and (max_t is None or seen >= "
                "(max_t - horizon_us) // bucket_us):\n",
                "        if False:\n",
            ),
        ),
        (
            "tests/test_partition.py",
            "tests/test_job_broker.py::test_duplicates_counted_once_across_runs",
        ),
    ),
    Mutation(
        "lateness-unchecked",
        "lateness not checked",
        (
            (
                "flows/core/partition.py",
                "        if max_t is not None and t_us < max_t - lateness_us:\n",
                "        if False:\n",
            ),
        ),
        ("tests/test_partition.py", "tests/test_flow.py::test_flow_matches_reference"),
    ),
    Mutation(
        "provisional-replaces-final",
        "a provisional row allowed to replace a final one",
        (
            (
                "flows/edges/sinks.py",
                "            return self.replace_final and bool(new[final])\n",
                "            return True\n",
            ),
            (
                "flows/edges/sinks.py",
                "        accept = pc.invert(old_final)  # no existing row, or a provisional one\n",
                "        accept = pc.or_(pc.invert(old_final), pc.invert(new_final))\n",
            ),
        ),
        ("tests/test_sinks.py",),
    ),
    Mutation(
        "final-rows-rewritten",
        "rows of windows the output's record says are final written again (a lost state "
        "and a trimmed topic then replace final rows with partial ones)",
        (
            (
                "flows/edges/sinks.py",
                "            return self.replace_final and bool(new[final])\n",
                "            return self.replace_final or bool(new[final])\n",
            ),
            (
                "flows/edges/sinks.py",
                "        if spec.replace_final:\n",
                "        if True:\n",
            ),
            (
                "flows/edges/sinks.py",
                "    writable = covered.writable if covered is not None else None\n",
                "    writable = None\n",
            ),
        ),
        ("tests/test_recovery.py::test_lost_state_and_trimmed_topic_keep_every_final_row",),
    ),
    Mutation(
        "reread-counted-again",
        "messages read again to rebuild a state counted as new (two manifests count them)",
        (
            (
                "flows/core/partition.py",
                "    if messages and messages[0].offset() < reread_before:\n",
                "    if False:\n",
            ),
        ),
        ("tests/test_recovery.py::test_a_lost_state_is_rebuilt_exactly",),
    ),
    Mutation(
        "rebuild-without-warm-up",
        "a lost state read again from the exact point only, without the ids the dedup rule "
        "remembers there",
        (
            (
                "flows/core/coverage.py",
                "    return Start(warm[1], warm[2], offset)\n",
                "    return Start(offset, max_before, offset)\n",
            ),
        ),
        (
            "tests/test_coverage.py::"
            "test_read_again_from_the_rebuild_start_every_decision_is_the_same",
        ),
    ),
    Mutation(
        "stale-temporaries-kept",
        "stale temporary files not removed",
        (
            (
                "flows/edges/storage.py",
                "        return self.remove_stale_temp_files()\n",
                "        return 0\n",
            ),
        ),
        ("tests/test_sinks.py::test_stale_temporary_files_are_removed_and_real_files_kept",),
    ),
    Mutation(
        "resume-from-zero",
        "a resumed run reading from offset 0",
        (
            (
                "flows/edges/source.py",
                "    PartitionSnapshot.read(saved, state.dedup.bucket_us).restore(state)\n",
                "    PartitionSnapshot.read(saved, state.dedup.bucket_us).restore(state)\n"
                "    state.next_offset = 0\n",
            ),
        ),
        (
            "tests/test_flow.py::test_resume_from_snapshot_equals_one_run",
            "tests/test_job_broker.py::test_split_runs_equal_one_run",
        ),
    ),
    Mutation(
        "users-of-every-kind",
        "distinct users counted over every event kind",
        (
            (
                "flows/core/partials.py",
                "        if kind == DISCONNECTED and user_bytes is not None:\n",
                "        if user_bytes is not None:\n",
            ),
        ),
        ("tests/test_flow.py::test_flow_matches_reference", "tests/test_partition.py"),
    ),
    Mutation(
        "nanoseconds-rounded",
        "`timestampUnixNano` rounded instead of floored",
        (
            (
                "flows/core/parsing.py",
                "                t_us = nano // 1000\n",
                "                t_us = round(nano / 1000)\n",
            ),
        ),
        ("tests/test_reference_rules.py",),
    ),
    Mutation(
        "commit-at-snapshot",
        "read positions committed to the group when a partition is snapshotted (before the "
        "snapshot is durable)",
        (
            (
                "flows/edges/source.py",
                "        self.snapshot_offset = self.state.next_offset\n"
                "        return PartitionSnapshot.of(self.state)\n",
                "        self.snapshot_offset = self.state.next_offset\n"
                "        if self.source.commits is not None:\n"
                "            self.source.commits.commit({self.partition: self.snapshot_offset})\n"
                "        return PartitionSnapshot.of(self.state)\n",
            ),
        ),
        ("tests/test_flow.py::test_no_group_commit_is_ahead_of_the_durable_snapshot",),
    ),
    Mutation(
        "final-commit-before-the-end",
        "the final commit made before the dataflow has returned",
        (
            (
                "flows/run.py",
                "        commit_final_positions(settings, state, storage, failpoints, "
                "settled=True)\n",
                "",
            ),
            (
                "flows/run.py",
                "        try:\n            cli_main(\n",
                "        commit_final_positions(settings, state, storage, failpoints, "
                "settled=True)\n        try:\n            cli_main(\n",
            ),
        ),
        (
            "tests/test_operating.py::test_group_offsets_are_the_manifest_ends_after_a_scheduled_run",
        ),
    ),
    Mutation(
        "dedup-horizon-ignored",
        "`--dedup-horizon` ignored (ids remembered for the allowed lateness only)",
        (
            (
                "flows/edges/source.py",
                "            dedup_horizon_us=self.source.rules.dedup_us,\n",
                "            dedup_horizon_us=self.source.rules.allowed_lateness,\n",
            ),
        ),
        (
            "tests/test_any_settings.py",
            "tests/test_job_broker.py::test_scheduled_run_matches_reference_at_other_settings",
        ),
    ),
    Mutation(
        "watermark-at-the-default-lateness",
        "the watermark computed with the default lateness whatever `--allowed-lateness` says",
        (
            (
                "flows/party_rates.py",
                "    w, late, horizon = rules.window, rules.allowed_lateness, "
                "rules.outcome_horizon\n",
                "    w, late, horizon = rules.window, 600_000_000, rules.outcome_horizon\n",
            ),
        ),
        (
            "tests/test_any_settings.py",
            "tests/test_job_broker.py::test_scheduled_run_matches_reference_at_other_settings",
        ),
    ),
    Mutation(
        "ticks-end-with-the-longest-roll-up",
        "shards ticked only until the longest roll-up's window ends (a roll-up that does "
        "not divide it ends later)",
        (
            (
                "flows/core/watermark.py",
                "            last_end = max(t - t % n + n for n in spans) + self.horizon_us\n",
                "            last_end = t - t % max(spans) + max(spans) + self.horizon_us\n",
            ),
        ),
        ("tests/test_any_settings.py", "tests/test_watermark.py"),
    ),
    Mutation(
        "ids-never-forgotten",
        "event ids never forgotten (a copy past the dedup horizon a duplicate, not late)",
        (
            (
                "flows/core/partition.py",
                "        if seen is not None and (max_t is None or seen >= "
                "(max_t - horizon_us) // bucket_us):\n",
                "        if seen is not None:\n",
            ),
            (
                "flows/core/partition.py",
                "        state.dedup.forget_before(max_t - horizon)",
                "        pass",
            ),
        ),
        (
            "tests/test_any_settings.py",
            "tests/test_job_broker.py::test_scheduled_run_matches_reference",
        ),
    ),
    Mutation(
        "forgotten-at-batch-ends",
        "ids forgotten only at the end of a batch (a copy's fate depends on where batches "
        "were cut)",
        (
            (
                "flows/core/partition.py",
                "        if seen is not None and (max_t is None or seen >= "
                "(max_t - horizon_us) // bucket_us):\n",
                "        if seen is not None:\n",
            ),
        ),
        ("tests/test_partition.py", "tests/test_any_settings.py"),
    ),
    Mutation(
        "commit-every-batch",
        "read positions committed with every batch, durable or not",
        (
            (
                "flows/edges/source.py",
                "        if self.done or stopping.requested():",
                "        if self.source.commits is not None:\n"
                "            self.source.commits.commit({self.partition: self.state.next_offset})\n"
                "        if self.done or stopping.requested():",
            ),
        ),
        ("tests/test_flow.py::test_no_group_commit_is_ahead_of_the_durable_snapshot",),
    ),
    Mutation(
        "drift-unbounded",
        "partitions read without event-time alignment whatever `--max-drift` says",
        (
            (
                "flows/edges/source.py",
                "if self.started and self.source.alignment.ahead(",
                "if False and self.source.alignment.ahead(",
            ),
        ),
        ("tests/test_alignment.py::test_a_reader_ahead_of_the_other_waits_for_it",),
    ),
    Mutation(
        "ended-partition-holds-back",
        "a partition at its end still holding the others back (a run would never end)",
        (("flows/edges/source.py", "reading=not (self.done or caught_up)", "reading=True"),),
        ("tests/test_alignment.py::test_a_reader_at_its_end_holds_nobody_back",),
    ),
)


def apply(mutation: Mutation, root: Path) -> None:
    """Apply the mutation's edits to the tree at ``root``; ValueError if one does not
    apply (its text is not in its file exactly once)."""
    for file, old, new in mutation.edits:
        path = root / file
        text = path.read_text(encoding="utf-8")
        found = text.count(old)
        if found != 1:
            raise ValueError(
                f"{mutation.name}: the text to replace is in {file} {found} times, not once"
            )
        path.write_text(text.replace(old, new), encoding="utf-8")


def _files(root: Path) -> list[str]:
    """The working tree's files: tracked ones and new ones not ignored, as they are now."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root, capture_output=True, check=True,
        ).stdout  # fmt: skip
        return [f for f in listed.decode().split("\0") if f and (root / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        parts = ("flows", "schemas", "tests", "bench", "notebooks", "docs")
        found = [p for d in parts for p in (root / d).rglob("*") if p.is_file()]
        found += [root / "pyproject.toml", root / "README.md"]
        skip = ("__pycache__", ".pytest_cache")
        return [str(p.relative_to(root)) for p in found if not any(s in p.parts for s in skip)]


def scratch_copy(dest: Path, root: Path = REPO) -> Path:
    """A copy of the working tree under ``dest`` (no ``.venv``, no caches)."""
    for name in _files(root):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    return dest


def scratch_env(scratch: Path) -> dict[str, str]:
    """The environment a scratch copy's tests run in: its code first on the path, for
    this process and every one its tests start."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(scratch)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def imports_from(scratch: Path) -> list[str]:
    """Where the scratch copy's Python finds the job and the tests (to check it is there)."""
    code = (
        "import flows.core.partition as a, tests.helpers as b; print(a.__file__); print(b.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=scratch, env=scratch_env(scratch),
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.split()


def run_mutation(mutation: Mutation, tests: tuple[str, ...] | None = None) -> list[str]:
    """The tests that fail with the mutation applied in a scratch copy."""
    with tempfile.TemporaryDirectory(prefix=f"mutation-{mutation.name}-") as tmp:
        scratch = scratch_copy(Path(tmp))
        for where in imports_from(scratch):
            if not Path(where).resolve().is_relative_to(scratch.resolve()):
                raise RuntimeError(f"the scratch copy imports {where}, not its own code")
        apply(mutation, scratch)
        cmd = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider"]
        cmd += [*(tests or mutation.tests)]
        result = subprocess.run(
            cmd, cwd=scratch, env=scratch_env(scratch), capture_output=True, text=True
        )
        failed = re.findall(r"^FAILED (\S+)", result.stdout, re.M)
        if not failed and result.returncode not in (0, 1):
            raise RuntimeError(f"{mutation.name}: pytest could not run:\n{result.stdout[-3000:]}")
        return sorted(set(failed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutations", description=__doc__)
    parser.add_argument("names", nargs="*", help="mutations to try (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--tests", nargs="+", help="run these tests instead of each one's own")
    args = parser.parse_args(argv)
    by_name = {m.name: m for m in MUTATIONS}
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name}: {m.what}\n    {' '.join(m.tests)}")
        return 0
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        parser.error(f"unknown mutation {unknown[0]!r}; known: {', '.join(by_name)}")
    chosen = [by_name[n] for n in args.names] if args.names else list(MUTATIONS)
    missed = []
    for m in chosen:
        started = time.monotonic()
        print(f"{m.name}: {m.what}", flush=True)
        failed = run_mutation(m, tuple(args.tests) if args.tests else None)
        took = time.monotonic() - started
        if failed:
            print(f"  caught by {len(failed)} test(s) in {took:.0f}s:", flush=True)
            for nodeid in failed:
                print(f"    {nodeid}", flush=True)
        else:
            print(f"  NOT CAUGHT ({took:.0f}s)", flush=True)
            missed.append(m.name)
    print(f"\n{len(chosen) - len(missed)} of {len(chosen)} mutations caught")
    if missed:
        print("not caught: " + ", ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
