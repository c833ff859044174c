# -*- test-case-name: tests.test_sftpfs -*-
"""
The telemount FUSE filesystem, and the mount helper process that serves it.

pyfuse3 serves one mount per process, so the volume plug-in runs one helper per SFTP server::

    python -m telenet.fuse.helper --host H --port P --mountpoint MP --control SOCK
                             [--log-file F] [--timeout SECONDS]

The mount root lists one directory per volume; volume ``NAME`` is ``MP/NAME`` and shows a
remote directory, read-only or writable. The plug-in adds and removes volumes over the control
socket ``SOCK`` (newline-delimited JSON, one answer line per request line):

- ``{"op": "add", "name": N, "path": "/remote/dir", "ro": false}`` → ``{"ok": true}``
- ``{"op": "remove", "name": N}`` → ``{"ok": true}``
- ``{"op": "status"}`` → ``{"ok": true, "pid", "host", "port", "mountpoint", "connected",
  "volumes": {N: {"path", "ro"}}, "since"}``
- ``{"op": "shutdown"}`` → ``{"ok": true}``, then unmount and exit 0.

Failures answer ``{"ok": false, "error": "..."}``. The helper prints one JSON line on stdout
when it is ready (``{"ready": true, "pid": PID}``) or cannot start (``{"error": "..."}``,
exit 1), then logs only to the log file.

pyfuse3 runs in asyncio mode on Twisted's asyncio reactor: FUSE handlers, the SFTP client and
the control socket share one loop and one thread, so nothing here may block.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextvars
import errno
import functools
import json
import logging
import os
import socket
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

import pyfuse3
from pyfuse3 import EntryAttributes, FileInfo, FUSEError, StatvfsData
from twisted.conch.ssh import filetransfer as ft
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from telenet.core.aio import as_deferred, as_future
from telenet.core.gocompat import host_port
from telenet.core.internals import patch_pyfuse3_waiting, reactor_loop, task_running
from telenet.sftp.client import SFTPClient
from telenet.sftp.codec import FileAttrs, NameEntry
from telenet.sftp.errors import SFTPNotConnected as NotConnected
from telenet.sftp.errors import SFTPStatusError, error_to_errno
from telenet.sftp.transfer import PipelinedWriter, ReadAhead

__all__ = ["ControlFactory", "MountControl", "SFTPOperations", "Volume", "main"]

log = Logger(namespace="telenet.fuse.helper")
P = ParamSpec("P")
R = TypeVar("R")

ROOT_INODE = pyfuse3.ROOT_INODE
# Errors that are the server's or the network's, not bugs.
_EXPECTED = (SFTPStatusError, ConnectionError, ConnectionLost, defer.TimeoutError)
#: Seconds the kernel (and we) may trust a name or attributes; short, the server is shared.
ENTRY_TIMEOUT = 1.0
ATTR_TIMEOUT = 1.0
#: Seconds the kernel may remember that a name does not exist.
NEGATIVE_TIMEOUT = 1.0
#: Per open file: bytes of READs kept in flight ahead of a sequential reader.
READAHEAD_WINDOW = 8 << 20
#: Per open file: bytes of WRITEs sent but not yet answered before a writer has to wait.
WRITE_BEHIND = 8 << 20
#: Files up to this size opened for reading are read whole at open, ahead of the kernel.
PREFETCH_MAX = 128 << 10
_PAGE = 4096
#: Kernel read-ahead for the mount (KiB), so sequential reads come in big requests.
KERNEL_READAHEAD_KB = 1024
_BLKSIZE = 131072
#: Seconds after which a file's mtime is "settled" for keeping its cached pages.
SETTLED = 60.0
#: A reader opening a directory's small files one after the other (in listing or name order)
#: has this many of the next ones fetched ahead (OPEN and READ pipelined, in batches)...
AHEAD_FILES = 16
#: ... and all walks together at most this many files and bytes (the oldest make room).
AHEAD_TOTAL = 64
AHEAD_BYTES = 4 << 20
#: The cyclic garbage collector's thresholds (Python's are 700, 10, 10): fewer, cheaper runs.
GC_THRESHOLDS = (10_000, 20, 20)
#: Entries a FUSE readdir waits for before answering (unless the listing is complete).
READDIR_REPLY = 384
#: Directory listings remembered to guess the next file from, and the largest one kept.
LISTINGS = 8
LISTING_MAX = 4096


class ConnectionSource(Protocol):
    """Where the filesystem gets its SFTP connection (an ``SFTPConnectionManager``)."""

    label: str
    since: float

    @property
    def connected(self) -> bool: ...

    def current(self) -> SFTPClient: ...


def _fuse_op(
    failure_errno: int = errno.EIO,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """
    Turn every exception of a FUSE handler into a FUSEError.

    pyfuse3 lets anything else escape into its main loop, which would leave the kernel request
    unanswered (and its caller stuck in D state). ``failure_errno`` is what a bare SFTP
    FX_FAILURE most likely means for this operation.
    """

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(fn)
        async def handler(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(*args, **kwargs)
            except Exception as e:
                raise _fuse_error(e, failure_errno) from None

        return handler

    return decorate


def _fuse_error(exc: BaseException, failure_errno: int = errno.EIO) -> FUSEError:
    """The FUSEError for ``exc``; anything unexpected is logged (it is a bug)."""
    if isinstance(exc, FUSEError):
        return exc
    if not isinstance(exc, _EXPECTED):
        log.failure(
            "unexpected error in a FUSE handler", Failure(exc, type(exc), exc.__traceback__)
        )
    return FUSEError(error_to_errno(exc, failure_errno))


class Volume:
    """A remote directory shown as ``<mountpoint>/<name>``."""

    __slots__ = ("name", "bname", "path", "prefix", "ro", "vid", "root", "removed")

    def __init__(self, name: str, path: str, ro: bool, vid: int) -> None:
        self.name = name
        self.bname = os.fsencode(name)
        self.path = os.fsencode(path)
        # Remote path of a child is prefix + b"/" + relative path ("/" itself has no prefix).
        self.prefix = self.path.rstrip(b"/")
        self.ro = ro
        self.vid = vid
        self.removed = False
        self.root: _Node  # set right after by the filesystem

    def remote(self, rel: bytes) -> bytes:
        return self.prefix + b"/" + rel if rel else self.path


class _Node:
    """An inode: one (volume, relative path) the kernel knows about."""

    __slots__ = (
        "ino",
        "vol",
        "rel",
        "lookups",
        "entry",
        "attrs",
        "expires",
        "handles",
        "opened",
        "detached",
    )

    def __init__(self, ino: int, vol: Volume, rel: bytes) -> None:
        self.ino = ino
        self.vol = vol
        self.rel = rel
        self.lookups = 0
        self.entry: EntryAttributes | None = None
        self.attrs: FileAttrs | None = None
        self.expires = 0.0
        self.handles: set[_FileHandle] = set()
        self.opened: tuple[int | None, int | None] | None = None  # (mtime, size) at last open
        self.detached = False  # unlinked or renamed over: its path means something else now

    @property
    def remote(self) -> bytes:
        return self.vol.remote(self.rel)


class _FileHandle:
    """An open file: reopened lazily on a new connection after a reconnect."""

    __slots__ = (
        "fh",
        "node",
        "flags",
        "client",
        "handle",
        "reader",
        "writer",
        "error",
        "reopening",
        "wrote",
    )

    def __init__(self, fh: int, node: _Node, flags: int, client: SFTPClient, handle: bytes):
        self.fh = fh
        self.node = node
        self.flags = flags  # SFTP FXF_* flags to reopen with (no CREAT/TRUNC/EXCL)
        self.client = client
        self.handle = handle
        self.reader: ReadAhead | None = None
        self.writer: PipelinedWriter | None = None
        self.error: int | None = None  # sticky errno: writes were lost
        self.reopening: asyncio.Future[None] | None = None
        self.wrote = False


class _Listing:
    """A directory's entries as last listed: the orders a reader may walk its files in."""

    __slots__ = ("names", "attrs", "pos", "by_name", "name_pos", "last", "order", "cursor")

    def __init__(self, entries: list[tuple[bytes, FileAttrs]]) -> None:
        self.names = [name for name, _ in entries]
        self.attrs = {name: attrs for name, attrs in entries}
        self.pos = {name: i for i, name in enumerate(self.names)}
        self.by_name: list[bytes] | None = None  # sorted when first needed
        self.name_pos: dict[bytes, int] = {}
        self.last: bytes | None = None  # the file opened last
        self.order: list[bytes] | None = None  # the order the reader follows, once seen
        self.cursor = 0  # where in ``order`` the next file to fetch is

    def sorted_names(self) -> list[bytes]:
        if self.by_name is None:
            self.by_name = sorted(self.names)
            self.name_pos = {name: i for i, name in enumerate(self.by_name)}
        return self.by_name


