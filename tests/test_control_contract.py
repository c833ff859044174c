"""
IControl's contract, asserted alike of ``MemoryControl`` and of the real clients
(``HTTPControl``; ``ExecControl`` with its request script run on this machine) talking to the
daemon's real control API (``telenet.network.control``) on 127.0.0.1, whose bridges are
``telenet.sftpproxy``'s to a local TCP listener standing in for the agent.

Same answers, same error messages: CLI tests on the fake then say something true.
"""

from __future__ import annotations

import copy
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, threads
from zope.interface.verify import verifyObject

from telenet import sftpproxy
from telenet.cli.daemoncontrol import DaemonControlError, ExecControl, HTTPControl
from telenet.cli.interfaces import ContainerSpec, IControl
from telenet.core import logoptions
from telenet.core.pluginadmin import LevelControl
from telenet.network.control import Bridges, control_site
from telenet.testing import MemoryControl, MemoryDocker

from .conftest import free_port

BASE: dict[str, Any] = {
    "version": "0.1.0",
    "routes": ["10.96.0.0/12"],
    "dns": {"local_address": "172.30.0.2:53"},
}
#: What Twisted says when a bridge's port is taken (the fake's ``refuse_agent``).
TAKEN = "Couldn't listen on 127.0.0.1:{port}: [Errno 98] Address already in use."


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class Setup:
    """An IControl, one for a daemon that does not answer, an agent, and a way to refuse."""

    def __init__(
        self,
        control: Any,
        silent: Any,
        agent: str,
        refuse: Callable[[], None],
        reach: Callable[[int], bool],
    ) -> None:
        self.control, self.silent, self.agent = control, silent, agent
        self.refuse, self.reach = refuse, reach


class Daemon:
    """The daemon's control API and bridges as ``telenet.daemon`` wires them, on loopback."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.listen = "tcp:0:interface=127.0.0.1"
        self.bridges = Bridges(self._open)
        # Its own log settings: a level set here changes nothing of the test run's logging.
        levels = LevelControl(reactor, logoptions.LogSettings())
        site = control_site(self._status, self.bridges, reactor, levels=levels)
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.agent = reactor.listenTCP(0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")

    def _open(self, host: str, port: int) -> defer.Deferred[Any]:
        return sftpproxy.open_bridge(self.reactor, self.listen, host, port)

    def _status(self) -> dict[str, Any]:
        return {**copy.deepcopy(BASE), "bridges": self.bridges.describe()}

    def refuse(self) -> None:
        # A listen that fails for real: on the agent's own port.
        self.listen = f"tcp:{self.agent.getHost().port}:interface=127.0.0.1"

    async def stop(self) -> None:
        await self.bridges.stopService()
        await defer.maybeDeferred(self.port.stopListening)
        await defer.maybeDeferred(self.agent.stopListening)


def echoes(port: int) -> bool:
    """Whether a connection to the bridge on ``port`` reaches the echoing agent."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"ping")
            return s.recv(4) == b"ping"
    except OSError:
        return False


def run_here(container: dict[str, Any], argv: list[str]) -> tuple[int, bytes, bytes]:
    """``docker exec`` of the daemon container's python3, run by this machine's python."""
    done = subprocess.run([sys.executable, *argv[1:]], capture_output=True, timeout=30)
    return done.returncode, done.stdout, done.stderr


def exec_clients(port: int, dead_port: int) -> tuple[ExecControl, ExecControl]:
    docker = MemoryDocker()
    docker.create_container(ContainerSpec("local/busybox", ["sleep", "1d"], "tntest-daemon"))
    docker.start_container("tntest-daemon")
    docker.exec_handler = run_here
    return ExecControl(docker, "tntest-daemon", port), ExecControl(
        docker, "tntest-daemon", dead_port
    )


@pytest_twisted.async_yield_fixture(params=["memory", "http", "exec"])
async def setup(request: Any) -> AsyncIterator[Setup]:
    if request.param == "memory":
        fake, silent = MemoryControl(copy.deepcopy(BASE)), MemoryControl()
        silent.answering = False

        def refuse() -> None:
            fake.refuse_agent = TAKEN.format(port=8022)

        yield Setup(fake, silent, "127.0.0.1:8022", refuse, lambda port: port in fake.bridges)
        return
    from twisted.internet import reactor

    daemon = Daemon(reactor)
    try:
        port, dead = daemon.port.getHost().port, free_port()
        if request.param == "http":
            control, silent = HTTPControl("127.0.0.1", port), HTTPControl("127.0.0.1", dead)
        else:
            control, silent = exec_clients(port, dead)
        agent = f"127.0.0.1:{daemon.agent.getHost().port}"
        yield Setup(control, silent, agent, daemon.refuse, echoes)
    finally:
        await daemon.stop()


async def call(method: Callable[..., Any], *args: Any) -> Any:
    # The real clients block on a socket, and the API they ask runs on this reactor.
    return await threads.deferToThread(method, *args)


async def fails(message: str, method: Callable[..., Any], *args: Any) -> None:
    """``method(*args)`` fails with DaemonControlError, its whole text matching ``message``."""
    with pytest.raises(DaemonControlError) as caught:
        await call(method, *args)
    assert re.fullmatch(message, str(caught.value)), str(caught.value)


