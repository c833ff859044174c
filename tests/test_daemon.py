"""
``twistd telepresence-daemon``: options, the composed service, and the whole daemon for real
in scratch network namespaces (gRPC, veth moves, routes, DNS, masquerade, clean exit).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import twisted.internet
from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from telenet.core import aio
from telenet.core.netip import encode_addr
from telenet.daemon import Options, makeService
from telenet.teleroute.proto import teleroute_pb2 as pb
from telenet.testing import MemoryNetlink
from tests.conftest import TWISTD, Daemon, require, run, wait_for
from tests.helpers import result_of

A = ipaddress.ip_address
N = ipaddress.ip_network


def _options(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_option_defaults() -> None:
    """Defaults: cluster.local, port 4039, control on loopback 4038, no VIF, no subnets."""
    options = _options()
    assert options["cluster-domain"] == ["cluster.local"]
    assert options["teleroute-port"] == 4039 and options["dns-port"] == 53
    assert options["control"] == "tcp:4038:interface=127.0.0.1"
    assert options["vif"] is None and options["subnet"] == [] and options["cluster-dns"] is None


def test_repeatable_options() -> None:
    """--subnet and --cluster-domain repeat; domains are normalised."""
    options = _options(
        "--vif",
        "eth1",
        "--subnet",
        "10.96.0.0/12",
        "--subnet",
        "fd00::/64",
        "--cluster-domain",
        "Cluster.Local.",
        "--cluster-domain",
        "corp",
        "--cluster-dns",
        "10.96.0.10",
        "--teleroute-port",
        "5000",
    )
    assert options["subnet"] == [N("10.96.0.0/12"), N("fd00::/64")]
    assert options["cluster-domain"] == ["cluster.local", "corp"]
    assert options["vif"] == "eth1" and options["teleroute-port"] == 5000


def test_namespace_options() -> None:
    """--namespace defaults to default; --mapped-namespace repeats and splits on commas."""
    assert _options()["namespace"] == "default" and _options()["mapped-namespace"] == []
    options = _options(
        "--namespace", "Team-A", "--mapped-namespace", "a,b", "--mapped-namespace", "c"
    )
    assert options["namespace"] == "team-a"
    assert options["mapped-namespace"] == ["a", "b", "c"]


@pytest.mark.parametrize(
    "args,match",
    [
        (["--subnet", "nope"], "not a CIDR"),
        (["--subnet", "0.0.0.0/0"], "default route"),
        (["--cluster-dns", "kube-dns"], "not an IP"),
        (["--teleroute-port", "x"], "port number"),
        (["--teleroute-port", "70000"], "between"),
        (["--vif", "a-very-long-interface-name"], "not an interface"),
        (["--vif", "eth1", "--vif-subnet", "10.0.0.0/8"], "not both"),
        (["--vif-subnet", "nonsense"], "not a CIDR"),
        (["--cluster-domain", " "], "not a domain"),
        (["--namespace", "Not_A_Namespace"], "not a namespace"),
        (["--namespace", ""], "not a namespace"),
        (["--mapped-namespace", "a,b.c"], "not a namespace"),
    ],
)
def test_bad_options(args: list[str], match: str) -> None:
    """Bad values are one-line usage errors."""
    with pytest.raises(usage.UsageError, match=match):
        _options(*args)


def test_install_asyncio_reactor_accepts_asyncio() -> None:
    """Under the asyncio reactor (as in this test run) installing is a no-op."""
    aio.install_asyncio_reactor()
    from twisted.internet import reactor

    assert hasattr(reactor, "_asyncioEventloop")


def test_install_asyncio_reactor_refuses_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """When another reactor was forced, the error says to use --reactor=asyncio."""
    other = object()
    monkeypatch.setitem(sys.modules, "twisted.internet.reactor", other)
    monkeypatch.setattr(twisted.internet, "reactor", other, raising=False)
    with pytest.raises(usage.UsageError, match="--reactor=asyncio"):
        aio.install_asyncio_reactor()


class Composed:
    def __init__(self, *args: str) -> None:
        self.reactor = MemoryReactorClock()
        self.netlink = MemoryNetlink(processes={4242})
        self.options = _options("--dns-port", "0", *args)
        # No forwarding sysctl of this machine is touched (none is found there).
        self.top = makeService(
            self.options,
            reactor=self.reactor,
            netlink=self.netlink,
            sysctl_root="/nonexistent/telenet-test-sysctl",
        )

    def child(self, name: str) -> Any:
        return self.top.getServiceNamed(name)

    def core(self) -> Any:
        """The teleroute logic, with its bridge made (as the gRPC service does on start)."""
        core = self.child("teleroute").core
        result_of(core.start())
        return core

    def status(self) -> Any:
        site = self.child("control").factory
        stub: Any = StubTreq(site.resource)
        response = result_of(stub.get("http://daemon/status"))
        assert response.code == 200
        return json.loads(result_of(response.content()))


def test_make_service_children() -> None:
    """makeService composes netlink, VIF routes, forwarding, gRPC, gateway, DNS, bridges, API."""
    names = [s.name for s in Composed("--vif", "eth1").top]
    assert names == [
        "netlink",
        "forwarding",
        "vif-routes",
        "teleroute",
        "gateway",
        "dns",
        "bridges",
        "control",
    ]
    assert [s.name for s in Composed().top] == [
        "netlink",
        "teleroute",
        "gateway",
        "dns",
        "bridges",
        "control",
    ]
    assert [s.name for s in Composed("--vif-subnet", "10.231.5.0/24").top] == [
        "netlink",
        "vif",
        "teleroute",
        "gateway",
        "dns",
        "bridges",
        "control",
    ]


def test_vif_found_by_subnet_shows_in_status() -> None:
    """With --vif-subnet, the status names the interface once it was found."""
    c = Composed("--vif-subnet", "10.231.5.0/24")
    c.child("vif").startService()
    assert c.status()["vif"] is None
    nl = c.netlink
    result_of(nl.create_veth("eth0", "02:00:00:00:00:01", "far", "02:00:00:00:00:02"))
    result_of(nl.add_address("eth0", ipaddress.ip_interface("10.231.5.3/24")))
    c.reactor.advance(0.25)
    assert c.status()["vif"] == "eth0"
    assert c.child("vif").getServiceNamed("forwarding") is not None


def test_make_service_grpc_and_control_endpoints() -> None:
    """gRPC listens on [::] (0.0.0.0 as fallback) at --teleroute-port; control on --control."""
    c = Composed("--teleroute-port", "4999", "--control", "tcp:0:interface=127.0.0.1")
    assert c.child("teleroute").addresses == ["[::]:4999", "0.0.0.0:4999"]
    c.child("control").startService()
    assert [(port, host) for port, _, _, host in c.reactor.tcpServers] == [(0, "127.0.0.1")]


def test_status_and_dns_follow_the_daemon_endpoint() -> None:
    """The daemon's endpoint address becomes the DNS address; routes and version show."""
    c = Composed("--subnet", "10.96.0.0/12", "--cluster-dns", "10.96.0.10")
    c.child("dns").startService()
    before = c.status()
    assert before["dns"]["local_address"] is None
    assert before["routes"] == ["10.96.0.0/12"] and before["teleroute"]["port"] == 4039
    core = c.core()
    core.connect(pb.ConnectRequest(pid=4242))
    result_of(
        core.create_endpoint(
            pb.CreateEndpointRequest(id="d", addr_ipv4=encode_addr(A("192.0.2.77")), daemon=True)
        )
    )
    after = c.status()
    assert after["dns"]["local_address"] == "192.0.2.77:0"
    assert after["dns"]["cluster_dns"] == "10.96.0.10"
    assert after["teleroute"]["daemon_ipv4"] == "192.0.2.77"
    assert after["bridges"] == [] and after["version"]
    assert len(c.reactor.adoptedPorts) == 2  # UDP and TCP on the new address


