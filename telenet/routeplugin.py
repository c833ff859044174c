# -*- test-case-name: tests.test_routeplugin -*-
"""
``twistd teleroute``: the Docker network plug-in that routes containers through a daemon.

``docker network create -d teleroute -o host=H -o port=P NET`` ties the network to the
Telepresence (or telenet) daemon whose teleroute gRPC service listens on H:P. The plug-in
forwards each endpoint to the daemon: the daemon makes a veth pair, moves one end into our
network namespace (by our host pid), and Docker moves that end into the container as ``tpd-N``
with static routes to the daemon's routed subnets.

Behaviour and messages follow the Go plug-in (``cmd/teleroute``). Beyond it:

- when the daemon's Connect stream ends, the plug-in reconnects with back-off, and a new endpoint
  triggers an immediate attempt, so containers can join again once the daemon is back;
- networks and endpoints are saved in the state directory and restored at start, so a plug-in
  restarted after a crash still serves the networks Docker knows;
- Leave and DeleteEndpoint also succeed when the daemon no longer knows the endpoint (a daemon
  that restarted), so containers can always be detached.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import grpc
from twisted.application import service, strports
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from telenet.core import dockerplugin, netip
from telenet.core.dockerplugin import BadRequest, JSONObject, PluginError, field
from telenet.core.gocompat import parse_bool
from telenet.core.interfaces import INetlink, IStateStore
from telenet.core.threads import state_thread
from telenet.netplugin.plumbing import IEndpointPlumbing, PlumbingError
from telenet.netplugin.sweep import SETTLE, EndpointSweep, Seen
from telenet.teleroute.client import (
    ClientFactory,
    ConnectSession,
    ITelerouteClient,
    TelerouteError,
    grpc_target,
)
from telenet.teleroute.proto import teleroute_pb2

log = Logger()

StatusCode = grpc.StatusCode
Runner = Callable[..., "defer.Deferred[Any]"]

#: Every daemon call gives up after this many seconds (as the Go plug-in does).
CALL_TIMEOUT = 3.0
#: CreateNetwork retries Connect this often, this far apart, while the daemon is UNAVAILABLE.
CONNECT_RETRIES = 20
CONNECT_RETRY_DELAY = 0.05
GENERIC_OPTIONS = "com.docker.network.generic"
_SWALLOWED_ON_TEARDOWN = {StatusCode.CANCELLED, StatusCode.UNAVAILABLE}
#: The daemon is not there (yet): its own endpoint is then set up when it connects.
_DAEMON_AWAY = {StatusCode.CANCELLED, StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED}


# -- request parsing, with the Go plug-in's messages


def _go_type(value: object) -> str:
    """The Go type name ``encoding/json`` gives a decoded value (for error texts)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "float64"
    if isinstance(value, dict):
        return "map[string]interface {}"
    if isinstance(value, list):
        return "[]interface {}"
    if value is None:
        return "<nil>"
    return type(value).__name__


@attrs.frozen
class DaemonAddress:
    host: str
    port: int


def parse_network_options(options: Any) -> DaemonAddress:
    """The daemon's address from ``-o host=H -o port=P`` (``com.docker.network.generic``)."""
    generic = options.get(GENERIC_OPTIONS) if isinstance(options, dict) else None
    if not isinstance(generic, dict):
        raise PluginError(f"network options are missing {GENERIC_OPTIONS}")
    host: str | None = None
    port: int | None = None
    for key in sorted(generic):
        value = generic[key]
        if key not in ("host", "port"):
            raise PluginError(f'illegal option "{key}"')
        if not isinstance(value, str):
            raise PluginError(f'unable to parse "{key}": invalid value type {_go_type(value)}')
        if key == "host":
            try:
                host = str(ipaddress.ip_address(value))
            except ValueError:
                raise PluginError(
                    f'unable to parse "host": "{value}" is not an IPv4 or IPv6 address'
                ) from None
        else:
            if not value.isascii() or not value.isdigit() or not 0 < int(value) <= 65535:
                raise PluginError(
                    f'unable to parse "port": "{value}" is not a port number (1-65535)'
                )
            port = int(value)
    if host is None:
        raise PluginError('option "host" is required')
    if port is None:
        raise PluginError('option "port" is required')
    return DaemonAddress(host, port)


