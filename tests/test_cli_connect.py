"""connect, status, quit and the network GC, against MemoryDocker and MemoryControl."""

from __future__ import annotations

import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
from typing import Any

import pytest
from zope.interface.verify import verifyObject

from telenet.cli.config import Config, PluginConfig
from telenet.cli.connection import CLIError, ConnectRequest, NotConnected
from telenet.cli.connector import Connector
from telenet.cli.daemoncontrol import DaemonControlError, ExecControl, HTTPControl
from telenet.cli.dockerapi import PLUGIN_CONFIGS, DockerError, SDKDocker, plugin_contexts
from telenet.cli.interfaces import ContainerSpec, IDocker
from telenet.cli.naming import LABEL_CONNECTION, LABEL_DAEMON, default_connection_name
from telenet.cli.pluginsocket import PluginCallError
from telenet.cli.status import format_status, format_statuses
from telenet.cli.subnets import Taken, check_subnet
from telenet.core.gocompat import safe_name
from telenet.testing import MemoryControl, MemoryDocker
from tests.unixhttp import QuietHandler, serving

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class World:
    """A Connector over fakes, with what it said."""

    def __init__(self, config: Config | None = None) -> None:
        self.docker = MemoryDocker()
        self.control = MemoryControl(
            {
                "version": "0.1.0",
                "routes": ["10.96.0.0/16"],
                "dns": {"local_address": "172.16.0.2:53"},
            }
        )
        self.said: list[str] = []
        self.clock = Clock()
        self.addresses: list[tuple[str, int]] = []
        #: The routes of "this machine" (``subnets.host_routes``).
        self.host_routes: list[Taken] = []
        #: What each plug-in's ``/Telenet.Health`` answers, by socket path (default: none).
        self.health: dict[str, dict[str, Any]] = {}
        self.connector = Connector(
            self.docker,
            config or Config(),
            say=self.said.append,
            control_factory=self._control,
            exec_control_factory=self._exec_control,
            sleep=self.clock.sleep,
            clock=self.clock,
            host_routes=lambda: list(self.host_routes),
            plugin_call=self._plugin_call,
        )

    def _plugin_call(self, path: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        if path not in self.health:
            raise PluginCallError(f"{path}: [Errno 2] No such file or directory")
        return self.health[path]

    def _control(self, host: str, port: int) -> MemoryControl:
        self.addresses.append((host, port))
        return self.control

    def _exec_control(self, docker: Any, container: str, port: int) -> MemoryControl:
        self.addresses.append((f"exec:{container[:12]}", port))
        return self.control

    def connect(self, name: str = "blue", **kw: Any) -> Any:
        return self.connector.connect(ConnectRequest(name, **kw))


@pytest.fixture
def world() -> World:
    return World()


def test_fakes_provide_their_interfaces() -> None:
    """MemoryDocker and SDKDocker provide IDocker."""
    verifyObject(IDocker, MemoryDocker())
    verifyObject(IDocker, SDKDocker(client=object()))


def test_connect_makes_plugins_daemon_and_network(world: World) -> None:
    """Plug-ins are created from the image and enabled; the daemon and network as specified."""
    world.docker.networks_by_id.clear()
    world.docker._add_network("bridge", "bridge", "172.17.0.0/16", {}, internal=False)
    world.docker.create_network("cluster", "bridge", {}, {}, "172.18.0.0/16", False)
    conn = world.connect(
        "blue",
        vif_network="cluster",
        cluster_dns="172.18.0.2",
        subnets=("10.96.0.0/12",),
        cluster_domains=("cluster.local",),
    )
    calls = world.docker.calls
    assert ("create_plugin", "telenet/teleroute:latest", "teleroute", "telenet") in calls
    assert ("create_plugin", "telenet/telemount:latest", "telemount", "telenet") in calls
    assert ("enable_plugin", "telenet/teleroute:latest") in calls
    daemon = world.docker.containers_by_id[conn.container_id]
    spec = daemon["spec"]
    assert spec.name == "tp-blue" and spec.image == "telenet"
    assert spec.pid_host and spec.cap_add == ["NET_ADMIN"]
    assert spec.sysctls == {"net.ipv4.ip_forward": "1"}
    assert spec.ports == {"4038/tcp": ("127.0.0.1", None)}
    assert spec.command == [
        "twistd",
        "--nodaemon",
        "--pidfile=",
        "telepresence-daemon",
        "--control",
        "tcp:4038",
        "--teleroute-port",
        "4039",
        "--name",
        "docker-blue",
        "--vif-subnet",
        "172.18.0.0/16",
        "--subnet",
        "10.96.0.0/12",
        "--cluster-dns",
        "172.18.0.2",
        "--cluster-domain",
        "cluster.local",
        "--namespace",
        "default",
    ]
    labels = spec.labels
    assert labels["telenet.namespace"] == "default"
    assert labels["telenet.cluster-domain"] == "cluster.local"
    # The daemon finds its VIF by the VIF network's subnet (not by an interface name), once
    # connected before the start.
    assert calls.index(("connect", "cluster", "tp-blue", None)) < calls.index(
        ("start_container", "tp-blue")
    )
    network = world.docker.network("blue")
    assert network is not None
    assert network["Driver"] == "telenet/teleroute:latest" and network["Internal"]
    assert network["Options"] == {"host": "172.17.0.2", "port": "4039"}
    assert network["Labels"] == {LABEL_DAEMON: conn.container_id, LABEL_CONNECTION: "blue"}
    # 172.16/16 is free of Docker networks and routes, 172.17/18 are taken.
    assert network["IPAM"]["Config"][0]["Subnet"] == "172.16.0.0/16"
    joins = [c for c in calls if c[:2] == ("connect", "blue")]
    assert joins == [("connect", "blue", "tp-blue", {"daemon": "true"})]
    assert conn.dns_ip() == "172.16.0.2"
    assert world.addresses[0][0] == "127.0.0.1"
    assert world.said[-1].startswith("Connected to blue: daemon tp-blue, network blue")


def test_connect_namespaces_reach_the_daemon(world: World) -> None:
    """--namespace and --mapped-namespaces become the daemon's options and its labels."""
    conn = world.connect(
        "blue",
        namespace="team-a",
        mapped_namespaces=("team-a", "team-b"),
        cluster_domains=("corp",),
    )
    spec = world.docker.containers_by_id[conn.container_id]["spec"]
    assert spec.command[-6:] == [
        "--namespace",
        "team-a",
        "--mapped-namespace",
        "team-a",
        "--mapped-namespace",
        "team-b",
    ]
    assert spec.labels["telenet.namespace"] == "team-a"
    assert spec.labels["telenet.cluster-domain"] == "corp"


def test_connect_namespaces_from_config() -> None:
    """Without the flags, config.yml's cluster.namespace and cluster.mappedNamespaces apply."""
    world = World(Config(namespace="team-c", mapped_namespaces=("x",)))
    conn = world.connect("blue")
    spec = world.docker.containers_by_id[conn.container_id]["spec"]
    assert spec.command[-4:] == ["--namespace", "team-c", "--mapped-namespace", "x"]


def test_subnet_avoids_routes_and_networks(world: World) -> None:
    """The subnet overlaps neither a --subnet, a route of the daemon, nor a Docker network."""
    world.control.base_status["routes"] = ["172.18.0.0/16"]
    world.connect("blue", subnets=("172.16.0.0/16",))
    network = world.docker.network("blue")
    assert network is not None
    # 172.16 routed (flag), 172.17 the bridge, 172.18 routed (daemon's VIF route).
    assert network["IPAM"]["Config"][0]["Subnet"] == "172.19.0.0/16"


def test_existing_plugins_are_used_and_enabled(world: World) -> None:
    """An enabled managed plug-in is used as is; a disabled one is enabled; no creation."""
    world.docker.plugins["telenet/teleroute:latest"] = {"Name": "x", "Enabled": True}
    world.docker.plugins["telenet/telemount:latest"] = {"Name": "y", "Enabled": False}
    world.connect()
    assert not [c for c in world.docker.calls if c[0] == "create_plugin"]
    assert ("enable_plugin", "telenet/telemount:latest") in world.docker.calls
    assert world.docker.plugins["telenet/telemount:latest"]["Enabled"]


def test_legacy_plugins_answering_are_used(world: World) -> None:
    """A legacy socket named after the repository is used, by that driver name."""
    world.docker.legacy_sockets |= {
        "/run/docker/plugins/teleroute.sock",
        "/run/docker/plugins/telemount.sock",
    }
    conn = world.connect()
    assert conn.network["Driver"] == "teleroute"
    assert conn.label("telenet.volume-plugin") == "telemount"
    assert not [c for c in world.docker.calls if "plugin" in c[0]]


def test_registry_plugins_are_installed() -> None:
    """With a registry configured, missing plug-ins are installed from it."""
    config = Config(teleroute=PluginConfig("ghcr.io", "telepresenceio", "teleroute", "0.5.0"))
    w = World(config)
    w.connect()
    installs = [c for c in w.docker.calls if c[0] == "install_plugin"]
    assert installs == [("install_plugin", config.teleroute.name)]


def test_plugin_install_refused_is_one_line_and_leaves_nothing() -> None:
    """A refused install is reported in one line, before anything is created."""
    w = World(Config(teleroute=PluginConfig("reg.example", "ns", "teleroute", "1")))
    w.docker.fail["install_plugin"] = DockerError("pull access denied for reg.example/ns")
    with pytest.raises(CLIError) as e:
        w.connect()
    assert "plug-in install of reg.example/ns/teleroute" in str(e.value)
    assert "refused: pull access denied" in str(e.value) and "\n" not in str(e.value)
    assert w.docker.container_names() == [] and w.docker.network_names() == ["bridge"]


def test_missing_image_is_reported(world: World) -> None:
    """No image to make plug-ins or the daemon from: say how to build it."""
    world.docker.images.clear()
    with pytest.raises(
        CLIError, match="image telenet not found: build it with scripts/build-image"
    ):
        world.connect()


def test_docker_missing_or_too_old(world: World) -> None:
    """No Docker, or Docker older than 20.10: one actionable line each."""
    world.docker.version = "1.40"
    with pytest.raises(CLIError, match="API 1.40 is too old: telenet needs Docker 20.10"):
        world.connect()
    world.docker.version = None
    with pytest.raises(
        CLIError,
        match=r"Docker at unix:///var/run/docker.sock \(context default, the default\) does not "
        "answer: Connection refused; is dockerd running\\?",
    ):
        world.connect()


def test_foreign_network_name_clash(world: World) -> None:
    """A network of that name that is not ours: refused before anything is made."""
    world.docker.create_network("blue", "bridge", {}, {}, None, False)
    with pytest.raises(CLIError, match="network named blue exists and is not a teleroute network"):
        world.connect("blue")
    assert world.docker.container_names() == []
    assert not world.docker.plugins


def test_foreign_container_name_clash(world: World) -> None:
    """A container named tp-<name> that telenet did not make is left alone."""

    world.docker.create_container(ContainerSpec(image="local/busybox", command=[], name="tp-blue"))
    with pytest.raises(CLIError, match="container named tp-blue exists and is not telenet's"):
        world.connect("blue")


def test_bad_names_and_flags(world: World) -> None:
    """Names Docker cannot take, and --vif with --vif-network, are refused."""
    with pytest.raises(CLIError, match=r"use letters, digits and _.- only \(e.g. a_b\)"):
        world.connect("a b")
    with pytest.raises(CLIError, match="--vif or --vif-network, not both"):
        world.connect("x", vif="eth1", vif_network="n")
    with pytest.raises(CLIError, match="no such Docker network"):
        world.connect("x", vif_network="nope")


def test_connect_twice_reports_the_connection(world: World) -> None:
    """A second connect finds the running daemon and network and changes nothing."""
    first = world.connect()
    calls = len(world.docker.calls)
    second = world.connect()
    assert second.container_id == first.container_id
    assert world.docker.calls[calls:] == []
    assert world.said[-1] == "Already connected to blue (daemon tp-blue)"


def test_connect_after_the_daemon_crashed(world: World) -> None:
    """A killed daemon is replaced; its network too, with the workloads reconnected."""
    first = world.connect()

    workload = world.docker.create_container(
        ContainerSpec(image="local/busybox", command=[], name="w", network="blue")
    )
    world.docker.start_container(workload)
    subnet = world.docker.network("blue")["IPAM"]["Config"][0]["Subnet"]  # type: ignore[index]
    world.docker.kill("tp-blue")
    second = world.connect()
    assert second.container_id != first.container_id
    network = world.docker.network("blue")
    assert network is not None
    assert network["Labels"][LABEL_DAEMON] == second.container_id
    # Same subnet again: the stale network was removed before the choice.
    assert network["IPAM"]["Config"][0]["Subnet"] == subnet
    joins = [c[2:] for c in world.docker.calls if c[:2] == ("connect", "blue")]
    # The new daemon first, with daemon=true, then the workload it had.
    assert joins[-2:] == [("tp-blue", {"daemon": "true"}), ("w", None)]
    assert set(network["Containers"]) == {second.container_id, workload}
    assert any("stopped (exit code 137)" in s for s in world.said)


def test_network_of_a_live_daemon_is_not_taken(world: World) -> None:
    """Our labelled network of another running daemon is refused, not replaced."""
    world.connect("blue")
    network = world.docker.network("blue")
    assert network is not None
    world.docker.remove_container("tp-blue")  # leaves its endpoint's network behind

    other = world.docker.create_container(
        ContainerSpec(image="telenet", command=[], name="tp-other")
    )
    world.docker.start_container(other)
    world.docker.networks_by_id[network["Id"]]["Labels"][LABEL_DAEMON] = other
    with pytest.raises(CLIError, match="belongs to the running daemon tp-other"):
        world.connect("blue")
    assert world.docker.container("tp-blue") is None


def test_daemon_not_answering_is_removed(world: World) -> None:
    """A daemon whose control API never answers: error after the timeout, container removed."""
    world.control.answering = False
    with pytest.raises(CLIError, match="not answering on its control port after 30 s"):
        world.connect()
    assert world.docker.container_names() == []
    assert world.docker.network_names() == ["bridge"]


def test_daemon_exiting_at_start_shows_its_last_line(world: World) -> None:
    """A daemon that exits at once: its last log line is the error; nothing is left."""
    world.control.answering = False
    world.docker.logs["tp-blue"] = "starting\ntwistd: --vif 'x y' is not an interface\n"
    original = world.docker.start_container

    def start_then_die(container: str) -> None:
        original(container)
        world.docker.kill(container, 1)

    world.docker.start_container = start_then_die  # type: ignore[method-assign]
    with pytest.raises(CLIError, match=r"exited \(code 1\): twistd: --vif 'x y' is not"):
        world.connect()
    assert world.docker.container_names() == []


def test_network_creation_retried_while_the_daemon_starts(world: World) -> None:
    """The plug-in cannot reach the daemon's gRPC port yet: the creation is tried again."""
    world.docker.fail["create_network"] = DockerError(
        "NetworkDriver.CreateNetwork: unable to connect to the teleroute service at "
        "172.17.0.2:4039: Connection refused"
    )
    world.connect()
    assert world.docker.network("blue") is not None


def test_network_creation_failure_removes_the_daemon(world: World) -> None:
    """If the network cannot be made, the daemon container goes too."""
    world.docker.fail["create_network"] = DockerError("plugin refused: bad host")
    with pytest.raises(CLIError, match="Unable to create network blue: plugin refused"):
        world.connect()
    assert world.docker.container_names() == []


def test_quit_removes_everything_and_collects_stale_networks(world: World) -> None:
    """quit: volumes of the connection, daemon, network; stale labelled networks collected."""
    world.connect("blue")
    world.connect("green")
    world.docker.kill("tp-green")
    world.docker.create_volume("echo-0", "telenet/telemount:latest", {}, {LABEL_CONNECTION: "blue"})
    world.docker.create_volume("keep", "telenet/telemount:latest", {}, {})
    world.connector.quit("blue")
    assert world.docker.container_names() == ["tp-green"]
    assert world.docker.network_names() == ["bridge"]
    assert list(world.docker.volumes_by_name) == ["keep"]
    assert world.said[-1] == "Disconnected from blue; removed stale networks green"


def test_quit_when_not_connected(world: World) -> None:
    """quit without a connection says so and succeeds."""
    world.connector.quit("blue")
    assert world.said == ["Not connected to blue"]


def test_gc_ignores_active_endpoints_and_foreign_networks(world: World) -> None:
    """Networks with endpoints stay; networks without our label are never touched."""
    world.docker.create_network("theirs", "bridge", {}, {}, None, False)
    world.docker.create_network("stale", "bridge", {}, {LABEL_DAEMON: "gone"}, None, False)
    world.docker.create_network("busy", "bridge", {}, {LABEL_DAEMON: "gone2"}, None, False)

    c = world.docker.create_container(
        ContainerSpec(image="local/busybox", command=[], name="c", network="busy")
    )
    world.docker.start_container(c)
    assert world.connector.network_gc() == ["stale"]
    assert world.docker.network_names() == ["bridge", "busy", "theirs"]


def test_find_picks_the_only_connection(world: World) -> None:
    """Without --name the only connection is used; none or several is an error."""
    with pytest.raises(NotConnected, match="not connected: run telenet connect --docker"):
        world.connector.find(None)
    world.connect("blue")
    assert world.connector.find(None).name == "blue"
    world.connect("green")
    with pytest.raises(CLIError, match=r"several connections \(blue, green\): pick one"):
        world.connector.find(None)


def test_status(world: World) -> None:
    """status: daemon, network, plug-ins, bridges and volumes, as data and as text."""
    world.connect()
    world.control.bridges[33000] = "10.0.0.5:8022"
    world.docker.create_volume("echo-0", "telenet/telemount:latest", {}, {LABEL_CONNECTION: "blue"})
    status = world.connector.status("blue")
    assert status["connection"] == "blue"
    assert status["daemon"]["container_name"] == "tp-blue" and status["daemon"]["running"]
    assert status["daemon"]["dns"]["local_address"] == "172.16.0.2:53"
    assert status["daemon"]["routes"] == ["10.96.0.0/16"]
    assert status["daemon"]["control"].startswith("127.0.0.1:")
    assert status["network"]["name"] == "blue" and status["network"]["subnet"]
    network_plugin = world.docker.plugins["telenet/teleroute:latest"]["Id"]
    assert status["plugins"] == [
        {
            "kind": "network",
            "name": "telenet/teleroute:latest",
            "mode": "managed",
            "enabled": True,
            "health": {
                "error": f"/run/docker/plugins/{network_plugin}/: "
                "[Errno 2] No such file or directory"
            },
        },
        {
            "kind": "volume",
            "name": "telenet/telemount:latest",
            "mode": "managed",
            "enabled": True,
            "health": {"error": status["plugins"][1]["health"]["error"]},
        },
    ]
    assert status["bridges"] == [
        {"port": 33000, "agent": "10.0.0.5:8022", "connections": 0, "bytes_in": 0, "bytes_out": 0}
    ]
    assert status["volumes"] == ["echo-0"]
    json.dumps(status)
    text = format_status(status)
    assert text.startswith("Connection blue: Connected\n  daemon:  tp-blue (")
    assert "DNS:     172.16.0.2:53" in text and "33000 -> 10.0.0.5:8022" in text
    # An older daemon: the namespace from the container's label, no mapped namespaces.
    assert status["daemon"]["namespace"] == "default"
    assert "namespace: default (mapped namespaces: any)" in text
    world.control.base_status["dns"] = {
        "local_address": "172.16.0.2:53",
        "namespace": "team-a",
        "mapped_namespaces": ["team-a", "team-b"],
    }
    status = world.connector.status("blue")
    assert status["daemon"]["namespace"] == "team-a"
    assert status["daemon"]["mapped_namespaces"] == ["team-a", "team-b"]
    assert "namespace: team-a (mapped namespaces: team-a, team-b)" in format_status(status)


def test_status_has_telepresence_keys(world: World) -> None:
    """
    The daemon object also has the keys of Telepresence's containerized daemon, with its
    meanings and types: scripts written for `telepresence status --output json` work.
    """
    conn = world.connect()
    world.control.base_status["dns"] = {"local_address": "172.16.0.2:53"}  # an older daemon
    daemon = world.connector.status(None)["daemon"]
    port = int(daemon["control"].rpartition(":")[2])
    assert {
        k: daemon[k]
        for k in (
            "in_docker",
            "running",
            "name",
            "status",
            "container_network",
            "daemon_port",
            "subnets",
        )
    } == {
        "in_docker": True,
        "running": True,
        "name": "blue",
        "status": "Connected",
        "container_network": "blue",
        "daemon_port": port,
        "subnets": ["10.96.0.0/16"],
    }
    assert daemon["dns"] == {"local_address": "172.16.0.2:53", "local_addresses": ["172.16.0.2:53"]}
    assert daemon["container"] == conn.container_id and "error" not in daemon
    # A daemon that reports several addresses: the first one is local_address.
    world.control.base_status["dns"] = {
        "local_addresses": ["172.16.0.2:53", "[fd00::2]:53"],
        "cluster_dns": None,
    }
    dns = world.connector.status("blue")["daemon"]["dns"]
    assert dns == {
        "local_address": "172.16.0.2:53",
        "cluster_dns": None,
        "local_addresses": ["172.16.0.2:53", "[fd00::2]:53"],
    }


def test_status_of_a_dead_daemon(world: World) -> None:
    """A killed daemon shows as not running, without asking its control API."""
    world.connect()
    world.docker.kill("tp-blue")
    calls = len(world.addresses)
    status = world.connector.status(None)
    assert len(world.addresses) == calls
    daemon = status["daemon"]
    assert {
        k: daemon[k]
        for k in (
            "in_docker",
            "running",
            "name",
            "status",
            "container_network",
            "daemon_port",
            "dns",
            "subnets",
        )
    } == {
        "in_docker": True,
        "running": False,
        "name": "blue",
        "status": "Not connected",
        "container_network": "blue",
        "daemon_port": None,
        "dns": {"local_address": None, "local_addresses": []},
        "subnets": [],
    }
    text = format_status(status)
    assert text.startswith("Connection blue: Not connected\n") and "not running" in text


def test_status_of_a_daemon_not_answering_or_off_its_network(world: World) -> None:
    """Running but its control API fails, or its network is gone: Not connected, and why."""
    conn = world.connect()
    world.control.answering = False
    daemon = world.connector.status("blue")["daemon"]
    assert daemon["running"] and daemon["status"] == "Not connected"
    assert "Connection refused" in daemon["error"]
    world.control.answering = True
    network = world.docker.network("blue")
    assert network is not None
    world.docker.disconnect(network["Id"], conn.container_id)
    world.docker.remove_network(network["Id"])
    daemon = world.connector.status("blue")["daemon"]
    assert daemon["status"] == "Not connected" and daemon["container_network"] is None
    assert daemon["error"].startswith("the daemon is not on network blue: run telenet connect")


def test_statuses_of_several_connections(world: World) -> None:
    """Without --name or --use, every connection (a dead one too), sorted by name."""
    with pytest.raises(NotConnected, match="not connected: run telenet connect --docker"):
        world.connector.statuses()
    world.connect("blue")
    assert [s["connection"] for s in world.connector.statuses()] == ["blue"]
    world.connect("green")
    world.docker.kill("tp-green")
    statuses = world.connector.statuses()
    assert [(s["connection"], s["daemon"]["status"]) for s in statuses] == [
        ("blue", "Connected"),
        ("green", "Not connected"),
    ]
    assert [s["connection"] for s in world.connector.statuses("green")] == ["green"]
    text = format_statuses(statuses)
    assert text.startswith("Connection blue: Connected\n")
    assert "\n\nConnection green: Not connected\n" in text


def test_use_picks_by_regex(world: World) -> None:
    """--use is Telepresence's: a search in the names, which must find exactly one."""
    for name in ("blue", "blue-2", "green"):
        world.connect(name)
    assert world.connector.select("gre") == "green"  # anywhere in the name
    assert world.connector.select(r"^blue$") == "blue"
    assert [s["connection"] for s in world.connector.statuses(use="-2$")] == ["blue-2"]
    with pytest.raises(CLIError, match=r"--use 'blue' matches several connections \(blue, b"):
        world.connector.select("blue")
    with pytest.raises(NotConnected, match="no connection matches --use 'red': connections: blue"):
        world.connector.statuses(use="red")
    with pytest.raises(CLIError, match="--use '\\(' is not a regular expression"):
        world.connector.select("(")
    with pytest.raises(CLIError, match="give --name or --use, not both"):
        world.connector.statuses("blue", "blue")


def test_default_connection_name(tmp_path: Any) -> None:
    """Like Telepresence: <context>-<namespace>-cn from the kubeconfig, else in-cluster-…."""
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "current-context: dev@eu\ncontexts:\n- name: dev@eu\n  context: {namespace: shop}\n"
    )
    assert default_connection_name({"KUBECONFIG": str(kubeconfig)}) == "dev_eu-shop-cn"
    kubeconfig.write_text("current-context: kind\ncontexts:\n- name: kind\n  context: {}\n")
    assert default_connection_name({"KUBECONFIG": str(kubeconfig)}) == "kind-default-cn"
    assert default_connection_name({"HOME": str(tmp_path / "none")}) == "in-cluster-default-cn"


