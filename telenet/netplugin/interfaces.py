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
