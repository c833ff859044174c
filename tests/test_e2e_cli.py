"""
End to end: the ``telenet`` CLI on real dockerd, run through its installed entry point.

The module makes its own managed plug-ins (``tntest<id>/teleroute:latest`` and ``…/telemount``)
through ``telenet connect`` itself, from the telenet image, and its own demo cluster
(``telenet demo-cluster up --prefix tntest<id>``). Connections are named ``tntest<id>-…``.
Everything is removed at the end, and each test checks that nothing of its own is left:
no container, network, volume or bridge.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import BUSYBOX, free_port, port_open, require, run, wait_for

pytestmark = pytest.mark.e2e

TELENET = os.path.join(os.path.dirname(sys.executable), "telenet")
IMAGE = os.environ.get("TELENET_IMAGE", "telenet")
SERVICE = "echo.default.svc.cluster.local"
BODY = "hello from echo.default"
SECRETS = "/var/run/secrets/kubernetes.io"
#: Busybox's wget crashes on some hosts (docs/teleroute.md): fetch with nc.
HTTP_GET = (
    f"printf 'GET / HTTP/1.0\\r\\nHost: {SERVICE}\\r\\n\\r\\n' | nc -w 5 {SERVICE} 80 "
    "| sed '1,/^\\r*$/d'"
)
DURATIONS: dict[str, float] = {}


def uid() -> str:
    return uuid.uuid4().hex[:8]


class Env:
    """The module's config (plug-in names with its prefix), demo cluster and connections."""

    def __init__(self, workdir: str) -> None:
        self.prefix = f"tntest{uid()}"
        self.workdir = workdir
        self.config = os.path.join(workdir, "config.yml")
        with open(self.config, "w") as f:
            f.write(
                f"docker:\n  daemonImage: {IMAGE}\n"
                f"  teleroute: {{namespace: {self.prefix}}}\n"
                f"  telemount: {{namespace: {self.prefix}}}\n"
            )
        self.plugins = [f"{self.prefix}/teleroute:latest", f"{self.prefix}/telemount:latest"]
        self.connections: set[str] = set()
        self.cluster: dict[str, Any] = {}

    def telenet(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 300,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the installed telenet with this module's config; on failure show its output."""
        env = {**os.environ, "TELENET_CONFIG": self.config, **(extra_env or {})}
        env.pop("TELENET_CONNECTION", None)
        result = subprocess.run(
            [TELENET, *args], capture_output=True, text=True, env=env, timeout=timeout
        )
        if check:
            assert result.returncode == 0, (
                f"telenet {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def connect(
        self, name: str, *extra: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        self.connections.add(name)
        return self.telenet(
            "connect",
            "--docker",
            "--name",
            name,
            "--vif-network",
            self.cluster["network"],
            "--cluster-dns",
            self.cluster["cluster_dns"],
            *extra,
            check=check,
        )

    def status(self, name: str) -> dict[str, Any]:
        return dict(json.loads(self.telenet("status", "--name", name, "--output", "json").stdout))

    def volumes(self) -> list[str]:
        out = run("docker", "volume", "ls", "-q", "--filter", f"driver={self.plugins[1]}")
        return out.stdout.split()

    def ours(self) -> dict[str, list[str]]:
        """Containers and networks whose names hold the prefix, and the plug-in's volumes."""
        containers = run("docker", "ps", "-a", "--format", "{{.Names}}").stdout.split()
        networks = run("docker", "network", "ls", "--format", "{{.Name}}").stdout.split()
        return {
            "containers": [c for c in containers if self.prefix in c],
            "networks": [n for n in networks if self.prefix in n],
            "volumes": self.volumes() if self.plugin_exists(self.plugins[1]) else [],
        }

    @staticmethod
    def plugin_exists(name: str) -> bool:
        return (
            subprocess.run(["docker", "plugin", "inspect", name], capture_output=True).returncode
            == 0
        )


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    require(shutil.which("docker") is not None, "the docker CLI is not installed")
    require(
        subprocess.run(["docker", "info"], capture_output=True).returncode == 0,
        "dockerd does not answer (run: scripts/dev setup)",
    )
    for image in (BUSYBOX, IMAGE):
        found = subprocess.run(["docker", "image", "inspect", image], capture_output=True)
        require(found.returncode == 0, f"image {image} is missing (run: scripts/dev setup)")
    require(os.geteuid() == 0, "the plug-ins need root")
    require(os.path.exists("/dev/fuse"), "/dev/fuse is missing")
    workdir = f"/tmp/tntest-{uid()}"
    os.makedirs(workdir)
    e = Env(workdir)
    try:
        # One name both the cluster's and the daemon's own resolver's (the second service's
        # container name, which Docker's DNS answers on the cluster network): tests/test_e2e_dns.py.
        both = f"{e.prefix}-echo-other.default.svc.cluster.local=self"
        out = e.telenet(
            "demo-cluster", "up", "--prefix", e.prefix, "--record", both, "--output", "json"
        )
        e.cluster = json.loads(out.stdout)
        yield e
    finally:
        for name in sorted(e.connections):
            e.telenet("quit", "--name", name, check=False)
        e.telenet("demo-cluster", "down", "--prefix", e.prefix, check=False)
        for plugin in e.plugins:
            if e.plugin_exists(plugin):
                run("docker", "plugin", "rm", "-f", plugin, check=False)
        shutil.rmtree(workdir, ignore_errors=True)
        if DURATIONS:
            print(
                "\ntelenet durations: " + ", ".join(f"{k} {v:.1f}s" for k, v in DURATIONS.items())
            )


def timed(key: str, env: Env, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    result = env.telenet(*args, check=check)
    DURATIONS[key] = time.monotonic() - started
    return result


def ip_on(container: str, network: str) -> str:
    out = run(
        "docker", "container", "inspect", "-f", "{{json .NetworkSettings.Networks}}", container
    ).stdout
    return str(json.loads(out)[network]["IPAddress"])


def assert_nothing_left(env: Env, name: str) -> None:
    """After quit: no container, network or volume of this connection."""
    left = env.ours()
    assert not [c for c in left["containers"] if name in c], left
    assert not [n for n in left["networks"] if n == name], left
    assert left["volumes"] == [], left


def quit_leaves_nothing(env: Env, name: str) -> None:
    """``telenet quit`` of connection ``name``; then nothing of it may be left."""
    env.telenet("quit", "--name", name)
    env.connections.discard(name)
    assert_nothing_left(env, name)


def wait_running(container: str, what: str) -> None:
    wait_for(
        lambda: run("docker", "ps", "-q", "--filter", f"name={container}").stdout != "", 30, what
    )


def interrupt(proc: subprocess.Popen[str], workload: str) -> None:
    """SIGINT to a ``telenet engage``: it must end and take its container with it."""
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert run("docker", "ps", "-a", "-q", "--filter", f"name={workload}").stdout == ""


def test_story_end_to_end(env: Env) -> None:
    """
    connect (plug-ins made on demand), status, docker-run (DNS, service by name, exit code,
    -p), engage (remote files and the user's -v, then volumes and bridge gone), quit.
    """
    name = f"{env.prefix}-blue"
    env.connections.add(name)
    out = timed(
        "first connect (plug-ins created)",
        env,
        "connect",
        "--docker",
        "--name",
        name,
        "--vif-network",
        env.cluster["network"],
        "--cluster-dns",
        env.cluster["cluster_dns"],
    ).stdout
    assert f"Creating plug-ins {env.plugins[0]}, {env.plugins[1]}" in out, out
    assert f"Connected to {name}" in out, out
    for plugin in env.plugins:
        enabled = run("docker", "plugin", "inspect", "-f", "{{.Enabled}}", plugin).stdout
        assert enabled.strip() == "true"

    status = env.status(name)
    daemon_ip = ip_on(f"tp-{name}", name)
    assert status["daemon"]["dns"]["local_address"] == f"{daemon_ip}:53"
    assert status["network"]["name"] == name
    assert env.cluster["network"] != name and status["daemon"]["routes"]
    assert [p["mode"] for p in status["plugins"]] == ["managed", "managed"]
    labels = json.loads(run("docker", "network", "inspect", "-f", "{{json .Labels}}", name).stdout)
    assert labels["telepresence.io/teleroute/daemon"] == status["daemon"]["container"]

    result = timed(
        "docker-run",
        env,
        "--connection",
        name,
        "docker-run",
        "--rm",
        BUSYBOX,
        "sh",
        "-c",
        f"{HTTP_GET}; exit 7",
        check=False,
    )
    assert result.returncode == 7, result
    assert result.stdout.strip() == BODY, result

    # -p keeps working: the container is created with it, then joined to the network.
    web = f"{env.prefix}-web"
    env.telenet(
        "--connection",
        name,
        "docker-run",
        "-d",
        "--rm",
        "--name",
        web,
        "-p",
        "127.0.0.1::80",
        BUSYBOX,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/etc",
    )
    try:
        port = run("docker", "port", web, "80/tcp").stdout.split(":")[-1].strip()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/passwd", timeout=10) as r:
            assert b"root:x:0:0" in r.read()
        networks = json.loads(
            run(
                "docker", "container", "inspect", "-f", "{{json .NetworkSettings.Networks}}", web
            ).stdout
        )
        assert set(networks) == {"bridge", name}
    finally:
        run("docker", "rm", "-f", web, check=False)

    data = os.path.join(env.workdir, "data")
    os.makedirs(data)
    with open(os.path.join(data, "mine.txt"), "w") as f:
        f.write("from the workstation\n")
    result = timed(
        "engage",
        env,
        "engage",
        "--name",
        name,
        "--agent",
        env.cluster["agent"],
        "--container",
        env.cluster["sample_container"],
        "--remote-mount",
        f"{SECRETS}:ro",
        "--docker-run",
        "--",
        "-v",
        f"{data}:/data",
        BUSYBOX,
        "sh",
        "-c",
        f"cat {SECRETS}/serviceaccount/token; cat /data/mine.txt; "
        f"touch {SECRETS}/x 2>/dev/null || echo read-only",
    )
    assert result.stdout.split() == ["demo-token-123", "from", "the", "workstation", "read-only"], (
        result
    )
    assert env.volumes() == []
    assert env.status(name)["bridges"] == []
    assert run("docker", "ps", "-a", "-q", "--filter", "volume=echo-0").stdout == ""

    out = timed("quit", env, "quit", "--name", name).stdout
    assert f"Disconnected from {name}" in out
    env.connections.discard(name)
    assert_nothing_left(env, name)


@pytest.mark.parametrize("before_bridge", [True, False])
def test_vif_network_found_whatever_its_name(env: Env, before_bridge: bool) -> None:
    """
    The daemon finds its VIF by its address on the VIF network, whatever interface Docker
    names it: with a cluster network whose name sorts before "bridge" (Docker made it eth0,
    and the default bridge eth1) and one that sorts after, only the cluster's subnet is
    routed and a workload reaches the service by name.
    """
    if before_bridge:
        prefix = f"aaa-{env.prefix}"  # "aaa-…-cluster" sorts before "bridge"
        cluster = json.loads(
            env.telenet("demo-cluster", "up", "--prefix", prefix, "--output", "json").stdout
        )
    else:
        prefix, cluster = env.prefix, env.cluster  # "tntest…-cluster" sorts after "bridge"
    name = f"{env.prefix}-vif{int(before_bridge)}"
    try:
        env.connections.add(name)
        env.telenet(
            "connect",
            "--docker",
            "--name",
            name,
            "--vif-network",
            cluster["network"],
            "--cluster-dns",
            cluster["cluster_dns"],
        )
        subnet = run(
            "docker",
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Subnet}}",
            cluster["network"],
        ).stdout.strip()
        status = env.status(name)
        assert status["daemon"]["routes"] == [subnet], status["daemon"]
        assert status["daemon"]["vif"] in ("eth0", "eth1"), status["daemon"]
        result = env.telenet(
            "--connection", name, "docker-run", "--rm", BUSYBOX, "sh", "-c", HTTP_GET
        )
        assert result.stdout.strip() == BODY, result
        quit_leaves_nothing(env, name)
    finally:
        if before_bridge:
            env.telenet("demo-cluster", "down", "--prefix", prefix, check=False)


def test_docker_context_of_an_engine_elsewhere(env: Env) -> None:
    """
    A docker context (``docker context use``) naming an engine on another endpoint, TCP here,
    as a Docker Desktop VM or a remote host would be: connect, status, docker-run, curl,
    engage and quit all go through it, with managed plug-ins and the control API through
    docker exec (the engine's published ports are not this machine's). A context that does
    not exist, and one whose engine does not answer, are one line naming it and its endpoint.
    """
    require(shutil.which("socat") is not None, "socat is needed to serve the engine on TCP")
    ensure_curl_image()
    port, dead = free_port(), free_port()
    # docker start --attach half-closes its side at once (nothing on stdin); socat would then
    # drop the engine's side 0.5 s later (its -t default), losing the output of any container
    # slower than that. A real remote engine keeps the attach stream open: so must the proxy.
    proxy = subprocess.Popen(
        [
            "socat",
            "-t",
            "3600",
            f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
            "UNIX-CONNECT:/var/run/docker.sock",
        ]
    )
    config = os.path.join(env.workdir, "docker-config")
    context = {"DOCKER_CONFIG": config}
    name = f"{env.prefix}-ctx"
    try:
        wait_for(lambda: port_open(port), 10, "the engine on TCP")
        for ctx, where in (("tntest-elsewhere", port), ("tntest-dead", dead)):
            run(
                "docker",
                "--config",
                config,
                "context",
                "create",
                ctx,
                "--docker",
                f"host=tcp://127.0.0.1:{where}",
            )
        run("docker", "--config", config, "context", "use", "tntest-elsewhere")

        result = env.telenet("status", check=False, extra_env={**context, "DOCKER_CONTEXT": "nope"})
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result
        assert 'docker context "nope" (from DOCKER_CONTEXT) does not exist' in result.stderr
        result = env.telenet(
            "status", check=False, extra_env={**context, "DOCKER_CONTEXT": "tntest-dead"}
        )
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result
        assert (
            f"Docker at tcp://127.0.0.1:{dead} (context tntest-dead, from DOCKER_CONTEXT) "
            "does not answer"
        ) in result.stderr, result

        env.connections.add(name)
        env.telenet(
            "connect",
            "--docker",
            "--name",
            name,
            "--vif-network",
            env.cluster["network"],
            "--cluster-dns",
            env.cluster["cluster_dns"],
            extra_env=context,
        )
        status = json.loads(
            env.telenet("status", "--name", name, "--output", "json", extra_env=context).stdout
        )
        assert status["daemon"]["status"] == "Connected", status["daemon"]
        assert status["daemon"]["control"] == "docker exec"
        assert [p["mode"] for p in status["plugins"]] == ["managed", "managed"]
        result = env.telenet(
            "--connection",
            name,
            "docker-run",
            "--rm",
            BUSYBOX,
            "sh",
            "-c",
            HTTP_GET,
            extra_env=context,
        )
        assert result.stdout.strip() == BODY, result
        result = env.telenet(
            "--connection", name, "curl", "-sS", f"http://{SERVICE}/", extra_env=context
        )
        assert result.stdout.strip() == BODY, result
        result = env.telenet(
            "engage",
            "--name",
            name,
            "--agent",
            env.cluster["agent"],
            "--container",
            env.cluster["sample_container"],
            "--remote-mount",
            f"{SECRETS}:ro",
            "--docker-run",
            "--",
            BUSYBOX,
            "cat",
            f"{SECRETS}/serviceaccount/token",
            extra_env=context,
        )
        assert result.stdout.strip() == "demo-token-123", result
        env.telenet("quit", "--name", name, extra_env=context)
        env.connections.discard(name)
        assert_nothing_left(env, name)
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)


