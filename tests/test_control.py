"""The daemon's control API, driven in memory through StubTreq."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import defer

from telenet.network.control import Bridges, ControlError, ControlResource, parse_agent
from tests.conftest import free_port, port_open
from tests.helpers import result_of

BASE = "http://daemon"


class FakeBridge:
    def __init__(self, port: int) -> None:
        self.listen_port = port
        self.connections = 0
        self.closed = False

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)


class FakeOpener:
    """Opens fake bridges on ports 40000, 40001, ...; ``refuse`` makes the next one fail."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, int, FakeBridge]] = []
        self.refuse = False

    def __call__(self, host: str, port: int) -> defer.Deferred[Any]:
        if self.refuse:
            return defer.fail(ConnectionRefusedError("connection refused"))
        bridge = FakeBridge(40000 + len(self.opened))
        self.opened.append((host, port, bridge))
        return defer.succeed(bridge)


STATUS = {
    "version": "0.1.0",
    "dns": {"local_address": "172.30.0.2:53"},
    "teleroute": {"port": 4039},
    "routes": ["10.96.0.0/12"],
}


class Api:
    def __init__(self) -> None:
        self.opener = FakeOpener()
        self.bridges = Bridges(self.opener)
        self.treq: Any = StubTreq(
            ControlResource(lambda: {**STATUS, "bridges": self.bridges.describe()}, self.bridges)
        )

    def call(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        response = result_of(self.treq.request(method, BASE + path, data=data))
        assert response.headers.getRawHeaders("content-type") == ["application/json"]
        return response.code, json.loads(result_of(response.content()))


@pytest.fixture
def api() -> Api:
    return Api()


def test_status(api: Api) -> None:
    """GET /status answers the daemon's status as JSON."""
    code, body = api.call("GET", "/status")
    assert code == 200
    assert body["dns"]["local_address"] == "172.30.0.2:53"
    assert body["teleroute"]["port"] == 4039 and body["bridges"] == []


def test_open_list_close_bridge(api: Api) -> None:
    """POST opens a bridge to the agent, GET lists it, DELETE closes it."""
    code, body = api.call("POST", "/bridges", {"agent": "172.19.0.7:8022"})
    assert (code, body["port"], body["agent"]) == (200, 40000, "172.19.0.7:8022")
    assert api.opener.opened[0][:2] == ("172.19.0.7", 8022)
    assert api.call("GET", "/bridges")[1]["bridges"][0]["port"] == 40000
    assert api.call("GET", "/status")[1]["bridges"][0]["agent"] == "172.19.0.7:8022"
    assert api.call("DELETE", "/bridges/40000") == (200, {"port": 40000, "closed": True})
    assert api.opener.opened[0][2].closed
    assert api.call("GET", "/bridges")[1] == {"bridges": []}


def test_delete_unknown_bridge(api: Api) -> None:
    """Closing a port with no bridge is 404; a non-number is 400."""
    assert api.call("DELETE", "/bridges/12345") == (404, {"error": "no bridge on port 12345"})
    assert api.call("DELETE", "/bridges/abc")[0] == 400


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"agent": 8022},
        {"agent": "host"},
        {"agent": "host:0"},
        {"agent": "host:70000"},
        {"agent": "fd00::1:8022"},
        {"agent": "[nothex]:1"},
        {"agent": "a b:1"},
        {"agent": "h:1", "extra": 1},
        ["h:1"],
    ],
)
def test_bad_bridge_requests(api: Api, body: Any) -> None:
    """Malformed agents and bodies are 400 with a message, and open nothing."""
    code, answer = api.call("POST", "/bridges", body)
    assert code == 400 and answer["error"]
    assert api.opener.opened == []


def test_malformed_and_oversized_json(api: Api) -> None:
    """Broken JSON is 400; a body over the limit is 413."""
    assert api.call("POST", "/bridges", raw=b"{nope")[0] == 400
    assert api.call("POST", "/bridges", raw=b" " * (70 * 1024))[0] == 413