def test_namespaces_in_status_and_cache_flushed_by_routes() -> None:
    """The DNS status shows the namespaces and search domains; a route change flushes the cache."""
    c = Composed("--vif", "eth1", "--namespace", "team-a", "--mapped-namespace", "team-b")
    dns_status = c.status()["dns"]
    assert dns_status["namespace"] == "team-a"
    assert dns_status["mapped_namespaces"] == ["team-b"]
    assert dns_status["search"][0] == "team-a.svc.cluster.local"
    resolver = c.child("dns").factory.resolver.resolvers[-1]
    flushed: list[bool] = []
    resolver.flush = lambda: flushed.append(True)
    c.child("vif-routes").table.update(frozenset({N("10.96.0.0/12")}))
    assert flushed == [True]


def test_vif_routes_reach_join() -> None:
    """Routes learned through the VIF are in the next Join, via the daemon's address."""
    c = Composed("--vif", "eth1")
    c.child("vif-routes").startService()
    nl = c.netlink
    result_of(nl.create_veth("eth1", "02:00:00:00:00:01", "far", "02:00:00:00:00:02"))
    result_of(nl.set_up("eth1"))
    result_of(nl.add_address("eth1", ipaddress.ip_interface("172.19.0.3/16")))
    core = c.core()
    core.connect(pb.ConnectRequest(pid=4242))
    for endpoint_id, address, daemon in (("d", "172.30.0.2", True), ("w", "172.30.0.5", False)):
        result_of(
            core.create_endpoint(
                pb.CreateEndpointRequest(
                    id=endpoint_id, addr_ipv4=encode_addr(A(address)), daemon=daemon
                )
            )
        )
    joined = result_of(core.join(pb.EndpointIdentifier(id="w")))
    assert joined.routes == [bytes([172, 19, 0, 0, 16])]
    assert c.status()["routes"] == ["172.19.0.0/16"]


