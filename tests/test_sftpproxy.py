"""
Tests for L{telenet.sftpproxy}: the TCP bridge from a local port to an SFTP agent.

The first tests drive the bridge protocols in memory (L{MemoryReactor} for the outbound
connect, L{StringTransport} for both sides). The last ones bridge real loopback sockets,
including an SFTP client talking to the agent through the bridge.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.conch.ssh.filetransfer import (
    FXF_CREAT,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    FileTransferClient,
)
from twisted.internet import defer, endpoints
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IHalfCloseableDescriptor, IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.python.log import callWithLogger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from telenet.sftp.runners import threadpool_runner
from telenet.sftp.server import AgentFactory
from telenet.sftpproxy import Bridge, BridgeFactory, BridgeService, open_bridge

DONE = Failure(ConnectionDone())


@implementer(IHalfCloseableDescriptor)
class HalfCloseTransport(StringTransport):
    """A StringTransport that records half-closes."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def readConnectionLost(self, reason: Failure) -> None:
        pass

    def writeConnectionLost(self, reason: Failure) -> None:
        pass


class Pair:
    """One bridged connection in memory: inbound and outbound protocols and transports."""

    def __init__(self, transport_class: type[StringTransport] = StringTransport) -> None:
        self.reactor = MemoryReactor()
        target = endpoints.TCP4ClientEndpoint(self.reactor, "10.1.2.3", 8022)
        self.factory = BridgeFactory(target)
        self.inbound = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.tin = transport_class(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.inbound.makeConnection(self.tin)
        self.tout = transport_class()
        self.outbound: Any = None

    def connect_outbound(self) -> None:
        client_factory = self.reactor.tcpClients[0][2]
        self.outbound = client_factory.buildProtocol(None)
        self.outbound.makeConnection(self.tout)


def test_inbound_is_paused_until_the_outbound_connects() -> None:
    """An accepted connection is not read until the bridge is connected to the target."""
    pair = Pair()
    assert pair.tin.producerState == "paused"
    assert [(h, p) for h, p, *_ in pair.reactor.tcpClients] == [("10.1.2.3", 8022)]
    pair.connect_outbound()
    assert pair.tin.producerState == "producing"


def test_each_side_is_the_producer_of_the_other() -> None:
    """Flow control: each transport is registered as a streaming producer on the other."""
    pair = Pair()
    pair.connect_outbound()
    assert pair.tin.producer is pair.tout and pair.tin.streaming
    assert pair.tout.producer is pair.tin and pair.tout.streaming


def test_bytes_are_piped_and_counted_both_ways() -> None:
    """Data goes client to target and back unchanged; the counters follow."""
    pair = Pair()
    pair.connect_outbound()
    pair.inbound.dataReceived(b"request")
    pair.outbound.dataReceived(b"a longer reply")
    assert pair.tout.value() == b"request"
    assert pair.tin.value() == b"a longer reply"
    assert pair.factory.status() == {
        "connections": 1,
        "total_connections": 1,
        "connect_failures": 0,
        "bytes_in": 7,
        "bytes_out": 14,
    }


def test_failed_outbound_connect_closes_the_inbound() -> None:
    """If the target cannot be reached, the accepted connection is closed and counted."""
    pair = Pair()
    client_factory = pair.reactor.tcpClients[0][2]
    connector = pair.reactor.connectors[0]
    client_factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
    assert pair.tin.disconnecting
    assert pair.factory.connect_failures == 1
    pair.inbound.connectionLost(DONE)
    assert pair.factory.connections == 0


def test_inbound_lost_while_connecting_cancels_the_connect() -> None:
    """A client that leaves before the target answered cancels the outbound attempt."""
    pair = Pair()
    pair.inbound.connectionLost(DONE)
    assert pair.reactor.connectors[0].stoppedConnecting
    assert pair.factory.connections == 0 and pair.factory.connect_failures == 0


def test_target_close_closes_the_client_after_flushing() -> None:
    """When the target closes, the client side is closed (not aborted) and stops producing."""
    pair = Pair()
    pair.connect_outbound()
    pair.outbound.dataReceived(b"last words")
    pair.outbound.connectionLost(DONE)
    assert pair.tin.disconnecting
    assert pair.tin.value() == b"last words"
    assert pair.tin.producer is None  # else a paused producer could hold the close forever


def test_client_close_closes_the_target() -> None:
    """When the client closes, the target side is closed and the connection is uncounted."""
    pair = Pair()
    pair.connect_outbound()
    pair.inbound.connectionLost(DONE)
    assert pair.tout.disconnecting
    assert pair.factory.connections == 0


def test_half_close_is_passed_on() -> None:
    """
    A client EOF half-closes the target side; the target's EOF half-closes the client; with
    both directions done, each connection closes fully.
    """
    pair = Pair(HalfCloseTransport)
    pair.connect_outbound()
    assert IHalfCloseableProtocol.providedBy(pair.inbound)
    pair.inbound.readConnectionLost()
    tin, tout = cast(HalfCloseTransport, pair.tin), cast(HalfCloseTransport, pair.tout)
    assert tout.write_closed and not tout.disconnecting
    assert tout.producer is None
    pair.outbound.dataReceived(b"reply after EOF")
    assert tin.value() == b"reply after EOF"
    pair.outbound.readConnectionLost()
    assert tin.write_closed
    pair.inbound.writeConnectionLost()
    assert tin.disconnecting
    pair.outbound.writeConnectionLost()
    assert tout.disconnecting


def test_bridge_close_stops_listening_and_drops_connections() -> None:
    """Closing a bridge stops its listener and aborts every open connection."""
    pair = Pair()
    pair.connect_outbound()
    port = endpoints.TCP4ServerEndpoint(pair.reactor, 0).listen(pair.factory)
    bridge = Bridge(port.result, pair.factory)
    closed = bridge.close()
    assert pair.tin.disconnecting and pair.tout.disconnecting
    assert not closed.called  # until both sides report the loss
    pair.inbound.connectionLost(DONE)
    pair.outbound.connectionLost(DONE)
    assert closed.called and pair.factory.connections == 0


def test_bridge_service_listens_on_start_and_closes_on_stop() -> None:
    """BridgeService opens its listener when started and closes it when stopped."""
    reactor = MemoryReactor()
    target = endpoints.TCP4ClientEndpoint(reactor, "10.1.2.3", 8022)
    svc = BridgeService(endpoints.TCP4ServerEndpoint(reactor, 4567), target)
    svc.startService()
    box: list[Bridge] = []
    svc.whenListening().addCallback(box.append)
    assert [p for p, *_ in reactor.tcpServers] == [4567] and box
    stopped = svc.stopService()
    assert stopped.called and svc.bridge is None


# -- real sockets ----------------------------------------------------------------------------


class NetClient(FileTransferClient):
    """A Conch SFTP client over TCP whose C{ready} fires on VERSION."""

    transport: Any  # typing note: a TCP transport

    def __init__(self) -> None:
        super().__init__()
        self.ready: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        super().connectionMade()

    def gotServerVersion(self, serverVersion: int, extData: dict[bytes, bytes]) -> None:
        self.ready.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.closed.callback(None)


@pytest.fixture
def pool() -> Iterator[ThreadPool]:
    tp = ThreadPool(minthreads=0, maxthreads=4, name="test-proxy-io")
    tp.start()
    yield tp
    tp.stop()


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest_twisted.async_yield_fixture
async def agent_port(tmp_path: Any, pool: ThreadPool) -> Any:
    """An agent exporting tmp_path/export on a loopback port."""
    export = tmp_path / "export"
    export.mkdir()
    reactor = _reactor()
    factory = AgentFactory(str(export), threadpool_runner(reactor, pool))
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    yield port.getHost().port
    await port.stopListening()


async def connect(port: int) -> NetClient:
    client = NetClient()
    ep = endpoints.TCP4ClientEndpoint(_reactor(), "127.0.0.1", port)
    await endpoints.connectProtocol(ep, client)
    await client.ready
    return client


@pytest_twisted.ensureDeferred
async def test_sftp_through_the_bridge_moves_mibs_intact_both_ways(agent_port: int) -> None:
    """An SFTP client writes then reads 6 MiB through the bridge; bytes and counters match."""
    bridge = await open_bridge(_reactor(), "tcp:0:interface=127.0.0.1", "127.0.0.1", agent_port)
    try:
        client = await connect(bridge.listen_port)
        assert bridge.connections == 1
        data = os.urandom(6 * 1024 * 1024)
        f = await client.openFile(b"blob", FXF_WRITE | FXF_CREAT | FXF_TRUNC, {})
        step = 128 * 1024
        await defer.gatherResults(
            [f.writeChunk(o, data[o : o + step]) for o in range(0, len(data), step)],
            consumeErrors=True,
        )
        await f.close()
        f = await client.openFile(b"/tel_app_exports/blob", FXF_READ, {})
        parts = await defer.gatherResults(
            [f.readChunk(o, step) for o in range(0, len(data), step)], consumeErrors=True
        )
        await f.close()
        assert hashlib.sha256(b"".join(parts)).digest() == hashlib.sha256(data).digest()
        assert bridge.bytes_in > len(data) and bridge.bytes_out > len(data)
        for side in bridge.factory._sides:
            # The lean read path is in place (or Twisted's again after flow control).
            key = _reactor()._asyncioEventloop._selector.get_key(side.transport.fileno())
            assert key.data[0]._callback in (_reactor()._readOrWrite, callWithLogger)
        client.transport.loseConnection()
        await client.closed
    finally:
        await bridge.close()
    assert bridge.connections == 0


@implementer(IHalfCloseableProtocol)
class DigestOnEOF(Protocol):
    """A target that answers the sha256 of everything it read once the client half-closes."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def dataReceived(self, data: bytes) -> None:
        self.hash.update(data)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.write(self.hash.hexdigest().encode())
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class HalfClosingClient(Protocol):
    """Sends a payload, half-closes, and collects the reply until the connection ends."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.reply = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(self.payload)
        transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.reply += data

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(self.reply)


@pytest_twisted.ensureDeferred
async def test_half_close_crosses_the_bridge_on_real_sockets() -> None:
    """A client's EOF reaches the target after all its data; the reply still comes back."""
    reactor = _reactor()
    target = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(DigestOnEOF)
    )
    bridge = await open_bridge(
        reactor, "tcp:0:interface=127.0.0.1", "127.0.0.1", target.getHost().port
    )
    try:
        payload = os.urandom(3 * 1024 * 1024)
        client = HalfClosingClient(payload)
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", bridge.listen_port)
        await endpoints.connectProtocol(ep, client)
        reply = await client.done
        assert reply == hashlib.sha256(payload).hexdigest().encode()
    finally:
        await bridge.close()
        await target.stopListening()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_twisted.ensureDeferred
