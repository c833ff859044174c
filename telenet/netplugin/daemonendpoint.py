# -*- test-case-name: tests.test_routeplugin -*-
"""
The daemon container's own endpoint when the daemon was away: ``DaemonEndpointMixin``.

``docker restart`` of the daemon container makes Docker create and join the daemon's
endpoint before the daemon runs; the driver keeps it pending, and once the daemon
(re)connects this part of ``NetworkDriver`` creates it on the daemon (``_realize``) and has
its interface set up, by the daemon itself or by ``telenet.netplugin.plumbing``
(``_on_connect``, ``_settle``).

It relies on ``DriverBase``'s ``endpoints``, ``_plumbing``, ``_clock``, ``_timeout`` and
``_save``, and on each network's ``link`` and ``settling``.
"""

from __future__ import annotations

import grpc
from twisted.internet import defer
from twisted.logger import Logger

from telenet.netplugin.driverbase import DriverBase
from telenet.netplugin.plumbing import PlumbingError
from telenet.netplugin.records import PluginEndpoint, PluginNetwork
from telenet.teleroute.interfaces import TelerouteError
from telenet.teleroute.proto import teleroute_pb2

log = Logger()

StatusCode = grpc.StatusCode


class DaemonEndpointMixin(DriverBase):
    """Setting up the daemon's pending endpoint once it is connected."""

    async def _realize(
        self, network: PluginNetwork, endpoint: PluginEndpoint, in_daemon_netns: bool = False
    ) -> bool:
        """Create a pending daemon endpoint on a connected daemon; False if it is still away."""
        if network.link is None or not network.link.connected or network.link.client is None:
            return False
        try:
            d = network.link.client.create_endpoint(
                endpoint.request(in_daemon_netns), self._timeout
            )
            d.addTimeout(self._timeout, self._clock)
            await d
        except TelerouteError as e:
            if e.code != StatusCode.ALREADY_EXISTS:
                log.warn(
                    "the daemon refused its endpoint {id}: {error}", id=endpoint.id[:12], error=e
                )
                return False
        except defer.TimeoutError:
            return False
        endpoint.pending = False
        await self._save()
        return True

    def _on_connect(self, network: PluginNetwork) -> None:
        """A (re)connected daemon: set up its own endpoint if it joined while away."""
        pending = [
            e
            for e in self.endpoints.values()
            if e.network == network.id and e.pending and e.sandbox and not e.joining
        ]
        if not pending or network.settling is not None:
            return

        def done(_: object) -> None:
            network.settling = None

        settling = defer.ensureDeferred(self._settle(network, pending))
        settling.addErrback(lambda f: log.failure("setting up the daemon's endpoint failed", f))
        if not settling.called:
            network.settling = settling
            settling.addBoth(done)

    async def _settle(self, network: PluginNetwork, pending: list[PluginEndpoint]) -> None:
        for endpoint in pending:
            if not endpoint.pending or endpoint.joining:
                continue  # a Join took it meanwhile
            # A telenet daemon sets its interface up itself (it has CAP_NET_ADMIN in its own
            # netns; no plug-in privilege needed); another daemon
            # ignores the request's extension and moves the peer to us, as for Docker.
            if not await self._realize(network, endpoint, in_daemon_netns=True):
                continue
            assert network.link is not None and network.link.client is not None
            try:
                d = network.link.client.join(
                    teleroute_pb2.EndpointIdentifier(id=endpoint.id), self._timeout
                )
                d.addTimeout(self._timeout, self._clock)
                response = await d
                if response.interface_in_daemon_netns:
                    log.info(
                        "the daemon set up its interface {name} ({addresses}) for "
                        "endpoint {id} itself",
                        name=response.interface_src_name,
                        addresses=" ".join(filter(None, (endpoint.ipv4, endpoint.ipv6))),
                        id=endpoint.id[:12],
                    )
                    continue
                if self._plumbing is None:
                    raise PlumbingError("this plug-in cannot configure interfaces itself")
                name = await self._plumbing.adopt(
                    response.interface_src_name,
                    endpoint.sandbox,
                    network.address.host,
                    [c for c in (endpoint.ipv4, endpoint.ipv6) if c],
                )
            except (TelerouteError, PlumbingError, defer.TimeoutError) as e:
                log.error(
                    "cannot give the daemon its interface for endpoint {id} of network "
                    "{network}: {error}; reconnect the daemon container to the network "
                    "(docker network disconnect, then connect --driver-opt daemon=true)",
                    id=endpoint.id[:12],
                    network=network.id[:12],
                    error=e,
                )
                endpoint.pending = True
                await self._save()
                continue
            log.info(
                "gave the daemon its interface {name} ({addresses}) for endpoint {id}",
                name=name,
                addresses=" ".join(filter(None, (endpoint.ipv4, endpoint.ipv6))),
                id=endpoint.id[:12],
            )
