# -*- test-case-name: tests.test_cli_connect -*-
"""
The ``Connector``: what the commands call to make, find, describe and end connections
(``telenet connect --docker``, ``status``, ``quit``; docs/cli.md).

It is a front: the work is done by the collaborators it makes from its fields and owns,
one a concern (``lookup``, ``plugins``, ``daemon``, ``networks``, ``reporter``, ``teardown``);
``connect`` alone stays here, as it is the sequence that ties them together.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

import attrs

from telenet.cli.config import Config
from telenet.cli.connection import CLIError, Connection, ConnectRequest, check_namespace
from telenet.cli.daemoncontrol import ExecControl, HTTPControl
from telenet.cli.dockerapi import subnets_of
from telenet.cli.interfaces import IControl, IDocker
from telenet.cli.lookup import ConnectionLookup
from telenet.cli.naming import (
    LABEL_CONNECTION,
    LABEL_DAEMON,
    LABEL_NETWORK_PLUGIN,
    container_name,
    labels_of,
)
from telenet.core.gocompat import safe_name

if TYPE_CHECKING:
    from telenet.cli.daemoncontainer import DaemonContainer
    from telenet.cli.networks import TelerouteNetworks
    from telenet.cli.plugins import Plugins
    from telenet.cli.pluginsocket import PluginCall
    from telenet.cli.status import StatusReporter
    from telenet.cli.subnets import Taken
    from telenet.cli.teardown import Teardown


def _host_routes() -> list[Taken]:
    """The host's routes (``telenet.cli.subnets.host_routes``), imported when first asked."""
    from telenet.cli.subnets import host_routes

    return host_routes()


