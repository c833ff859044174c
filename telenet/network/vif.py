# -*- test-case-name: tests.test_vif -*-
"""
The daemon's view of the remote network: the "VIF" (docs/daemon.md).

telenet has no traffic manager: the remote network is whatever the daemon container reaches
through one interface (``--vif IFACE``, or the one holding an address in ``--vif-subnet``),
plus subnets named with ``--subnet``. ``RouteTable`` holds the routed subnets, learning the
VIF's kernel routes live over netlink (the interface may appear later, when the container is
connected to that network). ``VifSelector`` finds the VIF by the address Docker gave it when
its name is not known in advance. ``Forwarding`` turns on IP forwarding and masquerades
traffic leaving through the VIF, so the far side needs no route back to the teleroute
network.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from telenet.core.interfaces import INetlink, IRouteWatch
from telenet.core.netip import Network
from telenet.core.processes import Processes
from telenet.network.firewall import FirewallRules, IptablesRule, NftChain

log = Logger()

NFT_TABLE = "telenet"


class RouteTable:
    """
    I know the subnets the daemon routes: the ``static`` ones and those of the kernel routes
    through the VIF, kept current by ``VifRouteService``. ``current()`` is what Join gives.
    """

    def __init__(self, static: Iterable[Network] = ()) -> None:
        self.static = frozenset(static)
        self.learned: frozenset[Network] = frozenset()
        self._listeners: list[Callable[[list[Network]], None]] = []

    def current(self) -> list[Network]:
        """Every routed subnet, IPv4 first, each once."""
        return sorted(self.static | self.learned, key=lambda n: (n.version, n))

    def update(self, learned: frozenset[Network]) -> None:
        """Replace the subnets learned from the VIF."""
        if learned == self.learned:
            return
        added, gone = learned - self.learned, self.learned - learned
        self.learned = learned
        log.info(
            "VIF routes changed: added {added}, removed {removed}; now {routes}",
            added=[str(n) for n in sorted(added, key=str)],
            removed=[str(n) for n in sorted(gone, key=str)],
            routes=[str(n) for n in self.current()],
        )
        self._tell()

    def set_static(self, static: Iterable[Network]) -> None:
        """Replace the ``--subnet`` ones (the control API's ``PUT /subnets``)."""
        fresh = frozenset(static)
        if fresh == self.static:
            return
        added, gone = fresh - self.static, self.static - fresh
        self.static = fresh
        log.info(
            "Subnets changed: added {added}, removed {removed}; now {routes}",
            added=[str(n) for n in sorted(added, key=str)],
            removed=[str(n) for n in sorted(gone, key=str)],
            routes=[str(n) for n in self.current()],
        )
        self._tell()

    def _tell(self) -> None:
        for listener in self._listeners:
            listener(self.current())

    def subscribe(self, listener: Callable[[list[Network]], None]) -> None:
        self._listeners.append(listener)


class VifRouteService(service.Service):
    """Watches the routes through the VIF while running and feeds them to a ``RouteTable``."""

    def __init__(self, netlink: INetlink, vif: str, table: RouteTable) -> None:
        self.netlink = netlink
        self.vif = vif
        self.table = table
        self._watch: defer.Deferred[IRouteWatch] | None = None

    def startService(self) -> None:
        super().startService()
        self._watch = self.netlink.watch_routes(self.vif, self.table.update)
        self._watch.addCallback(self._started)
        self._watch.addErrback(
            lambda f: log.failure("Cannot watch the routes through {vif}", f, vif=self.vif)
        )

    def _started(self, watch: IRouteWatch) -> IRouteWatch:
        log.info(
            "Watching routes through {vif}: {routes}",
            vif=self.vif,
            routes=[str(n) for n in self.table.learned],
        )
        return watch

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        watching, self._watch = self._watch, None
        if watching is None:
            return defer.succeed(None)

        def stop(watch: IRouteWatch | None) -> defer.Deferred[None] | None:
            return watch.stop() if watch is not None else None

        return watching.addCallback(stop)


class VifSelector(service.MultiService):
    """
    Finds the VIF by the address Docker gave it on the VIF network: the link holding an
    address in one of ``subnets`` (that network's subnets), never by an interface name
    guessed in advance; Docker does not number a container's interfaces in the order its
    networks were connected. Once found (looked for every ``interval`` seconds until then),
    the services ``make(name)`` gives (masquerade, route watch) run as children.
    """

    def __init__(
        self,
        netlink: INetlink,
        subnets: Iterable[Network],
        make: Callable[[str], list[tuple[str, service.Service]]],
        clock: IReactorTime,
        interval: float = 0.25,
        patience: float = 30,
    ) -> None:
        super().__init__()
        self.netlink = netlink
        self.subnets = list(subnets)
        self.make = make
        self.clock = clock
        self.interval = interval
        self.patience = patience
        #: The VIF's name, once found.
        self.vif: str | None = None
        self._call: IDelayedCall | None = None
        self._since = 0.0
        self._warned = False

    def startService(self) -> None:
        super().startService()
        if self.vif is None:
            self._since = self.clock.seconds()
            self._schedule(0)

    def stopService(self) -> defer.Deferred[None]:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return defer.maybeDeferred(super().stopService)

    def _schedule(self, delay: float) -> None:
        self._call = self.clock.callLater(delay, self._look)

    def _look(self) -> None:
        self._call = None
        d = defer.Deferred.fromCoroutine(self._find())
        d.addCallback(self._found)
        d.addErrback(lambda f: log.failure("Looking for the VIF failed", f))
        d.addBoth(lambda _: self._again())

    async def _find(self) -> str | None:
        for link in await self.netlink.links():
            if link.name == "lo":
                continue
            for address in await self.netlink.addresses(link.name):
                if any(address.ip in subnet for subnet in self.subnets):
                    return link.name
        return None

    def _found(self, name: str | None) -> None:
        if name is None or not self.running or self.vif is not None:
            return
        self.vif = name
        log.info(
            "The VIF is {vif}: it holds an address in {subnets}",
            vif=name,
            subnets=[str(s) for s in self.subnets],
        )
        for child_name, child in self.make(name):
            child.setName(child_name)
            child.setServiceParent(self)

    def _again(self) -> None:
        if self.vif is not None or not self.running:
            return
        waited = self.clock.seconds() - self._since
        if waited >= self.patience and not self._warned:
            self._warned = True
            log.warn(
                "No interface holds an address in {subnets} after {waited:g} s; still "
                "looking (is the daemon connected to the VIF network?)",
                subnets=[str(s) for s in self.subnets],
                waited=waited,
            )
        self._schedule(self.interval if waited < self.patience else 2.0)


class Forwarding(FirewallRules):
    """
    While running: IP forwarding on, and traffic leaving through the VIF masqueraded.

    Masquerading uses an nftables table of its own (``inet telenet``) when ``nft`` is
    installed, else iptables/ip6tables rules (``telenet.network.firewall``). Failures are
    logged, not fatal: the daemon still serves DNS and the control API, and the container's
    ``--sysctl net.ipv4.ip_forward=1`` may already have done half the job.

    Frames switched by ``bridge`` from port to port (between the containers' veth ports and the
    daemon's own ``tpd-0``) are exempt from connection tracking. On Docker hosts
    ``br_netfilter`` is loaded, so bridged frames also pass the IP hooks; conntrack would then
    see each connection first on the bridge, bind it to "no NAT", and the masquerade rule
    would never apply when the same packet is routed to the VIF (checked in a scratch netns:
    without the exemption the far side gets the containers' addresses and its replies go
    nowhere). Frames addressed to the bridge itself (packet type "host": the gateway, see
    ``telenet.network.gateway``) are routed from it and must be tracked, or they are not
    masqueraded.
    """

    nft_table = NFT_TABLE
    what = "masquerade rules"

    def __init__(
        self,
        vif: str,
        run: Processes,
        sysctl_root: str = "/proc/sys",
        which: Callable[[str], str | None] = shutil.which,
        bridge: str = "br-daemon",
    ) -> None:
        super().__init__(run, which)
        self.vif = vif
        self.bridge = bridge
        self.sysctl_root = sysctl_root

    def startService(self) -> None:
        self._sysctls()
        super().startService()

    def nft_chains(self) -> list[NftChain]:
        return [
            (
                "postrouting",
                "type nat hook postrouting priority 100 ; policy accept ;",
                [["oifname", self.vif, "masquerade"]],
            ),
            (
                "prerouting",
                "type filter hook prerouting priority -300 ; policy accept ;",
                [["iifname", self.bridge, "meta", "pkttype", "!=", "host", "notrack"]],
            ),
        ]

    def iptables_rules(self) -> list[IptablesRule]:
        return [
            ("nat", ["POSTROUTING", "-o", self.vif, "-j", "MASQUERADE"]),
            (
                "raw",
                [
                    "PREROUTING",
                    "-i",
                    self.bridge,
                    "-m",
                    "pkttype",
                    "!",
                    "--pkt-type",
                    "host",
                    "-j",
                    "CT",
                    "--notrack",
                ],
            ),
        ]

    def applied(self, tool: str) -> None:
        where = f"nftables table inet {self.nft_table}" if tool == "nftables" else tool
        log.info("Masquerading traffic out of {vif} ({where})", vif=self.vif, where=where)

    def _sysctls(self) -> None:
        for key in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
            path = os.path.join(self.sysctl_root, key)
            try:
                with open(path) as f:
                    if f.read().strip() == "1":
                        continue
                with open(path, "w") as f:
                    f.write("1\n")
                log.info("Enabled {sysctl}", sysctl=key.replace("/", "."))
            except OSError as e:
                # IPv6 forwarding matters only for IPv6 routes; Docker's containers have
                # IPv6 off unless asked, so only IPv4 is worth a warning.
                emit = log.warn if key.startswith("net/ipv4") else log.info
                emit(
                    "Cannot enable {sysctl} ({error}); run the container with --sysctl {sysctl}=1",
                    sysctl=key.replace("/", "."),
                    error=e.strerror or str(e),
                )
