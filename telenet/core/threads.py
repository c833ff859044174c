"""Thread pools that live as long as the twistd application that owns them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.threadpool import ThreadPool

RunBlocking = Callable[..., defer.Deferred[Any]]


def state_thread(reactor: IReactorFromThreads, name: str) -> tuple[ThreadPool, RunBlocking]:
    """
    A pool of one thread for a plug-in's state files, and a ``run_blocking(f, *args)`` on it:
    with one thread the saves happen in the order they were asked for. Start and stop the pool
    with the application.
    """
    from twisted.internet.threads import deferToThreadPool

    pool = ThreadPool(minthreads=1, maxthreads=1, name=name)

    def run_blocking(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return deferToThreadPool(reactor, pool, f, *args)

    return pool, run_blocking


class ThreadPoolService(service.Service):
    """Starts a thread pool with the application and stops it (joining its threads) at the end."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()
