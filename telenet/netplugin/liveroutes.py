# -*- test-case-name: tests.test_liveroutes -*-
"""
Live routes: running containers follow the daemon's routed subnets (``LiveRoutesMixin``).

Docker gives a container the routes of the Join answer once. A telenet daemon also serves
``WatchRoutes`` (a telenet extension of teleroute, ``telenet.teleroute.routesfeed``): the whole
set of routed subnets and the per-family next hops, at once and after every change. This part
of ``NetworkDriver`` keeps that stream open for each network while its Connect stream is up,
and on each update brings every joined container of the network to the new set, in the
container's own network namespace (``IContainerRoutes``): routes via the daemon that left the
set are deleted, new ones added, changed next hops replaced; nothing else is touched, so the
connections to unchanged subnets go on. A route that would overlap one of the container's own
networks (a connected route of any of its interfaces) is not installed, and the log says why.

A daemon without the extension (Go Telepresence's) answers UNIMPLEMENTED: said once, and its
containers keep the routes they joined with, as with Go's plug-in. Docker installs the Join's
routes itself just after the Join answer, so a container is left alone for ``JOIN_GRACE``
seconds after its Join (a route added before Docker's would fail the container's start).
"""

from __future__ import annotations

from typing import Any

import attrs
import grpc
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from telenet.core import netip
from telenet.core.netip import Network
from telenet.netplugin.endpoints import EndpointCallsMixin
from telenet.netplugin.interfaces import IContainerRoutes
from telenet.netplugin.plumbing import PlumbingError
from telenet.netplugin.records import PluginEndpoint, PluginNetwork
from telenet.teleroute.interfaces import ConnectSession, TelerouteError
from telenet.teleroute.proto import teleroute_pb2

log = Logger()

StatusCode = grpc.StatusCode

#: Seconds after a Join before live routes touch that container (Docker installs the Join's
#: static routes right after our answer).
JOIN_GRACE = 1.0
#: A failed update of one container is tried again this often, this far apart.
RETRIES = 4
RETRY_DELAY = 0.5
#: A WatchRoutes stream that ended while the Connect stream stays up is reopened after this.
WATCH_RETRY = 2.0


@attrs.define
class NetworkRoutes:
    """What live routes know of one network."""

    #: The routed subnets of the daemon's last update (None: no update yet).
    routes: list[Network] | None = None
    #: The next hop per IP version, from the last update ("" for none).
    via: dict[int, str] = attrs.field(factory=dict)
    #: Every next hop the daemon gave: a container's routes via one of them are the daemon's.
    vias: set[str] = attrs.field(factory=set)
    watch: ConnectSession | None = None
    rewatch: IDelayedCall | None = None
    #: A new stream: its first update is applied to every container even if it is the same.
    resync: bool = False
    #: The daemon said it has no live routes (logged once).
    unsupported: bool = False
    calls: dict[str, IDelayedCall] = attrs.field(factory=dict)
    running: set[str] = attrs.field(factory=set)
    again: set[str] = attrs.field(factory=set)
    #: (endpoint, subnet) refusals already logged.
    refused: set[tuple[str, str]] = attrs.field(factory=set)


