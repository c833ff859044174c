# -*- test-case-name: tests.test_routeplugin -*-
"""
Giving a restarted daemon container its own interface on a teleroute network.

``docker restart`` of the daemon container makes Docker create and join the daemon's endpoint
*before* the daemon process runs, so the plug-in cannot get a veth pair from it then. The
plug-in accepts that endpoint as pending (the container starts without its teleroute
interface), and once the daemon is back and connected, asks it for the pair as Docker would
have, and puts the container end into the daemon container's network namespace itself:
renamed to the next free ``tpd-N``, with the endpoint's addresses, up. This module is that last
step, behind ``IEndpointPlumbing`` (``telenet.netplugin.interfaces``) so that the driver logic
is tested without a kernel.

The namespace is found by the Join's ``SandboxKey`` when this process can see it (a legacy
plug-in on the host), else by looking through ``/proc`` for the namespace that holds the
daemon's address (a managed plug-in, which has ``pidhost`` but not Docker's netns files).
Configuring the link inside that namespace takes CAP_SYS_ADMIN (``setns``): a legacy plug-in
run as root has it, and the managed plug-in's config lists it with CAP_SYS_PTRACE (live routes
and rejoined workloads need both; a plug-in without it reports that it cannot).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Iterator

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from telenet.core.processes import Processes
from telenet.netplugin.interfaces import IEndpointPlumbing

log = Logger()

INTERFACE_PREFIX = "tpd-"


class PlumbingError(Exception):
    """The interface could not be put in place; the message says why."""


def local_addresses(proc_net: str) -> set[str]:
    """The local addresses of a namespace, from its ``/proc/<pid>/net`` directory."""
    found: set[str] = set()
    try:
        with open(os.path.join(proc_net, "fib_trie"), encoding="ascii") as f:
            last = ""
            for line in f:
                text = line.strip()
                if text.startswith("|--"):
                    last = text[3:].strip()
                elif text.startswith("/32 host LOCAL") and last:
                    found.add(last)
    except OSError:
        pass
    try:
        with open(os.path.join(proc_net, "if_inet6"), encoding="ascii") as f:
            for line in f:
                fields = line.split()
                if fields:
                    found.add(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    except (OSError, ValueError):
        pass
    return found


def _pids(proc: str) -> list[str]:
    try:
        return [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return []


def other_namespaces(proc: str = "/proc") -> Iterator[tuple[str, str]]:
    """
    One pid of each network namespace other than ours, with the namespace's id
    (``net:[inode]``). Needs the host's pid namespace (``pidhost``) to see the containers'.
    """
    try:
        own = os.readlink(os.path.join(proc, "self", "ns", "net"))
    except OSError:
        own = ""
    seen = {own}
    for pid in _pids(proc):
        try:
            netns = os.readlink(os.path.join(proc, pid, "ns", "net"))
        except OSError:
            continue
        if netns not in seen:
            seen.add(netns)
            yield pid, netns


def find_pid_holding(address: str, proc: str = "/proc") -> int | None:
    """A pid in a network namespace, other than ours, that holds ``address``."""
    wanted = str(ipaddress.ip_address(address))
    for pid, _ in other_namespaces(proc):
        if wanted in local_addresses(os.path.join(proc, pid, "net")):
            return int(pid)
    return None


def find_pid_in_sandbox(sandbox_key: str, proc: str = "/proc") -> int | None:
    """A pid whose network namespace is the sandbox file ``sandbox_key`` (if we can see it)."""
    try:
        wanted = os.stat(sandbox_key)
    except OSError:
        return None
    for pid in _pids(proc):
        try:
            st = os.stat(os.path.join(proc, pid, "ns", "net"))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (wanted.st_dev, wanted.st_ino):
            return int(pid)
    return None


def next_free_name(names: set[str]) -> str:
    n = 0
    while f"{INTERFACE_PREFIX}{n}" in names:
        n += 1
    return f"{INTERFACE_PREFIX}{n}"


def link_names(pid: int, proc: str = "/proc") -> set[str]:
    """The interface names in the network namespace of ``pid`` (from its ``net/dev``)."""
    with open(os.path.join(proc, str(pid), "net", "dev"), encoding="ascii") as f:
        return {line.split(":", 1)[0].strip() for line in f if ":" in line}


@implementer(IEndpointPlumbing)
class NetnsPlumbing:
    """
    ``IEndpointPlumbing`` with ``ip`` and ``nsenter``.

    The link is moved by pid (``ip link set ... netns PID`` needs CAP_NET_ADMIN only); it is
    then renamed, addressed and brought up inside the namespace with ``nsenter``, which needs
    CAP_SYS_ADMIN (a legacy plug-in run as root has it).
    """

    def __init__(self, run: Processes, proc: str = "/proc") -> None:
        self._run = run
        self._proc = proc

    async def _command(self, *argv: str) -> None:
        program = shutil.which(argv[0]) or argv[0]
        out, err, code = await self._run([program, *argv[1:]])
        if code != 0:
            text = (err or out).decode("utf-8", "replace").strip()
            raise PlumbingError(f"{' '.join(argv)} failed ({code}): {text}")

    def adopt(
        self, link: str, sandbox_key: str, daemon_host: str, addresses: list[str]
    ) -> defer.Deferred[str]:
        return defer.ensureDeferred(self._adopt(link, sandbox_key, daemon_host, addresses))

    async def _adopt(
        self, link: str, sandbox_key: str, daemon_host: str, addresses: list[str]
    ) -> str:
        pid = find_pid_in_sandbox(sandbox_key, self._proc) if sandbox_key else None
        if pid is None:
            pid = find_pid_holding(daemon_host, self._proc)
        if pid is None:
            raise PlumbingError(
                f"no network namespace holds the daemon's address {daemon_host} "
                f"(and the sandbox {sandbox_key or '?'} is not visible here)"
            )
        try:
            name = next_free_name(link_names(pid, self._proc))
        except OSError as e:
            raise PlumbingError(f"cannot list the links of process {pid}: {e}") from e
        await self._command("ip", "link", "set", "dev", link, "netns", str(pid))
        inside = ("nsenter", "--target", str(pid), "--net", "--")
        await self._command(*inside, "ip", "link", "set", "dev", link, "name", name)
        for cidr in addresses:
            await self._command(*inside, "ip", "addr", "add", cidr, "dev", name)
        await self._command(*inside, "ip", "link", "set", "dev", name, "up")
        return name
