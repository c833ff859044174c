"""
Live routes, the daemon's side: ``RoutesFeed`` and ``WatchRoutes`` (a telenet extension of
teleroute), over ``MemoryNetlink`` and the real grpc.aio server; and the old-peer story: a
client built from the original message set only (Telepresence's, the extension taken out of
the descriptor) still does Connect, CreateEndpoint, Join, Leave and RemoveEndpoint against
the extended service, while the routes change under it.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_twisted
from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2, message_factory

from telenet.core.aio import as_deferred
from telenet.core.netip import decode_addr, decode_network, encode_addr
from telenet.teleroute.client import GrpcTelerouteClient
from telenet.teleroute.interfaces import TelerouteError
from telenet.teleroute.proto import teleroute_pb2 as pb
from telenet.teleroute.routesfeed import RoutesFeed, routes_update
from telenet.teleroute.service import CoreRefusal
from tests.helpers import result_of
from tests.test_routeplugin import grpc_loop_ready  # noqa: F401 (a fixture)
from tests.test_teleroute import PID, Harness, Served, serving

A = ipaddress.ip_address
N = ipaddress.ip_network


def decoded(update: pb.RoutesUpdate) -> tuple[list[str], str, str]:
    return (
        [str(decode_network(r)) for r in update.routes],
        str(decode_addr(update.via_ip_v4) or ""),
        str(decode_addr(update.via_ip_v6) or ""),
    )


# -- the feed and the core


def test_update_lists_routes_ipv4_first_with_next_hops() -> None:
    """The whole set, each subnet once, IPv4 first, with the per-family next hops."""
    update = routes_update(
        [N("fd00:96::/108"), N("10.96.0.0/12"), N("10.1.0.0/16"), N("10.1.0.0/16")],
        A("172.30.0.2"),
        None,
    )
    assert decoded(update) == (["10.1.0.0/16", "10.96.0.0/12", "fd00:96::/108"], "172.30.0.2", "")


def test_feed_sends_current_then_each_change_once() -> None:
    """A subscriber gets the set at once and after each real change; a non-change is quiet."""
    routes = [N("10.96.0.0/12")]
    feed = RoutesFeed(lambda: routes_update(routes, A("172.30.0.2"), None))
    seen: list[list[str]] = []
    unsubscribe = feed.subscribe(lambda u: seen.append(decoded(u)[0]))
    assert seen == [["10.96.0.0/12"]]
    feed.changed()
    assert len(seen) == 1
    routes.append(N("10.200.0.0/16"))
    feed.changed()
    assert seen[-1] == ["10.96.0.0/12", "10.200.0.0/16"]
    unsubscribe()
    routes.pop()
    feed.changed()
    assert len(seen) == 2 and feed.subscribers == 0


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    routes = [N("10.96.0.0/12")]
    feed = RoutesFeed(lambda: routes_update(routes, None, None))

    def broken(update: pb.RoutesUpdate) -> None:
        raise RuntimeError("boom")

    seen: list[pb.RoutesUpdate] = []
    feed.subscribe(broken)
    feed.subscribe(seen.append)
    routes.clear()
    feed.changed()
    assert len(seen) == 2


def test_core_pushes_route_and_next_hop_changes() -> None:
    """The daemon's own endpoint gives the next hop; a VIF route change is pushed."""
    h = Harness()
    h.routes = {N("10.96.0.0/12")}
    h.connect("172.30.0.1/16")
    seen: list[tuple[list[str], str, str]] = []
    h.core.watch_routes(pb.WatchRoutesRequest(pid=PID), lambda u: seen.append(decoded(u)))
    assert seen == [(["10.96.0.0/12"], "", "")]
    result_of(h.create("d", v4="172.30.0.2", daemon=True))
    assert seen[-1] == (["10.96.0.0/12"], "172.30.0.2", "")
    h.routes.add(N("10.200.0.0/16"))
    h.core.routes_changed()
    assert seen[-1] == (["10.96.0.0/12", "10.200.0.0/16"], "172.30.0.2", "")
    assert h.core.status()["route_watchers"] == 1
    assert len(seen) == 3