class _Ahead:
    """A small file fetched ahead of its open: the handle and bytes, once they arrive."""

    __slots__ = (
        "client",
        "started",
        "size",
        "mtime",
        "handle",
        "data",
        "failed",
        "dropped",
        "waiter",
    )

    def __init__(self, client: SFTPClient, started: float, size: int, mtime: int | None):
        self.client = client
        self.started = started
        self.size = size
        self.mtime = mtime
        self.handle: bytes | None = None
        self.data: bytes | memoryview | None = None
        self.failed = False
        self.dropped = False
        self.waiter: Resume[None] | None = None

    def settled(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter.set_result(None)

    def discard(self) -> None:
        """Nobody will use it: close its handle (now, or once its READ is answered)."""
        self.dropped = True
        if self.data is not None or self.failed:
            self.close()
        self.settled()

    def close(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None and self.client.alive:
            self.client.close(handle, soon=True).addErrback(lambda f: None)


class _DirHandle:
    __slots__ = ("node", "entries", "done", "error", "waiter")

    def __init__(self, node: _Node | None) -> None:
        self.node = node  # None for the mount root
        # The listing so far: it grows as the server's batches arrive, until ``done``.
        self.entries: list[tuple[bytes, _Node | FileAttrs]] | None = None
        self.done = False
        self.error: BaseException | None = None
        self.waiter: Resume[None] | None = None

    def wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter.set_result(None)


def _invalidate_entry(parent: int, name: bytes) -> None:
    pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)


class SFTPOperations(pyfuse3.Operations):
    """
    I am the filesystem: a virtual root of volumes, each a remote directory over SFTP.

    Inodes are stable per (volume, remote path) while the kernel knows them (lookup counts
    and ``forget``), attributes are cached for ``attr_timeout``, reads go through a
    ``ReadAhead`` window and writes through a ``PipelinedWriter`` per open file.
    """

    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(
        self,
        source: ConnectionSource,
        *,
        now: Callable[[], float] = time.monotonic,
        invalidate: Callable[[int, bytes], None] = _invalidate_entry,
        store: Callable[[int, int, Any], None] | None = None,
        readdir_reply: Callable[[Any, bytes, EntryAttributes, int], bool] = pyfuse3.readdir_reply,
        entry_timeout: float = ENTRY_TIMEOUT,
        attr_timeout: float = ATTR_TIMEOUT,
        negative_timeout: float = NEGATIVE_TIMEOUT,
        readahead: int = READAHEAD_WINDOW,
        write_behind: int = WRITE_BEHIND,
    ) -> None:
        super().__init__()
        self._source = source
        self._now = now
        self._invalidate = invalidate
        self._store = store
        self._readdir_reply = readdir_reply
        self.entry_timeout = entry_timeout
        self.attr_timeout = attr_timeout
        self.negative_timeout = negative_timeout
        self._readahead = readahead
        self._write_behind = write_behind
        self.volumes: dict[str, Volume] = {}
        self._by_bname: dict[bytes, Volume] = {}
        self._nodes: dict[int, _Node] = {}
        self._by_key: dict[tuple[int, bytes], _Node] = {}
        self._next_ino = ROOT_INODE + 1
        self._next_vid = 1
        self._files: dict[int, _FileHandle] = {}
        self._dirs: dict[int, _DirHandle] = {}
        self._next_fh = 1
        self._root_mtime_ns = time.time_ns()
        # Small files fetched ahead of a reader walking a directory (see _walk).
        self._listings: collections.OrderedDict[tuple[int, bytes], _Listing] = (
            collections.OrderedDict()
        )
        self._ahead: dict[tuple[int, bytes], _Ahead] = {}
        self._claiming: dict[tuple[int, bytes], _Ahead] = {}  # taken, bytes still on the way
        self._ahead_bytes = 0
        self._purging: asyncio.TimerHandle | None = None
        self._corked: Any = None
        #: Called once the kernel's INIT is answered (the mount is live).
        self.on_init: Callable[[], None] | None = None

    def init(self) -> None:
        if self.on_init is not None:
            self.on_init()

    # -- the inode table -----------------------------------------------------------------------

    @property
    def node_count(self) -> int:
        return len(self._nodes)

    def _node(self, inode: int) -> _Node:
        node = self._nodes.get(inode)
        if node is None or node.vol.removed:
            raise FUSEError(errno.ESTALE)
        return node

    def _child(self, vol: Volume, rel: bytes) -> _Node:
        node = self._by_key.get((vol.vid, rel))
        if node is None:
            node = _Node(self._next_ino, vol, rel)
            self._next_ino += 1
            self._nodes[node.ino] = node
            self._by_key[(vol.vid, rel)] = node
        return node

    def _maybe_drop(self, node: _Node) -> None:
        if node.lookups > 0 or node.handles:
            return
        if node is node.vol.root and not node.vol.removed:
            return  # a live volume's root stays
        del self._nodes[node.ino]
        if self._by_key.get((node.vol.vid, node.rel)) is node:
            del self._by_key[(node.vol.vid, node.rel)]

    def _detach(self, vol: Volume, rel: bytes) -> None:
        """The remote path ``rel`` is gone (and anything under it)."""
        self._drop_ahead(vol.vid, rel, under=True)
        node = self._by_key.pop((vol.vid, rel), None)
        if node is not None:
            node.detached = True
            self._maybe_drop(node)
        prefix = rel + b"/"
        for key in [k for k in self._by_key if k[0] == vol.vid and k[1].startswith(prefix)]:
            child = self._by_key.pop(key)
            child.detached = True
            self._maybe_drop(child)

    def _move(self, vol: Volume, old: bytes, new: bytes) -> None:
        """The remote path ``old`` is now ``new`` (and so is everything under it)."""
        self._detach(vol, new)
        self._drop_ahead(vol.vid, old, under=True)
        node = self._by_key.pop((vol.vid, old), None)
        if node is not None:
            node.rel = new
            node.expires = 0.0
            self._by_key[(vol.vid, new)] = node
        prefix = old + b"/"
        moved = [k for k in self._by_key if k[0] == vol.vid and k[1].startswith(prefix)]
        for key in moved:
            child = self._by_key.pop(key)
            child.rel = new + child.rel[len(old) :]
            self._by_key[(vol.vid, child.rel)] = child

    # -- volumes ---------------------------------------------------------------------------------

    async def add_volume(self, name: str, path: str, ro: bool) -> str | None:
        """
        Show remote directory ``path`` as volume ``name``; None on success, else why not.

        Re-adding a volume unchanged is fine; a different path or ro flag replaces it.
        """
        existing = self.volumes.get(name)
        if existing is not None and os.fsencode(path) == existing.path and existing.ro == ro:
            return None
        label = self._source.label
        try:
            client = self._source.current()
            attrs = await client.stat(os.fsencode(path))
        except NotConnected as e:
            return f"SFTP server {label} is not connected: {e}"
        except SFTPStatusError as e:
            if e.errno == errno.ENOENT:
                return f"remote directory {path} does not exist on {label}"
            return f"cannot use remote directory {path} on {label}: {e.message}"
        except (ConnectionError, ConnectionLost) as e:
            return f"SFTP server {label} is not connected: {e}"
        if attrs.permissions is not None and not stat.S_ISDIR(attrs.permissions):
            return f"remote directory {path} on {label} is not a directory"
        current = self.volumes.get(name)  # it may have changed while we waited
        if current is not None:
            self._drop_volume(current)
        vol = Volume(name, path, ro, self._next_vid)
        self._next_vid += 1
        vol.root = self._child(vol, b"")
        self._set_attrs(vol.root, attrs)
        self.volumes[name] = vol
        self._by_bname[vol.bname] = vol
        self._root_mtime_ns = time.time_ns()
        log.info("volume {name} shows {path} (ro={ro})", name=name, path=path, ro=ro)
        return None

    def remove_volume(self, name: str) -> None:
        vol = self.volumes.get(name)
        if vol is not None:
            self._drop_volume(vol)
            self._root_mtime_ns = time.time_ns()
            log.info("volume {name} removed", name=name)

    def _drop_volume(self, vol: Volume) -> None:
        vol.removed = True
        for key in [k for k in self._ahead if k[0] == vol.vid]:
            self._take_ahead(key).discard()  # type: ignore[union-attr]
        del self.volumes[vol.name]
        del self._by_bname[vol.bname]
        for key in [k for k in self._by_key if k[0] == vol.vid]:
            node = self._by_key.pop(key)
            self._maybe_drop(node)
        try:
            self._invalidate(ROOT_INODE, vol.bname)
        except Exception:
            log.failure("invalidating volume {name} failed", name=vol.name)

    # -- attributes ----------------------------------------------------------------------------

    def _set_attrs(self, node: _Node, a: FileAttrs) -> EntryAttributes:
        e = EntryAttributes()
        e.st_ino = node.ino
        e.entry_timeout = self.entry_timeout
        e.attr_timeout = self.attr_timeout
        mode = a.permissions if a.permissions is not None else stat.S_IFREG | 0o644
        if node.vol.ro:
            mode &= ~0o222
        e.st_mode = mode
        e.st_nlink = 1
        e.st_uid = a.uid or 0
        e.st_gid = a.gid or 0
        size = a.size or 0
        e.st_size = size
        e.st_blocks = (size + 511) // 512
        e.st_blksize = _BLKSIZE
        mtime = (a.mtime or 0) * 1_000_000_000
        e.st_mtime_ns = mtime
        e.st_ctime_ns = mtime
        e.st_atime_ns = (a.atime or 0) * 1_000_000_000
        old = node.attrs
        if node.handles and old is not None and (old.size, old.mtime) != (a.size, a.mtime):
            # Someone changed the file: what open readers hold ahead may be stale.
            for h in node.handles:
                if h.reader is not None:
                    h.reader.reset(a.size)
        node.entry = e
        node.attrs = a
        node.expires = self._now() + self.attr_timeout
        return e

    def _negative(self) -> EntryAttributes:
        """
        "No such name", for the kernel to keep a moment (inode 0 makes a negative dentry):
        tools that probe many paths ask once. Creating the name through this mount replaces
        it at once; a name made on the server shows after ``negative_timeout``.
        """
        e = EntryAttributes()
        e.st_ino = 0
        e.entry_timeout = self.negative_timeout
        return e

    def _root_entry(self) -> EntryAttributes:
        e = EntryAttributes()
        e.st_ino = ROOT_INODE
        e.entry_timeout = self.entry_timeout
        e.attr_timeout = self.attr_timeout
        e.st_mode = stat.S_IFDIR | 0o555
        e.st_nlink = 2
        e.st_blksize = _BLKSIZE
        e.st_mtime_ns = e.st_ctime_ns = e.st_atime_ns = self._root_mtime_ns
        e.st_uid = os.getuid()
        e.st_gid = os.getgid()
        return e

    def _client(self) -> SFTPClient:
        try:
            return self._source.current()
        except NotConnected:
            raise FUSEError(errno.ENOTCONN) from None

    async def _fresh(self, node: _Node) -> EntryAttributes:
        if node.expires > self._now() and node.entry is not None:
            return node.entry
        if node.detached and node.entry is not None:
            return node.entry
        for h in list(node.handles):
            # Let write-behind land first, or the server reports a size that is too small.
            if h.writer is not None and h.writer.inFlight:
                try:
                    await _wait(h.writer.flush())
                except Exception:
                    pass
        client = self._client()
        if node is node.vol.root:
            attrs = await _wait(client.stat(node.remote))
        else:
            attrs = await _wait(client.lstat(node.remote))
        return self._set_attrs(node, attrs)

    def _writable(self, node: _Node) -> None:
        if node.vol.ro:
            raise FUSEError(errno.EROFS)

    def _parent(self, inode: int) -> _Node:
        if inode == ROOT_INODE:
            raise FUSEError(errno.EROFS)  # the root only holds volumes
        node = self._node(inode)
        self._writable(node)
        return node

    @staticmethod
    def _join(parent: _Node, name: bytes) -> bytes:
        return parent.rel + b"/" + name if parent.rel else name

    # -- name operations -----------------------------------------------------------------------

    @_fuse_op()
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> EntryAttributes:
        if parent_inode == ROOT_INODE:
            if name in (b".", b".."):
                return self._root_entry()
            vol = self._by_bname.get(name)
            if vol is None:
                raise FUSEError(errno.ENOENT)  # not cached: a volume may be added any time
            entry = await self._fresh(vol.root)
            if vol.removed:
                raise FUSEError(errno.ENOENT)
            vol.root.lookups += 1
            return entry
        parent = self._node(parent_inode)
        vol = parent.vol
        if name == b".":
            rel = parent.rel
        elif name == b"..":
            if not parent.rel:
                return self._root_entry()
            rel = parent.rel.rpartition(b"/")[0]
        else:
            rel = self._join(parent, name)
        node = self._by_key.get((vol.vid, rel))
        if node is not None and node.entry is not None and node.expires > self._now():
            node.lookups += 1
            return node.entry
        try:
            attrs = await _wait(self._client().lstat(vol.remote(rel)))
        except SFTPStatusError as e:
            if e.errno != errno.ENOENT or self.negative_timeout <= 0:
                raise
            return self._negative()
        if vol.removed:
            raise FUSEError(errno.ENOENT)
        node = self._child(vol, rel)  # again: the table may have changed while we waited
        entry = self._set_attrs(node, attrs)
        node.lookups += 1
        return entry

    async def forget(self, inode_list: Any) -> None:
        for inode, nlookup in inode_list:
            node = self._nodes.get(inode)
            if node is not None:
                node.lookups -= nlookup
                if node.lookups <= 0:
                    node.lookups = 0
                    self._maybe_drop(node)

    @_fuse_op()
    async def getattr(self, inode: int, ctx: Any = None) -> EntryAttributes:
        if inode == ROOT_INODE:
            return self._root_entry()
        return await self._fresh(self._node(inode))

    @_fuse_op()
    async def setattr(
        self, inode: int, attr: EntryAttributes, fields: Any, fh: int | None, ctx: Any = None
    ) -> EntryAttributes:
        if inode == ROOT_INODE:
            raise FUSEError(errno.EROFS)
        node = self._node(inode)
        self._writable(node)
        self._drop_ahead(node.vol.vid, node.rel)
        for h in list(node.handles):
            if h.writer is not None:  # earlier writes go first, e.g. before a truncate
                await _wait(h.writer.flush())
        size = uid = gid = perms = atime = mtime = None
        if fields.update_size:
            size = attr.st_size
        if fields.update_mode:
            perms = stat.S_IMODE(attr.st_mode)
        if fields.update_uid or fields.update_gid or fields.update_atime or fields.update_mtime:
            # SFTP v3 sets uid with gid and atime with mtime: fill in the half not changing.
            if not fields.update_uid or not fields.update_gid:
                await self._fresh(node)
            current = node.attrs or FileAttrs()
            if fields.update_uid or fields.update_gid:
                uid = attr.st_uid if fields.update_uid else current.uid
                gid = attr.st_gid if fields.update_gid else current.gid
            if fields.update_atime or fields.update_mtime:
                now = int(time.time())
                atime = attr.st_atime_ns // 1_000_000_000 if fields.update_atime else None
                mtime = attr.st_mtime_ns // 1_000_000_000 if fields.update_mtime else None
                if atime is None:
                    atime = current.atime if current.atime is not None else now
                if mtime is None:
                    mtime = current.mtime if current.mtime is not None else now
        client = self._client()
        path = node.remote
        done = client.setstat(path, FileAttrs(size, uid, gid, perms, atime, mtime))
        fresh = client.lstat(path) if node is not node.vol.root else client.stat(path)
        node.expires = 0.0
        if size is not None:
            for h in node.handles:
                if h.reader is not None:
                    h.reader.reset()
        _, attrs = await _both(done, fresh)
        return self._set_attrs(node, attrs)

    @_fuse_op()
    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        node = self._node(inode)
        return await _wait(self._client().readlink(node.remote))

    @_fuse_op(errno.EEXIST)
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: Any = None
    ) -> EntryAttributes:
        parent = self._parent(parent_inode)
        return await self._make(
            parent, name, lambda c, p: c.mkdir(p, FileAttrs(permissions=stat.S_IMODE(mode)))
        )

    @_fuse_op(errno.EEXIST)
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: Any = None
    ) -> EntryAttributes:
        parent = self._parent(parent_inode)
        return await self._make(parent, name, lambda c, p: c.symlink(p, target))

    @_fuse_op(errno.EEXIST)
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any = None
    ) -> EntryAttributes:
        node = self._node(inode)
        parent = self._parent(new_parent_inode)
        if parent.vol is not node.vol:
            raise FUSEError(errno.EXDEV)
        old = node.remote
        entry = await self._make(parent, new_name, lambda c, p: c.hardlink(old, p))
        node.expires = 0.0
        return entry

    async def _make(
        self, parent: _Node, name: bytes, create: Callable[[SFTPClient, bytes], Deferred[None]]
    ) -> EntryAttributes:
        client = self._client()
        rel = self._join(parent, name)
        path = parent.vol.remote(rel)
        # Pipelined: the server answers in order, so the LSTAT sees what was just made.
        _, attrs = await _both(create(client, path), client.lstat(path))
        self._detach(parent.vol, rel)
        node = self._child(parent.vol, rel)
        entry = self._set_attrs(node, attrs)
        node.lookups += 1
        parent.expires = 0.0
        return entry

    @_fuse_op()
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        parent = self._parent(parent_inode)
        rel = self._join(parent, name)
        await _wait(self._client().remove(parent.vol.remote(rel)))
        self._detach(parent.vol, rel)
        parent.expires = 0.0

    @_fuse_op(errno.ENOTEMPTY)
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        parent = self._parent(parent_inode)
        rel = self._join(parent, name)
        await _wait(self._client().rmdir(parent.vol.remote(rel)))
        self._detach(parent.vol, rel)
        parent.expires = 0.0

    @_fuse_op()
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Any = None,
    ) -> None:
        old_parent = self._parent(parent_inode_old)
        new_parent = self._parent(parent_inode_new)
        if old_parent.vol is not new_parent.vol:
            raise FUSEError(errno.EXDEV)
        client = self._client()
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise FUSEError(errno.EINVAL)
        if flags & pyfuse3.RENAME_NOREPLACE and not client.canNoReplaceRename:
            raise FUSEError(errno.EINVAL)
        vol = old_parent.vol
        old = self._join(old_parent, name_old)
        new = self._join(new_parent, name_new)
        overwrite = not flags & pyfuse3.RENAME_NOREPLACE
        try:
            await _wait(client.rename(vol.remote(old), vol.remote(new), overwrite=overwrite))
        except SFTPStatusError as e:
            raise FUSEError(
                e.errno if e.code != ft.FX_FAILURE or overwrite else errno.EEXIST
            ) from None
        self._move(vol, old, new)
        old_parent.expires = new_parent.expires = 0.0

    # -- files ---------------------------------------------------------------------------------

    def _register(
        self,
        node: _Node,
        flags: int,
        client: SFTPClient,
        handle: bytes,
        reader: ReadAhead | None = None,
    ) -> _FileHandle:
        fh = self._next_fh
        self._next_fh += 1
        h = _FileHandle(fh, node, flags, client, handle)
        h.reader = reader  # else made at the first READ: most small files never get one
        if flags & ft.FXF_WRITE:
            h.writer = PipelinedWriter(client, handle, self._write_behind)
        self._files[fh] = h
        node.handles.add(h)
        return h

    def _reader(self, node: _Node, client: SFTPClient, handle: bytes) -> ReadAhead:
        size = node.attrs.size if node.attrs is not None else None
        return ReadAhead(client, handle, window=self._readahead, sizeHint=size)

    @staticmethod
    def _sftp_flags(flags: int) -> int:
        mode = flags & os.O_ACCMODE
        if mode == os.O_WRONLY:
            return ft.FXF_WRITE
        if mode == os.O_RDWR:
            return ft.FXF_READ | ft.FXF_WRITE
        return ft.FXF_READ

    @_fuse_op()
    async def open(self, inode: int, flags: int, ctx: Any = None) -> FileInfo:
        node = self._node(inode)
        sflags = self._sftp_flags(flags)
        if sflags & ft.FXF_WRITE or flags & os.O_TRUNC:
            self._writable(node)
        client = self._client()
        key = (node.vol.vid, node.rel)
        ahead = self._take_ahead(key) if self._ahead else None
        if flags & os.O_TRUNC:
            if ahead is not None:
                ahead.discard()
            # The kernel leaves O_TRUNC to us (atomic_o_trunc): truncate while opening.
            handle = await _wait(client.open(node.remote, sflags | ft.FXF_TRUNC))
            node.expires = 0.0
            for other in node.handles:
                if other.reader is not None:
                    other.reader.reset()
            h = self._register(node, sflags, client, handle)
            h.wrote = True
            return FileInfo(fh=h.fh)
        keep = self._keep_cache(node)
        size = node.attrs.size if node.attrs is not None else None
        # Small files are walked (fetched ahead) even when the kernel may keep its pages:
        # those may be gone (memory pressure, drop_caches), and a fetched file costs no wait.
        small = sflags == ft.FXF_READ and size is not None and size <= PREFETCH_MAX
        if ahead is not None and not small:
            ahead.discard()
            ahead = None
        if ahead is not None:
            self._walk(node, client)
            info = await self._claim(node, ahead, client)
            if info is not None:
                return info
        opening = client.open(node.remote, sflags)
        readers: list[ReadAhead] = []
        if small and not keep:
            assert size is not None

            # A small file is read whole as soon as the handle arrives (from the answer's
            # callback, not a loop turn later), asking past its size so that the short
            # answer shows the end: the kernel's READ then finds it there or on its way.
            def prefetch(handle: bytes) -> bytes:
                reader = self._reader(node, client, handle)
                reader.prefetch((size // _PAGE + 1) * _PAGE)
                readers.append(reader)
                return handle

            opening.addCallback(prefetch)
        if small and ahead is None:
            self._walk(node, client)  # after our own OPEN: it goes first
        handle = await _wait(opening)
        h = self._register(node, sflags, client, handle, readers[0] if readers else None)
        if readers and size and self._store is not None and len(node.handles) == 1:
            keep = await self._preload(node, readers[0], size)
        return FileInfo(fh=h.fh, keep_cache=keep)

    async def _preload(self, node: _Node, reader: ReadAhead, size: int) -> bool:
        """
        Put a small file's bytes (read at open) in the kernel's page cache before the open is
        answered, so that the kernel reads them from there: no READ request, and no GETATTR
        after it either (a read makes the kernel drop the cached atime). Then the open may
        keep the cache, because every page up to the end of the file is what was just
        stored: only when the bytes are exactly the size the kernel was told, with the
        attributes still fresh (our own writes expire them) and no other open handle. Any
        failure leaves the usual path: the kernel asks with READ.
        """
        try:
            data = reader.read(0, size)
            if isinstance(data, Deferred):
                data = await _wait(data)
            attrs = node.attrs
            if (
                len(data) != size
                or attrs is None
                or attrs.size != size
                or node.expires <= self._now()
                or node.detached
                or len(node.handles) != 1
            ):
                return False
            assert self._store is not None
            self._store(node.ino, 0, data)
        except Exception:
            return False  # the kernel's READ will ask again (and meet any error itself)
        return True

    async def _claim(self, node: _Node, ahead: _Ahead, client: SFTPClient) -> FileInfo | None:
        """
        Open ``node`` with what was fetched ahead for it, and put its bytes in the kernel's
        page cache (as ``_preload`` does); None if that cannot be used (then it is closed).

        Only when the bytes are no older than the attribute timeout and match the attributes
        the kernel was last told (size and mtime): a file changed on the server shows after
        the attribute timeout at the latest, as its attributes do. This mount's own changes
        drop what was fetched ahead of them (``_drop_ahead``), so the kernel's size is the
        one it was told.
        """
        if ahead.data is None and not ahead.failed:
            key = (node.vol.vid, node.rel)
            self._claiming[key] = ahead  # a change meanwhile still drops it
            ahead.waiter = Resume(_running_loop())
            try:
                await ahead.waiter
            finally:
                if self._claiming.get(key) is ahead:
                    del self._claiming[key]
        data = ahead.data
        attrs = node.attrs
        now = self._now()
        if (
            data is None
            or ahead.failed
            or ahead.dropped
            or ahead.handle is None
            or ahead.client is not client
            or not client.alive
            or now - ahead.started > self.attr_timeout
            or attrs is None
            or (attrs.size, attrs.mtime) != (ahead.size, ahead.mtime)
            or len(data) != ahead.size
            or node.detached
        ):
            ahead.discard()
            return None
        handle, ahead.handle = ahead.handle, None
        h = self._register(node, ft.FXF_READ, client, handle)
        keep = False
        if ahead.size and self._store is not None and len(node.handles) == 1:
            try:
                self._store(node.ino, 0, data)
                keep = True
            except Exception:
                pass  # the kernel's READ will ask (and meet any error itself)
        return FileInfo(fh=h.fh, keep_cache=keep)

    def _remember_listing(self, node: _Node, entries: list[tuple[bytes, FileAttrs]]) -> None:
        key = (node.vol.vid, node.rel)
        self._listings.pop(key, None)
        if len(entries) > LISTING_MAX:
            return  # bounded memory; a huge directory is walked without help
        self._listings[key] = _Listing(entries)
        while len(self._listings) > LISTINGS:
            self._listings.popitem(last=False)

    def _walk(self, node: _Node, client: SFTPClient) -> None:
        """
        ``node``, a small file, is being opened: if the files of its directory are being
        opened one after the other, in the order of the last listing or by name, fetch the
        next ones ahead (at most ``AHEAD_FILES`` and ``AHEAD_BYTES``, topped up in batches
        sent together), so that their opens find them here without a round trip.
        """
        parent, _, name = node.rel.rpartition(b"/")
        listing = self._listings.get((node.vol.vid, parent))
        if listing is None:
            return
        last, listing.last = listing.last, name
        at = listing.pos.get(name)
        if at is None or last is None:
            return
        if listing.pos.get(last) == at - 1:
            order = listing.names
        else:
            order = listing.sorted_names()
            at = listing.name_pos[name]
            if listing.name_pos.get(last) != at - 1:
                listing.order = None  # no walk (or not one we can follow)
                return
        if listing.order is not order:
            listing.order = order
            listing.cursor = at + 1
        elif listing.cursor <= at:
            listing.cursor = at + 1
        if listing.cursor - at - 1 > AHEAD_FILES // 2:
            return  # enough of this walk on its way: top up in batches, not one by one
        vid = node.vol.vid
        while listing.cursor < len(order) and listing.cursor - at - 1 < AHEAD_FILES:
            name = order[listing.cursor]
            listing.cursor += 1
            attrs = listing.attrs[name]
            size = attrs.size
            if (
                size is None
                or size > PREFETCH_MAX
                or attrs.permissions is None
                or not stat.S_ISREG(attrs.permissions)
            ):
                continue
            rel = parent + b"/" + name if parent else name
            key = (vid, rel)
            other = self._by_key.get(key)
            if key in self._ahead or (other is not None and other.handles):
                continue
            while self._ahead and (
                len(self._ahead) >= AHEAD_TOTAL or self._ahead_bytes + size > AHEAD_BYTES
            ):
                # The oldest makes room (the dict is in fetch order): another walk's rest.
                self._take_ahead(next(iter(self._ahead))).discard()  # type: ignore[union-attr]
            self._fetch_ahead(client, key, node.vol.remote(rel), size, attrs.mtime)

    def _fetch_ahead(
        self, client: SFTPClient, key: tuple[int, bytes], path: bytes, size: int, mtime: int | None
    ) -> None:
        ahead = _Ahead(client, self._now(), size, mtime)
        self._ahead[key] = ahead
        self._ahead_bytes += size
        if self._purging is None:
            self._purging = _running_loop().call_later(
                self.attr_timeout + 0.1, self._purge_ahead, True
            )
        self._cork(client)
        asked = (size // _PAGE + 1) * _PAGE  # past the end: the short answer shows it

        def opened(handle: bytes) -> None:
            ahead.handle = handle
            if ahead.dropped:
                ahead.close()
                return
            self._cork(client)  # the READs of one batch of answers go out together
            client.read(handle, 0, asked).addCallbacks(got, failed)

        def got(data: bytes | memoryview) -> None:
            ahead.data = data
            if ahead.dropped:
                ahead.close()
            ahead.settled()

        def failed(_: Failure) -> None:
            ahead.failed = True
            ahead.discard()

        client.open(path, ft.FXF_READ).addCallbacks(opened, failed)

    def _take_ahead(self, key: tuple[int, bytes]) -> _Ahead | None:
        ahead = self._ahead.pop(key, None)
        if ahead is not None:
            self._ahead_bytes -= ahead.size
        return ahead

    def _drop_ahead(self, vid: int, rel: bytes, under: bool = False) -> None:
        """This mount changes ``rel`` (and with ``under``, what is below it): drop its fetches."""
        if self._claiming:
            prefix = rel + b"/" if rel else b""
            for key, claimed in list(self._claiming.items()):
                if key == (vid, rel) or (under and key[0] == vid and key[1].startswith(prefix)):
                    claimed.discard()
        if not self._ahead:
            return
        ahead = self._take_ahead((vid, rel))
        if ahead is not None:
            ahead.discard()
        if under:
            prefix = rel + b"/" if rel else b""
            for key in [k for k in self._ahead if k[0] == vid and k[1].startswith(prefix)]:
                self._take_ahead(key).discard()  # type: ignore[union-attr]

    def _purge_ahead(self, timer: bool = False) -> None:
        """Close what was fetched ahead and not claimed within the attribute timeout."""
        if timer:
            self._purging = None
        horizon = self._now() - self.attr_timeout
        for key in [k for k, a in self._ahead.items() if a.started < horizon or a.failed]:
            self._take_ahead(key).discard()  # type: ignore[union-attr]
        if self._ahead and self._purging is None:
            self._purging = _running_loop().call_later(
                self.attr_timeout + 0.1, self._purge_ahead, True
            )

    def _cork(self, client: SFTPClient) -> None:
        """
        Hold the SFTP socket's sends until the end of this loop iteration (TCP_CORK), so that
        requests made one by one leave in one segment: one wake-up of the server per batch.
        """
        if self._corked is not None:
            return
        try:
            sock = client.transport.getHandle()  # type: ignore[union-attr]
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        except Exception:
            return  # not a TCP socket (tests): sent one by one
        self._corked = sock
        _running_loop().call_soon(self._uncork)

    def _uncork(self) -> None:
        sock, self._corked = self._corked, None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        except OSError:
            pass  # closed meanwhile

    def _keep_cache(self, node: _Node) -> bool:
        """
        Whether the kernel may keep this file's cached pages from an earlier open.

        Only when the file is unchanged since that open: fresh attributes with the same mtime
        and size, and at that open the mtime was already "settled" (well in the past), so a
        later change could not hide in the same one-second mtime. The margin is wide to
        survive clock skew between this machine and the server.
        """
        a = node.attrs
        if a is None or a.mtime is None or node.expires <= self._now():
            node.opened = None
            return False
        version = (a.mtime, a.size)
        keep = node.opened == version
        node.opened = version if a.mtime < time.time() - SETTLED else None
        return keep

    @_fuse_op(errno.EEXIST)
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any = None
    ) -> tuple[FileInfo, EntryAttributes]:
        parent = self._parent(parent_inode)
        sflags = self._sftp_flags(flags)
        open_flags = sflags | ft.FXF_CREAT
        if flags & os.O_EXCL:
            open_flags |= ft.FXF_EXCL
        if flags & os.O_TRUNC:
            open_flags |= ft.FXF_TRUNC
        client = self._client()
        rel = self._join(parent, name)
        self._drop_ahead(parent.vol.vid, rel)
        path = parent.vol.remote(rel)
        handle, attrs = await _both(
            client.open(path, open_flags, FileAttrs(permissions=stat.S_IMODE(mode))),
            client.lstat(path),
        )
        node = self._child(parent.vol, rel)
        entry = self._set_attrs(node, attrs)
        node.lookups += 1
        parent.expires = 0.0
        h = self._register(node, sflags, client, handle)
        h.wrote = True
        return FileInfo(fh=h.fh), entry

    async def _ready(self, h: _FileHandle) -> None:
        """Make sure ``h`` is open on the live connection (reopening after a reconnect)."""
        while h.client is not self._source.current() or not h.client.alive:
            if h.reopening is None:
                h.reopening = asyncio.ensure_future(self._reopen(h))
            try:
                await asyncio.shield(h.reopening)
            finally:
                if h.reopening is not None and h.reopening.done():
                    h.reopening = None

    async def _reopen(self, h: _FileHandle) -> None:
        client = self._source.current()
        if h.writer is not None and (h.writer.error is not None or h.writer.inFlight):
            # Writes the old connection never confirmed are lost: say so from now on.
            h.error = errno.EIO
        handle = await _wait(client.open(h.node.remote, h.flags))
        log.info("reopened {path} after a reconnect", path=h.node.remote)
        h.client = client
        h.handle = handle
        h.reader = None  # made again at the next READ, on the new handle
        if h.writer is not None:
            h.writer = PipelinedWriter(client, handle, self._write_behind)

    def _file(self, fh: int) -> _FileHandle:
        h = self._files.get(fh)
        if h is None:
            raise FUSEError(errno.EBADF)
        return h

    # typing note: pyfuse3 says bytes; it takes any contiguous buffer (PyObject_GetBuffer).
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        h = self._file(fh)
        try:
            client = h.client
            if not client.alive or client is not self._source.current():
                await self._ready(h)
            reader = h.reader
            if reader is None:
                if not h.flags & ft.FXF_READ:
                    raise FUSEError(errno.EBADF)
                reader = h.reader = self._reader(h.node, h.client, h.handle)
            data = reader.read(off, size)
            if isinstance(data, Deferred):
                return await _wait(data)
            return data
        except Exception as e:
            raise _fuse_error(e) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._file(fh)
        try:
            if h.error is not None:
                raise FUSEError(h.error)
            client = h.client
            if not client.alive or client is not self._source.current():
                await self._ready(h)
                if h.error is not None:
                    raise FUSEError(h.error)
            writer = h.writer
            if writer is None:
                raise FUSEError(errno.EBADF)
            node = h.node
            node.expires = 0.0
            if self._ahead:
                self._drop_ahead(node.vol.vid, node.rel)
            h.wrote = True
            if len(node.handles) > 1:
                for other in node.handles:
                    if other.reader is not None:
                        other.reader.reset()
            elif h.reader is not None:
                h.reader.reset()
            wait = writer.write(off, buf)
            if wait is not None:
                await _wait(wait)
            return len(buf)
        except Exception as e:
            raise _fuse_error(e) from None

    @_fuse_op()
    async def flush(self, fh: int) -> None:
        h = self._file(fh)
        await self._drain(h)

    async def _drain(self, h: _FileHandle) -> None:
        if h.error is not None:
            raise FUSEError(h.error)
        if h.writer is not None:
            await _wait(h.writer.flush())
            if h.wrote:
                h.node.expires = 0.0

    @_fuse_op()
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self._file(fh)
        await self._drain(h)
        if h.writer is not None:
            await self._ready(h)
            await _wait(h.client.fsync(h.handle))

    @_fuse_op()
    async def release(self, fh: int) -> None:
        h = self._files.pop(fh, None)
        if h is None:
            return
        node = h.node
        node.handles.discard(h)
        try:
            await self._drain(h)
        finally:
            if h.client.alive:
                # A reader's CLOSE can wait to go out with the next request (or a moment).
                h.client.close(h.handle, soon=h.writer is None).addErrback(
                    lambda f: log.warn(
                        "closing {path}: {error}", path=node.remote, error=f.getErrorMessage()
                    )
                )
            if h.wrote:
                node.expires = 0.0
            if node.lookups <= 0:
                self._maybe_drop(node)

    # -- directories ---------------------------------------------------------------------------

    @_fuse_op()
    async def opendir(self, inode: int, ctx: Any = None) -> int:
        node = None if inode == ROOT_INODE else self._node(inode)
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = _DirHandle(node)
        return fh

    @_fuse_op()
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        dh = self._dirs.get(fh)
        if dh is None:
            raise FUSEError(errno.EBADF)
        if dh.entries is None or start_id == 0:
            self._start_listing(dh)
        # Answered once a reply's worth has arrived (or all of it): the kernel and the
        # program read the first entries while the server is still listing the rest.
        while not dh.done and len(dh.entries) < start_id + READDIR_REPLY:  # type: ignore[arg-type]
            dh.waiter = Resume(_running_loop())
            await dh.waiter
        entries = dh.entries
        assert entries is not None
        if dh.error is not None and len(entries) <= start_id:
            raise dh.error
        for i in range(start_id, len(entries)):
            name, what = entries[i]
            if isinstance(what, _Node):  # a volume of the root
                node = what
                if node.vol.removed or node.entry is None:
                    continue
                entry = node.entry
            else:
                assert dh.node is not None
                vol = dh.node.vol
                if vol.removed:
                    raise FUSEError(errno.ESTALE)
                node = self._child(vol, self._join(dh.node, name))
                entry = self._set_attrs(node, what)
            if not self._readdir_reply(token, name, entry, i + 1):
                self._maybe_drop(node)
                break
            node.lookups += 1

    def _start_listing(self, dh: _DirHandle) -> None:
        """(Re)start listing ``dh``'s directory into a fresh ``dh.entries``."""
        node = dh.node
        client = None if node is None else self._client()
        entries: list[tuple[bytes, _Node | FileAttrs]] = []
        dh.entries = entries
        dh.error = None
        if node is None or client is None:
            entries.extend((v.bname, v.root) for v in self.volumes.values())
            dh.done = True
            return
        dh.done = False
        streamed = []

        def batch(names: list[NameEntry]) -> None:
            if dh.entries is entries:  # not restarted (rewinddir) since
                streamed.append(True)
                entries.extend((e.filename, e.attrs) for e in names)
                if dh.waiter is not None:
                    # A loop turn later: the listing asks for its next batches first.
                    _running_loop().call_soon(dh.wake)

        def done(names: list[NameEntry]) -> None:
            if dh.entries is entries:
                if not streamed:  # a client that gives the listing whole
                    entries.extend((e.filename, e.attrs) for e in names)
                dh.done = True
                self._remember_listing(node, entries)  # type: ignore[arg-type]
                dh.wake()

        def failed(failure: Failure) -> None:
            if dh.entries is entries:
                dh.error = failure.value
                dh.done = True
                dh.wake()

        if getattr(client, "listsInBatches", False):
            listing = client.listdir(node.remote, onBatch=batch)
        else:
            listing = client.listdir(node.remote)
        listing.addCallbacks(done, failed)

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- the rest ------------------------------------------------------------------------------

    @_fuse_op()
    async def statfs(self, ctx: Any = None) -> StatvfsData:
        client = self._client()
        # pyfuse3 does not say which inode is asked about; any volume stands for the server.
        path = next(iter(self.volumes.values())).path if self.volumes else b"/"
        v = await _wait(client.statvfs(path))
        s = StatvfsData()
        s.f_bsize = v.bsize
        s.f_frsize = v.frsize
        s.f_blocks = v.blocks
        s.f_bfree = v.bfree
        s.f_bavail = v.bavail
        s.f_files = v.files
        s.f_ffree = v.ffree
        s.f_favail = v.favail
        s.f_namemax = v.namemax
        return s

    @_fuse_op()
    async def access(self, inode: int, mode: int, ctx: Any = None) -> bool:
        if mode & os.W_OK and (inode == ROOT_INODE or self._node(inode).vol.ro):
            raise FUSEError(errno.EROFS)
        return True

    def release_all(self) -> None:
        """Close every remote handle (at unmount)."""
        for h in self._files.values():
            if h.client.alive:
                # A reader's CLOSE can wait to go out with the next request (or a moment).
                h.client.close(h.handle, soon=h.writer is None).addErrback(lambda f: None)
        self._files.clear()
        self._dirs.clear()
        for key in list(self._ahead):
            self._take_ahead(key).discard()  # type: ignore[union-attr]


class Resume(Generic[R]):
    """
    A future that resumes the task awaiting it at once, inside the call that settles it.

    An ``asyncio.Future`` wakes its task with ``call_soon``: one more loop iteration (an
    ``epoll_wait`` and the loop's bookkeeping) between an SFTP answer or a FUSE request and
    the handler that waits for it, several times per small file. Settled from a reactor or
    loop callback (no task running), this one runs the task's step right there; settled
    from inside a task (a task cannot run inside another) or cancelled, it falls back to
    ``call_soon``. Tasks accept it like any future (the ``_asyncio_future_blocking``
    protocol); one task awaits it (any further done callbacks run with ``call_soon``).
    """

    __slots__ = (
        "_asyncio_future_blocking",
        "_loop",
        "_done",
        "_value",
        "_error",
        "_wakeup",
        "_context",
        "_others",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._asyncio_future_blocking = False
        self._loop = loop
        self._done = False
        self._value: R | None = None
        self._error: BaseException | None = None
        self._wakeup: Callable[[Resume[R]], object] | None = None
        self._context: contextvars.Context | None = None
        self._others: list[tuple[Callable[[Resume[R]], object], Any]] | None = None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return isinstance(self._error, asyncio.CancelledError)

    def result(self) -> R:
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def exception(self) -> BaseException | None:
        return self._error

    def add_done_callback(
        self, fn: Callable[[Resume[R]], object], *, context: contextvars.Context | None = None
    ) -> None:
        if self._done:
            self._loop.call_soon(fn, self, context=context)
        elif self._wakeup is None:
            self._wakeup = fn
            self._context = context
        else:  # not how a task uses it: run like a plain future's callback
            if self._others is None:
                self._others = []
            self._others.append((fn, context))

    def remove_done_callback(self, fn: Callable[[Resume[R]], object]) -> int:
        removed = 0
        if self._wakeup is fn:
            self._wakeup = None
            removed += 1
        if self._others:
            before = len(self._others)
            self._others = [(f, c) for f, c in self._others if f is not fn]
            removed += before - len(self._others)
        return removed

    def set_result(self, value: R) -> None:
        if not self._done:
            self._done = True
            self._value = value
            self._fire(True)

    def set_exception(self, error: BaseException) -> None:
        if not self._done:
            self._done = True
            self._error = error
            self._fire(True)

    def cancel(self, msg: object = None) -> bool:
        if self._done:
            return False
        self._done = True
        self._error = asyncio.CancelledError(msg) if msg is not None else asyncio.CancelledError()
        self._fire(False)
        return True

    def _fire(self, eager: bool) -> None:
        others, self._others = self._others, None
        for fn, ctx in others or ():
            self._loop.call_soon(fn, self, context=ctx)
        wakeup = self._wakeup
        if wakeup is None:
            return
        self._wakeup = None
        context = self._context
        if eager and not task_running(self._loop):
            if context is None:
                wakeup(self)
            else:
                context.run(wakeup, self)
        else:
            self._loop.call_soon(wakeup, self, context=context)

    def __await__(self) -> Generator[Any, None, R]:
        if not self._done:
            self._asyncio_future_blocking = True
            yield self
        return self.result()

    __iter__ = __await__


def _settle(result: R, future: Resume[R]) -> None:
    future.set_result(result)


def _unsettle(failure: Failure, future: Resume[Any]) -> None:
    future.set_exception(failure.value)


class _Loop:
    """The running loop, looked up once: ``get_running_loop`` costs a ``getpid`` each time."""

    loop: asyncio.AbstractEventLoop | None = None


def _running_loop() -> asyncio.AbstractEventLoop:
    loop = _Loop.loop
    if loop is None or loop.is_closed():
        loop = _Loop.loop = asyncio.get_running_loop()
    return loop


def _wait(d: Deferred[R]) -> Resume[R]:
    """
    A Deferred as a future for a FUSE handler to await, resuming the handler from the
    Deferred's callback (see ``Resume``); no cancellation hook (FUSE handlers are never
    cancelled). A Deferred that already fired gives a done future: no loop turn at all.
    """
    future: Resume[R] = Resume(_running_loop())
    d.addCallbacks(_settle, _unsettle, callbackArgs=(future,), errbackArgs=(future,))
    return future


async def _both(first: Deferred[Any], second: Deferred[Any]) -> tuple[Any, Any]:
    """Wait for two pipelined requests; raise the first error (both are always consumed)."""
    results = await _wait(defer.DeferredList([first, second], consumeErrors=True))
    for ok, result in results:
        if not ok:
            result.raiseException()
    return results[0][1], results[1][1]


# -- the control socket ----------------------------------------------------------------------------


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


# -- the helper process -------------------------------------------------------------------------


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m telenet.fuse.helper", description=__doc__.split("\n")[1]
    )
    p.add_argument("--host", required=True)
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--mountpoint", required=True)
    p.add_argument("--control", required=True)
    p.add_argument("--log-file")
    p.add_argument("--timeout", type=float, default=10.0)
    return p.parse_args(argv)


def _say(obj: dict[str, Any]) -> None:
    try:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
    except OSError:
        pass  # whoever started us is gone; carry on (it re-adopts us through the socket)


class _StdlibToTwisted(logging.Handler):
    """pyfuse3 logs through the standard library; send that to the Twisted log."""

    def emit(self, record: logging.LogRecord) -> None:
        log.emit(
            _LEVELS.get(record.levelno, _LEVELS[logging.INFO]),
            "{logger}: {message}",
            logger=record.name,
            message=record.getMessage(),
        )


def _levels() -> dict[int, Any]:
    from twisted.logger import LogLevel

    return {
        logging.DEBUG: LogLevel.debug,
        logging.INFO: LogLevel.info,
        logging.WARNING: LogLevel.warn,
        logging.ERROR: LogLevel.error,
        logging.CRITICAL: LogLevel.critical,
    }


_LEVELS = _levels()


def _mount_dev(mountpoint: str) -> str | None:
    """The "major:minor" of the mount at ``mountpoint``, from /proc (never stat a FUSE mount)."""
    # mountinfo escapes these characters in paths as octal.
    escaped = "".join(
        {" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134"}.get(c, c) for c in mountpoint
    )
    dev = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                fields = line.split(" ")
                if len(fields) > 4 and fields[4] == escaped:
                    dev = fields[2]  # the last one is the mount on top
    except OSError:
        pass
    return dev


def _tune_readahead(mountpoint: str) -> None:
    """FUSE starts at 128 KiB of kernel read-ahead; more means fewer, bigger read requests."""
    dev = _mount_dev(mountpoint)
    if dev is None:
        return
    try:
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(str(KERNEL_READAHEAD_KB))
    except OSError as e:
        log.info("cannot raise read-ahead of {dev}: {error}", dev=dev, error=e)


def _clear_stale_mount(mountpoint: str) -> None:
    """A dead helper's mount makes the mount point unusable (ENOTCONN): detach it."""
    import subprocess

    try:
        os.stat(mountpoint)
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO):
            subprocess.run(["fusermount3", "-uz", mountpoint], capture_output=True, check=False)


def _tune_malloc() -> None:
    """
    Keep freed megabyte buffers in the heap: glibc otherwise maps and unmaps each one, and the
    page faults of touching fresh pages cost more than the copies themselves.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _tune_gc() -> None:
    """
    Keep the cyclic garbage collector's pauses short: what start-up made (Twisted, pyfuse3,
    trio: most of the heap) lives as long as the process, so it is frozen out of every
    collection; and collections run after more allocations. A full collection walked all of
    it, 20-100 ms with the loop stopped, during a listing or a tar of many small files.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class FuseFdWaiter:
    """
    A cheaper ``wait_readable`` for pyfuse3's asyncio mode.

    pyfuse3 registers the FUSE fd with the loop before each request and removes it after
    (two epoll_ctl calls and their bookkeeping), and passes a lock between its worker tasks so
    that one at a time waits (two more task wake-ups). Together that is a good part of a
    small request's cost. Here the registration stays while requests keep coming and the
    lock is a no-op; instead, this waiter wakes one task per request: a woken task reads the
    fd as soon as it runs (a read that blocks if nothing is there), so no other is woken
    until it has, and none at all unless a zero-timeout poll confirms a request is waiting
    (a callback queued before the last read may be stale). The task is woken through a
    ``Resume``: it reads and handles the request inside this waiter's loop callback, not a
    loop iteration later.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, closed: type[Exception]) -> None:
        self._loop = loop
        self._closed = closed
        self._waiters: dict[int, collections.deque[Resume[None]]] = {}
        self._polls: dict[int, Any] = {}
        self._idle: dict[int, int] = {}
        self._waking: set[int] = set()

    async def wait_readable(self, fd: int) -> None:
        waiters = self._waiters.get(fd)
        if waiters is None:
            import select

            waiters = self._waiters[fd] = collections.deque()
            poll = select.poll()
            poll.register(fd, select.POLLIN)
            self._polls[fd] = poll
        if fd not in self._idle:
            self._loop.add_reader(fd, self._ready, fd)
        self._idle[fd] = 0
        future: Resume[None] = Resume(self._loop)
        waiters.append(future)
        try:
            await future
        finally:
            if not future.done():
                if future in waiters:
                    waiters.remove(future)
            elif future.exception() is None:
                self._waking.discard(fd)  # our caller reads the request right now

    def _ready(self, fd: int) -> None:
        waiters = self._waiters.get(fd)
        idle = self._idle.get(fd)
        if waiters is None or idle is None:
            return  # closed or unwatched since this callback was queued
        while waiters and waiters[0].done():
            waiters.popleft()
        if fd in self._waking:
            return  # a woken task is about to read it
        if not self._polls[fd].poll(0):
            return  # queued before the last read took the request
        if waiters:
            # Marked first: the woken task runs (and reads the request) inside set_result.
            self._waking.add(fd)
            self._idle[fd] = 0
            waiters.popleft().set_result(None)
        elif idle >= 1:
            # Readable twice with nobody waiting: every worker is busy. Stop watching until
            # one waits, rather than spin on a level-triggered fd.
            self._unwatch(fd)
        else:
            self._idle[fd] = idle + 1

    def _unwatch(self, fd: int) -> None:
        if self._idle.pop(fd, None) is not None:
            self._loop.remove_reader(fd)

    def notify_closing(self, fd: int) -> None:
        self._unwatch(fd)
        for future in self._waiters.pop(fd, ()):
            if not future.done():
                future.set_exception(self._closed())
        self._polls.pop(fd, None)

    def install(self, module: Any) -> None:
        """
        Put ``wait_readable``, ``notify_closing`` and the read lock's class in place of
        pyfuse3.asyncio's (the lock is pyfuse3's only use of ``Lock``).
        """
        patch_pyfuse3_waiting(module, self.wait_readable, self.notify_closing, _FreeLock)


class _FreeLock:
    """pyfuse3's read lock, made redundant by ``FuseFdWaiter``."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def main(argv: list[str] | None = None) -> int:
    """Run a mount helper (see the module docstring for the contract)."""
    try:
        os.setsid()  # outlive the plug-in that started us
    except OSError:
        pass  # already a session (or group) leader
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    label = host_port(args.host, args.port)
    _tune_malloc()
    # Twisted's TCP module loads pyOpenSSL (and OpenSSL with it) for startTLS when it can: about
    # 14 MiB of a helper that never speaks TLS. Without it, Twisted just has no startTLS.
    sys.modules.setdefault("OpenSSL", None)  # type: ignore[arg-type]

    from telenet.core.aio import install_asyncio_reactor

    install_asyncio_reactor()
    import pyfuse3.asyncio as pyfuse3_asyncio

    pyfuse3_asyncio.enable()
    from twisted.internet import reactor

    loop = reactor_loop(reactor)
    assert loop is not None, "install_asyncio_reactor() installed it"
    FuseFdWaiter(loop, pyfuse3_asyncio.ClosedResourceError).install(pyfuse3_asyncio)
    from twisted.internet.endpoints import HostnameEndpoint
    from twisted.internet.error import ReactorNotRunning
    from twisted.internet.interfaces import IReactorUNIX
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from telenet.sftp.connection import SFTPConnectionManager

    log_out = open(args.log_file, "a", buffering=1) if args.log_file else sys.stderr  # noqa: SIM115
    observer = FilteringLogObserver(
        textFileLogObserver(log_out), [LogLevelFilterPredicate(LogLevel.info)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    stdlib = logging.getLogger()
    stdlib.addHandler(_StdlibToTwisted())
    stdlib.setLevel(logging.INFO)

    mountpoint = os.path.abspath(args.mountpoint)
    timeout = args.timeout
    manager = SFTPConnectionManager(
        HostnameEndpoint(reactor, args.host, args.port, timeout=timeout),
        reactor,
        timeout=timeout,
        keepalive=min(5.0, max(timeout / 2, 0.5)),
        label=label,
    )
    fs = SFTPOperations(manager, store=pyfuse3.notify_store)
    outcome = {"code": 0}
    state: dict[str, Any] = {"main": None, "port": None}

    def stop() -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # already stopping

    def stop_soon() -> None:
        reactor.callLater(0, stop)  # after the answer to "shutdown" is on its way

    async def start() -> None:
        manager.start()
        try:
            await as_future(manager.whenConnected(failAfterFailures=1).addTimeout(timeout, reactor))
        except Exception as e:
            reason = manager.lastError if isinstance(e, defer.TimeoutError) else str(e)
            if isinstance(e, NotConnected):
                reason = manager.lastError
            _say({"error": f"cannot reach SFTP server at {label}: {reason}"})
            outcome["code"] = 1
            stop()
            return
        try:
            _clear_stale_mount(mountpoint)
            os.makedirs(mountpoint, exist_ok=True)
            options = {
                f"fsname=telemount:{label}",
                "subtype=telemount",
                "allow_other",
                "noatime",
            }
            pyfuse3.init(fs, mountpoint, options)
        except Exception as e:
            _say({"error": f"cannot mount {mountpoint}: {e}"})
            outcome["code"] = 1
            stop()
            return

        # The kernel sets the mount's read-ahead when it gets the answer to INIT: after that.
        def initialised() -> None:
            reactor.callLater(0, _tune_readahead, mountpoint)

        fs.on_init = initialised
        control = MountControl(fs, manager, args.host, args.port, mountpoint, stop_soon)
        try:
            if os.path.lexists(args.control):
                os.unlink(args.control)
            state["port"] = IReactorUNIX(reactor).listenUNIX(
                args.control, ControlFactory(control), mode=0o600
            )
        except Exception as e:
            pyfuse3.close(unmount=True)
            _say({"error": f"cannot listen on {args.control}: {e}"})
            outcome["code"] = 1
            stop()
            return
        main_task = asyncio.ensure_future(pyfuse3.main())
        state["main"] = main_task
        main_task.add_done_callback(lambda t: stop())  # e.g. fusermount3 -u from outside
        _tune_gc()
        _say({"ready": True, "pid": os.getpid()})
        sink = os.open(args.log_file or os.devnull, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.dup2(sink, 1)
        os.dup2(sink, 2)
        os.close(sink)
        log.info("mounted {label} at {mountpoint}", label=label, mountpoint=mountpoint)

    async def shutdown() -> None:
        main_task: asyncio.Future[None] | None = state["main"]
        if main_task is not None:
            if not main_task.done():
                pyfuse3.terminate()
                try:
                    await asyncio.wait_for(asyncio.shield(main_task), timeout + 5)
                except Exception:
                    log.warn("FUSE main loop did not end in time")
            if main_task.done() and not main_task.cancelled() and main_task.exception():
                log.failure("FUSE main loop failed", Failure(main_task.exception()))
            fs.release_all()
            pyfuse3.close(unmount=True)
            log.info("unmounted {mountpoint}", mountpoint=mountpoint)
        if state["port"] is not None:
            await as_future(defer.maybeDeferred(state["port"].stopListening))
            try:
                os.unlink(args.control)
            except FileNotFoundError:
                pass
        await as_future(manager.stop())

    reactor.callWhenRunning(lambda: as_deferred(start()))
    reactor.addSystemEventTrigger("before", "shutdown", lambda: as_deferred(shutdown()))
    reactor.run()
    return outcome["code"]


if __name__ == "__main__":
    sys.exit(main())
