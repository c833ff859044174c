# -*- test-case-name: tests.test_cli_connect -*-
"""
``telenet status``: what Docker and the daemon's control API say of a connection, as an object
with telenet's keys and those of Telepresence's containerized daemon, and its human form.

Separate because it only reads: it finds, asks and formats, and changes nothing.
"""

from __future__ import annotations

from typing import Any

import attrs

from telenet.cli.config import Config
from telenet.cli.connection import CLIError, Connection, NotConnected
from telenet.cli.daemoncontrol import DaemonControlError
from telenet.cli.dockerapi import subnets_of
from telenet.cli.interfaces import IDocker
from telenet.cli.lookup import ConnectionLookup
from telenet.cli.naming import (
    LABEL_NAMESPACE,
    LABEL_NETWORK_PLUGIN,
    LABEL_VOLUME_PLUGIN,
    container_name,
)
from telenet.cli.plugins import Plugins


@attrs.define
class StatusReporter:
    """I describe connections: one, the one ``--use`` picks, or every one."""

    docker: IDocker
    config: Config
    lookup: ConnectionLookup
    plugins: Plugins

    def status(self, name: str | None) -> dict[str, Any]:
        """The status of the connection named ``name``, or of the only one."""
        self.lookup.check_docker()
        return self._describe(self.lookup.find(name))

    def statuses(self, name: str | None = None, use: str | None = None) -> list[dict[str, Any]]:
        """
        The status of the connection named ``name``, of the one ``use`` matches
        (L{ConnectionLookup.select}), or, with neither, of every connection; NotConnected
        when there is none.
        """
        self.lookup.check_docker()
        if name is not None and use is not None:
            raise CLIError("give --name or --use, not both")
        if use is not None:
            name = self.lookup.select(use)
        if name is not None:
            return [self._describe(self.lookup.find(name))]
        found = []
        for each in self.lookup.connection_names():
            try:
                found.append(self._describe(self.lookup.find(each)))
            except NotConnected:
                continue  # gone since it was listed
        if not found:
            raise NotConnected("not connected: run telenet connect --docker first")
        return found

    def _describe(self, conn: Connection) -> dict[str, Any]:
        # The daemon object has telenet's keys and those of Telepresence's containerized
        # daemon (`telepresence status --output json`: in_docker, name, status,
        # container_network, daemon_port, dns.local_address(es), subnets).
        address = conn.control_address(self.config.daemon_port) if conn.running else None
        daemon: dict[str, Any] = {
            "in_docker": True,
            "name": conn.name,
            "running": conn.running,
            "status": "Not connected",
            "container": conn.container_id,
            "container_name": container_name(conn.name),
            "container_network": conn.network["Name"] if conn.network is not None else None,
            "daemon_port": address[1] if address else None,
            "control": (
                "docker exec"
                if conn.running and not self.docker.engine_is_here()
                else f"{address[0]}:{address[1]}"
                if address
                else None
            ),
            "version": None,
            "dns": {"local_address": None, "local_addresses": []},
            "subnets": [],
            "routes": [],
            "vif": None,
            "namespace": conn.label(LABEL_NAMESPACE),
            "mapped_namespaces": [],
        }
        bridges: list[Any] = []
        if conn.running:
            try:
                status = self.lookup.control(conn).status()
            except (DaemonControlError, CLIError) as e:
                daemon["error"] = str(e)
            else:
                routes = [str(r) for r in status.get("routes") or []]
                dns = _dns_status(status.get("dns"))
                daemon.update(
                    namespace=dns.get("namespace") or daemon["namespace"],
                    mapped_namespaces=list(dns.get("mapped_namespaces") or []),
                    version=status.get("version"),
                    dns=dns,
                    subnets=routes,
                    routes=routes,
                    vif=status.get("vif"),
                )
                bridges = list(status.get("bridges") or [])
                if conn.network is not None and conn.dns_ip() is not None:
                    daemon["status"] = "Connected"
                else:
                    daemon["error"] = (
                        f"the daemon is not on network {conn.name}: run telenet connect "
                        f"--docker --name {conn.name} again"
                    )
        network = None
        if conn.network is not None:
            network = {
                "name": conn.network["Name"],
                "id": conn.network["Id"],
                "subnet": next(iter(subnets_of(conn.network)), None),
                # Every family's (a dual-stack network has an IPv4 and an IPv6 one).
                "subnets": subnets_of(conn.network),
                "driver": conn.network.get("Driver"),
            }
        volumes = self.lookup.volumes(conn)
        return {
            "connection": conn.name,
            "daemon": daemon,
            "network": network,
            "plugins": [
                self.plugins.plugin_status(conn.label(LABEL_NETWORK_PLUGIN), "network"),
                self.plugins.plugin_status(conn.label(LABEL_VOLUME_PLUGIN), "volume"),
            ],
            "bridges": bridges,
            "volumes": volumes,
        }


