# -*- test-case-name: tests.test_routeplugin -*-
"""
What the network plug-in reads from Docker's requests, and the answers it builds for them.

Docker's NetworkDriver requests carry the daemon's address (``-o host=H -o port=P``), the
network's gateways and the endpoints' addresses; the daemon's JoinResponse becomes Docker's
Join answer. Pure functions with the Go plug-in's error messages, kept apart from the driver
so that the wire formats are read (and tested) in one place.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs

from telenet.core import netip
from telenet.core.dockerplugin import BadRequest, JSONObject, PluginError, field
from telenet.teleroute.proto import teleroute_pb2

GENERIC_OPTIONS = "com.docker.network.generic"


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
