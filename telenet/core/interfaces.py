"""
The seams of telenet: every side effect sits behind one of these interfaces.

Each has a real implementation beside the code that uses it and a memory fake in
``telenet.testing``; one contract test runs the same assertions against both.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import Interface

from telenet.core.netip import Address, Network
from telenet.core.netip import Interface as IPInterface


class IStateStore(Interface):
    """Durable storage of one plug-in's state as a JSON-able dict."""

    def load() -> dict[str, Any]:
        """The last saved state, or ``{}`` when none was ever saved."""

    def save(data: dict[str, Any]) -> None:
        """Replace the saved state atomically; it survives a crash right after this returns."""


@attrs.frozen
class VolumeSpec:
    """What a mounter needs of one volume: directory ``remote_dir`` of SFTP server host:port."""

    host: str
    port: int
    name: str
    remote_dir: str
    ro: bool = False
    #: The owner and mode mask every file of the volume shows (None: the server's own).
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None
    #: Seconds the first connection to the server is retried (a server still starting).
    wait: float = 0.0


class IMounter(Interface):
    """
    Mounts SFTP servers and exposes volumes on them.

    One FUSE mount serves every volume of one SFTP server (host, port); each volume is a
    directory of that mount mapped onto a remote directory, read-only or writable.
    """

    def attach(volume: VolumeSpec) -> Deferred[str]:
        """
        Make ``volume`` available, mounting its server first if needed.

        Fires with the volume's mount point, or fails with a ``PluginError`` saying why
        (server unreachable, remote directory missing, ...). Idempotent.
        """

    def detach(host: str, port: int, name: str) -> Deferred[None]:
        """Withdraw volume ``name``; the server's mount goes away with its last volume."""

    def mountpoint(host: str, port: int, name: str) -> str:
        """Where volume ``name`` appears (or will appear) on this host."""

    def status(host: str, port: int) -> Deferred[dict[str, Any]]:
        """
        ``{"mounted": bool, "connected": bool, "since": float, ...}`` for the server's mount;
        ``since`` is when it last connected or lost its connection (Unix time).
        """

    def release(host: str, port: int) -> Deferred[None]:
        """Unmount the server now; its volumes come back at their next ``attach``."""

    def reachable(host: str, port: int, timeout: float) -> Deferred[bool]:
        """Whether a TCP connection to the server succeeds within ``timeout`` seconds."""

    def adopt(expected: Any) -> Deferred[None]:
        """
        Take over mounts left by an earlier run of the plug-in.

        ``expected`` maps ``(host, port)`` to ``{volume name: (remote dir, ro)}``: what the
        saved state says each server should serve. Anything else is withdrawn or unmounted.
        """

    def shutdown() -> Deferred[None]:
        """Unmount everything this mounter made and stop its helpers."""


# -- network namespaces (netlink)

RouteCallback = Callable[[frozenset[Network]], None]


class NetlinkFailure(Exception):
    """A netlink operation failed; the message says which and why."""


class LinkNotFound(NetlinkFailure):
    """The named link does not exist (in this network namespace)."""


class AlreadyExists(NetlinkFailure):
    """What was to be added (a link, an address, a route) exists already."""


class LinkExists(AlreadyExists):
    """A link of that name exists already."""


@attrs.frozen
class Link:
    """What the daemon needs to know about one network interface."""

    name: str
    index: int
    mac: str
    kind: str | None
    master: str | None
    up: bool
    arp: bool = True


class IRouteWatch(Interface):
    """A live watch of the routes through one interface."""

    def stop() -> defer.Deferred[None]:
        """Stop watching; the callback is not called after this fires."""


class INetlink(Interface):
    """
    The link and route operations of the teleroute daemon, in one network namespace.

    Every operation returns a Deferred; failures are ``NetlinkFailure`` (``LinkNotFound`` for
    a missing link, ``LinkExists`` for a name already taken, ``AlreadyExists`` for an address
    or route that is there already). Routes are the unicast routes of
    the main table whose output interface is the given link, without default routes and
    without IPv6 link-local or multicast ones: the subnets reachable *through* that link.
    """

    def ensure_bridge(name: str) -> defer.Deferred[Link]:
        """
        Make sure a bridge ``name`` exists, is up and answers no ARP: create it, or take over
        one left by an earlier run. Fails with ``LinkExists`` if a link of that name is not a
        bridge.
        """

    def create_veth(name: str, mac: str, peer: str, peer_mac: str) -> defer.Deferred[None]:
        """Create a veth pair ``name``/``peer`` with the given MAC addresses, both down."""

    def set_master(name: str, master: str) -> defer.Deferred[None]:
        """Enslave link ``name`` to the bridge ``master``."""

    def move_to_netns(name: str, pid: int) -> defer.Deferred[None]:
        """Move link ``name`` into the network namespace of process ``pid``."""

    def set_up(name: str) -> defer.Deferred[None]:
        """Set link ``name`` administratively up."""

    def delete_link(name: str) -> defer.Deferred[None]:
        """Delete link ``name`` (for a veth, the pair)."""

    def get_link(name: str) -> defer.Deferred[Link | None]:
        """The link called ``name``, or None."""

    def links() -> defer.Deferred[list[Link]]:
        """Every link, in index order."""

    def add_address(name: str, address: IPInterface) -> defer.Deferred[None]:
        """Add an address with its prefix length to link ``name``."""

    def addresses(name: str) -> defer.Deferred[list[IPInterface]]:
        """The addresses of link ``name`` (empty when it does not exist)."""

    def add_route(dst: Network, name: str, gateway: Address | None = None) -> defer.Deferred[None]:
        """Add a route to ``dst`` through link ``name``, optionally via ``gateway``."""

    def delete_route(dst: Network, name: str) -> defer.Deferred[None]:
        """Delete the route to ``dst`` through link ``name``."""

    def replace_route(dst: Network, name: str, source: Address) -> defer.Deferred[None]:
        """
        Route ``dst`` through link ``name`` with preferred source ``source``, replacing the
        main table's route to ``dst`` wherever it went (a connected route included).
        """

    def set_arp(name: str, on: bool) -> defer.Deferred[None]:
        """Turn ARP on or off for link ``name`` (off: it neither answers nor asks)."""

    def routes(name: str) -> defer.Deferred[frozenset[Network]]:
        """The subnets routed through link ``name`` (empty when it does not exist)."""

    def watch_routes(name: str, callback: RouteCallback) -> defer.Deferred[IRouteWatch]:
        """
        Watch the subnets routed through link ``name``, which need not exist yet.

        ``callback`` gets the full set once with the current routes before the Deferred
        fires, then again each time it changes (link created or deleted, addresses or
        routes added or removed).
        """

    def close() -> defer.Deferred[None]:
        """Release sockets; running watches stop."""


def include_route(dst: Network) -> bool:
    """Whether a route to ``dst`` names a subnet worth routing to (see ``INetlink``)."""
    if dst.prefixlen == 0:
        return False
    if isinstance(dst, ipaddress.IPv6Network) and (dst.is_link_local or dst.is_multicast):
        return False
    return not dst.is_multicast
