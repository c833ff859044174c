"""
Tests for ``telenet.fuse.helper``.

The unit tests drive the FUSE operations directly (as pyfuse3 would, on the asyncio loop)
against ``FakeSFTPClient``, an in-memory SFTP server. The end-to-end tests (``-m e2e``) run
``python -m telenet.fuse.helper`` against OpenSSH's sftp-server behind socat and use the mount from
worker threads, as any program would.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest
import pytest_twisted
from pyfuse3 import ROOT_INODE, EntryAttributes, FUSEError
from twisted.conch.ssh import filetransfer as ft
from twisted.internet import defer
from twisted.internet.testing import StringTransport

from telenet.core.aio import as_deferred
from telenet.fuse.control import ControlProtocol, MountControl
from telenet.fuse.dircache import MOST_TRUST
from telenet.fuse.nodes import handle_of
from telenet.fuse.operations import SFTPOperations
from telenet.fuse.prefetch import AHEAD_FILES
from telenet.fuse.tuning import KERNEL_READAHEAD_KB, FuseFdWaiter, mount_dev
from telenet.sftp.codec import MAX_CHUNK
from telenet.sftp.errors import SFTPStatusError
from tests.conftest import free_port, fuse_mounts, port_open, require, wait_for
from tests.helpers import result_of
from tests.sftpfakes import FakeSFTPClient, FakeSource


def aio(coro: Coroutine[Any, Any, Any]) -> defer.Deferred[Any]:
    """Run a FUSE handler on the asyncio loop, as pyfuse3 does."""
    return as_deferred(coro)


async def fuse_errno(coro: Coroutine[Any, Any, Any]) -> int:
    """The errno a handler fails with (the test fails if it succeeds)."""
    try:
        result = await aio(coro)
    except FUSEError as e:
        return int(e.errno)
    raise AssertionError(f"expected a FUSEError, got {result!r}")


class World:
    """A filesystem over a fake server holding two exports, with recorders for pyfuse3 calls."""

    def __init__(self) -> None:
        self.client = FakeSFTPClient()
        self.client.put(b"/exp/app/secrets/token", b"s3cr3t")
        self.client.put(b"/exp/app/data/hello", b"hello world")
        self.client.mkdirs(b"/exp/app/data/sub")
        self.client.put(b"/exp/app/data/sub/deep", b"deep")
        self.client.put(b"/outside", b"not yours")
        self.source = FakeSource(self.client)
        self.invalidated: list[tuple[int, bytes]] = []
        self.stored: list[tuple[int, int, bytes]] = []
        self.now = 1000.0
        self.fs = SFTPOperations(
            self.source,
            now=lambda: self.now,
            invalidate=lambda parent, name: self.invalidated.append((parent, name)),
            store=lambda inode, offset, data: self.stored.append((inode, offset, bytes(data))),
            readdir_reply=self._reply,
            readahead=1 << 20,
            write_behind=4 * MAX_CHUNK,
        )
        self.listing: list[tuple[bytes, EntryAttributes, int]] = []
        self.accept = 1000

    def _reply(self, token: Any, name: bytes, entry: EntryAttributes, next_id: int) -> bool:
        if len(self.listing) >= self.accept:
            return False
        self.listing.append((name, entry, next_id))
        return True

    async def setup(self) -> None:
        assert await self.fs.add_volume("data", "/exp/app/data", False) is None
        assert await self.fs.add_volume("secrets", "/exp/app/secrets", True) is None

    async def lookup_path(self, *names: bytes) -> EntryAttributes:
        inode = ROOT_INODE
        entry = None
        for name in names:
            entry = await aio(self.fs.lookup(inode, name, None))
            inode = entry.st_ino
        assert entry is not None
        return entry

    async def readdir(self, inode: int, start: int = 0) -> list[bytes]:
        fh = handle_of(await aio(self.fs.opendir(inode, None)))
        self.listing = []
        await aio(self.fs.readdir(fh, start, None))
        await aio(self.fs.releasedir(fh))
        return [name for name, _, _ in self.listing]


@pytest.fixture
def world() -> World:
    return World()


# -- volumes and the root ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_root_lists_volumes_and_is_read_only(world: World) -> None:
    """The root shows one directory per volume and refuses to change."""
    await aio(world.setup())
    assert sorted(await world.readdir(ROOT_INODE)) == [b"data", b"secrets"]
    root = await aio(world.fs.getattr(ROOT_INODE, None))
    assert stat.S_ISDIR(root.st_mode)
    assert await fuse_errno(world.fs.mkdir(ROOT_INODE, b"new", 0o755, None)) == errno.EROFS
    assert await fuse_errno(world.fs.create(ROOT_INODE, b"f", 0o644, os.O_WRONLY, None)) in (
        errno.EROFS,
        errno.EPERM,
    )
    assert await fuse_errno(world.fs.lookup(ROOT_INODE, b"nope", None)) == errno.ENOENT


@pytest_twisted.ensureDeferred
async def test_add_volume_checks_the_remote_directory(world: World) -> None:
    """Adding a volume stats its directory; missing, non-directory and offline are explained."""
    fs = world.fs
    assert await aio(fs.add_volume("x", "/exp/none", False)) == (
        "remote directory /exp/none does not exist on 127.0.0.1:2222"
    )
    assert await aio(fs.add_volume("x", "/outside", False)) == (
        "remote directory /outside on 127.0.0.1:2222 is not a directory"
    )
    world.source.client = None
    message = await aio(fs.add_volume("x", "/exp/app", False))
    assert message.startswith("SFTP server 127.0.0.1:2222 is not connected")
    assert fs.volumes == {}


@pytest_twisted.ensureDeferred
async def test_new_volume_is_visible_at_once_and_removal_invalidates(world: World) -> None:
    """A lookup miss is not cached, so an added volume shows up; removal invalidates it."""
    fs = world.fs
    assert await fuse_errno(fs.lookup(ROOT_INODE, b"data", None)) == errno.ENOENT
    await aio(world.setup())
    entry = await world.lookup_path(b"data")
    assert stat.S_ISDIR(entry.st_mode)
    fs.remove_volume("data")
    assert world.invalidated == [(ROOT_INODE, b"data")]
    assert await fuse_errno(fs.lookup(ROOT_INODE, b"data", None)) == errno.ENOENT
    assert await fuse_errno(fs.getattr(entry.st_ino, None)) == errno.ESTALE
    fs.remove_volume("unknown")  # fine


@pytest_twisted.ensureDeferred
async def test_re_adding_a_volume(world: World) -> None:
    """The same path and flag again changes nothing; a different one replaces the volume."""
    await aio(world.setup())
    first = await world.lookup_path(b"data")
    assert await aio(world.fs.add_volume("data", "/exp/app/data", False)) is None
    assert world.invalidated == []
    assert (await world.lookup_path(b"data")).st_ino == first.st_ino
    assert await aio(world.fs.add_volume("data", "/exp/app/secrets", False)) is None
    assert world.invalidated == [(ROOT_INODE, b"data")]
    replaced = await world.lookup_path(b"data", b"token")
    assert replaced.st_size == len(b"s3cr3t")


# -- inodes and paths --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_paths_map_into_the_volume_only(world: World) -> None:
    """Names resolve under the volume's remote directory, never elsewhere."""
    await aio(world.setup())
    deep = await world.lookup_path(b"data", b"sub", b"deep")
    assert deep.st_size == 4
    assert ("lstat", b"/exp/app/data/sub/deep") in world.client.calls
    paths = [c[1] for c in world.client.calls if c[0] in ("lstat", "stat")]
    assert all(p.startswith(b"/exp/app/") for p in paths)
    volume = await world.lookup_path(b"data")
    dotdot = await aio(world.fs.lookup(volume.st_ino, b"..", None))
    assert dotdot.st_ino == ROOT_INODE


