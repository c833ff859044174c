# -*- test-case-name: tests.test_cli_demo -*-
"""
``telenet demo``: the whole story on this machine, against an embedded demo "cluster".

The cluster is a container of the telenet image on its own internal Docker network, running
``telenet.democluster`` (an HTTP echo service ``echo.default``, DNS for ``cluster.local`` names,
an SFTP agent with sample files of a container ``echo``), and a second container on that network
serving ``echo.other``, a service of a second namespace, with its own body. The demo then does
what a user does, printing each command before running it: ``connect --docker`` with the
cluster network as the daemon's VIF, ``status``, a ``docker-run`` workload that resolves and
fetches the services by their short names (``echo``, ``echo.other``) as a pod would, an
``engage`` whose container lists the agent's files next to a directory of its own ``-v``, and
``quit``; then it removes the cluster (``--keep`` leaves everything running).

Every object is named with the prefix (default ``telenet-demo``) and labelled ``telenet.cli.demo``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from telenet.cli.connection import CLIError
from telenet.cli.connector import Connector
from telenet.cli.dockerapi import DockerError
from telenet.cli.interfaces import ContainerSpec, IDocker

BUSYBOX = "local/busybox"
LABEL_DEMO = "telenet.cli.demo"
SERVICE = "echo.default.svc.cluster.local"
BODY = "hello from echo.default"
OTHER_SERVICE = "echo.other.svc.cluster.local"
OTHER_BODY = "hello from echo.other"
SAMPLE_CONTAINER = "echo"
AGENT_PORT = 8022
HERE = os.path.dirname(os.path.abspath(__file__))


class DemoCluster:
    """The demo cluster's network and container, named ``<prefix>-cluster``."""

    def __init__(
        self, docker: IDocker, prefix: str, image: str, records: tuple[str, ...] = ()
    ) -> None:
        self.docker = docker
        self.prefix = prefix
        self.image = image
        self.name = f"{prefix}-cluster"
        #: The container of the second namespace's service (``echo.other``).
        self.other = f"{prefix}-echo-other"
        #: More ``NAME=IP`` records for the cluster's DNS (``self``: the cluster's address).
        self.records = records

    def up(self, say: Callable[[str], None] = print, timeout: float = 30) -> dict[str, Any]:
        """Start it (or find it running); its addresses."""
        existing = self.docker.container(self.name)
        if existing is None or not existing["State"].get("Running"):
            self.down()
            if not self.docker.image_exists(self.image):
                raise CLIError(f"image {self.image} not found: build it with scripts/build-image")
            say(f"Starting the demo cluster {self.name} (network {self.name})")
            try:
                self.docker.create_network(
                    self.name, "bridge", {}, {LABEL_DEMO: self.prefix}, None, False
                )
                other = self._start(
                    self.other,
                    ["python3", "-m", "telenet.democluster", "--http-only", "--body", OTHER_BODY],
                    timeout,
                )
                other_ip = self._address(other)
                records = [f"{SERVICE}=self", f"{OTHER_SERVICE}={other_ip}", *self.records]
                self._start(
                    self.name,
                    [
                        "python3",
                        "-m",
                        "telenet.democluster",
                        "--body",
                        BODY,
                        *(arg for record in records for arg in ("--record", record)),
                        "--exports",
                        "/exports",
                        "--sample",
                        SAMPLE_CONTAINER,
                        "--agent-port",
                        str(AGENT_PORT),
                    ],
                    timeout,
                )
            except BaseException:
                self.down()
                raise
        return self.info()

    def _start(self, name: str, command: list[str], timeout: float) -> str:
        container = self.docker.create_container(
            ContainerSpec(
                image=self.image,
                command=command,
                name=name,
                labels={LABEL_DEMO: self.prefix},
                network=self.name,
            )
        )
        self.docker.start_container(container)
        self._wait_ready(container, timeout)
        return container

    def _address(self, container: str) -> str:
        found = self.docker.container(container) or {}
        networks = (found.get("NetworkSettings") or {}).get("Networks") or {}
        address = (networks.get(self.name) or {}).get("IPAddress")
        if not address:
            raise CLIError(f"the demo container {container} has no address on {self.name}")
        return str(address)

    def _wait_ready(self, container: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            logs = self.docker.container_logs(container, 50)
            if "ready" in logs.split():
                return
            state = (self.docker.container(container) or {}).get("State", {})
            if not state.get("Running"):
                break
            time.sleep(0.1)
        tail = self.docker.container_logs(container, 5).strip().splitlines()
        last = tail[-1] if tail else "no output"
        if "No module named telenet.democluster" in last:
            raise CLIError(
                f"the image {self.image} predates the demo cluster: rebuild it with "
                "scripts/build-image"
            )
        raise CLIError(f"the demo cluster did not start: {last}")

    def info(self) -> dict[str, Any]:
        container = self.docker.container(self.name)
        if container is None:
            raise CLIError(f"the demo cluster {self.name} is not running")
        networks = container["NetworkSettings"]["Networks"]
        ip = networks[self.name]["IPAddress"]
        other = self.docker.container(self.other)
        other_ip = (
            ((other or {}).get("NetworkSettings") or {}).get("Networks", {}).get(self.name) or {}
        ).get("IPAddress")
        return {
            "network": self.name,
            "container": self.name,
            "ip": ip,
            "service": SERVICE,
            "other_service": OTHER_SERVICE,
            "other_container": self.other,
            "other_ip": other_ip,
            "cluster_dns": ip,
            "agent": f"{ip}:{AGENT_PORT}",
            "sample_container": SAMPLE_CONTAINER,
        }

    def down(self) -> None:
        """Remove the containers and the network (only ours: labelled with this prefix)."""
        for name in (self.name, self.other):
            container = self.docker.container(name)
            if (
                container is not None
                and (container["Config"].get("Labels") or {}).get(LABEL_DEMO) == self.prefix
            ):
                self.docker.remove_container(container["Id"])
        network = self.docker.network(self.name)
        if network is not None and (network.get("Labels") or {}).get(LABEL_DEMO) == self.prefix:
            for attached in network.get("Containers") or {}:
                try:
                    self.docker.disconnect(network["Id"], attached)
                except DockerError:
                    pass
            self.docker.remove_network(network["Id"])


def format_cluster(info: dict[str, Any]) -> str:
    return (
        f"Demo cluster {info['container']} on network {info['network']}:\n"
        f"  service  http://{info['service']}/ ({info['ip']}:80)\n"
        f"  service  http://{info['other_service']}/ ({info['other_ip']}:80, namespace other)\n"
        f"  DNS      {info['cluster_dns']} (for cluster.local)\n"
        f"  agent    {info['agent']} (exports of container {info['sample_container']})"
    )


def _checkout_root() -> str | None:
    """The source checkout this telenet runs from, if any (it can build the image)."""
    root = os.path.dirname(HERE)
    return root if os.path.exists(os.path.join(root, "scripts", "build-image")) else None


def _ensure_images(connector: Connector, say: Callable[[str], None]) -> None:
    import subprocess

    docker = connector.docker
    image = connector.config.daemon_image
    if not docker.image_exists(image):
        root = _checkout_root()
        if root is None:
            raise CLIError(f"image {image} not found: build it with scripts/build-image")
        say(f"Building the image {image} (scripts/build-image)")
        built = subprocess.run(
            ["bash", os.path.join(root, "scripts", "build-image"), "--tag", image]
        )
        if built.returncode != 0:
            raise CLIError(f"building the image {image} failed")
    if not docker.image_exists(BUSYBOX):
        raise CLIError(f"image {BUSYBOX} not found: run scripts/dev setup")


def http_get(host: str, path: str = "/") -> str:
    """A shell line for busybox: an HTTP GET with nc (busybox wget crashes on some hosts)."""
    return f'printf "GET {path} HTTP/1.0\\r\\n\\r\\n" | nc -w 5 {host} 80'


def run_demo(
    connector: Connector,
    telenet: Callable[[list[str]], int],
    prefix: str = "telenet-demo",
    keep: bool = False,
    say: Callable[[str], None] = lambda text: print(text, flush=True),
) -> int:
    """Run the story (``telenet`` runs one CLI command); 0 when every step worked."""

    def step(*args: str, expect: int = 0) -> None:
        say("\n$ telenet " + shlex.join(args))
        code = telenet(list(args))
        if code != expect:
            raise CLIError(f"telenet {args[0]} exited with {code}")

    connector.check_docker()
    _ensure_images(connector, say)
    cluster = DemoCluster(connector.docker, prefix, connector.config.daemon_image)
    name = prefix
    data = tempfile.mkdtemp(prefix="telenet-demo-data-")
    with open(os.path.join(data, "notes.txt"), "w") as f:
        f.write("a file of the workstation\n")
    say(
        "telenet demo: containers on this machine reach a cluster's services by name and mount "
        "a cluster container's files"
    )
    ok = False
    try:
        info = cluster.up(say)
        say(format_cluster(info))
        step(
            "connect",
            "--docker",
            "--name",
            name,
            "--vif-network",
            info["network"],
            "--cluster-dns",
            info["cluster_dns"],
        )
        step("status", "--name", name)
        step(
            "--connection",
            name,
            "docker-run",
            "--rm",
            BUSYBOX,
            "sh",
            "-c",
            f"nslookup -type=a echo; {http_get('echo')}; {http_get('echo.other')}",
        )
        step(
            "engage",
            "--name",
            name,
            "--agent",
            info["agent"],
            "--container",
            info["sample_container"],
            "--remote-mount",
            "/var/run/secrets/kubernetes.io:ro",
            "--docker-run",
            "--",
            "-v",
            f"{data}:/data",
            BUSYBOX,
            "sh",
            "-c",
            "ls -R /var/run/secrets/kubernetes.io; "
            "cat /var/run/secrets/kubernetes.io/serviceaccount/token; ls /data",
        )
        ok = True
    finally:
        if keep and ok:
            say(
                f"\nKept running: telenet status --name {name}; clean up with: telenet quit "
                f"--name {name} && telenet demo-cluster down --prefix {prefix}"
            )
        else:
            try:
                step("quit", "--name", name)
            finally:
                cluster.down()
                say(f"Removed the demo cluster {cluster.name}")
        shutil.rmtree(data, ignore_errors=True)
    say("\ndemo finished")
    return 0
