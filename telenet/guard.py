# -*- test-case-name: tests.test_faults_reach -*-
"""
The daemon's own firewall toward the teleroute network: ``TelerouteGuard``.

The teleroute gRPC service listens on every address of the daemon container (the plug-in on
the host reaches it at the daemon's default-bridge address, which the daemon does not know in
advance), SFTP bridges listen on every address too, and the control API may (``--control
tcp:4038``). Without a guard every workload on the teleroute network could call them, at the
daemon's teleroute address or at any other daemon address routed through it: create, join or
remove endpoints, open bridges. The workloads need only the daemon's DNS.

``TelerouteGuard`` refuses (TCP reset) every new TCP connection that comes in on the
teleroute side (the daemon's ``tpd-*`` interfaces and ``br-daemon``) to a port other than
the allowed ones (DNS). Only connection openings (SYN without ACK) are matched, so nothing
the daemon itself opens is affected, and traffic routed through the daemon does not pass the
input hook at all. UDP is left alone: the daemon's only UDP service is DNS.

nftables: a table of its own, ``inet telenet_guard`` (one input chain), replaced on start and
deleted on stop; without ``nft``, iptables/ip6tables INPUT rules. Failures are logged, not
fatal, like ``telenet.vif.Forwarding``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from telenet.vif import Runner

log = Logger()

GUARD_TABLE = "telenet_guard"


class TelerouteGuard(service.Service):
    """
    While running: new TCP connections that come in on one of ``interfaces`` (names; a
    trailing ``*`` matches any suffix) are refused with a reset unless they are for one of
    ``allowed`` ports.
    """

    def __init__(
        self,
        interfaces: Iterable[str],
        allowed: Iterable[int],
        run: Runner,
        which: Callable[[str], str | None] = shutil.which,
    ) -> None:
        self.interfaces = list(dict.fromkeys(interfaces))
        self.allowed = sorted(set(allowed))
        self.run = run
        self.which = which
        self.tool: str | None = None
        self.ready: defer.Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self.ready = defer.Deferred.fromCoroutine(self._guard())
        self.ready.addErrback(
            lambda f: log.failure("Guarding {interfaces} failed", f, interfaces=self.interfaces)
        )

    async def _call(self, tool: str, args: list[str], check: bool = True) -> bool:
        out, err, code = await self.run(tool, args)
        if code != 0 and check:
            raise RuntimeError(
                f"{os.path.basename(tool)} {' '.join(args)} exited {code}: "
                f"{err.decode(errors='replace').strip()}"
            )
        return code == 0

    def _nft_rules(self) -> list[list[str]]:
        allowed = ["{", ", ".join(str(p) for p in self.allowed), "}"] if self.allowed else []
        match = ["tcp", "dport", "!=", *allowed] if allowed else ["meta", "l4proto", "tcp"]
        opening = "tcp flags & (syn | ack) == syn reject with tcp reset".split()
        return [["iifname", f'"{name}"', *match, *opening] for name in self.interfaces]

    def _iptables_rules(self) -> list[list[str]]:
        ports = ",".join(str(p) for p in self.allowed)
        match = ["-m", "multiport", "!", "--dports", ports] if ports else []
        reject = "-j REJECT --reject-with tcp-reset".split()
        return [
            ["INPUT", "-i", name.replace("*", "+"), "-p", "tcp", "--syn", *match, *reject]
            for name in self.interfaces
        ]

    async def _guard(self) -> None:
        if not self.interfaces:
            return
        nft = self.which("nft")
        if nft is not None:
            self.tool = nft
            table = ["inet", GUARD_TABLE]
            await self._call(nft, ["delete", "table", *table], check=False)
            await self._call(nft, ["add", "table", *table])
            chain = "{ type filter hook input priority 0 ; policy accept ; }".split()
            await self._call(nft, ["add", "chain", *table, "input", *chain])
            for rule in self._nft_rules():
                await self._call(nft, ["add", "rule", *table, "input", *rule])
        else:
            tools = [t for t in (self.which("iptables"), self.which("ip6tables")) if t]
            if not tools:
                raise RuntimeError("neither nft nor iptables is installed")
            self.tool = tools[0]
            for tool in tools:
                for rule in self._iptables_rules():
                    if not await self._call(tool, ["-C", *rule], check=False):
                        await self._call(tool, ["-I", *rule], check=tool == tools[0])
        log.info(
            "New TCP connections from {interfaces} refused except to ports {ports}",
            interfaces=self.interfaces,
            ports=self.allowed,
        )

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._unguard())

    async def _unguard(self) -> None:
        if self.ready is not None and not self.ready.called:
            await self.ready
        tool, self.tool = self.tool, None
        if tool is None:
            return
        try:
            if os.path.basename(tool) == "nft":
                await self._call(tool, ["delete", "table", "inet", GUARD_TABLE], check=False)
                return
            for t in (self.which("iptables"), self.which("ip6tables")):
                if t:
                    for rule in self._iptables_rules():
                        await self._call(t, ["-D", *rule], check=False)
        except Exception:
            log.failure("Could not remove the teleroute guard rules")
