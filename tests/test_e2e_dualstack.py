"""
End to end: both IP families through the daemon, on real dockerd (issue 17, part 3).

One shared set-up for every variant: a dual-stack internal "cluster" network (an IPv4 subnet
of Docker's choice and a random ULA /64) whose container answers HTTP and DNS (A and AAAA for
``echo.default.svc.cluster.local``) on both families and serves an SFTP agent on IPv6, and the
teleroute plug-in (legacy, on the host). Each variant then has its daemon container and its
teleroute network:

- ``dual``: a dual-stack teleroute network; a workload gets one route per family, each via
  the daemon's address of that family (``via_ip_v4`` / ``via_ip_v6``), reaches the service by
  both addresses, and the daemon's DNS answers the name with A and AAAA;
- ``ipv6-only``: the cluster side has IPv6 only (the VIF's IPv4 address is removed, the
  cluster DNS is asked over IPv6): the workload gets the IPv6 route alone and reaches the
  service by its IPv6 address, the name answered with AAAA;
- ``ipv4-only``: a teleroute network without IPv6 (``docker.enableIPv6: false``) in front of
  the dual-stack cluster: the workload gets the IPv4 route alone, the IPv6 one is left out
  (not a failed Join), and reaches the service over IPv4.

A telemount volume whose agent is given by its IPv6 address (bare and bracketed) mounts and
reads, directly and through an SFTP bridge the daemon opens to ``[addr]:port``.

Docker 20.10 makes IPv6 networks with an explicit subnet without any daemon-level IPv6
setting (``--ipv6``/``fixed-cidr-v6`` only concern the default bridge, which is what
``telenet connect`` asks about: docs/teleroute.md, "Both IP families").
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import uuid
from collections.abc import Iterator

import pytest

from .conftest import BUSYBOX, Telemount, port_open, run, wait_for
from .test_e2e_teleroute import (
    BODY,
    HERE,
    IMAGE,
    SERVICE,
    LegacyPlugin,
    Setup,
    assert_nothing_left,
    docker,
    http_get_command,
    images,
)

__all__ = ["http_get_command", "images"]  # fixtures, used by name

pytestmark = pytest.mark.e2e


def uid() -> str:
    return uuid.uuid4().hex[:8]


def ula_subnet() -> str:
    """A random /64 of fd00::/8 (RFC 4193), unlikely to meet any other network's."""
    return str(ipaddress.IPv6Network((int.from_bytes(b"\xfd" + secrets.token_bytes(7)) << 64, 64)))


class DualCluster:
    """The dual-stack cluster network and its container (HTTP, DNS, SFTP agent on IPv6)."""

    def __init__(self) -> None:
        self.network = f"tntest-cluster6-{uid()}"
        self.container = f"tntest-cluster6-{uid()}"
        self.subnet6 = ula_subnet()

    def start(self) -> DualCluster:
        docker("network", "create", "--internal", "--ipv6", "--subnet", self.subnet6, self.network)
        docker(
            "run",
            "-d",
            "--name",
            self.container,
            "--network",
            self.network,
            "-v",
            f"{os.path.join(HERE, 'e2e_cluster.py')}:/cluster.py:ro",
            IMAGE,
            "python3",
            "/cluster.py",
            "--body",
            BODY,
            "--record",
            f"{SERVICE}=self",
            "--record",
            f"{SERVICE}=self6",
        )
        out = docker("network", "inspect", "-f", "{{json .}}", self.network).stdout
        network = json.loads(out)
        self.subnet = next(c["Subnet"] for c in network["IPAM"]["Config"] if ":" not in c["Subnet"])
        mine = next(iter(network["Containers"].values()))
        self.ip = mine["IPv4Address"].split("/")[0]
        self.ip6 = mine["IPv6Address"].split("/")[0]
        assert self.ip6, network
        # The agent: a raw SFTP server on IPv6 only, exporting echo's /data.
        docker(
            "exec",
            self.container,
            "sh",
            "-c",
            "mkdir -p /exports/echo/data && echo 'token over IPv6' > /exports/echo/data/token",
        )
        docker(
            "exec",
            "-d",
            self.container,
            "twistd",
            "-n",
            "--pidfile=",
            "--logfile=/agent.log",
            "sftp-agent",
            "--root",
            "/exports",
            "--listen",
            r"tcp6:8022:interface=\:\:",
        )
        return self

    def stop(self) -> None:
        docker("rm", "-f", self.container, check=False)
        docker("network", "rm", self.network, check=False)


@pytest.fixture(scope="module")
def dual_cluster(images: None) -> Iterator[DualCluster]:
    c = DualCluster()
    try:
        c.start()
    except BaseException:
        c.stop()
        raise
    yield c
    c.stop()


