"""
The network plug-in's own seams: ``IEndpointPlumbing`` (moving a link into a container's
network namespace; ``telenet.netplugin.plumbing.NetnsPlumbing`` is the real one,
``telenet.testing.MemoryPlumbing`` the fake, tests/test_plumbing_contract.py holds them alike).

Its error, ``PlumbingError``, stays with the implementation in ``telenet.netplugin.plumbing``.
The teleroute client's interface is the protocol package's (``telenet.teleroute``).
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import Interface


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
