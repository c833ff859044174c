# -*- test-case-name: tests.test_routeplugin -*-
"""
``NetworkDriver``: Docker's NetworkDriver API for teleroute networks.

The driver is assembled from parts, each in its own module, so that no part grows past what
one reads at once: ``DriverBase`` (state, persistence, daemon calls), ``ReconcileMixin``
(endpoints Docker let go), ``DaemonEndpointMixin`` (the daemon's own pending endpoint) and
``EndpointCallsMixin`` (the endpoint calls) and ``LiveRoutesMixin`` (running containers'
routes kept to the daemon's). This module adds the API's routes, the network
calls, and starting and stopping.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from telenet.core import dockerplugin
from telenet.core.dockerplugin import JSONObject, PluginError, field
from telenet.netplugin.liveroutes import LiveRoutesMixin
from telenet.netplugin.options import parse_gateways, parse_network_options
from telenet.netplugin.records import PluginNetwork
from telenet.teleroute.interfaces import TelerouteError

log = Logger()


class NetworkDriver(LiveRoutesMixin):
    """
    Docker's NetworkDriver calls for teleroute networks, over an ``ITelerouteClient`` factory.

    Every change is saved (through ``run_blocking``) before Docker hears it succeeded.
    """

    def start(self) -> None:
        """
        Reconnect the restored networks to their daemons (in the background), and look for
        restored endpoints that Docker let go while we were down.
        """
        for network in self.networks.values():
            if network.link is None:
                network.link = self._link(network)
                network.link.keep_connected()
        if self.endpoints:
            self._schedule_sweep()

    def stop(self) -> defer.Deferred[Any]:
        """Close every daemon connection (the saved state stays for the next start)."""
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self._sweep_call = None
        self._stop_live_routes()
        closing = []
        for network in self.networks.values():
            if network.link is not None:
                closing.append(network.link.close())
                network.link = None
        return defer.gatherResults(closing, consumeErrors=True)

    # -- the NetworkDriver API

    def handlers(self) -> dict[str, dockerplugin.Handler]:
        noop: dockerplugin.Handler = lambda body: {}  # noqa: E731
        return {
            "/NetworkDriver.GetCapabilities": self.get_capabilities,
            "/NetworkDriver.CreateNetwork": self.create_network,
            "/NetworkDriver.DeleteNetwork": self.delete_network,
            "/NetworkDriver.CreateEndpoint": self.create_endpoint,
            "/NetworkDriver.EndpointOperInfo": self.endpoint_oper_info,
            "/NetworkDriver.DeleteEndpoint": self.delete_endpoint,
            "/NetworkDriver.Join": self.join,
            "/NetworkDriver.Leave": self.leave,
            "/NetworkDriver.DiscoverNew": noop,
            "/NetworkDriver.DiscoverDelete": noop,
            "/NetworkDriver.ProgramExternalConnectivity": noop,
            "/NetworkDriver.RevokeExternalConnectivity": noop,
            "/NetworkDriver.AllocateNetwork": noop,
            "/NetworkDriver.FreeNetwork": noop,
        }

    def get_capabilities(self, body: JSONObject) -> JSONObject:
        return {"Scope": "local", "ConnectivityScope": "local"}

    async def create_network(self, body: JSONObject) -> JSONObject:
        network_id = field(body, "NetworkID", str)
        gateways = parse_gateways(body)
        address = parse_network_options(field(body, "Options", dict, required=False) or {})
        old = self.networks.pop(network_id, None)
        if old is not None and old.link is not None:
            await old.link.close()
        network = PluginNetwork(id=network_id, address=address, gateways=gateways)
        link = network.link = self._link(network)
        try:
            await link.establish()
        except TelerouteError as e:
            await link.close()
            raise PluginError(
                f"unable to connect to the teleroute service at {link.target}: {e.details}"
            ) from None
        self.networks[network_id] = network
        await self._save()
        log.info(
            "created network {id} for the daemon at {target}",
            id=network_id[:12],
            target=link.target,
        )
        return {}

    async def delete_network(self, body: JSONObject) -> JSONObject:
        network_id = field(body, "NetworkID", str)
        network = self.networks.pop(network_id, None)
        if network is None:
            return {}
        for endpoint_id in [e.id for e in self.endpoints.values() if e.network == network_id]:
            del self.endpoints[endpoint_id]
        await self._save()
        if network.link is not None:
            try:
                await network.link.close()
            except Exception:
                log.failure("closing the connection of network {id} failed", id=network_id[:12])
        log.info("deleted network {id}", id=network_id[:12])
        return {}
