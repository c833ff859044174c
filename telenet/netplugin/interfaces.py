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


#: What ``IWorkloadPlumbing.look`` finds of a workload's namespace.
PRESENT, MISSING, GONE = "present", "missing", "gone"


class IWorkloadPlumbing(Interface):
    """
    A running workload's network namespace, seen from the plug-in: finding it, telling whether
    its teleroute interface is still there, and giving it a new one after a daemon restart
    (``telenet.netplugin.workloadns.NetnsWorkloads`` is the real one,
    ``telenet.testing.workloads.MemoryWorkloads`` the fake, tests/test_workloadns_contract.py
    holds them alike).
    """

    def identify(addresses: list[str]) -> defer.Deferred[tuple[str, str] | None]:
        """
        The namespace, other than ours, that holds one of ``addresses`` (IPs): its id
        (``net:[inode]``) and the name of the interface holding the address (``""`` if not
        known). None if no namespace we can see holds one.
        """

    def look(sandbox_key: str, netns: str, addresses: list[str]) -> defer.Deferred[str]:
        """
        The state of the workload's namespace, found by the sandbox file or else by its id:
        ``present`` (it holds one of ``addresses``, IPs), ``missing`` (it exists, without
        them) or ``gone`` (no such namespace, or no process in it, is visible).
        """

    def attach(
        link: str,
        sandbox_key: str,
        netns: str,
        name: str,
        addresses: list[str],
        routes: list[tuple[str, str]],
    ) -> defer.Deferred[str]:
        """
        Move ``link`` from our namespace into the workload's as ``name`` (or, if that name is
        taken or empty, the next free ``tpd-N``) with ``addresses`` (CIDRs), up, with
        ``routes`` (destination CIDR, next hop or ``""`` for a connected route). Fires with
        the name; fails with ``PlumbingError``.
        """
