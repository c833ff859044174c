# -*- test-case-name: tests.test_cli_connect -*-
"""
The daemon container ``tp-N``: its ``twistd telepresence-daemon`` command line, its making
(``--pid host``, NET_ADMIN, the forwarding sysctls, the control port published on 127.0.0.1,
the VIF network) and the wait until its control API answers.

Separate from the network: the daemon runs first, and the network is made from what it says.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs

from telenet.cli.config import Config
from telenet.cli.connection import CLIError, Connection, ConnectRequest
from telenet.cli.daemoncontrol import DaemonControlError
from telenet.cli.dockerapi import DockerError, subnets_of
from telenet.cli.interfaces import ContainerSpec, IDocker
from telenet.cli.lookup import ConnectionLookup
from telenet.cli.naming import (
    DEFAULT_CLUSTER_DOMAIN,
    DEFAULT_NAMESPACE,
    LABEL_CLUSTER_DOMAIN,
    LABEL_CONNECTION,
    LABEL_NAMESPACE,
    LABEL_NETWORK_PLUGIN,
    LABEL_ROLE,
    LABEL_VOLUME_PLUGIN,
    container_name,
)
from telenet.cli.networks import use_ipv6
from telenet.core.gocompat import safe_name


@attrs.define
class DaemonContainer:
    """I start a connection's daemon container and wait until its control API answers."""

    docker: IDocker
    config: Config
    lookup: ConnectionLookup
    say: Callable[[str], None] = print
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    ready_timeout: float = 30.0

    def daemon_command(self, req: ConnectRequest) -> list[str]:
        command = [
            "twistd",
            "--nodaemon",
            "--pidfile=",
            "telepresence-daemon",
            "--control",
            f"tcp:{self.config.daemon_port}",
            "--teleroute-port",
            str(self.config.teleroute_port),
            "--name",
            safe_name("docker-" + req.name),
        ]
        if req.vif_network:
            # Found by its address on that network: Docker's interface names follow neither
            # the order of connection nor any order the CLI can know.
            network = self.docker.network(req.vif_network) or {}
            vif_subnets = subnets_of(network)
            if not vif_subnets:
                raise CLIError(f"--vif-network {req.vif_network} has no subnet to find it by")
            for subnet in vif_subnets:
                command += ["--vif-subnet", subnet]
        elif req.vif:
            command += ["--vif", req.vif]
        for subnet in req.subnets:
            command += ["--subnet", subnet]
        if req.cluster_dns:
            command += ["--cluster-dns", req.cluster_dns]
        for domain in req.cluster_domains:
            command += ["--cluster-domain", domain]
        command += ["--namespace", self.namespace(req)]
        for namespace in self.mapped_namespaces(req):
            command += ["--mapped-namespace", namespace]
        return command

    def namespace(self, req: ConnectRequest) -> str:
        """``--namespace``, else config.yml's ``cluster.namespace``, else ``default``."""
        return req.namespace or self.config.namespace or DEFAULT_NAMESPACE

    def mapped_namespaces(self, req: ConnectRequest) -> tuple[str, ...]:
        """``--mapped-namespaces``, else config.yml's ``cluster.mappedNamespaces``."""
        return req.mapped_namespaces or self.config.mapped_namespaces

    def start_daemon(self, req: ConnectRequest, drivers: dict[str, str]) -> str:
        sysctls = {"net.ipv4.ip_forward": "1"}
        if use_ipv6(self.docker, self.config):
            sysctls.update(
                {"net.ipv6.conf.all.disable_ipv6": "0", "net.ipv6.conf.all.forwarding": "1"}
            )
        spec = ContainerSpec(
            image=self.config.daemon_image,
            command=self.daemon_command(req),
            name=container_name(req.name),
            labels={
                LABEL_CONNECTION: req.name,
                LABEL_ROLE: "daemon",
                LABEL_NETWORK_PLUGIN: drivers["teleroute"],
                LABEL_VOLUME_PLUGIN: drivers["telemount"],
                LABEL_NAMESPACE: self.namespace(req),
                LABEL_CLUSTER_DOMAIN: (req.cluster_domains or (DEFAULT_CLUSTER_DOMAIN,))[0],
            },
            pid_host=True,
            cap_add=["NET_ADMIN"],
            sysctls=sysctls,
            ports={f"{self.config.daemon_port}/tcp": ("127.0.0.1", None)},
        )
        self.say(f"Starting the daemon container {spec.name} ({spec.image})")
        try:
            container_id = self.docker.create_container(spec)
        except DockerError as e:
            raise CLIError(f"could not create the daemon container {spec.name}: {e}") from None
        try:
            if req.vif_network:
                self.docker.connect(req.vif_network, container_id, None)
            self.docker.start_container(container_id)
        except DockerError as e:
            self.docker.remove_container(container_id)
            raise CLIError(f"could not start the daemon container {spec.name}: {e}") from None
        except BaseException:
            self.docker.remove_container(container_id)
            raise
        return container_id

    def wait_ready(self, conn: Connection) -> dict[str, Any]:
        """The daemon's /status once its control API answers."""
        deadline = self.clock() + self.ready_timeout
        last = "no answer yet"
        container_id = conn.container_id or ""
        while True:
            current = self.docker.container(container_id)
            if current is None or not current["State"].get("Running"):
                logs = self.docker.container_logs(container_id, 20).strip().splitlines()
                why = logs[-1] if logs else "no output"
                code = (current or {}).get("State", {}).get("ExitCode")
                raise CLIError(
                    f"the daemon container {container_name(conn.name)} exited (code {code}): {why}"
                )
            conn = Connection(conn.name, current, conn.network)
            control = self.lookup.control_of(conn)
            if control is not None:
                try:
                    return control.status()
                except DaemonControlError as e:
                    last = str(e)
            if self.clock() >= deadline:
                raise CLIError(
                    f"the daemon {container_name(conn.name)} is not answering on its "
                    f"control port after {self.ready_timeout:.0f} s ({last}); see "
                    f"docker logs {container_name(conn.name)}"
                )
            self.sleep(0.1)
