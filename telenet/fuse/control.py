"""
The mount helper's control socket: newline-delimited JSON requests from the volume plug-in
(add, remove, status, shutdown; the schema is ``telenet.fuse.protocol``), one answer line per
request.

Separate from the filesystem: it decodes requests and calls ``SFTPOperations``'s volume
methods, and the filesystem knows nothing of it.
"""

from __future__ import annotations

import os
import posixpath
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
from telenet.fuse.owners import Ownership
from telenet.fuse.protocol import (
    AddVolume,
    Answer,
    Done,
    ProtocolError,
    Refused,
    RemoveVolume,
    Shutdown,
    Status,
    StatusReport,
    VolumeState,
    decode_request,
    encode,
    parse_line,
)

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
        """The JSON answer to one decoded JSON request."""
        return (await self.answer(request)).to_json()

    async def answer(self, data: object) -> Answer:
        """The answer to one decoded JSON request: invalid ones are ``Refused``, never raised."""
        try:
            request = decode_request(data)
        except ProtocolError as e:
            return Refused(str(e))
        match request:
            case AddVolume(name=name, path=path, ro=ro, uid=uid, gid=gid, umask=umask):
                owner = Ownership(uid=uid, gid=gid, umask=umask or 0)
                failed = await self.fs.add_volume(name, _normalise(path), ro, owner)
                return Refused(failed) if failed else Done()
            case RemoveVolume(name=name):
                self.fs.remove_volume(name)
                return Done()
            case Status():
                return StatusReport(
                    pid=os.getpid(),
                    host=self.host,
                    port=self.port,
                    mountpoint=self.mountpoint,
                    connected=self.source.connected,
                    volumes={
                        v.name: VolumeState(path=os.fsdecode(v.path), ro=v.ro)
                        for v in self.fs.volumes.values()
                    },
                    since=self.source.since,
                    read_bytes=self.fs.counters.read_bytes,
                    written_bytes=self.fs.counters.written_bytes,
                    io_errors=self.fs.counters.io_errors,
                )
            case Shutdown():
                self._on_shutdown()
                return Done()


def _normalise(path: str) -> str:
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
        reply: Answer
        try:
            request = parse_line(line)
        except ProtocolError as e:
            reply = Refused(str(e))
        else:
            try:
                reply = await self._control.answer(request)
            except Exception as e:
                log.failure("control request {request!r} failed", request=request)
                reply = Refused(f"internal error: {e}")
        if self.transport is not None:
            self.sendLine(encode(reply))

    def readConnectionLost(self) -> None:
        # The client sent its last request (e.g. ``echo ... | socat``): answer, then close.
        self._queue.addCallback(self._close)

    def _close(self, _: object = None) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def lineLengthExceeded(self, line: bytes) -> None:
        self.sendLine(encode(Refused("request line too long")))
        if self.transport is not None:
            self.transport.loseConnection()


class ControlFactory(Factory):
    noisy = False

    def __init__(self, control: MountControl) -> None:
        self.control = control

    def buildProtocol(self, addr: IAddress | None) -> TwistedProtocol:
        return ControlProtocol(self.control)