def test_core_refuses_watchers_once_stopping() -> None:
    h = Harness()
    result_of(h.core.stop())
    with pytest.raises(CoreRefusal) as caught:
        h.core.watch_routes(pb.WatchRoutesRequest(), lambda u: None)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


# -- over gRPC


@pytest_twisted.async_yield_fixture
async def served() -> AsyncIterator[Served]:
    harness = Harness()
    harness.routes = {N("10.96.0.0/12")}
    async with serving(harness) as served:
        yield served


class FakeUnixClient(GrpcTelerouteClient):
    """The real client, pointed at a unix socket."""

    def __init__(self, target: str) -> None:
        super().__init__("127.0.0.1", 1)
        self.target = target


async def _until(condition: Any, timeout: float = 5.0) -> None:
    async def wait() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await as_deferred(asyncio.wait_for(wait(), timeout))


@pytest.mark.usefixtures("grpc_loop_ready")
@pytest_twisted.ensureDeferred
async def test_grpc_watch_routes_streams_changes_until_the_daemon_stops(served: Served) -> None:
    """The real client gets the set at once, each change, and the end when the daemon stops."""
    client = FakeUnixClient(served.target)
    seen: list[tuple[list[str], str, str]] = []
    try:
        session = await client.watch_routes(
            pb.WatchRoutesRequest(pid=PID), lambda u: seen.append(decoded(u)), 3
        )
        assert seen == [(["10.96.0.0/12"], "", "")]
        served.h.routes.add(N("10.200.0.0/16"))
        served.h.core.routes_changed()
        await _until(lambda: len(seen) == 2)
        assert seen[-1][0] == ["10.96.0.0/12", "10.200.0.0/16"]
        served.h.routes.discard(N("10.96.0.0/12"))
        served.h.core.routes_changed()
        await _until(lambda: len(seen) == 3)
        assert seen[-1][0] == ["10.200.0.0/16"]
        await served.service.stopService()
        reason = await session.ended
        assert "ended" in reason
        assert served.h.core.feed.subscribers == 0
    finally:
        await client.close()


@pytest.mark.usefixtures("grpc_loop_ready")
@pytest_twisted.ensureDeferred
async def test_grpc_watch_cancelled_by_the_plugin_unsubscribes(served: Served) -> None:
    client = FakeUnixClient(served.target)
    try:
        session = await client.watch_routes(pb.WatchRoutesRequest(), lambda u: None, 3)
        assert served.h.core.feed.subscribers == 1
        session.cancel()
        await _until(lambda: served.h.core.feed.subscribers == 0)
    finally:
        await client.close()


# -- the old peer


def original_messages() -> dict[str, Any]:
    """
    The message classes of the original teleroute protocol: the descriptor of ours with every
    telenet extension (fields from 100, WatchRoutes and its messages) taken out, built in a
    pool of its own, so that nothing of the extension can reach the wire.
    """
    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    extension = {"WatchRoutesRequest", "RoutesUpdate"}
    kept = [m for m in proto.message_type if m.name not in extension]
    del proto.message_type[:]
    for message in kept:
        fields = [f for f in message.field if f.number < 100]
        del message.field[:]
        message.field.extend(fields)
        proto.message_type.append(message)
    (service,) = proto.service
    methods = [m for m in service.method if m.name != "WatchRoutes"]
    del service.method[:]
    service.method.extend(methods)
    assert [m.name for m in service.method] == [
        "Connect",
        "CreateEndpoint",
        "RemoveEndpoint",
        "Join",
        "Leave",
    ]
    proto.name = "original/teleroute.proto"
    pool = descriptor_pool.DescriptorPool()
    empty = descriptor_pb2.FileDescriptorProto()
    empty_pb2.DESCRIPTOR.CopyToProto(empty)
    pool.Add(empty)
    pool.Add(proto)
    classes = message_factory.GetMessageClassesForFiles([proto.name], pool)
    return {name.rsplit(".", 1)[-1]: cls for name, cls in classes.items()}


