# -*- test-case-name: tests.test_routeplugin -*-
"""
Docker's endpoint calls on a teleroute network: ``EndpointCallsMixin``.

CreateEndpoint, Join, Leave and DeleteEndpoint, forwarded to the network's daemon, with what
they tell the reconciliation (an address or an interface Docker or the daemon gave to a new
endpoint frees the endpoint that had it) and the daemon's own endpoint kept pending while
the daemon is away. This part of ``NetworkDriver`` builds on ``ReconcileMixin`` and
``DaemonEndpointMixin``.

It relies on ``DriverBase``'s ``networks``, ``endpoints``, ``_busy``, ``_clock``, ``_save``,
``_network`` and ``_call``.
"""

from __future__ import annotations

import grpc
from twisted.logger import Logger

from telenet.core.dockerplugin import JSONObject, PluginError, field
from telenet.core.gocompat import parse_bool
from telenet.netplugin.daemonendpoint import DaemonEndpointMixin
from telenet.netplugin.options import _parse_cidr, join_answer
from telenet.netplugin.reconcile import ReconcileMixin
from telenet.netplugin.records import PluginEndpoint, PluginNetwork
from telenet.netplugin.rejoin import RejoinMixin
from telenet.teleroute.client import grpc_target
from telenet.teleroute.interfaces import TelerouteError
from telenet.teleroute.proto import teleroute_pb2

log = Logger()

StatusCode = grpc.StatusCode
_SWALLOWED_ON_TEARDOWN = {StatusCode.CANCELLED, StatusCode.UNAVAILABLE}
#: The daemon is not there (yet): its own endpoint is then set up when it connects.
_DAEMON_AWAY = {StatusCode.CANCELLED, StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED}


