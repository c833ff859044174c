"""
``SFTPOperations``, the filesystem pyfuse3 serves: a virtual root of volumes, each a remote
directory over SFTP.

The class is put together from its concerns, one module each: ``inodes`` (state, inode
table, volumes, attributes), ``names``, ``files``, ``directories`` and ``prefetch``. What is
left here is the filesystem as a whole: statfs, access, and closing everything at unmount.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from pyfuse3 import FUSEError, StatvfsData

from telenet.fuse.directories import DirectoriesMixin
from telenet.fuse.errors import fuse_op
from telenet.fuse.files import FilesMixin
from telenet.fuse.names import NamesMixin
from telenet.fuse.nodes import ROOT_INODE
from telenet.fuse.resume import wait

__all__ = ["SFTPOperations"]


class SFTPOperations(NamesMixin, FilesMixin, DirectoriesMixin):
    """
    I am the filesystem: a virtual root of volumes, each a remote directory over SFTP.

    Inodes are stable per (volume, remote path) while the kernel knows them (lookup counts
    and ``forget``), attributes are cached for ``attr_timeout``, reads go through a
    ``ReadAhead`` window and writes through a ``PipelinedWriter`` per open file.
    """

    supports_dot_lookup = False
    enable_writeback_cache = False

    @fuse_op()
    async def statfs(self, ctx: Any = None) -> StatvfsData:
        client = self._client()
        # pyfuse3 does not say which inode is asked about; any volume stands for the server.
        path = next(iter(self.volumes.values())).path if self.volumes else b"/"
        v = await wait(client.statvfs(path))
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

    @fuse_op()
    async def access(self, inode: int, mode: int, ctx: Any = None) -> bool:
        if mode & os.W_OK and (inode == ROOT_INODE or self._node(inode).vol.ro):
            raise FUSEError(errno.EROFS)
        return True

    def release_all(self) -> None:
        """Close every remote handle (at unmount)."""
        for h in self._files.values():
            if h.client.alive and h.handle:  # b"": never opened (the kernel had its pages)
                # A reader's CLOSE can wait to go out with the next request (or a moment).
                h.client.close(h.handle, soon=h.writer is None).addErrback(lambda f: None)
        self._files.clear()
        self._dirs.clear()
        for key in list(self._ahead):
            self._take_ahead(key).discard()  # type: ignore[union-attr]
