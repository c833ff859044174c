# -*- test-case-name: tests.test_agent -*-
"""
The ``sftp-agent`` app: a raw SFTP v3 server (no SSH layer) exporting a directory.

It plays the part of a Telepresence traffic-agent: the directory given by ``--root`` is
exported as the virtual path ``/tel_app_exports``. ``/`` lists only ``tel_app_exports``;
relative paths resolve against ``/tel_app_exports``, so ``x`` and ``/tel_app_exports/x`` name
the same entry. No path can leave the root: ``..`` is clamped at the virtual ``/``, and symlinks
are followed by this module (never by the kernel) with their targets interpreted inside the
virtual tree, as a chroot would.

Wire details worth knowing:

- ``SSH_FXP_SYMLINK`` takes its arguments in OpenSSH's order (target first, then the link
  path), like OpenSSH's sftp-server, sshfs and Go's pkg/sftp. With Conch's client, that means
  ``client.makeLink(target, linkpath)``.
- OpenSSH extensions: ``posix-rename@openssh.com``, ``statvfs@openssh.com``,
  ``hardlink@openssh.com`` and ``fsync@openssh.com``, announced in the VERSION packet.
- Reads and writes run in a thread pool owned by the service, and are ordered per handle
  (overlapping requests run in arrival order; disjoint reads run in parallel).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar, cast

from twisted.application import service, strports
from twisted.conch.interfaces import ISFTPFile, ISFTPServer
from twisted.conch.ssh.filetransfer import (
    FX_BAD_MESSAGE,
    FX_EOF,
    FX_FAILURE,
    FX_NO_SUCH_FILE,
    FX_OK,
    FX_OP_UNSUPPORTED,
    FX_PERMISSION_DENIED,
    FXF_APPEND,
    FXF_CREAT,
    FXF_EXCL,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    FXP_DATA,
    FXP_INIT,
    FileTransferServer,
    SFTPError,
)
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IPushProducer,
    IReactorCore,
    IReactorFromThreads,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import failure, usage
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from telenet.core.threads import ThreadPoolService

_T = TypeVar("_T")

log = Logger()

EXPORT_NAME = b"tel_app_exports"
"""The one entry of the virtual ``/``: the exported root."""

EXTENSIONS: dict[bytes, bytes] = {
    b"posix-rename@openssh.com": b"1",
    b"statvfs@openssh.com": b"2",
    b"hardlink@openssh.com": b"1",
    b"fsync@openssh.com": b"1",
}
"""OpenSSH extensions announced in the VERSION packet, with OpenSSH's version strings."""

MAX_READ_LENGTH = 1024 * 1024
"""Longest read served at once; longer requests get a short read, which clients handle."""

MAX_PACKET_LENGTH = MAX_READ_LENGTH + 64 * 1024
"""A client packet longer than this ends the connection (we would have to buffer it)."""

MAX_INFLIGHT = 64
"""Requests of one connection in the thread pool at once before we stop reading from it."""

_MAX_SYMLINKS = 40
_UINT32_MAX = 2**32 - 1

Attrs = dict[str, Any]


class IORunner(Protocol):
    """Runs a blocking call somewhere and returns a Deferred of its result."""

    def __call__(self, f: Callable[[], _T], /) -> Deferred[_T]: ...


def run_inline(f: Callable[[], _T], /) -> Deferred[_T]:
    """An L{IORunner} that runs on the calling thread; for in-memory tests."""
    return defer.maybeDeferred(f)


def threadpool_runner(reactor: IReactorFromThreads, pool: ThreadPool) -> IORunner:
    """An L{IORunner} that runs each call in C{pool}."""

    def run(f: Callable[[], _T], /) -> Deferred[_T]:
        return deferToThreadPool(reactor, pool, f)

    return run


class BadMessage(ValueError):
    """A request that does not parse; answered with FX_BAD_MESSAGE."""


