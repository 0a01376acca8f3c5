"""The settings are parsed once into typed parts, and the command line is made from them."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import pytest

from flows.cli import build_parser, settings_from
from flows.errors import SettingsError
from flows.settings import ENV_PREFIX, PARTS, Settings, flat_fields
from tests.helpers import REPO, run_cli


def run_parser() -> argparse.ArgumentParser:
    actions = build_parser()._subparsers._group_actions  # type: ignore[union-attr]
    return actions[0].choices["run"]  # type: ignore[no-any-return]


def flag_helps() -> dict[str, str]:
    """``--flag`` -> its help text, as ``party-rates run --help`` shows it."""
    return {
        action.option_strings[0]: action.help or ""
        for action in run_parser()._actions
        if action.option_strings and action.option_strings[0] != "-h"
    }


def test_every_setting_has_a_flag_and_an_environment_variable(monkeypatch) -> None:
    helps = flag_helps()
    fields = flat_fields()
    assert sorted(helps) == sorted("--" + name.replace("_", "-") for name in fields)
    for name, (part, info) in fields.items():
        assert info.description, name
        assert info.description in helps["--" + name.replace("_", "-")]
        # a variable of its own: a value it alone gives is the one the settings hold
        value = {"kafka_config": '{"client.id": "from-env"}', "follow": "true"}.get(name)
        if value is None:
            continue
        monkeypatch.setenv(ENV_PREFIX + name.upper(), value)
        got = getattr(getattr(Settings(output="o", state="s"), part), name)
        assert got in ({"client.id": "from-env"}, True)
    for part in PARTS:
        assert f"{part} settings" in run_parser().format_help()


def test_the_help_shows_each_default_once() -> None:
    helps = flag_helps()
    assert "(default: 5m)" in helps["--window"]
    assert "(default: 1h,1d)" in helps["--rollups"]
    assert "(default: 10000)" in helps["--batch-size"]
    assert helps["--output"].endswith("(required)")
    for flag, text in helps.items():
        assert len(re.findall(r"default", text)) <= 1, flag


def test_durations_are_validated_into_microseconds_and_shown_as_written() -> None:
    s = Settings(output="o", state="s", window="1m", allowed_lateness="90s", rollups="1d,1h")
    assert s.rules.window == 60_000_000
    assert s.rules.allowed_lateness == 90_000_000
    assert s.rules.rollups == (3_600_000_000, 86_400_000_000)
    assert s.rules.dedup_us == 90_000_000  # the dedup horizon is at least the lateness
    shown = s.public()
    assert (shown["window"], shown["allowed_lateness"], shown["rollups"]) == ("1m", "90s", "1h,1d")
    assert s.replace(window="2m").rules == s.rules.model_copy(update={"window": 120_000_000})
    # of the default roll-ups, those that fit the window; an explicit list that does not fit
    # is refused
    assert Settings(output="o", state="s", window="7m").rules.rollups == ()
    with pytest.raises(ValueError, match="not a multiple of the window"):
        Settings(output="o", state="s", window="7m", rollups="1h")


def test_a_flag_wins_over_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("PARTY_RATES_WINDOW", "2m")
    monkeypatch.setenv("PARTY_RATES_SHARDS", "3")
    args = run_parser().parse_args(["--output", "o", "--state", "s", "--window", "1m"])
    s = settings_from(args)
    assert (s.rules.window, s.rules.shards) == (60_000_000, 3)


def test_a_kafka_setting_keeps_its_commas() -> None:
    args = run_parser().parse_args(
        ["--output", "o", "--state", "s", "--kafka-config", "ssl.cipher.suites=A,B"]
    )
    assert settings_from(args).kafka.kafka_config == {"ssl.cipher.suites": "A,B"}


def test_a_bad_value_names_its_flag_and_variable() -> None:
    args = run_parser().parse_args(["--output", "o", "--state", "s", "--shards", "many"])
    with pytest.raises(SettingsError, match="--shards / PARTY_RATES_SHARDS: "):
        settings_from(args)


def test_settings_read_no_command_line(monkeypatch) -> None:
    """Under ``python -m bytewax.run`` the settings come from the environment alone: the
    arguments of that command are not the job's."""
    monkeypatch.setattr(sys, "argv", ["bytewax.run", "--window", "1m", "flows.party_rates"])
    assert Settings(output="o", state="s").rules.window == 300_000_000


def test_the_test_only_failpoint_is_no_setting() -> None:
    assert "failpoint" not in flat_fields()
    result = run_cli(
        "run", "--output", "o", "--state", "s", env={"PARTY_RATES_FAILPOINT": "after-lunch"}
    )
    assert result.returncode == 2
    assert "unknown failpoint 'after-lunch'" in result.stderr


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--version"],
        capture_output=True, text=True, cwd=REPO, check=True,
        env={**os.environ},
    )  # fmt: skip
    assert re.fullmatch(r"party-rates \S+ \(state format \d+, output format \d+\)\n", result.stdout)


def test_public_settings_hide_secrets() -> None:
    s = Settings(
        output="o", state="s", s3_secret_key="hunter2",
        kafka_config={"sasl.password": "hunter3", "client.id": "x"},
    )  # fmt: skip
    shown = json.dumps(s.public())
    assert "hunter2" not in shown and "hunter3" not in shown and '"client.id": "x"' in shown


def test_the_readme_flags_are_the_settings() -> None:
    from flows.cli import flags_markdown

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    begin = readme.index("<!-- flags:")
    section = readme[readme.index("\n", begin) + 1 : readme.index("<!-- end of flags -->")]
    assert section.strip() == flags_markdown().strip()
