"""A process runner that runs nothing: ``FakeRunner``."""

from __future__ import annotations

import os

from twisted.internet import defer


class FakeRunner:
    """
    A ``telenet.network.firewall.Runner`` that records each command (``commands``, the executable's
    base name first) and answers the exit code of the first ``codes`` prefix it matches, else 0.
    """

    def __init__(self, codes: dict[tuple[str, ...], int] | None = None) -> None:
        self.commands: list[list[str]] = []
        self.codes = codes or {}

    def __call__(
        self, executable: str, args: list[str]
    ) -> defer.Deferred[tuple[bytes, bytes, int]]:
        argv = [os.path.basename(executable), *args]
        self.commands.append(argv)
        code = next(
            (c for prefix, c in self.codes.items() if tuple(argv[: len(prefix)]) == prefix), 0
        )
        return defer.succeed((b"", b"boom" if code else b"", code))