def _call_plugin(path: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    """``telenet.cli.pluginsocket.call_plugin`` (HTTP over a socket), imported when called."""
    from telenet.cli.pluginsocket import call_plugin

    return call_plugin(path, endpoint, body)


@attrs.define
class Connector:
    """
    I make, find, describe and end connections through an ``IDocker``.

    My collaborators are made from my fields: ``lookup``, which finds connections, when I am;
    the others when first used, so that docker-run and status, which need only ``lookup``
    (and ``reporter``), import none of the rest: ``plugins`` the Docker plug-ins, ``daemon``
    the daemon container, ``networks`` the teleroute networks and their GC, ``reporter`` the
    status and ``teardown`` quit.
    """

    docker: IDocker
    config: Config
    say: Callable[[str], None] = print
    control_factory: Callable[[str, int], IControl] = HTTPControl
    exec_control_factory: Callable[[IDocker, str, int], IControl] = ExecControl
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    ready_timeout: float = 30.0
    host_routes: Callable[[], list[Taken]] = _host_routes
    plugin_call: PluginCall = _call_plugin
    lookup: ConnectionLookup = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.lookup = ConnectionLookup(
            self.docker, self.config, self.control_factory, self.exec_control_factory
        )

    @cached_property
    def plugins(self) -> Plugins:
        from telenet.cli.plugins import Plugins

        return Plugins(self.docker, self.config, self.say, self.plugin_call)

    @cached_property
    def daemon(self) -> DaemonContainer:
        from telenet.cli.daemoncontainer import DaemonContainer

        return DaemonContainer(
            self.docker,
            self.config,
            self.lookup,
            self.say,
            self.sleep,
            self.clock,
            self.ready_timeout,
        )

    @cached_property
    def networks(self) -> TelerouteNetworks:
        from telenet.cli.networks import TelerouteNetworks

        return TelerouteNetworks(
            self.docker,
            self.config,
            self.say,
            self.sleep,
            self.clock,
            self.ready_timeout,
            self.host_routes,
        )

    @cached_property
    def reporter(self) -> StatusReporter:
        from telenet.cli.status import StatusReporter

        return StatusReporter(self.docker, self.config, self.lookup, self.plugins)

    @cached_property
    def teardown(self) -> Teardown:
        from telenet.cli.teardown import Teardown

        return Teardown(self.docker, self.lookup, self.networks, self.say, self.sleep, self.clock)

    # -- lookups

    def check_docker(self) -> None:
        self.lookup.check_docker()

    def connection_names(self) -> list[str]:
        return self.lookup.connection_names()

    def find(self, name: str | None) -> Connection:
        """The connection named ``name``, or the only one; NotConnected when there is none."""
        return self.lookup.find(name)

    def control(self, conn: Connection) -> IControl:
        return self.lookup.control(conn)

    def select(self, use: str) -> str:
        """The one connection whose name ``use`` matches (L{ConnectionLookup.select})."""
        return self.lookup.select(use)

    def volumes(self, conn: Connection) -> list[str]:
        """The names of the connection's engagement volumes."""
        return self.lookup.volumes(conn)

    # -- plug-ins

    def ensure_plugins(self, kinds: tuple[str, ...] | None = None) -> dict[str, str]:
        """The driver name of each plug-in kind (default: all), installed or made when missing."""
        if kinds is None:
            return self.plugins.ensure_plugins()
        return self.plugins.ensure_plugins(kinds)

    def plugin_status(self, driver: str | None, kind: str) -> dict[str, Any]:
        return self.plugins.plugin_status(driver, kind)

    # -- connect

    def connect(self, req: ConnectRequest) -> Connection:
        self.check_docker()
        if req.docker_subnet is None and self.config.docker_subnet:
            where = self.config.sources.get("docker.subnet", "config.yml")
            from telenet.cli.subnets import check_docker_subnet

            chosen = check_docker_subnet(self.config.docker_subnet, f"{where}: docker.subnet")
            req = attrs.evolve(req, docker_subnet=str(chosen))
        name = req.name
        if safe_name(name) != name:
            raise CLIError(
                f"--name {name!r}: use letters, digits and _.- only (e.g. {safe_name(name)})"
            )
        if req.vif and req.vif_network:
            raise CLIError("give --vif or --vif-network, not both")
        if req.namespace is not None:
            check_namespace(req.namespace, "--namespace")
        for namespace in req.mapped_namespaces:
            check_namespace(namespace, "--mapped-namespaces")
        self.networks.check_network_name(name)
        existing = self.docker.container(container_name(name))
        if existing is not None:
            if labels_of(existing).get(LABEL_CONNECTION) != name:
                raise CLIError(
                    f"a container named {container_name(name)} exists and is not "
                    "telenet's: remove or rename it"
                )
            conn = Connection(name, existing, self.docker.network(name))
            if conn.running:
                return self._reuse(conn, req)
            code = existing["State"].get("ExitCode")
            self.say(
                f"Removing the daemon container {container_name(name)}, which stopped "
                f"(exit code {code})"
            )
            self.docker.remove_container(existing["Id"])
        if req.vif_network is not None and self.docker.network(req.vif_network) is None:
            raise CLIError(f"--vif-network {req.vif_network}: no such Docker network")
        # What can be checked before anything is made; the daemon's routes once it answers.
        self.networks.check_chosen_subnet(req, {}, replacing=name)
        drivers = self.ensure_plugins()
        self.plugins.require_image(self.config.daemon_image)
        started = self.clock()
        container_id = self.daemon.start_daemon(req, drivers)
        try:
            conn = Connection(name, self.docker.container(container_id), None)
            status = self.daemon.wait_ready(conn)
            network = self.networks.ensure_network(conn, drivers["teleroute"], req, status)
            conn = Connection(name, self.docker.container(container_id), network)
        except BaseException:
            self.docker.remove_container(container_id)
            raise
        self.network_gc()
        subnet = ", ".join(subnets_of(network)) or "?"
        self.say(
            f"Connected to {name}: daemon {container_name(name)}, network {name} ({subnet}), "
            f"DNS {conn.dns_ip()} ({self.clock() - started:.1f} s)"
        )
        return conn

    def _reuse(self, conn: Connection, asked: ConnectRequest) -> Connection:
        self.say(f"Already connected to {conn.name} (daemon {container_name(conn.name)})")
        have = subnets_of(conn.network) if conn.network is not None else []
        if asked.docker_subnet is not None and have and asked.docker_subnet not in have:
            raise CLIError(
                f"{conn.name} is connected with network subnet {', '.join(have)}, not "
                f"{asked.docker_subnet}: telenet quit --name {conn.name} first to change it"
            )
        status = self.daemon.wait_ready(conn)
        driver = conn.label(LABEL_NETWORK_PLUGIN)
        network = conn.network
        daemon_id = conn.container_id
        if (
            network is None
            or labels_of(network).get(LABEL_DAEMON) != daemon_id
            or daemon_id not in (network.get("Containers") or {})
        ):
            if not driver:
                raise CLIError(
                    f"the daemon container {container_name(conn.name)} has no "
                    f"{LABEL_NETWORK_PLUGIN} label: telenet quit --name "
                    f"{conn.name}, then connect again"
                )
            self.ensure_plugins()
            req = ConnectRequest(conn.name, docker_subnet=asked.docker_subnet)
            network = self.networks.ensure_network(conn, driver, req, status)
        return Connection(conn.name, self.docker.container(conn.container_id or ""), network)

    # -- quit and garbage collection

    def network_gc(self) -> list[str]:
        """Remove every labelled teleroute network whose daemon is gone; their names."""
        return self.networks.network_gc()

    def quit(self, name: str | None) -> None:
        self.teardown.quit(name)

    # -- status

    def status(self, name: str | None) -> dict[str, Any]:
        """The status of the connection named ``name``, or of the only one."""
        return self.reporter.status(name)

    def statuses(self, name: str | None = None, use: str | None = None) -> list[dict[str, Any]]:
        """
        The status of the connection named ``name``, of the one ``use`` matches
        (L{select}), or, with neither, of every connection; NotConnected when there is none.
        """
        return self.reporter.statuses(name, use)
