"""
The namespace handlers of ``SFTPOperations``: looking names up, attributes, and changing the
tree (mkdir, symlink, link, unlink, rmdir, rename).

Separate from the file and directory handlers because these only touch paths and attributes,
never an open handle's data.
"""

from __future__ import annotations

import errno
import stat
import time
from collections.abc import Callable
from typing import Any

import pyfuse3
from pyfuse3 import EntryAttributes, FUSEError
from twisted.conch.ssh import filetransfer as ft
from twisted.internet.defer import Deferred

from telenet.fuse.errors import fuse_op
from telenet.fuse.listings import ListingsMixin
from telenet.fuse.nodes import ROOT_INODE, MountedVolume, Node, as_written, changed_attrs, writing
from telenet.fuse.owners import check_name, new_owner, owner_change
from telenet.fuse.resume import both, wait
from telenet.fuse.specials import Special
from telenet.sftp.client import SFTPClient
from telenet.sftp.codec import FileAttrs
from telenet.sftp.errors import SFTPStatusError

__all__ = ["NamesMixin"]


class NamesMixin(ListingsMixin):
    """
    Name operations: lookup, forget, getattr, setattr, readlink, and the calls that make,
    remove or move names. Relies on ``InodeTable`` (the table, ``_fresh``, ``_set_attrs``,
    ``_parent``, ``_join``) and ``PrefetchMixin._drop_ahead``.
    """

    @fuse_op()
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
            check_name(name)
            rel = self._join(parent, name)
        node = self._by_key.get((vol.vid, rel))
        if node is not None and node.entry is not None and node.expires > self._now():
            node.lookups += 1
            return self._cached(node.entry, node.expires)
        special = self._specials.get(vol.vid, rel) if self._specials else None
        if special is not None:
            node = self._child(vol, rel)
            entry = self._set_attrs(node, special.attrs)
            node.lookups += 1
            return entry
        listed = self._listed(vol.vid, rel)
        if listed is None and name not in (b".", b".."):
            if await self._listing_for_lookup(parent) is not None:
                listed = self._listed(vol.vid, rel)
        if listed is not None and (node is None or not node.handles):
            attrs, snapshot = listed
            if attrs is None:
                if self.negative_timeout <= 0:
                    raise FUSEError(errno.ENOENT)
                return self._negative(snapshot.until)
            node = self._child(vol, rel)
            entry = self._set_attrs(node, attrs, snapshot.taken)
            node.lookups += 1
            return entry
        try:
            attrs = await wait(self._client().lstat(vol.remote(rel)))
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

    @fuse_op()
    async def getattr(self, inode: int, ctx: Any = None) -> EntryAttributes:
        if inode == ROOT_INODE:
            return self._root_entry()
        return await self._fresh(self._node(inode))

    @fuse_op()
    async def setattr(
        self, inode: int, attr: EntryAttributes, fields: Any, fh: int | None, ctx: Any = None
    ) -> EntryAttributes:
        if inode == ROOT_INODE:
            raise FUSEError(errno.EROFS)
        node = self._node(inode)
        self._writable(node)
        self._drop_ahead(node.vol.vid, node.rel)
        # While the handle that made a file writes it, the file is known here, and a mode or
        # times set meanwhile (fh: only ftruncate's) go out with its flush (see handles.py).
        writer = writing(node)
        local = None
        if writer is not None and node.attrs is not None and fh in (None, writer.fh):
            local = as_written(node.attrs, writer, int(time.time()))
        else:
            writer = None
        size = uid = gid = perms = atime = mtime = None
        if fields.update_size:
            size = attr.st_size
        if fields.update_mode:
            perms = stat.S_IMODE(attr.st_mode)
        uid, gid = owner_change(
            node.vol.owner,
            attr.st_uid if fields.update_uid else None,
            attr.st_gid if fields.update_gid else None,
        )
        if uid is not None or gid is not None or fields.update_atime or fields.update_mtime:
            # SFTP v3 sets uid with gid and atime with mtime: fill in the half not changing.
            # The owner half from the server; the time half may come from what we knew (an
            # atime kept with a new mtime, as after a write, is worth no round trip).
            owner_half = (uid is None) != (gid is None)
            time_half = fields.update_atime != fields.update_mtime
            if owner_half or (time_half and node.attrs is None):
                await self._fresh(node)
            current = local or node.attrs or FileAttrs()
            if uid is not None or gid is not None:
                uid = uid if uid is not None else current.uid
                gid = gid if gid is not None else current.gid
            if fields.update_atime or fields.update_mtime:
                now = int(time.time())
                atime = attr.st_atime_ns // 1_000_000_000 if fields.update_atime else None
                mtime = attr.st_mtime_ns // 1_000_000_000 if fields.update_mtime else None
                if atime is None:
                    atime = current.atime if current.atime is not None else now
                if mtime is None:
                    mtime = current.mtime if current.mtime is not None else now
        special = self._specials.get(node.vol.vid, node.rel) if self._specials else None
        if special is not None:
            special.attrs = changed_attrs(special.attrs, uid, gid, perms, atime, mtime)
            return self._set_attrs(node, special.attrs)
        known = local or (node.attrs if node.expires > self._now() else None)
        if known is not None and not (known.permissions or 0) & (stat.S_ISUID | stat.S_ISGID):
            # What would change nothing asks nothing: tar gives each file it makes the owner
            # and mode it already has. (A set-id file goes to the server: a chown clears bits.)
            if (uid, gid) == (known.uid, known.gid):
                uid = gid = None
            if perms is not None and perms == stat.S_IMODE(known.permissions or 0):
                perms = None
            if size is not None and size == known.size:
                size = None
            if writer is not None and (size, uid, gid) == (None,) * 3:
                assert local is not None
                if perms is not None or mtime is not None:
                    writer.pending = changed_attrs(
                        writer.pending or FileAttrs(), None, None, perms, atime, mtime
                    )
                return self._guessed(node, changed_attrs(local, None, None, perms, atime, mtime))
            if node.entry is not None and (size, uid, gid, perms, atime, mtime) == (None,) * 6:
                return self._cached(node.entry, node.expires)
        for h in list(node.handles):
            if h.writer is not None:  # earlier writes go first, e.g. before a truncate
                await wait(h.writer.flush())
        client = self._client()
        path = node.remote
        link = node.attrs is not None and stat.S_ISLNK(node.attrs.permissions or 0)
        setstat = client.lsetstat if link and client.canLsetstat else client.setstat
        changes = []
        if uid is not None and perms is not None:
            # OpenSSH applies a SETSTAT's mode before its owner, and a chown clears the
            # set-id bits: the owner goes first, on its own.
            changes.append(setstat(path, FileAttrs(uid=uid, gid=gid), lazy=True))
            uid = gid = None
        if any(v is not None for v in (size, uid, gid, perms, atime, mtime)):
            attrs = FileAttrs(size, uid, gid, perms, atime, mtime)
            changes.append(setstat(path, attrs, lazy=True))  # with the LSTAT after them
        fresh = client.lstat(path) if node is not node.vol.root else client.stat(path)
        self._stale(node)
        if size is not None:
            for h in node.handles:
                if h.reader is not None:
                    h.reader.reset()
                if h.size is not None:
                    h.size = size
        try:
            for change in changes:
                await wait(change)
        except SFTPStatusError as e:
            fresh.addErrback(lambda f: None)
            if e.errno == errno.EACCES and size is None:
                raise FUSEError(errno.EPERM) from None  # chown, chmod, utimes: not the owner
            raise
        return self._set_attrs(node, await wait(fresh))

    @fuse_op()
    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        node = self._node(inode)
        return await wait(self._client().readlink(node.remote))

    @fuse_op(errno.EEXIST)
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: Any = None
    ) -> EntryAttributes:
        parent = self._parent(parent_inode)
        check_name(name)
        return await self._make(
            parent,
            name,
            lambda c, p: c.mkdir(p, FileAttrs(permissions=stat.S_IMODE(mode))),
            ctx,
            stat.S_IFDIR | mode,
        )

    @fuse_op(errno.EEXIST)
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any = None
    ) -> EntryAttributes:
        parent = self._parent(parent_inode)
        check_name(name)
        if not stat.S_ISREG(mode):
            # SFTP makes regular files, directories and symlinks only: the mount keeps the
            # others itself (telenet.fuse.specials).
            return await self._make_special(parent, name, mode, rdev, ctx)

        def make(c: SFTPClient, p: bytes) -> Deferred[None]:
            flags = ft.FXF_WRITE | ft.FXF_CREAT | ft.FXF_EXCL
            opening = c.open(p, flags, FileAttrs(permissions=stat.S_IMODE(mode)))
            return opening.addCallback(lambda handle: c.close(handle))

        return await self._make(parent, name, make, ctx, mode)

    async def _make_special(
        self, parent: Node, name: bytes, mode: int, rdev: int, ctx: Any
    ) -> EntryAttributes:
        if stat.S_IFMT(mode) not in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise FUSEError(errno.EINVAL)
        vol = parent.vol
        rel = self._join(parent, name)
        if self._specials.get(vol.vid, rel) is not None:
            raise FUSEError(errno.EEXIST)
        try:
            await wait(self._client().lstat(vol.remote(rel)))
        except SFTPStatusError as e:
            if e.errno != errno.ENOENT:
                raise
        else:
            raise FUSEError(errno.EEXIST)
        p = parent.attrs or FileAttrs()
        uid, gid = new_owner(ctx, p.gid or 0, p.permissions or 0) or (0, 0)
        now = int(time.time())
        attrs = FileAttrs(0, uid, gid, mode, now, now)
        self._detach(vol, rel)
        self._specials.add(vol.vid, rel, Special(attrs, rdev))
        node = self._child(vol, rel)
        entry = self._set_attrs(node, attrs)
        node.lookups += 1
        self._stale(parent)
        return entry

    @fuse_op(errno.EEXIST)
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: Any = None
    ) -> EntryAttributes:
        parent = self._parent(parent_inode)
        check_name(name)
        return await self._make(parent, name, lambda c, p: c.symlink(p, target), ctx)

    @fuse_op(errno.EEXIST)
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any = None
    ) -> EntryAttributes:
        node = self._node(inode)
        parent = self._parent(new_parent_inode)
        check_name(new_name)
        if parent.vol is not node.vol:
            raise FUSEError(errno.EXDEV)
        special = self._specials.get(node.vol.vid, node.rel) if self._specials else None
        if special is not None:
            rel = self._join(parent, new_name)
            self._specials.add(parent.vol.vid, rel, special)
            linked = self._child(parent.vol, rel)
            linked.lookups += 1
            self._stale(node, parent)
            return self._set_attrs(linked, special.attrs)
        old = node.remote
        entry = await self._make(parent, new_name, lambda c, p: c.hardlink(old, p))
        self._stale(node)
        return entry

    async def _make(
        self,
        parent: Node,
        name: bytes,
        create: Callable[[SFTPClient, bytes], Deferred[None]],
        ctx: Any = None,
        mode: int | None = None,
    ) -> EntryAttributes:
        """
        Make a new name with ``create``, then give it the owner and ``mode`` (None: a
        symlink's) a local filesystem would (``settle``).
        """
        client = self._client()
        rel = self._join(parent, name)
        path = parent.vol.remote(rel)
        # Pipelined: the server answers in order, so the LSTAT sees what was just made.
        _, attrs = await both(create(client, path), client.lstat(path))
        attrs = await self._settler.settle(
            client, parent.vol.owner, parent.attrs, path, attrs, ctx, mode
        )
        self._detach(parent.vol, rel)
        node = self._child(parent.vol, rel)
        entry = self._set_attrs(node, attrs)
        node.lookups += 1
        self._grew(parent, name, attrs)
        return entry

    @fuse_op()
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        parent = self._parent(parent_inode)
        rel = self._join(parent, name)
        if not self._specials or self._specials.get(parent.vol.vid, rel) is None:
            await wait(self._client().remove(parent.vol.remote(rel)))
        self._detach(parent.vol, rel)
        self._stale(parent)

    @fuse_op(errno.ENOTEMPTY)
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        parent = self._parent(parent_inode)
        rel = self._join(parent, name)
        if self._specials and self._specials.under(parent.vol.vid, rel):
            raise FUSEError(errno.ENOTEMPTY)  # the server's side of it may be empty
        await wait(self._client().rmdir(parent.vol.remote(rel)))
        self._detach(parent.vol, rel)
        self._stale(parent)

    @fuse_op()
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
        check_name(name_new)
        vol = old_parent.vol
        old = self._join(old_parent, name_old)
        new = self._join(new_parent, name_new)
        overwrite = not flags & pyfuse3.RENAME_NOREPLACE
        if self._specials:
            await self._rename_specials(vol, old, new, overwrite)
            if self._specials.get(vol.vid, old) is not None:
                self._move(vol, old, new)  # only the mount knew it: done
                self._stale(old_parent, new_parent)
                return
        try:
            await wait(client.rename(vol.remote(old), vol.remote(new), overwrite=overwrite))
        except SFTPStatusError as e:
            code = e.errno
            if e.code == ft.FX_FAILURE and not overwrite:
                code = errno.EEXIST
            elif e.code == ft.FX_FAILURE and code == errno.EIO and self._is_dir(vol, new):
                # OpenSSH says only "Failure": over a directory, it had entries.
                code = errno.ENOTEMPTY
            raise FUSEError(code) from None
        self._move(vol, old, new)
        self._stale(old_parent, new_parent)

    def _is_dir(self, vol: MountedVolume, rel: bytes) -> bool:
        """Whether ``rel`` was last seen as a directory (the kernel looks a target up first)."""
        node = self._by_key.get((vol.vid, rel))
        return (
            node is not None
            and node.attrs is not None
            and stat.S_ISDIR(node.attrs.permissions or 0)
        )

    async def _rename_specials(
        self, vol: MountedVolume, old: bytes, new: bytes, overwrite: bool
    ) -> None:
        """What a rename needs first when special nodes are involved (see ``specials``)."""
        target = self._specials.get(vol.vid, new)
        if target is not None and not overwrite:
            raise FUSEError(errno.EEXIST)
        if self._is_dir(vol, new) and self._specials.under(vol.vid, new):
            raise FUSEError(errno.ENOTEMPTY)
        if self._specials.get(vol.vid, old) is not None and target is None:
            # A special node replaces what the server has at the new name.
            try:
                if not overwrite:
                    await wait(self._client().lstat(vol.remote(new)))
                    raise FUSEError(errno.EEXIST)
                await wait(self._client().remove(vol.remote(new)))
            except SFTPStatusError as e:
                if e.errno != errno.ENOENT:
                    raise
