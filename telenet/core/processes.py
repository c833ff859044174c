# -*- test-case-name: tests.test_vif,tests.test_routeplugin -*-
"""
Running other programs: ``Processes``, one function type for every part that does (the
daemon's firewall rules, the network plug-in's plumbing), and ``spawner``, the real one.

A command is an argv list (no shell, so no quoting of anything a user or a peer sent); the
result is its stdout, stderr and exit code. ``telenet.testing.FakeProcesses`` is the fake.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorProcess

#: (stdout, stderr, exit code) of a finished command.
ProcessResult = tuple[bytes, bytes, int]
#: Runs an argv list: a Deferred of its ``ProcessResult``.
Processes = Callable[[list[str]], "defer.Deferred[ProcessResult]"]


def spawner(reactor: IReactorProcess) -> Processes:
    """``Processes`` with the reactor's child processes, in our environment."""
    from twisted.internet import utils

    def run(argv: list[str]) -> defer.Deferred[ProcessResult]:
        return utils.getProcessOutputAndValue(
            argv[0], argv[1:], env=dict(os.environ), reactor=reactor
        )

    return run
