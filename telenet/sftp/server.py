# -*- test-case-name: tests.test_agent -*-
"""
The raw SFTP v3 server protocol (no SSH layer): Conch's ``FileTransferServer`` hardened for
untrusted clients over plain TCP, serving a ``RootedFilesystem``.

Wire details worth knowing:

- ``SSH_FXP_SYMLINK`` takes its arguments in OpenSSH's order (target first, then the link
  path), like OpenSSH's sftp-server, sshfs and Go's pkg/sftp. With Conch's client, that means
  ``client.makeLink(target, linkpath)``.
- OpenSSH extensions: ``posix-rename@openssh.com``, ``statvfs@openssh.com``,
  ``hardlink@openssh.com``, ``lsetstat@openssh.com`` and ``fsync@openssh.com``, announced in
  the VERSION packet.
- Reads and writes run in a thread pool owned by the service, and are ordered per handle
  (overlapping requests run in arrival order; disjoint reads run in parallel).

The ``sftp-agent`` app (``telenet.agent``) serves ``AgentFactory`` on a port.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from typing import Any, cast

from twisted.conch.ssh.filetransfer import (
    FX_BAD_MESSAGE,
    FX_EOF,
    FX_FAILURE,
    FX_NO_SUCH_FILE,
    FX_OK,
    FX_OP_UNSUPPORTED,
    FX_PERMISSION_DENIED,
    FXP_DATA,
    FXP_INIT,
    FileTransferServer,
    SFTPError,
)
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IPushProducer, ITCPTransport
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python import failure
from zope.interface import implementer

from telenet.sftp.ordering import BARRIER, EOF_OFFSET, READ, WRITE, HandleQueue, whole_file
from telenet.sftp.requests import BadMessage, expect_end, get_string
from telenet.sftp.rooted import MAX_READ_LENGTH, RootedFile, RootedFilesystem
from telenet.sftp.runners import BlockingCallRunner, run_inline

__all__ = ["MAX_INFLIGHT", "MAX_PACKET_LENGTH", "AgentFactory", "AgentProtocol"]

# The namespace the agent's lines always had (twistd prints it in every line).
log = Logger(namespace="telenet.agent")

MAX_PACKET_LENGTH = MAX_READ_LENGTH + 64 * 1024
"""A client packet longer than this ends the connection (we would have to buffer it)."""

MAX_INFLIGHT = 64
"""Requests of one connection in the thread pool at once before we stop reading from it."""


def _describe(addr: IAddress | None) -> str:
    host, port = getattr(addr, "host", None), getattr(addr, "port", None)
    return f"{host}:{port}" if host is not None else str(addr)


# Extensions whose reply is a plain FX_OK status rather than SSH_FXP_EXTENDED_REPLY.
_STATUS_EXTENSIONS = {
    b"posix-rename@openssh.com",
    b"hardlink@openssh.com",
    b"lsetstat@openssh.com",
}


def _status_for(err: BaseException, default: bytes) -> tuple[int, bytes, bool]:
    """Map an exception to (SFTP status, message, whether it deserves a traceback)."""
    if isinstance(err, OSError) and err.errno is not None:
        message = os.strerror(err.errno).encode()
        # The mapping OpenSSH's sftp-server uses, so clients like sshfs see familiar codes.
        if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
            return FX_NO_SUCH_FILE, message, False
        if err.errno in (errno.EPERM, errno.EACCES, errno.EFAULT):
            return FX_PERMISSION_DENIED, message, False
        if err.errno in (errno.ENAMETOOLONG, errno.EINVAL):
            return FX_BAD_MESSAGE, message, False
        if err.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            return FX_OP_UNSUPPORTED, message, False
        return FX_FAILURE, message, False
    if isinstance(err, EOFError):
        return FX_EOF, b"end of file", False
    if isinstance(err, NotImplementedError):
        return FX_OP_UNSUPPORTED, (str(err) or "operation unsupported").encode(), False
    if isinstance(err, SFTPError):
        return err.code, str(err.message).encode(), False
    if isinstance(err, KeyError):
        return FX_FAILURE, b"invalid handle", False
    if isinstance(err, (ValueError, struct.error)):
        return FX_BAD_MESSAGE, b"malformed request", False
    return FX_FAILURE, default, True


@implementer(IPushProducer)
class AgentProtocol(FileTransferServer):
    """
    Conch's SFTP server protocol, hardened for untrusted clients over plain TCP.

    On top of Conch it adds strict framing (a malformed request gets FX_BAD_MESSAGE, an
    oversized or unparseable frame drops only this connection), reads and writes in a thread
    pool ordered per handle, and flow control: the protocol is a streaming producer on its
    own transport, and stops reading requests while the transport's send buffer is full or
    too many requests are in flight.
    """

    _log = log
    # typing note: a TCP transport, which is also a consumer and a producer.
    transport: Any

    def __init__(
        self,
        filesystem: RootedFilesystem,
        run_io: BlockingCallRunner = run_inline,
        max_inflight: int = MAX_INFLIGHT,
    ) -> None:
        super().__init__(avatar=filesystem)
        self.filesystem = filesystem
        self._run_io = run_io
        self._max_inflight = max_inflight
        self._inbuf = bytearray()
        self._inflight = 0
        self._queues: dict[bytes, HandleQueue] = {}
        self._transport_full = False
        self._reading_paused = False
        self._pumping = False
        self._gone = False
        self._peer = "?"

    # -- connection and flow control ------------------------------------------------------

    def connectionMade(self) -> None:
        self._peer = _describe(self.transport.getPeer())
        if ITCPTransport.providedBy(self.transport):
            # Replies are often small; don't let Nagle hold them for a delayed ACK.
            self.transport.setTcpNoDelay(True)
        self.transport.registerProducer(self, True)
        log.info("SFTP connection opened from {peer}", peer=self._peer)

    def connectionLost(self, reason: failure.Failure = connectionDone) -> None:
        self._gone = True
        self.connected = False
        log.info(
            "SFTP connection from {peer} closed: {reason}",
            peer=self._peer,
            reason=reason.getErrorMessage(),
        )
        # Close files only after their queued I/O finished: a pool thread may be using the fd.
        for handle, fileObj in list(self.openFiles.items()):
            self._close_file(handle, fileObj).addErrback(
                lambda f: log.failure("closing a file after disconnect", f)
            )
        self.openFiles = {}
        for dirObj, _ in self.openDirs.values():
            dirObj.close()
        self.openDirs = {}

    def pauseProducing(self) -> None:
        self._transport_full = True
        self._update_reading()

    def resumeProducing(self) -> None:
        self._transport_full = False
        self._pump()

    def stopProducing(self) -> None:
        self._gone = True

    def _blocked(self) -> bool:
        return self._gone or self._transport_full or self._inflight >= self._max_inflight

    def _update_reading(self) -> None:
        if self._gone:
            return
        blocked = self._blocked()
        if blocked and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()
        elif not blocked and self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()

    def _drop(self, why: str) -> None:
        log.warn("Dropping SFTP connection from {peer}: {why}", peer=self._peer, why=why)
        self._gone = True
        self._inbuf.clear()
        # A registered, paused producer would keep loseConnection waiting forever.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    # -- framing and dispatch -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._gone:
            return
        self._inbuf += data
        self._pump()

    def _pump(self) -> None:
        """Dispatch complete packets from the input buffer while we are not blocked."""
        if self._pumping:
            return  # a re-entrant call; the outer loop re-checks _blocked()
        self._pumping = True
        buf = self._inbuf
        pos = 0
        try:
            while not self._blocked() and len(buf) - pos >= 4:
                (length,) = struct.unpack_from("!L", buf, pos)
                if length > MAX_PACKET_LENGTH:
                    self._drop(f"packet of {length} bytes")
                    return
                if len(buf) - pos - 4 < length:
                    break
                packet = bytes(buf[pos + 4 : pos + 4 + length])
                pos += 4 + length
                self._dispatch(packet)
        finally:
            self._pumping = False
            del buf[:pos]
        self._update_reading()

    def _dispatch(self, packet: bytes) -> None:
        if not packet:
            self._drop("empty packet")
            return
        kind, data = packet[0], packet[1:]
        if kind == FXP_INIT:
            try:
                self.packet_INIT(data)
            except Exception:
                self._drop("malformed INIT")
            return
        if len(data) < 4:
            self._drop(f"packet of type {kind} without a request id")
            return
        requestId = data[:4]
        name = self.packetTypes.get(kind)
        handler = getattr(self, f"packet_{name}", None) if name else None
        if handler is None:
            self._sendStatus(requestId, FX_OP_UNSUPPORTED, b"unsupported request type")
            return
        try:
            handler(data)
        except Exception as e:
            log.debug("Malformed {name} request: {error!r}", name=name, error=e)
            self._sendStatus(requestId, FX_BAD_MESSAGE, b"malformed request")

    def _ebStatus(
        self, reason: failure.Failure, requestId: bytes, msg: bytes = b"request failed"
    ) -> None:
        code, message, unexpected = _status_for(reason.value, msg)
        if unexpected:
            log.failure("SFTP request failed: {msg}", reason, msg=msg)
        self._sendStatus(requestId, code, message)

    # -- handle operations (ordered, off the reactor thread) ------------------------------

    def _track(self, d: Deferred[Any]) -> None:
        self._inflight += 1

        def done(_: object) -> None:
            self._inflight -= 1
            if not self._gone:
                self._pump()

        d.addBoth(done)

    def _queue(self, handle: bytes) -> HandleQueue:
        queue = self._queues.get(handle)
        if queue is None:
            queue = self._queues[handle] = HandleQueue()
        return queue

    def _file(self, handle: bytes) -> RootedFile:
        fileObj = self.openFiles.get(handle)
        if fileObj is None:
            raise KeyError(handle)
        return cast(RootedFile, fileObj)

    def _close_file(self, handle: bytes, fileObj: RootedFile) -> Deferred[None]:
        queue = self._queue(handle)

        def closed(result: object) -> object:
            if not len(queue):
                self._queues.pop(handle, None)
            return result

        d = queue.submit(BARRIER, 0, EOF_OFFSET, lambda: defer.maybeDeferred(fileObj.close))
        return d.addBoth(closed)

    def _send_status_ok(self, _: object, requestId: bytes, msg: bytes) -> None:
        self._sendStatus(requestId, FX_OK, msg)

    def _on_file(
        self,
        requestId: bytes,
        handle: bytes,
        what: bytes,
        kind: int,
        span: Callable[[RootedFile], tuple[int, int]],
        operation: Callable[[RootedFile], Deferred[Any]],
        reply: Callable[[Any, bytes], None] | None = None,
    ) -> None:
        """
        Queue ``operation`` on the handle's ordered queue over ``span`` of the file, then
        answer with ``reply`` (FX_OK when None) or the failure; an unknown handle is answered
        at once.
        """
        try:
            fileObj = self._file(handle)
        except KeyError as e:
            self._ebStatus(failure.Failure(e), requestId)
            return
        start, end = span(fileObj)
        d = self._queue(handle).submit(kind, start, end, lambda: operation(fileObj))
        if reply is None:
            d.addCallback(self._send_status_ok, requestId, what + b" succeeded")
        else:
            d.addCallback(reply, requestId)
        d.addErrback(self._ebStatus, requestId, what + b" failed")
        self._track(d)

    def packet_READ(self, data: bytes) -> None:
        requestId = data[:4]
        handle, pos = get_string(data, 4)
        if len(data) != pos + 12:
            raise BadMessage("bad READ")
        offset, length = struct.unpack_from("!QL", data, pos)
        length = min(length, MAX_READ_LENGTH)
        self._on_file(
            requestId,
            handle,
            b"read",
            READ,
            lambda f: (offset, offset + length),
            lambda f: self._run_io(lambda: f.readChunk(offset, length)),
            self._cbRead,
        )

    def _cbRead(self, result: bytes, requestId: bytes) -> None:
        if not result:
            raise EOFError()
        # Two writes instead of concatenating: the payload may be a MiB.
        header = struct.pack("!LB", 9 + len(result), FXP_DATA) + requestId
        self.transport.writeSequence([header + struct.pack("!L", len(result)), result])

    def packet_WRITE(self, data: bytes) -> None:
        requestId = data[:4]
        handle, pos = get_string(data, 4)
        if len(data) < pos + 8:
            raise BadMessage("bad WRITE")
        (offset,) = struct.unpack_from("!Q", data, pos)
        chunk, pos = get_string(data, pos + 8)
        expect_end(data, pos)
        self._on_file(
            requestId,
            handle,
            b"write",
            WRITE,
            lambda f: (0, EOF_OFFSET) if f.append else (offset, offset + len(chunk)),
            lambda f: self._run_io(lambda: f.writeChunk(offset, chunk)),
        )

    def packet_FSTAT(self, data: bytes) -> None:
        requestId = data[:4]
        handle, pos = get_string(data, 4)
        expect_end(data, pos)
        self._on_file(
            requestId,
            handle,
            b"fstat",
            READ,
            whole_file,
            lambda f: defer.maybeDeferred(f.getAttrs),
            self._cbStat,
        )

    def packet_FSETSTAT(self, data: bytes) -> None:
        requestId = data[:4]
        handle, pos = get_string(data, 4)
        attrs, rest = self._parseAttributes(data[pos:])
        if rest:
            raise BadMessage("trailing bytes in FSETSTAT")
        self._on_file(
            requestId,
            handle,
            b"fsetstat",
            BARRIER,
            whole_file,
            lambda f: self._run_io(lambda: f.setAttrs(attrs)),
        )

    def packet_CLOSE(self, data: bytes) -> None:
        requestId = data[:4]
        handle, pos = get_string(data, 4)
        expect_end(data, pos)
        if handle in self.openDirs:
            dirObj, _ = self.openDirs.pop(handle)
            dirObj.close()
            self._sendStatus(requestId, FX_OK, b"directory closed")
            return
        fileObj = self.openFiles.pop(handle, None)
        if fileObj is None:
            self._ebStatus(failure.Failure(KeyError(handle)), requestId)
            return
        # The handle is gone for new requests now; the fd closes after the queued ones.
        d = self._close_file(handle, fileObj)
        d.addCallback(self._send_status_ok, requestId, b"file closed")
        d.addErrback(self._ebStatus, requestId, b"close failed")
        self._track(d)

    def packet_EXTENDED(self, data: bytes) -> None:
        requestId = data[:4]
        extName, pos = get_string(data, 4)
        extData = data[pos:]
        if extName == b"fsync@openssh.com":
            handle, end = get_string(extData, 0)
            expect_end(extData, end)
            self._on_file(
                requestId,
                handle,
                b"fsync",
                BARRIER,
                whole_file,
                lambda f: self._run_io(f.fsync),
            )
            return
        d = defer.maybeDeferred(self.filesystem.extendedRequest, extName, extData)
        if extName in _STATUS_EXTENSIONS:
            d.addCallback(self._send_status_ok, requestId, extName + b" succeeded")
        else:
            d.addCallback(self._cbExtended, requestId)
        d.addErrback(self._ebStatus, requestId, b"extended " + extName + b" failed")
        self._track(d)

    def packet_SYMLINK(self, data: bytes) -> None:
        # OpenSSH's argument order (target, then link path), which every client expects.
        requestId = data[:4]
        targetPath, pos = get_string(data, 4)
        linkPath, pos = get_string(data, pos)
        expect_end(data, pos)
        d = defer.maybeDeferred(self.filesystem.makeLink, linkPath, targetPath)
        d.addCallback(self._send_status_ok, requestId, b"symlink succeeded")
        d.addErrback(self._ebStatus, requestId, b"symlink failed")


class AgentFactory(Factory):
    """Serves the export at C{root} to every connection; C{run_io} runs file I/O."""

    def __init__(self, root: str | bytes, run_io: BlockingCallRunner = run_inline) -> None:
        self.root = root
        self.run_io = run_io

    def buildProtocol(self, addr: IAddress | None) -> AgentProtocol:
        proto = AgentProtocol(RootedFilesystem(self.root), self.run_io)
        proto.factory = self
        return proto
