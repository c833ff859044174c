"""The teleroute network driver against a memory daemon: Docker's calls, errors, reconnects."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from typing import Any

import grpc
import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock

from telenet.core.dockerplugin import PluginResource
from telenet.netplugin.driver import NetworkDriver
from telenet.netplugin.link import CALL_TIMEOUT, own_host_pid
from telenet.netplugin.options import join_answer, static_routes
from telenet.netplugin.sweep import JOIN_WITHIN, SETTLE
from telenet.routeplugin import Options, makeService
from telenet.teleroute.client import grpc_target
from telenet.teleroute.interfaces import TelerouteError
from telenet.teleroute.proto import teleroute_pb2, teleroute_pb2_grpc
from telenet.testing import MemoryNetlink, MemoryStateStore
from telenet.testing.teleroute import MemoryPlumbing, MemoryTeleroute

from .helpers import DOCKERD_CAPTURES, dockerd_calls, result_of

NET = "87f14d808098b20935e8854c7d9ae44dd724450a519e659c8689c05c3cc79620"
DAEMON_EP = "003a7ebf0bc7b596dd6b0941a246fc3a4d8bfb02f72f7eddf5b202c2e0d5f48d"
WORK_EP = "30b306bd1f074c9b216677b2665fbbd15b7173c9c2ebd376294f0894ae99c90a"
PID = 4242
#: The daemon container's address on the default bridge (the network's "host" option).
DAEMON_HOST = "172.17.0.2"


def create_network_body(
    generic: Any = None, v4: str = "172.21.0.1/16", v6: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "NetworkID": NET,
        "Options": {
            "com.docker.network.enable_ipv6": v6 is not None,
            "com.docker.network.generic": {"host": DAEMON_HOST, "port": "4039"}
            if generic is None
            else generic,
            "com.docker.network.internal": True,
        },
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Gateway": v4, "Pool": "172.21.0.0/16"}],
        "IPv6Data": [],
    }
    if v6 is not None:
        body["IPv6Data"] = [{"AddressSpace": "LocalDefault", "Gateway": v6, "Pool": "fd00:21::/64"}]
    return body


def endpoint_body(
    endpoint: str,
    address: str = "172.21.0.3/16",
    ipv6: str = "",
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "NetworkID": NET,
        "EndpointID": endpoint,
        "Interface": {"Address": address, "AddressIPv6": ipv6, "MacAddress": ""},
        "Options": options or {},
    }


def ids(endpoint: str) -> dict[str, str]:
    return {"NetworkID": NET, "EndpointID": endpoint}


class Saves:
    """The driver's ``run_blocking`` for saves; ``stuck`` makes the next saves never finish."""

    def __init__(self) -> None:
        self.stuck = False

    def __call__(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        if self.stuck:
            return defer.Deferred()
        return defer.maybeDeferred(f, *args)


class Harness:
    def __init__(
        self,
        store: MemoryStateStore | None = None,
        daemon: MemoryTeleroute | None = None,
        netlink: MemoryNetlink | None = None,
    ) -> None:
        self.clock = task.Clock()
        self.store = store or MemoryStateStore()
        self.daemon = daemon or MemoryTeleroute(routes=["10.123.0.0/16"])
        # The links the plug-in can move are the veth ends the daemon moved to the plug-in's
        # namespace (its Connect pid); the restarted daemon container's namespace (SANDBOX)
        # is visible, holding the daemon's address.
        self.plumbing = MemoryPlumbing(
            lambda: (name for name, pid in self.daemon.netlink.moved.items() if pid == PID)
        )
        self.plumbing.add_namespace(SANDBOX, 4321, DAEMON_HOST)
        #: The plug-in's own network namespace (the host's).
        self.netlink = netlink or MemoryNetlink()
        self.saves = Saves()
        self.driver = NetworkDriver(
            self.daemon.client,
            self.store,
            self.clock,
            self.saves,
            pid=PID,
            plumbing=self.plumbing,
            netlink=self.netlink,
        )
        self.driver.restore()
        self.driver.start()
        self.stub = StubTreq(PluginResource(["NetworkDriver"], self.driver.handlers()))

    def send(self, path: str, body: dict[str, Any] | None = None) -> defer.Deferred[Any]:
        """Start a call; its (code, answer) arrives when the driver is done."""
        d = self.stub.post("http://p" + path, data=json.dumps(body or {}))

        def read(response: Any) -> defer.Deferred[tuple[int, Any]]:
            return response.content().addCallback(lambda c: (response.code, json.loads(c)))

        d.addCallback(read)
        answered: defer.Deferred[Any] = defer.Deferred()
        d.addBoth(answered.callback)
        return answered

    def finish(self, d: defer.Deferred[Any], advance: float = 0.0, step: float = 0.05) -> Any:
        """Let time pass (in steps) until the call ``d`` answered."""
        waited = 0.0
        while True:
            self.stub.flush()
            if d.called or waited >= advance:
                break
            self.clock.advance(step)
            waited += step
        return result_of(d)

    def call(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        return self.finish(self.send(path, body))  # type: ignore[no-any-return]

    def ok(self, path: str, body: dict[str, Any] | None = None) -> Any:
        code, answer = self.call(path, body)
        assert code == 200, answer
        return answer

    def err(self, path: str, body: dict[str, Any] | None = None) -> str:
        code, answer = self.call(path, body)
        assert code >= 400, answer
        return str(answer["Err"])

    def network(self, **kw: Any) -> None:
        assert self.ok("/NetworkDriver.CreateNetwork", create_network_body(**kw)) == {}

    def daemon_joins(
        self, endpoint: str = DAEMON_EP, address: str = "172.21.0.2/16", ipv6: str = ""
    ) -> Any:
        self.ok(
            "/NetworkDriver.CreateEndpoint",
            endpoint_body(endpoint, address, ipv6, {"daemon": "true"}),
        )
        return self.ok("/NetworkDriver.Join", ids(endpoint))

    def workload_joins(
        self, endpoint: str = WORK_EP, address: str = "172.21.0.3/16", ipv6: str = ""
    ) -> Any:
        self.ok("/NetworkDriver.CreateEndpoint", endpoint_body(endpoint, address, ipv6))
        return self.ok("/NetworkDriver.Join", ids(endpoint))


def container_end(h: Harness, endpoint: str) -> str:
    """The container end of the veth pair the daemon made for ``endpoint``."""
    return h.daemon.core.endpoints[endpoint].pair.peer


def own_interfaces(daemon: MemoryTeleroute) -> list[tuple[str, list[str]]]:
    """(endpoint, addresses) of each interface the daemon set up in its own namespace."""
    return [
        (e.id, [str(a) for a in result_of(daemon.netlink.addresses(e.pair.peer))])
        for e in daemon.core.endpoints.values()
        if e.pair.local
    ]


# -- the captured dockerd story


@pytest.mark.parametrize("version", DOCKERD_CAPTURES)
def test_dockerd_network_story_replays(version: str) -> None:
    """Every call dockerd made in the captured story gets an answer Docker accepted."""
    h = Harness()
    calls = dockerd_calls(version)
    assert h.ok(calls["activate"][0]["path"]) == {"Implements": ["NetworkDriver"]}
    created = [
        c["request"] for c in calls["network_calls"] if c["path"] == "/NetworkDriver.CreateEndpoint"
    ]
    daemon_ip = str(ipaddress.ip_interface(created[0]["Interface"]["Address"]).ip)
    assert created[0]["Options"].get("daemon") == "true"
    (network,) = [
        c["request"] for c in calls["network_calls"] if c["path"] == "/NetworkDriver.CreateNetwork"
    ]
    gateway = network["IPv4Data"][0]["Gateway"]
    joins = []
    for call in calls["network_calls"]:
        answer = h.ok(call["path"], call["request"])
        expected = call["answer_docker_accepted"]
        if call["path"] == "/NetworkDriver.Join":
            joins.append(answer)
            assert set(expected) <= set(answer)
            assert answer["InterfaceName"]["DstPrefix"] == "tpd-"
        else:
            assert answer == expected, call["path"]
    daemon_join, workload_join = joins
    assert daemon_join["StaticRoutes"] == []
    assert workload_join["StaticRoutes"] == [
        {"Destination": "10.123.0.0/16", "RouteType": 0, "NextHop": daemon_ip}
    ]
    assert workload_join["Gateway"] == str(ipaddress.ip_interface(gateway).ip)
    assert workload_join["DisableGatewayService"] is False
    assert h.daemon.connects == [(PID, [gateway])]
    # Everything is gone: the daemon's books, our state, the Connect stream.
    assert h.daemon.core.endpoints == {}
    assert h.daemon.open_sessions == []
    assert h.store.load() == {"endpoints": {}, "networks": {}}


def test_capabilities_and_no_ops() -> None:
    """Local scope; EndpointOperInfo has an empty Value; discovery and connectivity are no-ops."""
    h = Harness()
    assert h.ok("/NetworkDriver.GetCapabilities") == {
        "Scope": "local",
        "ConnectivityScope": "local",
    }
    assert h.ok("/NetworkDriver.EndpointOperInfo", ids(WORK_EP)) == {"Value": {}}
    for call in (
        "DiscoverNew",
        "DiscoverDelete",
        "ProgramExternalConnectivity",
        "RevokeExternalConnectivity",
        "AllocateNetwork",
        "FreeNetwork",
    ):
        assert h.ok(f"/NetworkDriver.{call}", {"NetworkID": NET}) == {}
    assert h.daemon.calls == []


# -- CreateNetwork options


@pytest.mark.parametrize(
    "generic, message",
    [
        ("nope", "network options are missing com.docker.network.generic"),
        ({"host": "172.17.0.2", "port": "4039", "color": "blue"}, 'illegal option "color"'),
        (
            {"host": "172.17.0.2", "port": 4039},
            'unable to parse "port": invalid value type float64',
        ),
        ({"host": True, "port": "4039"}, 'unable to parse "host": invalid value type bool'),
        (
            {"host": "daemon.local", "port": "4039"},
            'unable to parse "host": "daemon.local" is not an IPv4 or IPv6 address',
        ),
        (
            {"host": "172.17.0.2", "port": "0"},
            'unable to parse "port": "0" is not a port number (1-65535)',
        ),
        (
            {"host": "172.17.0.2", "port": "65536"},
            'unable to parse "port": "65536" is not a port number (1-65535)',
        ),
        (
            {"host": "172.17.0.2", "port": "x"},
            'unable to parse "port": "x" is not a port number (1-65535)',
        ),
        ({"port": "4039"}, 'option "host" is required'),
        ({"host": "172.17.0.2"}, 'option "port" is required'),
    ],
)
def test_create_network_option_errors(generic: Any, message: str) -> None:
    """Bad ``-o`` options are refused with the Go plug-in's messages, before any daemon call."""
    h = Harness()
    body = create_network_body()
    body["Options"]["com.docker.network.generic"] = generic
    assert h.err("/NetworkDriver.CreateNetwork", body) == message
    assert h.daemon.calls == []
    assert h.driver.networks == {}


def test_create_network_without_options_object() -> None:
    """No Options at all is the same as no generic options."""
    h = Harness()
    body = create_network_body()
    del body["Options"]
    assert h.err("/NetworkDriver.CreateNetwork", body) == (
        "network options are missing com.docker.network.generic"
    )


@pytest.mark.parametrize(
    "v4, v6, message",
    [
        ("172.21.0.1/99", None, "invalid IPv4 gateway address"),
        ("fd00::1/64", None, "invalid IPv4 gateway address"),
        ("172.21.0.1/16", "fd00::zz/64", "invalid IPv6 gateway address"),
    ],
)
def test_create_network_bad_gateway(v4: str, v6: str | None, message: str) -> None:
    """A gateway that is not an address of its family is refused."""
    h = Harness()
    assert h.err("/NetworkDriver.CreateNetwork", create_network_body(v4=v4, v6=v6)).startswith(
        message
    )


def test_malformed_create_network() -> None:
    """A NetworkID that is not a string is a bad request, not a crash."""
    h = Harness()
    code, answer = h.call("/NetworkDriver.CreateNetwork", {"NetworkID": 7})
    assert code == 400 and "NetworkID" in answer["Err"]


def test_create_network_connects_with_pid_and_gateways() -> None:
    """Connect carries our host pid and every gateway of both families, as netip prefixes."""
    h = Harness()
    h.network(v6="fd00:21::1/64")
    assert h.daemon.connects == [(PID, ["172.21.0.1/16", "fd00:21::1/64"])]
    assert [c for c in h.daemon.calls] == [("Connect", "172.17.0.2:4039")]
    assert len(h.daemon.open_sessions) == 1
    assert h.store.load()["networks"] == {
        NET: {"host": "172.17.0.2", "port": 4039, "gateways": ["172.21.0.1/16", "fd00:21::1/64"]}
    }


def test_ipv6_daemon_host() -> None:
    """An IPv6 daemon address is dialled in brackets."""
    h = Harness()
    h.network(generic={"host": "fd00::2", "port": "4039"})
    assert h.daemon.calls == [("Connect", "[fd00::2]:4039")]
    assert grpc_target("172.17.0.2", 1) == "172.17.0.2:1"


def test_create_network_retries_while_unavailable() -> None:
    """Connect is retried 50 ms apart while the daemon is UNAVAILABLE."""
    h = Harness()
    h.daemon.up = False
    d = h.send("/NetworkDriver.CreateNetwork", create_network_body())
    for _ in range(4):
        h.clock.advance(0.05)
    assert not d.called
    h.daemon.up = True
    code, answer = h.finish(d, advance=0.1)
    assert (code, answer) == (200, {})
    assert [c[0] for c in h.daemon.calls].count("Connect") == 6


def test_create_network_gives_up_after_twenty_attempts() -> None:
    """A daemon that stays away fails the network after 20 attempts; nothing is kept."""
    h = Harness()
    h.daemon.up = False
    code, answer = h.finish(
        h.send("/NetworkDriver.CreateNetwork", create_network_body()), advance=5
    )
    assert code == 500
    assert answer["Err"].startswith(
        "unable to connect to the teleroute service at 172.17.0.2:4039: failed to connect"
    )
    assert [c[0] for c in h.daemon.calls].count("Connect") == 20
    assert h.driver.networks == {}
    h.clock.advance(60)
    assert [c[0] for c in h.daemon.calls].count("Connect") == 20


def test_create_network_other_errors_are_permanent() -> None:
    """Only UNAVAILABLE is retried; any other Connect error fails at once."""
    h = Harness()
    h.daemon.errors["Connect"] = TelerouteError(grpc.StatusCode.INVALID_ARGUMENT, "bad gateway")
    assert h.err("/NetworkDriver.CreateNetwork", create_network_body()) == (
        "unable to connect to the teleroute service at 172.17.0.2:4039: bad gateway"
    )
    assert [c[0] for c in h.daemon.calls] == ["Connect"]


# -- endpoints


def test_create_endpoint_sends_addresses_and_daemon_flag() -> None:
    """Only the address part of each CIDR goes to the daemon; daemon=true marks its own."""
    h = Harness()
    h.network(v6="fd00:21::1/64")
    h.ok(
        "/NetworkDriver.CreateEndpoint",
        endpoint_body(DAEMON_EP, "172.21.0.2/16", "fd00:21::2/64", {"daemon": "true"}),
    )
    h.ok("/NetworkDriver.CreateEndpoint", endpoint_body(WORK_EP, "", "fd00:21::3/64"))
    core = h.daemon.core
    assert str(core.daemon_ipv4) == "172.21.0.2" and str(core.daemon_ipv6) == "fd00:21::2"
    assert core.endpoints[WORK_EP].addr_ipv4 is None
    assert str(core.endpoints[WORK_EP].addr_ipv6) == "fd00:21::3"
    assert not core.endpoints[WORK_EP].daemon
    assert set(h.store.load()["endpoints"]) == {DAEMON_EP, WORK_EP}


@pytest.mark.parametrize(
    "body, message",
    [
        ({**endpoint_body(WORK_EP), "NetworkID": "unknown"}, 'network "unknown" not found'),
        (endpoint_body(WORK_EP, "172.21.0.300/16"), 'invalid CIDR "172.21.0.300/16"'),
        (
            endpoint_body(WORK_EP, options={"daemon": "yes"}),
            'invalid value for option "daemon": "yes" is not a boolean',
        ),
        (
            endpoint_body(WORK_EP, ""),
            "unable to create endpoint 30b306bd1f07: neither IPv4 nor IPv6",
        ),
    ],
)
def test_create_endpoint_errors(body: dict[str, Any], message: str) -> None:
    """Unknown networks, bad addresses and the daemon's refusals reach the user."""
    h = Harness()
    h.network()
    assert h.err("/NetworkDriver.CreateEndpoint", body).startswith(message)
    assert WORK_EP not in h.driver.endpoints


def test_create_endpoint_already_known_is_idempotent() -> None:
    """Docker repeating a CreateEndpoint we already made is not an error; a clash is."""
    h = Harness()
    h.network()
    h.ok("/NetworkDriver.CreateEndpoint", endpoint_body(WORK_EP))
    h.ok("/NetworkDriver.CreateEndpoint", endpoint_body(WORK_EP))
    assert "already exists" in h.err(
        "/NetworkDriver.CreateEndpoint", endpoint_body(WORK_EP, "172.21.0.9/16")
    )


def test_join_answers_interface_routes_and_gateways() -> None:
    """Join names the daemon's veth end, ``tpd-``, routes via the daemon and the gateways."""
    h = Harness(daemon=MemoryTeleroute(routes=["10.96.0.0/12", "fd00:96::/108"]))
    h.network(v6="fd00:21::1/64")
    daemon_join = h.daemon_joins(ipv6="fd00:21::2/64")
    assert daemon_join["StaticRoutes"] == []
    answer = h.workload_joins(ipv6="fd00:21::3/64")
    assert answer == {
        "InterfaceName": {"SrcName": container_end(h, WORK_EP), "DstPrefix": "tpd-"},
        "StaticRoutes": [
            {"Destination": "10.96.0.0/12", "RouteType": 0, "NextHop": "172.21.0.2"},
            {"Destination": "fd00:96::/108", "RouteType": 0, "NextHop": "fd00:21::2"},
        ],
        "DisableGatewayService": False,
        "Gateway": "172.21.0.1",
        "GatewayIPv6": "fd00:21::1",
    }


def test_join_daemon_refusal_and_unknown_network() -> None:
    """The daemon's errors (no IPv4 on the network, unknown endpoint) become Err texts."""
    h = Harness()
    h.network()
    h.ok("/NetworkDriver.CreateEndpoint", endpoint_body(WORK_EP))
    assert h.err("/NetworkDriver.Join", ids(WORK_EP)) == (
        "unable to join endpoint 30b306bd1f07: IPv4 is not enabled for the teleroute network"
    )
    assert h.err("/NetworkDriver.Join", ids("nope")) == (
        "unable to join endpoint nope: endpoint nope not found"
    )
    assert h.err("/NetworkDriver.Join", {**ids(WORK_EP), "NetworkID": "x"}) == (
        'network "x" not found'
    )


def test_daemon_calls_time_out_after_three_seconds() -> None:
    """A daemon that does not answer fails the call after 3 s, not never."""
    h = Harness()
    h.network()
    h.daemon_joins()
    h.ok("/NetworkDriver.CreateEndpoint", endpoint_body(WORK_EP))
    h.daemon.hang.add("Join")
    d = h.send("/NetworkDriver.Join", ids(WORK_EP))
    h.clock.advance(CALL_TIMEOUT - 0.1)
    h.stub.flush()
    assert not d.called
    code, answer = h.finish(d, advance=0.2)
    assert code == 500
    assert answer["Err"] == (
        "unable to join endpoint 30b306bd1f07: 172.17.0.2:4039 did not answer join within 3s"
    )


def test_leave_and_delete_endpoint_tolerate_a_gone_daemon() -> None:
    """With the daemon gone (UNAVAILABLE, CANCELLED), containers can still leave."""
    h = Harness()
    h.network()
    h.daemon_joins()
    h.workload_joins()
    h.daemon.stop()
    assert h.ok("/NetworkDriver.Leave", ids(WORK_EP)) == {}
    assert h.ok("/NetworkDriver.DeleteEndpoint", ids(WORK_EP)) == {}
    assert WORK_EP not in h.driver.endpoints
    assert WORK_EP not in h.store.load()["endpoints"]
    h.daemon.start()
    h.daemon.errors["Leave"] = TelerouteError(grpc.StatusCode.CANCELLED, "context canceled")
    assert h.ok("/NetworkDriver.Leave", ids(DAEMON_EP)) == {}


def test_leave_tolerates_a_daemon_that_forgot_the_endpoint() -> None:
    """A restarted daemon says NOT_FOUND for old endpoints; the container leaves anyway."""
    h = Harness()
    h.network()
    h.daemon_joins()
    h.workload_joins()
    h.daemon.restart()
    assert h.ok("/NetworkDriver.Leave", ids(WORK_EP)) == {}
    assert h.ok("/NetworkDriver.DeleteEndpoint", ids(WORK_EP)) == {}


def test_leave_reports_other_daemon_errors() -> None:
    """
    Errors other than a gone daemon are reported; a failed DeleteEndpoint still forgets the
    endpoint, since Docker deletes it whatever the driver answers (it only logs the error).
    """
    h = Harness()
    h.network()
    h.ok("/NetworkDriver.CreateEndpoint", endpoint_body(WORK_EP))
    h.daemon.errors["RemoveEndpoint"] = TelerouteError(grpc.StatusCode.INTERNAL, "netlink died")
    assert h.err("/NetworkDriver.DeleteEndpoint", ids(WORK_EP)) == (
        "unable to DeleteEndpoint endpoint 30b306bd1f07: netlink died"
    )
    assert WORK_EP not in h.driver.endpoints
    assert WORK_EP not in h.store.load()["endpoints"]


def test_teardown_of_unknown_network_succeeds() -> None:
    """Leave, DeleteEndpoint and DeleteNetwork of things we never knew are no-ops."""
    h = Harness()
    assert h.ok("/NetworkDriver.Leave", ids(WORK_EP)) == {}
    assert h.ok("/NetworkDriver.DeleteEndpoint", ids(WORK_EP)) == {}
    assert h.ok("/NetworkDriver.DeleteNetwork", {"NetworkID": NET}) == {}
    assert h.daemon.calls == []


def test_delete_network_ends_the_stream_and_forgets() -> None:
    """DeleteNetwork closes the Connect stream and drops the network's endpoints."""
    h = Harness()
    h.network()
    h.daemon_joins()
    assert h.ok("/NetworkDriver.DeleteNetwork", {"NetworkID": NET}) == {}
    assert h.daemon.open_sessions == []
    assert h.driver.networks == {} and h.driver.endpoints == {}
    h.clock.advance(60)
    assert [c[0] for c in h.daemon.calls].count("Connect") == 1


# -- static routes (as the Go plug-in's TestStaticRoutesFromResponse_*)


def _prefix(cidr: str) -> bytes:
    n = ipaddress.ip_network(cidr)
    return n.network_address.packed + bytes([n.prefixlen])


def _addr(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def test_static_routes_dual_stack() -> None:
    """Each family's routes go via that family's next hop."""
    response = teleroute_pb2.JoinResponse(
        routes=[_prefix("10.0.0.0/8"), _prefix("fd00::/64")],
        via_ip_v4=_addr("172.21.0.2"),
        via_ip_v6=_addr("fd00:21::2"),
        via=_addr("fd00:21::2"),
    )
    assert static_routes(response) == [
        {"Destination": "10.0.0.0/8", "RouteType": 0, "NextHop": "172.21.0.2"},
        {"Destination": "fd00::/64", "RouteType": 0, "NextHop": "fd00:21::2"},
    ]


def test_static_routes_missing_family_via() -> None:
    """A route of a family without a next hop (and no legacy via) is a connected route."""
    response = teleroute_pb2.JoinResponse(
        routes=[_prefix("10.0.0.0/8"), _prefix("fd00::/64")], via_ip_v4=_addr("172.21.0.2")
    )
    assert static_routes(response) == [
        {"Destination": "10.0.0.0/8", "RouteType": 0, "NextHop": "172.21.0.2"},
        {"Destination": "fd00::/64", "RouteType": 1, "NextHop": ""},
    ]


def test_static_routes_legacy_via() -> None:
    """An old daemon sends only ``via``: every route uses it."""
    response = teleroute_pb2.JoinResponse(
        routes=[_prefix("10.0.0.0/8"), _prefix("10.96.0.0/12")], via=_addr("172.21.0.2")
    )
    assert [r["NextHop"] for r in static_routes(response)] == ["172.21.0.2", "172.21.0.2"]
    assert {r["RouteType"] for r in static_routes(response)} == {0}


def test_static_routes_no_via_at_all() -> None:
    """With no next hop at all every route is connected."""
    response = teleroute_pb2.JoinResponse(routes=[_prefix("10.0.0.0/8")])
    assert static_routes(response) == [{"Destination": "10.0.0.0/8", "RouteType": 1, "NextHop": ""}]


def test_malformed_join_answer() -> None:
    """Bad bytes from the daemon are an error Docker can show, not a crash."""
    from telenet.core.dockerplugin import PluginError

    with pytest.raises(PluginError, match="malformed"):
        join_answer(teleroute_pb2.JoinResponse(routes=[b"\x0a\x00"]))
    with pytest.raises(PluginError, match="malformed"):
        join_answer(teleroute_pb2.JoinResponse(gw_ip_v4=b"\x0a\x00\x00\x01"))


# -- reconnecting


def test_reconnects_with_backoff_after_the_stream_ends() -> None:
    """When the daemon leaves, reconnection is tried with growing delays until it is back."""
    h = Harness()
    h.network()
    h.daemon_joins()
    h.clock.advance(SETTLE)  # the look for stale endpoints after the create: nothing to do
    (network,) = h.driver.networks.values()
    assert network.link is not None
    linked_at, lost_at = network.link.connected_at, h.clock.seconds()
    assert linked_at is not None and network.link.lost_at is None
    h.daemon.stop()
    assert network.link.lost_at == lost_at  # the daemon's last contact (health)
    gaps = []
    for _ in range(8):
        (retry,) = h.clock.getDelayedCalls()
        gaps.append(round(retry.getTime() - h.clock.seconds(), 3))
        connects = len(h.daemon.calls)
        h.clock.advance(gaps[-1])
        assert len(h.daemon.calls) == connects + 1
    assert gaps == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    h.daemon.start()
    h.clock.advance(2.0)
    assert len(h.daemon.open_sessions) == 1
    assert h.daemon.connects[-1] == (PID, ["172.21.0.1/16"])
    assert network.link.connected_at == h.clock.seconds() and network.link.connections == 2


def test_new_joins_work_once_the_daemon_is_back() -> None:
    """A container joining after a daemon restart gets routes; no clock tick is needed."""
    h = Harness()
    h.network()
    h.daemon_joins()
    h.daemon.restart()
    # The restarted daemon container joins again, then a new workload.
    answer = h.daemon_joins(endpoint="d2" * 32, address="172.21.0.4/16")
    answer = h.workload_joins(endpoint="w2" * 32, address="172.21.0.5/16")
    assert answer["StaticRoutes"] == [
        {"Destination": "10.123.0.0/16", "RouteType": 0, "NextHop": "172.21.0.4"}
    ]
    assert h.daemon.connects[-1] == (PID, ["172.21.0.1/16"])
    assert len(h.daemon.open_sessions) == 1


def test_join_waits_for_a_daemon_that_is_starting() -> None:
    """While the daemon is UNAVAILABLE, a new endpoint keeps trying for the call timeout."""
    h = Harness()
    h.network()
    h.daemon_joins()
    h.daemon.stop()
    d = h.send("/NetworkDriver.CreateEndpoint", endpoint_body(WORK_EP))
    h.clock.advance(1.0)
    h.stub.flush()
    assert not d.called
    h.daemon.start()
    code, answer = h.finish(d, advance=0.2)
    assert (code, answer) == (200, {})


def test_join_fails_when_the_daemon_stays_away() -> None:
    """A new endpoint fails with a clear message if the daemon does not come back in time."""
    h = Harness()
    h.network()
    h.daemon.stop()
    code, answer = h.finish(
        h.send("/NetworkDriver.CreateEndpoint", endpoint_body(WORK_EP)), advance=4
    )
    assert code == 500
    assert answer["Err"].startswith("unable to create endpoint 30b306bd1f07: failed to connect")


# -- the daemon container restarted: Docker joins its endpoint before the daemon runs

SANDBOX = "/var/run/docker/netns/0123456789ab"
D2 = "d2" * 32


def daemon_container_restarts(h: Harness) -> None:
    """What ``docker restart`` of the daemon container does, up to the daemon process start."""
    h.daemon.stop()
    assert h.ok("/NetworkDriver.Leave", ids(DAEMON_EP)) == {}
    assert h.ok("/NetworkDriver.DeleteEndpoint", ids(DAEMON_EP)) == {}
    h.ok(
        "/NetworkDriver.CreateEndpoint",
        endpoint_body(D2, "172.21.0.4/16", options={"daemon": "true"}),
    )
    assert h.ok("/NetworkDriver.Join", {**ids(D2), "SandboxKey": SANDBOX}) == {
        "StaticRoutes": [],
        "DisableGatewayService": False,
    }


def test_daemon_endpoint_joins_while_the_daemon_is_away() -> None:
    """The restarted daemon's endpoint is accepted without an interface, then set up."""
    h = Harness()
    h.network()
    h.daemon_joins()
    h.workload_joins()
    daemon_container_restarts(h)
    assert h.driver.endpoints[D2].pending
    assert h.store.load()["endpoints"][D2]["sandbox"] == SANDBOX
    h.daemon.start()
    h.clock.advance(2)
    assert str(h.daemon.core.daemon_ipv4) == "172.21.0.4"
    ((veth, sandbox, host, addresses),) = h.plumbing.adopted
    assert (veth, sandbox, host, addresses) == (
        container_end(h, D2),
        SANDBOX,
        "172.17.0.2",
        ["172.21.0.4/16"],
    )
    assert not h.driver.endpoints[D2].pending
    answer = h.workload_joins(endpoint="w2" * 32, address="172.21.0.5/16")
    assert answer["StaticRoutes"][0]["NextHop"] == "172.21.0.4"


def test_telenet_daemon_sets_up_its_own_interface() -> None:
    """
    A telenet daemon back after a restart sets its interface up itself (in_daemon_netns):
    the plug-in needs no namespace plumbing (a managed plug-in lacks CAP_SYS_ADMIN for it).
    """
    h = Harness(daemon=MemoryTeleroute(routes=["10.123.0.0/16"], own_interface=True))
    h.network()
    h.daemon_joins()
    daemon_container_restarts(h)
    h.daemon.start()
    h.clock.advance(2)
    assert own_interfaces(h.daemon) == [(D2, ["172.21.0.4/16"])]
    assert h.plumbing.adopted == []
    assert not h.driver.endpoints[D2].pending
    answer = h.workload_joins(endpoint="w2" * 32, address="172.21.0.5/16")
    assert answer["StaticRoutes"][0]["NextHop"] == "172.21.0.4"


def test_in_daemon_netns_only_for_the_pending_daemon_endpoint() -> None:
    """Docker's own joins (the daemon back in time, workloads) never ask for in_daemon_netns."""
    h = Harness(daemon=MemoryTeleroute(routes=["10.123.0.0/16"], own_interface=True))
    h.network()
    h.daemon_joins()
    h.workload_joins()
    h.daemon.stop()
    h.ok(
        "/NetworkDriver.CreateEndpoint",
        endpoint_body(D2, "172.21.0.4/16", options={"daemon": "true"}),
    )
    h.daemon.start()
    h.clock.advance(2)
    answer = h.ok("/NetworkDriver.Join", {**ids(D2), "SandboxKey": SANDBOX})
    # A veth for a container (tp-…), not an interface of the daemon's own (tpd-N).
    assert answer["InterfaceName"]["SrcName"] == container_end(h, D2)
    assert container_end(h, D2).startswith("tp-")
    assert own_interfaces(h.daemon) == [] and h.plumbing.adopted == []


def test_workload_joining_first_waits_for_the_daemon_endpoint() -> None:
    """A workload whose call brings the connection back waits until the daemon has its address."""
    h = Harness()
    h.network()
    h.daemon_joins()
    daemon_container_restarts(h)
    h.daemon.start()
    answer = h.workload_joins(endpoint="w2" * 32, address="172.21.0.5/16")
    assert answer["StaticRoutes"][0]["NextHop"] == "172.21.0.4"
    assert len(h.plumbing.adopted) == 1


def test_daemon_endpoint_back_before_join_is_normal() -> None:
    """If the daemon is back by the time Docker joins its endpoint, Docker moves the interface."""
    h = Harness()
    h.network()
    h.daemon_joins()
    h.daemon.stop()
    h.ok(
        "/NetworkDriver.CreateEndpoint",
        endpoint_body(D2, "172.21.0.4/16", options={"daemon": "true"}),
    )
    h.daemon.start()
    h.clock.advance(2)
    answer = h.ok("/NetworkDriver.Join", {**ids(D2), "SandboxKey": SANDBOX})
    assert answer["InterfaceName"]["SrcName"] == container_end(h, D2)
    assert h.plumbing.adopted == []
    assert not h.driver.endpoints[D2].pending


def test_daemon_endpoint_setup_failure_is_retried_on_reconnect() -> None:
    """If the interface cannot be set up, the endpoint stays pending for the next connection."""
    h = Harness()
    h.network()
    h.daemon_joins()
    daemon_container_restarts(h)
    h.plumbing.fail = "no network namespace holds the daemon's address"
    h.daemon.start()
    h.clock.advance(2)
    assert h.driver.endpoints[D2].pending and h.plumbing.adopted == []
    h.plumbing.fail = None
    h.daemon.restart()
    h.clock.advance(2)
    assert not h.driver.endpoints[D2].pending and len(h.plumbing.adopted) == 1


def test_pending_daemon_endpoint_survives_a_plugin_restart() -> None:
    """A pending daemon endpoint is saved, and set up by the next plug-in process."""
    store = MemoryStateStore()
    first = Harness(store=store)
    first.network()
    first.daemon_joins()
    daemon_container_restarts(first)
    daemon = first.daemon
    second = Harness(store=store, daemon=daemon)
    daemon.start()
    second.clock.advance(2)
    assert not second.driver.endpoints[D2].pending
    assert [a[1] for a in second.plumbing.adopted] == [SANDBOX]


# -- persistence


def test_restart_restores_networks_and_endpoints() -> None:
    """A plug-in started on saved state reconnects; old containers leave, new ones join."""
    store = MemoryStateStore()
    first = Harness(store=store)
    first.network()
    first.daemon_joins()
    first.workload_joins()
    daemon = first.daemon
    # kill -9: no DeleteNetwork, no clean close; a new process starts on the saved state.
    second = Harness(store=store, daemon=daemon)
    assert set(second.driver.networks) == {NET}
    assert set(second.driver.endpoints) == {DAEMON_EP, WORK_EP}
    assert daemon.connects[-1] == (PID, ["172.21.0.1/16"])
    assert second.ok("/NetworkDriver.Leave", ids(WORK_EP)) == {}
    assert second.ok("/NetworkDriver.DeleteEndpoint", ids(WORK_EP)) == {}
    assert WORK_EP not in daemon.core.endpoints
    answer = second.workload_joins(endpoint="w3" * 32, address="172.21.0.6/16")
    assert answer["StaticRoutes"][0]["NextHop"] == "172.21.0.2"


def test_restore_skips_unreadable_entries() -> None:
    """Broken saved entries are skipped, the rest restored; endpoints of lost networks go."""
    store = MemoryStateStore(
        {
            "networks": {
                NET: {"host": "172.17.0.2", "port": 4039, "gateways": []},
                "bad": {"host": "not-an-ip", "port": 1},
            },
            "endpoints": {
                WORK_EP: {"network": NET, "ipv4": "172.21.0.3"},
                "orphan": {"network": "bad"},
                "broken": {},
            },
        }
    )
    h = Harness(store=store)
    assert set(h.driver.networks) == {NET}
    assert set(h.driver.endpoints) == {WORK_EP}


def test_restored_network_reconnects_in_the_background() -> None:
    """A restored network whose daemon is away keeps trying, and connects when it is back."""
    store = MemoryStateStore(
        {"networks": {NET: {"host": "172.17.0.2", "port": 4039, "gateways": ["172.21.0.1/16"]}}}
    )
    daemon = MemoryTeleroute()
    daemon.up = False
    h = Harness(store=store, daemon=daemon)
    h.clock.advance(1)
    assert daemon.open_sessions == []
    daemon.up = True
    h.clock.advance(2)
    assert len(daemon.open_sessions) == 1
    assert daemon.connects == [(PID, ["172.21.0.1/16"])]


def test_stop_closes_streams_but_keeps_state() -> None:
    """Stopping the plug-in ends its streams; the state stays for the next start."""
    h = Harness()
    h.network()
    result_of(h.driver.stop())
    assert h.daemon.open_sessions == []
    assert NET in h.store.load()["networks"]
    h.clock.advance(60)
    assert [c[0] for c in h.daemon.calls].count("Connect") == 1


# -- process plumbing


# -- a plug-in killed in the middle of a call converges on the endpoints Docker has


def _killed_and_restarted(h: Harness) -> Harness:
    """The plug-in dies (nothing in flight is finished) and starts again on its saved state."""
    return Harness(store=h.store, daemon=h.daemon, netlink=h.netlink)


def test_killed_in_delete_endpoint_before_saving_converges() -> None:
    """
    The leak the kill -9 fault test found: Docker sent DeleteEndpoint and the plug-in died
    before its save finished. For Docker the endpoint is gone (it ignores the driver's error),
    so the restarted plug-in must forget it by itself: the endpoint's interface, which Docker
    moved back into our namespace at Leave, stays there.
    """
    h = Harness()
    h.network()
    h.daemon_joins()
    interface = h.workload_joins() and h.driver.endpoints[WORK_EP].interface
    assert interface == container_end(h, WORK_EP)  # Docker moved it into the container
    assert h.ok("/NetworkDriver.Leave", ids(WORK_EP)) == {}
    h.netlink.arrive(interface)  # Docker hands it back as the container leaves
    h.saves.stuck = True
    h.send("/NetworkDriver.DeleteEndpoint", ids(WORK_EP))  # killed before the save finished
    assert WORK_EP in h.store.load()["endpoints"]

    again = _killed_and_restarted(h)
    assert WORK_EP in again.driver.endpoints
    again.clock.advance(SETTLE)  # the first look: its interface is back in our namespace
    assert WORK_EP in again.driver.endpoints
    again.clock.advance(SETTLE)  # still there a second later: it left its container
    assert WORK_EP not in again.driver.endpoints
    assert set(again.store.load()["endpoints"]) == {DAEMON_EP}
    assert WORK_EP not in h.daemon.core.endpoints  # the daemon was told
    assert again.clock.getDelayedCalls() == []  # settled: no more looking


def test_killed_after_saving_a_create_it_never_answered_converges() -> None:
    """
    The other leak: CreateEndpoint saved, then the plug-in died before Docker had the
    answer. For Docker the create failed, and it never joins nor deletes that endpoint; the
    restarted plug-in forgets it once Docker's Join could no longer come.
    """
    h = Harness()
    h.network()
    h.daemon_joins()
    h.send("/NetworkDriver.CreateEndpoint", endpoint_body(WORK_EP))
    assert WORK_EP in h.store.load()["endpoints"]  # saved; the answer never reached Docker

    again = _killed_and_restarted(h)
    again.clock.pump([1.0] * int(JOIN_WITHIN - 1))
    assert WORK_EP in again.driver.endpoints  # Docker's retried Join may still come
    again.clock.pump([1.0] * 2)
    assert set(again.store.load()["endpoints"]) == {DAEMON_EP}
    assert again.clock.getDelayedCalls() == []


def test_restarted_plugin_keeps_what_docker_joins_or_holds() -> None:
    """
    No false alarm: an endpoint whose create was answered just before the kill is joined by
    Docker's retried Join; one whose interface is in our namespace only while Docker moves it
    into its container (Join answered just before the kill) is kept; a running container's.
    """
    h = Harness()
    h.network()
    h.daemon_joins()
    steady = "5" * 64
    h.workload_joins(steady, "172.21.0.9/16")
    moving = "6" * 64
    h.workload_joins(moving, "172.21.0.8/16")
    h.netlink.arrive(h.driver.endpoints[moving].interface)  # not yet in its container
    assert h.ok("/NetworkDriver.CreateEndpoint", endpoint_body(WORK_EP)) == {}

    again = _killed_and_restarted(h)
    again.clock.advance(SETTLE)
    result_of(again.netlink.move_to_netns(h.driver.endpoints[moving].interface, 77))
    assert again.ok("/NetworkDriver.Join", ids(WORK_EP))["InterfaceName"]["DstPrefix"] == "tpd-"
    again.clock.pump([1.0] * int(JOIN_WITHIN + 5))
    assert set(again.store.load()["endpoints"]) == {DAEMON_EP, steady, moving, WORK_EP}
    assert again.clock.getDelayedCalls() == []


def test_an_address_docker_gives_again_retires_the_stale_endpoint() -> None:
    """
    Docker gives an address to one live endpoint of a network only: a new endpoint with the
    address of a kept one means the kept one is gone, at once. The same holds for a veth
    end the daemon hands to a new endpoint.
    """
    h = Harness()
    h.network()
    h.daemon_joins()
    h.workload_joins(WORK_EP, "172.21.0.3/16")
    other = "7" * 64
    h.ok("/NetworkDriver.CreateEndpoint", endpoint_body(other, "172.21.0.3/16"))
    assert set(h.store.load()["endpoints"]) == {DAEMON_EP, other}

    # A join handed the same veth end as a kept endpoint's (a daemon reusing the pair).
    reused = container_end(h, other)
    h.driver.endpoints[DAEMON_EP].interface = reused
    assert h.ok("/NetworkDriver.Join", ids(other)) and (
        h.driver.endpoints[other].interface == reused
    )
    assert set(h.store.load()["endpoints"]) == {other}


def test_a_call_in_flight_is_never_swept() -> None:
    """An endpoint whose Leave or DeleteEndpoint is in flight is left to that call."""
    h = Harness()
    h.network()
    h.daemon_joins()
    h.workload_joins()
    h.netlink.arrive(h.driver.endpoints[WORK_EP].interface)
    h.daemon.hang.add("Leave")
    leaving = h.send("/NetworkDriver.Leave", ids(WORK_EP))
    h.clock.advance(SETTLE)
    h.clock.advance(SETTLE)
    assert WORK_EP in h.driver.endpoints
    code, answer = h.finish(leaving, advance=CALL_TIMEOUT + 1)
    assert code == 500 and "did not answer leave" in answer["Err"]
    # Once no call is in flight, the look goes on: the interface stayed in our namespace.
    h.clock.pump([SETTLE] * 3)
    assert WORK_EP not in h.driver.endpoints


def test_host_pid_from_nspid(tmp_path: Any) -> None:
    """The first NSpid entry is our pid as the host (the procfs's namespace) sees it."""
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "status").write_text("Name:\ttwistd\nNSpid:\t31337\t7\n")
    assert own_host_pid(str(tmp_path)) == 31337
    assert own_host_pid(str(tmp_path / "missing")) == os.getpid()
    assert own_host_pid() == os.getpid()  # a test run is not in a nested pid namespace


def test_make_service_listens_where_told(tmp_path: Any) -> None:
    """The tap listens on --listen and keeps its state in --state-dir."""
    options = Options()
    sock = tmp_path / "run" / "tntest-route.sock"
    options.parseOptions(
        ["--listen", f"unix:{sock}:lockfile=1", "--state-dir", str(tmp_path / "state")]
    )
    reactor = MemoryReactorClock()
    daemon = MemoryTeleroute()
    top = makeService(options, reactor=reactor, client_factory=daemon.client)
    top.startService()
    try:
        assert [u[0] for u in reactor.unixServers] == [str(sock)]
        assert (tmp_path / "state").is_dir()
    finally:
        top.stopService()


def test_importing_does_not_pick_a_reactor() -> None:
    """The module imports without installing a reactor, so the tap can choose asyncio."""
    code = (
        "import sys, telenet.routeplugin, telenet.teleroute.client; "
        "assert 'twisted.internet.reactor' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tap_installs_the_asyncio_reactor(tmp_path: Any) -> None:
    """makeService without --reactor installs asyncio (grpc.aio needs its loop)."""
    code = (
        "import sys\n"
        "from telenet import routeplugin\n"
        "o = routeplugin.Options()\n"
        f"o.parseOptions(['--listen', 'unix:{tmp_path}/s.sock', '--state-dir', '{tmp_path}'])\n"
        "routeplugin.makeService(o)\n"
        "from twisted.internet import reactor\n"
        "assert hasattr(reactor, '_asyncioEventloop'), reactor\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the real gRPC client against an in-process grpc.aio server


class _Servicer(teleroute_pb2_grpc.TelerouteServicer):
    """
    A small teleroute service: one endpoint ``e1`` exists; ``stop`` ends the stream. It knows
    only the original RPCs (WatchRoutes answers UNIMPLEMENTED, as Go's daemon does).
    """

    def __init__(self) -> None:
        import asyncio

        self.requests: list[Any] = []
        self.stop = asyncio.Event()

    async def Connect(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        yield teleroute_pb2.Info(info={"name": "test-daemon", "version": "v9"})
        await self.stop.wait()

    async def CreateEndpoint(self, request: Any, context: Any) -> Any:
        from google.protobuf import empty_pb2

        self.requests.append(request)
        if request.id != "e1":
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"endpoint {request.id} exists")
        return empty_pb2.Empty()

    async def RemoveEndpoint(self, request: Any, context: Any) -> Any:
        from google.protobuf import empty_pb2

        return empty_pb2.Empty()

    async def Join(self, request: Any, context: Any) -> Any:
        import asyncio

        if request.id == "slow":
            await asyncio.sleep(5)
        return teleroute_pb2.JoinResponse(interface_src_name="tp-x", interface_dst_prefix="tpd-")

    async def Leave(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"endpoint {request.id} not found")


@pytest.fixture
def grpc_loop_ready() -> None:
    from twisted.internet import reactor

    if not hasattr(reactor, "_asyncioEventloop"):
        pytest.skip("needs the asyncio reactor (pytest --reactor=asyncio)")


async def _with_server(servicer: _Servicer) -> tuple[Any, int]:
    """An asyncio coroutine (run it with ``as_deferred``) starting a server on loopback."""
    from telenet.teleroute.proto import teleroute_pb2_grpc

    server = grpc.aio.server()
    teleroute_pb2_grpc.add_TelerouteServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.mark.usefixtures("grpc_loop_ready")
@pytest_twisted.ensureDeferred
async def test_grpc_client_round_trip() -> None:
    """The gRPC client opens the stream, makes calls, maps errors and sees the stream end."""
    from telenet.core.aio import as_deferred
    from telenet.teleroute.client import GrpcTelerouteClient

    servicer = _Servicer()
    server, port = await as_deferred(_with_server(servicer))
    client = GrpcTelerouteClient("127.0.0.1", port)
    try:
        session = await client.connect(teleroute_pb2.ConnectRequest(pid=7), 3)
        assert session.info == {"name": "test-daemon", "version": "v9"}
        assert servicer.requests[0].pid == 7
        await client.create_endpoint(teleroute_pb2.CreateEndpointRequest(id="e1"), 3)
        with pytest.raises(TelerouteError) as e:
            await client.create_endpoint(teleroute_pb2.CreateEndpointRequest(id="e2"), 3)
        assert (e.value.code, e.value.details) == (
            grpc.StatusCode.ALREADY_EXISTS,
            "endpoint e2 exists",
        )
        joined = await client.join(teleroute_pb2.EndpointIdentifier(id="e1"), 3)
        assert joined.interface_src_name == "tp-x"
        with pytest.raises(TelerouteError) as e:
            await client.join(teleroute_pb2.EndpointIdentifier(id="slow"), 0.2)
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(TelerouteError) as e:
            await client.leave(teleroute_pb2.EndpointIdentifier(id="e9"), 3)
        assert e.value.code == grpc.StatusCode.NOT_FOUND
        assert await client.remove_endpoint(teleroute_pb2.EndpointIdentifier(id="e1"), 3) is None
        assert session.is_open
        servicer.stop.set()
        reason = await session.ended
        assert "ended" in reason
    finally:
        await client.close()
        await as_deferred(server.stop(None))


@pytest.mark.usefixtures("grpc_loop_ready")
@pytest_twisted.ensureDeferred
async def test_grpc_client_sees_a_daemon_going_away() -> None:
    """A server that stops ends the stream; nothing listening is UNAVAILABLE."""
    from telenet.core.aio import as_deferred
    from telenet.teleroute.client import GrpcTelerouteClient

    servicer = _Servicer()
    server, port = await as_deferred(_with_server(servicer))
    client = GrpcTelerouteClient("127.0.0.1", port)
    try:
        session = await client.connect(teleroute_pb2.ConnectRequest(pid=7), 3)
        await as_deferred(server.stop(None))
        assert await session.ended
        with pytest.raises(TelerouteError) as e:
            await client.connect(teleroute_pb2.ConnectRequest(pid=7), 3)
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        await client.close()


# -- finding the daemon container's namespace (managed plug-in: /proc only)

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 127.0.0.0/8 2 0 2
           |-- 127.0.0.1
              /32 host LOCAL
     +-- 172.17.0.0/16 2 0 2
              |-- 172.17.0.0
                 /16 link UNICAST
              |-- 172.17.0.2
                 /32 host LOCAL
"""


def _fake_proc(tmp_path: Any) -> Any:
    """A /proc with ourselves, a process in our netns and one in the daemon's."""
    proc = tmp_path / "proc"
    for pid, netns, trie in (
        ("self", "net:[1]", ""),
        ("10", "net:[1]", ""),
        ("20", "net:[2]", FIB_TRIE),
    ):
        (proc / pid / "ns").mkdir(parents=True)
        (proc / pid / "net").mkdir()
        os.symlink(netns, proc / pid / "ns" / "net")
        (proc / pid / "net" / "fib_trie").write_text(trie)
        (proc / pid / "net" / "if_inet6").write_text(
            "fd000000000000000000000000000002 05 40 00 80     eth0\n" if pid == "20" else ""
        )
    return proc


def test_local_addresses_and_finding_the_daemon_namespace(tmp_path: Any) -> None:
    """The namespace holding the daemon's address is found through /proc, never our own."""
    from telenet.netplugin.plumbing import find_pid_holding, find_pid_in_sandbox, local_addresses

    proc = _fake_proc(tmp_path)
    assert local_addresses(str(proc / "20" / "net")) == {"127.0.0.1", "172.17.0.2", "fd00::2"}
    assert find_pid_holding("172.17.0.2", str(proc)) == 20
    assert find_pid_holding("fd00::2", str(proc)) == 20
    assert find_pid_holding("172.17.0.9", str(proc)) is None
    sandbox = tmp_path / "netns-0123"
    sandbox.write_text("")
    (proc / "30" / "ns").mkdir(parents=True)
    os.symlink(sandbox, proc / "30" / "ns" / "net")
    assert find_pid_in_sandbox(str(sandbox), str(proc)) == 30
    assert find_pid_in_sandbox(str(tmp_path / "gone"), str(proc)) is None


def test_plumbing_moves_renames_addresses_and_raises(tmp_path: Any) -> None:
    """The link goes in by pid, then gets the next free tpd-N, its addresses, and up."""
    from telenet.netplugin.plumbing import NetnsPlumbing

    proc = _fake_proc(tmp_path)
    (proc / "20" / "net" / "dev").write_text(
        "Inter-|   Receive\n face |bytes\n    lo: 0 0\n  eth0: 0 0\n tpd-0: 0 0\n"
    )
    commands: list[list[str]] = []

    def run(argv: list[str]) -> defer.Deferred[tuple[bytes, bytes, int]]:
        commands.append([os.path.basename(argv[0]), *argv[1:]])
        return defer.succeed((b"", b"", 0))

    plumbing = NetnsPlumbing(run, proc=str(proc))
    name = result_of(plumbing.adopt("tp-abc", "", "172.17.0.2", ["172.21.0.4/16"]))
    inside = ["nsenter", "--target", "20", "--net", "--"]
    assert name == "tpd-1"
    assert commands == [
        ["ip", "link", "set", "dev", "tp-abc", "netns", "20"],
        [*inside, "ip", "link", "set", "dev", "tp-abc", "name", "tpd-1"],
        [*inside, "ip", "addr", "add", "172.21.0.4/16", "dev", "tpd-1"],
        [*inside, "ip", "link", "set", "dev", "tpd-1", "up"],
    ]


def test_plumbing_errors(tmp_path: Any) -> None:
    """No namespace with the daemon's address, or a failing command: a clear PlumbingError."""
    from telenet.netplugin.plumbing import NetnsPlumbing, PlumbingError

    proc = _fake_proc(tmp_path)
    (proc / "20" / "net" / "dev").write_text("  eth0: 0 0\n")

    def refuse(argv: list[str]) -> defer.Deferred[tuple[bytes, bytes, int]]:
        return defer.succeed((b"", b"nsenter: Operation not permitted\n", 1))

    plumbing = NetnsPlumbing(refuse, proc=str(proc))
    with pytest.raises(PlumbingError, match="no network namespace holds"):
        result_of(plumbing.adopt("tp-x", "/nonexistent/netns", "172.17.0.9", []))
    with pytest.raises(PlumbingError, match="Operation not permitted"):
        result_of(plumbing.adopt("tp-x", "", "172.17.0.2", []))