@pytest_twisted.ensureDeferred
async def test_inodes_are_stable_and_forgotten(world: World) -> None:
    """
    The same path keeps its inode number, also once forgotten (git's index keys on it) and
    in another helper; forget empties the table. Two names never share a live number.
    """
    await aio(world.setup())
    start = world.fs.node_count
    a = await world.lookup_path(b"data", b"hello")
    world.now += 5  # expire the cache: the next lookup asks the server again
    b = await world.lookup_path(b"data", b"hello")
    assert a.st_ino == b.st_ino
    assert world.fs.node_count == start + 1
    await aio(world.fs.forget([(a.st_ino, 1)]))
    assert world.fs.node_count == start + 1, "still looked up once"
    await aio(world.fs.forget([(a.st_ino, 1)]))
    assert world.fs.node_count == start
    c = await world.lookup_path(b"data", b"hello")
    assert c.st_ino == a.st_ino
    other = World()
    await aio(other.setup())
    assert (await other.lookup_path(b"data", b"hello")).st_ino == a.st_ino
    assert (await other.lookup_path(b"data", b"sub")).st_ino != a.st_ino
    # A clash with a live inode (forced here) takes the next free number.
    vol = world.fs.volumes["data"]
    clash = world.fs._free_ino(vol, b"hello")
    assert clash == a.st_ino + 1 and 1 < clash < 1 << 48


@pytest_twisted.ensureDeferred
async def test_attributes_are_cached_briefly(world: World) -> None:
    """Within attr_timeout getattr answers from the cache; after it, from the server."""
    await aio(world.setup())
    entry = await world.lookup_path(b"data", b"hello")
    world.client.calls.clear()
    await aio(world.fs.getattr(entry.st_ino, None))
    assert world.client.calls == []
    world.now += 1.5
    await aio(world.fs.getattr(entry.st_ino, None))
    assert world.client.calls == [("lstat", b"/exp/app/data/hello")]


@pytest_twisted.ensureDeferred
async def test_rename_moves_inodes_with_their_children(world: World) -> None:
    """After renaming a directory its inode and its children's follow the new paths."""
    await aio(world.setup())
    vol = await world.lookup_path(b"data")
    sub = await world.lookup_path(b"data", b"sub")
    deep = await world.lookup_path(b"data", b"sub", b"deep")
    await aio(world.fs.rename(vol.st_ino, b"sub", vol.st_ino, b"moved", 0, None))
    assert b"/exp/app/data/moved/deep" in world.client.tree
    world.now += 5
    again = await world.lookup_path(b"data", b"moved", b"deep")
    assert again.st_ino == deep.st_ino
    assert (await world.lookup_path(b"data", b"moved")).st_ino == sub.st_ino
    gone = await aio(world.fs.lookup(vol.st_ino, b"sub", None))
    assert gone.st_ino == 0, "a negative entry"


@pytest_twisted.ensureDeferred
async def test_rename_flags(world: World) -> None:
    """NOREPLACE refuses an existing target; EXCHANGE is not supported; no cross-volume."""
    await aio(world.setup())
    vol = await world.lookup_path(b"data")
    sec = await world.lookup_path(b"secrets")
    world.client.put(b"/exp/app/data/other", b"x")
    noreplace = world.fs.rename(
        vol.st_ino, b"hello", vol.st_ino, b"other", pyfuse3.RENAME_NOREPLACE, None
    )
    assert await fuse_errno(noreplace) == errno.EEXIST
    exchange = world.fs.rename(
        vol.st_ino, b"hello", vol.st_ino, b"other", pyfuse3.RENAME_EXCHANGE, None
    )
    assert await fuse_errno(exchange) == errno.EINVAL
    across = world.fs.rename(vol.st_ino, b"hello", sec.st_ino, b"x", 0, None)
    assert await fuse_errno(across) == errno.EROFS  # secrets is read-only anyway


@pytest_twisted.ensureDeferred
async def test_readdir_gives_attributes_and_resumes(world: World) -> None:
    """readdir passes attributes and offsets; only accepted entries count as looked up."""
    await aio(world.setup())
    vol = await world.lookup_path(b"data")
    world.client.put(b"/exp/app/data/z", b"zz")
    world.accept = 2
    assert await world.readdir(vol.st_ino) == [b"hello", b"sub"]
    offsets = [next_id for _, _, next_id in world.listing]
    assert offsets == [1, 2]
    world.accept = 1000
    assert await world.readdir(vol.st_ino, start=2) == [b"z"]
    name, entry, _ = world.listing[0]
    assert entry.st_size == 2 and stat.S_ISREG(entry.st_mode)
    # z was looked up once by readdir: one forget drops it
    before = world.fs.node_count
    await aio(world.fs.forget([(entry.st_ino, 1)]))
    assert world.fs.node_count == before - 1


# -- read-only volumes -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_read_only_volume_refuses_every_write(world: World) -> None:
    """Under a read-only volume every kind of write is EROFS, and modes lose write bits."""
    await aio(world.setup())
    fs = world.fs
    vol = await world.lookup_path(b"secrets")
    token = await world.lookup_path(b"secrets", b"token")
    assert token.st_mode & 0o222 == 0
    attr = EntryAttributes()
    fields = SimpleNamespace(
        update_size=True,
        update_mode=False,
        update_uid=False,
        update_gid=False,
        update_atime=False,
        update_mtime=False,
    )
    attempts = [
        fs.create(vol.st_ino, b"new", 0o644, os.O_WRONLY | os.O_CREAT, None),
        fs.mkdir(vol.st_ino, b"d", 0o755, None),
        fs.unlink(vol.st_ino, b"token", None),
        fs.rmdir(vol.st_ino, b"token", None),
        fs.symlink(vol.st_ino, b"l", b"token", None),
        fs.rename(vol.st_ino, b"token", vol.st_ino, b"t2", 0, None),
        fs.setattr(token.st_ino, attr, fields, None, None),
        fs.open(token.st_ino, os.O_WRONLY, None),
        fs.open(token.st_ino, os.O_RDONLY | os.O_TRUNC, None),
        fs.link(token.st_ino, vol.st_ino, b"hard", None),
    ]
    for attempt in attempts:
        assert await fuse_errno(attempt) == errno.EROFS
    with pytest.raises(FUSEError):
        await aio(fs.access(token.st_ino, os.W_OK, None))
    assert await aio(fs.access(token.st_ino, os.R_OK, None)) is True
    mutating = {"open", "setstat", "mkdir", "remove", "rmdir", "rename", "symlink", "hardlink"}
    assert not [c for c in world.client.calls if c[0] in mutating]
    fi = await aio(fs.open(token.st_ino, os.O_RDONLY, None))
    assert await aio(fs.read(fi.fh, 0, 100)) == b"s3cr3t"


# -- files -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_create_write_read_back(world: World) -> None:
    """create + write + flush lands on the server; reading gives it back."""
    await aio(world.setup())
    fs = world.fs
    vol = await world.lookup_path(b"data")
    fi, entry = await aio(fs.create(vol.st_ino, b"new", 0o600, os.O_RDWR | os.O_CREAT, None))
    assert stat.S_IMODE(entry.st_mode) == 0o600
    data = os.urandom(3 * MAX_CHUNK + 17)
    assert await aio(fs.write(fi.fh, 0, data)) == len(data)
    await aio(fs.flush(fi.fh))
    assert world.client.data(b"/exp/app/data/new") == data
    assert await aio(fs.read(fi.fh, 10, 1000)) == data[10:1010]
    await aio(fs.release(fi.fh))
    assert ("close", b"h1") in world.client.calls