class LiveRoutesMixin(EndpointCallsMixin):
    """The WatchRoutes stream of each network, and the containers' routes kept to it."""

    def __init__(self, *args: Any, routes: IContainerRoutes | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: None: live routes off (the daemon is not asked).
        self._container_routes = routes
        self._live: dict[str, NetworkRoutes] = {}

    def _on_connect(self, network: PluginNetwork) -> None:
        super()._on_connect(network)
        if self._container_routes is not None:
            self._watch_routes(network)

    def _stop_live_routes(self) -> None:
        """Stop every stream and pending update (the driver stops)."""
        live, self._live = self._live, {}
        for state in live.values():
            for call in state.calls.values():
                if call.active():
                    call.cancel()
            if state.rewatch is not None and state.rewatch.active():
                state.rewatch.cancel()
            watch, state.watch = state.watch, None
            if watch is not None:
                watch.cancel()

    # -- the stream

    def _watch_routes(self, network: PluginNetwork) -> None:
        link = network.link
        if link is None or link.client is None or not link.connected:
            return
        client = link.client
        state = self._live.setdefault(network.id, NetworkRoutes())
        if state.watch is not None:
            state.watch.cancel()
            state.watch = None
        # The daemon may have restarted: its containers may need the routes again.
        state.resync = True
        d = client.watch_routes(
            teleroute_pb2.WatchRoutesRequest(pid=self._pid),
            lambda update: self._routes_update(network.id, update),
            self._timeout,
        )
        d.addTimeout(self._timeout + 1, self._clock)

        def opened(session: ConnectSession) -> None:
            if self._live.get(network.id) is not state:
                session.cancel()  # the network or the driver went meanwhile
                return
            state.watch = session
            state.unsupported = False
            session.ended.addCallback(ended, session)

        def again() -> None:
            if self._live.get(network.id) is state and link.connected and link.client is client:
                state.rewatch = self._clock.callLater(WATCH_RETRY, self._rewatch, network, client)

        def ended(reason: str, session: ConnectSession) -> None:
            if state.watch is not session:
                return
            state.watch = None
            if self.networks.get(network.id) is not network:
                if self._live.get(network.id) is state:
                    del self._live[network.id]  # the network was deleted
                return
            if link.connected and link.client is client:
                log.info(
                    "live routes of network {network}: {reason}; watching again in {delay:g}s",
                    network=network.id[:12],
                    reason=reason,
                    delay=WATCH_RETRY,
                )
                again()

        def failed(failure: Failure) -> None:
            error = failure.value
            if isinstance(error, TelerouteError) and error.code == StatusCode.UNIMPLEMENTED:
                if not state.unsupported:
                    state.unsupported = True
                    log.info(
                        "the daemon at {target} has no live routes ({error}): containers of "
                        "network {network} keep the routes they joined with",
                        target=link.target,
                        error=error.details,
                        network=network.id[:12],
                    )
                return
            log.warn(
                "cannot watch the routes of network {network} at {target}: {error}",
                network=network.id[:12],
                target=link.target,
                error=error,
            )
            again()

        d.addCallbacks(opened, failed)

    def _rewatch(self, network: PluginNetwork, client: object) -> None:
        state = self._live.get(network.id)
        if state is not None:
            state.rewatch = None
        link = network.link
        if (
            state is not None
            and state.watch is None
            and self.networks.get(network.id) is network
            and link is not None
            and link.connected
            and link.client is client
        ):
            self._watch_routes(network)

    def _routes_update(self, network_id: str, update: teleroute_pb2.RoutesUpdate) -> None:
        state = self._live.get(network_id)
        if state is None:
            return
        try:
            routes = [n for n in (netip.decode_network(r) for r in update.routes) if n]
            via = {
                4: str(netip.decode_addr(update.via_ip_v4) or ""),
                6: str(netip.decode_addr(update.via_ip_v6) or ""),
            }
        except ValueError as e:
            log.warn("a malformed routes update for network {id}: {error}", id=network_id, error=e)
            return
        if state.routes == routes and state.via == via and not state.resync:
            return
        state.resync = False
        state.routes, state.via = routes, via
        state.vias.update(v for v in via.values() if v)
        log.info(
            "routes of network {network}: {routes} via {via}",
            network=network_id[:12],
            routes=[str(n) for n in routes],
            via=" ".join(v for v in via.values() if v) or "-",
        )
        self._resync_routes(network_id)

    def _resync_routes(self, network_id: str) -> None:
        """Bring every container of the network to the daemon's routes (soon)."""
        state = self._live.get(network_id)
        if state is None or state.routes is None:
            return
        for endpoint in list(self.endpoints.values()):
            if endpoint.network == network_id and not endpoint.daemon:
                self._sync_later(state, endpoint.id, 0)

    # -- bringing one container to the set

    def _sync_later(self, state: NetworkRoutes, endpoint_id: str, delay: float) -> None:
        call = state.calls.get(endpoint_id)
        if call is not None and call.active():
            if call.getTime() <= self._clock.seconds() + delay:
                return
            call.cancel()
        state.calls[endpoint_id] = self._clock.callLater(
            delay, self._sync_now, state, endpoint_id, 0
        )

    def _sync_now(self, state: NetworkRoutes, endpoint_id: str, attempt: int) -> None:
        state.calls.pop(endpoint_id, None)
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None or state is not self._live.get(endpoint.network):
            return
        if endpoint_id in state.running:
            state.again.add(endpoint_id)
            return
        settles = endpoint.since + JOIN_GRACE - self._clock.seconds()
        if endpoint_id in self._busy or endpoint.joining or settles > 0:
            # A Docker call on it is under way, or Docker is still installing its routes.
            self._sync_later(state, endpoint_id, max(settles, JOIN_GRACE))
            return
        if not endpoint.joined or endpoint.pending or endpoint.daemon or state.routes is None:
            return
        state.running.add(endpoint_id)
        d = defer.ensureDeferred(self._sync(state, endpoint))

        def failed(failure: Failure) -> None:
            failure.trap(PlumbingError)
            if endpoint_id not in self.endpoints:
                return  # the container left meanwhile
            if attempt < RETRIES:
                state.calls[endpoint_id] = self._clock.callLater(
                    RETRY_DELAY, self._sync_now, state, endpoint_id, attempt + 1
                )
                return
            log.warn(
                "cannot bring the routes of endpoint {id} up to date: {error}",
                id=endpoint_id[:12],
                error=failure.value,
            )

        def done(_: object) -> None:
            state.running.discard(endpoint_id)
            if endpoint_id in state.again:
                state.again.discard(endpoint_id)
                self._sync_later(state, endpoint_id, 0)

        d.addErrback(failed)
        d.addErrback(lambda f: log.failure("updating the routes of {id}", f, id=endpoint_id[:12]))
        d.addBoth(done)

    async def _sync(self, state: NetworkRoutes, endpoint: PluginEndpoint) -> None:
        io = self._container_routes
        assert io is not None and state.routes is not None
        routed = list(state.routes)
        netns = await io.namespace(endpoint.sandbox, sorted(endpoint.addresses()))
        table = await io.routes(netns)
        own = [r for r in table if r.connected]
        ours = {
            r.destination: r.gateway
            for r in table
            if r.gateway in state.vias and r.destination.prefixlen > 0
        }
        removed, added = [], []
        for destination, gateway in ours.items():
            if destination not in routed:
                await io.delete(netns, str(destination), gateway)
                removed.append(str(destination))
        for subnet in routed:
            via = state.via.get(subnet.version, "")
            if not via or ours.get(subnet) == via:
                continue
            shadowed = [
                r
                for r in own
                if r.destination.version == subnet.version and subnet.overlaps(r.destination)
            ]
            if shadowed:
                if (endpoint.id, str(subnet)) not in state.refused:
                    state.refused.add((endpoint.id, str(subnet)))
                    log.warn(
                        "not routing {subnet} in the container of endpoint {id} ({netns}): "
                        "it overlaps the container's own network {own} (dev {dev})",
                        subnet=str(subnet),
                        id=endpoint.id[:12],
                        netns=netns,
                        own=str(shadowed[0].destination),
                        dev=shadowed[0].device,
                    )
                continue
            await io.replace(netns, str(subnet), via)
            added.append(str(subnet))
        if added or removed:
            log.info(
                "routes of endpoint {id} ({netns}): added {added}, removed {removed}",
                id=endpoint.id[:12],
                netns=netns,
                added=added,
                removed=removed,
            )
