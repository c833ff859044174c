# -*- test-case-name: tests.test_compose_up -*-
"""
The connection work of ``telenet compose`` (docs/compose.md, "Subcommands"): before Compose
runs ``up``, ``create``, ``start``, ``restart`` or ``run``, the connections the project uses
are connected (those that are not), a bridge is opened to each engaged service's agent and
probed; after, ``stop`` closes the bridges and ``down`` removes the telemount volumes, closes
the bridges and quits the connections telenet started.

Everything made is recorded first (``telenet.cli.compose.state``), so that a crash leaves a
record. An error before Compose starts undoes what this run made: nothing is left half-made.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from telenet.cli.compose.extension import Extension
from telenet.cli.compose.render import Rendered
from telenet.cli.compose.source import ComposeError
from telenet.cli.compose.state import Bridge, ProjectState, StateStore
from telenet.cli.connection import CLIError, NotConnected
from telenet.cli.dockerapi import DockerError
from telenet.cli.interfaces import IDocker
from telenet.cli.lookup import ConnectionLookup
from telenet.cli.naming import LABEL_CONNECTION
from telenet.cli.workload import (
    Probe,
    bridge_host,
    close_bridge,
    open_bridge,
    patient,
    volume_driver,
)

#: Compose's label on what it makes for a project.
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"


@attrs.define
class Session:
    """I connect, open and close bridges, and clean up, for one project's state."""

    docker: IDocker
    lookup: ConnectionLookup
    store: StateStore
    connector: Any = None
    say: Callable[[str], None] = print
    probe: Probe | None = None
    #: What the last ``prepare`` made: the connections it started, the bridges it opened.
    made: tuple[list[str], list[Bridge]] = attrs.field(factory=lambda: ([], []))

    def state(self, project: str) -> ProjectState:
        return self.store.read(project) or ProjectState(project)

    # -- before Compose

    def prepare(
        self,
        state: ProjectState,
        extension: Extension,
        active: Iterable[str],
        bridged: Iterable[str],
    ) -> dict[str, int]:
        """
        The connections of the ``active`` services up, and a bridge open for each of the
        ``bridged`` ones (those that get telemount volumes): their ports. On an error,
        what this call made is undone and ComposeError raised.
        """
        active = set(active)
        used = extension.used_connections(active)
        state.connections = sorted(set(state.connections) | set(used))
        started: list[str] = []
        opened: list[Bridge] = []
        self.made = (started, opened)
        try:
            if used:
                self.lookup.check_docker()
            for name in used:
                if self._connected(name):
                    continue
                if self.connector is None:
                    raise ComposeError(f"connection {name} is not connected")
                self.say(f"Connecting to {name} for project {state.project}")
                self.connector.connect(extension.connection(name).request())
                started.append(name)
                state.started = sorted(set(state.started) | {name})
                self.store.write(state)
            return self._bridges(state, extension, sorted(bridged), opened)
        except BaseException:
            self.undo(state)
            raise

    def _connected(self, name: str) -> bool:
        try:
            conn = self.lookup.find(name)
        except NotConnected:
            return False
        return conn.running and conn.network is not None

    def _bridges(
        self,
        state: ProjectState,
        extension: Extension,
        bridged: list[str],
        opened: list[Bridge],
    ) -> dict[str, int]:
        ports: dict[str, int] = {}
        for service in bridged:
            spec = extension.services[service]
            if spec.agent is None:
                continue
            conn = self.lookup.find(spec.connection)
            control = self.lookup.control(conn)
            open_now = {int(b["port"]) for b in control.status().get("bridges") or []}
            kept = next(
                (
                    b
                    for b in state.bridges
                    if (b.connection, b.agent) == (spec.connection, spec.agent)
                    and b.port in open_now
                ),
                None,
            )
            if kept is None:
                state.bridges = [
                    b
                    for b in state.bridges
                    if (b.connection, b.agent) != (spec.connection, spec.agent)
                ]
                kept = self._open(state, spec.connection, spec.agent, service, opened)
            users = tuple(sorted({*kept.services, service}))
            state.bridges = [
                attrs.evolve(b, services=users) if b is kept else b for b in state.bridges
            ]
            self.store.write(state)
            ports[service] = kept.port
        return ports

    def _open(
        self, state: ProjectState, connection: str, agent: str, service: str, opened: list[Bridge]
    ) -> Bridge:
        """
        A bridge to ``agent``, recorded as soon as the daemon gives its port (before the
        probe: a crash leaves it for a later ``down``); dropped again when the agent does not
        answer (``open_bridge`` closed it).
        """
        conn = self.lookup.find(connection)
        probe = self._probe()

        def record_then_probe(host: str, port: int, agent: str) -> None:
            made = Bridge(connection, agent, port)
            opened.append(made)
            state.bridges.append(made)
            self.store.write(state)
            probe(host, port, agent)

        before = len(opened)
        try:
            open_bridge(self.lookup.control(conn), agent, bridge_host(conn), record_then_probe)
        except BaseException as e:
            if len(opened) > before:
                gone = opened.pop()
                state.bridges.remove(gone)
                self.store.write(state)
            if isinstance(e, CLIError):
                raise ComposeError(f"service {service}: {e}; nothing was started") from None
            raise
        return opened[-1]

    def _probe(self) -> Probe:
        """The probe, waiting ``intercept.mountTimeout`` for an agent that is starting."""
        from telenet.cli.runner import probe_agent

        probe = self.probe if self.probe is not None else probe_agent
        sleep, clock = time.sleep, time.monotonic
        if self.connector is not None:
            sleep, clock = self.connector.sleep, self.connector.clock
        return patient(probe, self.lookup.config.mount_timeout, sleep, clock)

    def undo(self, state: ProjectState) -> None:
        """What the last ``prepare`` made, undone: its bridges closed, its connections quit."""
        started, opened = self.made
        self.made = ([], [])
        ports = {(b.connection, b.port) for b in opened}
        self._close(b for b in state.bridges if (b.connection, b.port) in ports)
        state.bridges = [b for b in state.bridges if (b.connection, b.port) not in ports]
        for name in started:
            self.connector.quit(name)
        state.started = [c for c in state.started if c not in started]
        if state.file is None and not state.bridges and not state.started:
            self.store.remove(state.project)  # never up: nothing to remember
        else:
            self.store.write(state)

    # -- after Compose

    def close_bridges(self, state: ProjectState, services: Iterable[str] = ()) -> None:
        """
        The project's bridges closed: all of them, or, with ``services``, those only these
        services use.
        """
        named = set(services)
        closing = [b for b in state.bridges if not named or set(b.services) <= named]
        self._close(closing)
        state.bridges = [b for b in state.bridges if b not in closing]
        self.store.write(state)

    def _close(self, bridges: Iterable[Bridge]) -> None:
        for bridge in bridges:
            try:
                control = self.lookup.control(self.lookup.find(bridge.connection))
            except CLIError:
                continue  # its daemon is gone, and the bridge with it
            self.say(f"Closing the bridge on port {bridge.port} to {bridge.agent}")
            close_bridge(control, bridge.port, self.say)

    def remove_volumes(self, state: ProjectState) -> list[str]:
        """The project's telemount volumes removed (never a volume of the user's): names."""
        drivers = {self.lookup.config.telemount.name}
        for name in state.connections:
            try:
                conn = self.lookup.find(name)
            except CLIError:
                continue
            drivers.add(volume_driver(conn, lambda: self.lookup.config.telemount.name))
        removed = []
        for driver in sorted(drivers):
            try:
                found = self.docker.volumes(driver, f"{COMPOSE_PROJECT_LABEL}={state.project}")
            except DockerError:
                continue
            for volume in found:
                if LABEL_CONNECTION not in (volume.get("Labels") or {}):
                    continue
                self.remove_volume(volume["Name"])
                removed.append(volume["Name"])
        return removed

    def stale_volumes(self, project: str, rendered: Rendered) -> tuple[list[str], list[str]]:
        """
        The project's telemount volumes in Docker whose bridge port is not the rendered one,
        and the services that mount them.
        """
        declared = rendered.document.get("volumes") or {}
        stale: list[str] = []
        keys: set[str] = set()
        for key in rendered.volumes:
            definition = declared[key]
            name = definition.get("name") or f"{project}_{key}"
            try:
                found = self.docker.volumes(
                    definition["driver"], f"{COMPOSE_PROJECT_LABEL}={project}"
                )
            except DockerError:
                continue
            port = definition["driver_opts"]["port"]
            for volume in found:
                if volume["Name"] == name and (volume.get("Options") or {}).get("port") != port:
                    stale.append(name)
                    keys.add(key)
        services = sorted(
            service
            for service, body in (rendered.document.get("services") or {}).items()
            if any(_source(entry) in keys for entry in (body or {}).get("volumes") or [])
        )
        return stale, services

    def remove_volume(self, name: str) -> None:
        if self.connector is not None:
            self.connector.teardown.remove_volume(name)
            return
        try:
            self.docker.remove_volume(name)
        except DockerError as e:
            self.say(f"Warning: could not remove volume {name}: {e}")

    def cleanup(self, state: ProjectState, quit_started: bool = True) -> None:
        """After Compose's ``down``: volumes, bridges, the connections telenet started."""
        self.remove_volumes(state)
        self.close_bridges(state)
        if quit_started and self.connector is not None:
            others = [s for s in self.store.projects() if s.project != state.project]
            for name in state.started:
                heir = next((s for s in others if name in s.connections), None)
                if heir is not None:
                    # Its down quits it, as it was started for a project.
                    heir.started = sorted({*heir.started, name})
                    self.store.write(heir)
                    self.say(f"Leaving {name} connected: project {heir.project} uses it")
                    continue
                try:
                    self.connector.quit(name)
                except CLIError as e:
                    self.say(f"Warning: could not quit {name}: {e}")
        self.store.remove(state.project)


def _source(entry: Any) -> str | None:
    """The volume a service's ``volumes`` entry mounts (long or short syntax)."""
    if isinstance(entry, dict):
        source = entry.get("source")
        return str(source) if source is not None else None
    return str(entry).split(":", 1)[0]
