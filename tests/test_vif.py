"""Routes from the VIF (learned live) and forwarding + masquerade toward it."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import uuid
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task, utils

from telenet.core.netip import Network
from telenet.network.vif import Forwarding, RouteTable, VifRouteService, VifSelector
from telenet.testing import FakeProcesses, MemoryNetlink
from tests.conftest import require
from tests.helpers import result_of

N = ipaddress.ip_network
I = ipaddress.ip_interface  # noqa: E741


def test_route_table_merges_static_and_learned() -> None:
    """current() is the static subnets plus learned ones, IPv4 first, each once."""
    table = RouteTable([N("10.96.0.0/12"), N("fd00::/64")])
    heard: list[list[Network]] = []
    table.subscribe(heard.append)
    table.update(frozenset({N("10.96.0.0/12"), N("172.19.0.0/16")}))
    assert table.current() == [N("10.96.0.0/12"), N("172.19.0.0/16"), N("fd00::/64")]
    assert heard == [table.current()]
    table.update(frozenset({N("10.96.0.0/12"), N("172.19.0.0/16")}))
    assert len(heard) == 1, "an unchanged set is not announced again"


def test_vif_service_learns_routes_live() -> None:
    """The service learns the VIF's routes, even when the VIF appears after it started."""
    nl = MemoryNetlink()
    table = RouteTable([N("10.200.0.0/16")])
    svc = VifRouteService(nl, "eth1", table)
    svc.startService()
    assert table.current() == [N("10.200.0.0/16")]
    result_of(nl.create_veth("eth1", "02:00:00:00:00:01", "tnt-far", "02:00:00:00:00:02"))
    result_of(nl.set_up("eth1"))
    result_of(nl.add_address("eth1", I("172.19.0.3/16")))
    result_of(nl.add_route(N("10.96.0.0/12"), "eth1", ipaddress.ip_address("172.19.0.1")))
    assert table.current() == [N("10.96.0.0/12"), N("10.200.0.0/16"), N("172.19.0.0/16")]
    result_of(nl.delete_route(N("10.96.0.0/12"), "eth1"))
    assert N("10.96.0.0/12") not in table.current()
    result_of(svc.stopService())
    result_of(nl.add_route(N("10.97.0.0/16"), "eth1"))
    assert N("10.97.0.0/16") not in table.current(), "no updates after stop"


def _veth(nl: MemoryNetlink, name: str, address: str) -> None:
    result_of(nl.create_veth(name, "02:00:00:00:00:01", f"{name}-far", "02:00:00:00:00:02"))
    result_of(nl.set_up(name))
    result_of(nl.add_address(name, I(address)))


@pytest.mark.parametrize("cluster_link", ["eth0", "eth1", "eth2"])
def test_vif_selector_finds_the_interface_by_its_address(cluster_link: str) -> None:
    """
    Whatever name Docker gave the VIF network's interface (eth0 before the default bridge's
    eth1, or after it), the VIF is the one holding an address in that network's subnet.
    """
    nl = MemoryNetlink()
    clock = task.Clock()
    made: list[str] = []

    def make(name: str) -> list[tuple[str, Any]]:
        made.append(name)
        return [("vif-routes", VifRouteService(nl, name, table))]

    table = RouteTable()
    selector = VifSelector(nl, [N("10.231.5.0/24")], make, clock)
    selector.startService()
    others = [n for n in ("eth0", "eth1", "eth2") if n != cluster_link][:1]
    _veth(nl, others[0], "172.17.0.2/16")
    clock.advance(1)
    assert selector.vif is None and made == [] and table.current() == []
    _veth(nl, cluster_link, "10.231.5.3/24")
    clock.advance(0.25)
    assert selector.vif == cluster_link and made == [cluster_link]
    assert table.current() == [N("10.231.5.0/24")], "only the cluster's subnet is routed"
    assert selector.getServiceNamed("vif-routes").running
    clock.advance(10)
    assert made == [cluster_link]  # found once, no more looking
    result_of(selector.stopService())
    assert not selector.getServiceNamed("vif-routes").running


def test_vif_selector_keeps_looking_and_says_so() -> None:
    """No interface in the subnet yet: it looks on, and warns once after its patience."""
    nl = MemoryNetlink()
    clock = task.Clock()
    selector = VifSelector(nl, [N("10.231.5.0/24")], lambda name: [], clock, patience=5)
    selector.startService()
    clock.pump([0.25] * 40)
    assert selector.vif is None and clock.getDelayedCalls()
    _veth(nl, "eth3", "10.231.5.9/24")
    clock.advance(2)
    assert selector.vif == "eth3" and not clock.getDelayedCalls()


def _sysctl_root(tmp_path: Any, v4: str = "0", v6: str = "0") -> str:
    root = tmp_path / "sys"
    (root / "net/ipv4").mkdir(parents=True)
    (root / "net/ipv6/conf/all").mkdir(parents=True)
    (root / "net/ipv4/ip_forward").write_text(v4 + "\n")
    (root / "net/ipv6/conf/all/forwarding").write_text(v6 + "\n")
    return str(root)


