# -*- test-case-name: tests.test_routeplugin -*-
"""
What every part of the network driver shares: ``DriverBase``.

``NetworkDriver`` is put together from parts (``telenet.netplugin.driver`` and the mixins it
inherits); this base holds the state they all use (the networks and endpoints, the store,
the clock, the call timeout), saving and restoring that state, and reaching a network's
daemon: its ``DaemonLink``, made on demand, and one daemon call with the call timeout.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from telenet.core import netip
from telenet.core.dockerplugin import JSONObject, PluginError, field
from telenet.core.interfaces import INetlink, IStateStore
from telenet.netplugin.interfaces import IEndpointPlumbing
from telenet.netplugin.link import CALL_TIMEOUT, RETRY_POLICY, DaemonLink, own_host_pid
from telenet.netplugin.records import PluginEndpoint, PluginNetwork
from telenet.netplugin.sweep import EndpointSweep
from telenet.teleroute.client import grpc_target
from telenet.teleroute.interfaces import ClientFactory, ITelerouteClient, TelerouteError
from telenet.teleroute.proto import teleroute_pb2

log = Logger()

StatusCode = grpc.StatusCode
Runner = Callable[..., "defer.Deferred[Any]"]


def _run_now(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f, *args)


class DriverBase:
    """
    The network driver's shared state, its persistence and its daemon calls.

    ``_on_connect`` (a daemon that (re)connected) is ``DaemonEndpointMixin``'s.
    """

    def __init__(
        self,
        client_factory: ClientFactory,
        store: IStateStore,
        clock: IReactorTime,
        run_blocking: Runner = _run_now,
        pid: int | None = None,
        retry_policy: Callable[[int], float] = RETRY_POLICY,
        timeout: float = CALL_TIMEOUT,
        plumbing: IEndpointPlumbing | None = None,
        netlink: INetlink | None = None,
    ) -> None:
        self._factory = client_factory
        self._plumbing = plumbing
        #: Our own network namespace, where Docker puts back the interfaces of left endpoints.
        self._netlink = netlink
        self._sweep = EndpointSweep(clock)
        self._sweep_call: IDelayedCall | None = None
        self._sweeping = False
        #: Endpoint ids with a Docker call in flight (a sweep leaves them alone).
        self._busy: Counter[str] = Counter()
        self._store = store
        self._clock = clock
        self._run_blocking = run_blocking
        self._pid = pid if pid is not None else own_host_pid()
        self._retry_policy = retry_policy
        self._timeout = timeout
        self.networks: dict[str, PluginNetwork] = {}
        self.endpoints: dict[str, PluginEndpoint] = {}

    # -- persistence

    def restore(self) -> None:
        """Load the networks and endpoints an earlier run saved (unreadable ones are skipped)."""
        data = self._store.load()
        for network_id, entry in (data.get("networks") or {}).items():
            try:
                self.networks[network_id] = PluginNetwork.from_json(network_id, entry)
            except (KeyError, TypeError, ValueError) as e:
                log.error("skipping unreadable saved network {id}: {error}", id=network_id, error=e)
        for endpoint_id, entry in (data.get("endpoints") or {}).items():
            try:
                endpoint = PluginEndpoint.from_json(endpoint_id, entry)
            except (KeyError, TypeError, ValueError, PluginError) as e:
                log.error(
                    "skipping unreadable saved endpoint {id}: {error}", id=endpoint_id, error=e
                )
                continue
            if endpoint.network in self.networks:
                endpoint.since = self._clock.seconds()
                self.endpoints[endpoint_id] = endpoint
        log.info(
            "restored {networks} networks and {endpoints} endpoints",
            networks=len(self.networks),
            endpoints=len(self.endpoints),
        )

    def _save(self) -> defer.Deferred[None]:
        snapshot = {
            "networks": {i: n.to_json() for i, n in sorted(self.networks.items())},
            "endpoints": {i: e.to_json() for i, e in sorted(self.endpoints.items())},
        }
        return self._run_blocking(self._store.save, snapshot)

    def _link(self, network: PluginNetwork) -> DaemonLink:
        def request() -> teleroute_pb2.ConnectRequest:
            return teleroute_pb2.ConnectRequest(
                gateways=[netip.encode_prefix(ipaddress.ip_interface(g)) for g in network.gateways],
                pid=self._pid,
            )

        return DaemonLink(
            self._factory,
            network.address,
            request,
            self._clock,
            policy=self._retry_policy,
            timeout=self._timeout,
            on_connect=lambda: self._on_connect(network),
        )

    def _network(self, body: JSONObject) -> PluginNetwork:
        network_id = field(body, "NetworkID", str)
        network = self.networks.get(network_id)
        if network is None:
            raise PluginError(f'network "{network_id}" not found')
        return network

    async def _client(self, network: PluginNetwork, patient: bool = True) -> ITelerouteClient:
        if network.link is None:
            network.link = self._link(network)
            network.link.keep_connected()
        client = await network.link.ready(self._timeout, patient=patient)
        if network.settling is not None:
            await network.settling
        return client

    async def _call(
        self, network: PluginNetwork, method: str, request: Any, patient: bool = True
    ) -> Any:
        """One daemon call with the call timeout; failures raise ``TelerouteError``."""
        client = await self._client(network, patient)
        d = getattr(client, method)(request, self._timeout)
        d.addTimeout(self._timeout, self._clock)
        try:
            return await d
        except defer.TimeoutError:
            raise TelerouteError(
                StatusCode.DEADLINE_EXCEEDED,
                f"{grpc_target(network.address.host, network.address.port)} "
                f"did not answer {method} within {self._timeout:g}s",
            ) from None

    if TYPE_CHECKING:

        def _on_connect(self, network: PluginNetwork) -> None: ...
