# -*- test-case-name: tests.test_routeplugin -*-
"""
The network plug-in's connection to one daemon: ``DaemonLink`` and its ``Backoff``.

Each teleroute network keeps a Connect stream open to its daemon's teleroute gRPC service;
the daemon finds us by our host pid (``own_host_pid``) to move veth ends into our network
namespace. This module is that connection alone (attempts, reconnection with back-off, the
call timeouts), separate from the driver that decides what to ask the daemon.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import attrs
import grpc
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from telenet.netplugin.options import DaemonAddress
from telenet.teleroute.client import grpc_target
from telenet.teleroute.interfaces import (
    ClientFactory,
    ConnectSession,
    ITelerouteClient,
    TelerouteError,
)
from telenet.teleroute.proto import teleroute_pb2

log = Logger()

StatusCode = grpc.StatusCode

#: Every daemon call gives up after this many seconds (as the Go plug-in does).
CALL_TIMEOUT = 3.0
#: CreateNetwork retries Connect this often, this far apart, while the daemon is UNAVAILABLE.
CONNECT_RETRIES = 20
CONNECT_RETRY_DELAY = 0.05


def own_host_pid(proc: str = "/proc") -> int:
    """
    Our pid in the host's pid namespace, where the daemon (``--pid host``) looks us up.

    ``NSpid`` in ``/proc/self/status`` lists our pid as seen from the namespace of the procfs
    first, then from each nested namespace: in a managed plug-in with ``pidhost`` (and in a
    legacy plug-in) that first entry is the host pid even if the process itself sits in a
    nested namespace with a host procfs. Without ``NSpid`` (old kernels), our own pid.
    """
    try:
        with open(os.path.join(proc, "self", "status"), encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError) as e:
        log.warn(
            "cannot read our host pid from {proc}/self/status ({error}); using {pid}",
            proc=proc,
            error=e,
            pid=os.getpid(),
        )
    return os.getpid()


# -- the connection to one daemon


@attrs.frozen
class Backoff:
    """Delays between reconnection attempts: ``initial``, growing by ``factor`` to ``maximum``."""

    initial: float = 0.1
    factor: float = 2.0
    maximum: float = 2.0


class DaemonLink:
    """
    I keep one network's Connect stream to its daemon open.

    The first connection (CreateNetwork) retries only while the daemon is UNAVAILABLE, briefly,
    as the Go plug-in does, and a failure refuses the network. Once the network exists, losing
    the stream starts reconnection with back-off; calls that need the daemon meanwhile make an
    attempt at once rather than waiting for the next scheduled one.
    """

    def __init__(
        self,
        factory: ClientFactory,
        address: DaemonAddress,
        request: Callable[[], teleroute_pb2.ConnectRequest],
        clock: IReactorTime,
        backoff: Backoff | None = None,
        timeout: float = CALL_TIMEOUT,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self.address = address
        self.target = grpc_target(address.host, address.port)
        self.client: ITelerouteClient | None = None
        self.session: ConnectSession | None = None
        self.last_error = "not connected yet"
        self.connections = 0
        self.failures = 0
        self._factory = factory
        self._request = request
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._timeout = timeout
        self._delay = self._backoff.initial
        self._attempt: defer.Deferred[ConnectSession] | None = None
        self._retry: IDelayedCall | None = None
        self._waiters: list[defer.Deferred[None]] = []
        self._keep_trying = False
        self._closed = False
        self._on_connect = on_connect

    @property
    def connected(self) -> bool:
        return self.session is not None and self.session.is_open

    # -- attempts

    def attempt(self) -> defer.Deferred[None]:
        """
        Connect now, or wait for the attempt already under way.

        Fires when connected; fails with ``TelerouteError`` if this attempt fails.
        """
        if self._closed:
            return defer.fail(TelerouteError(StatusCode.CANCELLED, "the network was deleted"))
        if self.connected:
            return defer.succeed(None)

        def forget(d: defer.Deferred[None]) -> None:
            if d in self._waiters:
                self._waiters.remove(d)

        waiter: defer.Deferred[None] = defer.Deferred(forget)
        self._waiters.append(waiter)
        if self._attempt is None:
            self._start_attempt()
        return waiter

    def _start_attempt(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        old, self.client = self.client, None
        if old is not None:
            # A fresh channel per attempt: gRPC's own back-off would otherwise keep a daemon
            # that is back unreachable for up to minutes.
            old.close().addErrback(lambda f: log.failure("closing a client failed", f))
        try:
            self.client = self._factory(self.address.host, self.address.port)
            d = self.client.connect(self._request(), self._timeout)
        except Exception:
            d = defer.fail()
        d.addTimeout(self._timeout + 1, self._clock)
        self._attempt = d
        d.addCallbacks(self._connected, self._failed)

    def _connected(self, session: ConnectSession) -> None:
        self._attempt = None
        if self._closed:
            session.cancel()
            return
        self.session = session
        self.connections += 1
        self.failures = 0
        self._delay = self._backoff.initial
        self.last_error = ""
        log.info(
            "Connected to {name} version {version} at {target}",
            name=session.info.get("name", "?"),
            version=session.info.get("version", "?"),
            target=self.target,
        )
        session.ended.addCallback(self._lost, session)
        if self._on_connect is not None:
            try:
                self._on_connect()
            except Exception:
                log.failure("handling the connection to {target} failed", target=self.target)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _failed(self, failure: Failure) -> None:
        self._attempt = None
        error = _as_teleroute_error(failure, self.target)
        self.last_error = error.details
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(error)
        if self._keep_trying and not self._closed:
            self.failures += 1
            # A daemon that stays away would fill the log: say it at first, then rarely.
            if self.failures in (1, 10) or self.failures % 100 == 0:
                log.info(
                    "connecting to {target} failed {count} times ({error}); still trying "
                    "every {delay:g}s at most",
                    target=self.target,
                    count=self.failures,
                    error=error,
                    delay=self._backoff.maximum,
                )
            self._schedule()

    def _lost(self, reason: str, session: ConnectSession) -> None:
        if self.session is not session:
            return
        self.session = None
        self.last_error = reason
        if self._closed:
            return
        log.warn(
            "lost the daemon at {target} ({reason}); reconnecting",
            target=self.target,
            reason=reason,
        )
        self._keep_trying = True
        self._delay = self._backoff.initial
        self._schedule()

    def _schedule(self) -> None:
        if self._closed or self._attempt is not None or self.connected:
            return
        if self._retry is not None and self._retry.active():
            return
        delay, self._delay = (
            self._delay,
            min(self._delay * self._backoff.factor, self._backoff.maximum),
        )
        self._retry = self._clock.callLater(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        # The outcome is handled by _connected/_failed; this waiter is only for attempt().
        self.attempt().addErrback(lambda f: None)

    # -- what the driver uses

    async def establish(
        self, retries: int = CONNECT_RETRIES, delay: float = CONNECT_RETRY_DELAY
    ) -> None:
        """The first connection: retry while UNAVAILABLE, then keep reconnecting for ever."""
        for remaining in range(retries - 1, -1, -1):
            try:
                await self.attempt()
                break
            except TelerouteError as e:
                if e.code != StatusCode.UNAVAILABLE or remaining == 0:
                    raise
            await task.deferLater(self._clock, delay)
        self._keep_trying = True

    def keep_connected(self) -> None:
        """Connect in the background and stay connected (a network restored at start)."""
        self._keep_trying = True
        if not self.connected and self._attempt is None:
            self._retry_now()

    async def ready(
        self,
        timeout: float = CALL_TIMEOUT,
        patient: bool = True,
        retry_delay: float = CONNECT_RETRY_DELAY,
    ) -> ITelerouteClient:
        """
        The connected client, connecting first if needed.

        ``patient`` keeps trying while the daemon is UNAVAILABLE until ``timeout`` (a daemon
        that is starting); otherwise one attempt decides.
        """
        deadline = self._clock.seconds() + timeout
        while not self.connected:
            remaining = deadline - self._clock.seconds()
            try:
                waiter = self.attempt()
                waiter.addTimeout(max(remaining, 0.001), self._clock)
                await waiter
            except defer.TimeoutError:
                raise TelerouteError(
                    StatusCode.DEADLINE_EXCEEDED,
                    f"no connection to {self.target} within {timeout:g}s"
                    + (f" (last error: {self.last_error})" if self.last_error else ""),
                ) from None
            except TelerouteError as e:
                remaining = deadline - self._clock.seconds()
                if not patient or e.code != StatusCode.UNAVAILABLE or remaining <= retry_delay:
                    raise
                await task.deferLater(self._clock, retry_delay)
        assert self.client is not None
        return self.client

    def close(self) -> defer.Deferred[None]:
        """Stop for good: end the stream (the daemon sees us leave) and stop reconnecting."""
        self._closed = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(TelerouteError(StatusCode.CANCELLED, "the network was deleted"))
        session, self.session = self.session, None
        if session is not None:
            session.cancel()
        client, self.client = self.client, None
        if client is None:
            return defer.succeed(None)
        return client.close()


def _as_teleroute_error(failure: Failure, target: str) -> TelerouteError:
    error = failure.value
    if isinstance(error, TelerouteError):
        return error
    if isinstance(error, defer.TimeoutError | defer.CancelledError):
        return TelerouteError(StatusCode.DEADLINE_EXCEEDED, f"{target} did not answer in time")
    log.failure("unexpected error talking to {target}", failure, target=target)
    return TelerouteError(StatusCode.UNKNOWN, f"{type(error).__name__}: {error}")
