"""
telenet.network.gateway against the memory netlink and a task.Clock: when and how the workloads'
gateway moves from the daemon's tpd-N to br-daemon.
"""

from __future__ import annotations

import ipaddress

from twisted.internet import task
from twisted.logger import LogLevel, capturedLogs

from telenet.core.interfaces import NetlinkFailure
from telenet.network.gateway import BridgeGateway
from telenet.testing import MemoryNetlink

from .helpers import result_of

DAEMON = ipaddress.ip_address("172.30.0.2")
SUBNET = ipaddress.ip_network("172.30.0.0/16")


def world() -> tuple[MemoryNetlink, task.Clock, BridgeGateway]:
    netlink = MemoryNetlink()
    result_of(netlink.ensure_bridge("br-daemon"))
    result_of(netlink.create_veth("tp-port", "02:00:00:00:00:01", "tpd-0", "02:00:00:00:00:02"))
    result_of(netlink.set_master("tp-port", "br-daemon"))
    clock = task.Clock()
    gateway = BridgeGateway(netlink, clock)
    gateway.startService()
    return netlink, clock, gateway


def docker_sets_up(netlink: MemoryNetlink) -> None:
    """What Docker does with the daemon's endpoint after Join: address, then up."""
    result_of(netlink.add_address("tpd-0", ipaddress.ip_interface("172.30.0.2/16")))
    result_of(netlink.set_up("tpd-0"))


def test_moves_once_the_address_is_there() -> None:
    """
    Nothing happens before the daemon's address is known and held by an up tpd-N; then the
    subnet is routed through the bridge, which answers ARP, and tpd-0 stops answering.
    """
    netlink, clock, gateway = world()
    clock.advance(10)
    gateway.daemon_address(DAEMON, None)
    clock.advance(1)
    assert not [c for c in netlink.calls if c[0] in ("set_arp", "replace_route")]
    docker_sets_up(netlink)
    assert result_of(netlink.routes("tpd-0")) == frozenset({SUBNET})
    clock.advance(gateway.interval)
    assert gateway.moved_from == "tpd-0"
    assert result_of(netlink.routes("br-daemon")) == frozenset({SUBNET})
    assert result_of(netlink.routes("tpd-0")) == frozenset()
    assert netlink.links_by_name["br-daemon"].arp
    assert not netlink.links_by_name["tpd-0"].arp
    switch = [c for c in netlink.calls if c[0] in ("set_arp", "replace_route")]
    # The bridge answers before tpd-0 stops: the gateway is never unanswered.
    assert switch == [
        ("set_arp", "br-daemon", True),
        ("replace_route", SUBNET, "br-daemon", DAEMON),
        ("set_arp", "tpd-0", False),
    ]
    calls = len(netlink.calls)
    clock.advance(60)
    assert len(netlink.calls) == calls, "it stops looking once moved"


def test_gives_up_after_patience_with_a_warning() -> None:
    """An address that never shows up: a warning after ``patience``, no change, no more looks."""
    netlink, clock, gateway = world()
    with capturedLogs() as events:
        gateway.daemon_address(DAEMON, None)
        for _ in range(int(gateway.patience / gateway.interval) + 10):
            clock.advance(gateway.interval)
    assert gateway.moved_from is None
    assert not [c for c in netlink.calls if c[0] in ("set_arp", "replace_route")]
    assert [
        e for e in events if e["log_level"] == LogLevel.warn and "got the daemon" in e["log_format"]
    ]
    assert not clock.getDelayedCalls()


def test_netlink_failure_is_logged_and_tried_again() -> None:
    """
    A failing switch is logged, not raised, and tried again ``retry_after`` later (a busy
    netlink socket passes); past ``patience`` it gives up.
    """
    netlink, clock, gateway = world()
    docker_sets_up(netlink)
    netlink.fail["replace_route"] = NetlinkFailure("replace route: Device or resource busy")
    with capturedLogs() as events:
        gateway.daemon_address(DAEMON, None)
        clock.advance(0)
    assert gateway.moved_from is None
    assert [e for e in events if e.get("log_failure") is not None]
    clock.advance(gateway.retry_after)
    assert gateway.moved_from == "tpd-0"
    assert result_of(netlink.routes("br-daemon")) == frozenset({SUBNET})

    netlink, clock, gateway = world()
    docker_sets_up(netlink)
    gateway.patience = 12
    with capturedLogs() as events:
        gateway.daemon_address(DAEMON, None)
        for _ in range(4):
            netlink.fail["set_arp"] = NetlinkFailure("set arp: Operation not permitted")
            clock.advance(gateway.retry_after)
    assert gateway.moved_from is None and not clock.getDelayedCalls()
    assert len([e for e in events if e.get("log_failure") is not None]) == 2


def test_no_ipv4_address_means_nothing_to_move() -> None:
    """An IPv6-only daemon endpoint keeps its tpd-N path (neighbour discovery is per link)."""
    netlink, clock, gateway = world()
    gateway.daemon_address(None, ipaddress.ip_address("fd00::2"))
    clock.advance(10)
    assert not clock.getDelayedCalls()
    assert not [c for c in netlink.calls if c[0] in ("set_arp", "replace_route")]


def test_stop_cancels_the_next_look_and_start_resumes() -> None:
    """Stopped while waiting: no call left pending; started again: it goes on looking."""
    netlink, clock, gateway = world()
    gateway.daemon_address(DAEMON, None)
    clock.advance(0)
    assert clock.getDelayedCalls()
    gateway.stopService()
    assert not clock.getDelayedCalls()
    docker_sets_up(netlink)
    gateway.startService()
    clock.advance(0)
    assert gateway.moved_from == "tpd-0"


DAEMON6 = ipaddress.ip_address("fd00:30::2")
SUBNET6 = ipaddress.ip_network("fd00:30::/64")


def test_dual_stack_moves_ipv6_too_before_arp_goes() -> None:
    """
    On a dual-stack network the bridge also gets the daemon's IPv6 address (/128) and the IPv6
    subnet's route, before tpd-0 loses ARP (which takes neighbour discovery with it); a second
    switch (a restarted daemon process) finds the address there and carries on.
    """
    netlink, clock, gateway = world()
    gateway.daemon_address(DAEMON, DAEMON6)
    docker_sets_up(netlink)
    result_of(netlink.add_address("tpd-0", ipaddress.ip_interface("fd00:30::2/64")))
    clock.advance(gateway.interval)
    assert gateway.moved_from == "tpd-0"
    host_route = ipaddress.ip_network("fd00:30::2/128")  # the kernel's, of the copy
    assert result_of(netlink.routes("br-daemon")) == frozenset({SUBNET, SUBNET6, host_route})
    assert ipaddress.ip_interface("fd00:30::2/128") in result_of(netlink.addresses("br-daemon"))
    switch = [c for c in netlink.calls if c[0] in ("set_arp", "replace_route", "add_address")]
    assert switch[-3:] == [
        ("add_address", "br-daemon", ipaddress.ip_interface("fd00:30::2/128")),
        ("replace_route", SUBNET6, "br-daemon", DAEMON6),
        ("set_arp", "tpd-0", False),
    ]
    again = BridgeGateway(netlink, clock)
    again.startService()
    again.daemon_address(DAEMON, DAEMON6)
    clock.advance(again.interval)
    assert again.moved_from == "tpd-0"
    assert result_of(netlink.routes("br-daemon")) == frozenset({SUBNET, SUBNET6, host_route})
