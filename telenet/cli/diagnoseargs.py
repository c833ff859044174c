# -*- test-case-name: tests.test_cli_doctor -*-
"""
The arguments of the diagnostic commands (``doctor``, ``gather-logs``, ``loglevel``;
docs/troubleshooting.md), apart from what runs them (``telenet.cli.diagnose``), so that
building the parser imports argparse alone.
"""

from __future__ import annotations

from typing import Any

DIAGNOSE_COMMANDS = ("doctor", "gather-logs", "loglevel")
OUTPUTS = ("text", "json", "yaml")


def add_diagnose_parsers(commands: Any) -> None:
    """Add the three commands to ``commands`` (argparse's subparsers)."""
    doctor = commands.add_parser(
        "doctor", help="check each common cause of failure, and say what fixes it"
    )
    doctor.add_argument("--name", help="only the connection of that exact name")
    gather = commands.add_parser(
        "gather-logs", help="one zip of the daemons', plug-ins' and helpers' logs, and more"
    )
    gather.add_argument(
        "-o", "--output-file", metavar="FILE.zip", help="default: ./telenet-logs-TIME.zip"
    )
    gather.add_argument(
        "--since", metavar="DURATION", help="only what was logged that long ago or later (30m, 2h)"
    )
    gather.add_argument(
        "--anonymize", action="store_true", help="replace addresses and names by placeholders"
    )
    loglevel = commands.add_parser(
        "loglevel", help="change the daemons' and plug-ins' log level now, for a while"
    )
    loglevel.add_argument("level", metavar="LEVEL", help="debug, info, warn, error or critical")
    loglevel.add_argument(
        "--duration",
        "-d",
        metavar="D",
        help="then back to the configured level (30s, 5m; default: until changed)",
    )
    loglevel.add_argument("--name", help="only the connection of that exact name")
    for sub in (doctor, loglevel):
        sub.add_argument("--output", "-o", choices=OUTPUTS, help="default: text, or --format")
