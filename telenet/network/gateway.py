# -*- test-case-name: tests.test_gateway -*-
"""
The workloads' gateway moves from the daemon's ``tpd-N`` to ``br-daemon`` itself.

Docker gives the daemon container its teleroute endpoint as ``tpd-N``: the far end of a veth
pair whose near end is a port of ``br-daemon`` in the same netns. Left so, every packet a
workload sends to the cluster is switched to that port, crosses the pair and only then is
routed, and every reply crosses it back: one veth hop more each way than a workload on a plain
Docker bridge has. Once ``tpd-N`` holds the daemon's IPv4 address, ``BridgeGateway`` routes
the teleroute subnet through ``br-daemon`` (source: the daemon's address) and turns ARP off on
``tpd-N``. ``br-daemon`` then answers ARP for the daemon's address (Linux answers for any local
address), and packets are routed straight off the bridge. On a dual-stack network IPv6 moves
too: neighbour discovery answers only on the link that holds the address, and not at all on a
link without ARP, so the bridge gets a copy of the daemon's IPv6 address (``/128``, no DAD)
and the subnet's IPv6 route (the kernel's prefix route, metric 256, replaced) before ``tpd-N``
loses ARP; without that, workloads find no neighbour for their IPv6 next hop.

The switch survives a restart of the daemon process (the links keep their settings) and is
made again when the daemon's endpoint is made anew (a restarted daemon container).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from telenet.core.interfaces import AlreadyExists, INetlink
from telenet.core.netip import Address
from telenet.core.reconnect import Reconnector

log = Logger()


class _NotYet(Exception):
    """No tpd-N link holds the daemon's address yet."""


class BridgeGateway(service.Service):
    """
    Waits for the daemon's IPv4 address on a link named ``prefix``N, then makes ``bridge``
    the gateway (see the module docstring). ``daemon_address`` is a
    ``TelerouteCore.on_daemon_address`` listener.

    Looks every ``interval`` seconds; a failing switch is tried again ``retry_after`` later;
    past ``patience`` seconds from the address it gives up (``telenet.core.reconnect``).
    """

    def __init__(
        self,
        netlink: INetlink,
        clock: IReactorTime,
        bridge: str = "br-daemon",
        prefix: str = "tpd-",
        interval: float = 0.25,
        patience: float = 300,
        retry_after: float = 5,
    ) -> None:
        self.netlink = netlink
        self.clock = clock
        self.bridge = bridge
        self.prefix = prefix
        self.interval = interval
        self.patience = patience
        self.retry_after = retry_after
        self.address: Address | None = None
        self.address6: Address | None = None
        #: The link whose gateway role went to the bridge, once it has.
        self.moved_from: str | None = None
        self._deadline = 0.0
        self._switching: Reconnector[str] | None = None

    def daemon_address(self, ipv4: Address | None, ipv6: Address | None) -> None:
        if self._switching is not None:
            self._switching.stop()
            self._switching = None
        self.address = ipv4
        self.address6 = ipv6
        self.moved_from = None
        self._deadline = self.clock.seconds() + self.patience
        if ipv4 is None:
            return
        switching: Reconnector[str] = Reconnector(
            lambda: defer.Deferred.fromCoroutine(self._switch(ipv4)),
            self.clock,
            lambda failures: self._delay(switching),
        )
        switching.observers.append(self._moved)
        switching.on_failure.append(lambda failure, delay: self._failed(failure, delay, ipv4))
        self._switching = switching
        if self.running:
            # The next turn: the caller is making the daemon's endpoint right now.
            switching.start(0)

    def startService(self) -> None:
        super().startService()
        if self._switching is not None and self.moved_from is None:
            self._switching.start(0)

    def stopService(self) -> None:
        super().stopService()
        if self._switching is not None:
            self._switching.stop()

    def _delay(self, switching: Reconnector[str]) -> float:
        failure = switching.last_failure
        return self.interval if failure is None or failure.check(_NotYet) else self.retry_after

    def _moved(self, link: str | None) -> None:
        if link is not None:
            self.moved_from = link

    def _failed(self, failure: Any, delay: float | None, address: Address) -> None:
        switching = self._switching
        if failure.check(_NotYet):
            if self.clock.seconds() >= self._deadline and switching is not None:
                switching.stop()
                log.warn(
                    "No {prefix}N link got the daemon's address {address} within {patience} s; "
                    "workload traffic keeps going through it",
                    prefix=self.prefix,
                    address=str(address),
                    patience=self.patience,
                )
            return
        retry = delay is not None and self.clock.seconds() + delay < self._deadline
        log.failure(
            "Could not make {bridge} the gateway for {address} ({next}); workload traffic "
            "goes through the daemon's own interface meanwhile",
            failure,
            bridge=self.bridge,
            address=str(address),
            next=f"trying again in {delay:g} s" if retry else "giving up",
        )
        if not retry and switching is not None:
            switching.stop()

    async def _switch(self, address: Address) -> str:
        """The link the gateway moved from; ``_NotYet`` while no link holds ``address``."""
        for link in await self.netlink.links():
            if not link.name.startswith(self.prefix) or not link.up:
                continue
            for interface in await self.netlink.addresses(link.name):
                if interface.ip != address:
                    continue
                # Bridge first: until tpd-N stops answering ARP, both reach the daemon.
                await self.netlink.set_arp(self.bridge, True)
                await self.netlink.replace_route(interface.network, self.bridge, address)
                await self._move_ipv6(link.name)
                await self.netlink.set_arp(link.name, False)
                log.info(
                    "Gateway {address} moved from {link} to {bridge}: {subnet} is routed "
                    "through {bridge}",
                    address=str(address),
                    link=link.name,
                    bridge=self.bridge,
                    subnet=str(interface.network),
                )
                return link.name
        raise _NotYet()

    async def _move_ipv6(self, link: str) -> None:
        """The daemon's IPv6 address and its subnet's route on the bridge too, if it has one."""
        if self.address6 is None:
            return
        for interface in await self.netlink.addresses(link):
            if interface.ip != self.address6:
                continue
            try:
                await self.netlink.add_address(self.bridge, ipaddress.ip_interface(interface.ip))
            except AlreadyExists:
                pass  # a restarted daemon process: the bridge kept it
            await self.netlink.replace_route(interface.network, self.bridge, interface.ip)
            log.info(
                "Gateway {address} moved from {link} to {bridge} as well",
                address=str(interface.ip),
                link=link,
                bridge=self.bridge,
            )
            return