def test_agent_unreachable(api: Api) -> None:
    """A bridge that cannot be opened is a 500 saying why."""
    api.opener.refuse = True
    code, body = api.call("POST", "/bridges", {"agent": "10.0.0.9:8022"})
    assert code == 500 and "connection refused" in body["error"]


def test_unknown_path_and_method(api: Api) -> None:
    """Unknown paths are 404 and wrong methods 405, both as JSON."""
    assert api.call("GET", "/nope")[0] == 404
    assert api.call("POST", "/status")[0] == 405
    assert api.call("PUT", "/bridges")[0] == 405
    assert api.call("GET", "/bridges/40000")[0] == 405


def test_status_failure_is_json(api: Api) -> None:
    """An exception while building the status is a JSON 500, not a traceback page."""

    def broken() -> dict[str, Any]:
        raise RuntimeError("status exploded")

    api.treq = StubTreq(ControlResource(broken, api.bridges))
    assert api.call("GET", "/status") == (500, {"error": "status exploded"})


def test_bridges_closed_on_stop(api: Api) -> None:
    """Stopping the daemon closes every bridge."""
    api.call("POST", "/bridges", {"agent": "10.0.0.9:8022"})
    api.call("POST", "/bridges", {"agent": "[fd00::9]:8022"})
    assert api.opener.opened[1][:2] == ("fd00::9", 8022)
    api.bridges.startService()
    result_of(api.bridges.stopService())
    assert all(b.closed for _, _, b in api.opener.opened)
    assert api.bridges.describe() == []


@pytest.mark.parametrize(
    "text,expected",
    [
        ("10.0.0.1:8022", ("10.0.0.1", 8022)),
        ("[fd00::1]:8022", ("fd00::1", 8022)),
        ("echo-agent.default:8022", ("echo-agent.default", 8022)),
    ],
)
def test_parse_agent(text: str, expected: tuple[str, int]) -> None:
    """Agents are IPv4 literals, bracketed IPv6 literals or host names, with a port."""
    assert parse_agent(text) == expected
    with pytest.raises(ControlError):
        parse_agent(text.rsplit(":", 1)[0])


@pytest.mark.e2e
@pytest_twisted.ensureDeferred
async def test_real_sftpproxy_bridge() -> None:
    """With telenet.sftpproxy: POST opens a real listening port, DELETE closes it."""
    from twisted.internet import reactor

    sftpproxy = pytest.importorskip("telenet.sftpproxy")

    def opener(host: str, port: int) -> defer.Deferred[Any]:
        return sftpproxy.open_bridge(reactor, "tcp:0:interface=127.0.0.1", host, port)

    bridges = Bridges(opener)
    opened = await bridges.add(f"127.0.0.1:{free_port()}")
    assert port_open(opened["port"])
    await bridges.remove(opened["port"])
    assert not port_open(opened["port"])


def test_request_in_flight_is_answered_before_shutdown() -> None:
    """
    The control site holds the daemon's shutdown (its drain) until a POST /bridges still
    opening its bridge is answered.
    """
    from twisted.internet import task
    from twisted.internet.testing import StringTransport

    from telenet.core.dockerplugin import PluginSite
    from telenet.network.control import control_site

    opening: defer.Deferred[Any] = defer.Deferred()
    clock = task.Clock()
    site = control_site(lambda: STATUS, Bridges(lambda host, port: opening), reactor=clock)
    assert isinstance(site, PluginSite)
    protocol = site.buildProtocol(None)
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    body = b'{"agent": "10.0.0.1:8022"}'
    protocol.dataReceived(
        b"POST /bridges HTTP/1.1\r\nHost: daemon\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    drained: list[object] = []
    site.drain().addBoth(drained.append)
    assert not drained and transport.value() == b""
    opening.callback(FakeBridge(40000))
    assert transport.value().startswith(b"HTTP/1.1 200")
    assert b'"port": 40000' in transport.value()
    assert not drained  # a moment for the answer to be written out
    clock.advance(0.1)
    assert drained == [None]
