"""
End to end: live routes (docs/teleroute.md, "Live routes") on real dockerd.

A workload runs a loop of HTTP requests to an address in a subnet the daemon does not route
yet, and holds a TCP connection open to the cluster (a subnet that stays routed). A route to
the new subnet is added on the VIF side (in the daemon container): the workload reaches the
address within 2 s, with no restart; the route is removed: the workload loses it within 2 s;
the long-lived connection stays open throughout; a subnet given through the daemon's control
API (``PUT /subnets``) comes and goes likewise. With the legacy and the managed plug-in; and
with Telepresence's Go plug-in against the same (extended) daemon: no live routes, nothing
broken (the running workload keeps its routes, a new one gets the new subnet at Join).

The cluster network here is not ``--internal``: Docker drops bridged traffic to addresses
outside an internal network's subnet, and the new subnet must lie outside every subnet the
daemon already routes (the cluster network's own is one).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import time
from collections.abc import Iterator

import pytest

from .conftest import require, wait_for
from .test_e2e_peers import PEERS, TELEROUTE, _create, _manifest
from .test_e2e_teleroute import (  # noqa: F401 (fixtures)
    BODY,
    IMAGE,
    SERVICE,
    Cluster,
    RoutePlugin,
    Setup,
    assert_nothing_left,
    docker,
    http_get_command,
    images,
    ip_on,
    managed_plugin,
    plugin,
    subnet_of,
    uid,
    workdir,
)

pytestmark = pytest.mark.e2e

ECHO_PORT = 7777
#: A TCP echo server for the long-lived connection; it counts the connections it accepted.
ECHO_SERVER = f"""
import socket, threading
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", {ECHO_PORT}))
server.listen()
count = 0
def serve(conn):
    with conn:
        while True:
            data = conn.recv(4096)
            if not data:
                break
            conn.sendall(data)
while True:
    conn, _ = server.accept()
    count += 1
    with open("/tmp/connections", "w") as f:
        f.write(str(count))
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


class OpenCluster(Cluster):
    """The cluster container on a network that is not internal, with an echo server too."""

    def start(self) -> OpenCluster:
        docker("network", "create", self.network)
        docker(
            "run",
            "-d",
            "--name",
            self.container,
            "--network",
            self.network,
            "--cap-add",
            "NET_ADMIN",
            "-v",
            f"{os.path.join(os.path.dirname(__file__), 'e2e_cluster.py')}:/cluster.py:ro",
            IMAGE,
            "python3",
            "/cluster.py",
            "--body",
            BODY,
            "--record",
            f"{SERVICE}=self",
        )
        docker("exec", "-d", self.container, "python3", "-c", ECHO_SERVER)
        self.ip = ip_on(self.container, self.network)
        self.subnet = subnet_of(self.network)
        return self

    def connections(self) -> int:
        out = docker("exec", self.container, "cat", "/tmp/connections", check=False).stdout
        return int(out.strip() or 0)


@pytest.fixture(scope="module")
def open_cluster(images: None) -> Iterator[OpenCluster]:  # noqa: F811
    c = OpenCluster().start()
    yield c
    c.stop()


@pytest.fixture
def go_plugin(images: None) -> Iterator[RoutePlugin]:  # noqa: F811
    """Telepresence's Go teleroute plug-in (``$TELENET_PEERS``), managed."""
    require(os.path.isdir(PEERS), f"Telepresence's Go plug-ins are missing ({PEERS})")
    import shutil
    import tempfile

    class GoPlugin(RoutePlugin):
        driver = f"tntest{uid()}/goteleroute:0.5.0"
        state_file = ""

    go = GoPlugin()
    directory = tempfile.mkdtemp(prefix="tntest-goroute-")
    try:
        _create(
            go.driver,
            _manifest("teleroute.config.json"),
            None,
            os.path.join(PEERS, TELEROUTE),
            directory,
        )
        yield go
    finally:
        docker("plugin", "rm", "-f", go.driver, check=False)
        shutil.rmtree(directory, ignore_errors=True)