def test_original_messages_lack_the_extension() -> None:
    old = original_messages()
    assert "RoutesUpdate" not in old
    assert "in_daemon_netns" not in old["CreateEndpointRequest"].DESCRIPTOR.fields_by_name
    assert "interface_in_daemon_netns" not in old["JoinResponse"].DESCRIPTOR.fields_by_name


@pytest_twisted.ensureDeferred
async def test_old_peer_story_against_the_extended_service(served: Served) -> None:
    """
    A plug-in that knows only the original messages: its Connect/CreateEndpoint/Join/Leave/
    RemoveEndpoint story works, and route changes meanwhile (pushed to nobody) break nothing.
    """
    old = original_messages()
    prefix = "/telepresence.teleroute.Teleroute/"

    async def story() -> Any:
        async with grpc.aio.insecure_channel(served.target) as channel:

            def unary(name: str, answer: Any) -> Any:
                return channel.unary_unary(
                    prefix + name,
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=answer.FromString,
                )

            connect = channel.unary_stream(
                prefix + "Connect",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=old["Info"].FromString,
            )
            empty = empty_pb2.Empty
            stream = connect(old["ConnectRequest"](pid=PID))
            info = await stream.read()
            create = unary("CreateEndpoint", empty)
            await create(
                old["CreateEndpointRequest"](
                    id="d", addr_ipv4=encode_addr(A("172.30.0.2")), daemon=True
                )
            )
            await unary("Join", old["JoinResponse"])(old["EndpointIdentifier"](id="d"))
            served.h.routes.add(N("10.200.0.0/16"))
            served.h.core.routes_changed()
            await create(
                old["CreateEndpointRequest"](id="w", addr_ipv4=encode_addr(A("172.30.0.5")))
            )
            joined = await unary("Join", old["JoinResponse"])(old["EndpointIdentifier"](id="w"))
            served.h.routes.discard(N("10.96.0.0/12"))
            served.h.core.routes_changed()
            await unary("Leave", empty)(old["EndpointIdentifier"](id="w"))
            await unary("RemoveEndpoint", empty)(old["EndpointIdentifier"](id="w"))
            # The Connect stream is still open: nothing more came on it.
            pending = asyncio.ensure_future(stream.read())
            done, _ = await asyncio.wait([pending], timeout=0.2)
            assert not done
            stream.cancel()
            return info, joined

    info, joined = await as_deferred(asyncio.wait_for(story(), 10))
    assert info.info["name"] == served.h.core.name
    assert [str(decode_network(r)) for r in joined.routes] == ["10.96.0.0/12", "10.200.0.0/16"]
    assert str(decode_addr(joined.via_ip_v4)) == "172.30.0.2"
    assert set(served.h.core.endpoints) == {"d"}


@pytest.mark.usefixtures("grpc_loop_ready")
@pytest_twisted.ensureDeferred
async def test_old_daemon_answers_unimplemented() -> None:
    """Against a service of the original RPCs only, WatchRoutes fails UNIMPLEMENTED."""
    from telenet.teleroute.proto import teleroute_pb2_grpc

    class Old(teleroute_pb2_grpc.TelerouteServicer):
        pass

    async def start() -> tuple[Any, int]:
        server = grpc.aio.server()
        teleroute_pb2_grpc.add_TelerouteServicer_to_server(Old(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = await as_deferred(start())
    client = GrpcTelerouteClient("127.0.0.1", port)
    try:
        with pytest.raises(TelerouteError) as caught:
            await client.watch_routes(pb.WatchRoutesRequest(), lambda u: None, 3)
        assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await client.close()
        await as_deferred(server.stop(None))
