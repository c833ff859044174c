"""
Test doubles for the SFTP client and filesystem tests.

- ``ConchRootedServer``: Conch's own ``FileTransferServer`` with a tiny avatar rooted in a
  directory (the plain Conch flavour: no extensions, SYMLINK in draft order).
- ``SFTPPair``: an ``SFTPClient`` (on a ``task.Clock``) joined to a server in memory by iosim.
- ``FakeSFTPClient`` / ``FakeSource``: an in-memory SFTP server behind the client API the
  filesystem uses, with switches to hold, shorten or fail answers and to "lose" the connection.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from twisted.conch.interfaces import ISFTPServer
from twisted.conch.ssh import filetransfer as ft
from twisted.conch.unix import SFTPServerForUnixConchUser
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from telenet.sftp.client import SFTPClient
from telenet.sftp.codec import FAKE_STATVFS, MAX_CHUNK, FileAttrs, NameEntry, StatVFS
from telenet.sftp.errors import SFTPNotConnected, SFTPStatusError

# -- a real Conch server, rooted -----------------------------------------------------------------


_T = TypeVar("_T")


class _Avatar:
    """Just enough of a UnixConchUser for SFTPServerForUnixConchUser, without user switching."""

    def __init__(self, root: str) -> None:
        self.root = root

    def getHomeDir(self) -> str:
        return self.root

    def _runAsUser(self, f: Any, *args: Any, **kw: Any) -> Any:
        if isinstance(f, list):
            result = None
            for func, fargs in f:
                result = func(*fargs)
            return result
        return f(*args, **kw)


@implementer(ISFTPServer)
class ConchRootedServer(SFTPServerForUnixConchUser):
    """Conch's Unix SFTP server with "/" mapped to ``root`` (``..`` cannot climb out)."""

    def __init__(self, root: str) -> None:
        super().__init__(_Avatar(root))
        self.root = root

    def _absPath(self, path: bytes | str) -> bytes:
        virtual = os.path.normpath(b"/" + os.fsencode(path)).lstrip(b"/")
        return os.path.join(os.fsencode(self.root), virtual)

    def realPath(self, path: bytes | str) -> bytes:
        rel = os.path.relpath(self._absPath(path), os.fsencode(self.root))
        return b"/" if rel == b"." else b"/" + rel

    def makeLink(self, linkPath: bytes, targetPath: bytes) -> None:
        # Conch would make the target absolute; keep it as given, like a POSIX symlink.
        os.symlink(targetPath, self._absPath(linkPath))


class Pumped:
    """Answers of Deferreds that settle once an iosim ``pump`` has moved every byte."""

    pump: iosim.IOPump

    def fire(self, d: Deferred[Any]) -> list[Any]:
        box: list[Any] = []
        d.addBoth(box.append)
        self.pump.flush()
        return box

    def wait(self, d: Deferred[_T]) -> _T:
        box = self.fire(d)
        assert box, "no answer from the server"
        if isinstance(box[0], Failure):
            box[0].raiseException()
        return cast(_T, box[0])

    def error(self, d: Deferred[Any]) -> BaseException:
        box = self.fire(d)
        assert box and isinstance(box[0], Failure), f"expected a failure, got {box}"
        return box[0].value


class SFTPPair(Pumped):
    """An ``SFTPClient`` and a Conch server joined by iosim; ``wait`` pumps until an answer."""

    def __init__(
        self,
        root: str,
        timeout: float = 10.0,
        keepalive: float = 5.0,
        avatar: ConchRootedServer | None = None,
    ) -> None:
        self.clock = task.Clock()
        self.server = ft.FileTransferServer(avatar=avatar or ConchRootedServer(root))
        self.client = SFTPClient(self.clock, timeout=timeout, keepalive=keepalive)
        self.serverTransport = iosim.makeFakeServer(self.server)
        self.clientTransport = iosim.makeFakeClient(self.client)
        self.pump = iosim.connect(
            self.server,
            self.serverTransport,
            self.client,
            self.clientTransport,
            greet=False,
            clock=self.clock,
        )
        self.pump.flush()


