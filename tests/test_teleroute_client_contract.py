"""
ITelerouteClient's contract, asserted alike of ``MemoryTeleroute``'s client and of the real
``GrpcTelerouteClient`` talking to the daemon's real grpc.aio server on loopback.

Both sides run the same ``TelerouteCore`` over a ``MemoryNetlink``, so what this holds is the
part in between: the answers, the status codes and messages of refusals, the Connect stream's
Info and its end when the daemon stops, and what a stopped daemon answers.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from telenet.core.netip import decode_prefix, encode_addr, encode_prefix
from telenet.teleroute.client import GrpcTelerouteClient
from telenet.teleroute.interfaces import ConnectSession, ITelerouteClient, TelerouteError
from telenet.teleroute.proto import teleroute_pb2 as pb
from telenet.teleroute.service import GrpcServerService, TelerouteCore
from telenet.testing.netlink import MemoryNetlink
from telenet.testing.teleroute import MemoryTeleroute

PID = 4242
ROUTES = ["10.96.0.0/12"]
TIMEOUT = 5.0


class Setup:
    """A client of a running daemon, and a way to stop that daemon."""

    def __init__(self, client: Any, stop: Callable[[], Any]) -> None:
        self.client = client
        self.stop = stop


def _counting() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


@pytest_twisted.async_yield_fixture(params=["memory", "grpc"])
async def setup(request: Any) -> AsyncIterator[Setup]:
    if request.param == "memory":
        daemon = MemoryTeleroute(routes=ROUTES, own_interface=True)
        client = daemon.client("127.0.0.1", 4039)

        async def stop_memory() -> None:
            daemon.stop()

        yield Setup(client, stop_memory)
        await client.close()
        return
    core = TelerouteCore(
        MemoryNetlink(),
        lambda: [ipaddress.ip_network(r) for r in ROUTES],
        name="memory-daemon",
        version="v0.0.0",
        random_bytes=_counting(),
    )
    server = GrpcServerService(core, ["127.0.0.1:0"], grace=0.2)
    server.startService()
    port = await server.whenListening()
    client = GrpcTelerouteClient("127.0.0.1", port)

    async def stop() -> None:
        if server.running:
            await server.stopService()

    try:
        yield Setup(client, stop)
    finally:
        await client.close()
        await stop()


def connect_request(*gateways: str) -> pb.ConnectRequest:
    prefixes = [encode_prefix(ipaddress.ip_interface(g)) for g in gateways]
    return pb.ConnectRequest(pid=PID, gateways=prefixes)


def endpoint(endpoint_id: str, v4: str, daemon: bool = False) -> pb.CreateEndpointRequest:
    return pb.CreateEndpointRequest(
        id=endpoint_id, addr_ipv4=encode_addr(ipaddress.ip_address(v4)), daemon=daemon
    )


def ident(endpoint_id: str) -> pb.EndpointIdentifier:
    return pb.EndpointIdentifier(id=endpoint_id)


async def refusal(d: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(TelerouteError) as caught:
        await d
    return caught.value.code, caught.value.details


@pytest_twisted.ensureDeferred
async def test_provides_interface(setup: Setup) -> None:
    assert verifyObject(ITelerouteClient, setup.client)


@pytest_twisted.ensureDeferred
async def test_connect_gives_the_daemons_info(setup: Setup) -> None:
    session = await setup.client.connect(connect_request("172.21.0.1/16"), TIMEOUT)
    assert isinstance(session, ConnectSession)
    assert session.info == {"name": "memory-daemon", "version": "v0.0.0"}
    assert session.is_open
    session.cancel()


@pytest_twisted.ensureDeferred
async def test_endpoint_life(setup: Setup) -> None:
    """Create, join (routes via the daemon, the gateway), leave, remove: then it is gone."""
    c = setup.client
    session = await c.connect(connect_request("172.21.0.1/16"), TIMEOUT)
    assert await c.create_endpoint(endpoint("d" * 64, "172.21.0.2", daemon=True), TIMEOUT) is None
    assert await c.create_endpoint(endpoint("w" * 64, "172.21.0.3"), TIMEOUT) is None
    answer = await c.join(ident("w" * 64), TIMEOUT)
    assert answer.interface_src_name.startswith("tp-")
    assert answer.interface_dst_prefix == "tpd-"
    assert [str(decode_prefix(r)) for r in answer.routes] == ROUTES
    assert answer.via_ip_v4 == encode_addr(ipaddress.ip_address("172.21.0.2"))
    assert str(decode_prefix(answer.gw_ip_v4)) == "172.21.0.1/16"
    assert await c.leave(ident("w" * 64), TIMEOUT) is None
    assert await c.remove_endpoint(ident("w" * 64), TIMEOUT) is None
    assert await refusal(c.join(ident("w" * 64), TIMEOUT)) == (
        grpc.StatusCode.NOT_FOUND,
        f"endpoint {'w' * 64} not found",
    )
    session.cancel()


@pytest_twisted.ensureDeferred
async def test_refusals_carry_the_daemons_status(setup: Setup) -> None:
    c = setup.client
    session = await c.connect(connect_request(), TIMEOUT)
    assert await c.create_endpoint(endpoint("a" * 64, "172.21.0.4"), TIMEOUT) is None
    assert await refusal(c.create_endpoint(endpoint("a" * 64, "172.21.0.5"), TIMEOUT)) == (
        grpc.StatusCode.ALREADY_EXISTS,
        f"endpoint {'a' * 64} already exists",
    )
    assert await refusal(c.create_endpoint(pb.CreateEndpointRequest(id="b"), TIMEOUT)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "neither IPv4 nor IPv6 address provided",
    )
    code, details = await refusal(
        c.create_endpoint(pb.CreateEndpointRequest(id="c", addr_ipv4=b"\x01\x02"), TIMEOUT)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("invalid addr_ipv4")
    for call in (c.leave, c.remove_endpoint, c.join):
        assert await refusal(call(ident("nobody"), TIMEOUT)) == (
            grpc.StatusCode.NOT_FOUND,
            "endpoint nobody not found",
        )
    code, details = await refusal(c.connect(pb.ConnectRequest(gateways=[b"\x01\x02\x03"]), TIMEOUT))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("invalid gateway")
    session.cancel()


@pytest_twisted.ensureDeferred
async def test_a_stopping_daemon_ends_the_stream_and_answers_unavailable(setup: Setup) -> None:
    session = await setup.client.connect(connect_request(), TIMEOUT)
    await setup.stop()
    reason = await session.ended
    assert isinstance(reason, str) and reason
    assert not session.is_open
    code, _ = await refusal(setup.client.join(ident("x"), TIMEOUT))
    assert code == grpc.StatusCode.UNAVAILABLE