def entry(port: int, agent: str) -> dict[str, Any]:
    return {"port": port, "agent": agent, "connections": 0, "bytes_in": 0, "bytes_out": 0}


@pytest_twisted.ensureDeferred
async def test_provides_interface(setup: Setup) -> None:
    """Every implementation provides every IControl method."""
    assert verifyObject(IControl, setup.control)


@pytest_twisted.ensureDeferred
async def test_status(setup: Setup) -> None:
    """status is the daemon's status, with no bridges yet."""
    assert await call(setup.control.status) == {**BASE, "bridges": []}


@pytest_twisted.ensureDeferred
async def test_open_list_close(setup: Setup) -> None:
    """
    open_bridge answers a port that leads to the agent, status lists the bridges by port with
    their counters, close_bridge ends one and the port leads nowhere.
    """
    c = setup.control
    first = await call(c.open_bridge, setup.agent)
    second = await call(c.open_bridge, setup.agent)
    assert isinstance(first, int) and 0 < first < 65536 and second != first
    low, high = sorted((first, second))
    status = await call(c.status)
    assert status["bridges"] == [entry(low, setup.agent), entry(high, setup.agent)]
    assert {k: v for k, v in status.items() if k != "bridges"} == BASE
    assert await threads.deferToThread(setup.reach, first)
    await call(c.close_bridge, first)
    assert [b["port"] for b in (await call(c.status))["bridges"]] == [second]
    assert not await threads.deferToThread(setup.reach, first)
    await call(c.close_bridge, second)
    assert (await call(c.status))["bridges"] == []


@pytest_twisted.ensureDeferred
async def test_unreachable_agent_still_opens(setup: Setup) -> None:
    """The daemon dials the agent per connection, not when opening: a dead agent opens too."""
    c = setup.control
    for agent in (f"127.0.0.1:{free_port()}", "nowhere.invalid:8022", "[fd00::9]:8022"):
        port = await call(c.open_bridge, agent)
        assert (await call(c.status))["bridges"] == [entry(port, agent)]
        await call(c.close_bridge, port)


@pytest_twisted.ensureDeferred
async def test_close_unknown_bridge(setup: Setup) -> None:
    """Closing a port with no bridge, or twice, says so; a negative port is refused."""
    c = setup.control
    unknown = free_port()
    await fails(f"no bridge on port {unknown}", c.close_bridge, unknown)
    port = await call(c.open_bridge, setup.agent)
    await call(c.close_bridge, port)
    await fails(f"no bridge on port {port}", c.close_bridge, port)
    await fails("bad bridge port '-1'", c.close_bridge, -1)


@pytest.mark.parametrize(
    "agent,message",
    [
        ("host", "bad agent address 'host': expected host:port"),
        ("host:0", "bad port in agent 'host:0': 1-65535"),
        ("host:70000", "bad port in agent 'host:70000': 1-65535"),
        ("fd00::1:8022", "bad agent address 'fd00::1:8022': write IPv6 as [addr]:port"),
        ("[nothex]:1", "bad IPv6 address in agent '[nothex]:1'"),
        ("a b:1", "bad host in agent 'a b:1'"),
        ("", '"agent" must be a string "host:port"'),
    ],
)
@pytest_twisted.ensureDeferred
async def test_malformed_agent(setup: Setup, agent: str, message: str) -> None:
    """A malformed agent is refused with the daemon's words, and opens nothing."""
    await fails(re.escape(message), setup.control.open_bridge, agent)
    assert (await call(setup.control.status))["bridges"] == []


@pytest_twisted.ensureDeferred
async def test_bridge_the_daemon_cannot_open(setup: Setup) -> None:
    """When the daemon cannot listen for a bridge, the error names the agent and why."""
    setup.refuse()
    await fails(
        r"cannot open a bridge to 10\.0\.0\.9:8022: .*Address already in use\.",
        setup.control.open_bridge,
        "10.0.0.9:8022",
    )
    assert (await call(setup.control.status))["bridges"] == []


@pytest_twisted.ensureDeferred
async def test_daemon_not_answering(setup: Setup) -> None:
    """Each call to a daemon not listening fails naming the request and the refusal."""
    s = setup.silent
    await fails(r"GET /status: .*Connection refused", s.status)
    await fails(r"POST /bridges: .*Connection refused", s.open_bridge, setup.agent)
    await fails(r"DELETE /bridges/4000: .*Connection refused", s.close_bridge, 4000)
    await fails(r"POST /loglevel: .*Connection refused", s.set_log_level, "debug", 0)


@pytest_twisted.ensureDeferred
async def test_log_level(setup: Setup) -> None:
    """The level is set (until changed, for duration 0); a bad one is refused by name."""
    answer = await call(setup.control.set_log_level, "debug", 0)
    assert answer == {"level": "debug", "configured": "info", "until": None}
    await fails(
        re.escape("level 'shout' is not one of debug, info, warn, error, critical"),
        setup.control.set_log_level,
        "shout",
        0,
    )
    await fails(
        re.escape('"duration" must be a number of seconds, 0 or more'),
        setup.control.set_log_level,
        "debug",
        -1,
    )
