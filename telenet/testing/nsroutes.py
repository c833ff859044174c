"""
Containers' routing tables in memory: ``MemoryContainerRoutes``, the fake ``IContainerRoutes``
(tests/test_nsroutes_contract.py holds it and the real ``NetnsRoutes`` alike).
"""

from __future__ import annotations

import ipaddress

import attrs
from twisted.internet import defer
from zope.interface import implementer

from telenet.netplugin.interfaces import ContainerRoute, IContainerRoutes
from telenet.netplugin.plumbing import PlumbingError


@attrs.define
class MemoryRouteNamespace:
    """A container's namespace: its process, its addresses and its main routing table."""

    sandbox_key: str
    pid: int
    addresses: set[str]
    routes: list[ContainerRoute] = attrs.field(factory=list)
    #: Whether the plug-in sees the sandbox file (a legacy plug-in does, a managed one not).
    visible: bool = True

    @property
    def proc_path(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def table(self) -> dict[str, str]:
        """Destination to gateway ("" for a connected route), for assertions."""
        return {str(r.destination): r.gateway for r in self.routes}


@implementer(IContainerRoutes)
class MemoryContainerRoutes:
    """
    ``IContainerRoutes`` over namespaces kept in memory, refusing what ``NetnsRoutes`` refuses
    (a next hop outside every connected network, an unknown namespace). ``changes`` records
    every replace and delete made (verb, namespace path, destination, next hop); ``fail``
    makes every call refuse with that message.
    """

    def __init__(self) -> None:
        self.spaces: list[MemoryRouteNamespace] = []
        self.changes: list[tuple[str, str, str, str]] = []
        self.fail: str | None = None

    def add_namespace(
        self, sandbox_key: str, pid: int, *interfaces: str, visible: bool = True
    ) -> MemoryRouteNamespace:
        """A container on networks given as its interfaces' CIDRs (``172.30.0.3/16``)."""
        space = MemoryRouteNamespace(sandbox_key, pid, set(), visible=visible)
        for cidr in interfaces:
            interface = ipaddress.ip_interface(cidr)
            space.addresses.add(str(interface.ip))
            space.routes.append(
                ContainerRoute(interface.network, "", f"eth{len(space.addresses) - 1}", True)
            )
        self.spaces.append(space)
        return space

    def remove_namespace(self, space: MemoryRouteNamespace) -> None:
        """The container is gone."""
        self.spaces.remove(space)

    def _space(self, netns: str) -> MemoryRouteNamespace:
        for space in self.spaces:
            if netns in (space.proc_path, space.sandbox_key if space.visible else None):
                return space
        raise PlumbingError(
            f"ip route in {netns} failed (1): nsenter: cannot open {netns}: "
            "No such file or directory"
        )

    def namespace(self, sandbox_key: str, addresses: list[str]) -> defer.Deferred[str]:
        if self.fail is not None:
            return defer.fail(PlumbingError(self.fail))
        for space in self.spaces:
            if space.visible and sandbox_key and space.sandbox_key == sandbox_key:
                return defer.succeed(sandbox_key)
        for space in self.spaces:
            if space.addresses & set(addresses):
                return defer.succeed(space.proc_path)
        return defer.fail(
            PlumbingError(
                f"no network namespace holds {' or '.join(addresses) or 'the address'} "
                f"(and the sandbox {sandbox_key or '?'} is not visible here)"
            )
        )

    def routes(self, netns: str) -> defer.Deferred[list[ContainerRoute]]:
        if self.fail is not None:
            return defer.fail(PlumbingError(self.fail))
        try:
            return defer.succeed(list(self._space(netns).routes))
        except PlumbingError:
            return defer.fail()

    def replace(self, netns: str, destination: str, via: str) -> defer.Deferred[None]:
        if self.fail is not None:
            return defer.fail(PlumbingError(self.fail))
        try:
            space = self._space(netns)
        except PlumbingError:
            return defer.fail()
        network = ipaddress.ip_network(destination)
        hop = ipaddress.ip_address(via)
        device = next(
            (r.device for r in space.routes if r.connected and hop in r.destination), None
        )
        if device is None:
            return defer.fail(
                PlumbingError(
                    f"ip route replace {destination} via {via} failed (2): "
                    "Error: Nexthop has invalid gateway."
                )
            )
        space.routes = [r for r in space.routes if r.destination != network or r.connected]
        space.routes.append(ContainerRoute(network, str(hop), device))
        self.changes.append(("replace", netns, str(network), str(hop)))
        return defer.succeed(None)

    def delete(self, netns: str, destination: str, via: str) -> defer.Deferred[None]:
        if self.fail is not None:
            return defer.fail(PlumbingError(self.fail))
        try:
            space = self._space(netns)
        except PlumbingError:
            return defer.fail()
        network = ipaddress.ip_network(destination)
        space.routes = [
            r for r in space.routes if not (r.destination == network and r.gateway == via)
        ]
        self.changes.append(("delete", netns, str(network), via))
        return defer.succeed(None)
