"""Programs that run nothing: ``FakeProcesses``."""

from __future__ import annotations

import os

from twisted.internet import defer


class FakeProcesses:
    """
    ``telenet.core.processes.Processes`` that records each command (``commands``, the
    executable's base name first) and answers the exit code of the first ``codes`` prefix it
    matches, else 0.
    """

    def __init__(self, codes: dict[tuple[str, ...], int] | None = None) -> None:
        self.commands: list[list[str]] = []
        self.codes = codes or {}

    def __call__(self, command: list[str]) -> defer.Deferred[tuple[bytes, bytes, int]]:
        argv = [os.path.basename(command[0]), *command[1:]]
        self.commands.append(argv)
        code = next(
            (c for prefix, c in self.codes.items() if tuple(argv[: len(prefix)]) == prefix), 0
        )
        return defer.succeed((b"", b"boom" if code else b"", code))
