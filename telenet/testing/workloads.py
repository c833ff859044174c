"""
``MemoryWorkloads``: workloads' network namespaces in memory, an ``IWorkloadPlumbing`` for
unit tests of the network plug-in (tests/test_workloadns_contract.py holds it alike with the
real ``telenet.netplugin.workloadns.NetnsWorkloads``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

import attrs
from twisted.internet import defer
from zope.interface import implementer

from telenet.netplugin.interfaces import GONE, MISSING, PRESENT, IWorkloadPlumbing
from telenet.netplugin.plumbing import PlumbingError, next_free_name


@attrs.define
class MemoryWorkload:
    """A workload's namespace: its id, sandbox file, links (name to CIDRs) and routes."""

    netns: str
    sandbox: str
    links: dict[str, list[str]] = attrs.field(factory=dict)
    #: (destination, next hop or "", link) of each route installed.
    routes: list[tuple[str, str, str]] = attrs.field(factory=list)
    #: The sandbox file is visible to the plug-in (a legacy one on the host).
    visible: bool = True

    def addresses(self) -> set[str]:
        return {str(ipaddress.ip_interface(c).ip) for cidrs in self.links.values() for c in cidrs}

    def lose_interfaces(self, prefix: str = "tpd-") -> None:
        """The kernel deletes the links whose veth peer was in a daemon's namespace that went."""
        for name in [n for n in self.links if n.startswith(prefix)]:
            del self.links[name]
            self.routes = [r for r in self.routes if r[2] != name]


@implementer(IWorkloadPlumbing)
class MemoryWorkloads:
    """
    ``IWorkloadPlumbing`` over ``MemoryWorkload`` namespaces, refusing what the real one
    refuses. ``our_links`` names the links on the plug-in's side (those ``attach`` can move).
    ``attached`` records every move; ``fail`` makes every ``attach`` refuse with that message.
    """

    def __init__(self, our_links: Callable[[], Iterable[str]]) -> None:
        self._our_links = our_links
        self.workloads: dict[str, MemoryWorkload] = {}
        self.attached: list[tuple[str, str, list[str], list[tuple[str, str]]]] = []
        self.fail: str | None = None
        self._next = 4026532000

    def add(self, sandbox: str, links: dict[str, list[str]] | None = None) -> MemoryWorkload:
        """A new running workload (its namespace id is made up)."""
        self._next += 1
        workload = MemoryWorkload(f"net:[{self._next}]", sandbox, dict(links or {}))
        self.workloads[workload.netns] = workload
        return workload

    def remove(self, workload: MemoryWorkload) -> None:
        """The workload stopped: its namespace is gone."""
        self.workloads.pop(workload.netns, None)

    def _find(self, sandbox_key: str, netns: str) -> MemoryWorkload | None:
        for workload in self.workloads.values():
            if sandbox_key and workload.visible and workload.sandbox == sandbox_key:
                return workload
        return self.workloads.get(netns) if netns else None

    def identify(self, addresses: list[str]) -> defer.Deferred[tuple[str, str] | None]:
        wanted = {str(ipaddress.ip_address(a)) for a in addresses}
        for workload in self.workloads.values():
            for name, cidrs in workload.links.items():
                if wanted & {str(ipaddress.ip_interface(c).ip) for c in cidrs}:
                    return defer.succeed((workload.netns, name))
        return defer.succeed(None)

    def look(self, sandbox_key: str, netns: str, addresses: list[str]) -> defer.Deferred[str]:
        workload = self._find(sandbox_key, netns)
        if workload is None:
            return defer.succeed(GONE)
        wanted = {str(ipaddress.ip_address(a)) for a in addresses}
        return defer.succeed(PRESENT if wanted & workload.addresses() else MISSING)

    def attach(
        self,
        link: str,
        sandbox_key: str,
        netns: str,
        name: str,
        addresses: list[str],
        routes: list[tuple[str, str]],
    ) -> defer.Deferred[str]:
        if self.fail is not None:
            return defer.fail(PlumbingError(self.fail))
        workload = self._find(sandbox_key, netns)
        if workload is None:
            return defer.fail(
                PlumbingError(
                    f"the workload's network namespace ({netns or 'never identified'}; sandbox "
                    f"{sandbox_key or '?'}) is not visible here"
                )
            )
        if link not in set(self._our_links()):
            return defer.fail(
                PlumbingError(
                    f'ip link set dev {link} netns 1 failed (1): Cannot find device "{link}"'
                )
            )
        if not name or name in workload.links:
            name = next_free_name(set(workload.links))
        workload.links[name] = list(addresses)
        workload.routes.extend((d, via, name) for d, via in routes)
        self.attached.append((link, workload.netns, list(addresses), list(routes)))
        return defer.succeed(name)
