"""
The INetlink contract, run against ``MemoryNetlink`` and against pyroute2 in a scratch netns.

The same assertions hold for the fake and the kernel, so tests of the teleroute servicer that
use the fake say something about the real daemon.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task
from zope.interface.verify import verifyObject

from telenet.core.interfaces import (
    AlreadyExists,
    INetlink,
    IRouteWatch,
    LinkExists,
    LinkNotFound,
    NetlinkFailure,
)
from telenet.core.netip import Network
from telenet.core.netlink import PyrouteNetlink
from telenet.testing import MemoryNetlink
from tests.conftest import require

N = ipaddress.ip_network
I = ipaddress.ip_interface  # noqa: E741
FAKE_PID = 4242


class Namespace:
    """An INetlink under test, a pid in another netns, and a way to look into that netns."""

    def __init__(self, nl: Any, pid: int, in_peer: Callable[[str], bool]) -> None:
        self.nl = nl
        self.pid = pid
        self.in_peer = in_peer


async def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (on the real reactor) until ``check()`` holds; the kernel's events are async."""
    from twisted.internet import reactor

    waited = 0.0
    while not check():
        assert waited < timeout, "condition not reached in time"
        await task.deferLater(reactor, 0.05)
        waited += 0.05


def _memory() -> tuple[Namespace, Callable[[], None]]:
    nl = MemoryNetlink(processes={FAKE_PID})
    return Namespace(nl, FAKE_PID, lambda name: nl.moved.get(name) == FAKE_PID), lambda: None


