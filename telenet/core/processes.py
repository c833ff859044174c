# -*- test-case-name: tests.test_vif,tests.test_routeplugin -*-
"""
Running other programs: ``Processes``, one function type for every part that does (the
daemon's firewall rules, the network plug-in's plumbing), and ``spawner``, the real one.

A command is an argv list (no shell, so no quoting of anything a user or a peer sent); the
result is its stdout, stderr and exit code, minus the signal's number for a command killed by
one (as ``subprocess`` has it). A program that cannot be run fails the Deferred with its
``OSError``. ``telenet.testing.FakeProcesses`` is the fake (tests/test_processes_contract.py).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorProcess
from twisted.python.failure import Failure

#: (stdout, stderr, exit code) of a finished command.
ProcessResult = tuple[bytes, bytes, int]
#: Runs an argv list: a Deferred of its ``ProcessResult``.
Processes = Callable[[list[str]], "defer.Deferred[ProcessResult]"]
#: Runs an argv list to its end, synchronously (the CLI has no reactor): its ``ProcessResult``;
#: a program that cannot be run raises its ``OSError``.
BlockingProcesses = Callable[[list[str]], ProcessResult]
#: Runs an argv list on this process's stdin, stdout and stderr: its exit code.
AttachedProcesses = Callable[[list[str]], int]


def spawner(reactor: IReactorProcess) -> Processes:
    """``Processes`` with the reactor's child processes, in our environment."""
    from twisted.internet import utils

    def run(argv: list[str]) -> defer.Deferred[ProcessResult]:
        # spawnProcess raises at once for a missing program; a Processes fails its Deferred.
        d = defer.maybeDeferred(
            utils.getProcessOutputAndValue, argv[0], argv[1:], env=dict(os.environ), reactor=reactor
        )
        return d.addErrback(_signalled)

    return run


def run_blocking(argv: list[str]) -> ProcessResult:
    """``BlockingProcesses``, the real one: no stdin, stdout and stderr captured."""
    done = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=False)
    return done.stdout, done.stderr, done.returncode


def run_attached(argv: list[str]) -> int:
    """
    ``AttachedProcesses``, the real one. The terminal's ^C reaches the program too (one
    process group): the program decides what it means, and we wait for it to end.
    """
    program = subprocess.Popen(argv)
    while True:
        try:
            return program.wait()
        except KeyboardInterrupt:
            continue


def _signalled(failure: Failure) -> ProcessResult:
    """
    A command killed by a signal as a result: Twisted fails with a bare (out, err, signal)
    tuple, not an exception, which breaks ``await`` of the Deferred.
    """
    value = failure.value
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[2], int):
        out, err, signal = value
        return out, err, -signal
    failure.raiseException()
