# -*- test-case-name: tests.test_nsroutes_contract -*-
"""
A running container's routes, read and changed in its network namespace: ``NetnsRoutes``,
the real ``IContainerRoutes`` (live routes, ``telenet.netplugin.liveroutes``).

The namespace is the one Join's ``SandboxKey`` names when this process sees that file (a
legacy plug-in on the host), else the one of a process holding the endpoint's address,
found through ``/proc`` (a managed plug-in: it has ``pidhost`` but not Docker's netns files).
Commands are ``ip`` run inside it by ``nsenter --net=PATH``: entering another namespace takes
CAP_SYS_ADMIN (``setns``), which the legacy plug-in has as root and the managed plug-in is
given in ``plugins/teleroute/config.json``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from telenet.core.processes import Processes
from telenet.netplugin.interfaces import ContainerRoute, IContainerRoutes
from telenet.netplugin.plumbing import PlumbingError, find_pid_holding, find_pid_in_sandbox

#: Runs a blocking function (the ``/proc`` scan) off the reactor: a Deferred of its result.
Blocking = Callable[..., "defer.Deferred[Any]"]

#: What ``ip route del`` says of a route that is not there.
_ABSENT = ("No such process", "Cannot find device")


def _inline(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f, *args)


def find_namespace(sandbox_key: str, addresses: list[str], proc: str = "/proc") -> str | None:
    """The path of the namespace of ``sandbox_key``, or of one holding one of ``addresses``."""
    if sandbox_key and os.path.exists(sandbox_key):
        return sandbox_key
    if sandbox_key:
        pid = find_pid_in_sandbox(sandbox_key, proc)
        if pid is not None:
            return os.path.join(proc, str(pid), "ns", "net")
    for address in addresses:
        pid = find_pid_holding(address, proc)
        if pid is not None:
            return os.path.join(proc, str(pid), "ns", "net")
    return None


def parse_routes(text: bytes, version: int = 4) -> list[ContainerRoute]:
    """
    ``ip -j -4|-6 route show``'s unicast routes, link-local and multicast ones left out. A
    connected one is the kernel's and has no gateway (an IPv6 one has no ``scope`` field).
    """
    found = []
    for entry in json.loads(text.decode("utf-8", "replace") or "[]"):
        if not isinstance(entry, dict) or entry.get("type", "unicast") != "unicast":
            continue
        dst = entry.get("dst")
        if not isinstance(dst, str):
            continue
        if dst == "default":
            dst = "0.0.0.0/0" if version == 4 else "::/0"
        try:
            destination = ipaddress.ip_network(dst)
        except ValueError:
            continue
        if destination.is_link_local or destination.is_multicast:
            continue  # IPv6's fe80::/64 on every link: nothing a routed subnet can be
        gateway = str(entry.get("gateway", ""))
        found.append(
            ContainerRoute(
                destination=destination,
                gateway=gateway,
                device=str(entry.get("dev", "")),
                connected=entry.get("protocol") == "kernel"
                and not gateway
                and entry.get("scope", "link") == "link",
            )
        )
    return found


@implementer(IContainerRoutes)
class NetnsRoutes:
    """``IContainerRoutes`` with ``ip`` inside the namespace by ``nsenter``."""

    def __init__(self, run: Processes, blocking: Blocking = _inline, proc: str = "/proc") -> None:
        self._run = run
        self._blocking = blocking
        self._proc = proc

    def namespace(self, sandbox_key: str, addresses: list[str]) -> defer.Deferred[str]:
        d = self._blocking(find_namespace, sandbox_key, addresses, self._proc)

        def found(path: str | None) -> str:
            if path is None:
                raise PlumbingError(
                    f"no network namespace holds {' or '.join(addresses) or 'the address'} "
                    f"(and the sandbox {sandbox_key or '?'} is not visible here)"
                )
            return path

        return d.addCallback(found)

    async def _ip(self, netns: str, *argv: str) -> tuple[bytes, str, int]:
        command = ["nsenter", f"--net={netns}", "--", "ip", *argv]
        program = shutil.which(command[0]) or command[0]
        try:
            out, err, code = await self._run([program, *command[1:]])
        except OSError as e:
            raise PlumbingError(f"{' '.join(command)}: {e}") from e
        return out, (err or out).decode("utf-8", "replace").strip(), code

    def routes(self, netns: str) -> defer.Deferred[list[ContainerRoute]]:
        return defer.ensureDeferred(self._routes(netns))

    async def _routes(self, netns: str) -> list[ContainerRoute]:
        found: list[ContainerRoute] = []
        for version in (4, 6):
            out, text, code = await self._ip(
                netns, "-j", f"-{version}", "route", "show", "table", "main"
            )
            if code != 0:
                if version == 6:
                    continue  # IPv6 off in the container
                raise PlumbingError(f"ip route show in {netns} failed ({code}): {text}")
            try:
                found.extend(parse_routes(out, version))
            except ValueError as e:
                raise PlumbingError(f"ip route show in {netns}: unreadable output: {e}") from e
        return found

    def replace(self, netns: str, destination: str, via: str) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._change(netns, "replace", destination, via))

    def delete(self, netns: str, destination: str, via: str) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._change(netns, "del", destination, via))

    async def _change(self, netns: str, verb: str, destination: str, via: str) -> None:
        _, text, code = await self._ip(netns, "route", verb, destination, "via", via)
        if code == 0 or (verb == "del" and any(s in text for s in _ABSENT)):
            return
        raise PlumbingError(f"ip route {verb} {destination} via {via} failed ({code}): {text}")
