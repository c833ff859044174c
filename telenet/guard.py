# -*- test-case-name: tests.test_faults_reach -*-
"""
The daemon's own firewall for its control ports: ``PortGuard``.

The teleroute gRPC service listens on every address of the daemon container (the plug-in on
the host reaches it at the daemon's default-bridge address, which the daemon does not know in
advance). Without a guard, every workload on the teleroute network could call it (at the
daemon's teleroute address, or at any other daemon address routed through it) and create,
join or remove endpoints; so could the remote side through the VIF. ``PortGuard`` refuses
(TCP reset) connections to the guarded ports that arrive on the teleroute side (the daemon's
``tpd-*`` interfaces and ``br-daemon``) or on the VIF. DNS (port 53) is not guarded: the
workloads need it.

nftables: a table of its own, ``inet telenet_guard`` (one input chain), replaced on start and
deleted on stop; without ``nft``, iptables/ip6tables INPUT rules. Failures are logged, not
fatal, like ``telenet.vif.Forwarding``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from telenet.vif import Runner

log = Logger()

GUARD_TABLE = "telenet_guard"


def control_port(description: str) -> int | None:
    """The TCP port of a strports description like ``tcp:4038:interface=127.0.0.1``."""
    kind, *parts = re.split(r"(?<!\\):", description)  # "\:" is an escaped colon
    if kind not in ("tcp", "tcp6"):
        return None
    for part in parts:
        value = part.removeprefix("port=")
        if value.isdigit():
            return int(value)
    return None


class PortGuard(service.Service):
    """
    While running: TCP connections to ``ports`` that come in on one of ``interfaces`` (names,
    a trailing ``*`` matches any suffix) are refused with a reset.
    """

    def __init__(
        self,
        ports: Iterable[int],
        interfaces: Iterable[str],
        run: Runner,
        which: Callable[[str], str | None] = shutil.which,
    ) -> None:
        self.ports = sorted(set(ports))
        self.interfaces = list(dict.fromkeys(interfaces))
        self.run = run
        self.which = which
        self.tool: str | None = None
        self.ready: defer.Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self.ready = defer.Deferred.fromCoroutine(self._guard())
        self.ready.addErrback(
            lambda f: log.failure("Guarding ports {ports} failed", f, ports=self.ports)
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
        ports = ["{", ", ".join(str(p) for p in self.ports), "}"]
        return [
            ["iifname", f'"{name}"', "tcp", "dport", *ports, "reject", "with", "tcp", "reset"]
            for name in self.interfaces
        ]

    def _iptables_rules(self) -> list[list[str]]:
        return [
            [
                "INPUT",
                "-i",
                name.replace("*", "+"),
                "-p",
                "tcp",
                "--dport",
                str(port),
                "-j",
                "REJECT",
                "--reject-with",
                "tcp-reset",
            ]  # fmt: skip
            for name in self.interfaces
            for port in self.ports
        ]

    async def _guard(self) -> None:
        if not self.ports or not self.interfaces:
            return
        nft = self.which("nft")
        if nft is not None:
            self.tool = nft
            table = ["inet", GUARD_TABLE]
            await self._call(nft, ["delete", "table", *table], check=False)
            await self._call(nft, ["add", "table", *table])
            await self._call(
                nft,
                [
                    "add",
                    "chain",
                    *table,
                    "input",
                    "{",
                    "type",
                    "filter",
                    "hook",
                    "input",
                    "priority",
                    "0",
                    ";",
                    "policy",
                    "accept",
                    ";",
                    "}",
                ],  # fmt: skip
            )
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
            "Refusing connections to ports {ports} from {interfaces}",
            ports=self.ports,
            interfaces=self.interfaces,
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
            log.failure("Could not remove the port guard rules")
