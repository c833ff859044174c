"""
One SFTP connection kept up: ``SFTPConnectionManager`` connects, reconnects with backoff
(``defaultRetryPolicy``) and answers "not connected" at once while there is no connection.

Separate from the client: it owns connections (an endpoint, a clock, retries), while the
client is one connection.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from telenet.sftp.channel import DEFAULT_KEEPALIVE, DEFAULT_TIMEOUT
from telenet.sftp.client import SFTPClient
from telenet.sftp.errors import SFTPNotConnected

__all__ = ["SFTPConnectionManager", "defaultRetryPolicy"]

# The namespace these lines had before the client was split (twistd prints it).
log = Logger(namespace="telenet.sftp.client")


def defaultRetryPolicy(attempt: int) -> float:
    """Seconds before reconnect attempt ``attempt``: fast at first, at most ~3 s apart."""
    return min(0.25 * 1.6 ** min(attempt, 20), 3.0) + random.random() * 0.25


class _ClientFactory(Factory):
    noisy = False

    def __init__(self, build: Callable[[], SFTPClient]) -> None:
        self._build = build

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._build()


class SFTPConnectionManager:
    """
    I keep one SFTP connection to a server up, reconnecting by myself (with backoff) when it
    goes away.

    ``connection()`` answers at once: the live client, or ``SFTPNotConnected`` while there is
    none, so file system calls fail fast rather than hang.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        keepalive: float = DEFAULT_KEEPALIVE,
        retryPolicy: Callable[[int], float] = defaultRetryPolicy,
        label: str = "SFTP server",
    ) -> None:
        self._endpoint = endpoint
        self._clock = clock
        self.timeout = timeout
        self.keepalive = keepalive
        self._retryPolicy = retryPolicy
        self.label = label
        self._client: SFTPClient | None = None
        self._attempt: Deferred[Any] | None = None
        self._retryCall: IDelayedCall | None = None
        self._failures = 0
        self._running = False
        # (deferred, failures still allowed or None for "wait forever")
        self._waiters: list[tuple[Deferred[SFTPClient], int | None]] = []
        self._observers: list[Callable[[bool], None]] = []
        #: When the connection last came up or went down (the clock's seconds).
        self.since = clock.seconds()
        #: Why the last attempt or connection failed, for error messages.
        self.lastError = "not connected yet"

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.alive

    def addObserver(self, observer: Callable[[bool], None]) -> None:
        """Call ``observer(connected)`` on every connect and disconnect."""
        self._observers.append(observer)

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._connect()

    def stop(self) -> Deferred[None]:
        """Stop reconnecting and close the connection."""
        self._running = False
        if self._retryCall is not None and self._retryCall.active():
            self._retryCall.cancel()
        self._retryCall = None
        if self._attempt is not None:
            self._attempt.cancel()
        waiters, self._waiters = self._waiters, []
        for d, _ in waiters:
            d.errback(SFTPNotConnected(f"{self.label}: stopped"))
        client, self._client = self._client, None
        if client is not None and client.transport is not None:
            client.transport.loseConnection()
        return defer.succeed(None)

    def current(self) -> SFTPClient:
        """The live client; raises ``SFTPNotConnected`` if there is none."""
        client = self._client
        if client is None or not client.alive:
            raise SFTPNotConnected(f"{self.label} is not connected: {self.lastError}")
        return client

    def connection(self) -> Deferred[SFTPClient]:
        """The live client now, or a ``SFTPNotConnected`` failure now (never a wait)."""
        try:
            return defer.succeed(self.current())
        except SFTPNotConnected as e:
            return defer.fail(e)

    def whenConnected(self, failAfterFailures: int | None = None) -> Deferred[SFTPClient]:
        """
        Fires with the client once connected (add your own timeout); with
        ``failAfterFailures``, fails with ``SFTPNotConnected`` after that many failed attempts.
        """
        if self.connected:
            assert self._client is not None
            return defer.succeed(self._client)

        def cancel(d: Deferred[SFTPClient]) -> None:
            self._waiters = [w for w in self._waiters if w[0] is not d]

        d: Deferred[SFTPClient] = Deferred(cancel)
        self._waiters.append((d, failAfterFailures))
        return d

    def _connect(self) -> None:
        self._retryCall = None
        if not self._running:
            return

        built: list[SFTPClient] = []

        def build() -> SFTPClient:
            client = SFTPClient(self._clock, self.timeout, self.keepalive)
            built.append(client)
            return client

        def failed(failure: Failure) -> None:
            for client in built:  # connected but never ready: don't leave it half open
                client.abort("connection attempt failed")
            self._failed(failure)

        attempt: Deferred[Any] = self._endpoint.connect(_ClientFactory(build))
        attempt.addCallback(lambda client: client.ready)
        attempt.addTimeout(self.timeout, self._clock)
        self._attempt = attempt
        attempt.addCallbacks(self._connected, failed)

    def _connected(self, client: SFTPClient) -> None:
        self._attempt = None
        if not self._running:
            client.abort("connection manager stopped")
            return
        self._client = client
        self._failures = 0
        self.since = self._clock.seconds()
        log.info("connected to {label}", label=self.label)
        client.lostObservers.append(lambda reason: self._lost(client, reason))
        waiters, self._waiters = self._waiters, []
        for d, _ in waiters:
            d.callback(client)
        self._notify(True)

    def _failed(self, failure: Failure) -> None:
        self._attempt = None
        if not self._running:
            return
        if failure.check(defer.CancelledError, defer.TimeoutError):
            self.lastError = f"no answer within {self.timeout:g}s"
        else:
            self.lastError = failure.getErrorMessage()
        self._failures += 1
        waiting = []
        for d, allowed in self._waiters:
            if allowed is not None and allowed <= 1:
                d.errback(SFTPNotConnected(f"cannot reach {self.label}: {self.lastError}"))
            else:
                waiting.append((d, None if allowed is None else allowed - 1))
        self._waiters = waiting
        delay = self._retryPolicy(self._failures)
        log.info(
            "cannot connect to {label} ({error}); retrying in {delay:.1f}s",
            label=self.label,
            error=self.lastError,
            delay=delay,
        )
        self._retryCall = self._clock.callLater(delay, self._connect)

    def _lost(self, client: SFTPClient, reason: Failure) -> None:
        if client is not self._client:
            return
        self._client = None
        self.since = self._clock.seconds()
        self.lastError = f"connection lost ({reason.getErrorMessage()})"
        log.warn(
            "lost the connection to {label}: {reason}",
            label=self.label,
            reason=reason.getErrorMessage(),
        )
        self._notify(False)
        if self._running and self._retryCall is None and self._attempt is None:
            self._retryCall = self._clock.callLater(self._retryPolicy(0), self._connect)

    def _notify(self, connected: bool) -> None:
        for observer in list(self._observers):
            try:
                observer(connected)
            except Exception:
                log.failure("SFTP connection observer failed")