class Workload:
    """
    A workload with a long-lived echo connection and a request to ``address`` started every
    0.2 s, each in the background (a failing one hangs for its 1 s timeout), logged with the
    uptime it started at: the outcome of a request started at a given time is known.
    """

    def __init__(self, s: Setup, address: str) -> None:
        self.s = s
        self.name = f"tntest-live-{uid()}"
        # Short timeouts: a request to a subnet that is not routed fails within a second.
        get = s.get(address).replace("-T 5", "-T 1").replace("-w 5", "-w 1")
        script = (
            f"(i=0; while :; do i=$((i+1)); echo tick$i; sleep 0.2; done) "
            f"| nc {s.cluster.ip} {ECHO_PORT} > /tmp/echo & "
            "while :; do (read t _ < /proc/uptime; "
            f"if [ \"$({get} 2>/dev/null)\" = '{BODY}' ]; then echo ok $t; "
            "else echo no $t; fi) & sleep 0.2; done"
        )
        s.run(script, name=self.name, detach=True)

    def results(self) -> list[tuple[str, float]]:
        """Each request's outcome ("ok" or "no") and when it started (the host's uptime)."""
        out = docker("logs", self.name, check=False).stdout
        found = []
        for line in out.splitlines():
            word, _, started = line.partition(" ")
            if word in ("ok", "no") and started:
                found.append((word, float(started)))
        return sorted(found, key=lambda r: r[1])

    def last(self) -> str:
        results = self.results()
        return results[-1][0] if results else ""

    def first(self, outcome: str, since: float, within: float = 8.0) -> float:
        """
        Seconds from ``since`` (uptime) to the start of the first request with ``outcome``
        that started after it (waiting for it to be logged).
        """
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self._first(outcome, since) is not None:
                # Requests started earlier may still be out (a failing one takes 1 s).
                time.sleep(1.2)
                found = self._first(outcome, since)
                assert found is not None
                return found
            time.sleep(0.1)
        raise AssertionError(f"no {outcome!r} request since {since}: {self.results()[-20:]}")

    def _first(self, outcome: str, since: float) -> float | None:
        for word, started in self.results():
            if started >= since and word == outcome:
                return started - since
        return None

    def routes(self) -> str:
        return docker("exec", self.name, "ip", "route", check=False).stdout

    def ticks(self) -> int:
        """The last tick the echo connection brought back."""
        out = docker("exec", self.name, "tail", "-n", "1", "/tmp/echo", check=False).stdout
        text = out.strip().removeprefix("tick")
        return int(text) if text.isdigit() else 0


def _extra_subnet() -> tuple[ipaddress.IPv4Network, str]:
    """A /28 of the benchmarking range, outside every routed subnet; its first address."""
    subnet = ipaddress.ip_network(f"198.19.{random.randrange(1, 255)}.16/28")
    return subnet, str(next(subnet.hosts()))


def _start(driver: RoutePlugin, cluster: OpenCluster, http_get: str) -> Setup:
    s = Setup(driver, cluster, http_get)
    try:
        s.start()
    except BaseException:
        s.stop()
        raise
    return s


def uptime() -> float:
    """The host's uptime, the clock the workload's loop reads too (/proc/uptime)."""
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def _add_route(s: Setup, extra: ipaddress.IPv4Network, address: str) -> float:
    """Add the route on the VIF side; the uptime just before (the change is after it)."""
    docker("exec", s.cluster.container, "ip", "addr", "add", f"{address}/32", "dev", "eth0")
    vif = s.vif()
    since = uptime()
    docker("exec", s.daemon, "ip", "route", "add", str(extra), "via", s.cluster.ip, "dev", vif)
    return since


def _remove_route(s: Setup, extra: ipaddress.IPv4Network) -> float:
    since = uptime()
    docker("exec", s.daemon, "ip", "route", "del", str(extra))
    return since


def _put_subnets(s: Setup, subnets: list[str]) -> None:
    """``PUT /subnets`` on the daemon's control API (on its loopback, port 4038)."""
    script = (
        "import json, sys, urllib.request; "
        "request = urllib.request.Request('http://127.0.0.1:4038/subnets', "
        "data=sys.argv[1].encode(), method='PUT'); "
        "print(urllib.request.urlopen(request, timeout=10).read().decode())"
    )
    out = docker("exec", s.daemon, "python3", "-c", script, json.dumps({"subnets": subnets}))
    assert json.loads(out.stdout)["subnets"] == subnets, out


