# -*- test-case-name: tests.test_routeplugin -*-
"""
The network plug-in's connection to one daemon: ``DaemonLink``.

Each teleroute network keeps a Connect stream open to its daemon's teleroute gRPC service;
the daemon finds us by our host pid (``own_host_pid``) to move veth ends into our network
namespace. This module is that connection alone (attempts, reconnection with back-off by
``telenet.core.reconnect.Reconnector``, the call timeouts), separate from the driver that
decides what to ask the daemon.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import grpc
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from telenet.core.reconnect import GaveUp, Reconnector
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

#: Seconds between reconnection attempts once a network exists: 0.1 s doubling to 2 s. No
#: jitter: each daemon has one plug-in to hear from.
RETRY_POLICY = backoffPolicy(initialDelay=0.1, maxDelay=2.0, factor=2.0, jitter=lambda: 0)


class DaemonLink:
    """
    I keep one network's Connect stream to its daemon open.

    The first connection (CreateNetwork) retries only while the daemon is UNAVAILABLE, briefly,
    as the Go plug-in does, and a failure refuses the network. Once the network exists, losing
    the stream starts reconnection with back-off (``policy``, by ``Reconnector``); calls that
    need the daemon meanwhile make an attempt at once rather than waiting for the next
    scheduled one.
    """

    def __init__(
        self,
        factory: ClientFactory,
        address: DaemonAddress,
        request: Callable[[], teleroute_pb2.ConnectRequest],
        clock: IReactorTime,
        policy: Callable[[int], float] = RETRY_POLICY,
        timeout: float = CALL_TIMEOUT,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self.address = address
        self.target = grpc_target(address.host, address.port)
        self.client: ITelerouteClient | None = None
        self.last_error = "not connected yet"
        self.connections = 0
        #: When the current Connect stream opened, and when the last one ended (clock
        #: seconds; None: never). While connected, the daemon is in contact now.
        self.connected_at: float | None = None
        self.lost_at: float | None = None
        self._factory = factory
        self._request = request
        self._clock = clock
        self._policy = policy
        self._timeout = timeout
        # Until the network exists (or is restored) a failed attempt is not retried by itself.
        self._keep_trying = False
        self._closed = False
        self._on_connect = on_connect
        self._link: Reconnector[ConnectSession] = Reconnector(
            self._connect, clock, self._retry_delay, ended=self._ended
        )
        self._link.observers.append(self._changed)
        self._link.on_failure.append(self._failed)

    @property
    def session(self) -> ConnectSession | None:
        """The open Connect stream, if any."""
        return self._link.current

    @property
    def connected(self) -> bool:
        session = self._link.current
        return session is not None and session.is_open

    @property
    def failures(self) -> int:
        """Failed attempts since the last connection."""
        return self._link.failures

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
        waiter = self._link.wait(fail_after=1)
        self._try_now()
        return waiter.addCallbacks(lambda session: None, self._gave_up)

    def _try_now(self) -> None:
        if self._link.running:
            self._link.now()  # nothing if an attempt is under way
        else:
            self._link.start()

    def _gave_up(self, failure: Failure) -> Failure:
        error = failure.value
        if not isinstance(error, GaveUp):
            return failure  # cancelled by the caller
        if error.failure is None:
            return Failure(TelerouteError(StatusCode.CANCELLED, "the network was deleted"))
        return Failure(_as_teleroute_error(error.failure, self.target))

    def _connect(self) -> defer.Deferred[ConnectSession]:
        """One attempt, for the Reconnector; it fails with a ``TelerouteError``."""
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

        def made(session: ConnectSession) -> ConnectSession:
            if self._closed:  # closed meanwhile: nobody else will end it
                session.cancel()
                raise TelerouteError(StatusCode.CANCELLED, "the network was deleted")
            return session

        def failed(failure: Failure) -> Failure:
            return Failure(_as_teleroute_error(failure, self.target))

        return d.addCallbacks(made, failed)

    def _retry_delay(self, failures: int) -> float | None:
        return self._policy(failures) if self._keep_trying else None

    def _changed(self, session: ConnectSession | None) -> None:
        if session is None:
            return  # _ended said why
        self.connections += 1
        self.connected_at = self._clock.seconds()
        self.last_error = ""
        log.info(
            "Connected to {name} version {version} at {target}",
            name=session.info.get("name", "?"),
            version=session.info.get("version", "?"),
            target=self.target,
        )
        if self._on_connect is not None:
            try:
                self._on_connect()
            except Exception:
                log.failure("handling the connection to {target} failed", target=self.target)

    def _failed(self, failure: Failure, delay: float | None) -> None:
        error = _as_teleroute_error(failure, self.target)
        self.last_error = error.details
        # A daemon that stays away would fill the log: say it at first, then rarely.
        if delay is not None and (self.failures in (1, 10) or self.failures % 100 == 0):
            log.info(
                "connecting to {target} failed {count} times ({error}); still trying, "
                "next in {delay:g}s",
                target=self.target,
                count=self.failures,
                error=error,
                delay=delay,
            )

    def _ended(self, session: ConnectSession) -> defer.Deferred[object]:
        ended: defer.Deferred[object] = defer.Deferred()

        def lost(reason: str) -> str:
            self.lost_at = self._clock.seconds()
            if session is self._link.current:  # not when close() ended it
                self.last_error = reason
                log.warn(
                    "lost the daemon at {target} ({reason}); reconnecting",
                    target=self.target,
                    reason=reason,
                )
                self._keep_trying = True
            ended.callback(None)
            return reason

        session.ended.addCallback(lost)
        return ended

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
        if self._closed:
            return
        self._keep_trying = True
        if not self.connected:
            self._try_now()

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
        session = self._link.stop()
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
