"""
What the filesystem is made of: the volumes it shows, its inodes, its open file and directory
handles, and the source of its SFTP connection.

Plain records (slots, no behaviour beyond a path or two), kept apart from the handlers that
fill them in so that every handler module can share them without importing the others.
"""

from __future__ import annotations

import asyncio
import os
import stat
from typing import Protocol

import pyfuse3
from pyfuse3 import EntryAttributes

from telenet.fuse.owners import SERVER_OWNED, Ownership
from telenet.fuse.resume import Resume
from telenet.sftp.client import SFTPClient
from telenet.sftp.codec import FileAttrs
from telenet.sftp.transfer import PipelinedWriter, ReadAhead

__all__ = ["ROOT_INODE", "ConnectionSource", "DirHandle", "FileHandle", "MountedVolume", "Node"]

ROOT_INODE = pyfuse3.ROOT_INODE


class ConnectionSource(Protocol):
    """Where the filesystem gets its SFTP connection (an ``SFTPConnectionManager``)."""

    label: str
    since: float

    @property
    def connected(self) -> bool: ...

    def current(self) -> SFTPClient: ...


class MountedVolume:
    """A remote directory shown as ``<mountpoint>/<name>``."""

    __slots__ = ("name", "bname", "path", "prefix", "ro", "vid", "root", "removed", "owner")

    def __init__(
        self, name: str, path: str, ro: bool, vid: int, owner: Ownership = SERVER_OWNED
    ) -> None:
        self.name = name
        self.bname = os.fsencode(name)
        self.path = os.fsencode(path)
        # Remote path of a child is prefix + b"/" + relative path ("/" itself has no prefix).
        self.prefix = self.path.rstrip(b"/")
        self.ro = ro
        self.vid = vid
        self.owner = owner
        self.removed = False
        self.root: Node  # set right after by the filesystem

    def remote(self, rel: bytes) -> bytes:
        return self.prefix + b"/" + rel if rel else self.path

    def shows(self, remote: bytes) -> bytes | None:
        """The relative path of the remote path ``remote`` in this volume; None if outside."""
        if remote == self.path:
            return b""
        if remote.startswith(self.prefix + b"/"):
            return remote[len(self.prefix) + 1 :]
        return None


class IOCounters:
    """What went through a mount since the helper started (its health, in ``Status``)."""

    __slots__ = ("read_bytes", "written_bytes", "io_errors")

    def __init__(self) -> None:
        self.read_bytes = 0
        self.written_bytes = 0
        self.io_errors = 0


#: A pyfuse3 built with scripts/pyfuse3/patch.py passes on FOPEN_CACHE_DIR and FOPEN_NOFLUSH.
OPEN_FLAGS = hasattr(pyfuse3.FileInfo, "cache_readdir")


def opened_file(fh: int, keep_cache: bool = True, reading: bool = False) -> pyfuse3.FileInfo:
    """
    The answer to an open. A file opened only for reading has nothing to flush at close: the
    kernel is told not to ask (one request less per open and close of an unchanged file).
    """
    if reading and OPEN_FLAGS:
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep_cache, noflush=True)
    return pyfuse3.FileInfo(fh=fh, keep_cache=keep_cache)


def opened_dir(fh: int, kept: bool) -> int | pyfuse3.FileInfo:
    """
    The answer to an opendir. With the open flags, the kernel keeps the listing it reads in its
    page cache (FOPEN_CACHE_DIR) and reads it from there while it checks the directory's mtime
    unchanged; ``kept``: the listing it holds is still the one to trust (otherwise it is dropped
    at this open and read again).
    """
    if not OPEN_FLAGS:
        return fh
    return pyfuse3.FileInfo(fh=fh, keep_cache=kept, cache_readdir=True)