@pytest_twisted.ensureDeferred
async def test_sequential_reads_use_a_bounded_window(world: World) -> None:
    """A sequential reader keeps READs in flight ahead of it, within the window."""
    await aio(world.setup())
    data = os.urandom(5 << 20)
    world.client.put(b"/exp/app/data/big", data)
    entry = await world.lookup_path(b"data", b"big")
    fi = await aio(world.fs.open(entry.st_ino, os.O_RDONLY, None))
    out = []
    for off in range(0, len(data) + 1, 1 << 17):
        reads_before = len([c for c in world.client.calls if c[0] == "read"])
        out.append(await aio(world.fs.read(fi.fh, off, 1 << 17)))
        reads = [c for c in world.client.calls if c[0] == "read"]
        ahead = max(c[2] + c[3] for c in reads) - off
        assert ahead <= (1 << 20) + (1 << 17) + MAX_CHUNK, "window stays bounded"
        if 1 << 20 <= off < len(data) - (2 << 20):
            assert ahead >= (1 << 20) // 2, "and keeps reading ahead"
        assert len(reads) >= reads_before
    assert b"".join(out) == data


@pytest_twisted.ensureDeferred
async def test_write_behind_acks_at_once_and_reports_errors_later(world: World) -> None:
    """Writes return before the server answers; a failed WRITE fails flush and later writes."""
    await aio(world.setup())
    fs = world.fs
    vol = await world.lookup_path(b"data")
    fi, _ = await aio(fs.create(vol.st_ino, b"out", 0o644, os.O_WRONLY | os.O_CREAT, None))
    world.client.hold_writes = True
    assert await aio(fs.write(fi.fh, 0, b"a" * 1000)) == 1000  # not waiting for the answer
    world.client.fail_writes = ft.FX_PERMISSION_DENIED  # e.g. quota, disk full
    flushing = aio(fs.flush(fi.fh))
    assert not flushing.called
    world.client.release()
    with pytest.raises(FUSEError) as e:
        await flushing
    assert e.value.errno == errno.EACCES
    assert await fuse_errno(fs.write(fi.fh, 1000, b"b")) == errno.EACCES
    assert await fuse_errno(fs.fsync(fi.fh, False)) == errno.EACCES
    assert await fuse_errno(fs.release(fi.fh)) == errno.EACCES


@pytest_twisted.ensureDeferred
async def test_write_behind_is_bounded(world: World) -> None:
    """Past the write-behind limit a write waits until the server catches up."""
    await aio(world.setup())
    vol = await world.lookup_path(b"data")
    fi, _ = await aio(world.fs.create(vol.st_ino, b"o", 0o644, os.O_WRONLY | os.O_CREAT, None))
    world.client.hold_writes = True
    await aio(world.fs.write(fi.fh, 0, b"x" * (4 * MAX_CHUNK)))
    blocked = aio(world.fs.write(fi.fh, 4 * MAX_CHUNK, b"y" * 10))
    assert not blocked.called
    world.client.release()
    assert await blocked == 10


@pytest_twisted.ensureDeferred
async def test_setattr_truncate_chmod_utime(world: World) -> None:
    """setattr sends one path-based SETSTAT and answers with fresh attributes."""
    await aio(world.setup())
    entry = await world.lookup_path(b"data", b"hello")
    attr = EntryAttributes()
    attr.st_size = 5
    attr.st_mode = stat.S_IFREG | 0o600
    attr.st_mtime_ns = 1_500_000_000 * 10**9
    fields = SimpleNamespace(
        update_size=True,
        update_mode=True,
        update_uid=False,
        update_gid=False,
        update_atime=False,
        update_mtime=True,
    )
    new = await aio(world.fs.setattr(entry.st_ino, attr, fields, None, None))
    assert new.st_size == 5 and stat.S_IMODE(new.st_mode) == 0o600
    assert new.st_mtime_ns == 1_500_000_000 * 10**9
    ((_, path, sent),) = [c for c in world.client.calls if c[0] == "setstat"]
    assert path == b"/exp/app/data/hello" and sent.atime is not None, "atime filled in"
    assert world.client.data(b"/exp/app/data/hello") == b"hello"


@pytest_twisted.ensureDeferred
async def test_names_mkdir_rmdir_unlink_symlink(world: World) -> None:
    """Directory and link operations reach the server; FX_FAILURE on rmdir is ENOTEMPTY."""
    await aio(world.setup())
    fs = world.fs
    vol = await world.lookup_path(b"data")
    d = await aio(fs.mkdir(vol.st_ino, b"d", 0o750, None))
    assert stat.S_ISDIR(d.st_mode)
    assert await fuse_errno(fs.mkdir(vol.st_ino, b"d", 0o750, None)) == errno.EEXIST
    link = await aio(fs.symlink(d.st_ino, b"ln", b"../hello", None))
    assert stat.S_ISLNK(link.st_mode)
    assert await aio(fs.readlink(link.st_ino, None)) == b"../hello"
    assert await fuse_errno(fs.rmdir(vol.st_ino, b"d", None)) == errno.ENOTEMPTY
    await aio(fs.unlink(d.st_ino, b"ln", None))
    await aio(fs.rmdir(vol.st_ino, b"d", None))
    assert b"/exp/app/data/d" not in world.client.tree
    assert await fuse_errno(fs.unlink(vol.st_ino, b"missing", None)) == errno.ENOENT
    s = await aio(fs.statfs(None))
    assert s.f_namemax == 255


# -- disconnects -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_disconnected_operations_fail_fast(world: World) -> None:
    """Without a connection every operation fails at once with ENOTCONN or EIO."""
    await aio(world.setup())
    world.client.put(b"/exp/app/data/big", os.urandom(1 << 20))  # not read whole at open
    entry = await world.lookup_path(b"data", b"big")
    fi = await aio(world.fs.open(entry.st_ino, os.O_RDONLY, None))
    world.client.hold_reads = True
    reading = aio(world.fs.read(fi.fh, 0, 100))
    await aio(_tick())
    assert world.client.held, "the READ is in flight"
    world.client.kill()
    with pytest.raises(FUSEError) as e:
        await reading
    assert e.value.errno == errno.EIO
    world.now += 5
    assert await fuse_errno(world.fs.getattr(entry.st_ino, None)) == errno.ENOTCONN
    assert await fuse_errno(world.fs.read(fi.fh, 0, 100)) == errno.ENOTCONN


@pytest_twisted.ensureDeferred
async def test_handles_reopen_after_reconnect(world: World) -> None:
    """An open file works again on the new connection; lost writes make it EIO instead."""
    await aio(world.setup())
    fs = world.fs
    entry = await world.lookup_path(b"data", b"hello")
    reader = await aio(fs.open(entry.st_ino, os.O_RDONLY, None))
    writer = await aio(fs.open(entry.st_ino, os.O_WRONLY, None))
    world.client.hold_writes = True
    await aio(fs.write(writer.fh, 0, b"HELLO"))
    world.client.kill()  # the write was never answered
    fresh = FakeSFTPClient(world.client.tree)
    world.source.client = fresh
    assert await aio(fs.read(reader.fh, 0, 5)) == b"hello"
    assert ("open", b"/exp/app/data/hello", ft.FXF_READ) in fresh.calls
    assert await fuse_errno(fs.write(writer.fh, 5, b"!")) == errno.EIO
    assert await fuse_errno(fs.flush(writer.fh)) == errno.EIO


@pytest_twisted.ensureDeferred
async def test_unexpected_errors_become_eio(world: World) -> None:
    """A bug in a handler answers EIO rather than escaping into pyfuse3's loop."""
    await aio(world.setup())
    vol = await world.lookup_path(b"data")

    def broken(path: bytes) -> Any:
        raise RuntimeError("bug")

    world.client.lstat = broken  # type: ignore[method-assign]
    assert await fuse_errno(world.fs.lookup(vol.st_ino, b"hello", None)) == errno.EIO


