"""
Unit tests of ownership and POSIX errnos in the telemount filesystem (``telenet.fuse.owners``
and the handlers that use it), against ``FakeSFTPClient``. The same behaviour end to end, on
real servers and a real mount, is in ``tests/test_sftpfs_posix.py``.
"""

from __future__ import annotations

import errno
import os
import stat
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from pyfuse3 import EntryAttributes
from twisted.conch.ssh import filetransfer as ft
from twisted.internet import defer
from twisted.internet.defer import Deferred

from telenet.fuse.owners import SERVER_OWNED, Ownership, new_owner, new_perms, owner_change
from telenet.sftp.codec import FileAttrs
from telenet.sftp.errors import SFTPStatusError
from tests.sftpfakes import _Entry
from tests.test_sftpfs import World, aio, fuse_errno


def fields(**changed: bool) -> SimpleNamespace:
    names = ("size", "mode", "uid", "gid", "atime", "mtime")
    return SimpleNamespace(**{f"update_{n}": changed.get(n, False) for n in names})


def ctx(uid: int, gid: int) -> SimpleNamespace:
    return SimpleNamespace(uid=uid, gid=gid, pid=1, umask=0o022)


@pytest.fixture
def world() -> World:
    return World()


async def owned_volume(world: World, owner: Ownership) -> EntryAttributes:
    assert await aio(world.fs.add_volume("mine", "/exp/app/data", False, owner)) is None
    return await world.lookup_path(b"mine")


# -- the rules ----------------------------------------------------------------------------------


def test_shown_owner_and_modes() -> None:
    """Options replace the server's ids and mask its modes; without them, the server's."""
    a = FileAttrs(uid=0, gid=0, permissions=stat.S_IFREG | 0o4755)
    assert SERVER_OWNED.shown(a, 0) == (0, 0, stat.S_IFREG | 0o4755)
    assert Ownership(1000, 2000, 0o027).shown(a, 0) == (1000, 2000, stat.S_IFREG | 0o4750)
    assert Ownership(gid=5).shown(a, 0) == (0, 5, stat.S_IFREG | 0o4755)
    assert Ownership().shown(FileAttrs(), stat.S_IFREG | 0o644) == (0, 0, stat.S_IFREG | 0o644)


def test_new_owner_and_perms() -> None:
    """A new name is its creator's, with the group of a set-group-ID parent."""
    assert new_owner(None, 5, 0o755) is None
    assert new_owner(ctx(1000, 1000), 5, stat.S_IFDIR | 0o755) == (1000, 1000)
    assert new_owner(ctx(1000, 1000), 5, stat.S_IFDIR | 0o2775) == (1000, 5)
    assert new_perms(stat.S_IFREG | 0o640, False, 0o2775) == 0o640
    assert new_perms(stat.S_IFDIR | 0o750, True, 0o2775) == 0o2750
    assert new_perms(stat.S_IFDIR | 0o1777, True, 0o755) == 0o1777


def test_owner_change_on_a_fixed_owner() -> None:
    """A fixed id may only be "changed" to itself; the other id still reaches the server."""
    fixed = Ownership(uid=1000)
    assert owner_change(fixed, 1000, 7) == (None, 7)
    assert owner_change(SERVER_OWNED, 1, 2) == (1, 2)
    with pytest.raises(Exception) as e:
        owner_change(fixed, 0, None)
    assert getattr(e.value, "errno", None) == errno.EPERM


# -- the handlers -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_volume_shows_its_owner_options(world: World) -> None:
    """Every file and directory of the volume shows the options' owner and masked modes."""
    root = await owned_volume(world, Ownership(1000, 2000, 0o027))
    assert (root.st_uid, root.st_gid, stat.S_IMODE(root.st_mode)) == (1000, 2000, 0o750)
    hello = await world.lookup_path(b"mine", b"hello")
    assert (hello.st_uid, hello.st_gid, stat.S_IMODE(hello.st_mode)) == (1000, 2000, 0o640)
    await aio(world.setup())
    plain = await world.lookup_path(b"data", b"hello")
    assert (plain.st_uid, plain.st_gid, stat.S_IMODE(plain.st_mode)) == (1000, 1000, 0o644)


