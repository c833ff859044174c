"""
Where the SFTP server runs its blocking file I/O: inline (in-memory tests) or in a thread
pool (the agent). The protocol takes one as ``run_io``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

__all__ = ["BlockingCallRunner", "run_inline", "threadpool_runner"]

_T = TypeVar("_T")


class BlockingCallRunner(Protocol):
    """
    Runs a blocking call somewhere and returns a Deferred of its result.

    A ``typing.Protocol`` (a callable's type), not a zope interface as the name ``IORunner``
    it had suggested.
    """

    def __call__(self, f: Callable[[], _T], /) -> Deferred[_T]: ...


def run_inline(f: Callable[[], _T], /) -> Deferred[_T]:
    """A L{BlockingCallRunner} that runs on the calling thread; for in-memory tests."""
    return defer.maybeDeferred(f)


def threadpool_runner(reactor: IReactorFromThreads, pool: ThreadPool) -> BlockingCallRunner:
    """A L{BlockingCallRunner} that runs each call in C{pool}."""

    def run(f: Callable[[], _T], /) -> Deferred[_T]:
        return deferToThreadPool(reactor, pool, f)

    return run