# -- the control socket ------------------------------------------------------------------------


def _control(world: World) -> tuple[MountControl, list[str]]:
    stops: list[str] = []
    control = MountControl(
        world.fs, world.source, "127.0.0.1", 2222, "/mnt/x", lambda: stops.append("stop")
    )
    return control, stops


@pytest_twisted.ensureDeferred
async def test_control_requests(world: World) -> None:
    """add/remove/status/shutdown answer as the plug-in expects."""
    control, stops = _control(world)
    add = {"op": "add", "name": "data", "path": "/exp/app/data/", "ro": False}
    assert await aio(control.handle(add)) == {"ok": True}
    assert await aio(control.handle(add)) == {"ok": True}
    bad = await aio(control.handle({"op": "add", "name": "x", "path": "/nope", "ro": True}))
    assert bad == {"ok": False, "error": "remote directory /nope does not exist on 127.0.0.1:2222"}
    status = await aio(control.handle({"op": "status"}))
    assert status == {
        "ok": True,
        "pid": os.getpid(),
        "host": "127.0.0.1",
        "port": 2222,
        "mountpoint": "/mnt/x",
        "connected": True,
        "volumes": {"data": {"path": "/exp/app/data", "ro": False}},
        "since": 1234.5,
        "read_bytes": 0,
        "written_bytes": 0,
        "io_errors": 0,
    }
    assert await aio(control.handle({"op": "remove", "name": "data"})) == {"ok": True}
    assert await aio(control.handle({"op": "remove", "name": "data"})) == {"ok": True}
    assert await aio(control.handle({"op": "shutdown"})) == {"ok": True}
    assert stops == ["stop"]


@pytest_twisted.ensureDeferred
async def test_control_rejects_bad_requests(world: World) -> None:
    """Bad requests get an error answer, never an exception."""
    control, _ = _control(world)
    for request in [
        [],
        {"op": "fly"},
        {"op": "add", "name": "a/b", "path": "/x"},
        {"op": "add", "name": "a", "path": "rel"},
        {"op": "add", "name": "a", "path": "/x", "ro": "yes"},
        {"op": "remove"},
    ]:
        reply = await aio(control.handle(request))
        assert reply["ok"] is False and reply["error"], request


@pytest_twisted.ensureDeferred
async def test_control_protocol_answers_each_line_in_order(world: World) -> None:
    """One JSON answer line per request line, in order, even for malformed lines."""
    control, _ = _control(world)
    proto = ControlProtocol(control)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(
        b'{"op": "add", "name": "d", "path": "/exp/app/data", "ro": true}\n'
        b"not json\n"
        b'{"op": "status"}\n'
    )
    for _ in range(50):
        if transport.value().count(b"\n") == 3:
            break
        await aio(_tick())
    lines = [json.loads(line) for line in transport.value().splitlines()]
    assert lines[0] == {"ok": True}
    assert lines[1]["ok"] is False and "malformed JSON" in lines[1]["error"]
    assert lines[2]["volumes"] == {"d": {"path": "/exp/app/data", "ro": True}}
    proto.dataReceived(b"x" * (ControlProtocol.MAX_LENGTH + 10))
    assert b"too long" in transport.value().splitlines()[-1]


async def _tick() -> None:
    import asyncio

    await asyncio.sleep(0)


def test_status_errors_carry_operation_names() -> None:
    """SFTP errors say which request failed (shown in logs)."""
    assert "RMDIR" in str(SFTPStatusError(4, "Failure", "RMDIR"))


# -- end to end: the mount helper against OpenSSH's sftp-server ---------------------------------

SFTP_SERVER = "/usr/lib/openssh/sftp-server"


