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
    else exit code 0 with no output; ``blocking`` and ``attached`` are the same as
    ``BlockingProcesses`` and ``AttachedProcesses``. Checked against the real ``spawner``,
    ``run_blocking`` and ``run_attached`` by tests/test_processes_contract.py.
    """

    def __init__(self, codes: dict[tuple[str, ...], Answer] | None = None) -> None:
        self.commands: list[list[str]] = []
        self.codes = codes or {}

    def __call__(self, command: list[str]) -> defer.Deferred[ProcessResult]:
        try:
            return defer.succeed(self.blocking(command))
        except Exception as e:
            return defer.fail(e)

    def blocking(self, command: list[str]) -> ProcessResult:
        """The same, as ``BlockingProcesses``: the result, or the answer's exception raised."""
        argv = [os.path.basename(command[0]), *command[1:]]
        self.commands.append(argv)
        answer = next(
            (a for prefix, a in self.codes.items() if tuple(argv[: len(prefix)]) == prefix), 0
        )
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, int):
            return b"", b"boom" if answer else b"", answer
        return answer

    def attached(self, command: list[str]) -> int:
        """The same, as ``AttachedProcesses``: only the exit code (the output was the user's)."""
        return self.blocking(command)[2]
