"""
A memory fake of a daemon's teleroute service, for unit tests of the network plug-in.

``MemoryTeleroute`` keeps the books the daemon keeps (docs/daemon.md: endpoints, the daemon's own
addresses, routes, the last Connect's pid and gateways) and answers with the daemon's status
codes. ``MemoryTeleroute.client`` is an ``ITelerouteClient`` factory for ``NetworkDriver``;
``MemoryPlumbing`` stands in for moving interfaces between namespaces.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs
import grpc
from twisted.internet import defer
from zope.interface import implementer

from telenet.netplugin.plumbing import IEndpointPlumbing, PlumbingError
from telenet.teleroute.client import grpc_target
from telenet.teleroute.interfaces import ConnectSession, ITelerouteClient, TelerouteError
from telenet.teleroute.proto import teleroute_pb2

StatusCode = grpc.StatusCode


def _addr(data: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not data:
        return None
    if len(data) not in (4, 16):
        raise TelerouteError(StatusCode.INVALID_ARGUMENT, f"bad address bytes {data!r}")
    return ipaddress.ip_address(data)


@attrs.define
class FakeEndpoint:
    id: str
    ipv4: str
    ipv6: str
    daemon: bool
    veth: str
    #: Set up by the daemon in its own netns (``in_daemon_netns``).
    own: bool = False


@implementer(ITelerouteClient)
class MemoryTelerouteClient:
    """A client of a ``MemoryTeleroute``; ``calls`` of the daemon are recorded there."""

    def __init__(self, daemon: MemoryTeleroute, host: str, port: int) -> None:
        self.daemon = daemon
        self.target = grpc_target(host, port)
        self.closed = False

    def _check(self, method: str) -> defer.Deferred[Any] | None:
        self.daemon.calls.append((method, self.target))
        if self.closed:
            return defer.fail(TelerouteError(StatusCode.CANCELLED, "client closed"))
        if method in self.daemon.hang:
            return defer.Deferred()
        if method in self.daemon.errors:
            return defer.fail(self.daemon.errors[method])
        if not self.daemon.up:
            return defer.fail(
                TelerouteError(StatusCode.UNAVAILABLE, f"failed to connect to {self.target}")
            )
        return None

    def connect(
        self, request: teleroute_pb2.ConnectRequest, timeout: float
    ) -> defer.Deferred[ConnectSession]:
        refused = self._check("Connect")
        if refused is not None:
            return refused
        return defer.maybeDeferred(self.daemon.connect, request)

    def create_endpoint(
        self, request: teleroute_pb2.CreateEndpointRequest, timeout: float
    ) -> defer.Deferred[None]:
        return self._check("CreateEndpoint") or defer.maybeDeferred(
            self.daemon.create_endpoint, request
        )

    def remove_endpoint(
        self, request: teleroute_pb2.EndpointIdentifier, timeout: float
    ) -> defer.Deferred[None]:
        return self._check("RemoveEndpoint") or defer.maybeDeferred(
            self.daemon.remove_endpoint, request
        )

    def join(
        self, request: teleroute_pb2.EndpointIdentifier, timeout: float
    ) -> defer.Deferred[teleroute_pb2.JoinResponse]:
        return self._check("Join") or defer.maybeDeferred(self.daemon.join, request)

    def leave(
        self, request: teleroute_pb2.EndpointIdentifier, timeout: float
    ) -> defer.Deferred[None]:
        return self._check("Leave") or defer.maybeDeferred(self.daemon.leave, request)

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)


class MemoryTeleroute:
    """
    A teleroute daemon in memory.

    ``up`` False makes every call fail UNAVAILABLE (a daemon not running); ``hang`` names calls
    that never answer; ``errors`` maps call names to the error they fail with; ``restart()``
    ends the streams and forgets everything, as a daemon container restart does; ``routes``
    are the routed subnets (CIDR strings). ``own_interface`` makes it honour the telenet
    extension ``in_daemon_netns`` (a telenet daemon); without it, it ignores the extension as
    another daemon would. ``own_interfaces`` records (endpoint id, addresses) it set up.
    """

    def __init__(self, routes: list[str] | None = None, own_interface: bool = False) -> None:
        self.up = True
        self.own_interface = own_interface
        self.own_interfaces: list[tuple[str, list[str]]] = []
        self.hang: set[str] = set()
        self.errors: dict[str, TelerouteError] = {}
        self.routes = list(routes or [])
        self.calls: list[tuple[str, str]] = []
        self.sessions: list[ConnectSession] = []
        self.clients: list[MemoryTelerouteClient] = []
        self.connects: list[tuple[int, list[str]]] = []
        self.boots = 1
        self._reset()

    def _reset(self) -> None:
        self.endpoints: dict[str, FakeEndpoint] = {}
        self.daemon_ipv4: str = ""
        self.daemon_ipv6: str = ""
        self.gateways: list[str] = []
        self.pid = 0
        self._veths = 0

    def client(self, host: str, port: int) -> MemoryTelerouteClient:
        """The ``ClientFactory`` to give the driver."""
        c = MemoryTelerouteClient(self, host, port)
        self.clients.append(c)
        return c

    @property
    def open_sessions(self) -> list[ConnectSession]:
        return [s for s in self.sessions if s.is_open]

    def stop(self) -> None:
        """The daemon goes away: its streams end, and it answers nothing until ``start``."""
        self.up = False
        for session in self.open_sessions:
            session.end("the daemon ended the Connect stream")

    def start(self, fresh: bool = True) -> None:
        """The daemon is back; a fresh one remembers nothing of the last."""
        self.up = True
        if fresh:
            self.boots += 1
            self._reset()

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- the service

    def connect(self, request: teleroute_pb2.ConnectRequest) -> ConnectSession:
        gateways = []
        for raw in request.gateways:
            if len(raw) not in (5, 17):
                raise TelerouteError(StatusCode.INVALID_ARGUMENT, "bad gateway prefix")
            gateways.append(f"{ipaddress.ip_address(raw[:-1])}/{raw[-1]}")
        self.pid = request.pid
        self.gateways = gateways
        self.connects.append((request.pid, gateways))
        session = ConnectSession({"name": "memory-daemon", "version": "v0.0.0"}, lambda: None)
        self.sessions.append(session)
        return session

    def create_endpoint(self, request: teleroute_pb2.CreateEndpointRequest) -> None:
        v4, v6 = _addr(request.addr_ipv4), _addr(request.addr_ipv6)
        if request.daemon:
            self.daemon_ipv4 = str(v4) if v4 else ""
            self.daemon_ipv6 = str(v6) if v6 else ""
        if v4 is None and v6 is None:
            raise TelerouteError(
                StatusCode.INVALID_ARGUMENT, "neither IPv4 nor IPv6 address provided"
            )
        if request.id in self.endpoints:
            raise TelerouteError(StatusCode.ALREADY_EXISTS, f"endpoint {request.id} already exists")
        self._veths += 1
        own = self.own_interface and request.daemon and request.in_daemon_netns
        self.endpoints[request.id] = FakeEndpoint(
            request.id,
            str(v4 or ""),
            str(v6 or ""),
            request.daemon,
            "tpd-0" if own else f"tp-fake{self._veths:08d}",
            own,
        )
        if own:
            self.own_interfaces.append(
                (
                    request.id,
                    [
                        f"{ipaddress.ip_address(raw[:-1])}/{raw[-1]}"
                        for raw in request.interface_addresses
                    ],
                )
            )

    def _get(self, endpoint_id: str) -> FakeEndpoint:
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None:
            raise TelerouteError(StatusCode.NOT_FOUND, f"endpoint {endpoint_id} not found")
        return endpoint

    def join(self, request: teleroute_pb2.EndpointIdentifier) -> teleroute_pb2.JoinResponse:
        endpoint = self._get(request.id)
        response = teleroute_pb2.JoinResponse(
            interface_src_name=endpoint.veth,
            interface_dst_prefix="tpd-",
            interface_in_daemon_netns=endpoint.own,
        )
        if not endpoint.daemon:
            networks = [ipaddress.ip_network(r) for r in self.routes]
            for n in networks:
                response.routes.append(n.network_address.packed + bytes([n.prefixlen]))
            if any(n.version == 4 for n in networks):
                if not self.daemon_ipv4:
                    raise TelerouteError(
                        StatusCode.INTERNAL, "IPv4 is not enabled for the teleroute network"
                    )
                response.via_ip_v4 = ipaddress.ip_address(self.daemon_ipv4).packed
            if any(n.version == 6 for n in networks):
                if not self.daemon_ipv6:
                    raise TelerouteError(
                        StatusCode.INTERNAL, "IPv6 is not enabled for the teleroute network"
                    )
                response.via_ip_v6 = ipaddress.ip_address(self.daemon_ipv6).packed
            response.via = response.via_ip_v6 or response.via_ip_v4
        for gateway in self.gateways:
            interface = ipaddress.ip_interface(gateway)
            raw = interface.ip.packed + bytes([interface.network.prefixlen])
            if interface.version == 4 and not response.gw_ip_v4:
                response.gw_ip_v4 = raw
            elif interface.version == 6 and not response.gw_ip_v6:
                response.gw_ip_v6 = raw
        return response

    def leave(self, request: teleroute_pb2.EndpointIdentifier) -> None:
        self._get(request.id)

    def remove_endpoint(self, request: teleroute_pb2.EndpointIdentifier) -> None:
        self._get(request.id)
        del self.endpoints[request.id]


@implementer(IEndpointPlumbing)
class MemoryPlumbing:
    """An ``IEndpointPlumbing`` that records what it was asked; ``fail`` makes it refuse."""

    def __init__(self) -> None:
        self.adopted: list[tuple[str, str, str, list[str]]] = []
        self.fail: str | None = None

    def adopt(
        self, link: str, sandbox_key: str, daemon_host: str, addresses: list[str]
    ) -> defer.Deferred[str]:
        if self.fail is not None:
            return defer.fail(PlumbingError(self.fail))
        self.adopted.append((link, sandbox_key, daemon_host, list(addresses)))
        return defer.succeed("tpd-0")