# -- the real daemon in scratch network namespaces ------------------------------------------

CLIENT = textwrap.dedent("""
    import asyncio, ipaddress, json, sys, urllib.request
    import grpc
    from telenet.core.netip import decode_addr, decode_network, encode_addr, encode_prefix
    from telenet.teleroute.proto import teleroute_pb2 as pb, teleroute_pb2_grpc as pbg

    async def main(pid, host):
        out = {}
        async with grpc.aio.insecure_channel(f"{host}:4039") as channel:
            stub = pbg.TelerouteStub(channel)
            # As the plug-in does (it reconnects with back-off), a first attempt that fails
            # is tried again: the host's neighbour resolution on docker0 once failed here.
            stream = stub.Connect(pb.ConnectRequest(pid=pid, gateways=[
                encode_prefix(ipaddress.ip_interface("172.30.0.1/16"))]), wait_for_ready=True)
            out["info"] = dict((await stream.read()).info)
            for eid, addr, daemon in (("d" * 64, "172.30.0.2", True),
                                      ("w" * 64, "172.30.0.5", False)):
                await stub.CreateEndpoint(pb.CreateEndpointRequest(
                    id=eid, addr_ipv4=encode_addr(ipaddress.ip_address(addr)), daemon=daemon))
                joined = await stub.Join(pb.EndpointIdentifier(id=eid))
                out[eid[0]] = {"src": joined.interface_src_name,
                               "routes": [str(decode_network(r)) for r in joined.routes],
                               "via": str(decode_addr(joined.via_ip_v4))}
            try:
                await stub.Join(pb.EndpointIdentifier(id="nope"))
            except grpc.aio.AioRpcError as e:
                out["unknown"] = e.code().name
            out["status"] = json.load(urllib.request.urlopen(f"http://{host}:4038/status"))
            print(json.dumps(out), flush=True)
            # Held open until the daemon stops.
            rest = []
            while (message := await stream.read()) is not grpc.aio.EOF:
                rest.append(message)
            print(json.dumps({"ended": (await stream.code()).name, "more": len(rest)}),
                  flush=True)

    asyncio.run(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"))
""")

DNS_QUERY = textwrap.dedent("""
    import socket, sys
    from twisted.names import dns
    query = dns.Message(id=99, recDes=True)
    query.addQuery(sys.argv[2].encode(), dns.A)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    sock.sendto(query.toStr(), (sys.argv[1], 53))
    answer = dns.Message()
    answer.fromStr(sock.recv(4096))
    print(" ".join(rr.payload.dottedQuad() for rr in answer.answers if rr.type == dns.A))
""")


