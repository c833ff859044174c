# -*- test-case-name: tests.test_cli_connect -*-
"""
The teleroute network N: its making (options ``host`` and ``port``, the daemon's label, a
free subnet or the user's, checked, the daemon joining first), the replacing of one whose
daemon is gone, and the garbage collection of every such network.

Separate from the daemon container: a network outlives its daemon, and quit and the GC need it.
"""

from __future__ import annotations

import ipaddress
import secrets
import time
from collections.abc import Callable
from typing import Any

import attrs

from telenet.cli.config import Config
from telenet.cli.connection import CLIError, Connection, ConnectRequest
from telenet.cli.dockerapi import DockerError, subnets_of
from telenet.cli.interfaces import IDocker
from telenet.cli.naming import LABEL_CONNECTION, LABEL_DAEMON, container_name, labels_of
from telenet.cli.subnets import Taken, choose_subnet, choose_subnet6, collision, host_routes


def use_ipv6(docker: IDocker, config: Config) -> bool:
    """IPv6 for the daemon and its network: configured, and enabled on Docker's bridge."""
    bridge = docker.network("bridge") or {}
    return config.enable_ipv6 and bool(bridge.get("EnableIPv6"))


@attrs.define
class TelerouteNetworks:
    """I make, replace and collect the connections' teleroute networks."""

    docker: IDocker
    config: Config
    say: Callable[[str], None] = print
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    ready_timeout: float = 30.0
    #: This machine's routes (``subnets.host_routes``), checked when the engine runs here.
    host_routes: Callable[[], list[Taken]] = host_routes
    #: Randomness for the IPv6 subnet's global ID (``subnets.choose_subnet6``).
    random_bytes: Callable[[int], bytes] = secrets.token_bytes

    def check_network_name(self, name: str) -> None:
        network = self.docker.network(name)
        if network is not None and LABEL_DAEMON not in labels_of(network):
            raise CLIError(
                f"a Docker network named {name} exists and is not a teleroute "
                "network of telenet: choose another --name"
            )

    def check_chosen_subnet(
        self, req: ConnectRequest, status: dict[str, Any], replacing: str | None = None
    ) -> None:
        """
        CLIError when the user's subnet overlaps a routed subnet, another Docker network
        (``replacing``, the network about to be made again, aside) or a route of the host,
        naming both; the daemon's routes are known once it answers (``status``).
        """
        if req.docker_subnet is None:
            return
        subnet = ipaddress.ip_network(req.docker_subnet)
        taken = [Taken(r, f"the routed subnet {r}") for r in req.subnets]
        routes = [r for r in status.get("routes") or [] if isinstance(r, str)]
        taken += [Taken(r, f"the routed subnet {r} (a route of the daemon)") for r in routes]
        for net in self.docker.networks():
            if replacing is not None and net.get("Name") == replacing:
                continue
            for other in subnets_of(net):
                taken.append(Taken(other, f"Docker network {net.get('Name')} ({other})"))
        if self.docker.engine_is_here():
            taken += self.host_routes()
        hit = collision(subnet, taken)
        if hit is not None:
            raise CLIError(f"--docker-subnet {subnet} overlaps {hit.what}")

    def _blocked_subnets(self, req: ConnectRequest, status: dict[str, Any]) -> list[str]:
        blocked: list[str] = []
        for net in self.docker.networks():
            blocked += subnets_of(net)
        blocked += list(req.subnets)
        blocked += [r for r in status.get("routes") or [] if isinstance(r, str)]
        return blocked

    def ensure_network(
        self, conn: Connection, driver: str, req: ConnectRequest, status: dict[str, Any]
    ) -> dict[str, Any]:
        name = conn.name
        daemon_id = conn.container_id or ""
        host = conn.bridge_ip()
        if host is None:
            raise CLIError(
                f"the daemon container {container_name(name)} has no address on "
                "Docker's default bridge"
            )
        ipv6 = use_ipv6(self.docker, self.config)
        if not self.config.enable_ipv4 and not ipv6:
            raise CLIError(
                "unable to create teleroute network because both the IPv4 and IPv6 "
                "families are disabled"
            )
        if ipv6 and not self.config.enable_ipv4 and ipaddress.ip_address(host).version == 4:
            host = f"::ffff:{host}"
        reconnect: list[str] = []
        try:
            existing = self.docker.network(name)
            if existing is not None:
                # Removed before the subnet is chosen, so its subnet can be had again.
                reconnect = self._remove_stale_network(existing, daemon_id)
        except DockerError as e:
            raise CLIError(f"Unable to create network {name}: {e}") from None
        if req.docker_subnet is not None:
            self.check_chosen_subnet(req, status)
            subnet: Any = req.docker_subnet
        else:
            subnet = choose_subnet(self._blocked_subnets(req, status))
            if subnet is None:
                self.say("Warning: no free subnet among the candidates; Docker's IPAM chooses one")
        subnet6 = None
        if ipv6:
            subnet6 = choose_subnet6(self._blocked_subnets(req, status), self.random_bytes)
            if subnet6 is None:
                self.say("Warning: no free IPv6 subnet found; Docker's IPAM chooses one")
        options = {"host": host, "port": str(self.config.teleroute_port)}
        labels = {LABEL_DAEMON: daemon_id, LABEL_CONNECTION: name}
        subnet_text = str(subnet) if subnet is not None else None
        deadline = self.clock() + self.ready_timeout
        while True:
            try:
                network_id, warning = self.docker.create_network(
                    name,
                    driver,
                    options,
                    labels,
                    subnet_text,
                    ipv6,
                    subnet6=str(subnet6) if subnet6 is not None else None,
                    ipv4=self.config.enable_ipv4,
                )
                break
            except DockerError as e:
                # The control API answers before the teleroute gRPC port may (a loaded host):
                # the plug-in then refuses the network, and a later try succeeds.
                if "teleroute service" not in str(e) or self.clock() >= deadline:
                    raise CLIError(f"Unable to create network {name}: {e}") from None
            self.sleep(0.2)
        if warning:
            self.say(f"Warning from Docker: {warning}")
        try:
            # The daemon joins first: the plug-in learns the daemon's addresses from it.
            self.docker.connect(network_id, daemon_id, {"daemon": "true"})
        except DockerError as e:
            self._remove_network_quietly(network_id)
            raise CLIError(f"Unable to create network {name}: connecting the daemon: {e}") from None
        for container in reconnect:
            try:
                self.docker.connect(network_id, container, None)
            except DockerError as e:
                self.say(f"Warning: could not reconnect container {container[:12]} to {name}: {e}")
        network = self.docker.network(network_id)
        if network is None:
            raise CLIError(f"Unable to create network {name}: it vanished")
        return network

    def _remove_stale_network(self, network: dict[str, Any], daemon_id: str) -> list[str]:
        """Remove our network whose daemon is gone; the other containers it had."""
        labels = labels_of(network)
        if LABEL_DAEMON not in labels:
            raise DockerError("a network of that name exists and is not telenet's")
        owner = labels[LABEL_DAEMON]
        if owner != daemon_id:
            current = self.docker.container(owner)
            if current is not None and current["State"].get("Running"):
                who = current.get("Name", owner[:12]).lstrip("/")
                raise DockerError(f"it belongs to the running daemon {who}; quit that first")
        self.say(f"Replacing the network {network['Name']} of a daemon that is gone")
        attached = list(network.get("Containers") or {})
        for container in attached:
            try:
                self.docker.disconnect(network["Id"], container)
            except DockerError:
                pass
        self.docker.remove_network(network["Id"])
        return [c for c in attached if c not in (owner, daemon_id)]

    def _remove_network_quietly(self, network: str) -> None:
        try:
            self.docker.remove_network(network)
        except DockerError:
            pass

    # -- garbage collection

    def network_gc(self) -> list[str]:
        """Remove every labelled teleroute network whose daemon is gone; their names."""
        removed = []
        for net in self.docker.networks():
            owner = labels_of(net).get(LABEL_DAEMON)
            if not owner:
                continue
            daemon = self.docker.container(owner)
            if daemon is not None and daemon["State"].get("Running"):
                continue
            try:
                self.docker.remove_network(net["Id"])
            except DockerError as e:
                if "has active endpoints" not in str(e):
                    self.say(f"Warning: could not remove network {net['Name']}: {e}")
                continue
            removed.append(str(net["Name"]))
        return removed
