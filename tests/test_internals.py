"""
The private parts of asyncio, Twisted and pyfuse3 that telenet.core.internals relies on are
still there and still mean what they meant: an upgrade that changes one fails here, loudly,
instead of silently slowing a fast path down (or breaking it).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, tcp
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol

from telenet.core import internals


def test_current_tasks_is_the_loops_running_task() -> None:
    """asyncio.tasks._current_tasks maps a loop to its running task while one runs."""
    seen: list[bool] = []

    def in_a_thread() -> None:
        # A loop of its own: the reactor's loop runs this test's thread.
        loop = asyncio.new_event_loop()
        try:

            async def inside() -> None:
                seen.append(internals.task_running(loop))

            loop.call_soon(lambda: seen.append(internals.task_running(loop)))
            loop.run_until_complete(inside())
        finally:
            loop.close()

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join(10)
    assert seen == [False, True]


def test_reactor_loop_is_the_asyncio_reactors_loop() -> None:
    """The asyncio reactor keeps its loop in _asyncioEventloop (pytest runs on that reactor)."""
    loop = internals.reactor_loop(reactor)
    assert isinstance(loop, asyncio.AbstractEventLoop)
    assert internals.reactor_loop(object()) is None


class _Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


@pytest_twisted.ensureDeferred
async def test_tcp_transport_internals() -> None:
    """
    A TCP connection has dataBuffer and _tempDataLen (its write queue), its reactor keeps
    readers in _readers and reads them through _readOrWrite: what nothing_queued and
    lean_reads use. lean_reads then still delivers the data.
    """
    factory = protocol.Factory.forProtocol(_Echo)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    try:
        received: defer.Deferred[bytes] = defer.Deferred()

        class Client(protocol.Protocol):
            def dataReceived(self, data: bytes) -> None:
                if not received.called:
                    received.callback(data)

        client = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Client()
        )
        transport: Any = client.transport
        assert isinstance(transport, tcp.Connection)
        assert isinstance(transport.dataBuffer, bytes)
        assert isinstance(transport._tempDataLen, int)
        assert internals.nothing_queued(transport)
        readers = reactor._readers  # type: ignore[attr-defined]
        assert isinstance(readers, dict) and readers.get(transport) == transport.fileno()
        handler = reactor._readOrWrite  # type: ignore[attr-defined]
        assert list(inspect.signature(handler).parameters)[:2] == ["selectable", "read"]
        internals.lean_reads(transport)
        transport.write(b"ping")
        assert await received == b"ping"
        transport.loseConnection()
    finally:
        await port.stopListening()


def test_nothing_queued_sees_a_queued_write() -> None:
    """Bytes in dataBuffer or _tempDataLen, or a closing connection: something is queued."""

    class Fake:
        connected = True
        disconnecting = False
        dataBuffer = b""
        _tempDataLen = 0

    fake: Any = Fake()
    assert internals.nothing_queued(fake)
    fake._tempDataLen = 3
    assert not internals.nothing_queued(fake)
    fake._tempDataLen, fake.dataBuffer = 0, b"x"
    assert not internals.nothing_queued(fake)
    fake.dataBuffer, fake.disconnecting = b"", True
    assert not internals.nothing_queued(fake)


def test_pyfuse3_asyncio_looks_up_what_we_replace() -> None:
    """
    pyfuse3.asyncio has wait_readable, notify_closing and Lock, and its enable() makes the
    module pyfuse3's ``trio`` (and ``trio.lowlevel``), through which pyfuse3 looks them up at
    call time: so putting ours in place of them takes effect.
    """
    pyfuse3_asyncio = pytest.importorskip("pyfuse3.asyncio")
    for name in ("wait_readable", "notify_closing", "Lock"):
        assert hasattr(pyfuse3_asyncio, name), name
    assert inspect.iscoroutinefunction(pyfuse3_asyncio.wait_readable)
    assert len(inspect.signature(pyfuse3_asyncio.wait_readable).parameters) == 1
    enable = inspect.getsource(pyfuse3_asyncio.enable)
    assert "pyfuse3.trio = fake_trio" in enable and "fake_trio.lowlevel = fake_trio" in enable


def test_patch_pyfuse3_waiting_replaces_the_three() -> None:
    """patch_pyfuse3_waiting puts the given waiter and lock class in place."""

    class Module:
        pass

    module: Any = Module()

    async def wait(fd: int) -> None:
        return None

    def closing(fd: int) -> None:
        return None

    internals.patch_pyfuse3_waiting(module, wait, closing, dict)
    assert (module.wait_readable, module.notify_closing, module.Lock) == (wait, closing, dict)
