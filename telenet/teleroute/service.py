# -*- test-case-name: tests.test_teleroute -*-
"""
The daemon side of teleroute: the ``telepresence.teleroute.Teleroute`` gRPC service.

The network plug-in forwards Docker's NetworkDriver calls here. For each endpoint the daemon
makes a veth pair: one end (``tp-…``) goes on ``br-daemon`` in the daemon's netns, the other
is moved into the plug-in's netns (the plug-in told us its host pid in ``Connect``), from
where Docker moves it into the container as ``tpd-N``. ``Join`` answers with the routed
subnets via the daemon's own address on the teleroute network.

Behaviour and status codes follow Go Telepresence's daemon (docs/daemon.md, "Behaviour"), so
a Go plug-in works with this daemon. Two layers:

- ``TelerouteCore``: the logic, Twisted-native (Deferred-returning, against ``INetlink``), raising
  ``CoreRefusal`` with a gRPC status code;
- ``TelerouteServicer``: the grpc.aio servicer, a thin adapter; ``GrpcServerService`` runs it.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import grpc
from google.protobuf import empty_pb2
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

import telenet
from telenet.core.aio import as_deferred, as_future
from telenet.core.interfaces import INetlink, LinkNotFound, NetlinkFailure
from telenet.core.netip import (
    Address,
    Interface,
    NetipError,
    Network,
    decode_addr,
    decode_prefix,
    encode_addr,
    encode_prefix,
)
from telenet.teleroute.proto import teleroute_pb2, teleroute_pb2_grpc
from telenet.teleroute.routesfeed import RoutesFeed, RoutesListener, routes_update

log = Logger()

BRIDGE = "br-daemon"
DST_PREFIX = "tpd-"
DEFAULT_NAME = "telenet-daemon"
_B32 = "abcdefghijklmnopqrstuvwxyz234567"

RandomBytes = Callable[[int], bytes]
AddressListener = Callable[[Address | None, Address | None], None]


class CoreRefusal(Exception):
    """
    The core refuses a call: the gRPC status code and message the peer gets (a plug-in sees
    them as ``telenet.teleroute.interfaces.TelerouteError``).
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def veth_name(random_bytes: RandomBytes = os.urandom) -> str:
    """``tp-`` and 12 lowercase base32 characters of 7 random bytes: 15, the kernel's limit."""
    return "tp-" + base64.b32encode(random_bytes(7)).decode().rstrip("=").lower()