class SocatSFTP:
    """OpenSSH's sftp-server on a loopback port through socat, in its own process group."""

    def __init__(self, root: str, port: int) -> None:
        self.root = root
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SocatSFTP:
        self.proc = subprocess.Popen(
            [
                "socat",
                f"TCP-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork",
                f"EXEC:{SFTP_SERVER} -d {self.root}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(lambda: port_open(self.port), 10, "socat to listen")
        return self

    def signal(self, sig: int) -> None:
        """Signal socat and every sftp-server it started (they share its process group)."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        if self.proc is not None:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


class MountHelper:
    """A ``python -m telenet.fuse.helper`` child and its control socket."""

    def __init__(self, workdir: str, port: int, timeout: float = 3) -> None:
        self.mountpoint = os.path.join(workdir, "mnt", "127.0.0.1", str(port))
        self.control = os.path.join(workdir, "helper.sock")
        self.log = os.path.join(workdir, "helper.log")
        self.args = [
            sys.executable,
            "-m",
            "telenet.fuse.helper",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--mountpoint",
            self.mountpoint,
            "--control",
            self.control,
            "--log-file",
            self.log,
            "--timeout",
            f"{timeout:g}",
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.report: dict[str, Any] = {}

    def start(self) -> MountHelper:
        env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        assert self.proc.stdout is not None
        line = in_thread(self.proc.stdout.readline, 30)
        self.report = json.loads(line) if line.strip() else {"error": self.stderr()}
        return self

    def stderr(self) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        if self.proc.poll() is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")[-2000:]

    def request(self, request: dict[str, Any], timeout: float = 15) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(self.control)
            s.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                assert chunk, "control socket closed without an answer"
                buf += chunk
        return dict(json.loads(buf))

    def path(self, *parts: str) -> str:
        return os.path.join(self.mountpoint, *parts)

    def log_tail(self) -> str:
        """The end of the helper's log file, for assertion messages."""
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def wait(self, timeout: float = 20) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for mp in fuse_mounts(self.mountpoint):
            subprocess.run(["fusermount3", "-uz", mp], capture_output=True)


def in_thread(fn: Any, timeout: float, *args: Any) -> Any:
    """Run ``fn`` in a worker thread (file system calls never run on the reactor thread)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result(timeout=timeout)


@pytest.fixture
def e2e_ready(fuse_ready: None) -> None:
    require(shutil.which("socat") is not None, "socat is not installed")
    require(os.access(SFTP_SERVER, os.X_OK), "openssh-sftp-server is not installed")


@pytest.fixture
def export(workdir: str) -> str:
    root = os.path.join(workdir, "export")
    secrets = os.path.join(root, "tel_app_exports", "echo", "var", "run", "secrets")
    data = os.path.join(root, "tel_app_exports", "echo", "data")
    os.makedirs(secrets)
    os.makedirs(data)
    with open(os.path.join(secrets, "token"), "w") as f:
        f.write("s3cr3t-token\n")
    with open(os.path.join(data, "hello"), "w") as f:
        f.write("hello, this line is longer than its replacement\n")
    return root


@pytest.fixture
def server(e2e_ready: None, export: str) -> Iterator[SocatSFTP]:
    srv = SocatSFTP(export, free_port()).start()
    yield srv
    srv.kill()


@pytest.fixture
def helper(server: SocatSFTP, workdir: str, export: str) -> Iterator[MountHelper]:
    h = MountHelper(workdir, server.port).start()
    try:
        assert h.report == {"ready": True, "pid": h.proc.pid}, h.report  # type: ignore[union-attr]
        base = os.path.join(export, "tel_app_exports", "echo")
        for name, sub, ro in (("secrets", "var/run/secrets", True), ("data", "data", False)):
            reply = h.request({"op": "add", "name": name, "path": f"{base}/{sub}", "ro": ro})
            assert reply == {"ok": True}, reply
        yield h
    finally:
        h.cleanup()


def _expect_errno(code: int, fn: Any, *args: Any) -> None:
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno == code, e.value


@pytest.mark.e2e
def test_e2e_file_operations(helper: MountHelper, export: str) -> None:
    """Everyday file operations through the mount, checked on the server's side."""
    remote = os.path.join(export, "tel_app_exports", "echo", "data")

    def story() -> None:
        assert sorted(os.listdir(helper.mountpoint)) == ["data", "secrets"]
        _expect_errno(errno.EROFS, os.mkdir, helper.path("newvol"))
        with open(helper.path("secrets", "token")) as f:
            assert f.read() == "s3cr3t-token\n"
        # read-only volume: every write is EROFS
        _expect_errno(errno.EROFS, open, helper.path("secrets", "token"), "w")
        _expect_errno(errno.EROFS, open, helper.path("secrets", "new"), "w")
        _expect_errno(errno.EROFS, os.mkdir, helper.path("secrets", "d"))
        _expect_errno(errno.EROFS, os.unlink, helper.path("secrets", "token"))
        _expect_errno(errno.EROFS, os.chmod, helper.path("secrets", "token"), 0o600)
        # writable volume
        with open(helper.path("data", "new.txt"), "w") as f:
            f.write("written through FUSE\n")
        with open(os.path.join(remote, "new.txt")) as f:
            assert f.read() == "written through FUSE\n"
        os.mkdir(helper.path("data", "dir"))
        assert os.path.isdir(os.path.join(remote, "dir"))
        os.rename(helper.path("data", "new.txt"), helper.path("data", "dir", "moved.txt"))
        assert os.path.exists(os.path.join(remote, "dir", "moved.txt"))
        with open(helper.path("data", "dir", "moved.txt")) as f:
            assert f.read() == "written through FUSE\n"
        os.symlink("moved.txt", helper.path("data", "dir", "link"))
        assert os.readlink(helper.path("data", "dir", "link")) == "moved.txt"
        assert os.readlink(os.path.join(remote, "dir", "link")) == "moved.txt"
        with open(helper.path("data", "dir", "link")) as f:
            assert f.read().startswith("written")
        os.chmod(helper.path("data", "dir", "moved.txt"), 0o640)
        assert stat.S_IMODE(os.stat(os.path.join(remote, "dir", "moved.txt")).st_mode) == 0o640
        os.truncate(helper.path("data", "dir", "moved.txt"), 7)
        assert os.path.getsize(os.path.join(remote, "dir", "moved.txt")) == 7
        os.utime(helper.path("data", "dir", "moved.txt"), (1_000_000_000, 1_500_000_000))
        assert int(os.stat(os.path.join(remote, "dir", "moved.txt")).st_mtime) == 1_500_000_000
        assert int(os.stat(helper.path("data", "dir", "moved.txt")).st_mtime) == 1_500_000_000
        _expect_errno(errno.ENOTEMPTY, os.rmdir, helper.path("data", "dir"))
        os.unlink(helper.path("data", "dir", "link"))
        os.unlink(helper.path("data", "dir", "moved.txt"))
        os.rmdir(helper.path("data", "dir"))
        assert not os.path.exists(os.path.join(remote, "dir"))
        _expect_errno(errno.ENOENT, os.stat, helper.path("data", "dir"))
        vfs = os.statvfs(helper.path("data"))
        assert vfs.f_blocks > 0 and vfs.f_namemax == 255
        # rewriting a longer file truncates it
        with open(helper.path("data", "hello"), "w") as f:
            f.write("hello\n")
        # appends continue at the end
        with open(helper.path("data", "hello"), "a") as f:
            f.write("again\n")
        with open(os.path.join(remote, "hello")) as f:
            assert f.read() == "hello\nagain\n"

    in_thread(story, 60)
    dev = mount_dev(helper.mountpoint)
    with open(f"/sys/class/bdi/{dev}/read_ahead_kb") as f:
        assert int(f.read()) == KERNEL_READAHEAD_KB, "big kernel read-ahead"
    status = helper.request({"op": "status"})
    assert status["connected"] is True and set(status["volumes"]) == {"data", "secrets"}
    assert status["volumes"]["secrets"]["ro"] is True


@pytest.mark.e2e
def test_e2e_volumes_come_and_go(helper: MountHelper, export: str) -> None:
    """A volume added later shows at once; a removed one is gone; bad paths are refused."""
    base = os.path.join(export, "tel_app_exports", "echo")
    assert in_thread(os.path.exists, 10, helper.path("late")) is False
    assert helper.request({"op": "add", "name": "late", "path": base, "ro": True}) == {"ok": True}
    assert sorted(in_thread(os.listdir, 10, helper.path("late"))) == ["data", "var"]
    assert helper.request({"op": "remove", "name": "late"}) == {"ok": True}
    assert in_thread(os.path.exists, 10, helper.path("late")) is False
    reply = helper.request({"op": "add", "name": "x", "path": f"{base}/nope", "ro": False})
    assert reply["ok"] is False and "does not exist" in reply["error"]
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(helper.control)
        s.sendall(b"{broken\n")
        assert json.loads(s.recv(65536))["ok"] is False


@pytest.mark.e2e
def test_e2e_small_files_stay_fresh(helper: MountHelper, export: str) -> None:
    """Small files (preloaded into the page cache at open) show server-side changes after
    the attribute timeout, and this mount's own writes at once."""
    remote = os.path.join(export, "tel_app_exports", "echo", "data")

    def read(*names: str) -> bytes:
        with open(helper.path(*names), "rb") as f:
            return f.read()

    def story() -> None:
        path = os.path.join(remote, "small")
        with open(path, "wb") as f:
            f.write(b"version one\n")
        assert read("data", "small") == b"version one\n"
        assert read("data", "small") == b"version one\n"
        for content in (b"version two\n", b"three, and longer than before\n", b"4\n"):
            with open(path, "wb") as f:
                f.write(content)
            time.sleep(2.2)  # past the attribute timeout, and a new mtime second
            assert read("data", "small") == content
        with open(helper.path("data", "small"), "wb") as f:
            f.write(b"written here\n")
        assert read("data", "small") == b"written here\n"
        with open(helper.path("data", "small"), "ab") as f:
            f.write(b"and more\n")
        assert read("data", "small") == b"written here\nand more\n"

    in_thread(story, 60)


@pytest.mark.e2e
def test_e2e_large_file_read_and_write(helper: MountHelper, export: str) -> None:
    """32 MiB each way, byte for byte."""
    remote = os.path.join(export, "tel_app_exports", "echo", "data")
    data = os.urandom(32 << 20)
    with open(os.path.join(remote, "big.in"), "wb") as f:
        f.write(data)

    def copy() -> None:
        with open(helper.path("data", "big.in"), "rb") as f:
            got = f.read()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        with open(helper.path("data", "big.out"), "wb") as f:
            for off in range(0, len(data), 1 << 20):
                f.write(data[off : off + (1 << 20)])
            os.fsync(f.fileno())

    in_thread(copy, 120)
    with open(os.path.join(remote, "big.out"), "rb") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
    assert helper.proc is not None
    with open(f"/proc/{helper.proc.pid}/maps") as f:
        assert "_rust" not in f.read(), "the helper keeps pyOpenSSL (and its bindings) out"


def _slow_read(path: str) -> tuple[str, float]:
    """Read ``path`` slowly; return how it ended and when (monotonic)."""
    try:
        with open(path, "rb", buffering=0) as f:
            while f.read(1 << 20):
                time.sleep(0.05)
        return "eof", time.monotonic()
    except OSError as e:
        return f"error {e.errno}", time.monotonic()


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["kill", "stop"])
def test_e2e_server_loss_errors_quickly_then_recovers(
    how: str, helper: MountHelper, server: SocatSFTP, export: str
) -> None:
    """Killing (or freezing) the server fails a read in progress within 10 s; it recovers."""
    remote = os.path.join(export, "tel_app_exports", "echo", "data")
    with open(os.path.join(remote, f"stream-{how}"), "wb") as f:
        f.write(os.urandom(128 << 20))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reading = pool.submit(_slow_read, helper.path("data", f"stream-{how}"))
        time.sleep(0.7)
        assert not reading.done()
        lost_at = time.monotonic()
        server.signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        outcome, ended = reading.result(timeout=15)
    assert outcome.startswith("error"), outcome
    assert ended - lost_at < 10, f"the read took {ended - lost_at:.1f}s to fail"
    wait_for(lambda: helper.request({"op": "status"})["connected"] is False, 10, "disconnect")
    assert any(m == helper.mountpoint for m in fuse_mounts(helper.mountpoint)), "mount lingers"
    if how == "kill":
        server.kill()
        server.start()
    else:
        server.signal(signal.SIGCONT)
    wait_for(lambda: helper.request({"op": "status"})["connected"] is True, 20, "reconnect")

    def read_again() -> str:
        with open(helper.path("secrets", "token")) as f:
            return f.read()

    assert in_thread(read_again, 20) == "s3cr3t-token\n"


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["shutdown", "sigterm", "fusermount"])
def test_e2e_clean_exit_leaves_nothing(how: str, helper: MountHelper) -> None:
    """shutdown, SIGTERM or an outside unmount: exit 0, no mount, no socket."""
    assert helper.proc is not None
    if how == "shutdown":
        assert helper.request({"op": "shutdown"}) == {"ok": True}
    elif how == "sigterm":
        helper.proc.send_signal(signal.SIGTERM)
    else:
        subprocess.run(["fusermount3", "-u", helper.mountpoint], check=True, timeout=20)
    assert helper.wait(30) == 0
    assert fuse_mounts(helper.mountpoint) == []
    assert not os.path.exists(helper.control)


