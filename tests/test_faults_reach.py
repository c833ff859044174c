"""
Fault suite, item 6 (exposure): which of the daemon's ports a container can reach.

The daemon container (from the project image, on the default bridge, its VIF on the cluster
network, ``tpd-0`` on the teleroute network) listens on:

- gRPC ``telepresence.teleroute`` on port 4039, all addresses: the teleroute plug-in on the
  host reaches it at the daemon's default-bridge address;
- the control API on 127.0.0.1:4038 (the CLI reaches it with ``docker exec``);
- DNS on port 53 of its teleroute addresses only (the workloads' resolver).

- SFTP bridges (opened over the control API) on a kernel-chosen port, all addresses: telemount
  on the host reaches them at the daemon's default-bridge address.

The policy, checked here from the host, a container on the default bridge, a workload on the
teleroute network, the cluster container behind the VIF, and inside the daemon:

| from | gRPC 4039 | control 4038 | DNS 53 | SFTP bridge |
|---|---|---|---|---|
| the host (the plug-ins) | bridge address | no | no | bridge address |
| a container on the default bridge | bridge address | no | no | bridge address |
| a workload on the teleroute network | no | no | teleroute address (UDP, TCP) | no |
| the cluster (VIF side) | VIF address | no | no | VIF address |
| inside the daemon | 127.0.0.1 | 127.0.0.1 | no | - |

Workloads are refused by the daemon's ``telenet.network.guard.TelerouteGuard`` (nftables table
``inet telenet_guard``: a TCP reset for every new connection that comes in on ``tpd-*`` or
``br-daemon`` to a port other than DNS). The VIF side is not guarded: the VIF may be the
plug-in's own path (``--vif eth0`` when the cluster is reached through the host).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any

import pytest
from twisted.internet import defer

from telenet.network.guard import TelerouteGuard
from telenet.testing import FakeProcesses

from .conftest import require
from .faultkit import record
from .helpers import result_of
from .test_e2e_teleroute import (  # noqa: F401 (fixtures)
    BODY,
    IMAGE,
    SERVICE,
    Setup,
    cluster,
    docker,
    http_get_command,
    images,
    ip_on,
    legacy_plugin,
    legacy_setup,
    uid,
    workdir,
)

GRPC = 4039
CONTROL = 4038
DNS = 53

#: Run by python3 in a container of the project image: for each ``proto:host:port``, whether
#: the daemon's own service answers there. A bare TCP connect proves nothing: on some
#: machines (the test machine) any off-host address accepts TCP connections, and something on
#: the network answers DNS and HTTP/2: only answers the daemon alone gives count (NOT_FOUND
#: naming the endpoint from Leave, the control API's status, the cluster's address for a
#: ``cluster.local`` name). Arguments: the name, its address, then the targets.
PROBE = r"""
import socket, struct, sys
CLUSTER_IP = socket.inet_aton(sys.argv[2])

QUERY = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"".join(
    bytes([len(p)]) + p.encode() for p in sys.argv[1].split(".")) + b"\0\0\1\0\1"

def tcp(host, port, send):
    with socket.create_connection((host, port), timeout=2) as s:
        s.settimeout(2)
        s.sendall(send)
        data = b""
        try:
            while len(data) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        return data

def grpc(host, port):  # Leave of an endpoint that does not exist: NOT_FOUND, no change
    import grpc as g
    from telenet.teleroute.proto import teleroute_pb2, teleroute_pb2_grpc
    with g.insecure_channel(f"{host}:{port}") as channel:
        stub = teleroute_pb2_grpc.TelerouteStub(channel)
        try:
            stub.Leave(teleroute_pb2.EndpointIdentifier(id="tntest-probe"), timeout=3)
        except g.RpcError as e:
            return e.code() == g.StatusCode.NOT_FOUND and "tntest-probe" in (e.details() or "")
        return False

def http(host, port):  # through an SFTP bridge (a TCP relay) to the cluster's web server
    return b"@BODY@" in tcp(host, port, b"GET / HTTP/1.0\r\n\r\n")