def parse_gateways(body: JSONObject) -> list[str]:
    """The gateways of ``IPv4Data`` and ``IPv6Data``, as CIDR strings (address/length)."""
    gateways = []
    for key, family in (("IPv4Data", 4), ("IPv6Data", 6)):
        for entry in field(body, key, list, required=False) or []:
            if not isinstance(entry, dict):
                raise BadRequest(f"{key} entries must be objects")
            gateway = entry.get("Gateway") or ""
            if not gateway:
                continue
            try:
                if not isinstance(gateway, str):
                    raise ValueError(f"{gateway!r} is not a string")
                parsed = ipaddress.ip_interface(gateway)
                if parsed.version != family:
                    raise ValueError(f"{gateway} is not an IPv{family} address")
            except ValueError as e:
                raise PluginError(f"invalid IPv{family} gateway address: {e}") from None
            gateways.append(str(parsed))
    return gateways


def _parse_cidr(text: Any) -> str:
    """An endpoint's ``Interface.Address`` (address/length) normalised; empty stays empty."""
    if text is None or text == "":
        return ""
    if not isinstance(text, str):
        raise BadRequest(f"interface addresses must be strings, not {_go_type(text)}")
    try:
        return str(ipaddress.ip_interface(text))
    except ValueError as e:
        raise PluginError(f'invalid CIDR "{text}": {e}') from None


def static_routes(response: teleroute_pb2.JoinResponse) -> list[JSONObject]:
    """
    Docker's ``StaticRoutes`` for a Join answer.

    Each route's next hop is that family's ``via_ip_v4``/``via_ip_v6``, else the legacy ``via``;
    with neither, the route is a connected one (RouteType 1, no next hop).
    """
    via_v4 = netip.decode_addr(response.via_ip_v4)
    via_v6 = netip.decode_addr(response.via_ip_v6)
    legacy = netip.decode_addr(response.via)
    routes: list[JSONObject] = []
    for raw in response.routes:
        destination = netip.decode_network(raw)
        if destination is None:
            continue
        via = (via_v4 if destination.version == 4 else via_v6) or legacy
        if via is None:
            routes.append({"Destination": str(destination), "RouteType": 1, "NextHop": ""})
        else:
            routes.append({"Destination": str(destination), "RouteType": 0, "NextHop": str(via)})
    return routes


def join_answer(response: teleroute_pb2.JoinResponse) -> JSONObject:
    """The NetworkDriver.Join answer for the daemon's JoinResponse."""
    try:
        answer: JSONObject = {
            "InterfaceName": {
                "SrcName": response.interface_src_name,
                "DstPrefix": response.interface_dst_prefix,
            },
            "StaticRoutes": static_routes(response),
            "DisableGatewayService": response.disable_gw,
        }
        for key, raw in (("Gateway", response.gw_ip_v4), ("GatewayIPv6", response.gw_ip_v6)):
            gateway = netip.decode_prefix(raw) if raw else None
            if gateway is not None:
                answer[key] = str(gateway.ip)
    except ValueError as e:
        raise PluginError(f"the daemon's Join answer is malformed: {e}") from None
    return answer


def own_host_pid(proc: str = "/proc") -> int:
    """
    Our pid in the host's pid namespace, where the daemon (``--pid host``) looks us up.

    ``NSpid`` in ``/proc/self/status`` lists our pid as seen from the namespace of the procfs
    first, then from each nested namespace: in a managed plug-in with ``pidhost`` (and in a
    legacy plug-in) that first entry is the host pid even if the process itself sits in a
    nested namespace with a host procfs. Without ``NSpid`` (old kernels), our own pid.
    """
    try:
        with open(os.path.join(proc, "self", "status"), encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError) as e:
        log.warn(
            "cannot read our host pid from {proc}/self/status ({error}); using {pid}",
            proc=proc,
            error=e,
            pid=os.getpid(),
        )
    return os.getpid()


# -- the connection to one daemon


@attrs.frozen
class Backoff:
    """Delays between reconnection attempts: ``initial``, growing by ``factor`` to ``maximum``."""

    initial: float = 0.1
    factor: float = 2.0
    maximum: float = 2.0