def _dns_status(dns: Any) -> dict[str, Any]:
    """The daemon's ``dns`` with both ``local_address`` and the ``local_addresses`` list."""
    dns = dict(dns) if isinstance(dns, dict) else {}
    addresses = dns.pop("local_addresses", None)
    first = dns.pop("local_address", None)
    if not isinstance(addresses, list):
        addresses = [first] if first else []
    addresses = [str(a) for a in addresses if a]
    return {
        "local_address": first or (addresses[0] if addresses else None),
        "local_addresses": addresses,
        **dns,
    }


def format_status(status: dict[str, Any]) -> str:
    """The human-readable form of ``telenet status`` for one connection."""
    daemon = status["daemon"]
    lines = [f"Connection {status['connection']}: {daemon.get('status') or 'Not connected'}"]
    state = "running" if daemon.get("running") else "not running"
    cid = (daemon.get("container") or "")[:12] or "none"
    container = daemon.get("container_name") or daemon["name"]
    lines.append(
        f"  daemon:  {container} ({cid}), {state}"
        + (f", version {daemon['version']}" if daemon.get("version") else "")
    )
    if daemon.get("error"):
        lines.append(f"  error:   {daemon['error']}")
    dns = (daemon.get("dns") or {}).get("local_addresses") or []
    if dns:
        lines.append(f"  DNS:     {', '.join(dns)}")
    if daemon.get("namespace"):
        mapped = ", ".join(daemon.get("mapped_namespaces") or []) or "any"
        lines.append(f"  namespace: {daemon['namespace']} (mapped namespaces: {mapped})")
    if daemon.get("routes"):
        lines.append(f"  routes:  {', '.join(daemon['routes'])}")
    network = status.get("network")
    lines.append(
        f"  network: {network['name']} "
        f"({', '.join(network.get('subnets') or [str(network['subnet'])])}, "
        f"driver {network['driver']})"
        if network
        else "  network: none"
    )
    for plugin in status["plugins"]:
        enabled = "enabled" if plugin["enabled"] else "disabled"
        health = format_health(plugin.get("health"))
        lines.append(
            f"  {plugin['kind']} plug-in: {plugin['name']} ({plugin['mode']}, {enabled})"
            + (f"; {health}" if health else "")
        )
    bridges = status.get("bridges") or []
    lines.append(
        "  bridges: " + (", ".join(f"{b['port']} -> {b['agent']}" for b in bridges) or "none")
    )
    lines.append("  volumes: " + (", ".join(status.get("volumes") or []) or "none"))
    if "compose_projects" in status:
        projects = ", ".join(status["compose_projects"]) or "none"
        lines.append(f"  compose projects: {projects}")
    return "\n".join(lines)


def format_health(health: Any) -> str:
    """A plug-in's ``/Telenet.Health`` counters on one line ("" when there are none)."""
    if not isinstance(health, dict):
        return ""
    if "error" in health:
        return f"health: {health['error']}"
    parts = []
    networks = health.get("Networks")
    if isinstance(networks, list):
        up = sum(1 for n in networks if n.get("Connected"))
        again = sum(int(n.get("Reconnects") or 0) for n in networks)
        parts.append(f"{len(networks)} networks ({up} linked, {again} reconnects)")
        parts.append(f"{health.get('Endpoints', 0)} endpoints")
    mounts = health.get("Mounts")
    if isinstance(mounts, list):
        up = sum(1 for m in mounts if m.get("Connected"))
        parts.append(f"{health.get('Volumes', 0)} volumes")
        parts.append(f"{len(mounts)} mounts ({up} connected)")
        read = sum(int(m.get("BytesRead") or 0) for m in mounts)
        written = sum(int(m.get("BytesWritten") or 0) for m in mounts)
        failed = sum(int(m.get("IOErrors") or 0) for m in mounts)
        parts.append(f"{read} B read, {written} B written, {failed} I/O errors")
    if "Uptime" in health:
        parts.append(f"up {float(health['Uptime']):.0f} s")
    return ", ".join(parts)


def format_statuses(statuses: list[dict[str, Any]]) -> str:
    """Several connections' statuses, one block each."""
    return "\n\n".join(format_status(s) for s in statuses)