def control(host, port):
    return b'"teleroute"' in tcp(host, port, b"GET /status HTTP/1.0\r\n\r\n")

def dns_tcp(host, port):
    data = tcp(host, port, struct.pack("!H", len(QUERY)) + QUERY)
    return data[2:4] == b"\x42\x42" and CLUSTER_IP in data

def dns_udp(host, port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(QUERY, (host, port))
        try:
            data = s.recv(4096)
        except OSError:
            return False
        return data[:2] == b"\x42\x42" and CLUSTER_IP in data

for target in sys.argv[3:]:
    proto, host, port = target.split(":")
    try:
        ok = globals()[proto](host, int(port))
    except OSError:
        ok = False
    print(target, "serves" if ok else "no")
"""

#: Run inside the daemon: opens an SFTP bridge (a TCP relay) to argv[1], prints its port.
OPEN_BRIDGE = (
    "import json, sys, urllib.request\n"
    "body = json.dumps({'agent': sys.argv[1]}).encode()\n"
    "request = urllib.request.Request('http://127.0.0.1:4038/bridges', body, method='POST')\n"
    "print(json.load(urllib.request.urlopen(request, timeout=10))['port'])\n"
)

SERVICES = [("grpc", GRPC), ("control", CONTROL), ("dns_tcp", DNS), ("dns_udp", DNS)]


def _script() -> str:
    return PROBE.replace("@BODY@", BODY)


def _targets(*addresses: str) -> list[str]:
    return [f"{proto}:{ip}:{port}" for ip in addresses for proto, port in SERVICES]


def _parse(out: str) -> dict[str, bool]:
    found = {}
    for line in out.splitlines():
        target, _, state = line.rpartition(" ")
        if state in ("serves", "no"):
            found[target] = state == "serves"
    return found


def _probe(where: list[str], targets: list[str]) -> dict[str, bool]:
    """Probe from a new container of the project image; ``where`` are extra run options."""
    out = docker(
        "run", "--rm", *where, IMAGE, "python3", "-c", _script(), *targets, timeout=180
    ).stdout
    return _parse(out)


def _probe_in(container: str, targets: list[str]) -> dict[str, bool]:
    out = docker("exec", container, "python3", "-c", _script(), *targets, timeout=180).stdout
    return _parse(out)


def _probe_host(targets: list[str]) -> dict[str, bool]:
    out = subprocess.run(
        [sys.executable, "-c", _script(), *targets], capture_output=True, text=True, timeout=180
    ).stdout
    return _parse(out)


@pytest.mark.e2e
def test_daemon_ports_reachable_only_where_they_must_be(legacy_setup: Setup) -> None:  # noqa: F811
    """
    The policy of the table in this module's docstring: gRPC and SFTP bridges at the
    default-bridge address (and the VIF address), never from the teleroute network; DNS only
    there; the control API only inside the daemon.
    """
    s = legacy_setup
    bridge_ip = s.host
    teleroute_ip = s.address
    vif_ip = ip_on(s.daemon, s.cluster.network)
    opened = docker("exec", s.daemon, "python3", "-c", OPEN_BRIDGE, f"{s.cluster.ip}:80").stdout
    bridge_port = int(opened)
    # The first two arguments of the probe: the name to resolve and the answer to expect.
    addresses = (bridge_ip, teleroute_ip, vif_ip)
    everywhere = [
        SERVICE,
        s.cluster.ip,
        *_targets(*addresses),
        *(f"http:{ip}:{bridge_port}" for ip in addresses),
    ]
    s.containers.append(workload := f"tntest-reach-{uid()}")
    matrix = {
        "host": {t: ok for t, ok in _probe_host(everywhere).items() if vif_ip not in t},
        "bridge": _probe([], everywhere),
        "workload": _probe(["--name", workload, "--network", s.network], everywhere),
        "cluster": _probe_in(s.cluster.container, everywhere),
        "daemon": _probe_in(s.daemon, [SERVICE, s.cluster.ip, *_targets("127.0.0.1")]),
    }
    record(
        "reach-daemon-ports",
        **{where: sorted(t for t, ok in found.items() if ok) for where, found in matrix.items()},
    )
    plugins_path = {f"grpc:{bridge_ip}:{GRPC}", f"http:{bridge_ip}:{bridge_port}"}
    dns_here = {f"dns_tcp:{teleroute_ip}:{DNS}", f"dns_udp:{teleroute_ip}:{DNS}"}
    expected = {
        "host": plugins_path,
        "bridge": plugins_path,
        "workload": dns_here,
        # Not guarded (see the docstring); the host reaches the VIF address too, through the
        # cluster network's bridge, but it is not a path the plug-ins are given.
        "cluster": {f"grpc:{vif_ip}:{GRPC}", f"http:{vif_ip}:{bridge_port}"},
        # Inside the daemon's netns the control API answers (the CLI's docker exec path).
        "daemon": {f"grpc:127.0.0.1:{GRPC}", f"control:127.0.0.1:{CONTROL}"},
    }
    for where, serving in expected.items():
        found = matrix[where]
        probed = len(everywhere) - 2 if where != "daemon" else len(SERVICES)
        if where == "host":
            probed -= len(SERVICES) + 1  # not to the VIF address
        assert len(found) == probed, (where, found)
        assert {t for t, ok in found.items() if ok} == serving, (where, matrix)


# -- the guard itself ---------------------------------------------------------------------------


def test_guard_with_nft() -> None:
    """A table of its own, one rule per teleroute-side interface, gone on stop."""
    run = FakeProcesses({("nft", "delete"): 1})
    guard = TelerouteGuard(["tpd-*", "br-daemon"], [53], run, which=lambda t: f"/usr/sbin/{t}")
    guard.startService()
    result_of(guard.ready)  # type: ignore[arg-type]
    chain = "{ type filter hook input priority 0 ; policy accept ; }".split()
    opening = "tcp flags & (syn | ack) == syn reject with tcp reset".split()
    assert run.commands == [
        ["nft", "delete", "table", "inet", "telenet_guard"],
        ["nft", "add", "table", "inet", "telenet_guard"],
        ["nft", "add", "chain", "inet", "telenet_guard", "input", *chain],
        *[
            [
                "nft",
                "add",
                "rule",
                "inet",
                "telenet_guard",
                "input",
                "iifname",
                f'"{name}"',
                "tcp",
                "dport",
                "!=",
                "{",
                "53",
                "}",
                *opening,
            ]
            for name in ("tpd-*", "br-daemon")
        ],
    ]
    run.commands.clear()
    result_of(guard.stopService())
    assert run.commands == [["nft", "delete", "table", "inet", "telenet_guard"]]


def test_guard_with_iptables_and_failures_not_fatal() -> None:
    """Without nft: INPUT rules (``tpd-+``), inserted once; no tool at all is only logged."""
    run = FakeProcesses({("iptables", "-C"): 1, ("ip6tables", "-C"): 0})
    tools = {"iptables": "/usr/sbin/iptables", "ip6tables": "/usr/sbin/ip6tables"}
    guard = TelerouteGuard(["tpd-*"], [53, 5353], run, which=tools.get)
    guard.startService()
    result_of(guard.ready)  # type: ignore[arg-type]
    rule = "INPUT -i tpd-+ -p tcp --syn -m multiport ! --dports 53,5353".split()
    rule += "-j REJECT --reject-with tcp-reset".split()
    assert run.commands == [
        ["iptables", "-C", *rule],
        ["iptables", "-I", *rule],
        ["ip6tables", "-C", *rule],
    ]
    run.commands.clear()
    result_of(guard.stopService())
    assert run.commands == [["iptables", "-D", *rule], ["ip6tables", "-D", *rule]]

    nothing = TelerouteGuard(["tpd-*"], [53], FakeProcesses(), which=lambda t: None)
    nothing.startService()
    assert nothing.ready is not None and result_of(nothing.ready) is None
    assert nothing.tool is None
    result_of(nothing.stopService())


LISTENER = """
import socket, sys, threading
def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    print("listening", flush=True) if port == int(sys.argv[-1]) else None
    while True:
        c, _ = s.accept()
        c.close()
for port in sys.argv[1:-1]:
    threading.Thread(target=serve, args=(int(port),), daemon=True).start()
serve(int(sys.argv[-1]))
"""

CONNECT = """
import socket, sys
for target in sys.argv[1:]:
    host, port = target.split(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        print(target, "open")
    except OSError as e:
        print(target, type(e).__name__)
"""


@pytest.mark.e2e
def test_guard_in_scratch_netns() -> None:
    """
    Real nftables in a scratch "daemon" netns with a ``tpd-0`` toward a "workload" netns and
    an ``eth7`` toward a "host" netns: the workload is refused on every port but DNS's (at
    either daemon address); the host is served; the daemon still connects to the workload;
    after stop nothing is refused.
    """
    require(os.geteuid() == 0, "network namespaces need root")
    require(
        shutil.which("nft") is not None and shutil.which("ip") is not None,
        "nft and ip must be installed",
    )
    tag = uid()[:6]
    d, w, h = (f"tntest-{tag}-{n}" for n in ("d", "w", "h"))
    listener: subprocess.Popen[str] | None = None
    served: subprocess.Popen[str] | None = None

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def in_ns(ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    try:
        for ns in (d, w, h):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        for inside, outside, peer_ns, net in (
            ("tpd-0", "w0", w, "10.77.0"),
            ("eth7", "h0", h, "10.78.0"),
        ):
            ip("-n", d, "link", "add", inside, "type", "veth", "peer", "name", outside)
            ip("-n", d, "link", "set", outside, "netns", peer_ns)
            ip("-n", d, "addr", "add", f"{net}.1/24", "dev", inside)
            ip("-n", peer_ns, "addr", "add", f"{net}.2/24", "dev", outside)
            ip("-n", d, "link", "set", inside, "up")
            ip("-n", peer_ns, "link", "set", outside, "up")
            ip("-n", peer_ns, "route", "add", "default", "via", f"{net}.1")
        listener = subprocess.Popen(
            in_ns(d, sys.executable, "-c", LISTENER, "5353", "6000", "4039"),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert listener.stdout is not None and listener.stdout.readline().strip() == "listening"
        served = subprocess.Popen(
            in_ns(w, sys.executable, "-c", LISTENER, "7000"), stdout=subprocess.PIPE, text=True
        )
        assert served.stdout is not None and served.stdout.readline().strip() == "listening"

        def probe(ns: str, *targets: str) -> dict[str, str]:
            out = subprocess.run(
                in_ns(ns, sys.executable, "-c", CONNECT, *targets),
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
            return dict(line.split() for line in out.splitlines())

        def run(command: list[str]) -> defer.Deferred[Any]:
            done = subprocess.run(in_ns(d, *command), capture_output=True)
            return defer.succeed((done.stdout, done.stderr, done.returncode))

        guard = TelerouteGuard(["tpd-*", "br-daemon"], [5353], run)
        guard.startService()
        result_of(guard.ready)  # type: ignore[arg-type]
        targets = ["10.77.0.1:4039", "10.78.0.1:4039", "10.77.0.1:6000", "10.77.0.1:5353"]
        assert probe(w, *targets) == {
            "10.77.0.1:4039": "ConnectionRefusedError",
            "10.78.0.1:4039": "ConnectionRefusedError",
            "10.77.0.1:6000": "ConnectionRefusedError",
            "10.77.0.1:5353": "open",
        }
        assert probe(h, "10.78.0.1:4039", "10.78.0.1:6000") == {
            "10.78.0.1:4039": "open",
            "10.78.0.1:6000": "open",
        }
        assert probe(d, "10.77.0.2:7000") == {"10.77.0.2:7000": "open"}
        result_of(guard.stopService())
        assert probe(w, *targets) == dict.fromkeys(targets, "open")
        ruleset = subprocess.run(
            in_ns(d, "nft", "list", "ruleset"), capture_output=True, text=True
        ).stdout
        assert "telenet_guard" not in ruleset
    finally:
        for process in (listener, served):
            if process is not None:
                process.kill()
                process.wait()
        for ns in (d, w, h):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
