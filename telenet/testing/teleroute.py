"""
A teleroute daemon for unit tests of the network plug-in: the daemon's real core over a
memory netlink, reached through a thin ``ITelerouteClient``.

``MemoryTeleroute`` runs ``telenet.teleroute.service.TelerouteCore`` over a ``MemoryNetlink``;
its books, veth pairs and status codes are the daemon's own. It adds only what tests need to
steer and watch the daemon from outside: recorded calls, unreachable, hanging or failing
methods, stops and restarts. ``MemoryTeleroute.client`` is the ``ClientFactory`` to give
``NetworkDriver``. ``MemoryPlumbing`` stands in for moving interfaces between namespaces.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import grpc
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from telenet.core.netip import Network
from telenet.netplugin.interfaces import IEndpointPlumbing
from telenet.netplugin.plumbing import PlumbingError, next_free_name
from telenet.teleroute.client import grpc_target
from telenet.teleroute.interfaces import ConnectSession, ITelerouteClient, TelerouteError
from telenet.teleroute.proto import teleroute_pb2
from telenet.teleroute.service import TelerouteCore, peer_status
from telenet.testing.netlink import MemoryNetlink

log = Logger()

StatusCode = grpc.StatusCode


def _counting_bytes() -> Callable[[int], bytes]:
    """Stand-in for ``os.urandom``: distinct and repeatable, so veth names are too."""
    count = 0

    def next_bytes(n: int) -> bytes:
        nonlocal count
        count += 1
        return count.to_bytes(n, "big")

    return next_bytes


def _refused(failure: Failure) -> Failure:
    """What the client sees of a failed core call: the status the servicer would send."""
    code, message = peer_status(failure.value)
    return Failure(TelerouteError(code, message))


@implementer(ITelerouteClient)
class MemoryTelerouteClient:
    """A client of a ``MemoryTeleroute``; its calls are recorded in the daemon's ``calls``."""

    def __init__(self, daemon: MemoryTeleroute, host: str, port: int) -> None:
        self.daemon = daemon
        self.target = grpc_target(host, port)
        self.closed = False
        self._sessions: list[ConnectSession] = []

    def _refusal(self, method: str) -> defer.Deferred[Any] | None:
        """The test's answer to ``method`` when it overrides the daemon's, else None."""
        self.daemon.calls.append((method, self.target))
        if self.closed:
            return defer.fail(TelerouteError(StatusCode.CANCELLED, "client closed"))
        if method in self.daemon.hang:
            return defer.Deferred()
        if method in self.daemon.errors:
            return defer.fail(self.daemon.errors[method])
        if not self.daemon.up or self.daemon.core.stopping:
            # A stopped daemon's server is gone with it (GrpcServerService.stopService).
            return defer.fail(
                TelerouteError(StatusCode.UNAVAILABLE, f"failed to connect to {self.target}")
            )
        return None

    def _call(self, method: str, call: Callable[[TelerouteCore], Any]) -> defer.Deferred[Any]:
        refusal = self._refusal(method)
        if refusal is not None:
            return refusal
        return defer.maybeDeferred(call, self.daemon.core).addErrback(_refused)

    def connect(
        self, request: teleroute_pb2.ConnectRequest, timeout: float
    ) -> defer.Deferred[ConnectSession]:
        d = self._call("Connect", lambda core: self.daemon.open_session(core, request))
        return d.addCallback(self._opened)

    def _opened(self, session: ConnectSession) -> ConnectSession:
        self._sessions.append(session)
        return session

    def watch_routes(
        self,
        request: teleroute_pb2.WatchRoutesRequest,
        on_update: Callable[[teleroute_pb2.RoutesUpdate], None],
        timeout: float,
    ) -> defer.Deferred[ConnectSession]:
        refusal = self._refusal("WatchRoutes")
        if refusal is not None:
            return refusal
        if not self.daemon.live_routes:
            # What a Go daemon's gRPC server answers for a method it does not know.
            return defer.fail(
                TelerouteError(
                    StatusCode.UNIMPLEMENTED,
                    "unknown method WatchRoutes for service telepresence.teleroute.Teleroute",
                )
            )
        d = defer.maybeDeferred(self.daemon.open_route_watch, self.daemon.core, request, on_update)
        return d.addErrback(_refused).addCallback(self._opened)

    def create_endpoint(
        self, request: teleroute_pb2.CreateEndpointRequest, timeout: float
    ) -> defer.Deferred[None]:
        seen = self.daemon.as_received(request)
        return self._call("CreateEndpoint", lambda core: core.create_endpoint(seen))

    def remove_endpoint(
        self, request: teleroute_pb2.EndpointIdentifier, timeout: float
    ) -> defer.Deferred[None]:
        return self._call("RemoveEndpoint", lambda core: core.remove_endpoint(request))

    def join(
        self, request: teleroute_pb2.EndpointIdentifier, timeout: float
    ) -> defer.Deferred[teleroute_pb2.JoinResponse]:
        return self._call("Join", lambda core: core.join(request))

    def leave(
        self, request: teleroute_pb2.EndpointIdentifier, timeout: float
    ) -> defer.Deferred[None]:
        return self._call("Leave", lambda core: core.leave(request))

    def close(self) -> defer.Deferred[None]:
        # As the gRPC client does: closing cancels the streams this client opened.
        self.closed = True
        for session in self._sessions:
            session.cancel()
        return defer.succeed(None)