@pytest.fixture
def extra_route(open_cluster: OpenCluster) -> Iterator[tuple[ipaddress.IPv4Network, str]]:
    extra, address = _extra_subnet()
    yield extra, address
    docker(
        "exec",
        open_cluster.container,
        "ip",
        "addr",
        "del",
        f"{address}/32",
        "dev",
        "eth0",
        check=False,
    )


def test_live_routes_reach_a_running_workload(
    plugin: RoutePlugin,  # noqa: F811
    open_cluster: OpenCluster,
    http_get_command: str,  # noqa: F811
    extra_route: tuple[ipaddress.IPv4Network, str],
) -> None:
    """Added on the VIF: reached within 2 s; removed: lost within 2 s; the echo stays open."""
    extra, address = extra_route
    s = _start(plugin, open_cluster, http_get_command)
    try:
        before = open_cluster.connections()
        w = Workload(s, address)
        wait_for(lambda: w.ticks() > 0, 20, "the echo connection", interval=0.2)
        wait_for(lambda: w.last() == "no", 20, "the request loop", interval=0.2)
        ticks = w.ticks()

        added = _add_route(s, extra, address)
        reached = w.first("ok", added)
        assert reached <= 2.0, f"{address} reached {reached:.2f}s after the route was added"
        assert f"{extra} via {s.address} dev tpd-0" in w.routes(), w.routes()

        removed = _remove_route(s, extra)
        lost = w.first("no", removed)
        assert lost <= 2.0, f"{address} still reached {lost:.2f}s after the route was removed"
        # Once lost, lost for good: no request that started later succeeded.
        wait_for(
            lambda: len([r for r in w.results() if r[1] > removed + lost]) >= 3, 10, "requests"
        )
        assert all(word == "no" for word, started in w.results() if started >= removed + lost), (
            w.results()[-10:]
        )
        assert str(extra) not in w.routes(), w.routes()

        # Subnets changed through the daemon's control API reach the running workload too.
        put = ipaddress.ip_network(f"{extra.network_address + 16}/28")
        via_api = f"{put} via {s.address} dev tpd-0"
        start = time.monotonic()
        _put_subnets(s, [str(put)])
        wait_for(lambda: via_api in w.routes(), 2, f"{put} (PUT /subnets) in the workload's routes")
        _put_subnets(s, [])
        wait_for(lambda: str(put) not in w.routes(), 2, f"{put} gone from the workload's routes")
        assert time.monotonic() - start < 6

        # One connection all along, still carrying data.
        later = w.ticks()
        assert later > ticks, (ticks, later)
        wait_for(lambda: w.ticks() > later, 5, "the echo connection to go on", interval=0.2)
        assert open_cluster.connections() == before + 1
        assert "no live routes" not in plugin.log()
        print(f"reached {reached:.2f}s after the route was added, lost {lost:.2f}s after removal")
    finally:
        s.stop()
    assert_nothing_left(s)


def test_go_plugin_against_the_extended_daemon_is_unchanged(
    go_plugin: RoutePlugin,
    open_cluster: OpenCluster,
    http_get_command: str,  # noqa: F811
    extra_route: tuple[ipaddress.IPv4Network, str],
) -> None:
    """
    Go's plug-in never asks for live routes: the running workload keeps the routes it joined
    with (and its connection), a new workload gets the new subnet at Join and reaches it.
    """
    extra, address = extra_route
    s = _start(go_plugin, open_cluster, http_get_command)
    try:
        w = Workload(s, address)
        wait_for(lambda: w.ticks() > 0, 20, "the echo connection", interval=0.2)
        wait_for(lambda: w.last() == "no", 20, "the request loop", interval=0.2)
        ticks = w.ticks()
        _add_route(s, extra, address)
        fresh = f"{extra} via {s.address} dev tpd-0"
        wait_for(lambda: fresh in s.run("ip route").stdout, 10, "a new workload's route")
        assert str(extra) not in w.routes()
        assert w.last() == "no"
        assert s.run(s.get(address), check=False).stdout.strip() == BODY
        assert w.ticks() > ticks
        _remove_route(s, extra)
    finally:
        s.stop()
