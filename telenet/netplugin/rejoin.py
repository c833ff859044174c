# -*- test-case-name: tests.test_rejoin -*-
"""
Workloads that outlive their daemon: ``RejoinMixin``.

A restart of the daemon container (a crash, ``docker restart``, a new image) replaces its
network namespace. Every running workload's teleroute interface is one end of a veth pair
whose other end was there, so the kernel deletes it; Docker still lists the workload on the
network and will not tell the plug-in anything. This part of ``NetworkDriver`` gives each
such workload its interface back, once the daemon is connected again and its own endpoint
is set up (``DaemonEndpointMixin``, whose ``settling`` it waits for: a workload's Join needs
the daemon's address as next hop):

1. While a workload runs, its namespace is *identified* (``IWorkloadPlumbing.identify``: the
   namespace holding the endpoint's address, ``net:[inode]``, and the interface's name in
   it), a few seconds after Docker's Join, and saved. Once the interface is gone, nothing
   else leads a managed plug-in (which cannot see Docker's sandbox files) to it.
2. At every (re)connection of a network's daemon link, each joined workload endpoint is
   *looked at*: still holding its address, nothing to do (a daemon that did not restart);
   namespace gone, nothing to do (Docker will Leave and delete it); else it is *re-created*
   on the daemon (CreateEndpoint with its saved addresses, after a RemoveEndpoint if the
   daemon still knew it, then Join), and the new veth end is *attached* in the workload's
   namespace with the old name, addresses, up, with the Join's routes.

How the plug-in knows the daemon lost the endpoints: it does not ask; the workload's own
namespace says its interface is gone. That needs nothing new in the protocol, so it works
with a Go daemon too.

Docker takes the interface back at Leave by the name it gave it and renames it to the veth
end its Join handed over (``interface``), which is not the name this daemon gave the new
pair. DeleteEndpoint of a rejoined endpoint therefore deletes that link, so the daemon makes
a new pair for the next endpoint with that address instead of naming one that is not there.

Open connections through the old daemon are lost with its namespace (its connection
tracking, NAT and proxies); new ones work as soon as the interface is back.
"""

from __future__ import annotations

from typing import Any

import grpc
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from telenet.core.interfaces import LinkNotFound
from telenet.netplugin.interfaces import GONE, PRESENT, IWorkloadPlumbing
from telenet.netplugin.options import static_routes
from telenet.netplugin.plumbing import PlumbingError
from telenet.netplugin.reconcile import ReconcileMixin
from telenet.netplugin.records import PluginEndpoint, PluginNetwork
from telenet.teleroute.interfaces import TelerouteError
from telenet.teleroute.proto import teleroute_pb2

log = Logger()

StatusCode = grpc.StatusCode

#: Seconds after Docker's Join (or a restore) at which the workload's namespace is looked
#: for: the container's process starts and gets the interface a moment after the Join.
IDENTIFY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
#: Seconds before going over a network's workloads again when the daemon refused one (its
#: own endpoint may come later: a daemon container replaced rather than restarted).
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0)


