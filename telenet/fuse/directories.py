"""
The directory handlers of ``SFTPOperations``: opendir, readdir (answered while the server is
still listing, batch by batch) and releasedir.

Separate because a listing has its own handle (``DirHandle``) and streaming logic, and feeds
the prefetch the order a reader may walk the files in.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any

from pyfuse3 import FileInfo, FUSEError
from twisted.python.failure import Failure

from telenet.fuse.errors import fuse_op
from telenet.fuse.listings import ListingsMixin
from telenet.fuse.nodes import ROOT_INODE, DirHandle, Node, opened_dir
from telenet.fuse.resume import Resume, running_loop
from telenet.sftp.codec import FileAttrs, NameEntry

__all__ = ["READDIR_REPLY", "DirectoriesMixin"]

#: Entries a FUSE readdir waits for before answering (unless the listing is complete).
READDIR_REPLY = 384


class DirectoriesMixin(ListingsMixin):
    """
    Directory operations. Relies on ``InodeTable`` (``_dirs``, ``_next_fh``, ``volumes``,
    the table, ``_set_attrs``, ``_readdir_reply``) and ``PrefetchMixin._remember_listing``.
    """

    @fuse_op()
    async def opendir(self, inode: int, ctx: Any = None) -> int | FileInfo:  # type: ignore[override]
        node = None if inode == ROOT_INODE else self._node(inode)
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = DirHandle(node)
        if node is None:
            return fh  # the volumes: they come and go without a change of mtime
        # The kernel may keep reading its own copy while the listing it was filled from is
        # the one kept here: the same trust, no request per walk of an unchanged tree.
        kept = self._dircache.get((node.vol.vid, node.rel), self._now())
        return opened_dir(fh, kept is not None and kept.serial == node.kernel_listing)

    @fuse_op()
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        dh = self._dirs.get(fh)
        if dh is None:
            raise FUSEError(errno.EBADF)
        if dh.entries is None or start_id == 0:
            node = dh.node
            pending = None if node is None else self._lookup_listings.get((node.vol.vid, node.rel))
            if pending is not None:  # listed already, ahead of this walk: use that
                await asyncio.wait([pending])
            self._start_listing(dh)
        # Answered once a reply's worth has arrived (or all of it): the kernel and the
        # program read the first entries while the server is still listing the rest.
        while not dh.done and len(dh.entries) < start_id + READDIR_REPLY:  # type: ignore[arg-type]
            dh.waiter = Resume(running_loop())
            await dh.waiter
        entries = dh.entries
        assert entries is not None
        if dh.error is not None and len(entries) <= start_id:
            raise dh.error
        for i in range(start_id, len(entries)):
            name, what = entries[i]
            if isinstance(what, Node):  # a volume of the root
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
                if node.entry is not None and node.expires > self._now():
                    # known since the listing was made, or changed here
                    entry = self._cached(node.entry, node.expires)
                else:
                    entry = self._set_attrs(node, what, dh.taken)
            if not self._readdir_reply(token, name, entry, i + 1):
                self._maybe_drop(node)
                break
            node.lookups += 1

    def _start_listing(self, dh: DirHandle) -> None:
        """(Re)start listing ``dh``'s directory into a fresh ``dh.entries``."""
        node = dh.node
        client = None if node is None else self._client()
        entries: list[tuple[bytes, Node | FileAttrs]] = []
        dh.entries = entries
        dh.error = None
        if node is None or client is None:
            entries.extend((v.bname, v.root) for v in self.volumes.values())
            dh.done = True
            return
        dh.done = False
        if self._specials:
            entries.extend(self._specials.children(node.vol.vid, node.rel))
        key = (node.vol.vid, node.rel)
        kept = self._dircache.get(key, self._now())
        listed = None if kept is None else kept.entries()
        if kept is not None and listed is not None:
            dh.taken = kept.taken
            dh.snapshot = kept.serial
            entries.extend(listed)
            dh.done = True
            self._remember_listing(node, entries)  # type: ignore[arg-type]
            self._read_dir(node, listed)
            return
        dh.taken = taken = self._now()
        streamed = []

        def batch(names: list[NameEntry]) -> None:
            if dh.entries is entries:  # not restarted (rewinddir) since
                streamed.append(True)
                entries.extend((e.filename, e.attrs) for e in names)
                if dh.waiter is not None:
                    # A loop turn later: the listing asks for its next batches first.
                    running_loop().call_soon(dh.wake)

        def done(names: list[NameEntry]) -> None:
            if dh.entries is entries:
                if not streamed:  # a client that gives the listing whole
                    entries.extend((e.filename, e.attrs) for e in names)
                dh.done = True
                self._remember_listing(node, entries)  # type: ignore[arg-type]
                self._keep_listing(node, entries, taken)
                kept = self._dircache.get(key, self._now())
                dh.snapshot = None if kept is None else kept.serial
                self._read_dir(node, [(n, a) for n, a in entries if isinstance(a, FileAttrs)])
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
        dh = self._dirs.pop(fh, None)
        if dh is not None and dh.node is not None and dh.snapshot is not None:
            dh.node.kernel_listing = dh.snapshot  # what this handle gave the kernel
