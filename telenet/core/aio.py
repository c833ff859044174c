# -*- test-case-name: tests.test_daemon -*-
"""
Bridges between Twisted and asyncio, for code that runs on Twisted's asyncio reactor.

grpc.aio and pyroute2's ``AsyncIPRoute`` are asyncio libraries; the daemon runs them on the
same loop as Twisted. Crossing the boundary has two traps:
``ensureDeferred`` cannot drive an asyncio coroutine, and an asyncio task cannot await a bare
Deferred. ``as_deferred`` and ``as_future`` are the two correct crossings.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.python import usage

from telenet.core.internals import reactor_loop

T = TypeVar("T")


class ReactorMismatch(usage.UsageError):
    """Another reactor was already chosen, but this program needs the asyncio reactor."""


def _loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    from twisted.internet import reactor

    loop = reactor_loop(reactor)
    if loop is None:
        raise ReactorMismatch(
            "asyncio work needs Twisted's asyncio reactor (twistd --reactor=asyncio)"
        )
    return loop


def as_deferred(coro: Coroutine[Any, Any, T]) -> defer.Deferred[T]:
    """
    Run an asyncio coroutine on the reactor's loop; a Deferred fires with its result.

    May be called before the loop runs (from ``startService``): the task is only scheduled.
    Cancelling the Deferred cancels the task.
    """
    return defer.Deferred.fromFuture(asyncio.ensure_future(coro, loop=_loop()))


def as_future(d: defer.Deferred[T]) -> asyncio.Future[T]:
    """A Deferred as something an asyncio coroutine can await."""
    return d.asFuture(_loop())


def install_asyncio_reactor() -> None:
    """
    Make sure the global reactor is Twisted's asyncio reactor.

    Installs it when no reactor was chosen yet (``twistd telepresence-daemon`` without
    ``--reactor``). Raises ``ReactorMismatch`` (a ``UsageError``, so twistd prints one line)
    when another reactor is already installed.
    """
    if "twisted.internet.reactor" in sys.modules:
        from twisted.internet import reactor
        from twisted.internet.asyncioreactor import AsyncioSelectorReactor

        if isinstance(reactor, AsyncioSelectorReactor):
            return
        raise ReactorMismatch(
            f"this program needs the asyncio reactor, but {type(reactor).__name__} is "
            "installed: run twistd --reactor=asyncio ..."
        )
    from twisted.internet import asyncioreactor

    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