@pytest_twisted.ensureDeferred
async def test_chown_on_a_fixed_owner(world: World) -> None:
    """chown to another id is EPERM; to the one shown, nothing is sent for the ids."""
    await owned_volume(world, Ownership(uid=0, gid=0))
    hello = await world.lookup_path(b"mine", b"hello")
    attr = EntryAttributes()
    attr.st_uid, attr.st_gid = 1000, 1000
    assert (
        await fuse_errno(world.fs.setattr(hello.st_ino, attr, fields(uid=True), None, None))
        == errno.EPERM
    )
    attr.st_uid, attr.st_gid = 0, 0
    world.client.calls.clear()
    entry = await aio(world.fs.setattr(hello.st_ino, attr, fields(uid=True, gid=True), None, None))
    assert entry.st_uid == 0
    assert [c for c in world.client.calls if c[0] == "setstat"] == []
    assert world.client.tree[b"/exp/app/data/hello"].uid == 1000, "the server's own stays"


@pytest_twisted.ensureDeferred
async def test_chown_goes_before_chmod(world: World) -> None:
    """A chown clears set-id bits on a server: the owner is sent first, then the mode."""
    await aio(world.setup())
    hello = await world.lookup_path(b"data", b"hello")
    attr = EntryAttributes()
    attr.st_uid, attr.st_gid, attr.st_mode = 0, 0, stat.S_IFREG | 0o4755
    world.client.calls.clear()
    entry = await aio(
        world.fs.setattr(hello.st_ino, attr, fields(uid=True, gid=True, mode=True), None, None)
    )
    sent = [c[2] for c in world.client.calls if c[0] == "setstat"]
    assert sent == [FileAttrs(uid=0, gid=0), FileAttrs(permissions=0o4755)]
    assert (entry.st_uid, stat.S_IMODE(entry.st_mode)) == (0, 0o4755)


@pytest_twisted.ensureDeferred
async def test_a_symlink_is_changed_with_lsetstat(world: World) -> None:
    """lchown changes the link itself (lsetstat@openssh.com), never its target."""
    await aio(world.setup())
    vol = await world.lookup_path(b"data")
    link = await aio(world.fs.symlink(vol.st_ino, b"link", b"hello", None))
    attr = EntryAttributes()
    attr.st_uid, attr.st_gid = 7, 8
    await aio(world.fs.setattr(link.st_ino, attr, fields(uid=True, gid=True), None, None))
    assert world.client.tree[b"/exp/app/data/link"].uid == 7
    assert world.client.tree[b"/exp/app/data/hello"].uid == 1000


@pytest_twisted.ensureDeferred
async def test_refused_setattr_is_eperm(world: World) -> None:
    """The server's "permission denied" to chmod/chown/utimes is EPERM; to truncate, EACCES."""
    await aio(world.setup())
    hello = await world.lookup_path(b"data", b"hello")

    def refuse(
        path: bytes, attrs: FileAttrs, follow: bool = True, lazy: bool = False
    ) -> Deferred[None]:
        return defer.fail(SFTPStatusError(ft.FX_PERMISSION_DENIED, "Permission denied"))

    world.client.setstat = refuse  # type: ignore[method-assign]
    attr = EntryAttributes()
    attr.st_mode = stat.S_IFREG | 0o600
    assert (
        await fuse_errno(world.fs.setattr(hello.st_ino, attr, fields(mode=True), None, None))
        == errno.EPERM
    )
    attr.st_size = 0
    assert (
        await fuse_errno(world.fs.setattr(hello.st_ino, attr, fields(size=True), None, None))
        == errno.EACCES
    )