@pytest.fixture(scope="module")
def route_plugin(images: None) -> Iterator[LegacyPlugin]:
    workdir = f"/tmp/tntest-{uid()}"
    os.makedirs(workdir)
    plugin = LegacyPlugin(workdir)
    try:
        plugin.start()
        yield plugin
    finally:
        plugin.stop()
        shutil.rmtree(workdir, ignore_errors=True)


class FamilySetup(Setup):
    """A daemon and a teleroute network of the variant's families on the dual cluster."""

    def __init__(
        self, plugin: LegacyPlugin, cluster: DualCluster, http_get: str, variant: str
    ) -> None:
        super().__init__(plugin, cluster, http_get)  # type: ignore[arg-type]
        self.dual = cluster
        self.variant = variant
        self.subnet6 = ula_subnet()

    def start(self) -> FamilySetup:
        c = self.dual
        cluster_dns = c.ip6 if self.variant == "ipv6-only" else c.ip
        docker(
            "create",
            "--name",
            self.daemon,
            "--pid",
            "host",
            "--cap-add",
            "NET_ADMIN",
            "--sysctl",
            "net.ipv4.ip_forward=1",
            "--sysctl",
            "net.ipv6.conf.all.disable_ipv6=0",
            "--sysctl",
            "net.ipv6.conf.all.forwarding=1",
            IMAGE,
            "twistd",
            "-n",
            "--pidfile=",
            "telepresence-daemon",
            "--vif-subnet",
            c.subnet6,
            "--vif-subnet",
            c.subnet,
            "--cluster-domain",
            "cluster.local",
            "--cluster-dns",
            cluster_dns,
        )
        docker("network", "connect", c.network, self.daemon)
        docker("start", self.daemon)
        self.host = docker(
            "container", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", self.daemon
        ).stdout.strip()
        self.wait_for_daemon()
        if self.variant == "ipv6-only":
            vif = self.vif_of(c.subnet6)
            docker("exec", self.daemon, "ip", "-4", "addr", "flush", "dev", vif)
            wait_for(lambda: self.routes() == [c.subnet6], 10, "the daemon to route IPv6 only")
        family = [] if self.variant == "ipv4-only" else ["--ipv6", "--subnet", self.subnet6]
        docker(
            "network",
            "create",
            "-d",
            self.plugin.driver,
            "--internal",
            *family,
            "-o",
            f"host={self.host}",
            "-o",
            "port=4039",
            self.network,
        )
        docker("network", "connect", "--driver-opt", "daemon=true", self.network, self.daemon)
        out = docker("network", "inspect", "-f", "{{json .Containers}}", self.network).stdout
        mine = json.loads(out)[
            docker("container", "inspect", "-f", "{{.Id}}", self.daemon).stdout.strip()
        ]
        self.address = mine["IPv4Address"].split("/")[0]
        self.address6 = mine["IPv6Address"].split("/")[0]
        return self

    def vif_of(self, subnet: str) -> str:
        out = docker("exec", self.daemon, "ip", "-o", "addr", "show", "to", subnet).stdout
        return out.split()[1]

    def routes(self) -> list[str]:
        """The daemon's routed subnets, from its teleroute state (``ip`` in its netns)."""
        out = docker(
            "exec", self.daemon, "python3", "-c", _STATUS_SCRIPT, check=False
        ).stdout.strip()
        return sorted(json.loads(out or "[]"))

    def fetch(self, address: str) -> str:
        """The shell command that GETs the service at ``address`` (of either family)."""
        if self.http_get.startswith("wget"):
            host = f"[{address}]" if ":" in address else address
            return f"wget -q -O- -T 5 http://{host}/"
        return self.get(address)


#: The daemon's routed subnets, from its control API (docs/daemon.md).
_STATUS_SCRIPT = (
    "import json, urllib.request;"
    "s = json.load(urllib.request.urlopen('http://127.0.0.1:4038/status', timeout=5));"
    "print(json.dumps(s.get('routes') or []))"
)


@pytest.fixture(params=["dual", "ipv6-only", "ipv4-only"])
def family_setup(
    request: pytest.FixtureRequest,
    route_plugin: LegacyPlugin,
    dual_cluster: DualCluster,
    http_get_command: str,
) -> Iterator[FamilySetup]:
    s = FamilySetup(route_plugin, dual_cluster, http_get_command, request.param)
    try:
        s.start()
        yield s
    finally:
        s.stop()
    assert_nothing_left(s)


def sections(out: str, count: int) -> list[str]:
    parts = out.split("---\n")
    assert len(parts) == count, out
    return parts