class RejoinMixin(ReconcileMixin):
    """Identifying workloads' namespaces, and giving them an interface after a daemon restart."""

    def __init__(self, *args: Any, workloads: IWorkloadPlumbing | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._workloads = workloads
        self._identifying: dict[str, IDelayedCall] = {}
        #: The rejoin pass under way per network, and networks to go over again after it.
        self._rejoining: dict[str, defer.Deferred[Any]] = {}
        self._rejoin_again: set[str] = set()
        self._rejoin_retry: dict[str, tuple[int, IDelayedCall]] = {}

    # -- 1. where each workload runs

    def restore(self) -> None:
        super().restore()
        for endpoint in self.endpoints.values():
            if self._workload(endpoint) and not endpoint.netns:
                self._identify_later(endpoint.id, 0)

    def _workload_joined(self, endpoint: PluginEndpoint) -> None:
        """Docker joined a workload (a new container, maybe on an old endpoint): find it anew."""
        endpoint.netns = endpoint.name = ""
        endpoint.rejoined = False
        if self._workloads is not None and not endpoint.daemon:
            self._identify_later(endpoint.id, 0)

    def _workload(self, endpoint: PluginEndpoint) -> bool:
        return (
            self._workloads is not None
            and endpoint.joined
            and not endpoint.daemon
            and not endpoint.pending
            and bool(endpoint.addresses())
        )

    def _identify_later(self, endpoint_id: str, attempt: int) -> None:
        old = self._identifying.pop(endpoint_id, None)
        if old is not None and old.active():
            old.cancel()
        if attempt >= len(IDENTIFY_DELAYS):
            log.warn(
                "cannot find the network namespace of endpoint {id}: its interface will not "
                "be given back should the daemon restart",
                id=endpoint_id[:12],
            )
            return

        def run() -> None:
            del self._identifying[endpoint_id]
            d = defer.Deferred.fromCoroutine(self._identify(endpoint_id, attempt))
            d.addErrback(lambda f: log.failure("identifying a workload failed", f))

        self._identifying[endpoint_id] = self._clock.callLater(IDENTIFY_DELAYS[attempt], run)

    async def _identify(self, endpoint_id: str, attempt: int) -> bool:
        """Find and save the namespace of a joined workload; True once it is known."""
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None or not self._workload(endpoint):
            return False
        if endpoint.netns:
            return True
        assert self._workloads is not None
        found = await self._workloads.identify(sorted(endpoint.addresses()))
        if self.endpoints.get(endpoint_id) is not endpoint:
            return False
        if found is None:
            if attempt >= 0:
                self._identify_later(endpoint_id, attempt + 1)
            return False
        endpoint.netns, endpoint.name = found
        await self._save()
        log.info(
            "endpoint {id} runs in {netns} as {name}",
            id=endpoint_id[:12],
            netns=endpoint.netns,
            name=endpoint.name or "?",
        )
        return True

    # -- 2. a (re)connected daemon

    def _on_connect(self, network: PluginNetwork) -> None:
        super()._on_connect(network)
        if self._workloads is None:
            return
        settling = network.settling
        if settling is None:
            self._start_rejoin(network)
            return

        def after(result: object) -> object:
            self._start_rejoin(network)
            return result

        # The daemon's own endpoint first: the workloads' routes go through its address.
        settling.addBoth(after)

    def _start_rejoin(self, network: PluginNetwork, attempt: int = 0) -> None:
        retry = self._rejoin_retry.pop(network.id, None)
        if retry is not None and retry[1].active():
            retry[1].cancel()
        if network.id in self._rejoining:
            self._rejoin_again.add(network.id)
            return
        d = defer.Deferred.fromCoroutine(self._rejoin_all(network))

        def failed(f: Failure) -> bool:
            log.failure("giving workloads their interface back failed", f)
            return False

        d.addErrback(failed)
        self._rejoining[network.id] = d

        def done(refused: bool) -> None:
            del self._rejoining[network.id]
            current = self.networks.get(network.id) is network
            if network.id in self._rejoin_again:
                self._rejoin_again.discard(network.id)
                if current:
                    self._start_rejoin(network)
            elif refused and current and attempt < len(RETRY_DELAYS):
                call = self._clock.callLater(
                    RETRY_DELAYS[attempt], self._retry_rejoin, network, attempt + 1
                )
                self._rejoin_retry[network.id] = (attempt + 1, call)

        d.addCallback(done)

    def _retry_rejoin(self, network: PluginNetwork, attempt: int) -> None:
        self._rejoin_retry.pop(network.id, None)
        if network.link is not None and network.link.connected:
            self._start_rejoin(network, attempt)

    async def _rejoin_all(self, network: PluginNetwork) -> bool:
        """One pass over the network's workloads; True if the daemon refused one."""
        refused = False
        for endpoint in [e for e in self.endpoints.values() if e.network == network.id]:
            if self._workload(endpoint) and endpoint.id not in self._busy:
                with self._call_on(endpoint.id):
                    refused = not await self._rejoin(network, endpoint) or refused
        return refused

    def _still(self, network: PluginNetwork, endpoint: PluginEndpoint) -> bool:
        return (
            self.endpoints.get(endpoint.id) is endpoint
            and self.networks.get(network.id) is network
            and network.link is not None
            and network.link.connected
        )

    async def _rejoin(self, network: PluginNetwork, endpoint: PluginEndpoint) -> bool:
        """Give one workload its interface back if it lost it; False if the daemon refused."""
        assert self._workloads is not None
        addresses = sorted(endpoint.addresses())
        try:
            if not endpoint.netns:
                await self._identify(endpoint.id, -1)
            state = await self._workloads.look(endpoint.sandbox, endpoint.netns, addresses)
        except Exception as e:
            log.error(
                "cannot look at endpoint {id}'s workload: {error}", id=endpoint.id[:12], error=e
            )
            return True
        if state == PRESENT or not self._still(network, endpoint):
            return True
        if state == GONE:
            log.info(
                "endpoint {id}: its workload's namespace ({netns}) is not visible (stopped, "
                "or never identified); nothing to give back",
                id=endpoint.id[:12],
                netns=endpoint.netns or "never identified",
            )
            return True
        try:
            response = await self._recreate(network, endpoint)
        except TelerouteError as e:
            log.warn(
                "cannot re-create endpoint {id} on the daemon: {error}; trying again",
                id=endpoint.id[:12],
                error=e,
            )
            return False
        if self.endpoints.get(endpoint.id) is not endpoint:
            # Docker deleted it meanwhile; its DeleteEndpoint may have reached the daemon first.
            await self._forget_on_daemon(network, endpoint)
            return True
        routes = [(r["Destination"], r["NextHop"]) for r in static_routes(response)]
        # Saved before the move: DeleteEndpoint must clean up after it even if we die now.
        endpoint.rejoined = True
        await self._save()
        try:
            name = await self._workloads.attach(
                response.interface_src_name,
                endpoint.sandbox,
                endpoint.netns,
                endpoint.name,
                [c for c in (endpoint.ipv4, endpoint.ipv6) if c],
                routes,
            )
        except PlumbingError as e:
            log.error(
                "cannot give endpoint {id} its interface back: {error}; reconnect the workload "
                "(docker network disconnect -f, then connect)",
                id=endpoint.id[:12],
                error=e,
            )
            return True
        endpoint.name = name
        await self._save()
        log.info(
            "gave endpoint {id} its interface {name} ({addresses}) back with routes {routes}",
            id=endpoint.id[:12],
            name=name,
            addresses=" ".join(addresses),
            routes=[d for d, _ in routes],
        )
        return True

    async def _recreate(
        self, network: PluginNetwork, endpoint: PluginEndpoint
    ) -> teleroute_pb2.JoinResponse:
        request = teleroute_pb2.EndpointIdentifier(id=endpoint.id)
        try:
            await self._call(network, "create_endpoint", endpoint.request(), patient=False)
        except TelerouteError as e:
            if e.code != StatusCode.ALREADY_EXISTS:
                raise
            # The daemon kept the endpoint but its pair is gone: a new pair.
            await self._call(network, "remove_endpoint", request, patient=False)
            await self._call(network, "create_endpoint", endpoint.request(), patient=False)
        response: teleroute_pb2.JoinResponse = await self._call(
            network, "join", request, patient=False
        )
        return response

    async def _forget_on_daemon(self, network: PluginNetwork, endpoint: PluginEndpoint) -> None:
        request = teleroute_pb2.EndpointIdentifier(id=endpoint.id)
        try:
            await self._call(network, "remove_endpoint", request, patient=False)
        except TelerouteError as e:
            log.info(
                "the daemon did not forget endpoint {id}: {error}", id=endpoint.id[:12], error=e
            )

    # -- Docker let go of a rejoined endpoint

    def _drop(self, endpoint: PluginEndpoint, why: str) -> None:
        super()._drop(endpoint, why)
        if endpoint.rejoined:
            d = defer.ensureDeferred(self._release_rejoined(endpoint))
            d.addErrback(lambda f: log.failure("releasing a rejoined endpoint failed", f))

    async def _release_rejoined(self, endpoint: PluginEndpoint | None) -> None:
        """Delete the link Docker put back at Leave (see the module's docstring)."""
        if endpoint is None or not endpoint.rejoined or not endpoint.interface:
            return
        if self._netlink is None or any(
            other.interface == endpoint.interface
            for other in self.endpoints.values()
            if other is not endpoint
        ):
            return  # another endpoint's now: not ours to delete
        try:
            await self._netlink.delete_link(endpoint.interface)
        except LinkNotFound:
            pass
        except Exception as e:
            log.warn(
                "cannot delete {link} that endpoint {id} left: {error}",
                link=endpoint.interface,
                id=endpoint.id[:12],
                error=e,
            )