class EndpointCallsMixin(RejoinMixin, ReconcileMixin, DaemonEndpointMixin):
    """Docker's CreateEndpoint, Join, Leave, DeleteEndpoint and EndpointOperInfo."""

    async def create_endpoint(self, body: JSONObject) -> JSONObject:
        network = self._network(body)
        endpoint_id = field(body, "EndpointID", str)
        with self._call_on(endpoint_id):
            return await self._create_endpoint(body, network, endpoint_id)

    async def _create_endpoint(
        self, body: JSONObject, network: PluginNetwork, endpoint_id: str
    ) -> JSONObject:
        interface = field(body, "Interface", dict, required=False) or {}
        endpoint = PluginEndpoint(
            id=endpoint_id,
            network=network.id,
            ipv4=_parse_cidr(interface.get("Address")),
            ipv6=_parse_cidr(interface.get("AddressIPv6")),
        )
        options = field(body, "Options", dict, required=False) or {}
        daemon_option = options.get("daemon")
        if isinstance(daemon_option, str):
            try:
                endpoint.daemon = parse_bool(daemon_option)
            except ValueError:
                raise PluginError(
                    f'invalid value for option "daemon": "{daemon_option}" is not a boolean'
                ) from None
        try:
            # The daemon's own endpoint may come while its container is (re)starting: one
            # attempt, then it waits for the daemon (see _settle).
            await self._call(
                network, "create_endpoint", endpoint.request(), patient=not endpoint.daemon
            )
        except TelerouteError as e:
            known = self.endpoints.get(endpoint_id)
            if (
                e.code == StatusCode.ALREADY_EXISTS
                and known is not None
                and known.same_as(endpoint)
            ):
                endpoint = known
            elif endpoint.daemon and e.code in _DAEMON_AWAY:
                endpoint.pending = True
                log.warn(
                    "the daemon at {target} is away ({error}): its own endpoint {id} is set "
                    "up when it connects",
                    target=grpc_target(network.address.host, network.address.port),
                    error=e,
                    id=endpoint_id[:12],
                )
            else:
                raise PluginError(
                    f"unable to create endpoint {endpoint_id[:12]}: {e.details}"
                ) from None
        if endpoint is not self.endpoints.get(endpoint_id):
            endpoint.since = self._clock.seconds()
        # Docker gives an address to one live endpoint of a network only: an endpoint we
        # keep with that address was deleted while we could not hear it.
        taken = endpoint.addresses()
        for other in list(self.endpoints.values()):
            if (
                other.id != endpoint_id
                and other.network == network.id
                and other.id not in self._busy
                and other.addresses() & taken
            ):
                self._drop(other, f"Docker gave its address to endpoint {endpoint_id[:12]}")
        self.endpoints[endpoint_id] = endpoint
        await self._save()
        self._schedule_sweep()
        log.info(
            "created endpoint {id} ({addresses}{daemon}) on network {network}",
            id=endpoint_id[:12],
            addresses=" ".join(filter(None, (endpoint.ipv4, endpoint.ipv6))),
            daemon=", the daemon's" if endpoint.daemon else "",
            network=network.id[:12],
        )
        return {}

    async def join(self, body: JSONObject) -> JSONObject:
        network = self._network(body)
        endpoint_id = field(body, "EndpointID", str)
        with self._call_on(endpoint_id):
            return await self._join(body, network, endpoint_id)

    async def _join(self, body: JSONObject, network: PluginNetwork, endpoint_id: str) -> JSONObject:
        endpoint = self.endpoints.get(endpoint_id)
        sandbox = field(body, "SandboxKey", str, required=False) or ""
        if endpoint is not None and endpoint.pending:
            endpoint.sandbox = sandbox
            self._joined(endpoint, "")
            endpoint.joining = True
            try:
                if network.settling is not None:
                    # A reconnection is setting pending endpoints up right now.
                    await network.settling
                if not endpoint.pending or not await self._realize(network, endpoint):
                    # No interface through Docker: either the daemon set it up in its own
                    # netns just now, or it is away and this happens once it connects.
                    await self._save()
                    return {"StaticRoutes": [], "DisableGatewayService": False}
            finally:
                endpoint.joining = False
        request = teleroute_pb2.EndpointIdentifier(id=endpoint_id)
        try:
            response = await self._call(network, "join", request)
        except TelerouteError as e:
            raise PluginError(f"unable to join endpoint {endpoint_id[:12]}: {e.details}") from None
        answer = join_answer(response)
        if endpoint is None:
            # Docker joins only what it made: keep it, though its making went unrecorded.
            endpoint = self.endpoints[endpoint_id] = PluginEndpoint(
                id=endpoint_id, network=network.id
            )
        interface = "" if response.interface_in_daemon_netns else response.interface_src_name
        for other in list(self.endpoints.values()):
            if (
                interface
                and other.id != endpoint_id
                and other.interface == interface
                and other.id not in self._busy
            ):
                self._drop(other, f"the daemon gave its interface to endpoint {endpoint_id[:12]}")
        endpoint.sandbox = sandbox or endpoint.sandbox
        self._joined(endpoint, interface)
        self._workload_joined(endpoint)
        await self._save()
        log.info(
            "endpoint {id} joins with {src} and routes {routes}",
            id=endpoint_id[:12],
            src=response.interface_src_name,
            routes=[r["Destination"] for r in answer["StaticRoutes"]],
        )
        return answer

    def _joined(self, endpoint: PluginEndpoint, interface: str) -> None:
        endpoint.joined = True
        endpoint.interface = interface
        endpoint.since = self._clock.seconds()

    async def leave(self, body: JSONObject) -> JSONObject:
        try:
            with self._call_on(field(body, "EndpointID", str)):
                await self._teardown(body, "leave", "Leave")
        finally:
            # DeleteEndpoint follows; should it never reach us, the look finds the endpoint.
            self._schedule_sweep()
        return {}

    async def delete_endpoint(self, body: JSONObject) -> JSONObject:
        network_id = field(body, "NetworkID", str)
        endpoint_id = field(body, "EndpointID", str)
        with self._call_on(endpoint_id):
            # Docker deletes the endpoint whatever we answer (it only logs a driver's error):
            # forget it first, so that no failure below, nor our death, keeps it.
            endpoint = self.endpoints.get(endpoint_id)
            if endpoint is not None and endpoint.network == network_id:
                del self.endpoints[endpoint_id]
                await self._save()
                await self._release_rejoined(endpoint)
            await self._teardown(body, "remove_endpoint", "DeleteEndpoint")
        return {}

    async def _teardown(self, body: JSONObject, method: str, call: str) -> str:
        """
        Leave or DeleteEndpoint: tell the daemon, but let the container go even if it is gone.

        CANCELLED and UNAVAILABLE (a daemon that went away) are swallowed, as in the Go plug-in;
        so is NOT_FOUND, which a daemon that restarted says of endpoints made before.
        """
        network_id = field(body, "NetworkID", str)
        endpoint_id = field(body, "EndpointID", str)
        network = self.networks.get(network_id)
        if network is None:
            log.warn(
                "{call} for endpoint {id} of unknown network {network}: nothing to do",
                call=call,
                id=endpoint_id[:12],
                network=network_id[:12],
            )
            return endpoint_id
        request = teleroute_pb2.EndpointIdentifier(id=endpoint_id)
        try:
            await self._call(network, method, request, patient=False)
        except TelerouteError as e:
            if e.code in _SWALLOWED_ON_TEARDOWN or e.code == StatusCode.NOT_FOUND:
                log.info(
                    "{call} of endpoint {id}: daemon said {error}; done anyway",
                    call=call,
                    id=endpoint_id[:12],
                    error=e,
                )
                return endpoint_id
            log.error(
                "{call} of endpoint {id} failed: {error}", call=call, id=endpoint_id[:12], error=e
            )
            raise PluginError(
                f"unable to {call} endpoint {endpoint_id[:12]}: {e.details}"
            ) from None
        return endpoint_id

    def endpoint_oper_info(self, body: JSONObject) -> JSONObject:
        return {"Value": {}}