def writing(node: Node) -> FileHandle | None:
    """The one handle writing ``node`` that knows its size from its own writes, if any."""
    if node.attrs is None or (node.attrs.permissions or 0) & (stat.S_ISUID | stat.S_ISGID):
        return None  # a write may clear set-id bits: the server is to say
    found = None
    for h in node.handles:
        if h.writer is not None:
            if found is not None or h.size is None or h.error is not None:
                return None
            found = h
    return found


def as_written(attrs: FileAttrs, h: FileHandle, wall_now: int) -> FileAttrs:
    """
    ``attrs`` (what the server said when ``h.node`` was last asked) as ``h``'s writes since,
    and the mode and times set through it, leave the file.
    """
    assert h.size is not None
    mtime = attrs.mtime if h.wrote_at <= h.node.fetched else wall_now
    attrs = attrs._replace(size=h.size, mtime=mtime)
    p = h.pending
    if p is None:
        return attrs
    return changed_attrs(attrs, None, None, p.permissions, p.atime, p.mtime)


def changed_attrs(
    a: FileAttrs,
    uid: int | None,
    gid: int | None,
    perms: int | None,
    atime: int | None,
    mtime: int | None,
) -> FileAttrs:
    """``a`` with a SETSTAT's changes (the type bits of ``permissions`` kept)."""
    if perms is not None:
        a = a._replace(permissions=stat.S_IFMT(a.permissions or 0) | perms)
    if uid is not None or gid is not None:
        a = a._replace(uid=uid if uid is not None else a.uid, gid=gid if gid is not None else a.gid)
    if atime is not None or mtime is not None:
        a = a._replace(
            atime=atime if atime is not None else a.atime,
            mtime=mtime if mtime is not None else a.mtime,
        )
    return a


def handle_of(opened: int | pyfuse3.FileInfo) -> int:
    """The handle in an opendir's answer, as pyfuse3 reads it."""
    return opened.fh if isinstance(opened, pyfuse3.FileInfo) else opened


class Node:
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
        "fetched",
        "opened_young",
        "kernel_listing",
    )

    def __init__(self, ino: int, vol: MountedVolume, rel: bytes) -> None:
        self.ino = ino
        self.vol = vol
        self.rel = rel
        self.lookups = 0
        self.entry: EntryAttributes | None = None
        self.attrs: FileAttrs | None = None
        self.expires = 0.0
        self.handles: set[FileHandle] = set()
        self.opened: tuple[int | None, int | None] | None = None  # (mtime, size) at last open
        self.detached = False  # unlinked or renamed over: its path means something else now
        self.fetched = 0.0  # when the server said ``attrs`` (monotonic)
        # (mtime, size, when) at the last open of a file changed too lately to be "settled"
        self.opened_young: tuple[int | None, int | None, float] | None = None
        # The kept listing (its serial) the kernel's own copy of this directory was filled from.
        self.kernel_listing = 0

    @property
    def remote(self) -> bytes:
        return self.vol.remote(self.rel)


class FileHandle:
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
        "wrote_at",
        "size",
        "pending",
    )

    def __init__(self, fh: int, node: Node, flags: int, client: SFTPClient, handle: bytes):
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
        self.wrote_at = 0.0  # when it last changed the file (monotonic)
        # The file's size as this handle's writes leave it, when known (a file it made or
        # truncated), and the mode and times set through it, sent at its flush.
        self.size: int | None = None
        self.pending: FileAttrs | None = None


class DirHandle:
    __slots__ = ("node", "entries", "done", "error", "waiter", "taken", "snapshot")

    def __init__(self, node: Node | None) -> None:
        self.node = node  # None for the mount root
        self.taken = 0.0  # when the listing was asked of the server (monotonic)
        # The listing so far: it grows as the server's batches arrive, until ``done``.
        self.entries: list[tuple[bytes, Node | FileAttrs]] | None = None
        self.done = False
        self.error: BaseException | None = None
        self.waiter: Resume[None] | None = None
        self.snapshot: int | None = None  # the kept listing ``entries`` is (its serial), once done

    def wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter.set_result(None)
