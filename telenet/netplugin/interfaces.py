"""
The network plug-in's own seams: ``IEndpointPlumbing`` (moving a link into a container's
network namespace; ``telenet.netplugin.plumbing.NetnsPlumbing`` is the real one,
``telenet.testing.MemoryPlumbing`` the fake, tests/test_plumbing_contract.py holds them alike)
and ``IContainerRoutes`` (a running container's routes, for live routes).

Its error, ``PlumbingError``, stays with the implementation in ``telenet.netplugin.plumbing``.
The teleroute client's interface is the protocol package's (``telenet.teleroute``).
"""

from __future__ import annotations

import attrs
from twisted.internet import defer
from zope.interface import Interface

from telenet.core.netip import Network


class IEndpointPlumbing(Interface):
    """Moves a link from our network namespace into a container's, configured."""

    def adopt(
        link: str, sandbox_key: str, daemon_host: str, addresses: list[str]
    ) -> defer.Deferred[str]:
        """
        Move ``link`` into the namespace of the sandbox (or, failing that, the one holding
        ``daemon_host``) as the next free ``tpd-N`` with ``addresses`` (CIDRs), and bring it
        up. Fires with the new name; fails with ``PlumbingError``.
        """


@attrs.frozen
class ContainerRoute:
    """
    One route of a container's main table: ``destination`` with its ``gateway`` ("" for a
    connected route) and ``device``. ``connected`` marks the kernel's route of a network the
    container is on (the networks a live route must never shadow).
    """

    destination: Network
    gateway: str = ""
    device: str = ""
    connected: bool = False


class IContainerRoutes(Interface):
    """
    A running container's routing table, in its network namespace (live routes:
    ``telenet.netplugin.liveroutes``). ``telenet.netplugin.nsroutes.NetnsRoutes`` is the real
    one, ``telenet.testing.nsroutes.MemoryContainerRoutes`` the fake,
    tests/test_nsroutes_contract.py holds them alike. Failures are ``PlumbingError``.
    """

    def namespace(sandbox_key: str, addresses: list[str]) -> defer.Deferred[str]:
        """
        A path naming the container's network namespace: the sandbox file when this process
        sees it, else ``/proc/PID/ns/net`` of a process holding one of ``addresses``.
        """

    def routes(netns: str) -> defer.Deferred[list[ContainerRoute]]:
        """The routes of the namespace's main table, both families."""

    def replace(netns: str, destination: str, via: str) -> defer.Deferred[None]:
        """Route ``destination`` (a CIDR) via the next hop ``via``, replacing any route to it."""

    def delete(netns: str, destination: str, via: str) -> defer.Deferred[None]:
        """Remove the route to ``destination`` via ``via``; one that is not there is no error."""
