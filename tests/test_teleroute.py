"""
The daemon's teleroute service: logic against MemoryNetlink, wire bytes built by hand from the
reference's field numbers, and the real grpc.aio server on a unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import pytest_twisted
from google.protobuf import empty_pb2

from telenet.core.aio import as_deferred, as_future
from telenet.core.netip import decode_addr, decode_network, encode_addr, encode_prefix
from telenet.teleroute.proto import teleroute_pb2 as pb
from telenet.teleroute.proto import teleroute_pb2_grpc as pb_grpc
from telenet.teleroute.service import (
    CoreRefusal,
    GrpcServerService,
    TelerouteCore,
    random_mac,
    veth_name,
)
from telenet.testing import MemoryNetlink
from tests.helpers import failure_of, result_of

A = ipaddress.ip_address
N = ipaddress.ip_network
I = ipaddress.ip_interface  # noqa: E741
PID = 4242
DAEMON_V4 = A("172.30.0.2")
DAEMON_V6 = A("fd00:30::2")


# -- protobuf wire format, by hand ---------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _bytes(field: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3 | 0) + _varint(value)


# -- fixtures ------------------------------------------------------------------------------


class Harness:
    def __init__(self) -> None:
        self.netlink = MemoryNetlink(processes={PID})
        self.routes: set[Any] = set()
        counter = itertools.count()
        self.core = TelerouteCore(
            self.netlink,
            lambda: self.routes,
            random_bytes=lambda n: bytes([next(counter) % 256] * n),
        )
        result_of(self.core.start())

    def connect(self, *gateways: str, pid: int = PID) -> pb.Info:
        return self.core.connect(
            pb.ConnectRequest(pid=pid, gateways=[encode_prefix(I(g)) for g in gateways])
        )

    def create(
        self, endpoint_id: str, v4: str | None = None, v6: str | None = None, daemon: bool = False
    ) -> Any:
        return self.core.create_endpoint(
            pb.CreateEndpointRequest(
                id=endpoint_id,
                daemon=daemon,
                addr_ipv4=encode_addr(A(v4)) if v4 else b"",
                addr_ipv6=encode_addr(A(v6)) if v6 else b"",
            )
        )

    def join(self, endpoint_id: str) -> Any:
        return self.core.join(pb.EndpointIdentifier(id=endpoint_id))


@pytest.fixture
def h() -> Harness:
    return Harness()


def _code(d: Any) -> tuple[grpc.StatusCode, str]:
    error = failure_of(d).value
    assert isinstance(error, CoreRefusal)
    return error.code, error.message


def _raises(f: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(CoreRefusal) as info:
        f()
    return info.value.code, info.value.message


# -- names and MACs ------------------------------------------------------------------------


def test_veth_names() -> None:
    """Veth names are tp- plus 12 lowercase base32 characters: 15, the kernel's maximum."""
    names = {veth_name() for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert re.fullmatch(r"tp-[a-z2-7]{12}", name)
    assert veth_name(lambda n: bytes(n)) == "tp-aaaaaaaaaaaa"


def test_random_macs_are_local_unicast() -> None:
    """MACs are random, unicast (bit 0 clear) and locally administered (bit 1 set)."""
    for _ in range(50):
        mac = random_mac()
        first = int(mac.split(":")[0], 16)
        assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", mac)
        assert first & 0x01 == 0 and first & 0x02 == 2
    assert random_mac(lambda n: b"\xff" * n) == "fe:ff:ff:ff:ff:ff"


# -- the logic against MemoryNetlink -------------------------------------------------------


def test_start_makes_bridge() -> None:
    """Starting takes over (or makes) br-daemon, up."""
    nl = MemoryNetlink()
    result_of(nl.ensure_bridge("br-daemon"))
    result_of(TelerouteCore(nl, set).start())
    assert nl.links_by_name["br-daemon"].up
    assert [c[0] for c in nl.calls] == ["ensure_bridge", "ensure_bridge"]


def test_connect_info(h: Harness) -> None:
    """Connect records pid and gateways and answers Info with name and version."""
    info = h.connect("172.30.0.1/16", "fd00:30::1/64")
    assert set(info.info) == {"name", "version"}
    assert info.info["version"] == h.core.version
    assert h.core.pid == PID
    assert h.core.gateways == [I("172.30.0.1/16"), I("fd00:30::1/64")]


def test_connect_last_wins(h: Harness) -> None:
    """A second Connect replaces pid and gateways (one network per daemon, as in Go)."""
    h.connect("172.30.0.1/16")
    h.connect("10.5.0.1/24", pid=777)
    assert h.core.pid == 777 and h.core.gateways == [I("10.5.0.1/24")]


def test_connect_bad_gateway(h: Harness) -> None:
    """A gateway that is not a netip.Prefix is INVALID_ARGUMENT."""
    code, message = _raises(
        lambda: h.core.connect(pb.ConnectRequest(pid=PID, gateways=[bytes([10, 0, 0, 1, 40])]))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "gateway" in message


def test_create_endpoint_makes_pair(h: Harness) -> None:
    """CreateEndpoint makes a tp- veth pair: host end on br-daemon, peer in the plug-in's netns."""
    h.connect("172.30.0.1/16")
    result_of(h.create("ep1", v4="172.30.0.5"))
    endpoint = h.core.endpoints["ep1"]
    host = h.netlink.links_by_name[endpoint.pair.host]
    assert host.master == "br-daemon" and host.kind == "veth"
    assert h.netlink.moved == {endpoint.pair.peer: PID}
    assert endpoint.pair.peer not in h.netlink.links_by_name
    assert re.fullmatch(r"tp-[a-z2-7]{12}", endpoint.pair.host)
    assert re.fullmatch(r"tp-[a-z2-7]{12}", endpoint.pair.peer)
    assert endpoint.pair.host != endpoint.pair.peer
    assert int(endpoint.pair.peer_mac[:2], 16) & 0x03 == 0x02


def test_create_endpoint_reuses_pair_by_address(h: Harness) -> None:
    """A new endpoint with a cached address reuses the pair (Docker reuses addresses)."""
    h.connect()
    result_of(h.create("ep1", v4="172.30.0.5"))
    result_of(h.core.join(pb.EndpointIdentifier(id="ep1")))
    h.core.remove_endpoint(pb.EndpointIdentifier(id="ep1"))
    created = [c for c in h.netlink.calls if c[0] == "create_veth"]
    result_of(h.create("ep2", v4="172.30.0.5"))
    assert [c for c in h.netlink.calls if c[0] == "create_veth"] == created
    assert h.core.endpoints["ep2"].pair == h.core.pairs[A("172.30.0.5")]
    result_of(h.create("ep3", v4="172.30.0.6"))
    assert len([c for c in h.netlink.calls if c[0] == "create_veth"]) == 2


def test_create_endpoint_retires_an_endpoint_holding_its_address(h: Harness) -> None:
    """
    An endpoint the plug-in never removed (it died in the call) gives up its address to the
    new endpoint Docker made with it: one endpoint per address, the pair reused.
    """
    h.connect()
    result_of(h.create("old", v4="172.30.0.5", v6="fd00::5"))
    result_of(h.create("other", v4="172.30.0.6"))
    result_of(h.create("new", v6="fd00::5"))
    assert set(h.core.endpoints) == {"other", "new"}
    pair = h.core.endpoints["other"].pair
    result_of(h.create("again", v4="172.30.0.6"))
    assert set(h.core.endpoints) == {"new", "again"}
    assert h.core.endpoints["again"].pair == pair


def test_create_endpoint_replaces_vanished_pair(h: Harness) -> None:
    """A cached pair whose host end is gone (its container netns died) is made anew."""
    h.connect()
    result_of(h.create("ep1", v4="172.30.0.5"))
    old = h.core.endpoints["ep1"].pair
    h.core.remove_endpoint(pb.EndpointIdentifier(id="ep1"))
    result_of(h.netlink.delete_link(old.host))
    result_of(h.create("ep2", v4="172.30.0.5"))
    new = h.core.endpoints["ep2"].pair
    assert new.host != old.host and new.host in h.netlink.links_by_name


def test_create_endpoint_ipv6_only_key(h: Harness) -> None:
    """With only an IPv6 address, the pair is cached under it."""
    h.connect()
    result_of(h.create("ep1", v6="fd00:30::5"))
    assert list(h.core.pairs) == [A("fd00:30::5")]


def test_create_endpoint_errors(h: Harness) -> None:
    """No address, a duplicate id and bad bytes give Go's status codes."""
    h.connect()
    assert _code(h.create("ep1")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "neither IPv4 nor IPv6 address provided",
    )
    result_of(h.create("ep1", v4="172.30.0.5"))
    assert _code(h.create("ep1", v4="172.30.0.9")) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "endpoint ep1 already exists",
    )
    for request in (
        pb.CreateEndpointRequest(id="x", addr_ipv4=b"\x01\x02\x03"),
        pb.CreateEndpointRequest(id="x", addr_ipv6=b"\x01" * 7),
        pb.CreateEndpointRequest(id="x", addr_ipv4=encode_addr(DAEMON_V6)),
        pb.CreateEndpointRequest(id="x", addr_ipv6=encode_addr(DAEMON_V4)),
    ):
        code, _ = _code(h.core.create_endpoint(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "x" not in h.core.endpoints


def test_create_endpoint_without_plugin_pid(h: Harness) -> None:
    """Before any Connect there is no netns to move the peer to: INTERNAL, nothing left over."""
    code, message = _code(h.create("ep1", v4="172.30.0.5"))
    assert code == grpc.StatusCode.INTERNAL and "connected" in message
    assert not [n for n in h.netlink.links_by_name if n.startswith("tp-")]


def test_create_endpoint_move_failure_cleans_up(h: Harness) -> None:
    """When the peer cannot be moved (plug-in gone), the new pair is deleted again."""
    h.connect(pid=999)  # not a process MemoryNetlink knows
    d = h.create("ep1", v4="172.30.0.5")
    assert failure_of(d).check(Exception)
    assert not [n for n in h.netlink.links_by_name if n.startswith("tp-")]
    assert "ep1" not in h.core.endpoints and not h.core.pairs


def test_daemon_endpoint_records_addresses(h: Harness) -> None:
    """The daemon's endpoint sets the next hops and tells listeners (the DNS server)."""
    heard: list[tuple[Any, Any]] = []
    h.core.on_daemon_address(lambda v4, v6: heard.append((v4, v6)))
    h.connect()
    result_of(h.create("d", v4=str(DAEMON_V4), v6=str(DAEMON_V6), daemon=True))
    assert (h.core.daemon_ipv4, h.core.daemon_ipv6) == (DAEMON_V4, DAEMON_V6)
    assert heard == [(DAEMON_V4, DAEMON_V6)]


def test_daemon_endpoint_in_daemon_netns(h: Harness) -> None:
    """
    in_daemon_netns (a telenet extension): the daemon's own endpoint, joined while it was
    away, gets its peer set up here as the next free tpd-N with its addresses, up; Join says
    so; and the pair is never handed to a container later.
    """
    h.connect("172.30.0.1/16")
    result_of(h.netlink.create_veth("tpd-0", "02:00:00:00:00:01", "x-peer", "02:00:00:00:00:02"))
    result_of(
        h.core.create_endpoint(
            pb.CreateEndpointRequest(
                id="d",
                daemon=True,
                addr_ipv4=encode_addr(DAEMON_V4),
                in_daemon_netns=True,
                interface_addresses=[encode_prefix(I("172.30.0.2/16"))],
            )
        )
    )
    pair = h.core.endpoints["d"].pair
    assert pair.local and pair.peer == "tpd-1"
    assert h.netlink.moved == {}
    assert h.netlink.links_by_name["tpd-1"].up
    assert h.netlink.links_by_name[pair.host].master == "br-daemon"
    assert result_of(h.netlink.addresses("tpd-1")) == [I("172.30.0.2/16")]
    response = result_of(h.join("d"))
    assert response.interface_in_daemon_netns and response.interface_src_name == "tpd-1"
    assert h.core.daemon_ipv4 == DAEMON_V4
    h.core.remove_endpoint(pb.EndpointIdentifier(id="d"))
    # The same address for a container later: a fresh pair, moved to the plug-in.
    result_of(h.create("w", v4="172.30.0.2"))
    assert not h.core.endpoints["w"].pair.local
    assert pair.host not in h.netlink.links_by_name
    assert h.netlink.moved == {h.core.endpoints["w"].pair.peer: PID}


def test_in_daemon_netns_needs_addresses_and_is_daemon_only(h: Harness) -> None:
    """Without addresses in_daemon_netns is refused; on a workload's endpoint it is ignored."""
    h.connect()
    code, _ = _code(
        h.core.create_endpoint(
            pb.CreateEndpointRequest(
                id="d", daemon=True, addr_ipv4=encode_addr(DAEMON_V4), in_daemon_netns=True
            )
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    result_of(
        h.core.create_endpoint(
            pb.CreateEndpointRequest(
                id="w",
                addr_ipv4=encode_addr(A("172.30.0.9")),
                in_daemon_netns=True,
                interface_addresses=[encode_prefix(I("172.30.0.9/16"))],
            )
        )
    )
    assert not h.core.endpoints["w"].pair.local


def test_join_daemon_gets_no_routes(h: Harness) -> None:
    """The daemon's own Join gets the interface and gateways but no routes and no via."""
    h.connect("172.30.0.1/16")
    h.routes = {N("10.96.0.0/12")}
    result_of(h.create("d", v4=str(DAEMON_V4), daemon=True))
    response = result_of(h.join("d"))
    assert response.interface_src_name == h.core.endpoints["d"].pair.peer
    assert response.interface_dst_prefix == "tpd-"
    assert list(response.routes) == [] and response.via == b"" and response.via_ip_v4 == b""
    assert response.gw_ip_v4 == encode_prefix(I("172.30.0.1/16"))
    assert h.netlink.links_by_name[h.core.endpoints["d"].pair.host].up


def test_join_dual_stack(h: Harness) -> None:
    """Routes of both families get per-family next hops; legacy via prefers IPv6."""
    h.connect("172.30.0.1/16", "fd00:30::1/64")
    h.routes = {N("10.96.0.0/12"), N("fd00:96::/108"), N("172.18.0.0/16")}
    result_of(h.create("d", v4=str(DAEMON_V4), v6=str(DAEMON_V6), daemon=True))
    result_of(h.create("w", v4="172.30.0.5", v6="fd00:30::5"))
    response = result_of(h.join("w"))
    assert [decode_network(r) for r in response.routes] == [
        N("10.96.0.0/12"),
        N("172.18.0.0/16"),
        N("fd00:96::/108"),
    ]
    assert decode_addr(response.via_ip_v4) == DAEMON_V4
    assert decode_addr(response.via_ip_v6) == DAEMON_V6
    assert decode_addr(response.via) == DAEMON_V6
    assert response.gw_ip_v4 == encode_prefix(I("172.30.0.1/16"))
    assert response.gw_ip_v6 == encode_prefix(I("fd00:30::1/64"))
    assert response.disable_gw is False


def test_join_snapshot_of_routes(h: Harness) -> None:
    """Each Join sees the routes of that moment; later changes reach later joins only."""
    h.connect()
    result_of(h.create("d", v4=str(DAEMON_V4), daemon=True))
    result_of(h.create("w1", v4="172.30.0.5"))
    result_of(h.create("w2", v4="172.30.0.6"))
    h.routes = {N("10.96.0.0/12")}
    first = result_of(h.join("w1"))
    h.routes = {N("10.96.0.0/12"), N("10.200.0.0/16")}
    second = result_of(h.join("w2"))
    assert len(first.routes) == 1 and len(second.routes) == 2
    assert decode_addr(second.via) == DAEMON_V4


@pytest.mark.parametrize("route,family", [("10.96.0.0/12", "IPv4"), ("fd00:96::/108", "IPv6")])
def test_join_missing_family(h: Harness, route: str, family: str) -> None:
    """A route of a family the daemon has no address in is INTERNAL, with Go's message."""
    h.connect()
    h.routes = {N(route)}
    result_of(h.create("w", v4="172.30.0.5"))
    assert _code(h.join("w")) == (
        grpc.StatusCode.INTERNAL,
        f"{family} is not enabled for the teleroute network",
    )


@pytest.mark.parametrize(
    "v4,v6,kept",
    [
        (str(DAEMON_V4), None, ["10.96.0.0/12"]),
        (None, str(DAEMON_V6), ["fd00:96::/108"]),
    ],
)
def test_join_single_family_network_of_a_dual_stack_cluster(
    h: Harness, v4: str | None, v6: str | None, kept: list[str]
) -> None:
    """
    A network with one family (``docker.enableIPv6: false``, or IPv6 only) gets that family's
    routes with its next hop; the other family's are left out instead of failing the Join.
    """
    h.connect()
    h.routes = {N("10.96.0.0/12"), N("fd00:96::/108")}
    result_of(h.create("d", v4=v4, v6=v6, daemon=True))
    result_of(h.create("w", v4="172.30.0.5" if v4 else None, v6="fd00:30::5" if v6 else None))
    response = result_of(h.join("w"))
    assert [str(decode_network(r)) for r in response.routes] == kept
    assert decode_addr(response.via_ip_v4) == (DAEMON_V4 if v4 else None)
    assert decode_addr(response.via_ip_v6) == (DAEMON_V6 if v6 else None)
    assert decode_addr(response.via) == (DAEMON_V6 if v6 else DAEMON_V4)


def test_join_no_routes_no_via(h: Harness) -> None:
    """Without routed subnets a workload joins with no routes and no next hop."""
    h.connect("172.30.0.1/16")
    result_of(h.create("w", v4="172.30.0.5"))
    response = result_of(h.join("w"))
    assert list(response.routes) == [] and response.via == b""


def test_unknown_endpoint_not_found(h: Harness) -> None:
    """Join, Leave and RemoveEndpoint of an unknown id are NOT_FOUND."""
    expected = (grpc.StatusCode.NOT_FOUND, "endpoint nope not found")
    assert _code(h.join("nope")) == expected
    assert _raises(lambda: h.core.leave(pb.EndpointIdentifier(id="nope"))) == expected
    assert _raises(lambda: h.core.remove_endpoint(pb.EndpointIdentifier(id="nope"))) == expected


def test_leave_and_remove(h: Harness) -> None:
    """Leave keeps the endpoint; RemoveEndpoint forgets it but keeps the pair cached."""
    h.connect()
    result_of(h.create("w", v4="172.30.0.5"))
    h.core.leave(pb.EndpointIdentifier(id="w"))
    assert "w" in h.core.endpoints
    h.core.remove_endpoint(pb.EndpointIdentifier(id="w"))
    assert "w" not in h.core.endpoints
    assert A("172.30.0.5") in h.core.pairs


def test_stop_ends_streams_and_deletes_pairs(h: Harness) -> None:
    """Stopping fires the Connect waiters and deletes every veth pair the daemon made."""
    h.connect()
    waiting = h.core.when_stopping()
    result_of(h.create("w", v4="172.30.0.5"))
    result_of(h.create("v", v4="172.30.0.6"))
    assert not waiting.called
    result_of(h.core.stop())
    assert waiting.called
    assert not [n for n in h.netlink.links_by_name if n.startswith("tp-")]
    assert result_of(h.core.when_stopping()) is None


def test_cancelled_waiter_forgotten(h: Harness) -> None:
    """A Connect stream that goes away (cancelled waiter) does not break stopping."""
    waiting = h.core.when_stopping()
    waiting.cancel()
    failure_of(waiting)
    result_of(h.core.stop())


# -- wire golden bytes ---------------------------------------------------------------------

GW4 = bytes([172, 30, 0, 1, 16])
GW6 = bytes.fromhex("fd000030000000000000000000000001") + bytes([64])
V4 = bytes([172, 30, 0, 2])
V6 = bytes.fromhex("fd000030000000000000000000000002")


def test_wire_connect_request() -> None:
    """ConnectRequest: gateways (1, repeated bytes), pid (2, int64)."""
    golden = _bytes(1, GW4) + _bytes(1, GW6) + _int(2, 31337)
    message = pb.ConnectRequest(gateways=[GW4, GW6], pid=31337)
    assert message.SerializeToString() == golden
    assert pb.ConnectRequest.FromString(golden) == message


def test_wire_create_endpoint_request() -> None:
    """CreateEndpointRequest: id (1), addr_ipv4 (2), daemon (3, bool), addr_ipv6 (4)."""
    golden = _bytes(1, "ep-1") + _bytes(2, V4) + _int(3, 1) + _bytes(4, V6)
    message = pb.CreateEndpointRequest(id="ep-1", addr_ipv4=V4, daemon=True, addr_ipv6=V6)
    assert message.SerializeToString() == golden
    parsed = pb.CreateEndpointRequest.FromString(golden)
    assert decode_addr(parsed.addr_ipv4) == DAEMON_V4
    assert decode_addr(parsed.addr_ipv6) == DAEMON_V6
    # A design-2 plug-in sends the address as field 2 ("address"): the same bytes.
    assert pb.CreateEndpointRequest.FromString(_bytes(1, "e") + _bytes(2, V4)).addr_ipv4 == V4


def test_wire_endpoint_identifier_and_empty() -> None:
    """EndpointIdentifier: id (1); Empty is no bytes."""
    assert pb.EndpointIdentifier(id="abc").SerializeToString() == _bytes(1, "abc")
    assert empty_pb2.Empty().SerializeToString() == b""


def test_wire_join_response_every_field() -> None:
    """JoinResponse fields 1-9 with their numbers and types."""
    route = bytes([10, 96, 0, 0, 12])
    golden = (
        _bytes(1, "tp-abcdefghijkl")
        + _bytes(2, "tpd-")
        + _bytes(3, route)
        + _bytes(3, bytes([172, 18, 0, 0, 16]))
        + _bytes(4, V6)
        + _bytes(5, GW4)
        + _bytes(6, GW6)
        + _int(7, 1)
        + _bytes(8, V4)
        + _bytes(9, V6)
    )
    message = pb.JoinResponse(
        interface_src_name="tp-abcdefghijkl",
        interface_dst_prefix="tpd-",
        routes=[route, bytes([172, 18, 0, 0, 16])],
        via=V6,
        gw_ip_v4=GW4,
        gw_ip_v6=GW6,
        disable_gw=True,
        via_ip_v4=V4,
        via_ip_v6=V6,
    )
    assert message.SerializeToString() == golden
    assert pb.JoinResponse.FromString(golden) == message


def test_wire_info_map() -> None:
    """Info: map<string,string> info = 1, each entry a message with key 1 and value 2."""
    golden = _bytes(1, _bytes(1, "name") + _bytes(2, "telenet-daemon")) + _bytes(
        1, _bytes(1, "version") + _bytes(2, "0.1.0")
    )
    message = pb.Info(info={"name": "telenet-daemon", "version": "0.1.0"})
    assert message.SerializeToString(deterministic=True) == golden
    assert dict(pb.Info.FromString(golden).info) == {"name": "telenet-daemon", "version": "0.1.0"}


def test_wire_join_answer_from_the_daemon(h: Harness) -> None:
    """A real Join answer, byte for byte as a Go plug-in would read it."""
    h.connect("172.30.0.1/16")
    h.routes = {N("10.96.0.0/12")}
    result_of(h.create("d", v4=str(DAEMON_V4), daemon=True))
    result_of(h.create("w", v4="172.30.0.5"))
    response = result_of(h.join("w"))
    peer = h.core.endpoints["w"].pair.peer
    golden = (
        _bytes(1, peer)
        + _bytes(2, "tpd-")
        + _bytes(3, bytes([10, 96, 0, 0, 12]))
        + _bytes(4, V4)
        + _bytes(5, GW4)
        + _bytes(8, V4)
    )
    assert response.SerializeToString() == golden


# -- the real grpc.aio server ---------------------------------------------------------------


class Served:
    def __init__(self, harness: Harness, service: GrpcServerService, target: str) -> None:
        self.h = harness
        self.service = service
        self.target = target

    async def call(self, f: Callable[[Any], Any]) -> Any:
        """Run ``f(stub)`` (an asyncio coroutine function) with a fresh channel."""

        async def go() -> Any:
            async with grpc.aio.insecure_channel(self.target) as channel:
                return await asyncio.wait_for(f(pb_grpc.TelerouteStub(channel)), 10)

        return await as_deferred(go())

    async def status_of(self, f: Callable[[Any], Any]) -> grpc.StatusCode:
        async def go(stub: Any) -> grpc.StatusCode:
            try:
                await f(stub)
            except grpc.aio.AioRpcError as e:
                return e.code()
            return grpc.StatusCode.OK

        return await self.call(go)


@contextlib.asynccontextmanager
async def serving(harness: Harness) -> AsyncIterator[Served]:
    """``harness``'s daemon core served by the real gRPC server on a temporary unix socket."""
    with tempfile.TemporaryDirectory(prefix="tntest-") as tmp:
        target = f"unix:{os.path.join(tmp, 'teleroute.sock')}"
        service = GrpcServerService(harness.core, [target], grace=0.5)
        service.startService()
        await service.whenListening()
        try:
            yield Served(harness, service, target)
        finally:
            if service.running:
                await service.stopService()


@pytest_twisted.async_yield_fixture
async def served() -> AsyncIterator[Served]:
    async with serving(Harness()) as served:
        yield served


@pytest_twisted.ensureDeferred
async def test_grpc_full_story(served: Served) -> None:
    """Connect, CreateEndpoint (daemon and workload), Join, Leave, RemoveEndpoint over gRPC."""
    served.h.routes = {N("10.96.0.0/12")}

    async def story(stub: Any) -> Any:
        stream = stub.Connect(pb.ConnectRequest(pid=PID, gateways=[GW4]))
        info = await stream.read()
        await stub.CreateEndpoint(pb.CreateEndpointRequest(id="d", addr_ipv4=V4, daemon=True))
        await stub.Join(pb.EndpointIdentifier(id="d"))
        await stub.CreateEndpoint(
            pb.CreateEndpointRequest(id="w", addr_ipv4=encode_addr(A("172.30.0.5")))
        )
        joined = await stub.Join(pb.EndpointIdentifier(id="w"))
        await stub.Leave(pb.EndpointIdentifier(id="w"))
        await stub.RemoveEndpoint(pb.EndpointIdentifier(id="w"))
        stream.cancel()
        return info, joined

    info, joined = await served.call(story)
    assert info.info["name"] == served.h.core.name
    assert joined.interface_dst_prefix == "tpd-"
    assert decode_addr(joined.via_ip_v4) == DAEMON_V4 and joined.gw_ip_v4 == GW4
    assert set(served.h.core.endpoints) == {"d"}


@pytest_twisted.ensureDeferred
async def test_grpc_status_codes(served: Served) -> None:
    """Errors reach a gRPC client with the status codes Go's daemon uses."""
    served.h.connect()
    bad_addr = pb.CreateEndpointRequest(id="x", addr_ipv4=b"\x01\x02\x03")
    assert (
        await served.status_of(lambda s: s.CreateEndpoint(bad_addr))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        await served.status_of(lambda s: s.CreateEndpoint(pb.CreateEndpointRequest(id="x")))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    ok = pb.CreateEndpointRequest(id="x", addr_ipv4=encode_addr(A("172.30.0.9")))
    assert await served.status_of(lambda s: s.CreateEndpoint(ok)) == grpc.StatusCode.OK
    assert await served.status_of(lambda s: s.CreateEndpoint(ok)) == grpc.StatusCode.ALREADY_EXISTS
    for rpc in ("Join", "Leave", "RemoveEndpoint"):
        assert await served.status_of(_call_unknown(rpc)) == grpc.StatusCode.NOT_FOUND
    served.h.routes = {N("fd00:96::/108")}
    assert (
        await served.status_of(lambda s: s.Join(pb.EndpointIdentifier(id="x")))
        == grpc.StatusCode.INTERNAL
    )


def _call_unknown(rpc: str) -> Callable[[Any], Any]:
    return lambda stub: getattr(stub, rpc)(pb.EndpointIdentifier(id="nope"))


@pytest_twisted.ensureDeferred
async def test_grpc_connect_bad_gateway(served: Served) -> None:
    """A Connect with a malformed gateway prefix is INVALID_ARGUMENT."""

    async def go(stub: Any) -> None:
        async for _ in stub.Connect(pb.ConnectRequest(pid=PID, gateways=[b"\x0a\x00"])):
            pass

    assert await served.status_of(go) == grpc.StatusCode.INVALID_ARGUMENT


@pytest_twisted.ensureDeferred
async def test_grpc_connect_held_until_daemon_stops(served: Served) -> None:
    """The Connect stream sends one Info, stays open, and ends cleanly when the daemon stops."""

    async def go(stub: Any) -> tuple[Any, list[Any], grpc.StatusCode]:
        stream = stub.Connect(pb.ConnectRequest(pid=PID))
        first = await stream.read()
        # Nothing more arrives while the daemon runs.
        pending = asyncio.ensure_future(stream.read())
        done, _ = await asyncio.wait([pending], timeout=0.3)
        assert not done
        await as_future(served.service.stopService())
        rest = [await pending]
        return first, rest, await stream.code()

    first, rest, code = await served.call(go)
    assert "version" in first.info
    assert rest == [grpc.aio.EOF] and code == grpc.StatusCode.OK
    assert served.h.core.stopping
