# -*- test-case-name: tests.test_sftpproxy -*-
"""
A TCP bridge: every connection accepted on a listening endpoint is piped to a target.

The daemon opens one bridge per engagement, from a local port to a traffic-agent's raw SFTP
server, and closes it when the engagement ends (see L{open_bridge} and L{Bridge.close}).

Behaviour of one bridged connection:

- the accepted side does not read until the outbound connection is up; if that connect fails
  the accepted connection is closed;
- bytes are piped both ways with flow control: each transport is registered as a streaming
  producer on the other, so a slow reader on one side stops reads on the other;
- TCP_NODELAY is set on both sides, because SFTP is request/response;
- a half-close (EOF) is passed on as a half-close once the data before it is flushed; a full
  close of one side closes the other after flushing what it already has.
"""

from __future__ import annotations

from typing import Any, cast

import attrs
from twisted.application import service
from twisted.internet import defer, tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IListeningPort,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from telenet.core.internals import lean_reads, nothing_queued
from telenet.core.reactor import IReactor, global_reactor

log = Logger()

READ_SIZE = 256 * 1024
"""Bytes read per socket read; also the send buffer level at which the other side pauses."""

DEFAULT_CONNECT_TIMEOUT = 10.0


def _describe(addr: IAddress | None) -> str:
    host, port = getattr(addr, "host", None), getattr(addr, "port", None)
    return f"{host}:{port}" if host is not None else str(addr)


def _observe(d: Deferred[Any]) -> Deferred[None]:
    """A new Deferred that fires (with None) when C{d} fires, leaving C{d}'s result alone."""
    observer: Deferred[None] = Deferred()

    def fired(result: object) -> object:
        observer.callback(None)
        return result

    d.addBoth(fired)
    return observer


def _send_now(out: tcp.Connection, data: bytes) -> bytes:
    """
    Send what the socket takes right away if C{out} has nothing queued; return the rest.

    Queuing with write() costs a reactor turn and two poller updates per hop, which is most
    of the latency a bridge adds to a small request. Errors are left for write() to meet,
    so the reactor handles them as usual.
    """
    if not nothing_queued(out):
        return data
    try:
        sent = out.socket.send(data)
    except OSError:
        return data
    return data[sent:]


def _tune(transport: Any) -> None:
    if ITCPTransport.providedBy(transport):
        transport.setTcpNoDelay(True)
    # Twisted reads (and pauses its producer) in units of bufferSize, 64 KiB by default;
    # bigger reads mean fewer trips through the reactor for bulk transfers.
    if hasattr(transport, "bufferSize"):
        transport.bufferSize = READ_SIZE


@implementer(IHalfCloseableProtocol)
class _Side(Protocol):
    """One end of a bridged connection; C{peer} is the other end once both are up."""

    # typing note: a TCP transport (or a test double), also a producer and a consumer.
    transport: Any

    def __init__(self, factory: BridgeFactory) -> None:
        self.bridge = factory
        self.peer: _Side | None = None
        self.lost: Deferred[None] = Deferred()
        self.gone = False
        self._read_closed = False
        self._write_closed = False
        # True while peer.transport has our transport registered as its producer.
        self._producing_into_peer = False

    def link(self, peer: _Side) -> None:
        """Pipe our reads into C{peer}, paused whenever C{peer}'s send buffer is full."""
        self.peer = peer
        peer.transport.registerProducer(self.transport, True)
        self._producing_into_peer = True

    def _count(self, n: int) -> None:
        raise NotImplementedError

    def dataReceived(self, data: bytes) -> None:
        self._count(len(data))
        assert self.peer is not None, "read before the bridge was linked"
        out = self.peer.transport
        if self.bridge.write_through and isinstance(out, tcp.Connection):
            data = _send_now(out, data)
        if data:
            out.write(data)

    def _release_peer(self) -> None:
        """We will produce nothing more: let the peer's transport close when flushed."""
        if self._producing_into_peer and self.peer is not None:
            self._producing_into_peer = False
            self.peer.transport.unregisterProducer()

    def readConnectionLost(self) -> None:
        self._read_closed = True
        peer = self.peer
        self._release_peer()
        if peer is not None and not peer.gone:
            if IHalfCloseableDescriptor.providedBy(peer.transport):
                cast(ITCPTransport, peer.transport).loseWriteConnection()
            else:
                peer.transport.loseConnection()
        self._maybe_close()

    def writeConnectionLost(self) -> None:
        self._write_closed = True
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self._read_closed and self._write_closed:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone = True
        peer = self.peer
        self._release_peer()
        if peer is not None and not peer.gone:
            peer.transport.loseConnection()
        self.lost.callback(None)

    def abort(self) -> None:
        if not self.gone:
            self.transport.abortConnection()


