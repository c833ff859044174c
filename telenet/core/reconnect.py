# -*- test-case-name: tests.test_reconnect -*-
"""
Keeping one connection up: ``Reconnector``, the one reconnect machine of telenet.

The FUSE helper's SFTP connection, the network plug-in's Connect stream to its daemon and the
daemon's gateway switch all need the same thing: try, and on failure try again after a delay
that grows (``twisted.application.internet.backoffPolicy``); once up, notice the end and
start over; let callers wait for the next success, or give up after a number of failed
attempts, or try at once instead of at the next scheduled time. Twisted's ``ClientService``
does this for one stream endpoint and one protocol; these are a gRPC stream, an SFTP client
and a netlink operation, so ``attempt`` is any function that makes one try.

Its users: ``telenet.sftp.connection.SFTPConnectionManager``,
``telenet.netplugin.link.DaemonLink`` and ``telenet.network.gateway.BridgeGateway``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

T = TypeVar("T")

#: Seconds before retry number ``failures`` (1 after the first failure, 0 after a loss), or
#: None: no retry of my own, the next attempt waits for ``now``.
RetryPolicy = Callable[[int], float | None]


#: A waiter: its Deferred, the failed attempts it still accepts, the time it gives up at.
_Waiter = tuple[defer.Deferred[T], int | None, float | None]


class GaveUp(Exception):
    """A wait for the connection ended without one: stopped, or too many failed attempts."""

    def __init__(self, message: str, failure: Failure | None = None) -> None:
        super().__init__(message)
        #: The last failed attempt, when that is why; None when stopped.
        self.failure = failure


class Reconnector(Generic[T]):
    """
    I keep the result of ``attempt`` (a connection) while it lasts, and make a new one when
    it ends: ``ended(connection)`` fires when it does (None: a result never ends, one success
    is enough). Between failed attempts I wait ``policy(failures)`` seconds.

    ``current`` is the live connection or None; ``wait`` fires with the next one (or fails
    with ``GaveUp``); ``now`` tries at once rather than at the next scheduled time.
    ``observers`` are told ``(connection or None)`` on every change, ``on_failure`` of each
    failed attempt ``(failure, delay before the retry or None)``; both hear before waiters do,
    so the state they keep is up to date when a waiter wakes.
    """

    def __init__(
        self,
        attempt: Callable[[], defer.Deferred[T]],
        clock: IReactorTime,
        policy: RetryPolicy,
        ended: Callable[[T], defer.Deferred[object]] | None = None,
    ) -> None:
        self._make = attempt
        self._clock = clock
        self._policy = policy
        self._ended = ended
        self.current: T | None = None
        self.failures = 0
        #: Why the last attempt failed (a Failure), None after a success.
        self.last_failure: Failure | None = None
        self.observers: list[Callable[[T | None], None]] = []
        self.on_failure: list[Callable[[Failure, float | None], None]] = []
        self._running = False
        self._stopped = False
        self._trying: defer.Deferred[T] | None = None
        self._retry: IDelayedCall | None = None
        # (waiter, failed attempts it still accepts (None: any number), time it gives up at)
        self._waiters: list[_Waiter[T]] = []

    @property
    def running(self) -> bool:
        return self._running

    @property
    def trying(self) -> bool:
        """An attempt is under way."""
        return self._trying is not None

    def start(self, delay: float | None = None) -> None:
        """
        Start trying (at once, or ``delay`` seconds from now: 0 is the next reactor turn),
        and keep the connection up until ``stop``.
        """
        if self._running:
            return
        self._running = True
        self._stopped = False
        if delay is None:
            self.now()
        else:
            self._schedule(delay)

    def stop(self) -> T | None:
        """
        Stop for good (until ``start``): no more attempts; waiters fail with ``GaveUp``.

        Returns the connection I had, now the caller's to close: its end is no loss then, and
        observers are not told.
        """
        self._running = False
        self._stopped = True
        self._cancel_retry()
        if self._trying is not None:
            self._trying.cancel()
        connection, self.current = self.current, None
        for waiter, _, _ in self._take_waiters():
            waiter.errback(GaveUp("stopped"))
        return connection

    def now(self) -> None:
        """Try at once, unless connected or trying already."""
        if not self._running or self.current is not None or self._trying is not None:
            return
        self._cancel_retry()
        try:
            d = self._make()
        except Exception:
            d = defer.fail()
        self._trying = d
        d.addCallbacks(self._succeeded, self._failed)

    def wait(self, fail_after: int | None = None, until: float | None = None) -> defer.Deferred[T]:
        """
        The connection, now or once made (a wait before ``start`` waits for it); with
        ``fail_after``, fails with ``GaveUp`` after that many more failed attempts; with
        ``until`` (the clock's seconds), at the first attempt that fails at or after that time (a
        retry the back-off would make later is made at ``until``; an attempt under way then is
        waited for). Cancelling the wait
        leaves the trying alone.
        """
        if self.current is not None:
            return defer.succeed(self.current)
        if self._stopped:
            return defer.fail(GaveUp("stopped"))

        def forget(d: defer.Deferred[T]) -> None:
            self._waiters = [w for w in self._waiters if w[0] is not d]

        waiter: defer.Deferred[T] = defer.Deferred(forget)
        self._waiters.append((waiter, fail_after, until))
        return waiter

    def lost(self, connection: T) -> None:
        """The connection ``connection`` ended (if still the current one): make a new one."""
        if connection is not self.current:
            return
        self.current = None
        self._tell(None)
        if self._running:
            self.failures = 0
            delay = self._policy(0)
            if delay is not None:
                self._schedule(delay)

    # -- the machine

    def _succeeded(self, connection: T) -> None:
        self._trying = None
        if not self._running:
            return
        self.current = connection
        self.failures = 0
        self.last_failure = None
        if self._ended is not None:
            ended = self._ended(connection)
            ended.addBoth(lambda _: self.lost(connection))
        self._tell(connection)
        for waiter, _, _ in self._take_waiters():
            waiter.callback(connection)

    def _failed(self, failure: Failure) -> None:
        self._trying = None
        if not self._running:
            return
        self.failures += 1
        self.last_failure = failure
        delay = self._policy(self.failures)
        for listener in list(self.on_failure):
            try:
                listener(failure, delay)
            except Exception:
                log.failure("A reconnect failure listener failed")
        still: list[_Waiter[T]] = []
        now = self._clock.seconds()
        for waiter, allowed, until in self._take_waiters():
            out_of_time = until is not None and (delay is None or now >= until)
            if out_of_time or (allowed is not None and allowed <= 1):
                waiter.errback(GaveUp(failure.getErrorMessage(), failure))
                continue
            still.append((waiter, None if allowed is None else allowed - 1, until))
            if until is not None and delay is not None and now + delay > until:
                # The back-off would pass the deadline: the last try is at the deadline, so a
                # waiter gets the whole time it asked for.
                delay = until - now
        self._waiters = still + self._waiters
        # A listener may have stopped me (giving up).
        if self._running and delay is not None:
            self._schedule(delay)

    def _schedule(self, delay: float) -> None:
        if self.current is not None or self._trying is not None:
            return  # a waiter that woke tried again already
        if self._retry is None or not self._retry.active():
            self._retry = self._clock.callLater(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self.now()

    def _cancel_retry(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def _take_waiters(self) -> list[_Waiter[T]]:
        waiters, self._waiters = self._waiters, []
        return waiters

    def _tell(self, connection: T | None) -> None:
        for observer in list(self.observers):
            try:
                observer(connection)
            except Exception:
                log.failure("A connection observer failed")