def _describe(addr: IAddress | None) -> str:
    host, port = getattr(addr, "host", None), getattr(addr, "port", None)
    return f"{host}:{port}" if host is not None else str(addr)


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _get_string(data: bytes, pos: int) -> tuple[bytes, int]:
    """Parse an SFTP string at C{pos}; unlike Conch's getNS, refuse a truncated one."""
    if len(data) < pos + 4:
        raise BadMessage("truncated string length")
    (n,) = struct.unpack_from("!L", data, pos)
    end = pos + 4 + n
    if len(data) < end:
        raise BadMessage("truncated string")
    return data[pos + 4 : end], end


def _expect_end(data: bytes, pos: int) -> None:
    if pos != len(data):
        raise BadMessage("trailing bytes in request")


def _clamp32(value: float) -> int:
    # SFTP v3 times are uint32; a file dated before 1970 must not break a listing.
    return min(max(int(value), 0), _UINT32_MAX)


def attrs_from_stat(st: os.stat_result) -> Attrs:
    """SFTP attributes (Conch's dict form) for a stat result."""
    return {
        "size": st.st_size,
        "uid": st.st_uid,
        "gid": st.st_gid,
        "permissions": st.st_mode,
        "atime": _clamp32(st.st_atime),
        "mtime": _clamp32(st.st_mtime),
    }


def longname(name: bytes, st: os.stat_result) -> bytes:
    """An ``ls -l`` style line, as OpenSSH puts in SSH_FXP_NAME replies."""
    recent = abs(time.time() - st.st_mtime) < 182 * 24 * 3600
    when = time.strftime("%b %d %H:%M" if recent else "%b %d  %Y", time.localtime(st.st_mtime))
    head = (
        f"{stat.filemode(st.st_mode)} {st.st_nlink:>4} {st.st_uid:<8} {st.st_gid:<8} "
        f"{st.st_size:>8} {when} "
    )
    return head.encode("ascii") + name


def _set_path_attrs(real: bytes, attrs: Attrs) -> None:
    if "size" in attrs:
        os.truncate(real, attrs["size"])
    if "uid" in attrs and "gid" in attrs:
        os.chown(real, attrs["uid"], attrs["gid"], follow_symlinks=False)
    if "permissions" in attrs:
        os.chmod(real, attrs["permissions"] & 0o7777)
    if "atime" in attrs and "mtime" in attrs:
        os.utime(real, (attrs["atime"], attrs["mtime"]), follow_symlinks=False)