def test_connect_twice_and_after_a_crash(env: Env) -> None:
    """A second connect reports the connection; after docker kill, connect makes it work again."""
    name = f"{env.prefix}-twice"
    env.connect(name)
    first = env.status(name)["daemon"]["container"]
    out = timed("second connect", env, "connect", "--docker", "--name", name).stdout
    assert f"Already connected to {name}" in out
    assert env.status(name)["daemon"]["container"] == first

    run("docker", "kill", f"tp-{name}")
    started = time.monotonic()
    out = env.connect(name).stdout
    DURATIONS["connect after a crash"] = time.monotonic() - started
    assert "which stopped" in out and f"Connected to {name}" in out, out
    second = env.status(name)
    assert second["daemon"]["running"] and second["daemon"]["container"] != first
    containers = run("docker", "ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert [c for c in containers if c == f"tp-{name}"] == [f"tp-{name}"]
    result = env.telenet("--connection", name, "docker-run", "--rm", BUSYBOX, "sh", "-c", HTTP_GET)
    assert result.stdout.strip() == BODY
    quit_leaves_nothing(env, name)


def next_default_pool() -> str:
    """The subnet Docker's IPAM would give the next network (172.17-31/16, then 192.168/20)."""
    ids = run("docker", "network", "ls", "-q").stdout.split()
    used = []
    for net in json.loads(run("docker", "network", "inspect", *ids).stdout):
        for config in (net.get("IPAM") or {}).get("Config") or []:
            if config.get("Subnet"):
                used.append(ipaddress.ip_network(config["Subnet"], strict=False))
    pools = [f"172.{n}.0.0/16" for n in range(17, 32)] + [
        f"192.168.{n}.0/20" for n in range(0, 256, 16)
    ]
    for pool in pools:
        if not any(ipaddress.ip_network(pool).overlaps(u) for u in used):
            return pool
    raise AssertionError("Docker's default pools are all used")


def test_subnet_avoids_a_routed_subnet_on_dockers_next_pool(env: Env) -> None:
    """A routed subnet where Docker's IPAM would go next: the network's subnet avoids it."""
    name = f"{env.prefix}-subnet"
    routed = next_default_pool()
    env.connect(name, "--subnet", routed)
    status = env.status(name)
    subnet = ipaddress.ip_network(status["network"]["subnet"])
    assert not subnet.overlaps(ipaddress.ip_network(routed)), (subnet, routed)
    assert routed in status["daemon"]["routes"]
    quit_leaves_nothing(env, name)


def test_errors_are_one_line_and_leave_nothing(env: Env) -> None:
    """Name clash, no connection, agent unreachable, bad config: one line, exit 1, nothing left."""
    clash = f"{env.prefix}-clash"
    run("docker", "network", "create", clash)
    try:
        result = env.connect(clash, check=False)
        env.connections.discard(clash)
        assert result.returncode == 1
        assert result.stderr == (
            f"telenet connect: a Docker network named {clash} exists and is "
            "not a teleroute network of telenet: choose another --name\n"
        )
        assert run("docker", "ps", "-a", "-q", "--filter", f"name=tp-{clash}").stdout == ""
    finally:
        run("docker", "network", "rm", clash, check=False)

    result = env.telenet("--connection", f"{env.prefix}-none", "docker-run", BUSYBOX, check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "not connected to" in result.stderr

    name = f"{env.prefix}-err"
    env.connect(name)
    unreachable = f"{env.cluster['ip']}:1"
    result = env.telenet(
        "engage",
        "--name",
        name,
        "--agent",
        unreachable,
        "--container",
        "echo",
        "--remote-mount",
        "/x",
        "--docker-run",
        "--",
        BUSYBOX,
        "true",
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"telenet engage: agent {unreachable} is unreachable from the daemon"
    )
    assert result.stderr.count("\n") == 1
    assert env.volumes() == [] and env.status(name)["bridges"] == []

    bad = os.path.join(env.workdir, "bad.yml")
    with open(bad, "w") as f:
        f.write("docker:\n  enableIPv4: maybe\n")
    result = env.telenet("--config", bad, "connect", "--docker", "--name", name, check=False)
    assert result.returncode == 1
    assert result.stderr == (
        f"telenet connect: {bad}: docker.enableIPv4: expected true or false, got str 'maybe'\n"
    )

    quit_leaves_nothing(env, name)


def test_signal_stops_the_engaged_container(env: Env) -> None:
    """SIGINT to telenet engage stops its container; volumes and bridge are gone after."""
    name = f"{env.prefix}-sig"
    env.connect(name)
    workload = f"{env.prefix}-sigw"
    proc = engage_in_background(env, name, env.cluster["agent"], workload)
    try:
        wait_running(workload, "the engaged container")
        assert env.volumes() == ["echo-0"]
        interrupt(proc, workload)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert env.volumes() == []
    assert env.status(name)["bridges"] == []
    quit_leaves_nothing(env, name)


def test_demo(env: Env) -> None:
    """telenet demo runs the whole story on its own cluster and removes everything."""
    prefix = f"{env.prefix}demo"
    started = time.monotonic()
    result = env.telenet("demo", "--prefix", prefix)
    DURATIONS["demo"] = time.monotonic() - started
    out = result.stdout
    assert f"$ telenet connect --docker --name {prefix}" in out
    assert BODY in out
    assert "demo-token-123" in out and "notes.txt" in out
    assert f"Disconnected from {prefix}" in out and "demo finished" in out
    left = run("docker", "ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert [c for c in left if prefix in c] == []
    networks = run("docker", "network", "ls", "--format", "{{.Name}}").stdout.split()
    assert [n for n in networks if prefix in n] == []
    assert env.volumes() == []


CURL_IMAGE = "telenet/curl"


def ensure_curl_image() -> None:
    """telenet/curl made locally from the Debian base (apt inside the build; cached after)."""
    if (
        subprocess.run(["docker", "image", "inspect", CURL_IMAGE], capture_output=True).returncode
        == 0
    ):
        return
    from telenet.cli.runner import CURL_DOCKERFILE

    # The Debian base scripts/dev made for this machine's release (no registry here).
    bases = [
        b
        for b in ("debian:bookworm-slim", "debian:trixie-slim")
        if subprocess.run(["docker", "image", "inspect", b], capture_output=True).returncode == 0
    ]
    require(bool(bases), "no Debian base image (run: scripts/dev setup)")
    dockerfile = CURL_DOCKERFILE.replace("debian:bookworm-slim", bases[0])
    built = subprocess.run(
        ["docker", "build", "-q", "-t", CURL_IMAGE, "-"],
        input=dockerfile,
        capture_output=True,
        text=True,
        timeout=300,
    )
    require(built.returncode == 0, f"could not build {CURL_IMAGE}: {built.stderr[-500:]}")


def test_curl_and_docker_build_and_debug(env: Env) -> None:
    """
    telenet curl prints the service's body (exit 0) and fails with curl's message on a name that
    does not resolve; engage --docker-build runs the image built from a context (cluster value,
    remote file); --docker-debug's container has SYS_PTRACE and apparmor=unconfined.
    """
    ensure_curl_image()
    name = f"{env.prefix}-curl"
    env.connect(name)
    result = env.telenet("--connection", name, "curl", "-sS", f"http://{SERVICE}/")
    assert result.stdout.strip() == BODY, result
    result = env.telenet(
        "--connection", name, "curl", "-sS", "http://nowhere.invalid/", check=False
    )
    assert result.returncode == 6, result
    assert "resolve host" in result.stderr, result

    context = os.path.join(env.workdir, "ctx")
    os.makedirs(context)
    with open(os.path.join(context, "Dockerfile"), "w") as f:
        f.write(f'FROM {BUSYBOX}\nCOPY run.sh /run.sh\nCMD ["sh", "/run.sh"]\n')
    with open(os.path.join(context, "run.sh"), "w") as f:
        f.write(f"{HTTP_GET}\nls {SECRETS}/serviceaccount\n")
    result = env.telenet(
        "engage",
        "--name",
        name,
        "--agent",
        env.cluster["agent"],
        "--container",
        env.cluster["sample_container"],
        "--remote-mount",
        f"{SECRETS}:ro",
        "--docker-build",
        context,
        "--docker-build-opt",
        f"file={context}/Dockerfile",
        "--",
    )
    lines = result.stdout.splitlines()
    assert BODY in lines and "token" in lines, result
    assert env.volumes() == []

    workload = f"{env.prefix}-debug"
    proc = engage_in_background(
        env, name, env.cluster["agent"], workload, ("--docker-debug", context), "IMAGE"
    )
    try:
        wait_running(workload, "the debug container")
        host = json.loads(
            run("docker", "container", "inspect", "-f", "{{json .HostConfig}}", workload).stdout
        )
        assert {"SYS_PTRACE", "CAP_SYS_PTRACE"} & set(host["CapAdd"] or []), host["CapAdd"]
        assert "apparmor=unconfined" in (host["SecurityOpt"] or []), host["SecurityOpt"]
        interrupt(proc, workload)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert env.volumes() == []
    quit_leaves_nothing(env, name)


#: A workload that runs until stopped: a shell as PID 1 ignores SIGINT, so it traps TERM.
IDLE = ("sh", "-c", "trap 'exit 0' TERM; while sleep 0.1; do :; done")


def engage_in_background(
    env: Env,
    name: str,
    agent: str,
    workload: str,
    mode: tuple[str, ...] = ("--docker-run",),
    image: str = BUSYBOX,
) -> subprocess.Popen[str]:
    """
    ``telenet engage`` of the echo container's secrets on ``agent``, running IDLE in
    ``image`` (``mode``: --docker-run, or --docker-build/--docker-debug CONTEXT with IMAGE).
    """
    return subprocess.Popen(
        [
            TELENET,
            "engage",
            "--name",
            name,
            "--agent",
            agent,
            "--container",
            "echo",
            "--remote-mount",
            SECRETS,
            *mode,
            "--",
            "--name",
            workload,
            image,
            *IDLE,
        ],
        env={**os.environ, "TELENET_CONFIG": env.config},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def in_container(container: str, script: str) -> str:
    return run("docker", "exec", container, "sh", "-c", script).stdout


def test_two_engagements_side_by_side(env: Env) -> None:
    """
    Two engagements of the same container name on one connection, against two agents with
    different exports: each sees only its own files, they reach each other by name and both
    reach the cluster; when the first ends, the second's volume and bridge keep working.
    """
    name = f"{env.prefix}-two"
    env.connect(name)
    cluster = env.cluster["container"]
    token = f"{SECRETS}/serviceaccount/token"
    # The second agent exports another tree, in the cluster container on port 8023.
    in_container(
        cluster,
        f"mkdir -p /exports2/echo{SECRETS}/serviceaccount && "
        f"echo second-token > /exports2/echo{token} && "
        f"touch /exports2/echo{SECRETS}/only-second",
    )
    run(
        "docker",
        "exec",
        "-d",
        cluster,
        "twistd",
        "-n",
        "--pidfile=",
        "sftp-agent",
        "--root",
        "/exports2",
        "--listen",
        "tcp:8023",
    )
    second_agent = f"{env.cluster['ip']}:8023"

    def agent_listens() -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex((env.cluster["ip"], 8023)) == 0

    wait_for(agent_listens, 20, "the second agent")
    first, second = f"{env.prefix}-first", f"{env.prefix}-second"
    procs = [engage_in_background(env, name, env.cluster["agent"], first)]
    try:
        wait_running(first, "the first engaged container")
        procs.append(engage_in_background(env, name, second_agent, second))
        wait_running(second, "the second engaged container")
        # The same container name: the second engagement's volume is its own.
        assert sorted(env.volumes())[0] == "echo-0" and len(env.volumes()) == 2, env.volumes()
        assert len(env.status(name)["bridges"]) == 2
        assert in_container(first, f"cat {token}") == "demo-token-123\n"
        assert in_container(second, f"cat {token}") == "second-token\n"
        assert "only-second" not in in_container(first, f"ls {SECRETS}")
        assert "only-second" in in_container(second, f"ls {SECRETS}")
        for me, other in ((first, second), (second, first)):
            assert in_container(me, HTTP_GET).strip() == BODY
            in_container(me, f"ping -c 1 -W 5 {other}")

        interrupt(procs[0], first)
        assert len(env.volumes()) == 1 and len(env.status(name)["bridges"]) == 1
        # A file made after the first engagement ended: read through the second's bridge.
        in_container(cluster, f"echo later > /exports2/echo{SECRETS}/later")
        assert in_container(second, f"cat {SECRETS}/later") == "later\n"
        assert in_container(second, HTTP_GET).strip() == BODY
        interrupt(procs[1], second)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert env.volumes() == []
    assert env.status(name)["bridges"] == []
    quit_leaves_nothing(env, name)
