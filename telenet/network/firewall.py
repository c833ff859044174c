# -*- test-case-name: tests.test_vif,tests.test_faults_reach -*-
"""
Firewall rules the daemon owns while it runs: ``FirewallRules``, the base of the masquerade
(``telenet.network.vif.Forwarding``) and of the teleroute guard
(``telenet.network.guard.TelerouteGuard``).

With ``nft`` installed the rules live in an nftables table of their own, replaced on start
(a table left by an earlier run would double them) and deleted on stop. Without it they are
iptables/ip6tables rules, each added once (checked with ``-C`` first) and removed on stop.
Failures are logged, not fatal: the daemon still serves what does not depend on them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from telenet.core.processes import Processes

log = Logger()


#: An nftables chain: its name, its spec (type, hook, priority, policy) and its rules.
NftChain = tuple[str, str, list[list[str]]]
#: An iptables rule: its table (None: iptables' default, filter) and its arguments.
IptablesRule = tuple[str | None, list[str]]


class FirewallRules(service.Service):
    """
    While running: the rules a subclass describes with ``nft_chains`` (in the nftables
    table ``nft_table``) or ``iptables_rules`` (``iptables_insert``: at the head of their
    chain rather than the tail). ``what`` names them in log messages; ``applied`` logs what
    now holds.
    """

    nft_table = "telenet"
    iptables_insert = False
    what = "firewall rules"

    def __init__(self, run: Processes, which: Callable[[str], str | None] = shutil.which) -> None:
        self.run = run
        self.which = which
        #: The tool that made the rules (nft, or the first of iptables/ip6tables); None: none.
        self.tool: str | None = None
        self.ready: defer.Deferred[None] | None = None

    # -- what a subclass says

    def wanted(self) -> bool:
        """Whether there is anything to do at all."""
        return True

    def nft_chains(self) -> list[NftChain]:
        raise NotImplementedError

    def iptables_rules(self) -> list[IptablesRule]:
        raise NotImplementedError

    def applied(self, tool: str) -> None:
        """Log that the rules hold (``tool``: "nftables" or "iptables")."""

    # -- the service

    def startService(self) -> None:
        super().startService()
        self.ready = defer.Deferred.fromCoroutine(self._apply())
        self.ready.addErrback(lambda f: log.failure("Setting up {what} failed", f, what=self.what))

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._remove())

    async def _call(self, tool: str, args: list[str], check: bool = True) -> bool:
        out, err, code = await self.run([tool, *args])
        if code != 0 and check:
            raise RuntimeError(
                f"{os.path.basename(tool)} {' '.join(args)} exited {code}: "
                f"{err.decode(errors='replace').strip()}"
            )
        return code == 0

    @staticmethod
    def _table(table: str | None) -> list[str]:
        return ["-t", table] if table is not None else []

    async def _apply(self) -> None:
        if not self.wanted():
            return
        nft = self.which("nft")
        if nft is not None:
            self.tool = nft
            inet = ["inet", self.nft_table]
            await self._call(nft, ["delete", "table", *inet], check=False)
            await self._call(nft, ["add", "table", *inet])
            for chain, spec, rules in self.nft_chains():
                await self._call(nft, ["add", "chain", *inet, chain, "{", *spec.split(), "}"])
                for rule in rules:
                    await self._call(nft, ["add", "rule", *inet, chain, *rule])
            self.applied("nftables")
            return
        tools = [t for t in (self.which("iptables"), self.which("ip6tables")) if t]
        if not tools:
            raise RuntimeError("neither nft nor iptables is installed")
        self.tool = tools[0]
        add = "-I" if self.iptables_insert else "-A"
        for tool in tools:
            for table, rule in self.iptables_rules():
                if not await self._call(tool, [*self._table(table), "-C", *rule], check=False):
                    # ip6tables may lack a module the rule needs: only iptables must work.
                    await self._call(
                        tool, [*self._table(table), add, *rule], check=tool == tools[0]
                    )
        self.applied("iptables")

    async def _remove(self) -> None:
        if self.ready is not None and not self.ready.called:
            await self.ready
        tool, self.tool = self.tool, None
        if tool is None:
            return
        try:
            if os.path.basename(tool) == "nft":
                await self._call(tool, ["delete", "table", "inet", self.nft_table], check=False)
                return
            for t in (self.which("iptables"), self.which("ip6tables")):
                if t:
                    for table, rule in self.iptables_rules():
                        await self._call(t, [*self._table(table), "-D", *rule], check=False)
        except Exception:
            log.failure("Could not remove the {what}", what=self.what)