class DaemonLink:
    """
    I keep one network's Connect stream to its daemon open.

    The first connection (CreateNetwork) retries only while the daemon is UNAVAILABLE, briefly,
    as the Go plug-in does, and a failure refuses the network. Once the network exists, losing
    the stream starts reconnection with back-off; calls that need the daemon meanwhile make an
    attempt at once rather than waiting for the next scheduled one.
    """

    def __init__(
        self,
        factory: ClientFactory,
        address: DaemonAddress,
        request: Callable[[], teleroute_pb2.ConnectRequest],
        clock: IReactorTime,
        backoff: Backoff | None = None,
        timeout: float = CALL_TIMEOUT,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self.address = address
        self.target = grpc_target(address.host, address.port)
        self.client: ITelerouteClient | None = None
        self.session: ConnectSession | None = None
        self.last_error = "not connected yet"
        self.connections = 0
        self.failures = 0
        self._factory = factory
        self._request = request
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._timeout = timeout
        self._delay = self._backoff.initial
        self._attempt: defer.Deferred[ConnectSession] | None = None
        self._retry: IDelayedCall | None = None
        self._waiters: list[defer.Deferred[None]] = []
        self._keep_trying = False
        self._closed = False
        self._on_connect = on_connect

    @property
    def connected(self) -> bool:
        return self.session is not None and self.session.is_open

    # -- attempts

    def attempt(self) -> defer.Deferred[None]:
        """
        Connect now, or wait for the attempt already under way.

        Fires when connected; fails with ``TelerouteError`` if this attempt fails.
        """
        if self._closed:
            return defer.fail(TelerouteError(StatusCode.CANCELLED, "the network was deleted"))
        if self.connected:
            return defer.succeed(None)

        def forget(d: defer.Deferred[None]) -> None:
            if d in self._waiters:
                self._waiters.remove(d)

        waiter: defer.Deferred[None] = defer.Deferred(forget)
        self._waiters.append(waiter)
        if self._attempt is None:
            self._start_attempt()
        return waiter

    def _start_attempt(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        old, self.client = self.client, None
        if old is not None:
            # A fresh channel per attempt: gRPC's own back-off would otherwise keep a daemon
            # that is back unreachable for up to minutes.
            old.close().addErrback(lambda f: log.failure("closing a client failed", f))
        try:
            self.client = self._factory(self.address.host, self.address.port)
            d = self.client.connect(self._request(), self._timeout)
        except Exception:
            d = defer.fail()
        d.addTimeout(self._timeout + 1, self._clock)
        self._attempt = d
        d.addCallbacks(self._connected, self._failed)

    def _connected(self, session: ConnectSession) -> None:
        self._attempt = None
        if self._closed:
            session.cancel()
            return
        self.session = session
        self.connections += 1
        self.failures = 0
        self._delay = self._backoff.initial
        self.last_error = ""
        log.info(
            "Connected to {name} version {version} at {target}",
            name=session.info.get("name", "?"),
            version=session.info.get("version", "?"),
            target=self.target,
        )
        session.ended.addCallback(self._lost, session)
        if self._on_connect is not None:
            try:
                self._on_connect()
            except Exception:
                log.failure("handling the connection to {target} failed", target=self.target)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _failed(self, failure: Failure) -> None:
        self._attempt = None
        error = _as_teleroute_error(failure, self.target)
        self.last_error = error.details
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(error)
        if self._keep_trying and not self._closed:
            self.failures += 1
            # A daemon that stays away would fill the log: say it at first, then rarely.
            if self.failures in (1, 10) or self.failures % 100 == 0:
                log.info(
                    "connecting to {target} failed {count} times ({error}); still trying "
                    "every {delay:g}s at most",
                    target=self.target,
                    count=self.failures,
                    error=error,
                    delay=self._backoff.maximum,
                )
            self._schedule()

    def _lost(self, reason: str, session: ConnectSession) -> None:
        if self.session is not session:
            return
        self.session = None
        self.last_error = reason
        if self._closed:
            return
        log.warn(
            "lost the daemon at {target} ({reason}); reconnecting",
            target=self.target,
            reason=reason,
        )
        self._keep_trying = True
        self._delay = self._backoff.initial
        self._schedule()

    def _schedule(self) -> None:
        if self._closed or self._attempt is not None or self.connected:
            return
        if self._retry is not None and self._retry.active():
            return
        delay, self._delay = (
            self._delay,
            min(self._delay * self._backoff.factor, self._backoff.maximum),
        )
        self._retry = self._clock.callLater(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        # The outcome is handled by _connected/_failed; this waiter is only for attempt().
        self.attempt().addErrback(lambda f: None)

    # -- what the driver uses

    async def establish(
        self, retries: int = CONNECT_RETRIES, delay: float = CONNECT_RETRY_DELAY
    ) -> None:
        """The first connection: retry while UNAVAILABLE, then keep reconnecting for ever."""
        for remaining in range(retries - 1, -1, -1):
            try:
                await self.attempt()
                break
            except TelerouteError as e:
                if e.code != StatusCode.UNAVAILABLE or remaining == 0:
                    raise
            await task.deferLater(self._clock, delay)
        self._keep_trying = True

    def keep_connected(self) -> None:
        """Connect in the background and stay connected (a network restored at start)."""
        self._keep_trying = True
        if not self.connected and self._attempt is None:
            self._retry_now()

    async def ready(
        self,
        timeout: float = CALL_TIMEOUT,
        patient: bool = True,
        retry_delay: float = CONNECT_RETRY_DELAY,
    ) -> ITelerouteClient:
        """
        The connected client, connecting first if needed.

        ``patient`` keeps trying while the daemon is UNAVAILABLE until ``timeout`` (a daemon
        that is starting); otherwise one attempt decides.
        """
        deadline = self._clock.seconds() + timeout
        while not self.connected:
            remaining = deadline - self._clock.seconds()
            try:
                waiter = self.attempt()
                waiter.addTimeout(max(remaining, 0.001), self._clock)
                await waiter
            except defer.TimeoutError:
                raise TelerouteError(
                    StatusCode.DEADLINE_EXCEEDED,
                    f"no connection to {self.target} within {timeout:g}s"
                    + (f" (last error: {self.last_error})" if self.last_error else ""),
                ) from None
            except TelerouteError as e:
                remaining = deadline - self._clock.seconds()
                if not patient or e.code != StatusCode.UNAVAILABLE or remaining <= retry_delay:
                    raise
                await task.deferLater(self._clock, retry_delay)
        assert self.client is not None
        return self.client

    def close(self) -> defer.Deferred[None]:
        """Stop for good: end the stream (the daemon sees us leave) and stop reconnecting."""
        self._closed = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(TelerouteError(StatusCode.CANCELLED, "the network was deleted"))
        session, self.session = self.session, None
        if session is not None:
            session.cancel()
        client, self.client = self.client, None
        if client is None:
            return defer.succeed(None)
        return client.close()


def _as_teleroute_error(failure: Failure, target: str) -> TelerouteError:
    error = failure.value
    if isinstance(error, TelerouteError):
        return error
    if isinstance(error, defer.TimeoutError | defer.CancelledError):
        return TelerouteError(StatusCode.DEADLINE_EXCEEDED, f"{target} did not answer in time")
    log.failure("unexpected error talking to {target}", failure, target=target)
    return TelerouteError(StatusCode.UNKNOWN, f"{type(error).__name__}: {error}")


# -- the driver


@attrs.define
class Network:
    id: str
    address: DaemonAddress
    gateways: list[str]
    link: DaemonLink | None = None
    #: Set while the daemon's own pending endpoint is being set up after a (re)connection.
    settling: defer.Deferred[None] | None = None

    def to_json(self) -> JSONObject:
        return {
            "host": self.address.host,
            "port": self.address.port,
            "gateways": list(self.gateways),
        }

    @classmethod
    def from_json(cls, network_id: str, data: JSONObject) -> Network:
        address = DaemonAddress(str(ipaddress.ip_address(data["host"])), int(data["port"]))
        gateways = [str(ipaddress.ip_interface(g)) for g in data.get("gateways", [])]
        return cls(id=network_id, address=address, gateways=gateways)


@attrs.define
class Endpoint:
    """
    A Docker endpoint on a teleroute network.

    ``ipv4``/``ipv6`` are the interface CIDRs Docker assigned. ``pending`` marks the daemon's own
    endpoint created while the daemon was away (a ``docker restart`` of its container); once
    the daemon is connected, the plug-in sets its interface up itself in ``sandbox``.
    """

    id: str
    network: str
    ipv4: str = ""
    ipv6: str = ""
    daemon: bool = False
    pending: bool = False
    sandbox: str = ""
    #: Docker joined it (a sandbox holds it); before that it is only made.
    joined: bool = False
    #: The veth end Join handed to Docker for the container ("" if none went through Docker).
    interface: str = ""
    #: Set while Docker's Join of this endpoint is under way: the Join then sets the interface
    #: up through Docker, and a reconnection must not set it up a second time.
    joining: bool = attrs.field(default=False, eq=False)
    #: When this process made, joined or restored it (clock seconds; see telenet.netplugin.sweep).
    since: float = attrs.field(default=0.0, eq=False)

    def to_json(self) -> JSONObject:
        return {
            "network": self.network,
            "ipv4": self.ipv4,
            "ipv6": self.ipv6,
            "daemon": self.daemon,
            "pending": self.pending,
            "sandbox": self.sandbox,
            "joined": self.joined,
            "interface": self.interface,
        }

    @classmethod
    def from_json(cls, endpoint_id: str, data: JSONObject) -> Endpoint:
        return cls(
            id=endpoint_id,
            network=str(data["network"]),
            ipv4=_parse_cidr(data.get("ipv4", "")),
            ipv6=_parse_cidr(data.get("ipv6", "")),
            daemon=bool(data.get("daemon", False)),
            pending=bool(data.get("pending", False)),
            sandbox=str(data.get("sandbox", "")),
            # A state saved before "joined" was kept: take its endpoints as joined.
            joined=bool(data.get("joined", True)),
            interface=str(data.get("interface", "")),
        )

    def seen(self) -> Seen:
        return Seen(self.id, self.interface, self.joined, self.since)

    def addresses(self) -> set[str]:
        return {str(ipaddress.ip_interface(c).ip) for c in (self.ipv4, self.ipv6) if c}

    def same_as(self, other: Endpoint) -> bool:
        return (self.network, self.ipv4, self.ipv6, self.daemon) == (
            other.network,
            other.ipv4,
            other.ipv6,
            other.daemon,
        )

    def request(self, in_daemon_netns: bool = False) -> teleroute_pb2.CreateEndpointRequest:
        """
        The CreateEndpoint request; ``in_daemon_netns`` asks the daemon to set its own
        interface up itself (a telenet extension that other daemons ignore).
        """

        def addr(cidr: str) -> bytes:
            return netip.encode_addr(ipaddress.ip_interface(cidr).ip if cidr else None)

        request = teleroute_pb2.CreateEndpointRequest(
            id=self.id,
            addr_ipv4=addr(self.ipv4),
            addr_ipv6=addr(self.ipv6),
            daemon=self.daemon,
        )
        if in_daemon_netns:
            request.in_daemon_netns = True
            request.interface_addresses.extend(
                netip.encode_prefix(ipaddress.ip_interface(c)) for c in (self.ipv4, self.ipv6) if c
            )
        return request


def _run_now(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f, *args)


class NetworkDriver:
    """
    Docker's NetworkDriver calls for teleroute networks, over an ``ITelerouteClient`` factory.

    Every change is saved (through ``run_blocking``) before Docker hears it succeeded.
    """

    def __init__(
        self,
        client_factory: ClientFactory,
        store: IStateStore,
        clock: IReactorTime,
        run_blocking: Runner = _run_now,
        pid: int | None = None,
        backoff: Backoff | None = None,
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
        self._backoff = backoff
        self._timeout = timeout
        self.networks: dict[str, Network] = {}
        self.endpoints: dict[str, Endpoint] = {}

    # -- persistence

    def restore(self) -> None:
        """Load the networks and endpoints an earlier run saved (unreadable ones are skipped)."""
        data = self._store.load()
        for network_id, entry in (data.get("networks") or {}).items():
            try:
                self.networks[network_id] = Network.from_json(network_id, entry)
            except (KeyError, TypeError, ValueError) as e:
                log.error("skipping unreadable saved network {id}: {error}", id=network_id, error=e)
        for endpoint_id, entry in (data.get("endpoints") or {}).items():
            try:
                endpoint = Endpoint.from_json(endpoint_id, entry)
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
        closing = []
        for network in self.networks.values():
            if network.link is not None:
                closing.append(network.link.close())
                network.link = None
        return defer.gatherResults(closing, consumeErrors=True)

    def _save(self) -> defer.Deferred[None]:
        snapshot = {
            "networks": {i: n.to_json() for i, n in sorted(self.networks.items())},
            "endpoints": {i: e.to_json() for i, e in sorted(self.endpoints.items())},
        }
        return self._run_blocking(self._store.save, snapshot)

    def _link(self, network: Network) -> DaemonLink:
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
            backoff=self._backoff,
            timeout=self._timeout,
            on_connect=lambda: self._on_connect(network),
        )

    def _network(self, body: JSONObject) -> Network:
        network_id = field(body, "NetworkID", str)
        network = self.networks.get(network_id)
        if network is None:
            raise PluginError(f'network "{network_id}" not found')
        return network

    async def _client(self, network: Network, patient: bool = True) -> ITelerouteClient:
        if network.link is None:
            network.link = self._link(network)
            network.link.keep_connected()
        client = await network.link.ready(self._timeout, patient=patient)
        if network.settling is not None:
            await network.settling
        return client

    async def _call(self, network: Network, method: str, request: Any, patient: bool = True) -> Any:
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
        network = Network(id=network_id, address=address, gateways=gateways)
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

    @contextlib.contextmanager
    def _call_on(self, endpoint_id: str) -> Iterator[None]:
        """Marks a Docker call on ``endpoint_id`` in flight, for the sweep."""
        self._busy[endpoint_id] += 1
        try:
            yield
        finally:
            self._busy[endpoint_id] -= 1
            if not self._busy[endpoint_id]:
                del self._busy[endpoint_id]

    async def create_endpoint(self, body: JSONObject) -> JSONObject:
        network = self._network(body)
        endpoint_id = field(body, "EndpointID", str)
        with self._call_on(endpoint_id):
            return await self._create_endpoint(body, network, endpoint_id)

    async def _create_endpoint(
        self, body: JSONObject, network: Network, endpoint_id: str
    ) -> JSONObject:
        interface = field(body, "Interface", dict, required=False) or {}
        endpoint = Endpoint(
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

    async def _join(self, body: JSONObject, network: Network, endpoint_id: str) -> JSONObject:
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
            endpoint = self.endpoints[endpoint_id] = Endpoint(id=endpoint_id, network=network.id)
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
        await self._save()
        log.info(
            "endpoint {id} joins with {src} and routes {routes}",
            id=endpoint_id[:12],
            src=response.interface_src_name,
            routes=[r["Destination"] for r in answer["StaticRoutes"]],
        )
        return answer

    def _joined(self, endpoint: Endpoint, interface: str) -> None:
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

    async def _realize(
        self, network: Network, endpoint: Endpoint, in_daemon_netns: bool = False
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

    def _on_connect(self, network: Network) -> None:
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

    async def _settle(self, network: Network, pending: list[Endpoint]) -> None:
        for endpoint in pending:
            if not endpoint.pending or endpoint.joining:
                continue  # a Join took it meanwhile
            # A telenet daemon sets its interface up itself (it has CAP_NET_ADMIN in its own
            # netns; a managed plug-in lacks the CAP_SYS_ADMIN to enter it); another daemon
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

    def endpoint_oper_info(self, body: JSONObject) -> JSONObject:
        return {"Value": {}}

    # -- endpoints Docker let go while we could not hear it (telenet.netplugin.sweep)

    def _drop(self, endpoint: Endpoint, why: str) -> None:
        """Forget a stale endpoint (the caller saves), and tell its daemon in the background."""
        self.endpoints.pop(endpoint.id, None)
        log.warn(
            "forgetting endpoint {id} of network {network}: Docker no longer has it ({why})",
            id=endpoint.id[:12],
            network=endpoint.network[:12],
            why=why,
        )
        network = self.networks.get(endpoint.network)
        link = network.link if network is not None else None
        if link is None or not link.connected or link.client is None:
            return
        d = link.client.remove_endpoint(
            teleroute_pb2.EndpointIdentifier(id=endpoint.id), self._timeout
        )
        d.addTimeout(self._timeout, self._clock)
        d.addErrback(
            lambda f: log.info(
                "the daemon did not forget endpoint {id}: {error}",
                id=endpoint.id[:12],
                error=f.value,
            )
        )

    def _schedule_sweep(self, delay: float = SETTLE) -> None:
        if self._sweep_call is None or not self._sweep_call.active():
            self._sweep_call = self._clock.callLater(delay, self._run_sweep)

    def _run_sweep(self) -> None:
        self._sweep_call = None
        if self._sweeping:
            self._schedule_sweep()
            return
        self._sweeping = True

        def done(result: object) -> None:
            self._sweeping = False
            if self._sweep.pending(e.seen() for e in self.endpoints.values()):
                self._schedule_sweep()

        d = defer.Deferred.fromCoroutine(self._sweep_once())
        d.addErrback(lambda f: log.failure("looking for stale endpoints failed", f))
        d.addBoth(done)

    async def _sweep_once(self) -> None:
        ours: set[str] = set()
        if self._netlink is not None and any(e.interface for e in self.endpoints.values()):
            try:
                ours = {link.name for link in await self._netlink.links()}
            finally:
                # Looks are rare: hold no netlink socket between them.
                await self._netlink.close()
        stale = self._sweep.look([e.seen() for e in self.endpoints.values()], ours, set(self._busy))
        for s in stale:
            endpoint = self.endpoints.get(s.id)
            if endpoint is not None and s.id not in self._busy:
                self._drop(endpoint, s.why)
        if stale:
            await self._save()


# -- the twistd tap


class Options(usage.Options):
    optParameters = [
        [
            "listen",
            "l",
            dockerplugin.plugin_endpoint("teleroute"),
            "Endpoint the plug-in API listens on.",
        ],
        [
            "state-dir",
            "s",
            "/var/lib/telenet/teleroute",
            "Directory for the saved networks and endpoints.",
        ],
    ]


class _DriverService(dockerplugin.DrainingService):
    """
    Reconnects restored networks once the reactor runs. At the end, once the requests in
    flight are answered (a Join waiting for a slow daemon gets the daemon's answer, not a
    cancelled call), it closes the daemon connections.
    """

    def __init__(
        self,
        driver: NetworkDriver,
        reactor: Any,
        site: dockerplugin.PluginSite | None = None,
        pool: ThreadPool | None = None,
    ) -> None:
        super().__init__(site, pool)
        self.driver = driver
        self.reactor = reactor

    def start_work(self) -> None:
        # grpc.aio needs the running loop: start after the reactor does.
        self.reactor.callWhenRunning(self.driver.start)

    def stop_work(self) -> defer.Deferred[Any]:
        return self.driver.stop()


def makeService(
    options: Options, reactor: Any = None, client_factory: ClientFactory | None = None
) -> service.MultiService:
    if reactor is None:
        # grpc.aio needs asyncio's loop; twistd has not imported a reactor yet, so
        # `twistd teleroute` works without --reactor (another one chosen is an error).
        from telenet.core.aio import install_asyncio_reactor

        install_asyncio_reactor()
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    if client_factory is None:
        from telenet.teleroute.client import GrpcTelerouteClient

        client_factory = GrpcTelerouteClient
    from telenet.core.state import JSONFileStore

    state_dir = options["state-dir"]
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    dockerplugin.ensure_socket_dir(options["listen"])

    top = service.MultiService()
    pool, run_blocking = state_thread(reactor, "teleroute-state")

    from telenet.core.netlink import PyrouteNetlink
    from telenet.core.processes import spawner
    from telenet.netplugin.plumbing import NetnsPlumbing

    driver = NetworkDriver(
        client_factory,
        JSONFileStore(os.path.join(state_dir, "state.json")),
        reactor,
        run_blocking,
        plumbing=NetnsPlumbing(spawner(reactor)),
        netlink=PyrouteNetlink(),
    )
    driver.restore()
    log.info("teleroute plug-in, host pid {pid}", pid=driver._pid)
    resource = dockerplugin.PluginResource(["NetworkDriver"], driver.handlers())
    site = dockerplugin.plugin_site(resource)
    assert isinstance(site, dockerplugin.PluginSite)
    # Stopped together with the listener: it drains the site before closing anything.
    _DriverService(driver, reactor, site, pool).setServiceParent(top)
    strports.service(options["listen"], site, reactor=reactor).setServiceParent(top)
    return top