# -- an in-memory SFTP client for the filesystem ---------------------------------------------


class _Entry:
    def __init__(self, mode: int, data: bytes = b"", target: bytes = b"") -> None:
        self.mode = mode
        self.data = bytearray(data)
        self.target = target
        self.uid = 1000
        self.gid = 1000
        self.mtime = int(time.time())
        self.atime = self.mtime

    def attrs(self) -> FileAttrs:
        size = len(self.target) if stat.S_ISLNK(self.mode) else len(self.data)
        return FileAttrs(size, self.uid, self.gid, self.mode, self.atime, self.mtime)


class FakeSFTPClient:
    """
    An in-memory SFTP server behind ``SFTPClient``'s API (the subset the filesystem uses).

    Answers are immediate unless ``hold_reads`` / ``hold_writes`` is set; then they wait in
    ``held`` until ``release()``. ``read_cap`` shortens READ answers; ``kill()`` loses the
    "connection": everything held fails and later calls fail with ConnectionLost.
    """

    def __init__(self, tree: dict[bytes, _Entry] | None = None) -> None:
        self.tree: dict[bytes, _Entry] = (
            tree if tree is not None else {b"/": _Entry(stat.S_IFDIR | 0o755)}
        )
        self.maxRead = MAX_CHUNK
        self.maxWrite = MAX_CHUNK
        self.alive = True
        self.canNoReplaceRename = True
        self.canLsetstat = True
        self.hold_reads = False
        self.hold_writes = False
        self.read_cap: int | None = None
        self.fail_writes: int | None = None  # an FX_ code to answer every WRITE with
        self.fail_setstat: int | None = None  # and every SETSTAT and FSETSTAT
        self.held: list[tuple[Deferred[Any], Callable[[], Any]]] = []
        self.calls: list[tuple[Any, ...]] = []
        self.handles: dict[bytes, tuple[bytes, int]] = {}
        self._next = 0

    # building trees
    def mkdirs(self, path: bytes) -> None:
        parts = path.strip(b"/").split(b"/")
        for i in range(1, len(parts) + 1):
            p = b"/" + b"/".join(parts[:i])
            self.tree.setdefault(p, _Entry(stat.S_IFDIR | 0o755))

    def put(self, path: bytes, data: bytes, mode: int = 0o644) -> None:
        self.mkdirs(os.path.dirname(path))
        self.tree[path] = _Entry(stat.S_IFREG | mode, data)

    def data(self, path: bytes) -> bytes:
        return bytes(self.tree[path].data)

    # switches
    def release(self, error: BaseException | None = None) -> None:
        held, self.held = self.held, []
        for d, answer in held:
            if error is not None:
                d.errback(error)
            else:
                try:
                    d.callback(answer())
                except SFTPStatusError as e:
                    d.errback(e)

    def kill(self) -> None:
        self.alive = False
        self.release(ConnectionLost("fake connection lost"))

    def _answer(self, answer: Callable[[], Any], hold: bool = False) -> Deferred[Any]:
        if not self.alive:
            return defer.fail(ConnectionLost("fake connection lost"))
        if hold:
            d: Deferred[Any] = Deferred()
            self.held.append((d, answer))
            return d
        try:
            return defer.succeed(answer())
        except SFTPStatusError as e:
            return defer.fail(e)

    def _get(self, path: bytes) -> _Entry:
        entry = self.tree.get(path)
        if entry is None:
            raise SFTPStatusError(ft.FX_NO_SUCH_FILE, "No such file")
        return entry

    def _follow(self, path: bytes) -> _Entry:
        entry = self._get(path)
        for _ in range(40):
            if not stat.S_ISLNK(entry.mode):
                return entry
            target = entry.target
            if not target.startswith(b"/"):
                target = os.path.normpath(os.path.join(os.path.dirname(path), target))
            path = target
            entry = self._get(path)
        raise SFTPStatusError(ft.FX_FAILURE, "Too many levels of symbolic links")

    def _parent_ok(self, path: bytes) -> None:
        parent = self.tree.get(os.path.dirname(path))
        if parent is None or not stat.S_ISDIR(parent.mode):
            raise SFTPStatusError(ft.FX_NO_SUCH_FILE, "No such file")

    # the API
    def stat(self, path: bytes) -> Deferred[FileAttrs]:
        self.calls.append(("stat", path))
        return self._answer(lambda: self._follow(path).attrs())

    def lstat(self, path: bytes) -> Deferred[FileAttrs]:
        self.calls.append(("lstat", path))
        return self._answer(lambda: self._get(path).attrs())

    def lsetstat(self, path: bytes, attrs: FileAttrs, lazy: bool = False) -> Deferred[None]:
        return self.setstat(path, attrs, follow=False)

    def setstat(
        self, path: bytes, attrs: FileAttrs, follow: bool = True, lazy: bool = False
    ) -> Deferred[None]:
        self.calls.append(("setstat" if follow else "lsetstat", path, attrs))
        return self._answer(
            lambda: self._set(self._follow(path) if follow else self._get(path), attrs)
        )

    def fsetstat(self, handle: bytes, attrs: FileAttrs, lazy: bool = False) -> Deferred[None]:
        path, _ = self.handles.get(handle, (b"", 0))
        self.calls.append(("fsetstat", path, attrs))
        return self._answer(lambda: self._set(self._get(path), attrs))

    def _set(self, e: _Entry, attrs: FileAttrs) -> None:
        if self.fail_setstat is not None:
            raise SFTPStatusError(self.fail_setstat, "setstat refused")
        _apply(e, attrs)

    def open(
        self, path: bytes, flags: int, attrs: FileAttrs | None = None, lazy: bool = False
    ) -> Deferred[bytes]:
        self.calls.append(("open", path, flags))

        def do() -> bytes:
            entry = self.tree.get(path)
            if entry is None:
                if not flags & ft.FXF_CREAT:
                    raise SFTPStatusError(ft.FX_NO_SUCH_FILE, "No such file")
                self._parent_ok(path)
                mode = attrs.permissions if attrs and attrs.permissions is not None else 0o644
                entry = self.tree[path] = _Entry(stat.S_IFREG | stat.S_IMODE(mode))
            elif flags & ft.FXF_EXCL:
                raise SFTPStatusError(ft.FX_FAILURE, "File exists")
            if flags & ft.FXF_TRUNC:
                del entry.data[:]
            self._next += 1
            handle = b"h%d" % self._next
            self.handles[handle] = (path, flags)
            return handle

        return self._answer(do)

    def close(self, handle: bytes, soon: bool = False) -> Deferred[None]:
        self.calls.append(("close", handle))
        return self._answer(lambda: self.handles.pop(handle, None) and None)

    def read(self, handle: bytes, offset: int, length: int) -> Deferred[bytes]:
        self.calls.append(("read", handle, offset, length))

        def do() -> bytes:
            path, flags = self.handles[handle]
            data = self.tree[path].data[offset : offset + min(length, self.read_cap or length)]
            return bytes(data)

        return self._answer(do, self.hold_reads)

    def write(self, handle: bytes, offset: int, data: bytes | memoryview) -> Deferred[None]:
        self.calls.append(("write", handle, offset, len(data)))
        chunk = bytes(data)

        def do() -> None:
            if self.fail_writes is not None:
                raise SFTPStatusError(self.fail_writes, "write refused")
            path, flags = self.handles[handle]
            buf = self.tree[path].data
            if len(buf) < offset:
                buf.extend(b"\0" * (offset - len(buf)))
            buf[offset : offset + len(chunk)] = chunk

        return self._answer(do, self.hold_writes)

    def writeChunks(self, handle: bytes, offset: int, data: bytes) -> list[Deferred[None]]:
        step = self.maxWrite
        return [
            self.write(handle, offset + i, data[i : i + step]) for i in range(0, len(data), step)
        ]

    def listdir(self, path: bytes) -> Deferred[list[NameEntry]]:
        self.calls.append(("listdir", path))

        def do() -> list[NameEntry]:
            if not stat.S_ISDIR(self._follow(path).mode):
                raise SFTPStatusError(ft.FX_FAILURE, "Not a directory")
            prefix = path.rstrip(b"/") + b"/"
            return [
                NameEntry(p[len(prefix) :], b"", e.attrs())
                for p, e in sorted(self.tree.items())
                if p.startswith(prefix) and b"/" not in p[len(prefix) :] and p != prefix
            ]

        return self._answer(do)

    def mkdir(self, path: bytes, attrs: FileAttrs | None = None) -> Deferred[None]:
        self.calls.append(("mkdir", path))

        def do() -> None:
            if path in self.tree:
                raise SFTPStatusError(ft.FX_FAILURE, "Failure")
            self._parent_ok(path)
            mode = attrs.permissions if attrs and attrs.permissions is not None else 0o755
            self.tree[path] = _Entry(stat.S_IFDIR | mode)

        return self._answer(do)

    def rmdir(self, path: bytes) -> Deferred[None]:
        self.calls.append(("rmdir", path))

        def do() -> None:
            self._get(path)
            if any(p.startswith(path + b"/") for p in self.tree):
                raise SFTPStatusError(ft.FX_FAILURE, "Failure")  # like OpenSSH: no errno
            del self.tree[path]

        return self._answer(do)

    def remove(self, path: bytes) -> Deferred[None]:
        self.calls.append(("remove", path))

        def do() -> None:
            self._get(path)
            del self.tree[path]

        return self._answer(do)

    def rename(self, old: bytes, new: bytes, overwrite: bool = True) -> Deferred[None]:
        self.calls.append(("rename", old, new, overwrite))

        def do() -> None:
            self._get(old)
            if new in self.tree and not overwrite:
                raise SFTPStatusError(ft.FX_FAILURE, "Failure")
            for p in sorted(self.tree):
                if p == old or p.startswith(old + b"/"):
                    self.tree[new + p[len(old) :]] = self.tree.pop(p)

        return self._answer(do)

    def symlink(self, linkpath: bytes, target: bytes) -> Deferred[None]:
        self.calls.append(("symlink", linkpath, target))

        def do() -> None:
            if linkpath in self.tree:
                raise SFTPStatusError(ft.FX_FAILURE, "Failure")
            self.tree[linkpath] = _Entry(stat.S_IFLNK | 0o777, target=target)

        return self._answer(do)

    def readlink(self, path: bytes) -> Deferred[bytes]:
        self.calls.append(("readlink", path))
        return self._answer(lambda: self._get(path).target)

    def hardlink(self, old: bytes, new: bytes) -> Deferred[None]:
        self.calls.append(("hardlink", old, new))

        def do() -> None:
            self.tree[new] = self._get(old)

        return self._answer(do)

    def statvfs(self, path: bytes) -> Deferred[StatVFS]:
        self.calls.append(("statvfs", path))
        return self._answer(lambda: FAKE_STATVFS)

    def fsync(self, handle: bytes) -> Deferred[None]:
        self.calls.append(("fsync", handle))
        return self._answer(lambda: None)


class FakeSource:
    """A connection manager stand-in: ``client`` is the live connection, or None."""

    def __init__(self, client: FakeSFTPClient | None) -> None:
        self.client = client
        self.label = "127.0.0.1:2222"
        self.since = 1234.5

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.alive

    def current(self) -> Any:
        if self.client is None or not self.client.alive:
            raise SFTPNotConnected(f"{self.label} is not connected: test")
        return self.client


def _apply(e: _Entry, attrs: FileAttrs) -> None:
    """A SETSTAT's changes to ``e``."""
    if attrs.size is not None:
        del e.data[attrs.size :]
        e.data.extend(b"\0" * (attrs.size - len(e.data)))
    if attrs.permissions is not None:
        e.mode = stat.S_IFMT(e.mode) | stat.S_IMODE(attrs.permissions)
    if attrs.uid is not None:
        e.uid, e.gid = attrs.uid, attrs.gid or 0
    if attrs.mtime is not None:
        e.atime, e.mtime = attrs.atime or 0, attrs.mtime
