# -*- test-case-name: tests.test_compose_extension -*-
"""
The ``x-telenet`` extension of a compose project, as values (docs/compose.md, "The extension").

At the top level: the ``connections`` the services use (each what ``telenet connect --docker``
takes) and the ``mounts`` policies of compose volumes. On a service: its ``type`` (``connect``:
the connection's network and DNS; ``engage``: that, plus the agent's directories mounted as
``telenet engage`` mounts them), its connection(s), and for ``engage`` the agent, the engaged
container and the remote mounts.

Telepresence's ``x-tele`` is read into the same values where the meaning is the same
(``telenet.cli.compose.extparse``). Every value remembers where it was written (``Where``),
so that a later check can name the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import attrs

from telenet.cli.compose.source import Where
from telenet.cli.connection import ConnectRequest
from telenet.cli.runflags import RemoteMount

CONNECT = "connect"
ENGAGE = "engage"
TYPES = (CONNECT, ENGAGE)

#: Telepresence's service types that need its traffic manager, which telenet does not have.
TRAFFIC_MANAGER_TYPES = ("intercept", "ingest", "replace", "wiretap", "proxy")

LOCAL = "local"
REMOTE = "remote"
REMOTE_READ_ONLY = "remoteReadOnly"
POLICIES = (LOCAL, REMOTE, REMOTE_READ_ONLY)

#: The top-level keys of the extension: telenet's own, and Telepresence's.
TELENET_KEY = "x-telenet"
TELEPRESENCE_KEY = "x-tele"


@attrs.frozen
class ConnectionSpec(ConnectRequest):
    """A connection the project uses: ``telenet connect --docker`` with these options."""

    where: Where | None = attrs.field(default=None, eq=False, kw_only=True)

    def request(self) -> ConnectRequest:
        """What ``telenet connect --docker`` is asked when the connection is not up."""
        return ConnectRequest(
            **{f.name: getattr(self, f.name) for f in attrs.fields(ConnectRequest)}
        )


@attrs.frozen
class MountPolicy:
    """How a compose volume (by name, or the names a pattern matches) is treated when engaged."""

    policy: str
    volume: str | None = None
    pattern: str | None = None
    where: Where | None = attrs.field(default=None, eq=False)

    def matches(self, volume: str) -> bool:
        """The exact name, or a name the pattern matches anywhere (as Go's ``MatchString``)."""
        if self.volume is not None:
            return volume == self.volume
        return self.pattern is not None and re.search(self.pattern, volume) is not None


@attrs.frozen
class ServiceSpec:
    """What a service's ``x-telenet`` says, with its defaults filled in."""

    service: str
    type: str
    connections: tuple[str, ...]
    agent: str | None = None
    container: str = ""
    remote_mounts: tuple[RemoteMount, ...] = ()
    #: ``KEY=VALUE`` options (``uid``, ``gid``, ``umask``) of its telemount volumes, checked.
    mount_options: tuple[str, ...] = ()
    where: Where | None = attrs.field(default=None, eq=False)
    connection_where: Where | None = attrs.field(default=None, eq=False)
    mount_wheres: tuple[Where | None, ...] = attrs.field(default=(), eq=False)

    @property
    def engaged(self) -> bool:
        return self.type == ENGAGE

    @property
    def connection(self) -> str:
        """The first connection: its daemon comes first for DNS and opens the bridge."""
        return self.connections[0]


@attrs.frozen
class Extension:
    """The project's extension: its connections, mount policies and services."""

    connections: tuple[ConnectionSpec, ...] = ()
    mounts: tuple[MountPolicy, ...] = ()
    services: Mapping[str, ServiceSpec] = attrs.field(factory=dict)
    key: str = TELENET_KEY

    def connection(self, name: str) -> ConnectionSpec:
        return next(c for c in self.connections if c.name == name)

    def policy(self, volume: str) -> MountPolicy | None:
        """
        The policy of a compose volume: the last entry naming it exactly, else the last
        pattern matching it, else None (the default: remote).
        """
        exact = [m for m in self.mounts if m.volume is not None and m.matches(volume)]
        if exact:
            return exact[-1]
        patterns = [m for m in self.mounts if m.pattern is not None and m.matches(volume)]
        return patterns[-1] if patterns else None

    def used_connections(self, services: set[str] | None = None) -> list[str]:
        """The connections the given services (default: all) use, in declaration order."""
        used = {
            name
            for spec in self.services.values()
            if services is None or spec.service in services
            for name in spec.connections
        }
        return [c.name for c in self.connections if c.name in used]