@pytest.mark.e2e
def test_e2e_unreachable_server_is_reported(e2e_ready: None, workdir: str) -> None:
    """Nobody listening: one JSON error line and exit status 1, without mounting."""
    port = free_port()
    h = MountHelper(workdir, port).start()
    try:
        assert list(h.report) == ["error"], h.report
        assert h.report["error"].startswith(f"cannot reach SFTP server at 127.0.0.1:{port}: ")
        assert h.wait(20) == 1
        assert fuse_mounts(h.mountpoint) == [] and not os.path.exists(h.control)
    finally:
        h.cleanup()


@pytest_twisted.ensureDeferred
async def test_kernel_cache_is_kept_only_for_unchanged_files(world: World) -> None:
    """A re-opened file keeps the kernel's pages only if its mtime and size did not change."""
    world.fs._store = None  # without preloading small files (tested below)
    await aio(world.setup())
    world.client.tree[b"/exp/app/data/hello"].mtime = int(time.time()) - 3600
    entry = await world.lookup_path(b"data", b"hello")
    first = await aio(world.fs.open(entry.st_ino, os.O_RDONLY, None))
    again = await aio(world.fs.open(entry.st_ino, os.O_RDONLY, None))
    assert (first.keep_cache, again.keep_cache) == (False, True)
    world.client.put(b"/exp/app/data/hello", b"changed on the server")
    world.now += MOST_TRUST + 1  # an hour-old file is trusted this long (dircache)
    await world.lookup_path(b"data", b"hello")
    changed = await aio(world.fs.open(entry.st_ino, os.O_RDONLY, None))
    assert changed.keep_cache is False


@pytest_twisted.ensureDeferred
async def test_open_with_o_trunc_truncates(world: World) -> None:
    """The kernel passes O_TRUNC to open (atomic_o_trunc): the file is emptied there."""
    await aio(world.setup())
    entry = await world.lookup_path(b"data", b"hello")
    fi = await aio(world.fs.open(entry.st_ino, os.O_WRONLY | os.O_TRUNC, None))
    assert world.client.data(b"/exp/app/data/hello") == b""
    await aio(world.fs.write(fi.fh, 0, b"hi"))
    await aio(world.fs.release(fi.fh))
    assert world.client.data(b"/exp/app/data/hello") == b"hi"
    assert (await aio(world.fs.getattr(entry.st_ino, None))).st_size == 2


@pytest_twisted.ensureDeferred
async def test_small_files_are_read_whole_at_open(world: World) -> None:
    """Opening a small file for reading sends its one READ at once; the read needs no more."""
    await aio(world.setup())
    entry = await world.lookup_path(b"data", b"hello")
    fi = await aio(world.fs.open(entry.st_ino, os.O_RDONLY, None))
    reads = [c for c in world.client.calls if c[0] == "read"]
    assert len(reads) == 1 and reads[0][2:] == (0, 4096), "whole, past its size: EOF shows"
    assert await aio(world.fs.read(fi.fh, 0, 4096)) == b"hello world"
    assert len([c for c in world.client.calls if c[0] == "read"]) == 1
    await aio(world.fs.release(fi.fh))
    writer = await aio(world.fs.open(entry.st_ino, os.O_RDWR, None))
    assert len([c for c in world.client.calls if c[0] == "read"]) == 1, "not for writers"
    await aio(world.fs.release(writer.fh))


@pytest_twisted.ensureDeferred
async def test_a_change_seen_in_attributes_drops_what_readers_hold(world: World) -> None:
    """When fresh attributes show another size or mtime, open readers fetch again."""
    await aio(world.setup())
    entry = await world.lookup_path(b"data", b"hello")
    fi = await aio(world.fs.open(entry.st_ino, os.O_RDONLY, None))
    assert await aio(world.fs.read(fi.fh, 0, 4096)) == b"hello world"
    world.client.put(b"/exp/app/data/hello", b"hello world, changed elsewhere")
    world.now += 5
    assert (await aio(world.fs.getattr(entry.st_ino, None))).st_size == 30
    assert await aio(world.fs.read(fi.fh, 0, 4096)) == b"hello world, changed elsewhere"


@pytest_twisted.ensureDeferred
async def test_fuse_fd_waiter_wakes_only_for_a_waiting_request() -> None:
    """One registration; a waiter is woken only when the fd has data and nobody else was."""
    r, w = os.pipe()

    async def scenario() -> None:
        waiter = FuseFdWaiter(asyncio.get_running_loop(), EOFError)
        first = asyncio.ensure_future(waiter.wait_readable(r))
        await asyncio.sleep(0.01)
        assert not first.done(), "nothing to read yet"
        os.write(w, b"x")
        await asyncio.wait_for(first, 1)
        waiter._ready(r)  # a stale callback with nobody waiting is harmless
        os.read(r, 1)
        second = asyncio.ensure_future(waiter.wait_readable(r))
        await asyncio.sleep(0)
        waiter._ready(r)  # queued before the read took the data: must not wake
        await asyncio.sleep(0.01)
        assert not second.done()
        waiter.notify_closing(r)
        with pytest.raises(EOFError):
            await second

        async def worker() -> bytes:  # as pyfuse3's: wake, then read at once
            await waiter.wait_readable(r)
            return os.read(r, 1)

        workers = [asyncio.ensure_future(worker()) for _ in range(3)]
        await asyncio.sleep(0.01)
        os.write(w, b"y")
        await asyncio.sleep(0.05)
        assert [t.result() for t in workers if t.done()] == [b"y"], "one request, one worker"
        waiter.notify_closing(r)
        for t in workers:
            with contextlib.suppress(EOFError):
                await t

    try:
        await aio(scenario())
    finally:
        os.close(r)
        os.close(w)


@pytest_twisted.ensureDeferred
async def test_missing_names_are_negative_entries_for_a_moment(world: World) -> None:
    """A lookup of a missing name answers inode 0 with the negative timeout, not an error."""
    await aio(world.setup())
    vol = await world.lookup_path(b"data")
    missing = await aio(world.fs.lookup(vol.st_ino, b"nothing-here", None))
    assert (missing.st_ino, missing.entry_timeout) == (0, world.fs.negative_timeout)
    _, made = await aio(world.fs.create(vol.st_ino, b"nothing-here", 0o644, os.O_WRONLY, None))
    assert made.st_ino != 0
    world.fs.negative_timeout = 0
    assert await fuse_errno(world.fs.lookup(vol.st_ino, b"still-nothing", None)) == errno.ENOENT


