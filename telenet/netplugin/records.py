# -*- test-case-name: tests.test_routeplugin -*-
"""
What the network plug-in knows and saves: ``PluginNetwork`` and ``PluginEndpoint`` records.

A teleroute network (its daemon's address, its gateways, the live ``DaemonLink``) and a
Docker endpoint on it (its addresses, whether it is the daemon's own, how far Docker got with
it), with the JSON forms the driver saves in its state directory. Plain records, apart from
the driver that changes them; named ``Plugin...`` because "network" and "endpoint" mean
other things in the daemon.
"""

from __future__ import annotations

import ipaddress

import attrs
from twisted.internet import defer

from telenet.core import netip
from telenet.core.dockerplugin import JSONObject
from telenet.netplugin.link import DaemonLink
from telenet.netplugin.options import DaemonAddress, _parse_cidr
from telenet.netplugin.sweep import Seen
from telenet.teleroute.proto import teleroute_pb2


@attrs.define
class PluginNetwork:
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
    def from_json(cls, network_id: str, data: JSONObject) -> PluginNetwork:
        address = DaemonAddress(str(ipaddress.ip_address(data["host"])), int(data["port"]))
        gateways = [str(ipaddress.ip_interface(g)) for g in data.get("gateways", [])]
        return cls(id=network_id, address=address, gateways=gateways)


@attrs.define
class PluginEndpoint:
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
    #: The workload's network namespace (``net:[inode]``) and its interface's name there, as
    #: found while it ran (telenet.netplugin.rejoin gives it back after a daemon restart).
    netns: str = ""
    name: str = ""
    #: The plug-in, not Docker, made its current interface (after a daemon restart).
    rejoined: bool = False
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
            "netns": self.netns,
            "name": self.name,
            "rejoined": self.rejoined,
        }

    @classmethod
    def from_json(cls, endpoint_id: str, data: JSONObject) -> PluginEndpoint:
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
            netns=str(data.get("netns", "")),
            name=str(data.get("name", "")),
            rejoined=bool(data.get("rejoined", False)),
        )

    def seen(self) -> Seen:
        return Seen(self.id, self.interface, self.joined, self.since)

    def addresses(self) -> set[str]:
        return {str(ipaddress.ip_interface(c).ip) for c in (self.ipv4, self.ipv6) if c}

    def same_as(self, other: PluginEndpoint) -> bool:
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