def test_safe_name() -> None:
    """Telepresence's SafeContainerName: a bad first character becomes a, others _."""
    assert safe_name("blue") == "blue"
    assert safe_name("-x y/z.1_2") == "ax_y_z.1_2"


def test_check_subnet() -> None:
    """--subnet takes CIDRs (host bits cleared) and refuses the rest."""
    assert check_subnet("10.96.1.2/16") == "10.96.0.0/16"
    with pytest.raises(CLIError, match="not a CIDR"):
        check_subnet("10.96.0.0")
    with pytest.raises(CLIError, match="default route"):
        check_subnet("0.0.0.0/0")


def test_plugin_configs_match_the_repository() -> None:
    """The embedded config.json of each plug-in is the one in plugins/<kind>/."""
    for kind, config in PLUGIN_CONFIGS.items():
        with open(os.path.join(ROOT, "plugins", kind, "config.json")) as f:
            assert json.load(f) == config, kind


def test_plugin_contexts_prefix_the_rootfs(tmp_path: Any) -> None:
    """One pass over an exported rootfs: rootfs/…, the kind's config.json, a marker per name."""
    export = io.BytesIO()
    with tarfile.open(fileobj=export, mode="w") as tar:
        for name, data in (("bin/sh", b"#!"), (".hidden", b"h")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("bin/ash")
        link.type = tarfile.LNKTYPE
        link.linkname = "bin/sh"
        tar.addfile(link)
    export.seek(0)
    plugins = [("a/teleroute:1", "teleroute"), ("a/telemount:1", "telemount")]
    paths = plugin_contexts(export, plugins, str(tmp_path))
    assert list(paths) == ["a/teleroute:1", "a/telemount:1"]
    for name, kind in plugins:
        path = paths[name]
        with tarfile.open(path) as tar:
            names = tar.getnames()
            assert names == [
                "rootfs/bin/sh",
                "rootfs/.hidden",
                "rootfs/bin/ash",
                "config.json",
                "rootfs/etc/telenet-plugin",
            ]
            assert tar.getmember("rootfs/bin/ash").linkname == "rootfs/bin/sh"
            marker = tar.extractfile("rootfs/etc/telenet-plugin")
            assert marker is not None and marker.read() == f"{name}\n".encode()
            config = tar.extractfile("config.json")
            assert config is not None and json.load(config) == PLUGIN_CONFIGS[kind]


def test_an_engine_elsewhere_is_reached_through_docker(world: World) -> None:
    """
    An engine not on this machine (a VM, another host, TCP): its published loopback ports and
    /run/docker/plugins are not ours, so the control API goes through docker exec and a legacy
    socket here does not count; managed plug-ins are made through the API.
    """
    world.docker.here = False
    world.docker.legacy_sockets.add("/run/docker/plugins/teleroute.sock")
    conn = world.connect("blue")
    assert [a for a, _ in world.addresses] == [f"exec:{conn.container_id[:12]}"] * len(
        world.addresses
    )
    assert ("create_plugin", "telenet/teleroute:latest", "teleroute", "telenet") in (
        world.docker.calls
    )
    status = world.connector.status("blue")
    assert status["daemon"]["control"] == "docker exec"
    assert [p["mode"] for p in status["plugins"]] == ["managed", "managed"]


class _ControlServer(QuietHandler):
    """A stand-in control API: echoes what it got, refuses unknown paths like the real one."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        if self.path == "/missing":
            status, payload = 404, {"error": "no bridge on port 1"}
        else:
            status, payload = 200, {"method": self.command, "path": self.path, "body": body}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_exec_control_runs_its_request_in_the_daemon_container() -> None:
    """
    ExecControl's script, run as docker exec would run it (here: a local python3 beside a
    stand-in control API), gives the same answers and errors as HTTPControl.
    """
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ControlServer)
    port = server.server_address[1]
    docker = MemoryDocker()
    docker.create_container(ContainerSpec(image="telenet", command=[], name="tp-x"))
    docker.start_container("tp-x")

    def run_here(container: dict[str, Any], argv: list[str]) -> tuple[int, bytes, bytes]:
        assert argv[0] == "python3"
        done = subprocess.run([sys.executable, *argv[1:]], capture_output=True)
        return done.returncode, done.stdout, done.stderr

    docker.exec_handler = run_here
    with serving(server):
        for control in (ExecControl(docker, "tp-x", port), HTTPControl("127.0.0.1", port)):
            assert control.status() == {"method": "GET", "path": "/status", "body": ""}
            answer = control._request("POST", "/bridges", {"agent": "10.0.0.5:8022"})
            assert json.loads(answer["body"]) == {"agent": "10.0.0.5:8022"}
            with pytest.raises(DaemonControlError, match="no bridge on port 1"):
                control._request("DELETE", "/missing")
    with pytest.raises(DaemonControlError, match="GET /status: .*Connection refused"):
        ExecControl(docker, "tp-x", port).status()
    docker.exec_handler = None
    with pytest.raises(DaemonControlError, match="MemoryDocker runs no processes"):
        ExecControl(docker, "tp-x", port).status()


def test_workload_search_domains_follow_the_namespace() -> None:
    """A workload's search domains are the connected namespace's in the first cluster domain."""
    from telenet.cli.workload import workload_dns

    world = World()
    conn = world.connect("blue", namespace="team-a", cluster_domains=("corp.example", "x"))
    dns = workload_dns(conn)
    assert dns.servers == (conn.dns_ip(),)
    assert dns.search == (
        "team-a.svc.corp.example",
        "svc.corp.example",
        "corp.example",
        "tel2-search",
    )


def test_connect_refuses_bad_namespaces(world: World) -> None:
    """A namespace that cannot be one (from compose, say) is a one-line error, nothing made."""
    with pytest.raises(CLIError, match="--namespace 'a.b' is not a namespace name"):
        world.connect("blue", namespace="a.b")
    with pytest.raises(CLIError, match="--mapped-namespaces 'X_Y' is not a namespace name"):
        world.connect("blue", mapped_namespaces=("ok", "X_Y"))
    assert world.docker.container("tp-blue") is None
