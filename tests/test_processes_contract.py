"""
The ``Processes`` contract, asserted alike of the real ``spawner`` (real programs on this
machine) and of ``FakeProcesses`` programmed with what those programs answer, so that tests
of the firewall, forwarding and plumbing on the fake say something true.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from telenet.core.processes import (
    AttachedProcesses,
    BlockingProcesses,
    Processes,
    ProcessResult,
    run_attached,
    run_blocking,
    spawner,
)
from telenet.testing import FakeProcesses

ECHO = "/bin/echo"
MISSING = "tntest-no-such-program"

#: Commands and what they answer on any POSIX machine.
CASES: list[tuple[list[str], ProcessResult]] = [
    (["true"], (b"", b"", 0)),
    (["false"], (b"", b"", 1)),
    (["sh", "-c", "echo x; echo y >&2; exit 3"], (b"x\n", b"y\n", 3)),
    # No shell between us and the program: nothing is split, expanded or globbed.
    ([ECHO, "a b", "$HOME", "*"], (b"a b $HOME *\n", b"", 0)),
    # Our environment is the program's.
    (["sh", "-c", 'printf %s "$TNTEST_MARK"'], (b"marked", b"", 0)),
    # Killed by a signal: minus its number, as subprocess has it.
    (["sh", "-c", "kill -9 $$"], (b"", b"", -9)),
]


@pytest.fixture(params=["spawner", "fake"])
def run(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Processes]:
    monkeypatch.setenv("TNTEST_MARK", "marked")
    if request.param == "fake":
        answers: dict[tuple[str, ...], Any] = {
            (os.path.basename(argv[0]), *argv[1:]): result for argv, result in CASES
        }
        answers[(MISSING,)] = FileNotFoundError(2, "No such file or directory", MISSING)
        yield FakeProcesses(answers)
        return
    if not os.path.exists(ECHO):
        pytest.skip(f"{ECHO} is missing")
    from twisted.internet import reactor

    yield spawner(reactor)


@pytest.mark.parametrize("argv,expected", CASES, ids=[" ".join(a) for a, _ in CASES])
@pytest_twisted.ensureDeferred
async def test_result(run: Processes, argv: list[str], expected: ProcessResult) -> None:
    """A command's result is its (stdout, stderr, exit code), as bytes, bytes and int."""
    out, err, code = await run(argv)
    assert (out, err, code) == expected
    assert isinstance(out, bytes) and isinstance(err, bytes) and isinstance(code, int)


@pytest_twisted.ensureDeferred
async def test_commands_at_once(run: Processes) -> None:
    """Commands run together each get their own result."""
    results = await defer.gatherResults([run(argv) for argv, _ in CASES])
    assert results == [expected for _, expected in CASES]


@pytest_twisted.ensureDeferred
async def test_missing_program_fails_the_deferred(run: Processes) -> None:
    """A program that cannot be run fails the Deferred (not the call) with its OSError."""
    d = run([MISSING, "x"])
    assert isinstance(d, defer.Deferred)
    with pytest.raises(FileNotFoundError):
        await d


# -- BlockingProcesses and AttachedProcesses: the same answers, synchronously (the CLI's)


@pytest.fixture(params=["real", "fake"])
def blocking(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[BlockingProcesses, AttachedProcesses]]:
    monkeypatch.setenv("TNTEST_MARK", "marked")
    if request.param == "fake":
        answers: dict[tuple[str, ...], Any] = {
            (os.path.basename(argv[0]), *argv[1:]): result for argv, result in CASES
        }
        answers[(MISSING,)] = FileNotFoundError(2, "No such file or directory", MISSING)
        fake = FakeProcesses(answers)
        yield fake.blocking, fake.attached
        return
    if not os.path.exists(ECHO):
        pytest.skip(f"{ECHO} is missing")
    yield run_blocking, run_attached


@pytest.mark.parametrize("argv,expected", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_blocking_result(
    blocking: tuple[BlockingProcesses, AttachedProcesses],
    argv: list[str],
    expected: ProcessResult,
) -> None:
    """A blocking run's result is the same (stdout, stderr, exit code) as a Deferred's."""
    run, _ = blocking
    assert run(argv) == expected


@pytest.mark.parametrize("argv,expected", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_attached_exit_code(
    blocking: tuple[BlockingProcesses, AttachedProcesses],
    argv: list[str],
    expected: ProcessResult,
) -> None:
    """An attached run answers its exit code (its output went to ours)."""
    _, attached = blocking
    assert attached(argv) == expected[2]


def test_blocking_missing_program_raises(
    blocking: tuple[BlockingProcesses, AttachedProcesses],
) -> None:
    """A program that cannot be run raises its OSError, blocking or attached."""
    run, attached = blocking
    with pytest.raises(FileNotFoundError):
        run([MISSING, "x"])
    with pytest.raises(FileNotFoundError):
        attached([MISSING, "x"])