def _real() -> tuple[Namespace, Callable[[], None]]:
    require(os.geteuid() == 0, "real netlink needs root (CAP_NET_ADMIN)")
    require(shutil.which("ip") is not None, "iproute2 (ip) is not installed")
    name = f"tntest-{uuid.uuid4().hex[:8]}"
    peer = name + "p"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "add", peer], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", peer, "sleep", "600"])
    nl = PyrouteNetlink(netns=name)

    def in_peer(link: str) -> bool:
        out = subprocess.run(
            ["ip", "-n", peer, "-o", "link", "show", "dev", link], capture_output=True, text=True
        )
        return out.returncode == 0

    def cleanup() -> None:
        nl.close()
        sleeper.kill()
        sleeper.wait()
        for ns in (name, peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    # `ip netns exec` execs sleep in the same process once it has entered the namespace.
    try:
        for _ in range(250):
            if _same_inode(f"/proc/{sleeper.pid}/ns/net", f"/run/netns/{peer}"):
                break
            subprocess.run(["sleep", "0.02"])
        else:
            raise AssertionError("the sleeper never entered the peer namespace")
    except BaseException:
        cleanup()
        raise
    return Namespace(nl, sleeper.pid, in_peer), cleanup


@pytest_twisted.async_yield_fixture(
    params=["memory", pytest.param("pyroute2", marks=pytest.mark.e2e)]
)
async def ns(request: Any) -> AsyncIterator[Namespace]:
    made, cleanup = _memory() if request.param == "memory" else _real()
    try:
        yield made
    finally:
        cleanup()


def _same_inode(a: str, b: str) -> bool:
    return os.stat(a).st_ino == os.stat(b).st_ino


@pytest_twisted.ensureDeferred
async def test_provides_interface(ns: Namespace) -> None:
    """Both implementations provide every INetlink method."""
    assert verifyObject(INetlink, ns.nl)


@pytest_twisted.ensureDeferred
async def test_ensure_bridge_creates_then_takes_over(ns: Namespace) -> None:
    """
    ensure_bridge creates an up bridge answering ARP; a second call takes the same one over
    and leaves its ARP setting alone.
    """
    first = await ns.nl.ensure_bridge("br-daemon")
    assert first.name == "br-daemon" and first.kind == "bridge" and first.up
    assert first.arp
    await ns.nl.set_arp("br-daemon", False)
    again = await ns.nl.ensure_bridge("br-daemon")
    assert again.index == first.index and not again.arp
    assert [link.name for link in await ns.nl.links()].count("br-daemon") == 1


@pytest_twisted.ensureDeferred
async def test_ensure_bridge_refuses_non_bridge(ns: Namespace) -> None:
    """A non-bridge link holding the bridge's name is an error, not silently reused."""
    await ns.nl.create_veth("tnt-a", "02:00:00:00:00:0a", "tnt-b", "02:00:00:00:00:0b")
    with pytest.raises(LinkExists, match="not a bridge"):
        await ns.nl.ensure_bridge("tnt-a")


@pytest_twisted.ensureDeferred
async def test_veth_pair_mac_master_up(ns: Namespace) -> None:
    """A veth pair gets the MACs asked for; one end goes on the bridge and comes up."""
    await ns.nl.ensure_bridge("br-daemon")
    await ns.nl.create_veth("tp-aaaa", "02:11:22:33:44:55", "tp-bbbb", "02:11:22:33:44:66")
    host = await ns.nl.get_link("tp-aaaa")
    peer = await ns.nl.get_link("tp-bbbb")
    assert host is not None and peer is not None
    assert (host.mac, peer.mac) == ("02:11:22:33:44:55", "02:11:22:33:44:66")
    assert host.kind == "veth" and not host.up and host.master is None and host.arp
    await ns.nl.set_master("tp-aaaa", "br-daemon")
    await ns.nl.set_up("tp-aaaa")
    host = await ns.nl.get_link("tp-aaaa")
    assert host is not None and host.master == "br-daemon" and host.up


@pytest_twisted.ensureDeferred
async def test_veth_name_taken(ns: Namespace) -> None:
    """Creating a veth whose name is taken fails with LinkExists."""
    await ns.nl.create_veth("tnt-a", "02:00:00:00:00:0a", "tnt-b", "02:00:00:00:00:0b")
    with pytest.raises(LinkExists):
        await ns.nl.create_veth("tnt-a", "02:00:00:00:00:0c", "tnt-c", "02:00:00:00:00:0d")
    assert await ns.nl.get_link("tnt-c") is None


@pytest_twisted.ensureDeferred
async def test_missing_links(ns: Namespace) -> None:
    """Operations on a missing link fail with LinkNotFound; queries answer None or empty."""
    assert await ns.nl.get_link("tnt-none") is None
    assert await ns.nl.addresses("tnt-none") == []
    assert await ns.nl.routes("tnt-none") == frozenset()
    for op in (ns.nl.set_up, ns.nl.delete_link):
        with pytest.raises(LinkNotFound):
            await op("tnt-none")
    with pytest.raises(LinkNotFound):
        await ns.nl.set_master("tnt-none", "lo")
    with pytest.raises(LinkNotFound):
        await ns.nl.move_to_netns("tnt-none", ns.pid)


@pytest_twisted.ensureDeferred
async def test_move_to_netns_of_pid(ns: Namespace) -> None:
    """A veth end moved to a pid's netns leaves ours and appears there; its peer stays."""
    await ns.nl.create_veth("tp-host", "02:00:00:00:01:01", "tp-cont", "02:00:00:00:01:02")
    await ns.nl.move_to_netns("tp-cont", ns.pid)
    assert await ns.nl.get_link("tp-cont") is None
    assert await ns.nl.get_link("tp-host") is not None
    assert ns.in_peer("tp-cont")


@pytest_twisted.ensureDeferred
async def test_move_to_missing_pid(ns: Namespace) -> None:
    """Moving to the netns of a pid that cannot exist fails and leaves the link here."""
    await ns.nl.create_veth("tp-host", "02:00:00:00:01:01", "tp-cont", "02:00:00:00:01:02")
    with pytest.raises(NetlinkFailure):
        await ns.nl.move_to_netns("tp-cont", (1 << 22) + 5)
    assert await ns.nl.get_link("tp-cont") is not None


@pytest_twisted.ensureDeferred
async def test_delete_veth_deletes_pair(ns: Namespace) -> None:
    """Deleting one end of a veth pair deletes both."""
    await ns.nl.create_veth("tp-x1", "02:00:00:00:02:01", "tp-x2", "02:00:00:00:02:02")
    await ns.nl.delete_link("tp-x1")
    assert await ns.nl.get_link("tp-x1") is None
    assert await ns.nl.get_link("tp-x2") is None


async def _veth_up(ns: Namespace, a: str = "tnt-v0", b: str = "tnt-v1") -> None:
    await ns.nl.create_veth(a, "02:00:00:00:03:01", b, "02:00:00:00:03:02")
    await ns.nl.set_up(a)
    await ns.nl.set_up(b)


@pytest_twisted.ensureDeferred
async def test_addresses_and_connected_route(ns: Namespace) -> None:
    """An address on an up link shows in addresses() and gives a connected route."""
    await _veth_up(ns)
    await ns.nl.add_address("tnt-v0", I("10.77.1.1/24"))
    assert I("10.77.1.1/24") in await ns.nl.addresses("tnt-v0")
    with pytest.raises(AlreadyExists):
        await ns.nl.add_address("tnt-v0", I("10.77.1.1/24"))
    assert await ns.nl.routes("tnt-v0") == frozenset({N("10.77.1.0/24")})
    assert await ns.nl.routes("tnt-v1") == frozenset()


@pytest_twisted.ensureDeferred
async def test_routes_through_link(ns: Namespace) -> None:
    """Routes added through a link, with or without a gateway, are listed; deleted ones go."""
    await _veth_up(ns)
    await ns.nl.add_address("tnt-v0", I("10.77.1.1/24"))
    await ns.nl.add_route(N("10.96.0.0/12"), "tnt-v0", ipaddress.ip_address("10.77.1.2"))
    await ns.nl.add_route(N("192.168.50.0/24"), "tnt-v0")
    await ns.nl.add_route(N("fd00:77::/64"), "tnt-v0")
    await ns.nl.add_route(N("0.0.0.0/0"), "tnt-v0", ipaddress.ip_address("10.77.1.2"))
    assert await ns.nl.routes("tnt-v0") == frozenset(
        {N("10.77.1.0/24"), N("10.96.0.0/12"), N("192.168.50.0/24"), N("fd00:77::/64")}
    )
    with pytest.raises(AlreadyExists):
        await ns.nl.add_route(N("10.96.0.0/12"), "tnt-v0")
    await ns.nl.delete_route(N("10.96.0.0/12"), "tnt-v0")
    assert N("10.96.0.0/12") not in await ns.nl.routes("tnt-v0")
    with pytest.raises(NetlinkFailure):
        await ns.nl.delete_route(N("10.96.0.0/12"), "tnt-v0")


@pytest_twisted.ensureDeferred
async def test_replace_connected_route_and_arp(ns: Namespace) -> None:
    """
    replace_route moves a link's connected route to another link (with a local source
    address, not any other); set_arp turns a link's ARP off and on.
    """
    await _veth_up(ns)
    await ns.nl.add_address("tnt-v0", I("10.77.1.1/24"))
    with pytest.raises(NetlinkFailure):
        await ns.nl.replace_route(N("10.77.1.0/24"), "tnt-v1", ipaddress.ip_address("10.9.9.9"))
    await ns.nl.replace_route(N("10.77.1.0/24"), "tnt-v1", ipaddress.ip_address("10.77.1.1"))
    assert await ns.nl.routes("tnt-v1") == frozenset({N("10.77.1.0/24")})
    assert await ns.nl.routes("tnt-v0") == frozenset()
    # Again: nothing changes, nothing fails.
    await ns.nl.replace_route(N("10.77.1.0/24"), "tnt-v1", ipaddress.ip_address("10.77.1.1"))
    assert await ns.nl.routes("tnt-v1") == frozenset({N("10.77.1.0/24")})
    await ns.nl.set_arp("tnt-v0", False)
    link = await ns.nl.get_link("tnt-v0")
    assert link is not None and not link.arp
    await ns.nl.set_arp("tnt-v0", True)
    link = await ns.nl.get_link("tnt-v0")
    assert link is not None and link.arp
    with pytest.raises(LinkNotFound):
        await ns.nl.set_arp("tnt-none", False)


@pytest_twisted.ensureDeferred
async def test_ipv6_address_copy_and_prefix_route_move(ns: Namespace) -> None:
    """
    The IPv6 gateway move: a copy of an IPv6 address on a second link is taken (added without
    DAD, which would fail it on the same L2: the e2e dual-stack test), and replace_route moves
    the kernel's IPv6 prefix route (metric 256) instead of adding a second one beside it.
    """
    await _veth_up(ns)
    await ns.nl.add_address("tnt-v0", I("fd00:77::1/64"))
    await ns.nl.add_address("tnt-v1", I("fd00:77::1/128"))
    assert I("fd00:77::1/128") in await ns.nl.addresses("tnt-v1")
    await ns.nl.replace_route(N("fd00:77::/64"), "tnt-v1", ipaddress.ip_address("fd00:77::1"))
    assert N("fd00:77::/64") in await ns.nl.routes("tnt-v1")
    assert N("fd00:77::/64") not in await ns.nl.routes("tnt-v0")


@pytest_twisted.ensureDeferred
async def test_route_needs_reachable_gateway(ns: Namespace) -> None:
    """A gateway outside every connected subnet of the link is refused."""
    await _veth_up(ns)
    with pytest.raises(NetlinkFailure):
        await ns.nl.add_route(N("10.96.0.0/12"), "tnt-v0", ipaddress.ip_address("10.1.2.3"))


@pytest_twisted.ensureDeferred
async def test_watch_routes_live(ns: Namespace) -> None:
    """A watch starts on a missing link, then sees it appear, gain routes, lose them, go."""
    seen: list[frozenset[Network]] = []
    watch = await ns.nl.watch_routes("tnt-vif", seen.append)
    assert verifyObject(IRouteWatch, watch)
    assert seen == [frozenset()]
    try:
        await _veth_up(ns, "tnt-vif", "tnt-far")
        await ns.nl.add_address("tnt-vif", I("10.88.0.2/16"))
        await _eventually(lambda: seen[-1] == frozenset({N("10.88.0.0/16")}))
        await ns.nl.add_route(N("10.96.0.0/12"), "tnt-vif", ipaddress.ip_address("10.88.0.1"))
        await _eventually(lambda: N("10.96.0.0/12") in seen[-1])
        await ns.nl.delete_route(N("10.96.0.0/12"), "tnt-vif")
        await _eventually(lambda: seen[-1] == frozenset({N("10.88.0.0/16")}))
        await ns.nl.delete_link("tnt-vif")
        await _eventually(lambda: seen[-1] == frozenset())
        # Each change is reported once, not repeated while nothing changes.
        assert all(a != b for a, b in zip(seen, seen[1:], strict=False))
    finally:
        await watch.stop()
    count = len(seen)
    await _veth_up(ns, "tnt-vif", "tnt-far")
    await ns.nl.add_address("tnt-vif", I("10.88.0.2/16"))
    await _eventually(lambda: True)
    assert len(seen) == count, "a stopped watch must not call back"
