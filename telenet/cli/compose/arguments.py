# -*- test-case-name: tests.test_compose_command -*-
"""
``telenet compose``'s arguments: its own options (Compose's global options, which telenet
reads too) go to argparse with the subcommand; the subcommand's arguments go to Compose as
they are, unseen by argparse. Light: ``telenet``'s parser imports it on every run.
"""

from __future__ import annotations

from typing import Any

#: Subcommands that need no connection work: Compose runs them on the rendered file while the
#: project is up, else on the user's files.
PASS_THROUGH = (
    "attach",
    "build",
    "cp",
    "events",
    "exec",
    "images",
    "kill",
    "logs",
    "ls",
    "pause",
    "port",
    "ps",
    "pull",
    "push",
    "rm",
    "stats",
    "top",
    "unpause",
    "version",
    "wait",
)
#: Subcommands on the rendered file.
RENDERED = ("config",)
#: Subcommands that start containers: the connections and bridges are made first.
PREPARED = ("create", "restart", "run", "start", "up")
#: Subcommands after which telenet closes bridges (stop) or cleans up (down).
ENDING = ("down", "stop")
SUBCOMMANDS = tuple(sorted(PASS_THROUGH + RENDERED + PREPARED + ENDING))

#: The options of ``telenet compose`` that take a value (Compose's own global options).
COMPOSE_VALUE_OPTIONS = (
    "-f",
    "--file",
    "--env-file",
    "--profile",
    "-p",
    "--project-name",
    "--project-directory",
)


def add_compose_parser(commands: Any) -> None:
    compose = commands.add_parser(
        "compose",
        help="Docker Compose v2 on a rendered copy of the compose files (x-telenet)",
        usage="telenet compose [-f FILE ...] [--env-file F] [--profile P ...] "
        "[--project-name N] [--project-directory D] SUBCOMMAND [ARGS ...]",
        description="Runs Docker Compose v2 on the project, with the x-telenet extension "
        f"rendered. Subcommands: {', '.join(SUBCOMMANDS)}; their arguments go to Compose.",
    )
    compose.add_argument(
        "-f",
        "--file",
        dest="files",
        action="append",
        default=[],
        metavar="FILE",
        help="a compose file (repeatable; later files override earlier ones)",
    )
    compose.add_argument(
        "--env-file",
        dest="env_files",
        action="append",
        default=[],
        metavar="F",
        help="an environment file (repeatable; default .env in the project directory)",
    )
    compose.add_argument(
        "--profile",
        dest="profiles",
        action="append",
        default=[],
        metavar="P",
        help="a profile to enable (repeatable; default $COMPOSE_PROFILES)",
    )
    compose.add_argument("-p", "--project-name", metavar="N", help="the project's name")
    compose.add_argument(
        "--project-directory",
        metavar="D",
        help="the project's directory (default: the first file's)",
    )
    compose.add_argument("subcommand", nargs="?", metavar="SUBCOMMAND", help="a Compose subcommand")


def split_compose(argv: list[str], i: int) -> tuple[list[str], list[str] | None]:
    """``compose``'s own options go to argparse, and the subcommand; its arguments do not."""
    j = i + 1
    while j < len(argv) and argv[j].startswith("-"):
        token = argv[j]
        name = token.partition("=")[0]
        if token in ("-h", "--help") or (name in COMPOSE_VALUE_OPTIONS and "=" in token):
            j += 1
        elif token in COMPOSE_VALUE_OPTIONS:
            j += 2
        elif token[:2] in ("-f", "-p") and len(token) > 2:
            j += 1
        else:
            return argv[: j + 1], None  # argparse names the unknown option
    if j >= len(argv):
        return argv, []
    return argv[: j + 1], argv[j + 1 :]