async def test_unreachable_target_closes_the_client() -> None:
    """With nothing listening at the target, an accepted client is closed promptly."""
    reactor = _reactor()
    bridge = await open_bridge(reactor, "tcp:0:interface=127.0.0.1", "127.0.0.1", _closed_port())
    try:
        client = HalfClosingClient(b"hello?")
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", bridge.listen_port)
        await endpoints.connectProtocol(ep, client)
        assert await client.done == b""
        assert bridge.factory.connect_failures == 1
    finally:
        await bridge.close()


@pytest_twisted.ensureDeferred
async def test_closing_the_bridge_drops_clients_and_the_listener(agent_port: int) -> None:
    """close() disconnects an open SFTP session and later connects are refused."""
    reactor = _reactor()
    bridge = await open_bridge(reactor, "tcp:0:interface=127.0.0.1", "127.0.0.1", agent_port)
    client = await connect(bridge.listen_port)
    await client.realPath(b".")
    await bridge.close()
    await client.closed
    assert bridge.connections == 0
    with pytest.raises(ConnectionRefusedError):
        await connect(bridge.listen_port)


@pytest_twisted.ensureDeferred
async def test_small_requests_take_the_lean_read_path() -> None:
    """On the asyncio reactor both sides of a bridged connection are read without log context."""
    reactor = _reactor()
    target = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(Echo)
    )
    bridge = await open_bridge(
        reactor, "tcp:0:interface=127.0.0.1", "127.0.0.1", target.getHost().port
    )
    try:
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", bridge.listen_port)
        client = Collector()
        await endpoints.connectProtocol(ep, client)
        for i in range(20):
            client.transport.write(b"ping %d;" % i)
        await client.until(b"ping 19;")
        sides = list(bridge.factory._sides)
        assert len(sides) == 2
        for side in sides:
            key = reactor._asyncioEventloop._selector.get_key(side.transport.fileno())
            assert key.data[0]._callback == reactor._readOrWrite
        client.transport.loseConnection()
    finally:
        await bridge.close()
        await target.stopListening()


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Collector(Protocol):
    """Keeps what it receives; ``until(marker)`` fires once the marker has arrived."""

    def __init__(self) -> None:
        self.received = b""
        self._waiting: list[tuple[bytes, defer.Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for marker, d in list(self._waiting):
            if marker in self.received:
                self._waiting.remove((marker, d))
                d.callback(None)

    def until(self, marker: bytes) -> defer.Deferred[None]:
        if marker in self.received:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append((marker, d))
        return d.addTimeout(10, _reactor())


@pytest_twisted.ensureDeferred
async def test_sftp_client_reads_its_socket_the_lean_way(agent_port: int) -> None:
    """telenet's SFTP client, on real TCP, takes the same lean read path and works on it."""
    from telenet.sftp.client import SFTPClient

    reactor = _reactor()
    client = SFTPClient(reactor)
    ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", agent_port)
    await endpoints.connectProtocol(ep, client)
    await client.ready
    try:
        key = reactor._asyncioEventloop._selector.get_key(client.transport.fileno())
        assert key.data[0]._callback == reactor._readOrWrite
        attrs = await client.stat(b"/tel_app_exports")
        assert attrs.permissions is not None
    finally:
        client.transport.loseConnection()