@implementer(ISFTPFile)
class RootedFile:
    """An open file of the export. Methods block: the protocol runs them in its pool."""

    def __init__(self, fd: int, append: bool) -> None:
        self.fd = fd
        self.append = append

    def close(self) -> None:
        os.close(self.fd)

    def readChunk(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, min(length, MAX_READ_LENGTH), offset)

    def writeChunk(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            # With O_APPEND, Linux pwrite appends whatever the offset says, as SFTP wants.
            written = os.pwrite(self.fd, view, offset)
            view = view[written:]
            offset += written

    def getAttrs(self) -> Attrs:
        return attrs_from_stat(os.fstat(self.fd))

    def setAttrs(self, attrs: Attrs) -> None:
        if "size" in attrs:
            os.ftruncate(self.fd, attrs["size"])
        if "uid" in attrs and "gid" in attrs:
            os.fchown(self.fd, attrs["uid"], attrs["gid"])
        if "permissions" in attrs:
            os.fchmod(self.fd, attrs["permissions"] & 0o7777)
        if "atime" in attrs and "mtime" in attrs:
            os.utime(self.fd, (attrs["atime"], attrs["mtime"]))

    def fsync(self) -> None:
        os.fsync(self.fd)


class RootedDirectory:
    """A directory listing: an iterator of (name, longname, attrs), as Conch expects."""

    def __init__(
        self, real: bytes | None, names: list[bytes], fixed: dict[bytes, tuple[bytes, Attrs]]
    ) -> None:
        self._real = real
        self._names = names[::-1]  # popped from the end: O(1) per entry, in the given order
        self._fixed = fixed

    def __iter__(self) -> Iterator[tuple[bytes, bytes, Attrs]]:
        return self

    def __next__(self) -> tuple[bytes, bytes, Attrs]:
        while self._names:
            name = self._names.pop()
            if name in self._fixed:
                return name, *self._fixed[name]
            assert self._real is not None
            try:
                st = os.lstat(os.path.join(self._real, name))
            except OSError:
                continue  # removed since the listing was taken
            return name, longname(name, st), attrs_from_stat(st)
        raise StopIteration

    def close(self) -> None:
        self._names = []


@implementer(ISFTPServer)
class RootedFilesystem:
    """
    The export as an L{ISFTPServer}: every path is resolved inside C{root}.

    Paths are bytes on the wire and stay bytes here, so names that are not UTF-8 work.
    """

    def __init__(self, root: str | bytes) -> None:
        self.root: bytes = os.path.realpath(os.fsencode(root))
        # Conch's FileTransferServer adapts its avatar to ISFTPServer; we are both.
        self.avatar = self

    # -- path resolution ------------------------------------------------------------------

    def _real(self, comps: list[bytes]) -> bytes | None:
        """The host path of virtual components, or None when outside the export."""
        if not comps or comps[0] != EXPORT_NAME:
            return None
        return b"/".join([self.root, *comps[1:]]) if len(comps) > 1 else self.root

    def _walk(self, path: bytes, follow_last: bool) -> list[bytes]:
        """
        Resolve C{path} to virtual components, following symlinks inside the virtual tree.

        A missing last component is allowed (it may be about to be created); a missing or
        non-directory intermediate one is an error, as in the kernel.
        """
        if b"\0" in path:
            raise _oserror(errno.EINVAL)
        comps: list[bytes] = [] if path.startswith(b"/") else [EXPORT_NAME]
        todo = list(reversed(path.split(b"/")))
        links = 0
        while todo:
            part = todo.pop()
            if part in (b"", b"."):
                continue
            if part == b"..":
                if comps:
                    comps.pop()
                continue
            comps.append(part)
            last = all(p in (b"", b".") for p in todo)
            if last and not follow_last:
                continue
            real = self._real(comps)
            if real is None:
                if last:
                    continue
                raise _oserror(errno.ENOENT)
            try:
                st = os.lstat(real)
            except FileNotFoundError:
                if last:
                    continue
                raise
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_SYMLINKS:
                    raise _oserror(errno.ELOOP)
                target = os.readlink(real)
                comps.pop()
                if target.startswith(b"/"):
                    comps = []
                todo.extend(reversed(target.split(b"/")))
            elif not last and not stat.S_ISDIR(st.st_mode):
                raise _oserror(errno.ENOTDIR)
        return comps

    def _path(self, path: bytes, follow: bool = True) -> bytes:
        """The confined host path for C{path}; the virtual tree above the export is refused."""
        comps = self._walk(path, follow)
        real = self._real(comps)
        if real is None:
            # "/" and its direct children are read-only; deeper paths simply don't exist.
            raise _oserror(errno.EACCES if len(comps) <= 1 else errno.ENOENT)
        # Belt and braces against a symlink swapped in since the walk: the kernel's view of
        # the parent must still be inside the root.
        check = real if follow or real == self.root else os.path.dirname(real)
        resolved = os.path.realpath(check)
        if resolved != self.root and not resolved.startswith(self.root + b"/"):
            raise _oserror(errno.EACCES)
        return real

    def _mutable_path(self, path: bytes) -> bytes:
        """A path that may be removed, renamed or created: never the export root itself."""
        real = self._path(path, follow=False)
        if real == self.root:
            raise _oserror(errno.EACCES)
        return real

    def _is_virtual_root(self, path: bytes, follow: bool = True) -> bool:
        return self._walk(path, follow) == []

    def _root_attrs(self) -> Attrs:
        attrs = attrs_from_stat(os.stat(self.root))
        attrs["permissions"] = stat.S_IFDIR | 0o555
        return attrs

    # -- ISFTPServer ----------------------------------------------------------------------

    def gotVersion(self, otherVersion: int, extData: dict[bytes, bytes]) -> dict[bytes, bytes]:
        return dict(EXTENSIONS)

    def openFile(self, filename: bytes, flags: int, attrs: Attrs) -> RootedFile:
        want_read = bool(flags & FXF_READ)
        want_write = bool(flags & FXF_WRITE)
        if want_write:
            mode = os.O_RDWR if want_read else os.O_WRONLY
        else:
            mode = os.O_RDONLY
        if flags & FXF_APPEND:
            mode |= os.O_APPEND
        if flags & FXF_CREAT:
            mode |= os.O_CREAT
            if flags & FXF_EXCL:
                mode |= os.O_EXCL
        if flags & FXF_TRUNC:
            mode |= os.O_TRUNC
        exclusive = bool(mode & os.O_EXCL)
        # O_EXCL must see a symlink itself (even a dangling one) as "exists", like open(2).
        real = self._path(filename, follow=not exclusive)
        perms = attrs.get("permissions", 0o666) & 0o7777
        # O_NONBLOCK: a FIFO in the export would otherwise make open wait for a peer, on the
        # reactor thread, and the whole agent would hang (SIGTERM included). Regular files
        # are made blocking again; reads and writes of a FIFO fail anyway (pread: ESPIPE).
        fd = os.open(real, mode | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, perms)
        try:
            st_mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(st_mode):
                raise _oserror(errno.EISDIR)
            if stat.S_ISREG(st_mode):
                os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return RootedFile(fd, append=bool(flags & FXF_APPEND))

    def removeFile(self, filename: bytes) -> None:
        os.unlink(self._mutable_path(filename))

    def renameFile(self, oldpath: bytes, newpath: bytes) -> None:
        # SFTP v3 rename does not overwrite (posix-rename@openssh.com does).
        old, new = self._mutable_path(oldpath), self._mutable_path(newpath)
        if os.path.lexists(new):
            raise _oserror(errno.EEXIST)
        os.rename(old, new)

    def posixRename(self, oldpath: bytes, newpath: bytes) -> None:
        os.rename(self._mutable_path(oldpath), self._mutable_path(newpath))

    def makeDirectory(self, path: bytes, attrs: Attrs) -> None:
        os.mkdir(self._mutable_path(path), attrs.get("permissions", 0o777) & 0o7777)

    def removeDirectory(self, path: bytes) -> None:
        os.rmdir(self._mutable_path(path))

    def openDirectory(self, path: bytes) -> RootedDirectory:
        if self._is_virtual_root(path):
            st = os.stat(self.root)
            entry = (longname(EXPORT_NAME, st), attrs_from_stat(st))
            return RootedDirectory(None, [EXPORT_NAME], {EXPORT_NAME: entry})
        real = self._path(path)
        return RootedDirectory(real, sorted(os.listdir(real)), {})

    def getAttrs(self, path: bytes, followLinks: bool) -> Attrs:
        if self._is_virtual_root(path, bool(followLinks)):
            return self._root_attrs()
        # lstat even when following: the walk already resolved every link we allow.
        return attrs_from_stat(os.lstat(self._path(path, follow=bool(followLinks))))

    def setAttrs(self, path: bytes, attrs: Attrs) -> None:
        _set_path_attrs(self._path(path), attrs)

    def readLink(self, path: bytes) -> bytes:
        return os.readlink(self._path(path, follow=False))

    def makeLink(self, linkPath: bytes, targetPath: bytes) -> None:
        # The target is stored verbatim; following it later stays confined by _walk.
        if b"\0" in targetPath:
            raise _oserror(errno.EINVAL)
        os.symlink(targetPath, self._mutable_path(linkPath))

    def realPath(self, path: bytes) -> bytes:
        return b"/" + b"/".join(self._walk(path, follow_last=True))

    def statvfs(self, path: bytes) -> bytes:
        """The reply body of ``statvfs@openssh.com``: eleven uint64s, as OpenSSH sends."""
        real = self.root if self._is_virtual_root(path) else self._path(path)
        st = os.statvfs(real)
        return struct.pack(
            "!11Q",
            st.f_bsize,
            st.f_frsize,
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_favail,
            st.f_fsid,
            st.f_flag & (os.ST_RDONLY | os.ST_NOSUID),
            st.f_namemax,
        )

    def hardLink(self, oldpath: bytes, newpath: bytes) -> None:
        os.link(self._mutable_path(oldpath), self._mutable_path(newpath), follow_symlinks=False)

    def extendedRequest(self, extName: bytes, extData: bytes) -> bytes:
        if extName == b"posix-rename@openssh.com":
            old, pos = _get_string(extData, 0)
            new, pos = _get_string(extData, pos)
            _expect_end(extData, pos)
            self.posixRename(old, new)
            return b""
        if extName == b"hardlink@openssh.com":
            old, pos = _get_string(extData, 0)
            new, pos = _get_string(extData, pos)
            _expect_end(extData, pos)
            self.hardLink(old, new)
            return b""
        if extName == b"statvfs@openssh.com":
            path, pos = _get_string(extData, 0)
            _expect_end(extData, pos)
            return self.statvfs(path)
        raise NotImplementedError(f"unsupported extension {extName!r}")


# Extensions whose reply is a plain FX_OK status rather than SSH_FXP_EXTENDED_REPLY.
_STATUS_EXTENSIONS = {b"posix-rename@openssh.com", b"hardlink@openssh.com"}

_READ, _WRITE, _BARRIER = 0, 1, 2
_EOF_OFFSET = 2**64


def _whole_file(fileObj: object) -> tuple[int, int]:
    """The span of a request that orders against every other on its handle."""
    return 0, _EOF_OFFSET


class _PendingOp:
    __slots__ = ("kind", "start", "end", "waiters")

    def __init__(self, kind: int, start: int, end: int) -> None:
        self.kind = kind
        self.start = start
        self.end = end
        self.waiters: list[Deferred[None]] = []

    def conflicts(self, other: _PendingOp) -> bool:
        if self.kind == _BARRIER or other.kind == _BARRIER:
            return True
        if self.kind == _READ and other.kind == _READ:
            return False
        return self.start < other.end and other.start < self.end


class _HandleQueue:
    """
    Orders the requests of one handle: a request waits for earlier ones it conflicts with
    (overlapping ranges with a write, or a barrier such as close), others run at once.
    """

    def __init__(self) -> None:
        self._pending: list[_PendingOp] = []

    def __len__(self) -> int:
        return len(self._pending)

    def submit(
        self, kind: int, start: int, end: int, run: Callable[[], Deferred[_T]]
    ) -> Deferred[_T]:
        op = _PendingOp(kind, start, end)
        blockers = [p for p in self._pending if p.conflicts(op)]
        self._pending.append(op)
        d: Deferred[_T]
        if blockers:
            waits: list[Deferred[None]] = []
            for blocker in blockers:
                w: Deferred[None] = Deferred()
                blocker.waiters.append(w)
                waits.append(w)
            d = defer.gatherResults(waits).addCallback(lambda _: run())
        else:
            d = run()
        return d.addBoth(self._finish, op)

    def _finish(self, result: _T, op: _PendingOp) -> _T:
        self._pending.remove(op)
        for w in op.waiters:
            w.callback(None)
        return result


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
        run_io: IORunner = run_inline,
        max_inflight: int = MAX_INFLIGHT,
    ) -> None:
        super().__init__(avatar=filesystem)
        self.filesystem = filesystem
        self._run_io = run_io
        self._max_inflight = max_inflight
        self._inbuf = bytearray()
        self._inflight = 0
        self._queues: dict[bytes, _HandleQueue] = {}
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

    def _queue(self, handle: bytes) -> _HandleQueue:
        queue = self._queues.get(handle)
        if queue is None:
            queue = self._queues[handle] = _HandleQueue()
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

        d = queue.submit(_BARRIER, 0, _EOF_OFFSET, lambda: defer.maybeDeferred(fileObj.close))
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
        handle, pos = _get_string(data, 4)
        if len(data) != pos + 12:
            raise BadMessage("bad READ")
        offset, length = struct.unpack_from("!QL", data, pos)
        length = min(length, MAX_READ_LENGTH)
        self._on_file(
            requestId,
            handle,
            b"read",
            _READ,
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
        handle, pos = _get_string(data, 4)
        if len(data) < pos + 8:
            raise BadMessage("bad WRITE")
        (offset,) = struct.unpack_from("!Q", data, pos)
        chunk, pos = _get_string(data, pos + 8)
        _expect_end(data, pos)
        self._on_file(
            requestId,
            handle,
            b"write",
            _WRITE,
            lambda f: (0, _EOF_OFFSET) if f.append else (offset, offset + len(chunk)),
            lambda f: self._run_io(lambda: f.writeChunk(offset, chunk)),
        )

    def packet_FSTAT(self, data: bytes) -> None:
        requestId = data[:4]
        handle, pos = _get_string(data, 4)
        _expect_end(data, pos)
        self._on_file(
            requestId,
            handle,
            b"fstat",
            _READ,
            _whole_file,
            lambda f: defer.maybeDeferred(f.getAttrs),
            self._cbStat,
        )

    def packet_FSETSTAT(self, data: bytes) -> None:
        requestId = data[:4]
        handle, pos = _get_string(data, 4)
        attrs, rest = self._parseAttributes(data[pos:])
        if rest:
            raise BadMessage("trailing bytes in FSETSTAT")
        self._on_file(
            requestId,
            handle,
            b"fsetstat",
            _BARRIER,
            _whole_file,
            lambda f: self._run_io(lambda: f.setAttrs(attrs)),
        )

    def packet_CLOSE(self, data: bytes) -> None:
        requestId = data[:4]
        handle, pos = _get_string(data, 4)
        _expect_end(data, pos)
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
        extName, pos = _get_string(data, 4)
        extData = data[pos:]
        if extName == b"fsync@openssh.com":
            handle, end = _get_string(extData, 0)
            _expect_end(extData, end)
            self._on_file(
                requestId,
                handle,
                b"fsync",
                _BARRIER,
                _whole_file,
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
        targetPath, pos = _get_string(data, 4)
        linkPath, pos = _get_string(data, pos)
        _expect_end(data, pos)
        d = defer.maybeDeferred(self.filesystem.makeLink, linkPath, targetPath)
        d.addCallback(self._send_status_ok, requestId, b"symlink succeeded")
        d.addErrback(self._ebStatus, requestId, b"symlink failed")


class AgentFactory(Factory):
    """Serves the export at C{root} to every connection; C{run_io} runs file I/O."""

    def __init__(self, root: str | bytes, run_io: IORunner = run_inline) -> None:
        self.root = root
        self.run_io = run_io

    def buildProtocol(self, addr: IAddress | None) -> AgentProtocol:
        proto = AgentProtocol(RootedFilesystem(self.root), self.run_io)
        proto.factory = self
        return proto


class Options(usage.Options):
    synopsis = "--root DIR [--listen ENDPOINT]"
    longdesc = (
        "Serve DIR over raw SFTP (no SSH) as /tel_app_exports, like a Telepresence traffic-agent."
    )
    optParameters = [
        ["root", None, None, "Directory to export (required).", str],
        ["listen", None, "tcp:8022", "Endpoint to listen on.", str],
        ["threads", None, 8, "File I/O threads.", int],
    ]

    def postOptions(self) -> None:
        root = self["root"]
        if not root:
            raise usage.UsageError("--root DIR is required")
        if not os.path.isdir(root):
            raise usage.UsageError(f"--root {root!r} is not an existing directory")
        if self["threads"] < 1:
            raise usage.UsageError("--threads must be at least 1")


def makeService(options: Options, reactor: IReactorCore | None = None) -> service.MultiService:
    """The ``sftp-agent`` app: the thread pool, then the listener (stopped in reverse)."""
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = cast(IReactorCore, _reactor)
    pool = ThreadPool(minthreads=0, maxthreads=options["threads"], name="sftp-agent-io")
    top = service.MultiService()
    ThreadPoolService(pool).setServiceParent(top)
    runner = threadpool_runner(cast(IReactorFromThreads, reactor), pool)
    factory = AgentFactory(options["root"], runner)
    strports.service(options["listen"], factory, reactor=reactor).setServiceParent(top)
    return top


__all__ = [
    "EXPORT_NAME",
    "EXTENSIONS",
    "AgentFactory",
    "AgentProtocol",
    "IORunner",
    "Options",
    "RootedFile",
    "RootedFilesystem",
    "makeService",
    "run_inline",
    "threadpool_runner",
]
