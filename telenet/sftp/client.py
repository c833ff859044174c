# -*- test-case-name: tests.test_sftpclient -*-
"""
SFTP version 3 over a plain TCP stream (no SSH layer), for the telemount FUSE filesystem.

``SFTPClient`` is a Conch ``FileTransferClient`` (its ``connectionMade`` sends FXP_INIT) with
its own packet parser and request table, because the FS needs things Conch's client lacks:
typed results, a deadline on every request, a keepalive, and an abort that fails every pending
request at once. ``ReadAhead`` and ``PipelinedWriter`` keep many READ/WRITE requests in flight
for one open file. ``SFTPConnectionManager`` reconnects by itself and answers "not connected"
at once instead of making callers wait.

Paths are ``bytes`` throughout (SFTP paths are byte strings; the FS gets bytes from the kernel).
"""

from __future__ import annotations

import errno
import os
import random
import re
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from twisted.conch.ssh import filetransfer as ft
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from telenet.core.internals import lean_reads, nothing_queued

__all__ = [
    "ConnectionDead",
    "FileAttrs",
    "NameEntry",
    "NotConnected",
    "PipelinedWriter",
    "ReadAhead",
    "SFTPClient",
    "SFTPConnectionManager",
    "SFTPProtocolError",
    "SFTPStatusError",
    "StatVFS",
    "error_to_errno",
]

log = Logger()
T = TypeVar("T")
#: What a READ gives: bytes, or a view of received bytes (no copy).
Data = bytes | memoryview

#: OpenSSH's sftp-server answers at most 256 KiB - 1 KiB per READ; ask for no more.
MAX_CHUNK = 255 * 1024
#: Packets at least this long (READ answers) are gathered in pieces, not in a buffer.
BIG_PACKET = 1 << 16
#: A server packet declared longer than this ends the connection: it would have to be
#: buffered whole (OpenSSH's own limit is 256 KiB; our READs ask for at most ``MAX_CHUNK``).
MAX_PACKET = 1 << 20
#: The smallest read and write sizes a server's ``limits@openssh.com`` may set: a smaller one
#: would turn one read-ahead window into millions of requests.
MIN_CHUNK = 4096
#: Bytes read from the socket per reactor iteration.
RECV_SIZE = 1 << 18
#: Bytes sent per reactor iteration (at most).
SEND_SIZE = 1 << 20
#: READDIR requests a listing keeps in flight at most.
READDIR_AHEAD = 16
#: Seconds a lazy request (a reader's CLOSE) may wait for company.
LAZY_DELAY = 0.002
DEFAULT_TIMEOUT = 10.0
DEFAULT_KEEPALIVE = 5.0

_HDR = struct.Struct("!LBL")  # length, type, request id
_U32 = struct.Struct("!L")
_U64 = struct.Struct("!Q")
_READ = struct.Struct("!QL")
_LEN_TYPE = struct.Struct("!LB")
#: The largest file size there can be (off_t).
_MAX_SIZE = (1 << 63) - 1

# SFTP v3 status codes beyond the ones Conch names; later drafts' codes are sent by some
# servers (Go's pkg/sftp among them), so they are mapped too.
_STATUS_ERRNO = {
    ft.FX_NO_SUCH_FILE: errno.ENOENT,
    ft.FX_PERMISSION_DENIED: errno.EACCES,
    ft.FX_BAD_MESSAGE: errno.EINVAL,
    ft.FX_NO_CONNECTION: errno.ENOTCONN,
    ft.FX_CONNECTION_LOST: errno.ENOTCONN,
    ft.FX_OP_UNSUPPORTED: errno.ENOTSUP,
    9: errno.EBADF,  # INVALID_HANDLE
    10: errno.ENOENT,  # NO_SUCH_PATH
    ft.FX_FILE_ALREADY_EXISTS: errno.EEXIST,
    12: errno.EROFS,  # WRITE_PROTECT
    13: errno.ENXIO,  # NO_MEDIA
    14: errno.ENOSPC,  # NO_SPACE_ON_FILESYSTEM
    15: errno.EDQUOT,  # QUOTA_EXCEEDED
    17: errno.EBUSY,  # LOCK_CONFLICT
    18: errno.ENOTEMPTY,  # DIR_NOT_EMPTY
    19: errno.ENOTDIR,  # NOT_A_DIRECTORY
    20: errno.EINVAL,  # INVALID_FILENAME
    21: errno.ELOOP,  # LINK_LOOP
    24: errno.EISDIR,  # FILE_IS_A_DIRECTORY
}

# FX_FAILURE carries no errno; servers that put strerror() text in the message (Conch,
# Go's pkg/sftp) still let us recover the common ones.
_ERRNO_IN_MESSAGE = re.compile(r"\[Errno (\d+)\]")
_MESSAGE_ERRNOS = [
    (os.strerror(e).lower(), e)
    for e in (
        errno.ENOTEMPTY,
        errno.EEXIST,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENOSPC,
        errno.EROFS,
        errno.EXDEV,
        errno.ELOOP,
        errno.ENAMETOOLONG,
        errno.EDQUOT,
        errno.EINVAL,
        errno.EBUSY,
        errno.EPERM,
        errno.ETXTBSY,
        errno.EMLINK,
    )
] + [("file exists", errno.EEXIST), ("not empty", errno.ENOTEMPTY)]


class FileAttrs(NamedTuple):
    """SFTP v3 file attributes; a field the server did not send is None."""

    size: int | None = None
    uid: int | None = None
    gid: int | None = None
    permissions: int | None = None
    atime: int | None = None
    mtime: int | None = None


class NameEntry(NamedTuple):
    """One entry of a directory listing."""

    filename: bytes
    longname: bytes
    attrs: FileAttrs


class StatVFS(NamedTuple):
    """The reply to ``statvfs@openssh.com`` (or made-up numbers when it is missing)."""

    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    favail: int
    fsid: int
    flag: int
    namemax: int


#: What statvfs reports when the server has no ``statvfs@openssh.com``: like sshfs, plenty.
FAKE_STATVFS = StatVFS(4096, 4096, 1 << 30, 1 << 30, 1 << 30, 1 << 20, 1 << 20, 1 << 20, 0, 0, 255)


class SFTPStatusError(ft.SFTPError):
    """The server answered a request with an error status."""

    def __init__(self, code: int, message: str, request: str = "") -> None:
        super().__init__(code, message)
        self.request = request
        self.args = (code, message, request)

    @property
    def errno(self) -> int:
        """The closest errno for this status (see ``error_to_errno``)."""
        return status_errno(self.code, self.message)

    def __str__(self) -> str:
        what = f"{self.request}: " if self.request else ""
        return f"{what}SFTP status {self.code}: {self.message}"


class ConnectionDead(ConnectionLost):
    """The connection stopped answering (a request or keepalive passed its deadline)."""

    def __str__(self) -> str:
        return " ".join(str(a) for a in self.args) or "SFTP connection declared dead"


class SFTPProtocolError(ConnectionError):
    """A well-framed answer whose content makes no sense (a short statvfs reply, no name)."""


class NotConnected(ConnectionError):
    """There is no live SFTP connection right now (the manager is reconnecting)."""


