# -*- test-case-name: tests.test_compose_command -*-
"""
The facts the renderer needs, read from Docker and the daemons without changing anything: a
connection's teleroute network, its DNS (``workload_dns``, as ``docker-run`` has it), its
routed subnets (the daemon's ``GET /status`` ``routes``), its volume plug-in; every Docker
network's subnets; the bridges a daemon has open.

Before ``up`` has opened an engaged service's bridge (``telenet compose config`` of a project
that is not up), the bridge's port is not known: it shows as 0, with a note saying so.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from telenet.cli.compose.extension import Extension
from telenet.cli.compose.render import BridgeFacts, ConnectionFacts, Facts
from telenet.cli.compose.source import ComposeError
from telenet.cli.config import Config
from telenet.cli.connection import CLIError, Connection, NotConnected
from telenet.cli.daemoncontrol import DaemonControlError
from telenet.cli.dockerapi import subnets_of
from telenet.cli.interfaces import IDocker
from telenet.cli.lookup import ConnectionLookup
from telenet.cli.workload import (
    bridge_host,
    teleroute_network,
    volume_driver,
    volume_wait,
    workload_dns,
)


@attrs.frozen
class Connected:
    """A running connection, with what its daemon says of itself."""

    connection: Connection
    facts: ConnectionFacts
    bridges: tuple[tuple[int, str], ...]


@attrs.define
class FactsReader:
    """I read the renderer's facts from Docker and the daemons' control API."""

    docker: IDocker
    config: Config
    lookup: ConnectionLookup

    def connected(self, name: str) -> Connected:
        """The connection named ``name``; ComposeError when it is not up."""
        hint = (
            f"connection {name} is not connected: run telenet connect --docker --name {name} "
            "(telenet compose up will connect it)"
        )
        try:
            conn = self.lookup.find(name)
        except NotConnected:
            raise ComposeError(hint) from None
        dns = workload_dns(conn)
        if not conn.running or conn.network is None or not dns.servers:
            raise ComposeError(hint)
        try:
            status = self.lookup.control(conn).status()
        except (CLIError, DaemonControlError) as e:
            raise ComposeError(f"the daemon of {name} does not answer: {e}") from None
        driver = volume_driver(conn, lambda: self.config.telemount.name)
        facts = ConnectionFacts(
            name=name,
            network=teleroute_network(conn),
            dns=dns,
            routes=tuple(str(r) for r in status.get("routes") or []),
            volume_driver=driver,
            mount_timeout=volume_wait(self.docker, driver, self.config.mount_timeout),
        )
        bridges = tuple(
            (int(b["port"]), str(b.get("agent")))
            for b in status.get("bridges") or []
            if isinstance(b, dict) and "port" in b
        )
        return Connected(conn, facts, bridges)

    def networks(self) -> dict[str, tuple[str, ...]]:
        """Every Docker network's subnets, by name."""
        return {n["Name"]: tuple(subnets_of(n)) for n in self.docker.networks()}

    def preview(
        self, project: str, extension: Extension, active: Iterable[str], bridged: Iterable[str]
    ) -> tuple[Facts, list[str]]:
        """
        The facts of the connections the active services use (each must be up), with the
        bridges the ``bridged`` services need that are open; one that is not gets port 0,
        and a note.
        """
        active = set(active)
        connected = {n: self.connected(n) for n in extension.used_connections(active)}
        bridges: dict[str, BridgeFacts] = {}
        notes = []
        for name in bridged:
            spec = extension.services[name]
            if spec.agent is None:
                continue
            found = connected[spec.connection]
            try:
                host = bridge_host(found.connection)
            except CLIError as e:
                raise ComposeError(str(e)) from None
            port = next((p for p, agent in found.bridges if agent == spec.agent), 0)
            if not port:
                notes.append(
                    f"service {name}: no bridge to {spec.agent} is open yet; its port shows as 0 "
                    "(telenet compose up opens it)"
                )
            bridges[name] = BridgeFacts(host, port, spec.agent)
        facts = Facts(
            project=project,
            connections={n: c.facts for n, c in connected.items()},
            bridges=bridges,
            networks=self.networks() if connected else {},
        )
        return facts, notes