@pytest_twisted.ensureDeferred
async def test_small_files_are_preloaded_into_the_kernel_cache(world: World) -> None:
    """A small file's bytes go to the page cache at open (the open keeps it); only if safe."""
    await aio(world.setup())
    entry = await world.lookup_path(b"data", b"hello")
    fi = await aio(world.fs.open(entry.st_ino, os.O_RDONLY, None))
    assert world.stored == [(entry.st_ino, 0, b"hello world")] and fi.keep_cache
    assert await aio(world.fs.read(fi.fh, 0, 4096)) == b"hello world", "READ still works"
    second = await aio(world.fs.open(entry.st_ino, os.O_RDONLY, None))
    assert len(world.stored) == 1 and not second.keep_cache, "not with another handle open"
    for h in (fi, second):
        await aio(world.fs.release(h.fh))
    world.now += 5  # attributes expired: the kernel's size may be another
    stale = await aio(world.fs.open(entry.st_ino, os.O_RDONLY, None))
    assert len(world.stored) == 1 and not stale.keep_cache
    await aio(world.fs.release(stale.fh))
    await world.lookup_path(b"data", b"hello")
    writer = await aio(world.fs.open(entry.st_ino, os.O_WRONLY, None))
    await aio(world.fs.write(writer.fh, 0, b"HELLO"))
    await aio(world.fs.release(writer.fh))
    after_write = await aio(world.fs.open(entry.st_ino, os.O_RDONLY, None))
    assert len(world.stored) == 1 and not after_write.keep_cache, "our write expired the size"
    await aio(world.fs.release(after_write.fh))
    world.client.put(b"/exp/app/data/hello", b"changed on the server, longer")
    world.now += 5
    await world.lookup_path(b"data", b"hello")
    fresh = await aio(world.fs.open(entry.st_ino, os.O_RDONLY, None))
    assert world.stored[-1] == (entry.st_ino, 0, b"changed on the server, longer")
    assert fresh.keep_cache


@pytest_twisted.ensureDeferred
async def test_a_failed_preload_leaves_the_kernel_to_read(world: World) -> None:
    """If the kernel refuses the bytes, the open answers without keeping the cache."""

    def refuse(inode: int, offset: int, data: Any) -> None:
        raise OSError(errno.ENOSYS, "no notify_store")

    world.fs._store = refuse
    await aio(world.setup())
    entry = await world.lookup_path(b"data", b"hello")
    fi = await aio(world.fs.open(entry.st_ino, os.O_RDONLY, None))
    assert not fi.keep_cache
    assert await aio(world.fs.read(fi.fh, 0, 4096)) == b"hello world"


@pytest_twisted.ensureDeferred
async def test_resume_runs_the_waiting_task_inside_the_settling_call() -> None:
    """Settled from a loop callback, the awaiting task has run before set_result returns;
    settled from inside another task, it runs a loop turn later (tasks cannot nest)."""
    from telenet.fuse.resume import Resume

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        steps: list[str] = []

        async def waiter(future: Resume[int]) -> int:
            value = await future
            steps.append(f"resumed {value}")
            return value

        first: Resume[int] = Resume(loop)
        task = asyncio.ensure_future(waiter(first))
        await asyncio.sleep(0)

        def settle() -> None:
            first.set_result(1)
            steps.append("set_result returned")

        loop.call_soon(settle)
        await asyncio.sleep(0.01)
        assert steps == ["resumed 1", "set_result returned"]
        assert task.result() == 1

        steps.clear()
        second: Resume[int] = Resume(loop)
        task = asyncio.ensure_future(waiter(second))
        await asyncio.sleep(0)
        second.set_result(2)  # from this task: the waiter runs later
        steps.append("set_result returned")
        assert await task == 2
        assert steps == ["set_result returned", "resumed 2"]

        third: Resume[int] = Resume(loop)
        task = asyncio.ensure_future(waiter(third))
        await asyncio.sleep(0)
        loop.call_soon(third.set_exception, EOFError("gone"))
        with pytest.raises(EOFError):
            await task
        fourth: Resume[int] = Resume(loop)
        task = asyncio.ensure_future(waiter(fourth))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert fourth.cancelled()

        fifth: Resume[int] = Resume(loop)
        seen: list[int] = []
        fifth.add_done_callback(lambda f: seen.append(f.result()))
        task = asyncio.ensure_future(waiter(fifth))  # its wake-up comes second
        await asyncio.sleep(0)
        loop.call_soon(fifth.set_result, 5)
        assert await task == 5 and seen == [5], "every callback runs"

    await aio(scenario())


async def _walk_world(world: World, names: list[bytes]) -> tuple[int, dict[bytes, int]]:
    """A directory ``walk`` of small files; its inode and its files' inodes (listed once)."""
    for i, name in enumerate(names):
        world.client.put(b"/exp/app/data/walk/" + name, b"content of %d" % i)
    await aio(world.setup())
    walk = await world.lookup_path(b"data", b"walk")
    listed = await world.readdir(walk.st_ino)
    inodes = {name: entry.st_ino for name, entry, _ in world.listing}
    assert sorted(listed) == sorted(names)
    return walk.st_ino, inodes


def _calls(world: World, kind: str) -> list[tuple[Any, ...]]:
    return [c for c in world.client.calls if c[0] == kind]


@pytest_twisted.ensureDeferred
async def test_a_directory_walk_fetches_the_next_small_files_ahead(world: World) -> None:
    """Two files opened in listing order: the next ones are opened and read ahead, and their
    opens are answered from that (bytes into the page cache), with no request of their own."""
    names = [b"f%02d" % i for i in range(30)]
    _, inodes = await _walk_world(world, names)
    for name in names[:2]:
        fi = await aio(world.fs.open(inodes[name], os.O_RDONLY, None))
        await aio(world.fs.release(fi.fh))
    opened = [c[1].rsplit(b"/", 1)[1] for c in _calls(world, "open")]
    assert opened == names[: 2 + AHEAD_FILES], "the next AHEAD_FILES, after ours"
    assert len(_calls(world, "read")) == len(opened)
    before = len(world.client.calls)
    fi = await aio(world.fs.open(inodes[b"f02"], os.O_RDONLY, None))
    assert fi.keep_cache and world.stored[-1] == (inodes[b"f02"], 0, b"content of 2")
    assert not [c for c in world.client.calls[before:] if c[1] == b"/exp/app/data/walk/f02"]
    assert await aio(world.fs.read(fi.fh, 0, 4096)) == b"content of 2", "its handle works"
    await aio(world.fs.release(fi.fh))
    for name in names[3:]:  # the rest of the walk: each answered from what was fetched
        fi = await aio(world.fs.open(inodes[name], os.O_RDONLY, None))
        assert world.stored[-1][1:] == (0, b"content of %d" % names.index(name))
        await aio(world.fs.release(fi.fh))
    assert len(_calls(world, "open")) == len(names), "each file opened once"
    assert not world.client.handles, "every handle closed"


@pytest_twisted.ensureDeferred
async def test_a_walk_by_name_is_followed_too(world: World) -> None:
    """A reader that sorts the listing (ls, a script) is followed in name order."""
    names = [b"f%02d" % i for i in range(10)]
    listdir = world.client.listdir
    world.client.listdir = lambda path: listdir(path).addCallback(  # type: ignore[method-assign]
        lambda entries: entries[::-1]
    )
    _, inodes = await _walk_world(world, names)
    for name in names[:2]:
        fi = await aio(world.fs.open(inodes[name], os.O_RDONLY, None))
        await aio(world.fs.release(fi.fh))
    opened = [c[1].rsplit(b"/", 1)[1] for c in _calls(world, "open")]
    assert opened == names, "by name, not in listing order"


