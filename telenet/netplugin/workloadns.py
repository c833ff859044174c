# -*- test-case-name: tests.test_rejoin,tests.test_workloadns_contract -*-
"""
A running workload's network namespace, from the plug-in: ``NetnsWorkloads``.

A restart of the daemon container deletes every workload's teleroute interface (the other end
of its veth pair lived in the daemon's netns). The workload's own namespace outlives it, so
the plug-in can give it a new interface (``telenet.netplugin.rejoin``). This module is the
kernel side of that, behind ``IWorkloadPlumbing``:

- *identify*: while the interface is there, the namespace holding the endpoint's address is
  found through ``/proc`` (``pidhost``) and remembered by its id, ``net:[inode]``, with the
  interface's name (from the namespace's routes or ``if_inet6``). A managed plug-in cannot
  see Docker's sandbox files, and once the interface is gone no address points at the
  namespace any more.
- *look*: is the interface still there, and is the namespace?
- *attach*: ``ip link set ... netns PID`` (CAP_NET_ADMIN), then inside with ``nsenter``
  (CAP_SYS_ADMIN for ``setns``) the name, addresses, up and the routes.

Reading another container's ``/proc/PID/ns/net`` takes ptrace access to it: root with
CAP_SYS_PTRACE (the managed plug-in's config lists it) or a superset of its capabilities.
The ``/proc`` scans run in a thread (``blocking``).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from telenet.core.processes import Processes
from telenet.netplugin.interfaces import GONE, MISSING, PRESENT, IWorkloadPlumbing
from telenet.netplugin.plumbing import (
    PlumbingError,
    _pids,
    find_pid_in_sandbox,
    link_names,
    local_addresses,
    next_free_name,
    other_namespaces,
)

log = Logger()


Runner = Callable[..., "defer.Deferred[Any]"]


def _run_now(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f, *args)


def netns_of(pid: int | str, proc: str = "/proc") -> str:
    """The id (``net:[inode]``) of the network namespace of ``pid``; OSError if not readable."""
    return os.readlink(os.path.join(proc, str(pid), "ns", "net"))


def find_pid_in_netns(netns: str, proc: str = "/proc") -> int | None:
    """A pid in the network namespace ``netns`` (``net:[inode]``), if one is visible."""
    for pid in _pids(proc):
        try:
            if netns_of(pid, proc) == netns:
                return int(pid)
        except OSError:
            continue
    return None


def interface_holding(proc_net: str, address: str) -> str:
    """
    The name of the interface holding ``address`` in a namespace, from its ``/proc/PID/net``:
    IPv6 from ``if_inet6``; IPv4 from the connected route (no gateway) of the address's subnet
    in ``route``. ``""`` if not found.
    """
    ip = ipaddress.ip_address(address)
    try:
        if ip.version == 6:
            with open(os.path.join(proc_net, "if_inet6"), encoding="ascii") as f:
                for line in f:
                    fields = line.split()
                    if len(fields) >= 6 and bytes.fromhex(fields[0]) == ip.packed:
                        return fields[5]
            return ""
        wanted = int(ip)
        best, best_mask = "", -1
        with open(os.path.join(proc_net, "route"), encoding="ascii") as f:
            next(f, None)  # the header
            for line in f:
                fields = line.split()
                if len(fields) < 8:
                    continue
                # The kernel writes each address as its raw 32-bit value in host order.
                dest, gateway, mask = (
                    int.from_bytes(struct.pack("=I", int(v, 16)), "big")
                    for v in (fields[1], fields[2], fields[7])
                )
                if gateway == 0 and mask and wanted & mask == dest and mask > best_mask:
                    best, best_mask = fields[0], mask
        return best
    except (OSError, ValueError):
        return ""


def identify(addresses: list[str], proc: str = "/proc") -> tuple[str, str] | None:
    """Blocking ``IWorkloadPlumbing.identify``."""
    wanted = {str(ipaddress.ip_address(a)) for a in addresses}
    for pid, netns in other_namespaces(proc):
        net = os.path.join(proc, pid, "net")
        held = sorted(wanted & local_addresses(net))
        if held:
            return netns, interface_holding(net, held[0])
    return None


def workload_pid(sandbox_key: str, netns: str, proc: str = "/proc") -> int | None:
    """A pid in the workload's namespace: by its sandbox file if visible, else by its id."""
    pid = find_pid_in_sandbox(sandbox_key, proc) if sandbox_key else None
    if pid is None and netns:
        pid = find_pid_in_netns(netns, proc)
    return pid


def look(sandbox_key: str, netns: str, addresses: list[str], proc: str = "/proc") -> str:
    """Blocking ``IWorkloadPlumbing.look``."""
    pid = workload_pid(sandbox_key, netns, proc)
    if pid is None:
        return GONE
    wanted = {str(ipaddress.ip_address(a)) for a in addresses}
    return PRESENT if wanted & local_addresses(os.path.join(proc, str(pid), "net")) else MISSING


@implementer(IWorkloadPlumbing)
class NetnsWorkloads:
    """``IWorkloadPlumbing`` with ``/proc``, ``ip`` and ``nsenter``."""

    def __init__(self, run: Processes, blocking: Runner = _run_now, proc: str = "/proc") -> None:
        self._run = run
        self._blocking = blocking
        self._proc = proc

    def identify(self, addresses: list[str]) -> defer.Deferred[tuple[str, str] | None]:
        return self._blocking(identify, list(addresses), self._proc)

    def look(self, sandbox_key: str, netns: str, addresses: list[str]) -> defer.Deferred[str]:
        return self._blocking(look, sandbox_key, netns, list(addresses), self._proc)

    def attach(
        self,
        link: str,
        sandbox_key: str,
        netns: str,
        name: str,
        addresses: list[str],
        routes: list[tuple[str, str]],
    ) -> defer.Deferred[str]:
        return defer.ensureDeferred(self._attach(link, sandbox_key, netns, name, addresses, routes))

    async def _command(self, *argv: str) -> None:
        program = shutil.which(argv[0]) or argv[0]
        out, err, code = await self._run([program, *argv[1:]])
        if code != 0:
            text = (err or out).decode("utf-8", "replace").strip()
            raise PlumbingError(f"{' '.join(argv)} failed ({code}): {text}")

    async def _attach(
        self,
        link: str,
        sandbox_key: str,
        netns: str,
        name: str,
        addresses: list[str],
        routes: list[tuple[str, str]],
    ) -> str:
        pid, taken = await self._blocking(self._find, sandbox_key, netns)
        if not name or name in taken:
            name = next_free_name(taken)
        await self._command("ip", "link", "set", "dev", link, "netns", str(pid))
        inside = ("nsenter", "--target", str(pid), "--net", "--")
        await self._command(*inside, "ip", "link", "set", "dev", link, "name", name)
        for cidr in addresses:
            await self._command(*inside, "ip", "addr", "add", cidr, "dev", name)
        await self._command(*inside, "ip", "link", "set", "dev", name, "up")
        for destination, via in routes:
            hop = ("via", via) if via else ()
            await self._command(*inside, "ip", "route", "replace", destination, *hop, "dev", name)
        return name

    def _find(self, sandbox_key: str, netns: str) -> tuple[int, set[str]]:
        pid = workload_pid(sandbox_key, netns, self._proc)
        if pid is None:
            raise PlumbingError(
                f"the workload's network namespace ({netns or 'never identified'}; sandbox "
                f"{sandbox_key or '?'}) is not visible here"
            )
        try:
            return pid, link_names(pid, self._proc)
        except OSError as e:
            raise PlumbingError(f"cannot list the links of process {pid}: {e}") from e