@pytest_twisted.ensureDeferred
async def test_new_names_get_their_creators_owner(world: World) -> None:
    """create, mkdir, mknod and symlink give the new name the caller's ids (one SETSTAT)."""
    world.client.tree[b"/exp/app/data"].mode = stat.S_IFDIR | 0o2777
    world.client.tree[b"/exp/app/data"].gid = 50
    await aio(world.setup())
    vol = await world.lookup_path(b"data")
    me = ctx(0, 0)
    _, entry = await aio(world.fs.create(vol.st_ino, b"f", 0o640, os.O_WRONLY, me))
    assert (entry.st_uid, entry.st_gid) == (0, 50), "the set-group-ID parent's group"
    d = await aio(world.fs.mkdir(vol.st_ino, b"d", stat.S_IFDIR | 0o750, me))
    assert (d.st_uid, stat.S_IMODE(d.st_mode)) == (0, 0o2750), "the set-group-ID bit inherited"
    n = await aio(world.fs.mknod(vol.st_ino, b"n", stat.S_IFREG | 0o600, 0, me))
    assert (n.st_uid, stat.S_IMODE(n.st_mode)) == (0, 0o600)
    link = await aio(world.fs.symlink(vol.st_ino, b"l", b"f", me))
    assert link.st_uid == 0
    assert world.client.tree[b"/exp/app/data/f"].uid == 0
    # Same ids as the server's: nothing more is sent.
    sub = await world.lookup_path(b"data", b"sub")
    world.client.calls.clear()
    await aio(world.fs.create(sub.st_ino, b"g", 0o644, os.O_WRONLY, ctx(1000, 1000)))
    assert [c for c in world.client.calls if c[0] in ("setstat", "lsetstat")] == []


@pytest_twisted.ensureDeferred
async def test_a_server_that_may_not_chown_is_asked_once(world: World) -> None:
    """A server not running as root refuses the chown: its ids stay, and it is not asked again."""
    await aio(world.setup())
    vol = await world.lookup_path(b"data")
    real = world.client.setstat

    def no_chown(
        path: bytes, attrs: FileAttrs, follow: bool = True, lazy: bool = False
    ) -> Deferred[None]:
        if attrs.uid is not None:
            world.client.calls.append(("setstat", path, attrs))
            return defer.fail(SFTPStatusError(ft.FX_PERMISSION_DENIED, "Permission denied"))
        return real(path, attrs, follow)

    world.client.setstat = no_chown  # type: ignore[method-assign]
    _, first = await aio(world.fs.create(vol.st_ino, b"a", 0o644, os.O_WRONLY, ctx(0, 0)))
    assert first.st_uid == 1000
    await aio(world.fs.create(vol.st_ino, b"b", 0o644, os.O_WRONLY, ctx(0, 0)))
    await aio(world.fs.mkdir(vol.st_ino, b"c", stat.S_IFDIR | 0o755, ctx(0, 0)))
    chowns = [c for c in world.client.calls if c[0] == "setstat" and c[2].uid is not None]
    assert len(chowns) == 1


@pytest_twisted.ensureDeferred
async def test_create_of_an_existing_file_keeps_its_owner(world: World) -> None:
    """A name made on the server meanwhile is opened, not taken over."""
    await aio(world.setup())
    vol = await world.lookup_path(b"data")
    world.client.tree[b"/exp/app/data/late"] = _Entry(stat.S_IFREG | 0o600, b"theirs")
    await aio(world.fs.create(vol.st_ino, b"late", 0o644, os.O_WRONLY, ctx(0, 0)))
    late = world.client.tree[b"/exp/app/data/late"]
    assert (late.uid, stat.S_IMODE(late.mode), bytes(late.data)) == (1000, 0o600, b"theirs")
    assert (
        await fuse_errno(
            world.fs.create(vol.st_ino, b"late", 0o644, os.O_WRONLY | os.O_EXCL, ctx(0, 0))
        )
        == errno.EEXIST
    )


@pytest_twisted.ensureDeferred
async def test_errnos_sftp_v3_cannot_carry(world: World) -> None:
    """Long names, special files and renames over a full directory, as a local filesystem."""
    await aio(world.setup())
    vol = await world.lookup_path(b"data")
    long = b"n" * 256
    assert await fuse_errno(world.fs.lookup(vol.st_ino, long, None)) == errno.ENAMETOOLONG
    assert await fuse_errno(world.fs.mkdir(vol.st_ino, long, 0o755, None)) == errno.ENAMETOOLONG
    assert (
        await fuse_errno(world.fs.create(vol.st_ino, long, 0o644, os.O_WRONLY, None))
        == errno.ENAMETOOLONG
    )
    assert await fuse_errno(world.fs.mknod(vol.st_ino, b"x", 0o644, 0, None)) == errno.EINVAL
    await world.lookup_path(b"data", b"sub")

    def failing_rename(old: bytes, new: bytes, overwrite: bool = True) -> Deferred[None]:
        return defer.fail(SFTPStatusError(ft.FX_FAILURE, "Failure"))

    world.client.rename = failing_rename  # type: ignore[method-assign]
    rename: Any = world.fs.rename
    assert await fuse_errno(rename(vol.st_ino, b"hello", vol.st_ino, b"sub", 0, None)) == (
        errno.ENOTEMPTY
    )
    assert await fuse_errno(rename(vol.st_ino, b"sub", vol.st_ino, b"hello", 0, None)) == (
        errno.EIO
    )