@pytest_twisted.ensureDeferred
async def test_what_was_fetched_ahead_is_not_used_when_stale_or_changed(world: World) -> None:
    """Fetched-ahead bytes serve an open only within the attribute timeout and only for the
    file as the kernel knows it; this mount's own changes drop them; the rest is closed."""
    names = [b"f%02d" % i for i in range(8)]
    _, inodes = await _walk_world(world, names)
    for name in names[:2]:
        fi = await aio(world.fs.open(inodes[name], os.O_RDONLY, None))
        await aio(world.fs.release(fi.fh))
    assert len(_calls(world, "open")) == 8
    writer = await aio(world.fs.open(inodes[b"f02"], os.O_WRONLY, None))
    await aio(world.fs.write(writer.fh, 0, b"CONTENT"))
    await aio(world.fs.release(writer.fh))
    await world.lookup_path(b"data", b"walk", b"f02")  # fresh attributes after our write
    fi = await aio(world.fs.open(inodes[b"f02"], os.O_RDONLY, None))
    assert world.stored[-1] == (inodes[b"f02"], 0, b"CONTENT of 2"), "fetched again"
    await aio(world.fs.release(fi.fh))
    world.client.put(b"/exp/app/data/walk/f03", b"changed on the server")
    fi = await aio(world.fs.open(inodes[b"f03"], os.O_RDONLY, None))
    assert world.stored[-1] == (inodes[b"f03"], 0, b"content of 3"), "within the timeout"
    await aio(world.fs.release(fi.fh))
    world.now += world.fs.attr_timeout + 0.5
    await world.lookup_path(b"data", b"walk", b"f04")
    opens = len(_calls(world, "open"))
    fi = await aio(world.fs.open(inodes[b"f04"], os.O_RDONLY, None))
    assert len(_calls(world, "open")) == opens + 1, "too old: opened again"
    await aio(world.fs.release(fi.fh))
    world.fs._purge_ahead()
    assert not world.fs._ahead and not world.client.handles, "the rest closed"


@pytest_twisted.ensureDeferred
async def test_a_write_while_a_fetched_file_is_still_coming_drops_it(world: World) -> None:
    """An open waiting for bytes fetched ahead does not store them if this mount wrote the
    file meanwhile (they may be older than the write)."""
    names = [b"f%02d" % i for i in range(8)]
    _, inodes = await _walk_world(world, names)
    fi = await aio(world.fs.open(inodes[b"f00"], os.O_RDONLY, None))
    await aio(world.fs.release(fi.fh))
    world.client.hold_reads = True
    first = aio(world.fs.open(inodes[b"f01"], os.O_RDONLY, None))  # fetches f02... ahead
    waiting = aio(world.fs.open(inodes[b"f02"], os.O_RDONLY, None))
    await asyncio.sleep(0)
    assert not waiting.called, "waits for the bytes fetched ahead"
    writer = await aio(world.fs.open(inodes[b"f02"], os.O_WRONLY, None))
    await aio(world.fs.write(writer.fh, 0, b"NEW"))
    await aio(world.fs.flush(writer.fh))
    world.client.hold_reads = False
    world.client.release()
    for opened in (await first, await waiting):
        await aio(world.fs.release(opened.fh))
    await aio(world.fs.release(writer.fh))
    assert (inodes[b"f02"], 0, b"content of 2") not in world.stored


class _BatchingClient(FakeSFTPClient):
    """A fake whose listings arrive in batches of 100, each when the test says."""

    listsInBatches = True

    def __init__(self) -> None:
        super().__init__()
        self.listings: list[tuple[list[Any], Any, defer.Deferred[Any]]] = []

    def listdir(self, path: bytes, onBatch: Any = None) -> defer.Deferred[Any]:
        whole = super().listdir(path)
        entries = result_of(whole)
        d: defer.Deferred[Any] = defer.Deferred()
        self.listings.append((entries, onBatch, d))
        return d

    def deliver(self, batches: int) -> None:
        entries, on_batch, d = self.listings[-1]
        for _ in range(batches):
            if not entries:
                d.callback(None)
                return
            on_batch(entries[:100])
            del entries[:100]


@pytest_twisted.ensureDeferred
async def test_a_listing_is_answered_while_it_still_arrives() -> None:
    """A readdir answers once a reply's worth of entries arrived, not after the last."""
    world = World()
    world.client = client = _BatchingClient()
    world.source = FakeSource(client)
    world.fs._source = world.source
    for i in range(1000):
        client.put(b"/exp/app/data/big/f%04d" % i, b"")
    client.put(b"/exp/app/secrets/token", b"t")

    async def scenario() -> None:
        await world.setup()
        vol = await world.fs.lookup(ROOT_INODE, b"data", None)
        big = await world.fs.lookup(vol.st_ino, b"big", None)
        fh = handle_of(await world.fs.opendir(big.st_ino, None))
        world.listing = []
        first = asyncio.ensure_future(world.fs.readdir(fh, 0, None))
        await asyncio.sleep(0.01)
        assert not first.done()
        client.deliver(3)
        await asyncio.sleep(0.01)
        assert not first.done(), "300 entries: less than a reply's worth"
        client.deliver(1)
        await first
        assert len(world.listing) == 400, "answered with what arrived"
        rest = asyncio.ensure_future(world.fs.readdir(fh, 400, None))
        client.deliver(7)  # the other 600, then the end
        await rest
        await world.fs.readdir(fh, 1000, None)
        assert [n for n, _, _ in world.listing] == [b"f%04d" % i for i in range(1000)]
        await world.fs.releasedir(fh)

    await aio(scenario())


@pytest.mark.e2e
def test_e2e_directory_walks_read_the_right_bytes(helper: MountHelper, export: str) -> None:
    """Walks by name and in listing order (their files fetched ahead) read every file's
    bytes; files changed on the server read anew after the attribute timeout; files written
    through the mount read back at once."""
    remote = os.path.join(export, "tel_app_exports", "echo", "data", "walk")
    os.makedirs(remote)
    names = [f"f{i:03d}" for i in range(60)]
    for i, name in enumerate(names):
        with open(os.path.join(remote, name), "wb") as f:
            f.write(f"{name} version 1 ".encode() * (1 + i % 7))

    def read_all(order: list[str]) -> dict[str, bytes]:
        out = {}
        for name in order:
            with open(helper.path("data", "walk", name), "rb") as f:
                out[name] = f.read()
        return out

    def expected(version: int, changed: frozenset[str] = frozenset()) -> dict[str, bytes]:
        return {
            name: f"{name} version {version if name in changed else 1} ".encode() * (1 + i % 7)
            for i, name in enumerate(names)
        }

    def story() -> None:
        listed = os.listdir(helper.path("data", "walk"))
        assert read_all(sorted(listed)) == expected(1)
        assert read_all(os.listdir(helper.path("data", "walk"))) == expected(1)
        changed = frozenset(names[10:50:3])
        for i, name in enumerate(names):
            if name in changed:
                with open(os.path.join(remote, name), "wb") as f:
                    f.write(f"{name} version 2 ".encode() * (1 + i % 7))
        time.sleep(2.2)  # past the attribute timeout, and a new mtime second
        assert read_all(sorted(os.listdir(helper.path("data", "walk")))) == expected(2, changed)
        with open(helper.path("data", "walk", names[20]), "wb") as f:
            f.write(b"written here")
        got = read_all(sorted(os.listdir(helper.path("data", "walk"))))
        assert got[names[20]] == b"written here"

    in_thread(story, 60)