class Scratch:
    """Namespaces for the daemon, the "cluster" behind its VIF and the plug-in/containers."""

    def __init__(self, root: str) -> None:
        tag = uuid.uuid4().hex[:6]
        self.root = root
        self.daemon_ns, self.cluster_ns, self.host_ns = (f"tntest-{tag}{s}" for s in "dch")
        self.procs: list[subprocess.Popen[bytes]] = []

    def ip(self, ns: str, *args: str) -> str:
        return run("ip", "-n", ns, *args).stdout

    def exec(self, ns: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", ns, *args, **kw)

    def spawn(self, ns: str, *args: str, log: str) -> subprocess.Popen[bytes]:
        out = open(os.path.join(self.root, log), "wb")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        out.close()
        self.procs.append(proc)
        return proc

    def setup(self) -> None:
        d, c = self.daemon_ns, self.cluster_ns
        for ns in (d, c, self.host_ns):
            run("ip", "netns", "add", ns)
            self.ip(ns, "link", "set", "lo", "up")
        # The VIF: a veth from the daemon to the "cluster", with a service subnet behind it.
        self.ip(d, "link", "add", "tntvif0", "type", "veth", "peer", "name", "tntfar0")
        self.ip(d, "link", "set", "tntfar0", "netns", c)
        self.ip(d, "addr", "add", "10.123.0.2/24", "dev", "tntvif0")
        self.ip(d, "link", "set", "tntvif0", "up")
        for address in ("10.123.0.1/24", "10.123.0.9/32"):
            self.ip(c, "addr", "add", address, "dev", "tntfar0")
        self.ip(c, "addr", "add", "10.96.0.10/32", "dev", "lo")
        self.ip(c, "link", "set", "tntfar0", "up")
        # The cluster has no route back to 172.30/16: only masquerading makes replies work.
        self.ip(d, "route", "add", "10.96.0.0/12", "via", "10.123.0.1")

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for ns in (self.daemon_ns, self.cluster_ns, self.host_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def scratch(tmp_path: Any) -> Iterator[Scratch]:
    require(os.geteuid() == 0, "network namespaces need root")
    require(shutil.which("ip") is not None, "iproute2 (ip) is not installed")
    require(
        shutil.which("nft") is not None or shutil.which("iptables") is not None,
        "nftables or iptables is needed for masquerading",
    )
    s = Scratch(str(tmp_path))
    try:
        s.setup()
        yield s
    finally:
        s.cleanup()


@pytest.mark.e2e
def test_daemon_in_scratch_netns(scratch: Scratch) -> None:
    """
    The real twistd telepresence-daemon (no --reactor given) in its own netns: a client does
    Connect/CreateEndpoint/Join; veth ends land in the "host" netns; a workload there reaches
    a cluster service through the daemon (masqueraded) and resolves cluster and non-cluster
    names through the daemon's DNS; SIGTERM ends the Connect stream and leaves no tp- link
    and no nft table behind.
    """
    s = scratch
    py = sys.executable
    with open(os.path.join(s.root, "hosts-cluster"), "w") as f:
        f.write("10.96.0.10 echo.default.svc.cluster.local\n")
    with open(os.path.join(s.root, "hosts-own"), "w") as f:
        f.write("10.96.0.10 only-own-resolver.example\n")
    with open(os.path.join(s.root, "resolv.conf"), "w") as f:
        f.write("nameserver 10.123.0.9\n")
    for address, hosts in (("10.123.0.1", "hosts-cluster"), ("10.123.0.9", "hosts-own")):
        s.spawn(
            s.cluster_ns,
            TWISTD,
            "-n",
            "--pidfile=",
            "dns",
            "--hosts-file",
            os.path.join(s.root, hosts),
            "-i",
            address,
            "-p",
            "53",
            log=f"dns-{address}.log",
        )
    s.spawn(
        s.cluster_ns,
        py,
        "-m",
        "http.server",
        "8080",
        "--bind",
        "10.96.0.10",
        "--directory",
        s.root,
        log="http.log",
    )
    with open(os.path.join(s.root, "index.html"), "w") as f:
        f.write("hello from the cluster\n")
    sleeper = s.spawn(s.host_ns, "sleep", "600", log="sleeper.log")
    daemon = Daemon(
        [
            "ip",
            "netns",
            "exec",
            s.daemon_ns,
            TWISTD,
            "-n",
            "--pidfile=",
            "telepresence-daemon",
            "--vif",
            "tntvif0",
            "--subnet",
            "10.200.0.0/16",
            "--cluster-dns",
            "10.123.0.1",
            "--resolv-conf",
            os.path.join(s.root, "resolv.conf"),
        ],
        os.path.join(s.root, "daemon.log"),
    ).start()
    try:
        wait_for(
            lambda: "listening on port 4039" in daemon.log() or not daemon.alive(),
            20,
            "the daemon's gRPC port",
        )
        assert daemon.alive(), daemon.log()
        wait_for(lambda: _same_netns(sleeper.pid, s.host_ns), 5, "the sleeper's netns")
        client = s.spawn(s.daemon_ns, py, "-c", CLIENT, str(sleeper.pid), log="client.log")
        client_log = os.path.join(s.root, "client.log")
        wait_for(
            lambda: open(client_log).read().count("\n") >= 1 or client.poll() is not None,
            20,
            "the client's first answer",
        )
        lines = open(client_log).read().splitlines()
        story = json.loads(lines[0])
        assert story["info"]["name"] == "telenet-daemon"
        assert story["d"]["routes"] == []
        assert story["w"]["routes"] == ["10.96.0.0/12", "10.123.0.0/24", "10.200.0.0/16"]
        assert story["w"]["via"] == "172.30.0.2" and story["unknown"] == "NOT_FOUND"
        status = story["status"]
        assert status["dns"]["local_address"] == "172.30.0.2:53"
        assert "10.96.0.0/12" in status["routes"]
        ports = s.ip(s.daemon_ns, "-o", "link", "show", "master", "br-daemon")
        assert len([line for line in ports.splitlines() if ": tp-" in line]) == 2, ports
        host_links = s.ip(s.host_ns, "-o", "link")
        assert story["d"]["src"] in host_links and story["w"]["src"] in host_links

        # Play Docker: the daemon's end goes into the daemon netns with its address, the
        # workload's stays in the "host" netns with its address and the Join routes.
        s.ip(s.host_ns, "link", "set", story["d"]["src"], "netns", s.daemon_ns)
        s.ip(s.daemon_ns, "link", "set", story["d"]["src"], "name", "tpd-0")
        s.ip(s.daemon_ns, "addr", "add", "172.30.0.2/16", "dev", "tpd-0")
        s.ip(s.daemon_ns, "link", "set", "tpd-0", "up")
        s.ip(s.host_ns, "link", "set", story["w"]["src"], "name", "tpd-0")
        s.ip(s.host_ns, "addr", "add", "172.30.0.5/16", "dev", "tpd-0")
        s.ip(s.host_ns, "link", "set", "tpd-0", "up")
        for route in story["w"]["routes"]:
            s.ip(s.host_ns, "route", "add", route, "via", story["w"]["via"])
        # The gateway moves to br-daemon (telenet.network.gateway): the subnet is routed through it
        # and tpd-0 no longer answers ARP, so the workload sends to the bridge's MAC.
        wait_for(
            lambda: "dev br-daemon" in s.ip(s.daemon_ns, "route", "show", "172.30.0.0/16"),
            10,
            "the gateway to move to br-daemon",
        )
        assert "NOARP" in s.ip(s.daemon_ns, "link", "show", "tpd-0")
        bridge_mac = s.ip(s.daemon_ns, "-o", "link", "show", "br-daemon").split("link/ether ")[1]

        page = s.exec(
            s.host_ns,
            py,
            "-c",
            "import urllib.request; print(urllib.request."
            "urlopen('http://10.96.0.10:8080/', timeout=10).read().decode())",
        )
        assert "hello from the cluster" in page.stdout
        neighbour = s.ip(s.host_ns, "neigh", "show", "172.30.0.2")
        assert bridge_mac.split()[0] in neighbour, (neighbour, bridge_mac)
        for name in ("echo.default.svc.cluster.local", "only-own-resolver.example"):
            answer = s.exec(s.host_ns, py, "-c", DNS_QUERY, "172.30.0.2", name)
            assert answer.stdout.split() == ["10.96.0.10"], (name, answer.stderr)
        assert (
            "masquerade" in s.exec(s.daemon_ns, "nft", "list", "ruleset", check=False).stdout
            or shutil.which("nft") is None
        )
    finally:
        code = daemon.stop()
    # twistd re-raises the SIGTERM it handled once it has shut down cleanly.
    assert code in (0, -signal.SIGTERM), daemon.log()
    assert "Server Shut Down" in daemon.log() and "Traceback" not in daemon.log()
    wait_for(lambda: client.poll() is not None, 10, "the client to see the stream end")
    ended = json.loads(open(client_log).read().splitlines()[-1])
    assert ended == {"ended": "OK", "more": 0}
    leftovers = [
        line
        for ns in (s.daemon_ns, s.host_ns)
        for line in s.ip(ns, "-o", "link").splitlines()
        if " tp-" in line
    ]
    assert leftovers == []
    if shutil.which("nft"):
        assert "telenet" not in s.exec(s.daemon_ns, "nft", "list", "ruleset").stdout


IMAGE = os.environ.get("TELENET_IMAGE", "telenet")


@pytest.mark.e2e
def test_daemon_in_container(tmp_path: Any) -> None:
    """
    The daemon in the project image, as the issue runs it (--pid host, NET_ADMIN): the VIF
    network is connected after start and its subnet is learned live; a client on the host
    gets veth ends moved into a scratch netns by pid; docker stop ends the Connect stream.
    """
    require(os.geteuid() == 0, "moving links between namespaces needs root")
    require(shutil.which("docker") is not None, "the docker CLI is not installed")
    require(
        subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode == 0,
        f"image {IMAGE} is missing (scripts/build-image)",
    )
    tag = uuid.uuid4().hex[:6]
    name, network, ns = f"tntest-daemon-{tag}", f"tntest-cluster-{tag}", f"tntest-{tag}"
    run("docker", "network", "create", "--internal", network)
    run("ip", "netns", "add", ns)
    sleeper = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "600"])
    client: subprocess.Popen[bytes] | None = None
    try:
        run(
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--pid",
            "host",
            "--cap-add",
            "NET_ADMIN",
            "--sysctl",
            "net.ipv4.ip_forward=1",
            IMAGE,
            "twistd",
            "-n",
            "telepresence-daemon",
            "--vif",
            "eth1",
            "--control",
            "tcp:4038",
        )

        def logs() -> str:
            return (
                run("docker", "logs", name, check=False).stdout
                + run("docker", "logs", name, check=False).stderr
            )

        wait_for(lambda: "listening on port 4039" in logs(), 30, "the daemon in its container")
        run("docker", "network", "connect", network, name)
        subnet = run(
            "docker", "network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", network
        ).stdout.strip()
        wait_for(lambda: f"now ['{subnet}']" in logs(), 15, "the VIF subnet to be learned")
        address = run(
            "docker", "inspect", "-f", "{{.NetworkSettings.Networks.bridge.IPAddress}}", name
        ).stdout.strip()
        wait_for(lambda: _same_netns(sleeper.pid, ns), 5, "the sleeper's netns")
        log_path = tmp_path / "client.log"
        with open(log_path, "wb") as out:
            client = subprocess.Popen(
                [sys.executable, "-c", CLIENT, str(sleeper.pid), address],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(
            lambda: log_path.read_text().count("\n") >= 1 or client.poll() is not None,
            20,
            "the client's answers",
        )
        first = (log_path.read_text().splitlines() or [""])[0]
        assert first.startswith("{"), _unreachable_daemon(name, address, log_path.read_text())
        story = json.loads(first)
        assert story["w"]["routes"] == [subnet] and story["w"]["via"] == "172.30.0.2"
        assert story["status"]["dns"]["local_address"] == "172.30.0.2:53"
        moved = run("ip", "-n", ns, "-o", "link").stdout
        assert story["d"]["src"] in moved and story["w"]["src"] in moved
        assert "masquerade" in run("docker", "exec", name, "nft", "list", "ruleset").stdout
        run("docker", "stop", name)
        wait_for(lambda: client.poll() is not None, 10, "the Connect stream to end")
        assert json.loads(log_path.read_text().splitlines()[-1]) == {"ended": "OK", "more": 0}
        assert "Server Shut Down" in logs() and "Traceback" not in logs()
        # The pairs went with the daemon: nothing is left in the plug-in's netns.
        assert " tp-" not in run("ip", "-n", ns, "-o", "link").stdout
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        run("docker", "rm", "-f", name, check=False)
        run("docker", "network", "rm", network, check=False)
        sleeper.kill()
        sleeper.wait()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _unreachable_daemon(name: str, address: str, client_log: str) -> str:
    """Everything that tells why the host could not reach the daemon container."""

    def out(*command: str) -> str:
        result = run(*command, check=False)
        return f"$ {' '.join(command)}\n{result.stdout}{result.stderr}"

    return "\n".join(
        [
            "the client failed:",
            client_log[-3000:],
            out("ip", "neigh", "show", "to", address),
            out("ip", "route", "get", address),
            out("ip", "-d", "link", "show", "docker0"),
            out("bridge", "fdb", "show", "br", "docker0"),
            out("docker", "exec", name, "ip", "-d", "addr"),
            out("docker", "exec", name, "ip", "route"),
            out("docker", "exec", name, "ip", "neigh"),
            out("docker", "exec", name, "nft", "list", "ruleset"),
            out("docker", "exec", name, "cat", "/proc/sys/net/ipv4/conf/eth0/arp_ignore"),
            out("docker", "logs", "--tail", "60", name),
            out("iptables-save"),
            out("dmesg", "-T", "--level", "err,warn"),
        ]
    )


def _same_netns(pid: int, ns: str) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{ns}").st_ino
    except OSError:
        return False
