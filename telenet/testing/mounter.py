"""A mounter that mounts nothing but keeps the books (the volume plug-in's fake)."""

from __future__ import annotations

import posixpath
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from telenet.core.dockerplugin import PluginError
from telenet.core.interfaces import IMounter, VolumeSpec


@implementer(IMounter)
class MemoryMounter:
    """
    An ``IMounter`` that mounts nothing but keeps the books a real one would.

    ``servers`` maps ``(host, port)`` to ``{volume: (remote dir, ro)}`` for mounted servers.
    ``remote_dirs`` lists the directories the fake SFTP servers have; ``unreachable`` the
    servers that refuse connections.
    """

    def __init__(self, mount_root: str = "/mnt/volumes") -> None:
        self.mount_root = mount_root
        self.servers: dict[tuple[str, int], dict[str, tuple[str, bool]]] = {}
        self.remote_dirs: set[str] | None = None
        self.unreachable: set[tuple[str, int]] = set()
        self.calls: list[tuple[str, ...]] = []
        #: Every volume attach was asked for, as given.
        self.attached: list[VolumeSpec] = []
        self.since: dict[tuple[str, int], float] = {}

    def mountpoint(self, host: str, port: int, name: str) -> str:
        return posixpath.join(self.mount_root, host, str(port), name)

    def attach(self, volume: VolumeSpec) -> defer.Deferred[str]:
        host, port, name, remote_dir = volume.host, volume.port, volume.name, volume.remote_dir
        self.calls.append(("attach", host, str(port), name))
        self.attached.append(volume)
        if (host, port) in self.unreachable:
            return defer.fail(PluginError(f"cannot reach SFTP server at {host}:{port}"))
        if self.remote_dirs is not None and remote_dir not in self.remote_dirs:
            return defer.fail(
                PluginError(f"remote directory {remote_dir} does not exist on {host}:{port}")
            )
        self.servers.setdefault((host, port), {})[name] = (remote_dir, volume.ro)
        return defer.succeed(self.mountpoint(host, port, name))

    def detach(self, host: str, port: int, name: str) -> defer.Deferred[None]:
        self.calls.append(("detach", host, str(port), name))
        volumes = self.servers.get((host, port), {})
        volumes.pop(name, None)
        if not volumes:
            self.servers.pop((host, port), None)
        return defer.succeed(None)

    def status(self, host: str, port: int) -> defer.Deferred[dict[str, Any]]:
        volumes = self.servers.get((host, port))
        if volumes is None:
            return defer.succeed({"mounted": False, "connected": False})
        return defer.succeed(
            {
                "mounted": True,
                "connected": (host, port) not in self.unreachable,
                "since": self.since.get((host, port), 0.0),
                "volumes": {n: {"path": p, "ro": ro} for n, (p, ro) in volumes.items()},
            }
        )

    def release(self, host: str, port: int) -> defer.Deferred[None]:
        self.calls.append(("release", host, str(port)))
        self.servers.pop((host, port), None)
        return defer.succeed(None)

    def reachable(self, host: str, port: int, timeout: float) -> defer.Deferred[bool]:
        return defer.succeed((host, port) not in self.unreachable)

    def adopt(self, expected: Any) -> defer.Deferred[None]:
        self.calls.append(("adopt",))
        for key in list(self.servers):
            wanted = expected.get(key, {})
            self.servers[key] = {n: v for n, v in self.servers[key].items() if n in wanted}
            if not self.servers[key]:
                del self.servers[key]
        return defer.succeed(None)

    def shutdown(self) -> defer.Deferred[None]:
        self.calls.append(("shutdown",))
        self.servers.clear()
        return defer.succeed(None)


# -- netlink (teleroute daemon) ------------------------------------------------------------
