# -*- test-case-name: tests.test_cli_connect -*-
"""
``telenet quit``: a connection's engagement volumes, its daemon container and its network
removed, then the garbage collection of the networks whose daemon is gone.

Separate because ending a connection is its own sequence, with its own retries (volumes in use).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs

from telenet.cli.connection import CLIError, NotConnected
from telenet.cli.dockerapi import DockerError
from telenet.cli.interfaces import IDocker
from telenet.cli.lookup import ConnectionLookup
from telenet.cli.naming import container_name
from telenet.cli.networks import TelerouteNetworks


@attrs.define
class Teardown:
    """I end connections."""

    docker: IDocker
    lookup: ConnectionLookup
    networks: TelerouteNetworks
    say: Callable[[str], None] = print
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def quit(self, name: str | None) -> None:
        self.lookup.check_docker()
        try:
            conn = self.lookup.find(name)
        except NotConnected as e:
            self.say(str(e).split(":")[0].capitalize())
            self.networks.network_gc()
            return
        for volume in self.lookup.volumes(conn):
            self.remove_volume(volume)
        if conn.container is not None:
            self.say(f"Stopping the daemon container {container_name(conn.name)}")
            self.docker.stop_container(conn.container["Id"], 10)
            self.docker.remove_container(conn.container["Id"])
        if conn.network is not None:
            for container in conn.network.get("Containers") or {}:
                try:
                    self.docker.disconnect(conn.network["Id"], container)
                except DockerError:
                    pass
            try:
                self.docker.remove_network(conn.network["Id"])
            except DockerError as e:
                raise CLIError(f"could not remove network {conn.name}: {e}") from None
        removed = self.networks.network_gc()
        extra = f"; removed stale networks {', '.join(removed)}" if removed else ""
        self.say(f"Disconnected from {conn.name}{extra}")

    def remove_volume(self, name: str, timeout: float = 5.0) -> None:
        deadline = self.clock() + timeout
        while True:
            try:
                self.docker.remove_volume(name)
                return
            except DockerError as e:
                if "in use" not in str(e) or self.clock() >= deadline:
                    self.say(f"Warning: could not remove volume {name}: {e}")
                    return
            self.sleep(0.2)
