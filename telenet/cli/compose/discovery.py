# -*- test-case-name: tests.test_compose_discovery -*-
"""
Finding Docker Compose v2: the docker CLI's plug-in (``docker compose version --short``), else a
``docker-compose`` program (``docker-compose version --short``) of version 2 or later.

Compose v1 (the Python ``docker-compose``, 1.x) is refused: it merges files and reads the
extension's neighbours differently, and it is no longer maintained. The error says what to
install: on Debian 13 the ``docker-compose`` package (Compose v2), elsewhere Docker's
``docker-compose-plugin``.
"""

from __future__ import annotations

import re

import attrs

from telenet.cli.compose.source import ComposeError
from telenet.core.processes import BlockingProcesses

INSTALL = (
    "install Compose v2 (Debian 13: apt-get install docker-compose; elsewhere Docker's "
    "docker-compose-plugin package)"
)

_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


@attrs.frozen
class ComposeProgram:
    """How to run Compose: the argv that stands for ``docker compose``, and its version."""

    argv: tuple[str, ...]
    version: str

    @property
    def major(self) -> int:
        return parse_version(self.version)[0]


def parse_version(text: str) -> tuple[int, int, int]:
    """``2.29.7``, ``v2.24.0-desktop.1``, ``1.29.2`` → (major, minor, patch); ValueError else."""
    match = _VERSION.match(text.strip())
    if match is None:
        raise ValueError(text)
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def _answer(run: BlockingProcesses, argv: list[str]) -> str | None:
    """The first line ``argv`` printed, when it ran and succeeded; None otherwise."""
    try:
        out, _, code = run(argv)
    except OSError:
        return None
    if code != 0:
        return None
    lines = out.decode("utf-8", "replace").strip().splitlines()
    return lines[0].strip() if lines else ""


def find_compose(run: BlockingProcesses, docker_cli: str = "docker") -> ComposeProgram:
    """Compose v2 as the plug-in or a program; ComposeError naming what to install otherwise."""
    candidates = ((docker_cli, "compose"), ("docker-compose",))
    refused = None
    for argv in candidates:
        printed = _answer(run, [*argv, "version", "--short"])
        if printed is None:
            continue
        shown = " ".join(argv)
        try:
            major, _, _ = parse_version(printed)
        except ValueError:
            raise ComposeError(
                f"{shown} version --short printed {printed!r}, not a version"
            ) from None
        if major >= 2:
            return ComposeProgram(tuple(argv), printed.lstrip("v"))
        refused = f"{shown} is Compose {printed} (v1), which telenet compose does not run"
    if refused is not None:
        raise ComposeError(f"{refused}: {INSTALL}")
    raise ComposeError(
        f"Docker Compose is not installed ({docker_cli} compose and docker-compose do not "
        f"answer): {INSTALL}"
    )
