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
fatal, like ``telenet.network.vif.Forwarding``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable

from twisted.logger import Logger

from telenet.core.processes import Processes
from telenet.network.firewall import FirewallRules, IptablesRule, NftChain

log = Logger()

GUARD_TABLE = "telenet_guard"


class TelerouteGuard(FirewallRules):
    """
    While running: new TCP connections that come in on one of ``interfaces`` (names; a
    trailing ``*`` matches any suffix) are refused with a reset unless they are for one of
    ``allowed`` ports.
    """

    nft_table = GUARD_TABLE
    # Ahead of anything else in INPUT: an ACCEPT earlier in the chain would win.
    iptables_insert = True
    what = "teleroute guard rules"

    def __init__(
        self,
        interfaces: Iterable[str],
        allowed: Iterable[int],
        run: Processes,
        which: Callable[[str], str | None] = shutil.which,
    ) -> None:
        super().__init__(run, which)
        self.interfaces = list(dict.fromkeys(interfaces))
        self.allowed = sorted(set(allowed))

    def wanted(self) -> bool:
        return bool(self.interfaces)

    def nft_chains(self) -> list[NftChain]:
        allowed = ["{", ", ".join(str(p) for p in self.allowed), "}"] if self.allowed else []
        match = ["tcp", "dport", "!=", *allowed] if allowed else ["meta", "l4proto", "tcp"]
        opening = "tcp flags & (syn | ack) == syn reject with tcp reset".split()
        rules = [["iifname", f'"{name}"', *match, *opening] for name in self.interfaces]
        return [("input", "type filter hook input priority 0 ; policy accept ;", rules)]

    def iptables_rules(self) -> list[IptablesRule]:
        ports = ",".join(str(p) for p in self.allowed)
        match = ["-m", "multiport", "!", "--dports", ports] if ports else []
        reject = "-j REJECT --reject-with tcp-reset".split()
        return [
            (None, ["INPUT", "-i", name.replace("*", "+"), "-p", "tcp", "--syn", *match, *reject])
            for name in self.interfaces
        ]

    def applied(self, tool: str) -> None:
        log.info(
            "New TCP connections from {interfaces} refused except to ports {ports} ({tool})",
            interfaces=self.interfaces,
            ports=self.allowed,
            tool=tool,
        )