class MemoryTeleroute:
    """
    A teleroute daemon in memory: ``core``, a real ``TelerouteCore`` over ``netlink``, a
    ``MemoryNetlink`` standing for the daemon's network namespace. Read its books there.

    ``routes`` are the routed subnets (CIDR strings, read at each Join). ``up`` False makes
    every call fail UNAVAILABLE (a running daemon out of reach); ``hang`` names calls that
    never answer; ``errors`` maps call names to the ``TelerouteError`` they fail with.
    ``stop()`` stops the core as the daemon's shutdown does (its Connect streams end, its veth
    pairs go) and leaves it unreachable; ``start()`` boots a new daemon, a fresh core in a
    fresh namespace, as a daemon container restart does. Without ``own_interface`` the daemon
    ignores the telenet extension ``in_daemon_netns`` (and its ``interface_addresses``), as
    Go's daemon does, whose protocol lacks those fields; without ``live_routes`` it answers
    ``WatchRoutes`` UNIMPLEMENTED, as Go's daemon does. ``set_routes`` changes the routed
    subnets and tells the watchers, as the VIF's route watch does.

    Records: ``calls`` (method, target) of every call, ``connects`` (pid, gateways) of every
    accepted Connect, ``sessions`` every Connect stream opened, ``route_watches`` every
    WatchRoutes stream.
    """

    def __init__(
        self,
        routes: list[str] | None = None,
        own_interface: bool = False,
        live_routes: bool = True,
    ) -> None:
        self.routes = list(routes or [])
        self.own_interface = own_interface
        self.live_routes = live_routes
        self.up = True
        self.hang: set[str] = set()
        self.errors: dict[str, TelerouteError] = {}
        self.calls: list[tuple[str, str]] = []
        self.connects: list[tuple[int, list[str]]] = []
        self.sessions: list[ConnectSession] = []
        self.route_watches: list[ConnectSession] = []
        self._boot()

    def _boot(self) -> None:
        self.netlink = MemoryNetlink()
        self.core = TelerouteCore(
            self.netlink,
            self._routed,
            name="memory-daemon",
            version="v0.0.0",
            random_bytes=_counting_bytes(),
        )
        self.core.start().addErrback(lambda f: log.failure("The memory daemon did not start", f))

    def _routed(self) -> list[Network]:
        return [ipaddress.ip_network(r) for r in self.routes]

    def set_routes(self, routes: list[str]) -> None:
        """The routed subnets change (a route appeared on or left the VIF)."""
        self.routes = list(routes)
        self.core.routes_changed()

    def client(self, host: str, port: int) -> MemoryTelerouteClient:
        """The ``ClientFactory`` to give the driver."""
        return MemoryTelerouteClient(self, host, port)

    @property
    def open_sessions(self) -> list[ConnectSession]:
        return [s for s in self.sessions if s.is_open]

    def stop(self) -> None:
        """The daemon stops: its streams end, and it answers nothing until ``start``."""
        self.core.stop().addErrback(lambda f: log.failure("The memory daemon did not stop", f))

    def start(self) -> None:
        """A new daemon starts, remembering nothing of the last."""
        if not self.core.stopping:
            self.stop()
        self._boot()

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- what the client adapter asks of the daemon

    def as_received(
        self, request: teleroute_pb2.CreateEndpointRequest
    ) -> teleroute_pb2.CreateEndpointRequest:
        """The request as this daemon decodes it: a Go daemon never sees the extension."""
        if self.own_interface:
            return request
        seen = teleroute_pb2.CreateEndpointRequest()
        seen.CopyFrom(request)
        seen.ClearField("in_daemon_netns")
        seen.ClearField("interface_addresses")
        return seen

    def open_session(
        self, core: TelerouteCore, request: teleroute_pb2.ConnectRequest
    ) -> ConnectSession:
        """Connect, as the servicer serves it: the core's Info, held open until it stops."""
        info = core.connect(request)
        self.connects.append((core.pid, [str(g) for g in core.gateways]))
        stopping = core.when_stopping()
        session = ConnectSession(dict(info.info), stopping.cancel)
        stopping.addCallbacks(
            lambda _: session.end("the daemon ended the Connect stream"),
            lambda f: f.trap(defer.CancelledError),
        )
        self.sessions.append(session)
        return session

    def open_route_watch(
        self,
        core: TelerouteCore,
        request: teleroute_pb2.WatchRoutesRequest,
        on_update: Callable[[teleroute_pb2.RoutesUpdate], None],
    ) -> ConnectSession:
        """WatchRoutes, as the servicer serves it: updates until the daemon stops."""
        unsubscribe = core.watch_routes(request, on_update)
        stopping = core.when_stopping()

        def cancel() -> None:
            unsubscribe()
            stopping.cancel()

        session = ConnectSession({}, cancel)
        stopping.addCallbacks(
            lambda _: session.end("the daemon ended the WatchRoutes stream"),
            lambda f: f.trap(defer.CancelledError),
        )
        stopping.addBoth(lambda _: unsubscribe())
        self.route_watches.append(session)
        return session


