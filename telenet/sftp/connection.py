"""
One SFTP connection kept up: ``SFTPConnectionManager`` connects, reconnects with backoff
(``defaultRetryPolicy``) and answers "not connected" at once while there is no connection.

Separate from the client: it owns connections (an endpoint, a clock, retries), while the
client is one connection. The trying and retrying is ``telenet.core.reconnect.Reconnector``'s.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from telenet.core.reconnect import GaveUp, Reconnector
from telenet.sftp.channel import DEFAULT_KEEPALIVE, DEFAULT_TIMEOUT
from telenet.sftp.client import SFTPClient
from telenet.sftp.errors import SFTPNotConnected

__all__ = ["SFTPConnectionManager", "defaultRetryPolicy"]

# The namespace these lines had before the client was split (twistd prints it).
log = Logger(namespace="telenet.sftp.client")

#: Seconds before reconnect attempt ``attempt``: fast at first, at most ~3 s apart (plus up to
#: 0.25 s of jitter, so that many mounts of one server do not retry in step).
defaultRetryPolicy = backoffPolicy(
    initialDelay=0.25, maxDelay=3.0, factor=1.6, jitter=lambda: random.random() * 0.25
)


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
        self.label = label
        self._link: Reconnector[SFTPClient] = Reconnector(
            self._connect, clock, retryPolicy, ended=self._ended
        )
        # First: since and the log are up to date when the observers and waiters hear.
        self._link.observers.append(self._changed)
        self._link.on_failure.append(self._failed)
        #: When the connection last came up or went down (the clock's seconds).
        self.since = clock.seconds()
        #: Why the last attempt or connection failed, for error messages.
        self.lastError = "not connected yet"

    @property
    def connected(self) -> bool:
        client = self._link.current
        return client is not None and client.alive

    def addObserver(self, observer: Callable[[bool], None]) -> None:
        """Call ``observer(connected)`` on every connect and disconnect."""
        self._link.observers.append(lambda client: observer(client is not None))

    def start(self) -> None:
        self._link.start()

    def stop(self) -> Deferred[None]:
        """Stop reconnecting and close the connection."""
        client = self._link.stop()
        if client is not None and client.transport is not None:
            client.transport.loseConnection()
        return defer.succeed(None)

    def current(self) -> SFTPClient:
        """The live client; raises ``SFTPNotConnected`` if there is none."""
        client = self._link.current
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
        return self._link.wait(failAfterFailures).addErrback(self._gaveUp, "")

    def whenFirstConnected(self, wait: float = 0.0) -> Deferred[SFTPClient]:
        """
        The first connection of a mount, which must not come up empty: failed attempts are
        retried (with my backoff) for ``wait`` seconds, so a server that is still starting is
        waited for; then ``SFTPNotConnected`` naming the server and why. Without ``wait``, one
        attempt. Either way bounded: ``wait`` plus my timeout.
        """
        if wait <= 0:
            d = self.whenConnected(failAfterFailures=1)
        else:
            until = self._clock.seconds() + wait
            d = self._link.wait(until=until).addErrback(self._gaveUp, f" (tried for {wait:g}s)")
        return d.addTimeout(max(wait, 0) + self.timeout, self._clock)

    def _gaveUp(self, failure: Failure, tried: str) -> Failure:
        error = failure.value
        if not isinstance(error, GaveUp):
            return failure  # cancelled by the caller
        if error.failure is None:
            return Failure(SFTPNotConnected(f"{self.label}: stopped"))
        return Failure(SFTPNotConnected(f"cannot reach {self.label}: {self.lastError}{tried}"))

    # -- what the Reconnector calls

    def _connect(self) -> Deferred[SFTPClient]:
        """One attempt: a connected client whose SFTP session is ready."""
        built: list[SFTPClient] = []

        def build() -> SFTPClient:
            client = SFTPClient(self._clock, self.timeout, self.keepalive)
            built.append(client)
            return client

        def failed(failure: Failure) -> Failure:
            for client in built:  # connected but never ready: don't leave it half open
                client.abort("connection attempt failed")
            return failure

        def made(client: SFTPClient) -> SFTPClient:
            if not self._link.running:  # stopped meanwhile: nobody will close it
                client.abort("connection manager stopped")
                raise SFTPNotConnected(f"{self.label}: stopped")
            return client

        attempt: Deferred[Any] = self._endpoint.connect(_ClientFactory(build))
        attempt.addCallback(lambda client: client.ready)
        attempt.addTimeout(self.timeout, self._clock)
        attempt.addCallbacks(made, failed)
        return attempt

    def _ended(self, client: SFTPClient) -> Deferred[object]:
        ended: Deferred[object] = Deferred()

        def lost(reason: Failure) -> None:
            if client is self._link.current:  # not when stop() closed it
                self.since = self._clock.seconds()
                self.lastError = f"connection lost ({reason.getErrorMessage()})"
                log.warn(
                    "lost the connection to {label}: {reason}",
                    label=self.label,
                    reason=reason.getErrorMessage(),
                )
            ended.callback(None)

        client.lostObservers.append(lost)
        return ended

    def _changed(self, client: SFTPClient | None) -> None:
        if client is not None:
            self.since = self._clock.seconds()
            log.info("connected to {label}", label=self.label)

    def _failed(self, failure: Failure, delay: float | None) -> None:
        if failure.check(defer.CancelledError, defer.TimeoutError):
            self.lastError = f"no answer within {self.timeout:g}s"
        else:
            self.lastError = failure.getErrorMessage()
        log.info(
            "cannot connect to {label} ({error}); retrying in {delay:.1f}s",
            label=self.label,
            error=self.lastError,
            delay=delay,
        )