def test_forwarding_with_nft(tmp_path: Any) -> None:
    """With nft: sysctls on, a table of our own with one masquerade rule, deleted on stop."""
    root = _sysctl_root(tmp_path)
    run = FakeProcesses({("nft", "delete"): 1})
    fwd = Forwarding("eth1", run, sysctl_root=root, which=lambda t: f"/usr/sbin/{t}")
    fwd.startService()
    result_of(fwd.ready)  # type: ignore[arg-type]
    assert open(os.path.join(root, "net/ipv4/ip_forward")).read().strip() == "1"
    assert open(os.path.join(root, "net/ipv6/conf/all/forwarding")).read().strip() == "1"
    assert run.commands == [
        ["nft", "delete", "table", "inet", "telenet"],
        ["nft", "add", "table", "inet", "telenet"],
        [
            "nft",
            "add",
            "chain",
            "inet",
            "telenet",
            "postrouting",
            "{",
            "type",
            "nat",
            "hook",
            "postrouting",
            "priority",
            "100",
            ";",
            "policy",
            "accept",
            ";",
            "}",
        ],
        ["nft", "add", "rule", "inet", "telenet", "postrouting", "oifname", "eth1", "masquerade"],
        [
            "nft",
            "add",
            "chain",
            "inet",
            "telenet",
            "prerouting",
            "{",
            "type",
            "filter",
            "hook",
            "prerouting",
            "priority",
            "-300",
            ";",
            "policy",
            "accept",
            ";",
            "}",
        ],
        [
            "nft",
            "add",
            "rule",
            "inet",
            "telenet",
            "prerouting",
            "iifname",
            "br-daemon",
            "meta",
            "pkttype",
            "!=",
            "host",
            "notrack",
        ],
    ]
    run.commands.clear()
    result_of(fwd.stopService())
    assert run.commands == [["nft", "delete", "table", "inet", "telenet"]]


def test_forwarding_with_iptables(tmp_path: Any) -> None:
    """Without nft: iptables and ip6tables rules (masquerade, bridge notrack), added once."""
    run = FakeProcesses(
        {
            ("iptables", "-t", "nat", "-C"): 1,
            ("iptables", "-t", "raw", "-C"): 1,
            ("ip6tables", "-t", "nat", "-C"): 0,
            ("ip6tables", "-t", "raw", "-C"): 1,
        }
    )
    tools = {"iptables": "/usr/sbin/iptables", "ip6tables": "/usr/sbin/ip6tables"}
    fwd = Forwarding("eth1", run, sysctl_root=_sysctl_root(tmp_path, "1", "1"), which=tools.get)
    fwd.startService()
    result_of(fwd.ready)  # type: ignore[arg-type]
    rule = ["POSTROUTING", "-o", "eth1", "-j", "MASQUERADE"]
    raw = [
        "PREROUTING",
        "-i",
        "br-daemon",
        "-m",
        "pkttype",
        "!",
        "--pkt-type",
        "host",
        "-j",
        "CT",
        "--notrack",
    ]
    assert run.commands == [
        ["iptables", "-t", "nat", "-C", *rule],
        ["iptables", "-t", "nat", "-A", *rule],
        ["iptables", "-t", "raw", "-C", *raw],
        ["iptables", "-t", "raw", "-A", *raw],
        ["ip6tables", "-t", "nat", "-C", *rule],  # there already: not added twice
        ["ip6tables", "-t", "raw", "-C", *raw],
        ["ip6tables", "-t", "raw", "-A", *raw],
    ]
    run.commands.clear()
    result_of(fwd.stopService())
    assert run.commands == [
        ["iptables", "-t", "nat", "-D", *rule],
        ["iptables", "-t", "raw", "-D", *raw],
        ["ip6tables", "-t", "nat", "-D", *rule],
        ["ip6tables", "-t", "raw", "-D", *raw],
    ]


def test_forwarding_failures_are_not_fatal(tmp_path: Any) -> None:
    """Read-only sysctls and no firewall tool are logged; start and stop still complete."""
    fwd = Forwarding(
        "eth1", FakeProcesses(), sysctl_root=str(tmp_path / "missing"), which=lambda t: None
    )
    fwd.startService()
    assert fwd.ready is not None and result_of(fwd.ready) is None
    assert fwd.tool is None
    result_of(fwd.stopService())


@pytest.mark.e2e
@pytest_twisted.ensureDeferred
async def test_forwarding_real_nft_in_scratch_netns(tmp_path: Any) -> None:
    """Against real nftables in a scratch netns: the masquerade rule is there, then gone."""
    require(os.geteuid() == 0, "nftables needs root")
    require(
        shutil.which("nft") is not None and shutil.which("ip") is not None,
        "nft and ip must be installed",
    )
    from twisted.internet import reactor

    ns = f"tntest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:

        def in_ns(command: list[str]) -> defer.Deferred[Any]:
            return utils.getProcessOutputAndValue(
                shutil.which("ip") or "ip",
                ["netns", "exec", ns, *command],
                reactor=reactor,
            )

        fwd = Forwarding("tntvif0", in_ns, sysctl_root=_sysctl_root(tmp_path))
        fwd.startService()
        await fwd.ready  # type: ignore[misc]
        assert fwd.tool is not None

        def listing() -> str:
            return subprocess.run(
                ["ip", "netns", "exec", ns, "nft", "list", "ruleset"],
                capture_output=True,
                text=True,
            ).stdout

        assert 'oifname "tntvif0" masquerade' in listing()
        assert 'iifname "br-daemon" meta pkttype != host notrack' in listing()
        await fwd.stopService()
        assert "telenet" not in listing()
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
