"""
Resuming FUSE handlers from Twisted: the ``Resume`` future and the ``wait`` bridge.

pyfuse3's handlers are asyncio tasks and the SFTP client answers with Deferreds, on the same
loop (Twisted's asyncio reactor). This is the bridge between the two, kept apart because it is
loop machinery, not filesystem logic: the filesystem, the fd waiter and the prefetch all use it.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from telenet.core.internals import task_running

__all__ = ["Resume", "both", "running_loop", "wait"]

R = TypeVar("R")


class Resume(Generic[R]):
    """
    A future that resumes the task awaiting it at once, inside the call that settles it.

    An ``asyncio.Future`` wakes its task with ``call_soon``: one more loop iteration (an
    ``epoll_wait`` and the loop's bookkeeping) between an SFTP answer or a FUSE request and
    the handler that waits for it, several times per small file. Settled from a reactor or
    loop callback (no task running), this one runs the task's step right there; settled
    from inside a task (a task cannot run inside another) or cancelled, it falls back to
    ``call_soon``. Tasks accept it like any future (the ``_asyncio_future_blocking``
    protocol); one task awaits it (any further done callbacks run with ``call_soon``).
    """

    __slots__ = (
        "_asyncio_future_blocking",
        "_loop",
        "_done",
        "_value",
        "_error",
        "_wakeup",
        "_context",
        "_others",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._asyncio_future_blocking = False
        self._loop = loop
        self._done = False
        self._value: R | None = None
        self._error: BaseException | None = None
        self._wakeup: Callable[[Resume[R]], object] | None = None
        self._context: contextvars.Context | None = None
        self._others: list[tuple[Callable[[Resume[R]], object], Any]] | None = None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return isinstance(self._error, asyncio.CancelledError)

    def result(self) -> R:
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def exception(self) -> BaseException | None:
        return self._error

    def add_done_callback(
        self, fn: Callable[[Resume[R]], object], *, context: contextvars.Context | None = None
    ) -> None:
        if self._done:
            self._loop.call_soon(fn, self, context=context)
        elif self._wakeup is None:
            self._wakeup = fn
            self._context = context
        else:  # not how a task uses it: run like a plain future's callback
            if self._others is None:
                self._others = []
            self._others.append((fn, context))

    def remove_done_callback(self, fn: Callable[[Resume[R]], object]) -> int:
        removed = 0
        if self._wakeup is fn:
            self._wakeup = None
            removed += 1
        if self._others:
            before = len(self._others)
            self._others = [(f, c) for f, c in self._others if f is not fn]
            removed += before - len(self._others)
        return removed

    def set_result(self, value: R) -> None:
        if not self._done:
            self._done = True
            self._value = value
            self._fire(True)

    def set_exception(self, error: BaseException) -> None:
        if not self._done:
            self._done = True
            self._error = error
            self._fire(True)

    def cancel(self, msg: object = None) -> bool:
        if self._done:
            return False
        self._done = True
        self._error = asyncio.CancelledError(msg) if msg is not None else asyncio.CancelledError()
        self._fire(False)
        return True

    def _fire(self, eager: bool) -> None:
        others, self._others = self._others, None
        for fn, ctx in others or ():
            self._loop.call_soon(fn, self, context=ctx)
        wakeup = self._wakeup
        if wakeup is None:
            return
        self._wakeup = None
        context = self._context
        if eager and not task_running(self._loop):
            if context is None:
                wakeup(self)
            else:
                context.run(wakeup, self)
        else:
            self._loop.call_soon(wakeup, self, context=context)

    def __await__(self) -> Generator[Any, None, R]:
        if not self._done:
            self._asyncio_future_blocking = True
            yield self
        return self.result()

    __iter__ = __await__


def _settle(result: R, future: Resume[R]) -> None:
    future.set_result(result)


def _unsettle(failure: Failure, future: Resume[Any]) -> None:
    future.set_exception(failure.value)


class _Loop:
    """The running loop, looked up once: ``get_running_loop`` costs a ``getpid`` each time."""

    loop: asyncio.AbstractEventLoop | None = None


def running_loop() -> asyncio.AbstractEventLoop:
    loop = _Loop.loop
    if loop is None or loop.is_closed():
        loop = _Loop.loop = asyncio.get_running_loop()
    return loop


def wait(d: Deferred[R]) -> Resume[R]:
    """
    A Deferred as a future for a FUSE handler to await, resuming the handler from the
    Deferred's callback (see ``Resume``); no cancellation hook (FUSE handlers are never
    cancelled). A Deferred that already fired gives a done future: no loop turn at all.
    """
    future: Resume[R] = Resume(running_loop())
    d.addCallbacks(_settle, _unsettle, callbackArgs=(future,), errbackArgs=(future,))
    return future


async def both(first: Deferred[Any], second: Deferred[Any]) -> tuple[Any, Any]:
    """Wait for two pipelined requests; raise the first error (both are always consumed)."""
    results = await wait(defer.DeferredList([first, second], consumeErrors=True))
    for ok, result in results:
        if not ok:
            result.raiseException()
    return results[0][1], results[1][1]