def test_both_families_by_address_and_by_name(family_setup: FamilySetup) -> None:
    """Per-family routes and next hops, the service by each address, A and AAAA by name."""
    s = family_setup
    c = s.dual
    out = s.run(
        "ip route; echo ---; ip -6 route; echo ---; "
        f"nslookup -type=a {SERVICE}; echo ---; nslookup -type=aaaa {SERVICE}; echo ---; "
        f"{s.fetch(c.ip)}; echo ---; {s.fetch(c.ip6)}",
        check=False,
    )
    routes4, routes6, a, aaaa, body4, body6 = sections(out.stdout, 6)
    context = (out, s.daemon_logs(), s.plugin.log())
    v4 = s.variant in ("dual", "ipv4-only")
    v6 = s.variant in ("dual", "ipv6-only")
    assert (f"{c.subnet} via {s.address} dev tpd-0" in routes4) == v4, context
    assert (f"{c.subnet6} via {s.address6} dev tpd-0" in routes6) == v6, context
    # The daemon's DNS answers the cluster's records of both types whatever it routes.
    assert c.ip in a, context
    assert c.ip6 in aaaa, context
    assert (body4.strip() == BODY) == v4, context
    assert (body6.strip() == BODY) == v6, context
    if s.variant == "ipv4-only":
        assert "left out" in s.daemon_logs(), context


def test_volume_through_a_bridge_to_an_ipv6_agent(
    request: pytest.FixtureRequest, dual_cluster: DualCluster, route_plugin: LegacyPlugin
) -> None:
    """
    The daemon of an IPv6-only cluster opens an SFTP bridge to ``[addr]:8022`` (what
    ``telenet engage --agent [addr]:8022`` asks), and a telemount volume mounts through it.
    """
    s = FamilySetup(
        route_plugin, dual_cluster, request.getfixturevalue("http_get_command"), "ipv6-only"
    )
    try:
        s.start()
        telemount = request.getfixturevalue("telemount")
        agent = f"[{dual_cluster.ip6}]:8022"
        out = docker("exec", s.daemon, "python3", "-c", _BRIDGE_SCRIPT, agent).stdout
        port = int(json.loads(out)["port"])
        name = f"tntest-{uid()}"
        run(
            "docker", "volume", "create", "-d", telemount.name,
            "-o", f"host={s.host}", "-o", f"port={port}",
            "-o", "container=echo", "-o", "dir=/data", "-o", "timeout=10s", name,
        )  # fmt: skip
        try:
            out = run(
                "docker", "run", "--rm", "--network", "none", "--volume-driver", telemount.name,
                "-v", f"{name}:/a:nocopy", BUSYBOX, "cat", "/a/token", timeout=60,
            )  # fmt: skip
            assert out.stdout == "token over IPv6\n", (out, s.daemon_logs())
        finally:
            run("docker", "volume", "rm", "-f", name, check=False)
    finally:
        s.stop()
    assert_nothing_left(s)


#: POST /bridges to the daemon's control API for the agent in argv[1]; prints the answer.
_BRIDGE_SCRIPT = (
    "import sys, json, urllib.request;"
    "r = urllib.request.Request('http://127.0.0.1:4038/bridges', method='POST',"
    " data=json.dumps({'agent': sys.argv[1]}).encode(),"
    " headers={'content-type': 'application/json'});"
    "print(urllib.request.urlopen(r, timeout=30).read().decode())"
)


def test_volume_from_an_agent_given_by_its_ipv6_address(
    dual_cluster: DualCluster, telemount: Telemount, route_plugin: LegacyPlugin
) -> None:
    """telemount mounts from ``host=<IPv6>`` (bare and bracketed: one server) and reads."""
    c = dual_cluster
    wait_for(lambda: port_open(8022, c.ip6), 20, "the IPv6 agent")
    volumes = []
    try:
        for host in (c.ip6, f"[{c.ip6}]"):
            name = f"tntest-{uid()}"
            run(
                "docker",
                "volume",
                "create",
                "-d",
                telemount.name,
                "-o",
                f"host={host}",
                "-o",
                "port=8022",
                "-o",
                "container=echo",
                "-o",
                "dir=/data",
                "-o",
                "timeout=10s",
                name,
            )
            volumes.append(name)
        out = run(
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--volume-driver",
            telemount.name,
            "-v",
            f"{volumes[0]}:/a:nocopy",
            "-v",
            f"{volumes[1]}:/b:nocopy",
            BUSYBOX,
            "cat",
            "/a/token",
            "/b/token",
            timeout=60,
        )
        assert out.stdout == "token over IPv6\n" * 2, out
        servers = os.listdir(telemount.mount_root)
        assert len(servers) == 1, servers
    finally:
        for name in volumes:
            run("docker", "volume", "rm", "-f", name, check=False)
