"""
The mount helper's control socket: newline-delimited JSON requests from the volume plug-in
(add, remove, status, shutdown; see ``telenet.fuse.helper``), one answer line per request.

Separate from the filesystem: it validates requests and calls ``SFTPOperations``'s volume
methods, and the filesystem knows nothing of it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer

from telenet.fuse.nodes import ConnectionSource
from telenet.fuse.operations import SFTPOperations

__all__ = ["ControlFactory", "ControlProtocol", "MountControl"]

#: The helper process's one log namespace (its events read the same from every module).
log = Logger(namespace="telenet.fuse.helper")


class MountControl:
    """I answer the plug-in's control requests for one mount helper."""

    def __init__(
        self,
        fs: SFTPOperations,
        source: ConnectionSource,
        host: str,
        port: int,
        mountpoint: str,
        on_shutdown: Callable[[], None],
    ) -> None:
        self.fs = fs
        self.source = source
        self.host = host
        self.port = port
        self.mountpoint = mountpoint
        self._on_shutdown = on_shutdown

    async def handle(self, request: object) -> dict[str, Any]:
        if not isinstance(request, dict):
            return _error("a request must be a JSON object")
        op = request.get("op")
        if op == "add":
            name, path, ro = request.get("name"), request.get("path"), request.get("ro", False)
            problem = _check_name(name) or _check_path(path)
            if problem:
                return _error(problem)
            if not isinstance(ro, bool):
                return _error('"ro" must be a boolean')
            assert isinstance(name, str) and isinstance(path, str)
            failed = await self.fs.add_volume(name, _normalise(path), ro)
            return _error(failed) if failed else {"ok": True}
        if op == "remove":
            name = request.get("name")
            if not isinstance(name, str):
                return _error('"name" must be a string')
            self.fs.remove_volume(name)
            return {"ok": True}
        if op == "status":
            return {
                "ok": True,
                "pid": os.getpid(),
                "host": self.host,
                "port": self.port,
                "mountpoint": self.mountpoint,
                "connected": self.source.connected,
                "volumes": {
                    v.name: {"path": os.fsdecode(v.path), "ro": v.ro}
                    for v in self.fs.volumes.values()
                },
                "since": self.source.since,
            }
        if op == "shutdown":
            self._on_shutdown()
            return {"ok": True}
        return _error(f"unknown op {op!r}")


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _check_name(name: object) -> str | None:
    if not isinstance(name, str) or not name:
        return '"name" must be a non-empty string'
    if "/" in name or "\0" in name or name in (".", "..") or len(name.encode()) > 255:
        return f"invalid volume name {name!r}"
    return None


def _check_path(path: object) -> str | None:
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        return '"path" must be an absolute path'
    return None


def _normalise(path: str) -> str:
    import posixpath

    normal = posixpath.normpath(path)
    return "/" if normal.startswith("//") and normal.strip("/") == "" else normal


@implementer(IHalfCloseableProtocol)
class ControlProtocol(LineOnlyReceiver):
    """One control connection: a JSON request per line, a JSON answer per line, in order."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 16

    def __init__(self, control: MountControl) -> None:
        self._control = control
        self._queue: Deferred[Any] = defer.succeed(None)

    def lineReceived(self, line: bytes) -> None:
        self._queue.addCallback(lambda _: Deferred.fromCoroutine(self._answer(line)))

    async def _answer(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            request = json.loads(line)
        except ValueError as e:
            reply = _error(f"malformed JSON: {e}")
        else:
            try:
                reply = await self._control.handle(request)
            except Exception as e:
                log.failure("control request {request!r} failed", request=request)
                reply = _error(f"internal error: {e}")
        if self.transport is not None:
            self.sendLine(json.dumps(reply).encode())

    def readConnectionLost(self) -> None:
        # The client sent its last request (e.g. ``echo ... | socat``): answer, then close.
        self._queue.addCallback(self._close)

    def _close(self, _: object = None) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def lineLengthExceeded(self, line: bytes) -> None:
        self.sendLine(json.dumps(_error("request line too long")).encode())
        if self.transport is not None:
            self.transport.loseConnection()


class ControlFactory(Factory):
    noisy = False

    def __init__(self, control: MountControl) -> None:
        self.control = control

    def buildProtocol(self, addr: IAddress | None) -> TwistedProtocol:
        return ControlProtocol(self.control)
