# -*- test-case-name: tests.test_cli_connect -*-
"""
Finding connections: the names Docker's labels give, the one connection a ``--name`` or a
``--use`` expression picks, its engagement volumes, and its daemon's control API (on the
published port here, or through ``docker exec`` for an engine elsewhere).

Separate because connect, status, quit and the runner all start from a found connection.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import attrs

from telenet.cli.config import Config
from telenet.cli.connection import CLIError, Connection, NotConnected
from telenet.cli.daemoncontrol import ExecControl, HTTPControl
from telenet.cli.dockerapi import DockerError, DockerUnavailable, api_version_ok
from telenet.cli.interfaces import IControl, IDocker
from telenet.cli.naming import (
    LABEL_CONNECTION,
    LABEL_DAEMON,
    LABEL_ROLE,
    LABEL_VOLUME_PLUGIN,
    container_name,
    labels_of,
)


@attrs.define
class ConnectionLookup:
    """I find connections through Docker's labels, and reach their daemons' control API."""

    docker: IDocker
    config: Config
    control_factory: Callable[[str, int], IControl] = HTTPControl
    exec_control_factory: Callable[[IDocker, str, int], IControl] = ExecControl

    def check_docker(self) -> None:
        try:
            version = self.docker.api_version()
        except DockerUnavailable as e:
            raise CLIError(f"{e}; is dockerd running?") from None
        if not api_version_ok(version):
            raise CLIError(
                f"Docker API {version} is too old: telenet needs Docker 20.10 (API 1.41) or newer"
            )

    def connection_names(self) -> list[str]:
        names = {
            labels_of(c).get(LABEL_CONNECTION, "")
            for c in self.docker.containers(f"{LABEL_ROLE}=daemon")
        }
        for net in self.docker.networks():
            labels = labels_of(net)
            if labels.get(LABEL_CONNECTION) and LABEL_DAEMON in labels:
                names.add(labels[LABEL_CONNECTION])
        return sorted(n for n in names if n)

    def find(self, name: str | None) -> Connection:
        """The connection named ``name``, or the only one; NotConnected when there is none."""
        if name is None:
            names = self.connection_names()
            if not names:
                raise NotConnected("not connected: run telenet connect --docker first")
            if len(names) > 1:
                raise CLIError(f"several connections ({', '.join(names)}): pick one with --name")
            name = names[0]
        container = self.docker.container(container_name(name))
        if container is not None and labels_of(container).get(LABEL_CONNECTION) != name:
            container = None
        network = self.docker.network(name)
        if network is not None and LABEL_DAEMON not in labels_of(network):
            network = None
        if container is None and network is None:
            raise NotConnected(
                f"not connected to {name}: run telenet connect --docker --name {name}"
            )
        return Connection(name, container, network)

    def control(self, conn: Connection) -> IControl:
        control = self.control_of(conn) if conn.running else None
        if control is None:
            raise CLIError(
                f"the daemon of {conn.name} is not running: run telenet connect "
                f"--docker --name {conn.name} again"
            )
        return control

    def control_of(self, conn: Connection) -> IControl | None:
        """
        The daemon's control API: at its published port on this machine's loopback, or,
        for an engine elsewhere, through docker exec; None while the port is not published.
        """
        if not self.docker.engine_is_here():
            if conn.container_id is None:
                return None
            return self.exec_control_factory(
                self.docker, conn.container_id, self.config.daemon_port
            )
        address = conn.control_address(self.config.daemon_port)
        return self.control_factory(*address) if address is not None else None

    def select(self, use: str) -> str:
        """
        The one connection whose name ``use`` (a regular expression) matches anywhere, like
        Telepresence's ``--use``: NotConnected when none does, CLIError when several do.
        """
        try:
            pattern = re.compile(use)
        except re.error as e:
            raise CLIError(f"--use {use!r} is not a regular expression: {e}") from None
        names = self.connection_names()
        matches = [n for n in names if pattern.search(n)]
        if not matches:
            known = f"connections: {', '.join(names)}" if names else "there is no connection"
            raise NotConnected(f"no connection matches --use {use!r}: {known}")
        if len(matches) > 1:
            raise CLIError(
                f"--use {use!r} matches several connections ({', '.join(matches)}): "
                "give an expression that matches one"
            )
        return matches[0]

    def volumes(self, conn: Connection) -> list[str]:
        """The names of the connection's engagement volumes."""
        driver = conn.label(LABEL_VOLUME_PLUGIN)
        if not driver:
            return []
        try:
            found = self.docker.volumes(driver, f"{LABEL_CONNECTION}={conn.name}")
        except DockerError:
            # A plug-in that is gone has no volumes to remove either.
            return []
        return sorted(v["Name"] for v in found)
