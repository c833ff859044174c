# -*- test-case-name: tests.test_cli_doctor -*-
"""
What runs the diagnostic commands (``doctor``, ``gather-logs``, ``loglevel``), imported by
``telenet.cli.main`` only when one of them runs; their arguments are in ``diagnoseargs``.

The ``make_*`` factories are what the tests replace to drive the commands with fakes.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from telenet.cli.connection import CLIError
from telenet.cli.dockerapi import DockerError
from telenet.core.gocompat import parse_duration

if TYPE_CHECKING:
    from telenet.cli.connector import Connector
    from telenet.cli.doctor import Doctor
    from telenet.cli.gatherlogs import LogGatherer
    from telenet.cli.loglevel import LevelSetter

Show = Callable[[dict[str, Any], "str | None", Any, Callable[[dict[str, Any]], str]], int]


def make_doctor(connector: Connector) -> Doctor:
    """The CLI's Doctor (tests replace this to drive its probes with fakes)."""
    from telenet.cli.doctor import Doctor

    return Doctor(connector.docker, connector.config, connector.lookup, connector.host_routes)


def make_level_setter(connector: Connector) -> LevelSetter:
    """The CLI's LevelSetter (tests replace this to answer for the plug-ins)."""
    from telenet.cli.loglevel import LevelSetter

    return LevelSetter(connector.docker, connector.config, connector.lookup)


def make_gatherer(connector: Connector) -> LogGatherer:
    """The CLI's LogGatherer (tests replace this to answer for the plug-ins and files)."""
    from telenet.cli.gatherlogs import LogGatherer

    return LogGatherer(
        connector.docker, connector.config, connector.reporter, make_doctor(connector)
    )


def run(connector: Connector, args: argparse.Namespace, out: Any, show: Show) -> int:
    """Run ``args.command``; its exit code (1 when doctor or loglevel found trouble)."""
    if args.command == "doctor":
        from telenet.cli import doctor

        name = args.name or args.connection or os.environ.get("TELENET_CONNECTION") or None
        findings = make_doctor(connector).run(name)
        show(doctor.as_data(findings), args.output, out, doctor.format_findings)
        return doctor.exit_code(findings)
    if args.command == "gather-logs":
        return _gather_logs(connector, args, out)
    from telenet.cli import loglevel as levels

    duration = _duration(args.duration, "--duration", "30s or 5m") if args.duration else 0.0
    data = make_level_setter(connector).set(levels.check_level(args.level), duration, args.name)
    show(data, args.output, out, levels.format_levels)
    return 0 if data["ok"] else 1


def _duration(text: str, option: str, example: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        raise CLIError(f"{option} {text!r} is not a duration like {example}") from None


def _gather_logs(connector: Connector, args: argparse.Namespace, out: Any) -> int:
    from telenet.cli import gatherlogs

    since = None
    if args.since:
        since = time.time() - _duration(args.since, "--since", "30m or 2h")
    path = args.output_file or gatherlogs.default_zip_name()
    parts = make_gatherer(connector).gather(since)
    clean = None
    if args.anonymize:
        try:
            names = connector.connection_names()
        except (CLIError, DockerError):
            names = []
        clean = gatherlogs.Anonymizer(gatherlogs.names_to_hide(connector.docker, names))
    try:
        gatherlogs.write_zip(path, parts, clean)
    except OSError as e:
        raise CLIError(f"cannot write {path}: {e.strerror or e}") from None
    if out.machine:
        out.emit({"ok": True, "command": "gather-logs", "file": path, "parts": sorted(parts)})
    else:
        print(f"Wrote {path} ({len(parts)} parts)")
    return 0