@pytest_twisted.ensureDeferred
async def test_special_nodes_live_in_the_mount(world: World) -> None:
    """
    FIFOs, sockets and devices: kept by the mount, listed with the server's names, moved,
    linked and removed; a directory holding one is not empty; the server never sees them.
    """
    await aio(world.setup())
    vol = await world.lookup_path(b"data")
    sub = await world.lookup_path(b"data", b"sub")
    fs = world.fs
    fifo = await aio(fs.mknod(sub.st_ino, b"fifo", stat.S_IFIFO | 0o640, 0, ctx(7, 8)))
    assert stat.S_ISFIFO(fifo.st_mode) and (fifo.st_uid, fifo.st_gid) == (7, 8)
    dev = await aio(fs.mknod(vol.st_ino, b"dev", stat.S_IFCHR | 0o600, 0x0102, None))
    assert stat.S_ISCHR(dev.st_mode) and dev.st_rdev == 0x0102
    assert b"/exp/app/data/sub/fifo" not in world.client.tree
    assert sorted(await world.readdir(sub.st_ino)) == [b"deep", b"fifo"]
    assert (await aio(fs.lookup(sub.st_ino, b"fifo", None))).st_ino == fifo.st_ino
    assert await fuse_errno(fs.mknod(sub.st_ino, b"fifo", stat.S_IFIFO, 0, None)) == errno.EEXIST
    assert await fuse_errno(fs.mknod(sub.st_ino, b"deep", stat.S_IFIFO, 0, None)) == errno.EEXIST
    # chmod and chown change the mount's copy
    attr = EntryAttributes()
    attr.st_mode, attr.st_uid, attr.st_gid = stat.S_IFIFO | 0o600, 1, 2
    changed = await aio(
        fs.setattr(fifo.st_ino, attr, fields(mode=True, uid=True, gid=True), None, None)
    )
    assert (stat.S_IMODE(changed.st_mode), changed.st_uid, stat.S_ISFIFO(changed.st_mode)) == (
        0o600,
        1,
        True,
    )
    # a directory holding one is not empty, even if the server's side is
    await aio(fs.unlink(sub.st_ino, b"deep", None))
    assert await fuse_errno(fs.rmdir(vol.st_ino, b"sub", None)) == errno.ENOTEMPTY
    # links share the node; rename moves it, over a server file too
    linked = await aio(fs.link(fifo.st_ino, vol.st_ino, b"again", None))
    assert linked.st_nlink == 2
    await aio(fs.rename(sub.st_ino, b"fifo", vol.st_ino, b"hello", 0, None))
    assert b"/exp/app/data/hello" not in world.client.tree, "replaced"
    assert stat.S_ISFIFO((await aio(fs.lookup(vol.st_ino, b"hello", None))).st_mode)
    # renaming the directory carries them along
    await aio(fs.mknod(sub.st_ino, b"sock", stat.S_IFSOCK | 0o755, 0, None))
    await aio(fs.rename(vol.st_ino, b"sub", vol.st_ino, b"moved", 0, None))
    moved = await world.lookup_path(b"data", b"moved")
    assert await world.readdir(moved.st_ino) == [b"sock"]
    # a server file renamed onto one replaces it
    await aio(fs.rename(vol.st_ino, b"hello", vol.st_ino, b"dev", 0, None))
    assert stat.S_ISFIFO((await aio(fs.lookup(vol.st_ino, b"dev", None))).st_mode)
    for name in (b"dev", b"again"):
        await aio(fs.unlink(vol.st_ino, name, None))
    await aio(fs.unlink(moved.st_ino, b"sock", None))
    await aio(fs.rmdir(vol.st_ino, b"moved", None))
    assert not fs._specials
    fs.remove_volume("data")