def random_mac(random_bytes: RandomBytes = os.urandom) -> str:
    """A random unicast, locally administered MAC address."""
    b = bytearray(random_bytes(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


@attrs.frozen
class VethPair:
    """
    A veth pair made for one container address: ``host`` on the bridge, ``peer`` moved.

    A ``local`` pair's peer stays in the daemon's own netns, set up there as an interface of
    the daemon (``in_daemon_netns``); it is never handed to another container.
    """

    host: str
    peer: str
    peer_mac: str
    local: bool = False


@attrs.frozen
class Endpoint:
    """A Docker endpoint the daemon knows: its veth pair and whether it is the daemon's."""

    id: str
    pair: VethPair
    daemon: bool
    addr_ipv4: Address | None
    addr_ipv6: Address | None


def _decode_addr(data: bytes, field: str, version: int) -> Address | None:
    try:
        addr = decode_addr(data)
    except NetipError as e:
        raise CoreRefusal(grpc.StatusCode.INVALID_ARGUMENT, f"invalid {field}: {e}") from e
    if addr is not None and addr.version != version:
        raise CoreRefusal(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"invalid {field}: {addr} is not an IPv{version} address",
        )
    return addr


class TelerouteCore:
    """
    I keep the daemon's teleroute state: the connected plug-in's pid and gateways, the
    endpoints, and the veth pairs, cached by container address and reused (Docker hands the
    container end back to the host when a container leaves, and reuses addresses).

    ``routes`` gives the currently routed subnets; each Join takes a snapshot of them, and
    ``feed`` tells live-route subscribers (``WatchRoutes``) when ``routes_changed`` is called.
    """

    def __init__(
        self,
        netlink: INetlink,
        routes: Callable[[], Iterable[Network]],
        bridge: str = BRIDGE,
        name: str = DEFAULT_NAME,
        version: str = telenet.__version__,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        self.netlink = netlink
        self.routes = routes
        self.bridge = bridge
        self.name = name
        self.version = version
        self.random_bytes = random_bytes
        self.pid = 0
        self.gateways: list[Interface] = []
        self.daemon_ipv4: Address | None = None
        self.daemon_ipv6: Address | None = None
        self.endpoints: dict[str, Endpoint] = {}
        self.pairs: dict[Address, VethPair] = {}
        self.stopping = False
        self._lock = defer.DeferredLock()
        self._waiters: set[defer.Deferred[None]] = set()
        self._address_listeners: list[AddressListener] = []
        self.feed = RoutesFeed(self.routes_update)

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        """Make sure the bridge exists and is up (taking over one left by an earlier run)."""
        d = self.netlink.ensure_bridge(self.bridge)
        return d.addCallback(
            lambda link: log.info(
                "Bridge {bridge} is up (index {index})", bridge=link.name, index=link.index
            )
        )

    def when_stopping(self) -> defer.Deferred[None]:
        """Fires when the daemon stops; Connect streams end then."""
        if self.stopping:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred(canceller=self._waiters.discard)
        self._waiters.add(d)
        return d

    def stop(self) -> defer.Deferred[None]:
        """
        End every Connect stream, then delete the veth pairs this daemon made.

        The pairs are deleted under the CreateEndpoint lock: a CreateEndpoint in flight (the
        gRPC server lets them finish) completes first and its pair goes too; one that comes
        later is refused.
        """
        self.stopping = True
        waiters, self._waiters = self._waiters, set()
        for d in waiters:
            d.callback(None)
        return self._lock.run(lambda: defer.Deferred.fromCoroutine(self._delete_pairs()))

    async def _delete_pairs(self) -> None:
        pairs, self.pairs = list(self.pairs.values()), {}
        for pair in pairs:
            try:
                await self.netlink.delete_link(pair.host)
            except LinkNotFound:
                pass
            except NetlinkFailure:
                log.failure("Could not delete veth {link}", link=pair.host)

    def on_daemon_address(self, listener: AddressListener) -> None:
        """Call ``listener(ipv4, ipv6)`` whenever the daemon's own endpoint is created."""
        self._address_listeners.append(listener)

    # -- RPCs -----------------------------------------------------------------------------

    def connect(self, request: teleroute_pb2.ConnectRequest) -> teleroute_pb2.Info:
        """Record the plug-in's pid and gateways (the last Connect wins); the Info to send."""
        gateways: list[Interface] = []
        for raw in request.gateways:
            try:
                gateway = decode_prefix(raw)
            except NetipError as e:
                raise CoreRefusal(grpc.StatusCode.INVALID_ARGUMENT, f"invalid gateway: {e}") from e
            if gateway is not None:
                gateways.append(gateway)
        self.pid = request.pid
        self.gateways = gateways
        log.info(
            "Teleroute plug-in connected: pid {pid}, gateways {gateways}",
            pid=request.pid,
            gateways=[str(g) for g in gateways],
        )
        return teleroute_pb2.Info(info={"name": self.name, "version": self.version})

    def create_endpoint(self, request: teleroute_pb2.CreateEndpointRequest) -> defer.Deferred[None]:
        return self._lock.run(lambda: defer.Deferred.fromCoroutine(self._create(request)))

    async def _create(self, request: teleroute_pb2.CreateEndpointRequest) -> None:
        if self.stopping:
            raise CoreRefusal(grpc.StatusCode.UNAVAILABLE, "the daemon is stopping")
        ipv4 = _decode_addr(request.addr_ipv4, "addr_ipv4", 4)
        ipv6 = _decode_addr(request.addr_ipv6, "addr_ipv6", 6)
        if request.daemon:
            self.daemon_ipv4, self.daemon_ipv6 = ipv4, ipv6
            log.info(
                "Daemon endpoint: IPv4 {ipv4}, IPv6 {ipv6}",
                ipv4=str(ipv4 or "-"),
                ipv6=str(ipv6 or "-"),
            )
            for listener in self._address_listeners:
                try:
                    listener(ipv4, ipv6)
                except Exception:
                    log.failure("Daemon address listener failed")
            # The next hops of live routes are the daemon's addresses.
            self.feed.changed()
        key = ipv4 or ipv6
        if key is None:
            raise CoreRefusal(
                grpc.StatusCode.INVALID_ARGUMENT, "neither IPv4 nor IPv6 address provided"
            )
        if request.id in self.endpoints:
            raise CoreRefusal(
                grpc.StatusCode.ALREADY_EXISTS, f"endpoint {request.id} already exists"
            )
        # Docker gives an address to one live endpoint only: an endpoint we still hold with
        # it was removed without telling us (a plug-in that died in the call).
        for other in [
            e
            for e in self.endpoints.values()
            if (ipv4 and e.addr_ipv4 == ipv4) or (ipv6 and e.addr_ipv6 == ipv6)
        ]:
            del self.endpoints[other.id]
            log.info(
                "Endpoint {endpoint} gave up its address {address} to {new}",
                endpoint=other.id[:12],
                address=str(key),
                new=request.id[:12],
            )
        if request.daemon and request.in_daemon_netns:
            pair = await self._local_pair(key, request.interface_addresses)
        else:
            pair = await self._pair(key)
        self.endpoints[request.id] = Endpoint(request.id, pair, request.daemon, ipv4, ipv6)
        log.info(
            "Endpoint {endpoint} for {address}: {host} <-> {peer}",
            endpoint=request.id[:12],
            address=str(key),
            host=pair.host,
            peer=pair.peer,
        )

    async def _forget_pair(self, key: Address) -> None:
        pair = self.pairs.pop(key, None)
        if pair is None:
            return
        try:
            await self.netlink.delete_link(pair.host)
        except LinkNotFound:
            pass

    async def _local_pair(self, key: Address, raw_addresses: Iterable[bytes]) -> VethPair:
        """
        A veth pair whose peer is the daemon's own interface, set up here: the daemon's
        endpoint joined while the daemon was away (Docker gave its container no interface).
        A managed plug-in cannot configure a link inside our netns (no CAP_SYS_ADMIN); we can.
        """
        addresses: list[Interface] = []
        for raw in raw_addresses:
            try:
                address = decode_prefix(raw)
            except NetipError as e:
                raise CoreRefusal(
                    grpc.StatusCode.INVALID_ARGUMENT, f"invalid interface address: {e}"
                ) from e
            if address is not None:
                addresses.append(address)
        if not addresses:
            raise CoreRefusal(
                grpc.StatusCode.INVALID_ARGUMENT, "in_daemon_netns needs interface_addresses"
            )
        await self._forget_pair(key)
        names = {link.name for link in await self.netlink.links()}
        n = 0
        while f"{DST_PREFIX}{n}" in names:
            n += 1
        host, peer = veth_name(self.random_bytes), f"{DST_PREFIX}{n}"
        pair = VethPair(host, peer, random_mac(self.random_bytes), local=True)
        await self.netlink.create_veth(host, random_mac(self.random_bytes), peer, pair.peer_mac)
        try:
            await self.netlink.set_master(host, self.bridge)
            for address in addresses:
                await self.netlink.add_address(peer, address)
            await self.netlink.set_up(peer)
        except Exception:
            try:
                await self.netlink.delete_link(host)
            except NetlinkFailure:
                log.failure("Could not delete half-made veth {link}", link=host)
            raise
        self.pairs[key] = pair
        log.info(
            "Own interface {peer} ({addresses}) made in the daemon's netns",
            peer=peer,
            addresses=" ".join(str(a) for a in addresses),
        )
        return pair

    async def _pair(self, key: Address) -> VethPair:
        cached = self.pairs.get(key)
        if cached is not None and cached.local:
            # The daemon's own interface once: never hand it to a container.
            await self._forget_pair(key)
            cached = None
        if cached is not None:
            if await self.netlink.get_link(cached.host) is not None:
                return cached
            log.info(
                "Veth {link} for {address} is gone; making a new pair",
                link=cached.host,
                address=str(key),
            )
            del self.pairs[key]
        if self.pid <= 0:
            raise CoreRefusal(
                grpc.StatusCode.INTERNAL,
                "no teleroute plug-in has connected (no pid to move the veth to)",
            )
        host, peer = veth_name(self.random_bytes), veth_name(self.random_bytes)
        pair = VethPair(host, peer, random_mac(self.random_bytes))
        await self.netlink.create_veth(host, random_mac(self.random_bytes), peer, pair.peer_mac)
        try:
            await self.netlink.set_master(host, self.bridge)
            await self.netlink.move_to_netns(peer, self.pid)
        except Exception:
            try:
                await self.netlink.delete_link(host)
            except NetlinkFailure:
                log.failure("Could not delete half-made veth {link}", link=host)
            raise
        self.pairs[key] = pair
        return pair

    def _endpoint(self, endpoint_id: str) -> Endpoint:
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None:
            raise CoreRefusal(grpc.StatusCode.NOT_FOUND, f"endpoint {endpoint_id} not found")
        return endpoint

    def _routes_for_families(self, endpoint_id: str) -> list[Network]:
        """
        The routes a workload gets: those of the families the daemon has an address in on the
        teleroute network. A dual-stack cluster behind a single-family network (``docker.enableIPv6:
        false``) leaves the other family out, logged; only when no route is left is the Join
        refused, with Go's message.
        """
        routes = sorted(self.routes(), key=lambda n: (n.version, n))
        vias = {4: self.daemon_ipv4, 6: self.daemon_ipv6}
        usable = [r for r in routes if vias[r.version] is not None]
        if routes and not usable:
            family = f"IPv{routes[0].version}"
            raise CoreRefusal(
                grpc.StatusCode.INTERNAL, f"{family} is not enabled for the teleroute network"
            )
        if len(usable) < len(routes):
            log.warn(
                "Join {endpoint}: the teleroute network has no {family} address for the "
                "daemon; left out {left}",
                endpoint=endpoint_id[:12],
                family="IPv6" if self.daemon_ipv6 is None else "IPv4",
                left=[str(r) for r in routes if r not in usable],
            )
        return usable

    def join(
        self, request: teleroute_pb2.EndpointIdentifier
    ) -> defer.Deferred[teleroute_pb2.JoinResponse]:
        return defer.Deferred.fromCoroutine(self._join(request.id))

    async def _join(self, endpoint_id: str) -> teleroute_pb2.JoinResponse:
        endpoint = self._endpoint(endpoint_id)
        await self.netlink.set_up(endpoint.pair.host)
        response = teleroute_pb2.JoinResponse(
            interface_src_name=endpoint.pair.peer,
            interface_dst_prefix=DST_PREFIX,
            interface_in_daemon_netns=endpoint.pair.local,
        )
        if not endpoint.daemon:
            routes = self._routes_for_families(endpoint_id)
            if any(r.version == 4 for r in routes):
                assert self.daemon_ipv4 is not None
                response.via_ip_v4 = encode_addr(self.daemon_ipv4)
            if any(r.version == 6 for r in routes):
                assert self.daemon_ipv6 is not None
                response.via_ip_v6 = encode_addr(self.daemon_ipv6)
            response.routes.extend(encode_prefix(r) for r in routes)
            response.via = response.via_ip_v6 or response.via_ip_v4
        for gateway in self.gateways:
            if gateway.version == 4 and not response.gw_ip_v4:
                response.gw_ip_v4 = encode_prefix(gateway)
            elif gateway.version == 6 and not response.gw_ip_v6:
                response.gw_ip_v6 = encode_prefix(gateway)
        log.info(
            "Join {endpoint}: {peer} with {count} routes",
            endpoint=endpoint_id[:12],
            peer=endpoint.pair.peer,
            count=len(response.routes),
        )
        return response

    def routes_update(self) -> teleroute_pb2.RoutesUpdate:
        """The live routes now: every routed subnet and the daemon's addresses as next hops."""
        return routes_update(self.routes(), self.daemon_ipv4, self.daemon_ipv6)

    def routes_changed(self) -> None:
        """The routed subnets changed (the VIF's routes, say): tell the subscribers."""
        self.feed.changed()

    def watch_routes(
        self, request: teleroute_pb2.WatchRoutesRequest, listener: RoutesListener
    ) -> Callable[[], None]:
        """``listener`` gets the live routes now and after each change; the unsubscriber."""
        if self.stopping:
            raise CoreRefusal(grpc.StatusCode.UNAVAILABLE, "the daemon is stopping")
        log.info("Plug-in {pid} watches the routes", pid=request.pid)
        return self.feed.subscribe(listener)

    def leave(self, request: teleroute_pb2.EndpointIdentifier) -> None:
        self._endpoint(request.id)

    def remove_endpoint(self, request: teleroute_pb2.EndpointIdentifier) -> None:
        """Forget the endpoint; its veth pair stays cached for the next container."""
        self._endpoint(request.id)
        del self.endpoints[request.id]

    def status(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "gateways": [str(g) for g in self.gateways],
            "daemon_ipv4": str(self.daemon_ipv4) if self.daemon_ipv4 else None,
            "daemon_ipv6": str(self.daemon_ipv6) if self.daemon_ipv6 else None,
            "endpoints": len(self.endpoints),
            "veth_pairs": len(self.pairs),
            "route_watchers": self.feed.subscribers,
        }


def peer_status(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a peer gets for ``error``: a refusal's own, else INTERNAL."""
    if isinstance(error, CoreRefusal):
        return error.code, error.message
    return grpc.StatusCode.INTERNAL, str(error) or type(error).__name__


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: Exception) -> None:
    if not isinstance(error, CoreRefusal):
        log.failure("teleroute call failed")
    await context.abort(*peer_status(error))


class TelerouteServicer(teleroute_pb2_grpc.TelerouteServicer):
    """The grpc.aio adapter over ``TelerouteCore``: status codes from ``CoreRefusal``."""

    def __init__(self, core: TelerouteCore) -> None:
        self.core = core

    async def Connect(
        self,
        request: teleroute_pb2.ConnectRequest,  # noqa: N802
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Any:
        try:
            info = self.core.connect(request)
        except Exception as e:
            await _abort(context, e)
            return
        yield info
        # Held open until the daemon stops; the end of the stream tells the plug-in.
        await as_future(self.core.when_stopping())

    async def WatchRoutes(
        self,
        request: teleroute_pb2.WatchRoutesRequest,  # noqa: N802
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Any:
        """The telenet extension: the live routes, now and at every change, until we stop."""
        updates: asyncio.Queue[teleroute_pb2.RoutesUpdate | None] = asyncio.Queue()
        try:
            unsubscribe = self.core.watch_routes(request, updates.put_nowait)
        except Exception as e:
            await _abort(context, e)
            return
        stopping = self.core.when_stopping()
        stopping.addCallbacks(
            lambda _: updates.put_nowait(None), lambda f: f.trap(defer.CancelledError)
        )
        try:
            while (update := await updates.get()) is not None:
                yield update
        finally:
            unsubscribe()
            stopping.cancel()

    async def CreateEndpoint(
        self,
        request: teleroute_pb2.CreateEndpointRequest,  # noqa: N802
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> empty_pb2.Empty:
        try:
            await as_future(self.core.create_endpoint(request))
        except Exception as e:
            await _abort(context, e)
        return empty_pb2.Empty()

    async def Join(
        self,
        request: teleroute_pb2.EndpointIdentifier,  # noqa: N802
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> teleroute_pb2.JoinResponse:
        try:
            return await as_future(self.core.join(request))
        except Exception as e:
            await _abort(context, e)
            raise

    async def Leave(
        self,
        request: teleroute_pb2.EndpointIdentifier,  # noqa: N802
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> empty_pb2.Empty:
        try:
            self.core.leave(request)
        except Exception as e:
            await _abort(context, e)
        return empty_pb2.Empty()

    async def RemoveEndpoint(
        self,
        request: teleroute_pb2.EndpointIdentifier,  # noqa: N802
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> empty_pb2.Empty:
        try:
            self.core.remove_endpoint(request)
        except Exception as e:
            await _abort(context, e)
        return empty_pb2.Empty()


class GrpcServerService(service.Service):
    """
    Runs a grpc.aio server with the teleroute servicer on the first of ``addresses`` that can
    be bound (``["[::]:4039", "0.0.0.0:4039"]``).

    Needs Twisted's asyncio reactor. On start the bridge is made first; ``whenListening``
    fires with the port bound (if that fails, ``on_fatal`` is called: the daemon is useless
    without its service). On stop, Connect streams end (the plug-ins see the daemon go),
    the server stops, and the veth pairs are deleted.
    """

    def __init__(
        self,
        core: TelerouteCore,
        addresses: list[str],
        grace: float = 1.0,
        on_fatal: Callable[[], None] | None = None,
    ) -> None:
        self.core = core
        self.on_fatal = on_fatal
        self.addresses = addresses
        self.grace = grace
        self.port: int | None = None
        self._server: Any = None
        self._listening: list[defer.Deferred[int]] = []

    def startService(self) -> None:
        super().startService()
        started = defer.Deferred.fromCoroutine(self._start())
        started.addCallbacks(self._listening_on, self._failed)

    def _listening_on(self, port: int) -> None:
        waiting, self._listening = self._listening, []
        for d in waiting:
            d.callback(port)

    def _failed(self, failure: Any) -> None:
        log.failure("The teleroute service could not start", failure)
        waiting, self._listening = self._listening, []
        for d in waiting:
            d.errback(failure)
        if self.on_fatal is not None:
            self.on_fatal()

    async def _start(self) -> int:
        await self.core.start()
        return await as_deferred(self._serve())

    async def _serve(self) -> int:
        server = grpc.aio.server()
        teleroute_pb2_grpc.add_TelerouteServicer_to_server(TelerouteServicer(self.core), server)
        port = 0
        errors = []
        for address in self.addresses:
            # Alternatives, best first ("[::]:4039" is dual-stack where IPv6 exists).
            try:
                port = server.add_insecure_port(address)
            except RuntimeError as e:
                errors.append(f"{address}: {e}")
            if port:
                break
        if not port:
            raise RuntimeError("teleroute gRPC could not listen on " + "; ".join(errors))
        await server.start()
        self._server = server
        self.port = port
        log.info("Teleroute gRPC listening on port {port}", port=port)
        return port

    def whenListening(self) -> defer.Deferred[int]:  # noqa: N802
        """Fires with the bound port once the server runs."""
        if self.port is not None:
            return defer.succeed(self.port)
        d: defer.Deferred[int] = defer.Deferred()
        self._listening.append(d)
        return d

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        stopped = self.core.stop()
        if self._server is not None:
            server, self._server = self._server, None
            await as_deferred(server.stop(self.grace))
        await stopped