def status_errno(code: int, message: str, default: int = errno.EIO) -> int:
    """Map an SFTP status code (and, for FX_FAILURE, its message) to an errno."""
    mapped = _STATUS_ERRNO.get(code)
    if mapped is not None:
        return mapped
    match = _ERRNO_IN_MESSAGE.search(message)
    if match:
        return int(match.group(1))
    lowered = message.lower()
    for text, number in _MESSAGE_ERRNOS:
        if text in lowered:
            return number
    return default


def error_to_errno(exc: BaseException, failure_default: int = errno.EIO) -> int:
    """
    The errno a FUSE operation should return for ``exc``.

    :param failure_default: what a bare FX_FAILURE means for this operation (OpenSSH sends
        "Failure" for every unmapped errno, so e.g. rmdir passes ENOTEMPTY here).
    """
    if isinstance(exc, SFTPStatusError):
        return status_errno(exc.code, exc.message, failure_default)
    if isinstance(exc, NotConnected):
        return errno.ENOTCONN
    if isinstance(exc, (ConnectionLost, ConnectionError, defer.TimeoutError, EOFError)):
        return errno.EIO
    if isinstance(exc, NotImplementedError):
        return errno.ENOTSUP
    return errno.EIO


def _ns(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def pack_attrs(attrs: FileAttrs | None) -> bytes:
    """Encode attributes as SFTP v3 ATTRS (pairs like uid/gid need both halves)."""
    if attrs is None:
        return b"\0\0\0\0"
    flags = 0
    out = []
    if attrs.size is not None:
        flags |= ft.FILEXFER_ATTR_SIZE
        out.append(_U64.pack(attrs.size))
    if attrs.uid is not None and attrs.gid is not None:
        flags |= ft.FILEXFER_ATTR_UIDGID
        out.append(struct.pack("!LL", attrs.uid, attrs.gid))
    if attrs.permissions is not None:
        flags |= ft.FILEXFER_ATTR_PERMISSIONS
        out.append(_U32.pack(attrs.permissions))
    if attrs.atime is not None and attrs.mtime is not None:
        flags |= ft.FILEXFER_ATTR_ACMODTIME
        out.append(struct.pack("!LL", attrs.atime & 0xFFFFFFFF, attrs.mtime & 0xFFFFFFFF))
    return _U32.pack(flags) + b"".join(out)


class _Malformed(ValueError):
    """A server packet that does not parse, or that answers what was not asked."""


def parse_attrs(
    buf: bytes | bytearray | memoryview, pos: int, end: int | None = None
) -> tuple[FileAttrs, int]:
    """
    Decode SFTP v3 ATTRS at ``buf[pos:end]``; return them and the position after them.

    Raises ``ValueError`` (or ``struct.error``) when they do not fit before ``end``.
    """
    if end is None:
        end = len(buf)
    (flags,) = _U32.unpack_from(buf, pos)
    pos += 4
    size = uid = gid = perms = atime = mtime = None
    if flags & ft.FILEXFER_ATTR_SIZE:
        (size,) = _U64.unpack_from(buf, pos)
        pos += 8
        if size > _MAX_SIZE:  # the kernel's (and pyfuse3's) off_t cannot hold it
            raise _Malformed(f"a size of {size} bytes")
    if flags & ft.FILEXFER_ATTR_UIDGID:
        uid, gid = struct.unpack_from("!LL", buf, pos)
        pos += 8
    if flags & ft.FILEXFER_ATTR_PERMISSIONS:
        (perms,) = _U32.unpack_from(buf, pos)
        pos += 4
    if flags & ft.FILEXFER_ATTR_ACMODTIME:
        atime, mtime = struct.unpack_from("!LL", buf, pos)
        pos += 8
    if flags & ft.FILEXFER_ATTR_EXTENDED:
        (count,) = _U32.unpack_from(buf, pos)
        pos += 4
        if count * 8 > end - pos:  # each pair is two strings of at least 4 bytes
            raise _Malformed(f"ATTRS with {count} extended pairs in {end - pos} bytes")
        for _ in range(count * 2):  # skip type and data strings
            (n,) = _U32.unpack_from(buf, pos)
            pos += 4 + n
            if pos > end:
                break
    if pos > end:
        raise _Malformed("ATTRS longer than their packet")
    return FileAttrs(size, uid, gid, perms, atime, mtime), pos


def _string(
    buf: bytes | bytearray | memoryview, pos: int, end: int | None = None
) -> tuple[bytes, int]:
    """The SFTP string at ``buf[pos:]``, which must end by ``end``; and the position after it."""
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    if pos + n > (len(buf) if end is None else end):
        raise _Malformed(f"a string of {n} bytes runs past its packet")
    return bytes(buf[pos : pos + n]), pos + n


#: ATTRS with all four SFTP v3 fields (what OpenSSH and the agent send for every entry).
_FULL_ATTRS = struct.Struct("!LQLLLLL")
_FULL_SIZE = _FULL_ATTRS.size
_ALL_FIELDS = (
    ft.FILEXFER_ATTR_SIZE
    | ft.FILEXFER_ATTR_UIDGID
    | ft.FILEXFER_ATTR_PERMISSIONS
    | ft.FILEXFER_ATTR_ACMODTIME
)


def _parse_names(
    buf: bytes | bytearray | memoryview, pos: int, stop: int, count: int
) -> list[NameEntry]:
    """
    ``count`` NAME entries at ``buf[pos:stop]``, each checked to end by ``stop``; the usual
    ATTRS (all four fields, no extensions) are read with one unpack (a listing of thousands
    of entries spends most of its time here).
    """
    names = []
    u32 = _U32.unpack_from
    full = _FULL_ATTRS.unpack_from
    for _ in range(count):
        (n,) = u32(buf, pos)
        start = pos + 4
        pos = start + n
        if pos > stop:
            raise _Malformed(f"a string of {n} bytes runs past its packet")
        filename = bytes(buf[start:pos])
        (n,) = u32(buf, pos)
        start = pos + 4
        pos = start + n
        if pos > stop:
            raise _Malformed(f"a string of {n} bytes runs past its packet")
        longname = bytes(buf[start:pos])
        if pos + _FULL_SIZE <= stop and u32(buf, pos)[0] == _ALL_FIELDS:
            _, size, uid, gid, perms, atime, mtime = full(buf, pos)
            if size > _MAX_SIZE:  # as parse_attrs: off_t cannot hold it
                raise _Malformed(f"a size of {size} bytes")
            attrs = FileAttrs(size, uid, gid, perms, atime, mtime)
            pos += _FULL_SIZE
        else:
            attrs, pos = parse_attrs(buf, pos, stop)
        names.append(NameEntry(filename, longname, attrs))
    return names


#: What each request is answered with, besides STATUS (an error, or OK where nothing else
#: is expected). EXTENDED requests may get either.
_ANSWERS = {
    ft.FXP_OPEN: ft.FXP_HANDLE,
    ft.FXP_OPENDIR: ft.FXP_HANDLE,
    ft.FXP_READ: ft.FXP_DATA,
    ft.FXP_STAT: ft.FXP_ATTRS,
    ft.FXP_LSTAT: ft.FXP_ATTRS,
    ft.FXP_FSTAT: ft.FXP_ATTRS,
    ft.FXP_READDIR: ft.FXP_NAME,
    ft.FXP_REALPATH: ft.FXP_NAME,
    ft.FXP_READLINK: ft.FXP_NAME,
    ft.FXP_EXTENDED: ft.FXP_EXTENDED_REPLY,
}


class SFTPClient(ft.FileTransferClient):
    """
    I speak SFTP v3 to one server over one stream connection.

    Every request returns a Deferred with a typed result and has a deadline; when a request
    (or an idle-time keepalive) is not answered in time the connection is declared dead: the
    transport is aborted and every pending request fails at once with ``ConnectionDead``.
    ``ready`` fires once the server's VERSION (and its limits, if announced) arrived.
    """

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float = DEFAULT_TIMEOUT,
        keepalive: float = DEFAULT_KEEPALIVE,
    ) -> None:
        super().__init__()
        self._clock = clock
        self.timeout = timeout
        self.keepaliveInterval = keepalive
        self.ready: Deferred[SFTPClient] = Deferred()
        self.extensions: dict[bytes, bytes] = {}
        self.serverVersion = 0
        self.maxRead = MAX_CHUNK
        self.maxWrite = MAX_CHUNK
        #: Callables told (once) with the reason when this connection ends.
        self.lostObservers: list[Callable[[Failure], None]] = []
        self._buf = bytearray()
        # A big packet arriving in pieces: the pieces so far and the bytes still missing.
        self._pieces: list[bytes | memoryview] = []
        self._need = 0
        # request id -> (deferred, deadline, packet type, bytes asked for by a READ);
        # insertion order is send order, so the first entry always has the earliest deadline.
        self._pending: dict[int, tuple[Deferred[Any], float, int, int]] = {}
        self._nextId = 0
        self._deadlineCall: IDelayedCall | None = None
        self._keepaliveCall: IDelayedCall | None = None
        self._lastReceived = 0.0
        self._connectedAt = 0.0
        self._versioned = False
        self._dead: Failure | None = None
        self._openSSHSymlink = False
        self._direct = False
        self._held: list[bytes] = []
        self._heldCall: IDelayedCall | None = None

    def __repr__(self) -> str:
        return f"<SFTPClient pending={len(self._pending)} dead={self._dead is not None}>"

    # -- connection life cycle ---------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        if ITCPTransport.providedBy(transport):
            # Without it every small request waits for a delayed ACK (~40 ms).
            transport.setTcpNoDelay(True)
        if transport is not None and hasattr(transport, "bufferSize"):
            # Twisted reads 64 KiB and sends 128 KiB per loop iteration; READ answers and
            # WRITE requests come 255 KiB at a time.
            transport.bufferSize = RECV_SIZE
            # typing note: SEND_LIMIT is a FileDescriptor attribute, like bufferSize above.
            transport.SEND_LIMIT = SEND_SIZE  # type: ignore[attr-defined]
        # Only a plain TCP transport gets its socket written directly (see _send). Imported
        # here: the mount helper keeps pyOpenSSL out, and tcp's import would bring it in.
        from twisted.internet import tcp

        self._direct = isinstance(transport, tcp.Connection) and not getattr(
            transport, "TLS", False
        )
        self._lastReceived = self._connectedAt = self._clock.seconds()
        if self._direct:
            lean_reads(transport)  # answers are read without Twisted's per-event log context
        super().connectionMade()
        # VERSION has the same deadline as any request.
        self._deadlineCall = self._clock.callLater(self.timeout, self._checkDeadline)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        # After an abort, its own reason says more than "aborted".
        cause = self._dead or reason
        lost = ConnectionLost(f"SFTP connection lost: {reason.getErrorMessage()}")
        lost.__cause__ = reason.value
        self._fail(lost, abort=False)
        observers, self.lostObservers = self.lostObservers, []
        for observer in observers:
            try:
                observer(cause)
            except Exception:
                log.failure("SFTP lost-connection observer failed")

    @property
    def alive(self) -> bool:
        """Whether requests can still be sent on this connection."""
        return self._dead is None and bool(self.connected)

    def abort(self, reason: str = "aborted") -> None:
        """Declare the connection dead: fail everything pending and drop the transport."""
        self._fail(ConnectionDead(reason), abort=True)

    def _fail(self, exc: Exception, abort: bool) -> None:
        if self._dead is not None:
            return
        self._dead = Failure(exc)
        for call in (self._deadlineCall, self._keepaliveCall, self._heldCall):
            if call is not None and call.active():
                call.cancel()
        self._deadlineCall = self._keepaliveCall = self._heldCall = None
        self._held = []
        pending, self._pending = self._pending, {}
        if not self.ready.called:
            self.ready.errback(Failure(exc))
        for d, _, _, _ in pending.values():
            d.errback(Failure(exc))
        if abort and self.transport is not None:
            log.warn("SFTP connection declared dead: {reason}", reason=str(exc))
            # typing note: ITransport lacks abortConnection; TCP and test transports have it.
            getattr(self.transport, "abortConnection", self.transport.loseConnection)()

    def _checkDeadline(self) -> None:
        self._deadlineCall = None
        now = self._clock.seconds()
        if not self.ready.called:
            # From the connection's start: a server trickling bytes does not extend it.
            deadline = self._connectedAt + self.timeout
            if now >= deadline - 1e-9:
                self.abort(f"no SFTP VERSION within {self.timeout:g}s")
                return
        elif not self._pending:
            return
        else:
            _, deadline, kind, _ = next(iter(self._pending.values()))
            if now >= deadline - 1e-9:
                name = ft.FileTransferBase.packetTypes.get(kind, str(kind))
                self.abort(f"SFTP {name} request unanswered for {self.timeout:g}s")
                return
        self._deadlineCall = self._clock.callLater(deadline - now, self._checkDeadline)

    def _keepalive(self) -> None:
        self._keepaliveCall = None
        if self._dead is not None:
            return
        now = self._clock.seconds()
        idle = now - self._lastReceived
        if not self._pending and idle >= self.keepaliveInterval - 1e-9:
            # Any answer (even an error) proves the server is alive; the deadline does the rest.
            self._request(ft.FXP_LSTAT, _ns(b"/")).addErrback(lambda f: None)
            idle = 0.0
        self._keepaliveCall = self._clock.callLater(
            max(self.keepaliveInterval - idle, 0.01), self._keepalive
        )

    # -- packets in ----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        # Copy-light: complete packets are parsed where they arrived (READ data is handed on
        # as a view of the received bytes), a big packet split across reads is gathered in
        # pieces and joined once, and only small leftovers go through the bytearray. A packet
        # declared longer than MAX_PACKET ends the connection before anything is gathered.
        if self._dead is not None:
            return  # aborted: whatever still arrives is dropped, not buffered
        self._lastReceived = self._clock.seconds()
        source: bytes | memoryview | bytearray = data
        if self._need:
            take = min(self._need, len(data))
            self._pieces.append(data if take == len(data) else memoryview(data)[:take])
            self._need -= take
            if self._need:
                return
            packet = b"".join(self._pieces)
            self._pieces = []
            self._parse(packet, len(packet))
            if take == len(data):
                return
            source = memoryview(data)[take:]
        buf = self._buf
        if buf:
            buf += source
            source = buf
        end = len(source)
        pos = self._parse(source, end)
        rest = end - pos
        if rest >= 4 and self._dead is None:
            (length,) = _U32.unpack_from(source, pos)
            if not 5 <= length <= MAX_PACKET:
                self._badLength(length)
                return
            if length >= BIG_PACKET:
                # Most of a READ answer: gather it in pieces (see above).
                if source is buf:
                    with memoryview(buf) as view:  # released before the buffer changes
                        self._pieces = [view[pos:].tobytes()]
                    buf.clear()
                else:
                    self._pieces = [memoryview(source)[pos:]]
                self._need = 4 + length - rest
                return
        if self._dead is not None:
            buf.clear()
        elif source is buf:
            if pos:
                del buf[:pos]
        elif rest:
            buf += memoryview(source)[pos:]

    def _badLength(self, length: int) -> None:
        self._buf.clear()
        self._pieces = []
        self._need = 0
        self.abort(f"malformed SFTP packet: declared length {length}")

    def _parse(self, buf: bytes | memoryview | bytearray, end: int) -> int:
        """Dispatch the complete packets in ``buf[:end]``; return where the rest starts."""
        pos = 0
        while end - pos >= 9 and self._dead is None:
            length, kind = _LEN_TYPE.unpack_from(buf, pos)
            if not 5 <= length <= MAX_PACKET:
                self._badLength(length)
                break
            stop = pos + 4 + length
            if stop > end:
                break
            try:
                self._dispatch(kind, buf, pos + 5, stop)
            except Exception as e:
                # The server does not speak SFTP as we do: nothing it sends can be trusted.
                self.abort(f"malformed SFTP packet of type {kind}: {e}")
            pos = stop
        return pos

    def _dispatch(
        self, kind: int, buf: bytes | memoryview | bytearray, pos: int, stop: int
    ) -> None:
        """
        Answer the request ``buf[pos:stop]`` is for; raise if it is malformed or answers
        something that was not asked (that request is failed first, the caller aborts).
        """
        if kind == ft.FXP_VERSION:
            if self._versioned:
                raise _Malformed("a second VERSION")
            self._versioned = True
            self._gotVersion(bytes(buf[pos:stop]))
            return
        if stop - pos < 4:
            raise _Malformed("no request id")
        (rid,) = _U32.unpack_from(buf, pos)
        entry = self._pending.pop(rid, None)
        if entry is None:
            raise _Malformed(f"an answer to request {rid}, which was not asked")
        d, _, sent, asked = entry
        try:
            self._answer(d, kind, sent, asked, buf, pos + 4, stop)
        except Exception as e:
            name = ft.FileTransferBase.packetTypes.get(sent, str(sent))
            d.errback(ConnectionDead(f"malformed SFTP answer to {name}: {e}"))
            raise

    def _answer(
        self,
        d: Deferred[Any],
        kind: int,
        sent: int,
        asked: int,
        buf: bytes | memoryview | bytearray,
        pos: int,
        stop: int,
    ) -> None:
        expected = _ANSWERS.get(sent)
        if kind == ft.FXP_STATUS:
            if pos + 4 > stop:
                raise _Malformed("a STATUS without its code")
            (code,) = _U32.unpack_from(buf, pos)
            if code == ft.FX_OK:
                if expected is not None and sent != ft.FXP_EXTENDED:
                    raise _Malformed("STATUS OK where an answer with data is due")
                d.callback(None)
                return
            message = b""
            if stop - pos >= 8:  # a message that runs past the packet is cut, not fatal
                (n,) = _U32.unpack_from(buf, pos + 4)
                message = bytes(buf[pos + 8 : min(pos + 8 + n, stop)])
            if code == ft.FX_EOF and sent == ft.FXP_READ:
                d.callback(b"")
            elif code == ft.FX_EOF and sent == ft.FXP_READDIR:
                d.callback([])
            else:
                name = ft.FileTransferBase.packetTypes.get(sent, str(sent))
                d.errback(SFTPStatusError(code, message.decode("utf-8", "replace"), name))
            return
        if kind != expected:
            name = ft.FileTransferBase.packetTypes.get(kind, str(kind))
            raise _Malformed(f"a {name} packet")
        if kind == ft.FXP_DATA:
            (n,) = _U32.unpack_from(buf, pos)
            if pos + 4 + n > stop or n > asked:
                raise _Malformed(f"{n} bytes of DATA for {asked} asked in {stop - pos - 4}")
            if isinstance(buf, bytearray):  # reused for what comes next: copy
                with memoryview(buf) as view:
                    d.callback(view[pos + 4 : pos + 4 + n].tobytes())
            else:  # immutable: a view, no copy
                d.callback(memoryview(buf)[pos + 4 : pos + 4 + n])
        elif kind == ft.FXP_HANDLE:
            d.callback(_string(buf, pos, stop)[0])
        elif kind == ft.FXP_ATTRS:
            d.callback(parse_attrs(buf, pos, stop)[0])
        elif kind == ft.FXP_NAME:
            (count,) = _U32.unpack_from(buf, pos)
            pos += 4
            if count * 12 > stop - pos:  # each entry is at least two strings and flags
                raise _Malformed(f"NAME with {count} entries in {stop - pos} bytes")
            d.callback(_parse_names(buf, pos, stop, count))
        else:  # EXTENDED_REPLY
            d.callback(bytes(buf[pos:stop]))

    def _gotVersion(self, data: bytes) -> None:
        if len(data) < 4:
            raise _Malformed("a VERSION without a version")
        (self.serverVersion,) = _U32.unpack_from(data, 0)
        pos = 4
        while pos < len(data):
            name, pos = _string(data, pos)
            value, pos = _string(data, pos)
            self.extensions[name] = value
        # OpenSSH (and servers copying it, like Go's pkg/sftp) swapped SYMLINK's arguments;
        # announcing OpenSSH extensions is the usual sign of that camp.
        self._openSSHSymlink = any(n.endswith(b"@openssh.com") for n in self.extensions)
        self.gotServerVersion(self.serverVersion, dict(self.extensions))
        if b"limits@openssh.com" in self.extensions:
            self._request(ft.FXP_EXTENDED, _ns(b"limits@openssh.com")).addCallbacks(
                self._gotLimits, lambda f: None
            ).addBoth(self._becomeReady)
        else:
            self._becomeReady(None)

    def _gotLimits(self, reply: bytes) -> None:
        _, maxRead, maxWrite, _ = struct.unpack_from("!QQQQ", reply, 0)
        if maxRead:
            self.maxRead = max(MIN_CHUNK, min(MAX_CHUNK, maxRead))
        if maxWrite:
            self.maxWrite = max(MIN_CHUNK, min(MAX_CHUNK, maxWrite))

    def _becomeReady(self, _: object) -> None:
        if self._dead is not None or self.ready.called:
            return
        if self._deadlineCall is not None and not self._pending:
            self._deadlineCall.cancel()
            self._deadlineCall = None
        self._keepaliveCall = self._clock.callLater(self.keepaliveInterval, self._keepalive)
        self.ready.callback(self)

    def gotServerVersion(self, serverVersion: int, extData: dict[bytes, bytes]) -> None:
        log.debug(
            "SFTP server version {version}, extensions {extensions}",
            version=serverVersion,
            extensions=sorted(n.decode("ascii", "replace") for n in extData),
        )

    # -- packets out ---------------------------------------------------------------------------

    def _request(
        self,
        kind: int,
        payload: bytes,
        data: bytes | None = None,
        lazy: bool = False,
        asked: int = 0,
    ) -> Deferred[Any]:
        """
        Send a request (``data``, if any, follows ``payload`` without being copied); a
        ``lazy`` one is held back until the next request or for ``LAZY_DELAY`` at most;
        ``asked`` is the most a READ may be answered with.
        """
        if self._dead is not None:
            return defer.fail(self._dead.value)
        transport = self.transport
        if not self.connected or transport is None:
            return defer.fail(ConnectionLost("SFTP connection is closed"))
        rid = self._nextId
        packet = _HDR.pack(len(payload) + (len(data) if data else 0) + 5, kind, rid) + payload
        if lazy:
            self._held.append(packet)
            if self._heldCall is None:
                self._heldCall = self._clock.callLater(LAZY_DELAY, self._sendHeld)
        elif data is None:
            self._send([packet])
        else:
            self._send([packet, data])
        # Registered only once sent: a request that could not be sent is not waited for.
        self._nextId = (rid + 1) & 0xFFFFFFFF
        d: Deferred[Any] = Deferred()
        self._pending[rid] = (d, self._clock.seconds() + self.timeout, kind, asked)
        if self._deadlineCall is None:
            self._deadlineCall = self._clock.callLater(self.timeout, self._checkDeadline)
        return d

    def _sendHeld(self) -> None:
        self._heldCall = None
        if self._held and self._dead is None and self.transport is not None:
            self._send([])

    def _send(self, parts: list[bytes | memoryview]) -> None:
        """
        Send ``parts`` in order: straight to the socket while nothing is queued before them.

        A request waits for no reactor turn (and costs no poller updates) that way, which is
        most of a small request's cost here; the big parts of a WRITE are not copied either.
        Only what the socket does not take goes through the transport's buffer, and errors are
        left to the transport (a send it cannot do is retried there, and fails there).
        """
        # typing note: a tcp.Connection when _direct, and any ITransport otherwise.
        transport: Any = self.transport
        assert transport is not None
        if self._held:
            # Held requests were numbered first: they go first.
            parts = [*self._held, *parts]
            self._held = []
        if self._direct and nothing_queued(transport):
            try:
                sent = transport.socket.sendmsg(parts)
            except OSError:
                sent = 0
            if sent:
                while parts and sent >= len(parts[0]):
                    sent -= len(parts[0])
                    parts = parts[1:]
                if sent:
                    parts = [parts[0][sent:], *parts[1:]]
        if len(parts) == 1:
            transport.write(bytes(parts[0]))
        elif parts:
            transport.writeSequence([bytes(p) for p in parts])

    def _sendRequest(self, msg: int, data: bytes) -> Deferred[Any]:
        # Conch's convenience methods route here; their results are this class's typed ones.
        return self._request(msg, data)

    @property
    def pendingCount(self) -> int:
        return len(self._pending)

    def hasExtension(self, name: bytes) -> bool:
        return name in self.extensions

    def _extended(self, name: bytes, payload: bytes) -> Deferred[Any]:
        return self._request(ft.FXP_EXTENDED, _ns(name) + payload)

    # -- operations ------------------------------------------------------------------------------

    def stat(self, path: bytes) -> Deferred[FileAttrs]:
        """Attributes of ``path``, following symlinks."""
        return self._request(ft.FXP_STAT, _ns(path))

    def lstat(self, path: bytes) -> Deferred[FileAttrs]:
        """Attributes of ``path`` itself (a symlink is not followed)."""
        return self._request(ft.FXP_LSTAT, _ns(path))

    def fstat(self, handle: bytes) -> Deferred[FileAttrs]:
        return self._request(ft.FXP_FSTAT, _ns(handle))

    def setstat(self, path: bytes, attrs: FileAttrs) -> Deferred[None]:
        return self._request(ft.FXP_SETSTAT, _ns(path) + pack_attrs(attrs))

    def fsetstat(self, handle: bytes, attrs: FileAttrs) -> Deferred[None]:
        # Conch's ClientFile.setAttrs sends FSTAT here by mistake; this is the real FSETSTAT.
        return self._request(ft.FXP_FSETSTAT, _ns(handle) + pack_attrs(attrs))

    def open(self, path: bytes, flags: int, attrs: FileAttrs | None = None) -> Deferred[bytes]:
        """Open a file (``flags`` are ``FXF_*``); the result is the server's handle."""
        return self._request(ft.FXP_OPEN, _ns(path) + _U32.pack(flags) + pack_attrs(attrs))

    def close(self, handle: bytes, soon: bool = False) -> Deferred[None]:
        """
        Close a handle; with ``soon``, the CLOSE may wait up to ``LAZY_DELAY`` to go out
        together with the next request (one send and one server wake-up fewer per small
        file read).
        """
        return self._request(ft.FXP_CLOSE, _ns(handle), lazy=soon)

    def read(self, handle: bytes, offset: int, length: int) -> Deferred[Data]:
        """
        Up to ``length`` bytes at ``offset``; empty at end of file. Reads may be short. The
        result is often a view of the received bytes rather than a copy.
        """
        return self._request(ft.FXP_READ, _ns(handle) + _READ.pack(offset, length), asked=length)

    def write(self, handle: bytes, offset: int, data: bytes) -> Deferred[None]:
        return self._request(
            ft.FXP_WRITE, b"".join((_ns(handle), _U64.pack(offset), _U32.pack(len(data)))), data
        )

    def writeChunks(self, handle: bytes, offset: int, data: bytes) -> list[Deferred[None]]:
        """
        Write ``data`` at ``offset`` as WRITE requests of at most ``maxWrite`` bytes each,
        sent together in one buffer (one copy of ``data`` instead of two).
        """
        if self._dead is not None:
            return [defer.fail(self._dead.value)]
        transport = self.transport
        if not self.connected or transport is None:
            return [defer.fail(ConnectionLost("SFTP connection is closed"))]
        step = self.maxWrite
        n = len(data)
        if n <= step:
            return [self.write(handle, offset, data)]
        nsHandle = _ns(handle)
        fixed = 5 + len(nsHandle) + 12
        view = memoryview(data)
        parts: list[bytes | memoryview] = []
        rid = self._nextId
        first = rid
        for start in range(0, n, step):
            size = min(step, n - start)
            parts.append(
                _HDR.pack(fixed + size, ft.FXP_WRITE, rid)
                + nsHandle
                + _U64.pack(offset + start)
                + _U32.pack(size)
            )
            parts.append(view[start : start + size])
            rid = (rid + 1) & 0xFFFFFFFF
        self._send(parts)
        self._nextId = rid
        deadline = self._clock.seconds() + self.timeout
        sent = []
        rid = first
        for _ in range(len(parts) // 2):
            d: Deferred[None] = Deferred()
            self._pending[rid] = (d, deadline, ft.FXP_WRITE, 0)
            sent.append(d)
            rid = (rid + 1) & 0xFFFFFFFF
        if self._deadlineCall is None:
            self._deadlineCall = self._clock.callLater(self.timeout, self._checkDeadline)
        return sent

    def opendir(self, path: bytes) -> Deferred[bytes]:
        return self._request(ft.FXP_OPENDIR, _ns(path))

    def readdir(self, handle: bytes) -> Deferred[list[NameEntry]]:
        """The next batch of entries; an empty list at the end."""
        return self._request(ft.FXP_READDIR, _ns(handle))

    #: ``listdir`` takes ``onBatch``.
    listsInBatches = True

    def listdir(
        self, path: bytes, onBatch: Callable[[list[NameEntry]], None] | None = None
    ) -> Deferred[list[NameEntry]]:
        """
        Every entry of the directory ``path``, with attributes (``.``, ``..`` and names no
        entry can have, such as ``a/b``, left out); ``onBatch`` is also given each batch's
        entries, in order, as they arrive.
        """
        return Deferred.fromCoroutine(self._listdir(path, onBatch))

    async def _listdir(
        self, path: bytes, onBatch: Callable[[list[NameEntry]], None] | None = None
    ) -> list[NameEntry]:
        # READDIRs are pipelined: a server answers a handle's requests in order, each with
        # the next batch, and every one past the end with EOF. Two go out at first and
        # twice as many per batch received (up to READDIR_AHEAD), none once a batch comes
        # back shorter than an earlier one (the end is near): a big directory takes a few
        # round trips instead of one per batch, a small one costs a few EOFs more.
        handle = await self.opendir(path)
        entries: list[NameEntry] = []
        pending: deque[Deferred[list[NameEntry]]] = deque()
        depth = 2
        largest = 0
        try:
            while True:
                more = depth - len(pending)
                for i in range(more):  # all but the last held: one send for the lot
                    pending.append(self._request(ft.FXP_READDIR, _ns(handle), lazy=i < more - 1))
                batch = await pending.popleft()
                if not batch:
                    break
                good = [e for e in batch if _entry_name_ok(e.filename)]
                entries.extend(good)
                if onBatch is not None:
                    onBatch(good)
                if len(batch) < largest:
                    depth = 0  # only what is on its way
                elif depth:
                    largest = len(batch)
                    depth = min(depth * 2, READDIR_AHEAD)
                if not depth and not pending:
                    pending.append(self.readdir(handle))
        finally:
            for d in pending:
                d.addErrback(lambda f: None)
            if self.alive:
                self.close(handle).addErrback(lambda f: None)
        return entries

    def mkdir(self, path: bytes, attrs: FileAttrs | None = None) -> Deferred[None]:
        return self._request(ft.FXP_MKDIR, _ns(path) + pack_attrs(attrs))

    def rmdir(self, path: bytes) -> Deferred[None]:
        return self._request(ft.FXP_RMDIR, _ns(path))

    def remove(self, path: bytes) -> Deferred[None]:
        return self._request(ft.FXP_REMOVE, _ns(path))

    def rename(self, old: bytes, new: bytes, overwrite: bool = True) -> Deferred[None]:
        """
        Rename ``old`` to ``new``.

        With ``overwrite`` (POSIX semantics) ``posix-rename@openssh.com`` is used when the
        server has it; plain SFTP RENAME refuses an existing target on OpenSSH.
        """
        payload = _ns(old) + _ns(new)
        if overwrite and b"posix-rename@openssh.com" in self.extensions:
            return self._extended(b"posix-rename@openssh.com", payload)
        return self._request(ft.FXP_RENAME, payload)

    @property
    def canNoReplaceRename(self) -> bool:
        """Whether plain RENAME refuses to overwrite (true of OpenSSH, which has posix-rename)."""
        return b"posix-rename@openssh.com" in self.extensions

    def symlink(self, linkpath: bytes, target: bytes) -> Deferred[None]:
        """Create ``linkpath`` pointing at ``target``, in the argument order the server expects."""
        if self._openSSHSymlink:
            return self._request(ft.FXP_SYMLINK, _ns(target) + _ns(linkpath))
        return self._request(ft.FXP_SYMLINK, _ns(linkpath) + _ns(target))

    def readlink(self, path: bytes) -> Deferred[bytes]:
        return self._request(ft.FXP_READLINK, _ns(path)).addCallback(_only_name, "READLINK")

    def realpath(self, path: bytes) -> Deferred[bytes]:
        return self._request(ft.FXP_REALPATH, _ns(path)).addCallback(_only_name, "REALPATH")

    def hardlink(self, old: bytes, new: bytes) -> Deferred[None]:
        if b"hardlink@openssh.com" not in self.extensions:
            return defer.fail(SFTPStatusError(ft.FX_OP_UNSUPPORTED, "no hardlink@openssh.com"))
        return self._extended(b"hardlink@openssh.com", _ns(old) + _ns(new))

    def statvfs(self, path: bytes) -> Deferred[StatVFS]:
        """File system numbers for ``path`` (made up when the server cannot tell)."""
        if b"statvfs@openssh.com" not in self.extensions:
            return defer.succeed(FAKE_STATVFS)
        return self._extended(b"statvfs@openssh.com", _ns(path)).addCallback(_statvfs)

    @property
    def canFsync(self) -> bool:
        return b"fsync@openssh.com" in self.extensions

    def fsync(self, handle: bytes) -> Deferred[None]:
        """``fsync@openssh.com`` when offered; otherwise nothing to do (the server decides)."""
        if b"fsync@openssh.com" not in self.extensions:
            return defer.succeed(None)
        return self._extended(b"fsync@openssh.com", _ns(handle))


def _only_name(names: list[NameEntry], request: str) -> bytes:
    if len(names) != 1:
        raise SFTPProtocolError(f"{request} answered with {len(names)} names instead of one")
    return names[0].filename


def _statvfs(reply: bytes | None) -> StatVFS:
    if reply is None or len(reply) < 88:  # None: a bare STATUS OK
        size = 0 if reply is None else len(reply)
        raise SFTPProtocolError(f"statvfs@openssh.com answered with {size} bytes")
    return StatVFS(*struct.unpack_from("!11Q", reply, 0))


def _entry_name_ok(name: bytes) -> bool:
    """Whether a directory entry's name can be one (a server's ``a/b`` or ``""`` cannot)."""
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name


class _Chunk:
    """One READ range of a ``ReadAhead`` window, filled in when its answers arrive."""

    __slots__ = ("offset", "size", "data", "error", "waiters")

    def __init__(self, offset: int, size: int) -> None:
        self.offset = offset
        self.size = size
        self.data: Data | None = None  # complete (maybe short at EOF) once set
        self.error: Failure | None = None
        self.waiters: list[Deferred[None]] = []

    @property
    def end(self) -> int:
        return self.offset + self.size

    def wait(self) -> Deferred[None]:
        if self.error is not None:
            return defer.fail(self.error)
        if self.data is not None:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self.waiters.append(d)
        return d

    def finish(self, data: Data | None, error: Failure | None) -> None:
        self.data = data
        self.error = error
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            if error is not None:
                d.errback(error)
            else:
                d.callback(None)


class ReadAhead:
    """
    I read one open remote file, keeping a window of READs in flight ahead of a
    sequential reader.

    Reads that continue where the last one stopped grow the window (up to ``window`` bytes,
    in ``chunk``-sized requests); a jump elsewhere drops it. Short answers are re-requested
    for the remainder, unless they reach ``sizeHint`` (the size the caller knows of: asking
    again would only fetch an EOF); an empty answer means end of file.
    """

    def __init__(
        self,
        client: SFTPClient,
        handle: bytes,
        chunk: int | None = None,
        window: int = 8 << 20,
        initial: int = 1 << 20,
        sizeHint: int | None = None,
    ) -> None:
        self._client = client
        self._handle = handle
        self._chunkSize = min(chunk or client.maxRead, client.maxRead)
        self._window = window
        self._initial = initial
        self._ahead = 0
        self._chunks: deque[_Chunk] = deque()
        self._next = -1  # where a sequential reader reads next
        self._eof: int | None = None
        # The size the file had at open: no read-ahead past it (reads past it still work).
        self._sizeHint = sizeHint

    @property
    def bufferedBytes(self) -> int:
        return sum(c.size for c in self._chunks)

    def reset(self, sizeHint: int | None = None) -> None:
        """
        Forget the window (after a seek, a write, an error, or news that the file changed:
        then pass its new size); answers still due are ignored.
        """
        self._chunks.clear()
        self._eof = None
        self._ahead = 0
        if sizeHint is not None:
            self._sizeHint = sizeHint

    def prefetch(self, size: int) -> None:
        """
        Start reading the first ``size`` bytes now, before anyone asks: a small file is then
        already on its way while the kernel is still answering the open.
        """
        if self._chunks or size <= 0:
            return
        self._fill(0, min(size, self._chunkSize))

    def read(self, offset: int, size: int) -> Data | Deferred[Data]:
        """
        ``size`` bytes at ``offset`` (fewer only at end of file): the bytes themselves when
        the window already holds them, else a Deferred.
        """
        chunks = self._chunks
        sequential = offset == self._next
        self._next = offset + size
        if chunks and chunks[0].offset <= offset <= chunks[-1].end:
            # Drop what lies wholly behind this read: the kernel keeps it in its page cache.
            while chunks and chunks[0].end <= offset:
                chunks.popleft()
        elif chunks and offset < chunks[0].offset:
            # A late read behind the window: serve it on its own, keep the window.
            return self._fetchAlone(offset, size)
        else:
            self.reset()
        if sequential or offset == 0:
            self._ahead = min(self._window, max(self._initial, self._ahead * 2))
        else:
            self._ahead = 0
        end = offset + size
        ahead = self._ahead
        if self._sizeHint is not None:
            ahead = min(ahead, max(0, self._sizeHint - end))
        self._fill(offset, end + ahead)
        wanted = [c for c in chunks if c.offset < offset + size and c.end > offset]
        if not wanted:  # at (known) end of file
            return b""
        if all(c.data is not None for c in wanted):
            return self._assemble(wanted, offset, size)
        waits = [c.wait() for c in wanted if c.data is None]
        d = defer.gatherResults(waits, consumeErrors=True)
        return d.addCallbacks(lambda _: self._assemble(wanted, offset, size), self._failed)

    def _failed(self, failure: Failure) -> Failure:
        self.reset()
        if isinstance(failure.value, defer.FirstError):
            return failure.value.subFailure
        return failure

    def _fill(self, offset: int, until: int) -> None:
        chunks = self._chunks
        pos = chunks[-1].end if chunks else offset
        if self._eof is not None:
            until = min(until, self._eof)
        while pos < until:
            size = min(self._chunkSize, until - pos)
            chunk = _Chunk(pos, size)
            chunks.append(chunk)
            self._fetch(chunk, pos, size, [])
            pos += size

    def _fetch(self, chunk: _Chunk, offset: int, size: int, parts: list[Data]) -> None:
        def got(data: Data) -> None:
            if data:
                parts.append(data)
                hint = self._sizeHint
                if len(data) < size and (hint is None or offset + len(data) < hint):
                    # A short answer before the known end: ask again for the rest.
                    self._fetch(chunk, offset + len(data), size - len(data), parts)
                    return
            result = parts[0] if len(parts) == 1 else b"".join(parts)
            if len(result) < chunk.size and chunk in self._chunks:
                self._eof = chunk.offset + len(result)
                # Chunks beyond EOF will come back empty; drop them now.
                while self._chunks and self._chunks[-1].offset >= self._eof:
                    self._chunks.pop().finish(b"", None)
            chunk.finish(result, None)

        def failed(failure: Failure) -> None:
            chunk.finish(None, failure)

        self._client.read(self._handle, offset, size).addCallbacks(got, failed)

    def _fetchAlone(self, offset: int, size: int) -> Deferred[Data]:
        pieces: list[_Chunk] = []
        pos = offset
        while pos < offset + size:
            n = min(self._chunkSize, offset + size - pos)
            chunk = _Chunk(pos, n)
            pieces.append(chunk)
            self._fetch(chunk, pos, n, [])
            pos += n
        d = defer.gatherResults([c.wait() for c in pieces], consumeErrors=True)
        return d.addCallbacks(lambda _: self._assemble(pieces, offset, size), self._failed)

    @staticmethod
    def _assemble(chunks: list[_Chunk], offset: int, size: int) -> Data:
        end = offset + size
        if len(chunks) == 1:
            c = chunks[0]
            data = c.data or b""
            if c.offset == offset and len(data) <= size:
                return data
            return data[offset - c.offset : end - c.offset]
        parts = []
        for c in chunks:
            data = c.data or b""
            start = max(offset - c.offset, 0)
            parts.append(data[start : end - c.offset])
            if len(data) < c.size:  # end of file
                break
        return b"".join(parts)


class PipelinedWriter:
    """
    I write one open remote file without waiting for each WRITE's answer.

    ``write`` sends at once and only makes the caller wait while more than ``maxInFlight``
    bytes are unanswered. The first failed WRITE is remembered and raised by every later
    ``write``, ``flush`` and ``fsync``: an error is never dropped.
    """

    def __init__(self, client: SFTPClient, handle: bytes, maxInFlight: int = 8 << 20) -> None:
        self._client = client
        self._handle = handle
        self._chunkSize = client.maxWrite
        self._max = maxInFlight
        self.inFlight = 0
        self.error: Failure | None = None
        self._roomWaiters: deque[Deferred[None]] = deque()
        self._drainWaiters: list[Deferred[None]] = []

    def write(self, offset: int, data: bytes) -> Deferred[None] | None:
        """
        Queue ``data`` at ``offset``.

        Returns None when the caller may go on at once, or a Deferred that fires when the
        window has room again. Raises the remembered error of an earlier write.
        """
        if self.error is not None:
            self.error.raiseException()
        try:
            sent = self._client.writeChunks(self._handle, offset, data)
        except Exception:
            self.error = Failure()
            raise
        step = self._chunkSize
        n = len(data)
        for i, request in enumerate(sent):
            size = min(step, n - i * step) if len(sent) > 1 else n
            self.inFlight += size
            request.addCallbacks(
                self._acked, self._failed, callbackArgs=(size,), errbackArgs=(size,)
            )
        if self.error is not None:  # the connection was already dead
            self.error.raiseException()
        if self.inFlight <= self._max:
            return None
        d: Deferred[None] = Deferred()
        self._roomWaiters.append(d)
        return d

    def _acked(self, _: object, size: int) -> None:
        self.inFlight -= size
        self._wake()

    def _failed(self, failure: Failure, size: int) -> None:
        self.inFlight -= size
        if self.error is None:
            log.warn("SFTP write failed: {error}", error=failure.getErrorMessage())
            self.error = failure
        self._wake()

    def _wake(self) -> None:
        while self._roomWaiters and (self.inFlight <= self._max or self.error is not None):
            d = self._roomWaiters.popleft()
            if self.error is not None:
                d.errback(self.error)
            else:
                d.callback(None)
        if self.inFlight == 0 and self._drainWaiters:
            waiters, self._drainWaiters = self._drainWaiters, []
            for d in waiters:
                if self.error is not None:
                    d.errback(self.error)
                else:
                    d.callback(None)

    def flush(self) -> Deferred[None]:
        """Fires when every write so far was answered; fails with the first write error."""
        if self.inFlight == 0:
            return defer.fail(self.error) if self.error is not None else defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._drainWaiters.append(d)
        return d


def defaultRetryPolicy(attempt: int) -> float:
    """Seconds before reconnect attempt ``attempt``: fast at first, at most ~3 s apart."""
    return min(0.25 * 1.6 ** min(attempt, 20), 3.0) + random.random() * 0.25


class _ClientFactory(Factory):
    noisy = False

    def __init__(self, build: Callable[[], SFTPClient]) -> None:
        self._build = build

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._build()


class SFTPConnectionManager:
    """
    I keep one SFTP connection to a server up, reconnecting by myself (with backoff) when it
    goes away.

    ``connection()`` answers at once: the live client, or ``NotConnected`` while there is
    none, so file system calls fail fast rather than hang.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        keepalive: float = DEFAULT_KEEPALIVE,
        retryPolicy: Callable[[int], float] = defaultRetryPolicy,
        label: str = "SFTP server",
    ) -> None:
        self._endpoint = endpoint
        self._clock = clock
        self.timeout = timeout
        self.keepalive = keepalive
        self._retryPolicy = retryPolicy
        self.label = label
        self._client: SFTPClient | None = None
        self._attempt: Deferred[Any] | None = None
        self._retryCall: IDelayedCall | None = None
        self._failures = 0
        self._running = False
        # (deferred, failures still allowed or None for "wait forever")
        self._waiters: list[tuple[Deferred[SFTPClient], int | None]] = []
        self._observers: list[Callable[[bool], None]] = []
        #: When the connection last came up or went down (the clock's seconds).
        self.since = clock.seconds()
        #: Why the last attempt or connection failed, for error messages.
        self.lastError = "not connected yet"

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.alive

    def addObserver(self, observer: Callable[[bool], None]) -> None:
        """Call ``observer(connected)`` on every connect and disconnect."""
        self._observers.append(observer)

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._connect()

    def stop(self) -> Deferred[None]:
        """Stop reconnecting and close the connection."""
        self._running = False
        if self._retryCall is not None and self._retryCall.active():
            self._retryCall.cancel()
        self._retryCall = None
        if self._attempt is not None:
            self._attempt.cancel()
        waiters, self._waiters = self._waiters, []
        for d, _ in waiters:
            d.errback(NotConnected(f"{self.label}: stopped"))
        client, self._client = self._client, None
        if client is not None and client.transport is not None:
            client.transport.loseConnection()
        return defer.succeed(None)

    def current(self) -> SFTPClient:
        """The live client; raises ``NotConnected`` if there is none."""
        client = self._client
        if client is None or not client.alive:
            raise NotConnected(f"{self.label} is not connected: {self.lastError}")
        return client

    def connection(self) -> Deferred[SFTPClient]:
        """The live client now, or a ``NotConnected`` failure now (never a wait)."""
        try:
            return defer.succeed(self.current())
        except NotConnected as e:
            return defer.fail(e)

    def whenConnected(self, failAfterFailures: int | None = None) -> Deferred[SFTPClient]:
        """
        Fires with the client once connected (add your own timeout); with
        ``failAfterFailures``, fails with ``NotConnected`` after that many failed attempts.
        """
        if self.connected:
            assert self._client is not None
            return defer.succeed(self._client)

        def cancel(d: Deferred[SFTPClient]) -> None:
            self._waiters = [w for w in self._waiters if w[0] is not d]

        d: Deferred[SFTPClient] = Deferred(cancel)
        self._waiters.append((d, failAfterFailures))
        return d

    def _connect(self) -> None:
        self._retryCall = None
        if not self._running:
            return

        built: list[SFTPClient] = []

        def build() -> SFTPClient:
            client = SFTPClient(self._clock, self.timeout, self.keepalive)
            built.append(client)
            return client

        def failed(failure: Failure) -> None:
            for client in built:  # connected but never ready: don't leave it half open
                client.abort("connection attempt failed")
            self._failed(failure)

        attempt: Deferred[Any] = self._endpoint.connect(_ClientFactory(build))
        attempt.addCallback(lambda client: client.ready)
        attempt.addTimeout(self.timeout, self._clock)
        self._attempt = attempt
        attempt.addCallbacks(self._connected, failed)

    def _connected(self, client: SFTPClient) -> None:
        self._attempt = None
        if not self._running:
            client.abort("connection manager stopped")
            return
        self._client = client
        self._failures = 0
        self.since = self._clock.seconds()
        log.info("connected to {label}", label=self.label)
        client.lostObservers.append(lambda reason: self._lost(client, reason))
        waiters, self._waiters = self._waiters, []
        for d, _ in waiters:
            d.callback(client)
        self._notify(True)

    def _failed(self, failure: Failure) -> None:
        self._attempt = None
        if not self._running:
            return
        if failure.check(defer.CancelledError, defer.TimeoutError):
            self.lastError = f"no answer within {self.timeout:g}s"
        else:
            self.lastError = failure.getErrorMessage()
        self._failures += 1
        waiting = []
        for d, allowed in self._waiters:
            if allowed is not None and allowed <= 1:
                d.errback(NotConnected(f"cannot reach {self.label}: {self.lastError}"))
            else:
                waiting.append((d, None if allowed is None else allowed - 1))
        self._waiters = waiting
        delay = self._retryPolicy(self._failures)
        log.info(
            "cannot connect to {label} ({error}); retrying in {delay:.1f}s",
            label=self.label,
            error=self.lastError,
            delay=delay,
        )
        self._retryCall = self._clock.callLater(delay, self._connect)

    def _lost(self, client: SFTPClient, reason: Failure) -> None:
        if client is not self._client:
            return
        self._client = None
        self.since = self._clock.seconds()
        self.lastError = f"connection lost ({reason.getErrorMessage()})"
        log.warn(
            "lost the connection to {label}: {reason}",
            label=self.label,
            reason=reason.getErrorMessage(),
        )
        self._notify(False)
        if self._running and self._retryCall is None and self._attempt is None:
            self._retryCall = self._clock.callLater(self._retryPolicy(0), self._connect)

    def _notify(self, connected: bool) -> None:
        for observer in list(self._observers):
            try:
                observer(connected)
            except Exception:
                log.failure("SFTP connection observer failed")
