"""
The filesystem's shared state and its bookkeeping: the inode table, the volumes, and the
attributes the kernel is told.

``InodeTable`` is the base of ``SFTPOperations``: its ``__init__`` sets every attribute the
handler mixins (``names``, ``files``, ``directories``) and ``PrefetchMixin`` rely on, and its
methods are what they all share (find an inode, make or drop one, refresh its attributes).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import hashlib
import os
import stat
import time
from collections.abc import Callable
from typing import Any

import pyfuse3
from pyfuse3 import EntryAttributes, FUSEError
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger

from telenet.fuse.dircache import MOST_TRUST, DirCache, trust_for
from telenet.fuse.errors import IO_ERRNOS, fuse_error
from telenet.fuse.nodes import (
    ROOT_INODE,
    ConnectionSource,
    DirHandle,
    FileHandle,
    IOCounters,
    MountedVolume,
    Node,
)
from telenet.fuse.owners import SERVER_OWNED, Ownership, Settler
from telenet.fuse.prefetch import Ahead, Listing, PrefetchMixin
from telenet.fuse.specials import SpecialNodes
from telenet.sftp.client import SFTPClient
from telenet.sftp.codec import FileAttrs
from telenet.sftp.errors import SFTPNotConnected, SFTPStatusError
from telenet.sftp.transfer import ReadBudget

__all__ = ["ATTR_TIMEOUT", "ENTRY_TIMEOUT", "NEGATIVE_TIMEOUT", "InodeTable", "dir_of"]

#: The helper process's one log namespace (its events read the same from every module).
log = Logger(namespace="telenet.fuse.helper")

#: Seconds the kernel (and we) may trust a name or attributes; short, the server is shared.
ENTRY_TIMEOUT = 1.0
ATTR_TIMEOUT = 1.0
#: Seconds the kernel may remember that a name does not exist.
NEGATIVE_TIMEOUT = 1.0
#: Per open file: bytes of READs kept in flight ahead of a sequential reader.
READAHEAD_WINDOW = 8 << 20
#: All readers together (ReadBudget): one streams with its whole window, four share this.
READAHEAD_TOTAL = 8 << 20
#: Per open file: bytes of WRITEs sent but not yet answered before a writer has to wait.
WRITE_BEHIND = 8 << 20
_BLKSIZE = 131072


def _invalidate_entry(parent: int, name: bytes) -> None:
    pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)


class InodeTable(PrefetchMixin, pyfuse3.Operations):
    """
    The state of the filesystem and what every handler shares: the inode table (stable per
    (volume, remote path) while the kernel knows them: lookup counts and ``forget``), the
    volumes, and attributes cached for ``attr_timeout``.
    """

    def __init__(
        self,
        source: ConnectionSource,
        *,
        now: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        invalidate: Callable[[int, bytes], None] = _invalidate_entry,
        store: Callable[[int, int, Any], None] | None = None,
        readdir_reply: Callable[[Any, bytes, EntryAttributes, int], bool] = pyfuse3.readdir_reply,
        entry_timeout: float = ENTRY_TIMEOUT,
        attr_timeout: float = ATTR_TIMEOUT,
        negative_timeout: float = NEGATIVE_TIMEOUT,
        most_trust: float = MOST_TRUST,
        readahead: int = READAHEAD_WINDOW,
        write_behind: int = WRITE_BEHIND,
    ) -> None:
        super().__init__()
        self._source = source
        self._now = now
        self._wall = wall
        self._invalidate = invalidate
        self._store = store
        self._readdir_reply = readdir_reply
        self.entry_timeout = entry_timeout
        self.attr_timeout = attr_timeout
        self.negative_timeout = negative_timeout
        self.most_trust = most_trust
        # Complete listings, trusted as long as their directory's age allows (dircache),
        # and what lists a directory whose names are being looked up (listings).
        self._dircache = DirCache()
        self._lookup_listings: dict[tuple[int, bytes], asyncio.Future[None]] = {}
        self._misses: dict[tuple[int, bytes], float] = {}
        self._written: dict[tuple[int, bytes], float] = {}  # when this mount last changed each
        self._read_at: dict[tuple[int, bytes], float] = {}  # when a program last read each
        self._readahead = readahead
        self._read_budget = ReadBudget(max(readahead, READAHEAD_TOTAL), now=now)
        self._write_behind = write_behind
        self.volumes: dict[str, MountedVolume] = {}
        self._by_bname: dict[bytes, MountedVolume] = {}
        self._nodes: dict[int, Node] = {}
        self._by_key: dict[tuple[int, bytes], Node] = {}
        self._next_vid = 1
        self._files: dict[int, FileHandle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._next_fh = 1
        self._specials = SpecialNodes()  # FIFOs, sockets and devices: the server has none
        self._settler = Settler()  # new names get their creator's owner and modes
        self._root_mtime_ns = time.time_ns()
        self.counters = IOCounters()
        # Small files fetched ahead of a reader walking a directory (see _walk).
        self._listings: collections.OrderedDict[tuple[int, bytes], Listing] = (
            collections.OrderedDict()
        )
        self._ahead: dict[tuple[int, bytes], Ahead] = {}
        self._claiming: dict[tuple[int, bytes], Ahead] = {}  # taken, bytes still on the way
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

    def _node(self, inode: int) -> Node:
        node = self._nodes.get(inode)
        if node is None or node.vol.removed:
            raise FUSEError(errno.ESTALE)
        return node

    def _child(self, vol: MountedVolume, rel: bytes) -> Node:
        node = self._by_key.get((vol.vid, rel))
        if node is None:
            node = Node(self._free_ino(vol, rel), vol, rel)
            self._nodes[node.ino] = node
            self._by_key[(vol.vid, rel)] = node
        return node

    def _free_ino(self, vol: MountedVolume, rel: bytes) -> int:
        """
        The inode number of ``rel`` in ``vol``: the same whenever the kernel asks again
        (after it forgot the name, after a remount), as a disk's are, so that what keys on
        them stays valid (git's index holds each file's inode and re-reads every file whose
        number changed). Derived from the volume's name and the path; on the rare clash
        with a live inode, the next free number.
        """
        digest = hashlib.blake2b(vol.bname + b"\0" + rel, digest_size=8).digest()
        # 48 bits: exact in programs that hold numbers as doubles (JavaScript's stat).
        ino = int.from_bytes(digest, "big") >> 16
        while ino in self._nodes or ino <= ROOT_INODE:
            ino = ino + 1 if ino < (1 << 48) - 1 else ROOT_INODE + 1
        return ino

    def _maybe_drop(self, node: Node) -> None:
        if node.lookups > 0 or node.handles:
            return
        if node is node.vol.root and not node.vol.removed:
            return  # a live volume's root stays
        del self._nodes[node.ino]
        if self._by_key.get((node.vol.vid, node.rel)) is node:
            del self._by_key[(node.vol.vid, node.rel)]

    def _detach(self, vol: MountedVolume, rel: bytes) -> None:
        """The remote path ``rel`` is gone (and anything under it)."""
        self._drop_ahead(vol.vid, rel, under=True)
        if rel:
            self._dircache.remove((vol.vid, dir_of(rel)), rel.rpartition(b"/")[2])
        self._dircache.drop(vol.vid, rel, under=True)
        self._changed_elsewhere(vol, rel, under=True)
        if self._specials:
            self._specials.drop(vol.vid, rel)
        node = self._by_key.pop((vol.vid, rel), None)
        if node is not None:
            node.detached = True
            self._maybe_drop(node)
        prefix = rel + b"/"
        for key in [k for k in self._by_key if k[0] == vol.vid and k[1].startswith(prefix)]:
            child = self._by_key.pop(key)
            child.detached = True
            self._maybe_drop(child)

    def _move(self, vol: MountedVolume, old: bytes, new: bytes) -> None:
        """The remote path ``old`` is now ``new`` (and so is everything under it)."""
        self._detach(vol, new)
        self._drop_ahead(vol.vid, old, under=True)
        self._dircache.drop(vol.vid, dir_of(old))
        self._dircache.drop(vol.vid, dir_of(new))  # it shows ``new`` now
        self._dircache.drop(vol.vid, old, under=True)
        self._changed_elsewhere(vol, old, under=True)
        self._changed_elsewhere(vol, new, under=True)
        if self._specials:
            self._specials.move(vol.vid, old, new)
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

    async def add_volume(
        self, name: str, path: str, ro: bool, owner: Ownership = SERVER_OWNED
    ) -> str | None:
        """
        Show remote directory ``path`` as volume ``name``; None on success, else why not.

        Re-adding a volume unchanged is fine; a different path, ro flag or ownership
        replaces it.
        """
        existing = self.volumes.get(name)
        if (
            existing is not None
            and os.fsencode(path) == existing.path
            and existing.ro == ro
            and existing.owner == owner
        ):
            return None
        label = self._source.label
        try:
            client = self._source.current()
            attrs = await client.stat(os.fsencode(path))
        except SFTPNotConnected as e:
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
        vol = MountedVolume(name, path, ro, self._next_vid, owner)
        self._next_vid += 1
        vol.root = self._child(vol, b"")
        self._set_attrs(vol.root, attrs)
        self.volumes[name] = vol
        self._by_bname[vol.bname] = vol
        self._root_mtime_ns = time.time_ns()
        log.info(
            "volume {name} shows {path} (ro={ro}, owner={owner})",
            name=name,
            path=path,
            ro=ro,
            owner=owner,
        )
        return None

    def remove_volume(self, name: str) -> None:
        vol = self.volumes.get(name)
        if vol is not None:
            self._drop_volume(vol)
            self._root_mtime_ns = time.time_ns()
            log.info("volume {name} removed", name=name)

    def _drop_volume(self, vol: MountedVolume) -> None:
        vol.removed = True
        self._specials.drop_volume(vol.vid)
        self._dircache.drop_volume(vol.vid)
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

    def _trust(self, a: FileAttrs) -> float:
        """Seconds to trust ``a`` from when the server said it (see telenet.fuse.dircache)."""
        return trust_for(a.mtime, self._wall(), self.attr_timeout, self.most_trust)

    def _set_attrs(self, node: Node, a: FileAttrs, taken: float | None = None) -> EntryAttributes:
        """
        Record ``a`` as ``node``'s attributes, as the server gave them at ``taken`` (now, by
        default; earlier for a listing kept a while), and the entry the kernel is told.
        """
        now = self._now()
        trust = self._trust(a)
        expires = (now if taken is None else taken) + trust
        e = EntryAttributes()
        e.st_ino = node.ino
        if taken is None and trust <= self.attr_timeout:
            e.entry_timeout = self.entry_timeout
            e.attr_timeout = self.attr_timeout
        else:  # the kernel keeps it as long as we do
            e.entry_timeout = e.attr_timeout = max(0.0, expires - now)
        uid, gid, mode = node.vol.owner.shown(a, stat.S_IFREG | 0o644)
        if node.vol.ro:
            mode &= ~0o222
        e.st_mode = mode
        e.st_nlink = 1
        if self._specials:
            special = self._specials.get(node.vol.vid, node.rel)
            if special is not None:
                e.st_rdev = special.rdev
                e.st_nlink = self._specials.links(special)
        e.st_uid = uid
        e.st_gid = gid
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
        node.expires = expires
        node.fetched = now if taken is None else taken
        return e

    def _changed_elsewhere(self, vol: MountedVolume, rel: bytes, under: bool = False) -> None:
        """
        This mount changed ``rel`` of ``vol``: other volumes showing the same remote path
        (a read-only and a writable view of one directory) forget what they knew of it, and
        the kernel its name there, so that they show the change at once too.
        """
        if len(self.volumes) < 2:
            return
        remote = vol.remote(rel)
        for other in self.volumes.values():
            alias = None if other is vol else other.shows(remote)
            if alias is None:
                continue
            self._dircache.drop(other.vid, dir_of(alias))
            self._dircache.drop(other.vid, alias, under=under)
            node = self._by_key.get((other.vid, alias))
            if node is not None:
                node.expires = 0.0
            parent = self._by_key.get((other.vid, dir_of(alias))) if alias else None
            if parent is not None:
                try:
                    self._invalidate(parent.ino, alias.rpartition(b"/")[2])
                except Exception:
                    log.failure("invalidating {path} failed", path=remote)

    def _negative(self, until: float | None = None) -> EntryAttributes:
        """
        "No such name", for the kernel to keep a moment (inode 0 makes a negative dentry):
        tools that probe many paths ask once. Creating the name through this mount replaces
        it at once; a name made on the server shows after ``negative_timeout``.
        """
        e = EntryAttributes()
        e.st_ino = 0
        e.entry_timeout = self.negative_timeout
        if until is not None:  # from a listing trusted until then
            e.entry_timeout = max(self.negative_timeout, until - self._now())
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

    def _failed(self, e: Exception) -> FUSEError:
        """``e`` as a FUSE handler fails with it, counted if it is an I/O error."""
        error = fuse_error(e)
        if error.errno in IO_ERRNOS:
            self.counters.io_errors += 1
        return error

    def _client(self) -> SFTPClient:
        try:
            return self._source.current()
        except SFTPNotConnected:
            raise FUSEError(errno.ENOTCONN) from None

    def _writable(self, node: Node) -> None:
        if node.vol.ro:
            raise FUSEError(errno.EROFS)

    def _parent(self, inode: int) -> Node:
        if inode == ROOT_INODE:
            raise FUSEError(errno.EROFS)  # the root only holds volumes
        node = self._node(inode)
        self._writable(node)
        return node

    @staticmethod
    def _join(parent: Node, name: bytes) -> bytes:
        return parent.rel + b"/" + name if parent.rel else name


def dir_of(rel: bytes) -> bytes:
    """The directory holding ``rel`` (``b""``: the volume's root)."""
    return rel.rpartition(b"/")[0]
