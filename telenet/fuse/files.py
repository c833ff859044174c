"""
The file handlers of ``SFTPOperations``: open and create, read and write (through a
``ReadAhead`` window and a ``PipelinedWriter`` per open file), flush, fsync and release, and
reopening a handle on a new connection after a reconnect.

Separate because open files have their own state (``FileHandle``) and their own fast paths
(bytes stored in the kernel's page cache at open, files fetched ahead claimed).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import Any

from pyfuse3 import EntryAttributes, FileInfo, FUSEError
from twisted.conch.ssh import filetransfer as ft
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from telenet.fuse.errors import fuse_op
from telenet.fuse.handles import HandlesMixin
from telenet.fuse.nodes import FileHandle, Node, opened_file
from telenet.fuse.owners import check_name
from telenet.fuse.prefetch import PAGE, PREFETCH_MAX, Ahead
from telenet.fuse.resume import Resume, both, running_loop, wait
from telenet.sftp.client import SFTPClient
from telenet.sftp.codec import FileAttrs
from telenet.sftp.errors import SFTPStatusError
from telenet.sftp.transfer import PipelinedWriter, ReadAhead

__all__ = ["SETTLED", "FilesMixin"]

#: The helper process's one log namespace (its events read the same from every module).
log = Logger(namespace="telenet.fuse.helper")

#: Seconds after which a file's mtime is "settled" for keeping its cached pages.
SETTLED = 60.0


class FilesMixin(HandlesMixin):
    """
    File operations. Relies on ``InodeTable`` (``_files``, ``_next_fh``, ``_store``,
    ``_source``, ``_readahead``, ``_write_behind``, the table and attributes) and on
    ``PrefetchMixin`` (``_ahead``, ``_claiming``, ``_take_ahead``, ``_drop_ahead``, ``_walk``).
    """

    def _register(
        self,
        node: Node,
        flags: int,
        client: SFTPClient,
        handle: bytes,
        reader: ReadAhead | None = None,
    ) -> FileHandle:
        fh = self._next_fh
        self._next_fh += 1
        h = FileHandle(fh, node, flags, client, handle)
        h.reader = reader  # else made at the first READ: most small files never get one
        if flags & ft.FXF_WRITE:
            h.writer = PipelinedWriter(client, handle, self._write_behind)
        self._files[fh] = h
        node.handles.add(h)
        return h

    def _reader(self, node: Node, client: SFTPClient, handle: bytes) -> ReadAhead:
        size = node.attrs.size if node.attrs is not None else None
        return ReadAhead(
            client, handle, window=self._readahead, sizeHint=size, budget=self._read_budget
        )

    @staticmethod
    def _sftp_flags(flags: int) -> int:
        mode = flags & os.O_ACCMODE
        if mode == os.O_WRONLY:
            return ft.FXF_WRITE
        if mode == os.O_RDWR:
            return ft.FXF_READ | ft.FXF_WRITE
        return ft.FXF_READ

    @fuse_op()
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
            handle = await wait(client.open(node.remote, sflags | ft.FXF_TRUNC))
            self._stale(node)
            for other in node.handles:
                if other.reader is not None:
                    other.reader.reset()
            h = self._register(node, sflags, client, handle)
            h.wrote = True
            h.wrote_at = self._now()
            h.size = 0
            return FileInfo(fh=h.fh)
        keep = self._keep_cache(node)
        if keep and sflags == ft.FXF_READ and ahead is None:
            # The kernel has its pages: no OPEN until it asks for one (if memory took them).
            if node.attrs is not None and (node.attrs.size or 0) <= PREFETCH_MAX:
                self._walk(node, client)
            h = self._register(node, sflags, client, b"")
            return opened_file(h.fh, keep_cache=True, reading=True)
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
                reader.prefetch((size // PAGE + 1) * PAGE)
                readers.append(reader)
                return handle

            opening.addCallback(prefetch)
        if small and ahead is None:
            self._walk(node, client)  # after our own OPEN: it goes first
        handle = await wait(opening)
        h = self._register(node, sflags, client, handle, readers[0] if readers else None)
        if readers and size and self._store is not None and len(node.handles) == 1:
            keep = await self._preload(node, readers[0], size)
        return opened_file(h.fh, keep_cache=keep, reading=sflags == ft.FXF_READ)

    async def _preload(self, node: Node, reader: ReadAhead, size: int) -> bool:
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
                data = await wait(data)
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

    async def _claim(self, node: Node, ahead: Ahead, client: SFTPClient) -> FileInfo | None:
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
            ahead.waiter = Resume(running_loop())
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
        return opened_file(h.fh, keep_cache=keep, reading=True)

    def _keep_cache(self, node: Node) -> bool:
        """
        Whether the kernel may keep this file's cached pages from an earlier open.

        Only when the file is unchanged since that open: fresh attributes with the same mtime
        and size, and at that open the mtime was already "settled" (well in the past), so a
        later change could not hide in the same one-second mtime (the margin is wide to
        survive clock skew between this machine and the server); or, for a file changed
        lately, while the attributes that open saw are still the ones trusted (not asked
        again since): its pages are as current as those attributes, as the cache promises.
        """
        a = node.attrs
        now = self._now()
        if a is None or a.mtime is None or node.expires <= now:
            node.opened = node.opened_young = None
            return False
        version = (a.mtime, a.size)
        young = node.opened_young
        keep = node.opened == version or (
            young is not None and young[:2] == version and node.fetched < young[2]
        )
        settled = a.mtime < time.time() - SETTLED
        node.opened = version if settled else None
        node.opened_young = None if settled else (*version, now)
        return keep

    @fuse_op(errno.EEXIST)
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any = None
    ) -> tuple[FileInfo, EntryAttributes]:
        parent = self._parent(parent_inode)
        check_name(name)
        sflags = self._sftp_flags(flags)
        open_flags = sflags | ft.FXF_CREAT
        if flags & os.O_TRUNC:
            open_flags |= ft.FXF_TRUNC
        client = self._client()
        rel = self._join(parent, name)
        self._drop_ahead(parent.vol.vid, rel)
        path = parent.vol.remote(rel)
        perms = FileAttrs(permissions=stat.S_IMODE(mode))
        # Exclusive first, even without O_EXCL: only a file this call made gets the owner and
        # modes of its creator. The kernel asks only for names it believes missing, so a
        # second OPEN is rare (a file made on the server meanwhile).
        try:
            handle, attrs = await both(
                client.open(path, open_flags | ft.FXF_EXCL, perms, lazy=True), client.lstat(path)
            )
        except SFTPStatusError as e:
            if flags & os.O_EXCL or (e.code != ft.FX_FAILURE and e.errno != errno.EEXIST):
                raise
            handle, attrs = await both(client.open(path, open_flags, perms), client.lstat(path))
            made = False  # it was there: the directory did not change
        else:
            attrs = await self._settler.settle(
                client, parent.vol.owner, parent.attrs, path, attrs, ctx, mode
            )
            made = True
        node = self._child(parent.vol, rel)
        entry = self._set_attrs(node, attrs)
        node.lookups += 1
        if made:
            self._grew(parent, name, attrs)
        else:
            self._stale(parent)
        h = self._register(node, sflags, client, handle)
        h.wrote = True
        h.wrote_at = self._now()
        h.size = attrs.size
        return FileInfo(fh=h.fh), entry

    def _file(self, fh: int) -> FileHandle:
        h = self._files.get(fh)
        if h is None:
            raise FUSEError(errno.EBADF)
        return h

    # typing note: pyfuse3 says bytes; it takes any contiguous buffer (PyObject_GetBuffer).
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        h = self._file(fh)
        try:
            client = h.client
            if not h.handle or not client.alive or client is not self._source.current():
                await self._ready(h)
            reader = h.reader
            if reader is None:
                if not h.flags & ft.FXF_READ:
                    raise FUSEError(errno.EBADF)
                reader = h.reader = self._reader(h.node, h.client, h.handle)
            data = reader.read(off, size)
            if isinstance(data, Deferred):
                data = await wait(data)
            self.counters.read_bytes += len(data)
            return data
        except Exception as e:
            raise self._failed(e) from None

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
            self._stale(node)
            if self._ahead:
                self._drop_ahead(node.vol.vid, node.rel)
            h.wrote = True
            h.wrote_at = self._now()
            if h.size is not None:
                h.size = max(h.size, off + len(buf))
            if h.pending is not None and h.pending.mtime is not None:
                h.pending = h.pending._replace(atime=None, mtime=None)  # the write's time wins
            if len(node.handles) > 1:
                for other in node.handles:
                    if other.reader is not None:
                        other.reader.reset()
            elif h.reader is not None:
                h.reader.reset()
            pending = writer.write(off, buf)
            if pending is not None:
                await wait(pending)
            self.counters.written_bytes += len(buf)
            return len(buf)
        except Exception as e:
            raise self._failed(e) from None

    @fuse_op()
    async def flush(self, fh: int) -> None:
        h = self._file(fh)
        await self._drain(h)

    @fuse_op()
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self._file(fh)
        await self._drain(h)
        if h.writer is not None:
            await self._ready(h)
            await wait(h.client.fsync(h.handle))

    @fuse_op()
    async def release(self, fh: int) -> None:
        h = self._files.pop(fh, None)
        if h is None:
            return
        node = h.node
        node.handles.discard(h)
        try:
            await self._drain(h)
        finally:
            if h.client.alive and h.handle:
                # A reader's CLOSE can wait to go out with the next request (or a moment).
                h.client.close(h.handle, soon=h.writer is None).addErrback(
                    lambda f: log.warn(
                        "closing {path}: {error}", path=node.remote, error=f.getErrorMessage()
                    )
                )
            if h.wrote and node.fetched <= h.wrote_at:  # else fetched since the last write
                self._stale(node)
            if node.lookups <= 0:
                self._maybe_drop(node)