class _Outbound(_Side):
    """The connection to the target, made for one accepted connection."""

    def connectionMade(self) -> None:
        _tune(self.transport)

    def _count(self, n: int) -> None:
        self.bridge.bytes_out += n


class _Inbound(_Side):
    """An accepted connection: held paused until its outbound connection is up."""

    def __init__(self, factory: BridgeFactory) -> None:
        super().__init__(factory)
        self._connecting: Deferred[_Outbound] | None = None
        self._peer_name = "?"

    def _count(self, n: int) -> None:
        self.bridge.bytes_in += n

    def connectionMade(self) -> None:
        self._peer_name = _describe(self.transport.getPeer())
        _tune(self.transport)
        self.transport.pauseProducing()
        self.bridge._opened(self)
        outbound = _Outbound(self.bridge)
        self._connecting = connectProtocol(self.bridge.target, outbound)
        self._connecting.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, outbound: _Side) -> None:
        self._connecting = None
        self.bridge._sides.add(outbound)
        outbound.lost.addBoth(lambda _: self.bridge._sides.discard(outbound))
        if self.gone:
            outbound.transport.loseConnection()
            return
        self.link(outbound)
        outbound.link(self)
        self.transport.resumeProducing()
        lean_reads(self.transport)
        lean_reads(outbound.transport)
        log.debug("Bridged {peer} to the target", peer=self._peer_name)

    def _connect_failed(self, reason: Failure) -> None:
        self._connecting = None
        if self.gone:
            return  # we cancelled it ourselves
        self.bridge.connect_failures += 1
        log.warn(
            "Bridge from {peer}: cannot reach the target: {error}",
            peer=self._peer_name,
            error=reason.getErrorMessage(),
        )
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        connecting, self._connecting = self._connecting, None
        self.gone = True
        if connecting is not None:
            connecting.cancel()
        self.bridge._closed(self)
        super().connectionLost(reason)

    def abort(self) -> None:
        super().abort()
        if self.peer is not None:
            self.peer.abort()


class BridgeFactory(ServerFactory):
    """
    Accepts connections and bridges each one to C{target}.

    Status counters: C{connections} (open now), C{total_connections}, C{connect_failures},
    C{bytes_in} (client to target) and C{bytes_out} (target to client).
    """

    def __init__(self, target: IStreamClientEndpoint, write_through: bool = True) -> None:
        self.target = target
        self.write_through = write_through
        self.connections = 0
        self.total_connections = 0
        self.connect_failures = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self._sides: set[_Side] = set()

    def buildProtocol(self, addr: IAddress | None) -> _Inbound:
        return _Inbound(self)

    def _opened(self, side: _Inbound) -> None:
        self.connections += 1
        self.total_connections += 1
        self._sides.add(side)

    def _closed(self, side: _Inbound) -> None:
        self.connections -= 1
        self._sides.discard(side)

    def close_connections(self) -> Deferred[None]:
        """Drop every bridged connection now; fires when all of them are gone."""
        sides = list(self._sides)
        for side in sides:
            side.abort()
        waits = [_observe(side.lost) for side in sides if not side.gone]
        return defer.gatherResults(waits).addCallback(lambda _: None)

    def status(self) -> dict[str, int]:
        return {
            "connections": self.connections,
            "total_connections": self.total_connections,
            "connect_failures": self.connect_failures,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }


@implementer(IListeningPort)
@attrs.define
class Bridge:
    """
    An open bridge: the listening port and its factory.

    It is an L{IListeningPort}; C{stopListening} (or its alias C{close}) closes the listener
    and drops the bridge's open connections.
    """

    port: IListeningPort
    factory: BridgeFactory
    listen_port: int = attrs.field(init=False)
    """The local TCP port clients connect to (kept after the bridge is closed)."""

    def __attrs_post_init__(self) -> None:
        self.listen_port = int(getattr(self.port.getHost(), "port", 0))

    @property
    def connections(self) -> int:
        return self.factory.connections

    @property
    def bytes_in(self) -> int:
        return self.factory.bytes_in

    @property
    def bytes_out(self) -> int:
        return self.factory.bytes_out

    def startListening(self) -> None:
        self.port.startListening()

    def getHost(self) -> IAddress:
        return self.port.getHost()

    def stopListening(self) -> Deferred[None]:
        waits: list[Deferred[Any]] = [
            defer.maybeDeferred(self.port.stopListening),
            self.factory.close_connections(),
        ]
        return defer.gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)

    def close(self) -> Deferred[None]:
        return self.stopListening()


def target_endpoint(
    reactor: IReactor, host: str, port: int, timeout: float = DEFAULT_CONNECT_TIMEOUT
) -> IStreamClientEndpoint:
    """The client endpoint of an agent at C{host}:C{port} (IPv4, IPv6 literal, or a name)."""
    return HostnameEndpoint(reactor, host, port, timeout=timeout)


def listen_bridge(listen: IStreamServerEndpoint, target: IStreamClientEndpoint) -> Deferred[Bridge]:
    """Listen on C{listen} and bridge each accepted connection to C{target}."""
    factory = BridgeFactory(target)
    d: Deferred[Any] = listen.listen(factory)
    return d.addCallback(lambda port: Bridge(port, factory))


def open_bridge(
    reactor: IReactor,
    listen: str,
    target_host: str,
    target_port: int,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> Deferred[Bridge]:
    """
    Open a bridge from the server endpoint string C{listen} (e.g. ``tcp:0``) to
    C{target_host}:C{target_port}. The result's C{listen_port} is the port bound.
    """
    return listen_bridge(
        serverFromString(reactor, listen),
        target_endpoint(reactor, target_host, target_port, connect_timeout),
    )


class BridgeService(service.Service):
    """A bridge as a service: open while running, closed (connections too) on stop."""

    def __init__(
        self,
        listen: str | IStreamServerEndpoint,
        target: IStreamClientEndpoint,
        reactor: IReactor | None = None,
    ) -> None:
        self.listen = listen
        self.target = target
        self.reactor = reactor
        self.bridge: Bridge | None = None
        self._waiting: list[Deferred[Bridge]] = []

    def _endpoint(self) -> IStreamServerEndpoint:
        if not isinstance(self.listen, str):
            return self.listen
        return serverFromString(self.reactor or global_reactor(), self.listen)

    def startService(self) -> None:
        super().startService()

        def started(bridge: Bridge) -> None:
            self.bridge = bridge
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(bridge)

        def failed(reason: Failure) -> None:
            log.failure("Cannot open the bridge", reason)
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.errback(reason)

        listen_bridge(self._endpoint(), self.target).addCallbacks(started, failed)

    def whenListening(self) -> Deferred[Bridge]:
        """Fires with the L{Bridge} once the service listens (or with why it could not)."""
        if self.bridge is not None:
            return defer.succeed(self.bridge)
        d: Deferred[Bridge] = Deferred()
        self._waiting.append(d)
        return d

    def stopService(self) -> Deferred[None]:
        super().stopService()
        bridge, self.bridge = self.bridge, None
        if bridge is None:
            return defer.succeed(None)
        return bridge.stopListening()
