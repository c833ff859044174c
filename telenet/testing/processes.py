"""Programs that run nothing: ``FakeProcesses``."""

from __future__ import annotations

import os

from twisted.internet import defer

from telenet.core.processes import ProcessResult

#: What a command answers: an exit code (stderr ``boom`` when not 0), a whole result, or the
#: error that fails it (a program that cannot be run: ``FileNotFoundError``).
Answer = int | ProcessResult | Exception


class FakeProcesses:
    """
    ``telenet.core.processes.Processes`` that records each command (``commands``, the
    executable's base name first) and answers as the first ``codes`` prefix it matches says,
    else exit code 0 with no output. Checked against the real ``spawner`` by
    tests/test_processes_contract.py.
    """

    def __init__(self, codes: dict[tuple[str, ...], Answer] | None = None) -> None:
        self.commands: list[list[str]] = []
        self.codes = codes or {}

    def __call__(self, command: list[str]) -> defer.Deferred[ProcessResult]:
        argv = [os.path.basename(command[0]), *command[1:]]
        self.commands.append(argv)
        answer = next(
            (a for prefix, a in self.codes.items() if tuple(argv[: len(prefix)]) == prefix), 0
        )
        if isinstance(answer, Exception):
            return defer.fail(answer)
        if isinstance(answer, int):
            return defer.succeed((b"", b"boom" if answer else b"", answer))
        return defer.succeed(answer)