@attrs.define
class MemoryNamespace:
    """A network namespace ``MemoryPlumbing`` can see: its process, addresses and links."""

    pid: int
    addresses: set[str]
    #: Link name to the addresses it was given.
    links: dict[str, list[str]] = attrs.field(factory=dict)


@implementer(IEndpointPlumbing)
class MemoryPlumbing:
    """
    An ``IEndpointPlumbing`` over namespaces kept in memory, refusing what ``NetnsPlumbing``
    refuses (tests/test_plumbing_contract.py holds them alike).

    ``our_links`` names the links on the plug-in's side; ``add_namespace`` makes a daemon's
    namespace visible by its sandbox key. ``adopted`` records every move; ``fail`` makes every
    adoption refuse with that message.
    """

    def __init__(self, our_links: Callable[[], Iterable[str]]) -> None:
        self._our_links = our_links
        self.namespaces: dict[str, MemoryNamespace] = {}
        self.adopted: list[tuple[str, str, str, list[str]]] = []
        self.fail: str | None = None

    def add_namespace(self, sandbox_key: str, pid: int, *addresses: str) -> MemoryNamespace:
        namespace = MemoryNamespace(pid, set(addresses))
        self.namespaces[sandbox_key] = namespace
        return namespace

    def _find(self, sandbox_key: str, daemon_host: str) -> MemoryNamespace | None:
        if sandbox_key in self.namespaces:
            return self.namespaces[sandbox_key]
        holding = (n for n in self.namespaces.values() if daemon_host in n.addresses)
        return next(holding, None)

    def adopt(
        self, link: str, sandbox_key: str, daemon_host: str, addresses: list[str]
    ) -> defer.Deferred[str]:
        if self.fail is not None:
            return defer.fail(PlumbingError(self.fail))
        namespace = self._find(sandbox_key, daemon_host)
        if namespace is None:
            return defer.fail(
                PlumbingError(
                    f"no network namespace holds the daemon's address {daemon_host} "
                    f"(and the sandbox {sandbox_key or '?'} is not visible here)"
                )
            )
        if link not in set(self._our_links()):
            return defer.fail(
                PlumbingError(
                    f"ip link set dev {link} netns {namespace.pid} failed (1): "
                    f'Cannot find device "{link}"'
                )
            )
        name = next_free_name(set(namespace.links))
        namespace.links[name] = list(addresses)
        self.adopted.append((link, sandbox_key, daemon_host, list(addresses)))
        return defer.succeed(name)
