"""
A file handle's life on the connection, apart from its reads and writes: reopening it after a
reconnect (or at last, for one whose pages the kernel was to have), and draining it at flush,
its writes and the mode and times set through it meanwhile.

Separate because it is what a close waits for, where a written file's errors show.
"""

from __future__ import annotations

import asyncio
import errno

from pyfuse3 import FUSEError
from twisted.logger import Logger

from telenet.fuse.listings import ListingsMixin
from telenet.fuse.nodes import FileHandle
from telenet.fuse.resume import wait
from telenet.sftp.errors import SFTPStatusError
from telenet.sftp.transfer import PipelinedWriter

__all__ = ["HandlesMixin"]

#: The helper process's one log namespace (its events read the same from every module).
log = Logger(namespace="telenet.fuse.helper")


class HandlesMixin(ListingsMixin):
    """Relies on ``InodeTable`` (``_source``, ``_write_behind``, attributes)."""

    async def _ready(self, h: FileHandle) -> None:
        """
        Make sure ``h`` is open on the live connection (reopening after a reconnect, or
        opening at last a handle whose pages the kernel was to have).
        """
        while not h.handle or h.client is not self._source.current() or not h.client.alive:
            if h.reopening is None:
                h.reopening = asyncio.ensure_future(self._reopen(h))
            try:
                await asyncio.shield(h.reopening)
            finally:
                if h.reopening is not None and h.reopening.done():
                    h.reopening = None

    async def _reopen(self, h: FileHandle) -> None:
        client = self._source.current()
        if h.writer is not None and (h.writer.error is not None or h.writer.inFlight):
            # Writes the old connection never confirmed are lost: say so from now on.
            h.error = errno.EIO
        handle = await wait(client.open(h.node.remote, h.flags))
        if h.handle:
            log.info("reopened {path} after a reconnect", path=h.node.remote)
        h.client = client
        h.handle = handle
        h.reader = None  # made again at the next READ, on the new handle
        if h.writer is not None:
            h.writer = PipelinedWriter(client, handle, self._write_behind)

    async def _drain(self, h: FileHandle) -> None:
        """
        Wait for ``h``'s writes, and send the mode and times set while it wrote a file it
        made: tar, cp -p and package managers set both on every file they unpack, so they
        cost no round trip of their own. Their errors (EPERM) show here, at the close, as
        write-behind's do; until then this mount shows the file as set.
        """
        if h.error is not None:
            raise FUSEError(h.error)
        if h.writer is None:
            return
        pending, h.pending = h.pending, None
        if pending is None:
            await wait(h.writer.flush())
            if h.wrote and h.node.fetched <= h.wrote_at:
                self._stale(h.node)
            return
        # The mode and times set through this handle, after its writes (the same handle's
        # requests are done in order), then what the file is now: one round trip. After a
        # reconnect the handle is opened again, unless writes it never confirmed were lost
        # with the old connection: then the flush fails, as it would have without a mode.
        node = h.node
        await self._ready(h)
        if h.error is not None:
            self._stale(node)
            raise FUSEError(h.error)
        change = h.client.fsetstat(h.handle, pending, lazy=True)
        fresh = h.client.lstat(node.remote)
        try:
            await wait(h.writer.flush())
            await wait(change)
        except Exception as e:
            change.addErrback(lambda f: None)
            fresh.addErrback(lambda f: None)
            self._stale(node)
            if isinstance(e, SFTPStatusError) and e.errno == errno.EACCES:
                raise FUSEError(errno.EPERM) from None  # chmod, utimes: not the owner
            raise
        self._set_attrs(node, await wait(fresh))
