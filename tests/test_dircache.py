"""
How long the mount trusts what the server said (telenet.fuse.dircache): a tenth of a name's
age, from the attribute timeout up to sshfs's 20 s, and complete directory listings kept
that long, so that a stat storm over an old tree asks the server nothing twice.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import time
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from pyfuse3 import ROOT_INODE, EntryAttributes, FileInfo
from twisted.conch.ssh import filetransfer as ft
from twisted.internet import defer

from telenet.fuse.dircache import MOST_TRUST, DirCache, trust_for
from telenet.fuse.errors import IO_ERRNOS
from telenet.fuse.nodes import OPEN_FLAGS, handle_of
from telenet.sftp.codec import FileAttrs
from telenet.sftp.errors import SFTPStatusError
from tests.sftpfakes import FakeSFTPClient
from tests.test_sftpfs import World, aio, fuse_errno

HOUR_AGO = int(time.time()) - 3600


@pytest.fixture
def world() -> World:
    return World()


def test_trust_is_a_tenth_of_the_age_between_the_bounds() -> None:
    now = 1_000_000.0
    assert trust_for(int(now) - 5, now, 1.0, 20.0) == 1.0  # changed just now
    assert trust_for(int(now) - 100, now, 1.0, 20.0) == 10.0
    assert trust_for(int(now) - 3600, now, 1.0, 20.0) == 20.0
    assert trust_for(int(now) + 60, now, 1.0, 20.0) == 1.0  # a clock ahead of ours
    assert trust_for(None, now, 1.0, 20.0) == 1.0
    assert trust_for(int(now) - 3600, now, 1.0, 1.0) == 1.0  # the policy off


def test_dircache_expires_drops_and_stays_bounded() -> None:
    cache = DirCache(max_entries=40)
    a = FileAttrs(size=1)
    cache.put((1, b"d"), [(b"x", a)], taken=10.0, until=12.0)
    assert cache.get((1, b"d"), 11.0) is not None
    assert cache.get((1, b"d"), 12.0) is None  # and gone
    cache.put((1, b"d"), [(b"x", a)], 10.0, 30.0)
    cache.put((1, b"d/e"), [(b"y", a)], 10.0, 30.0)
    cache.put((2, b"d/e"), [(b"y", a)], 10.0, 30.0)
    cache.drop(1, b"d", under=True)
    assert cache.get((1, b"d"), 11.0) is None and cache.get((1, b"d/e"), 11.0) is None
    assert cache.get((2, b"d/e"), 11.0) is not None
    cache.put((1, b"huge"), [(str(i).encode(), a) for i in range(11)], 10.0, 30.0)
    assert cache.get((1, b"huge"), 11.0) is None  # over a quarter of the bound: not kept
    for i in range(10):
        cache.put((1, f"d{i}".encode()), [(str(j).encode(), a) for j in range(8)], 10.0, 30.0)
    assert len(cache) == 5  # 40 entries at most, the least recently used dropped
    assert cache.get((1, b"d9"), 11.0) is not None and cache.get((1, b"d0"), 11.0) is None
    cache.put((2, b"z"), [(b"y", a)], 10.0, 30.0)
    cache.drop_volume(1)
    assert len(cache) == 1  # volume 2's


def age(world: World, *paths: bytes, mtime: int = HOUR_AGO) -> None:
    for path in paths:
        world.client.tree[path].mtime = mtime


@pytest_twisted.ensureDeferred
async def test_an_old_file_is_trusted_longer_than_a_new_one(world: World) -> None:
    await aio(world.setup())
    world.client.put(b"/exp/app/data/new", b"n")
    age(world, b"/exp/app/data/hello")
    old = await world.lookup_path(b"data", b"hello")
    new = await world.lookup_path(b"data", b"new")
    assert old.attr_timeout == old.entry_timeout == MOST_TRUST  # the kernel keeps it too
    assert new.attr_timeout == world.fs.attr_timeout
    world.client.calls.clear()
    world.now += 10
    await aio(world.fs.getattr(old.st_ino, None))
    assert world.client.calls == []
    await aio(world.fs.getattr(new.st_ino, None))
    assert world.client.calls == [("lstat", b"/exp/app/data/new")]
    world.now += MOST_TRUST
    await aio(world.fs.getattr(old.st_ino, None))
    assert world.client.calls[-1] == ("lstat", b"/exp/app/data/hello")


@pytest_twisted.ensureDeferred
async def test_a_listing_of_an_old_directory_answers_lookups_and_readdir(world: World) -> None:
    """
    After one readdir of a directory unchanged for an hour, its names (and the absence of
    others, as `.gitignore` probes ask) are answered without the server, for 20 s.
    """
    await aio(world.setup())
    age(world, b"/exp/app/data", b"/exp/app/data/hello", b"/exp/app/data/sub")
    vol = await world.lookup_path(b"data")
    world.now += MOST_TRUST + 1
    await aio(world.fs.getattr(vol.st_ino, None))  # as the kernel does before a listing
    assert sorted(await world.readdir(vol.st_ino)) == [b"hello", b"sub"]
    world.client.calls.clear()
    world.now += 5
    assert sorted(await world.readdir(vol.st_ino)) == [b"hello", b"sub"]
    hello = await aio(world.fs.lookup(vol.st_ino, b"hello", None))
    missing = await aio(world.fs.lookup(vol.st_ino, b".gitignore", None))
    assert world.client.calls == []
    assert missing.st_ino == 0 and 14 <= missing.entry_timeout <= 15  # the listing's time left
    assert 14 <= hello.attr_timeout <= 15
    world.now += 16
    await aio(world.fs.lookup(vol.st_ino, b".gitignore", None))
    assert world.client.calls == [("lstat", b"/exp/app/data/.gitignore")]


@pytest_twisted.ensureDeferred
async def test_a_new_directory_or_file_in_a_listing_is_asked_again_soon(world: World) -> None:
    """A directory changed a moment ago is listed again after 1 s; so is a new name in it."""
    await aio(world.setup())
    vol = await world.lookup_path(b"data")
    await world.readdir(vol.st_ino)
    world.client.calls.clear()
    world.now += 1.5
    await world.readdir(vol.st_ino)
    assert any(call[0] == "listdir" for call in world.client.calls), world.client.calls


@pytest_twisted.ensureDeferred
async def test_changes_through_the_mount_show_at_once(world: World) -> None:
    """Whatever this mount does in a kept directory drops its listing."""
    await aio(world.setup())
    age(world, b"/exp/app/data", b"/exp/app/data/hello", b"/exp/app/data/sub")
    vol = await world.lookup_path(b"data")
    world.now += MOST_TRUST + 1
    await aio(world.fs.getattr(vol.st_ino, None))

    async def listed() -> list[bytes]:
        return sorted(await world.readdir(vol.st_ino))

    assert await listed() == [b"hello", b"sub"]
    made = await aio(world.fs.create(vol.st_ino, b"made", 0o644, os.O_WRONLY, None))
    await aio(world.fs.release(made[0].fh))
    assert await listed() == [b"hello", b"made", b"sub"]
    await aio(world.fs.unlink(vol.st_ino, b"made", None))
    assert await listed() == [b"hello", b"sub"]
    await aio(world.fs.rename(vol.st_ino, b"hello", vol.st_ino, b"renamed", 0, None))
    assert await listed() == [b"renamed", b"sub"]
    again = await aio(world.fs.lookup(vol.st_ino, b"hello", None))
    assert again.st_ino == 0 and again.entry_timeout == world.fs.negative_timeout
    entry = await aio(world.fs.lookup(vol.st_ino, b"renamed", None))
    fi = await aio(world.fs.open(entry.st_ino, os.O_WRONLY, None))
    await aio(world.fs.write(fi.fh, 0, b"longer than hello world"))
    await aio(world.fs.release(fi.fh))
    await listed()
    after = await aio(world.fs.getattr(entry.st_ino, None))
    assert after.st_size == len(b"longer than hello world")


@pytest_twisted.ensureDeferred
async def test_the_mount_root_and_volume_removal(world: World) -> None:
    """The root's listing (the volumes) is never kept; a removed volume's listings go."""
    await aio(world.setup())
    age(world, b"/exp/app/data", b"/exp/app/data/hello", b"/exp/app/data/sub")
    vol = await world.lookup_path(b"data")
    world.now += MOST_TRUST + 1
    await aio(world.fs.getattr(vol.st_ino, None))
    await world.readdir(vol.st_ino)
    assert len(world.fs._dircache) == 1
    world.fs.remove_volume("data")
    assert len(world.fs._dircache) == 0
    assert sorted(await world.readdir(ROOT_INODE)) == [b"secrets"]


@pytest_twisted.ensureDeferred
async def test_a_file_whose_pages_the_kernel_keeps_is_opened_only_when_read(world: World) -> None:
    """
    Re-opening an unchanged old file asks the server nothing (the kernel serves its pages,
    as grep's second pass over a tree wants); a READ, if the kernel lost the pages, opens it
    then; closing a handle never opened sends no CLOSE.
    """
    world.fs._store = None
    await aio(world.setup())
    age(world, b"/exp/app/data/hello")
    entry = await world.lookup_path(b"data", b"hello")
    first = await aio(world.fs.open(entry.st_ino, os.O_RDONLY, None))
    await aio(world.fs.release(first.fh))
    world.client.calls.clear()
    again = await aio(world.fs.open(entry.st_ino, os.O_RDONLY, None))
    assert again.keep_cache is True
    await aio(world.fs.flush(again.fh))
    await aio(world.fs.fsync(again.fh, False))
    await aio(world.fs.release(again.fh))
    assert world.client.calls == []
    third = await aio(world.fs.open(entry.st_ino, os.O_RDONLY, None))
    assert bytes(await aio(world.fs.read(third.fh, 0, 5))) == b"hello"
    await aio(world.fs.release(third.fh))
    assert [c[0] for c in world.client.calls if c[0] in ("open", "close")] == ["open", "close"]


@pytest_twisted.ensureDeferred
async def test_names_looked_up_one_after_another_list_their_directory(world: World) -> None:
    """
    The second name missed in a directory within a second lists it: the lookups still to
    come there (and the misses) are answered from the listing, as a stat storm wants.
    """
    await aio(world.setup())
    for i in range(6):
        world.client.put(f"/exp/app/data/sub/f{i}".encode(), b"x")
    vol = await world.lookup_path(b"data")
    sub = await aio(world.fs.lookup(vol.st_ino, b"sub", None))
    world.client.calls.clear()
    for i in range(6):
        assert (await aio(world.fs.lookup(sub.st_ino, f"f{i}".encode(), None))).st_ino > 1
    assert (await aio(world.fs.lookup(sub.st_ino, b"missing", None))).st_ino == 0
    asked = [c[0] for c in world.client.calls]
    assert asked == ["lstat", "listdir"], asked


@pytest_twisted.ensureDeferred
async def test_a_directory_too_big_to_keep_is_not_listed_for_lookups_again(world: World) -> None:
    await aio(world.setup())
    world.fs._dircache.max_entries = 8  # keeps listings of 2 names at most
    for i in range(6):
        world.client.put(f"/exp/app/data/sub/f{i}".encode(), b"x")
    vol = await world.lookup_path(b"data")
    sub = await aio(world.fs.lookup(vol.st_ino, b"sub", None))
    world.client.calls.clear()
    for i in range(6):
        await aio(world.fs.lookup(sub.st_ino, f"f{i}".encode(), None))
    asked = [c[0] for c in world.client.calls]
    assert asked.count("listdir") == 1 and asked.count("lstat") == 6, asked


@pytest_twisted.ensureDeferred
async def test_a_listing_that_fails_leaves_the_lookup_to_the_server(world: World) -> None:
    await aio(world.setup())
    vol = await world.lookup_path(b"data")
    sub = await aio(world.fs.lookup(vol.st_ino, b"sub", None))
    refused = SFTPStatusError(ft.FX_PERMISSION_DENIED, "execute-only directory")
    world.client.listdir = lambda path, onBatch=None: defer.fail(refused)  # type: ignore[method-assign]
    world.client.calls.clear()
    await aio(world.fs.lookup(sub.st_ino, b"deep", None))
    world.now += 5
    deep = await aio(world.fs.lookup(sub.st_ino, b"deep", None))
    assert deep.st_ino > 1
    assert [c[0] for c in world.client.calls] == ["lstat", "lstat"]


@pytest_twisted.ensureDeferred
async def test_lookups_wait_for_a_listing_on_its_way(world: World) -> None:
    """Lookups arriving while their directory is being listed wait for it, then use it."""
    await aio(world.setup())
    for i in range(4):
        world.client.put(f"/exp/app/data/sub/f{i}".encode(), b"x")
    vol = await world.lookup_path(b"data")
    sub = await aio(world.fs.lookup(vol.st_ino, b"sub", None))
    answer = world.client.listdir
    held: list[tuple[defer.Deferred[Any], bytes]] = []

    def later(path: bytes, onBatch: Any = None) -> defer.Deferred[Any]:
        held.append((defer.Deferred(), path))
        return held[-1][0]

    world.client.listdir = later  # type: ignore[method-assign]
    await aio(world.fs.lookup(sub.st_ino, b"f0", None))
    world.client.calls.clear()

    async def scenario() -> list[Any]:  # on the handlers' loop, as pyfuse3 runs them
        lookups = [
            asyncio.ensure_future(world.fs.lookup(sub.st_ino, f"f{i}".encode(), None))
            for i in (1, 2, 3)
        ]
        for _ in range(5):
            await asyncio.sleep(0)  # the listing's task starts
        assert len(held) == 1 and not any(t.done() for t in lookups)
        d, path = held[0]
        answer(path).addCallback(d.callback)
        return list(await asyncio.gather(*lookups))

    entries = await aio(scenario())
    assert all(e.st_ino > 1 for e in entries)
    assert world.client.calls == [("listdir", b"/exp/app/data/sub")]


@pytest_twisted.ensureDeferred
async def test_a_change_through_one_volume_shows_at_once_in_another_of_the_same_place(
    world: World,
) -> None:
    """A read-only and a writable volume of one directory: what one does, the other sees."""
    await aio(world.setup())
    assert await world.fs.add_volume("view", "/exp/app/data", True) is None
    age(world, b"/exp/app/data", b"/exp/app/data/hello", b"/exp/app/data/sub")
    rw = await world.lookup_path(b"data")
    ro = await world.lookup_path(b"view")
    world.now += MOST_TRUST + 1
    for vol in (rw, ro):
        await aio(world.fs.getattr(vol.st_ino, None))
        await world.readdir(vol.st_ino)
    assert (await aio(world.fs.lookup(ro.st_ino, b"yes", None))).st_ino == 0  # kept: absent
    made = await aio(world.fs.create(rw.st_ino, b"yes", 0o644, os.O_WRONLY, None))
    await aio(world.fs.release(made[0].fh))
    assert (ro.st_ino, b"yes") in world.invalidated  # the kernel forgets "no such name"
    assert (await aio(world.fs.lookup(ro.st_ino, b"yes", None))).st_ino > 1
    assert b"yes" in await world.readdir(ro.st_ino)


@pytest_twisted.ensureDeferred
async def test_names_made_here_keep_the_listing_and_a_new_directory_is_known_empty(
    world: World,
) -> None:
    """
    An untar into a new directory: the directory made here is known empty, each file made
    in it is added to its listing, so the lookups of the names still to come ask nothing;
    a file changed here is asked again, the rest of the listing stays; a rename anywhere
    shows at once.
    """
    await aio(world.setup())
    vol = await world.lookup_path(b"data")
    made = await aio(world.fs.mkdir(vol.st_ino, b"new", 0o755, None))
    world.client.calls.clear()
    assert (await aio(world.fs.lookup(made.st_ino, b"a", None))).st_ino == 0
    fi, a = await aio(world.fs.create(made.st_ino, b"a", 0o644, os.O_WRONLY, None))
    assert (await aio(world.fs.lookup(made.st_ino, b"b", None))).st_ino == 0
    asked = [c for c in world.client.calls if c[0] in ("lstat", "listdir")]
    assert asked == [("lstat", b"/exp/app/data/new/a")], asked  # the create's own read-back
    await aio(world.fs.write(fi.fh, 0, b"changed"))
    await aio(world.fs.release(fi.fh))
    world.client.calls.clear()
    assert (await aio(world.fs.lookup(made.st_ino, b"c", None))).st_ino == 0
    assert world.client.calls == []
    # readdir needs every name's attributes: "a" changed here, so the directory is listed.
    assert await world.readdir(made.st_ino) == [b"a"]
    assert ("listdir", b"/exp/app/data/new") in world.client.calls
    await aio(world.fs.rename(made.st_ino, b"a", vol.st_ino, b"moved", 0, None))
    assert (await aio(world.fs.lookup(made.st_ino, b"a", None))).st_ino == 0
    assert (await aio(world.fs.lookup(vol.st_ino, b"moved", None))).st_ino > 1
    assert await world.readdir(made.st_ino) == []


@pytest_twisted.ensureDeferred
async def test_a_new_file_read_again_within_its_trust_keeps_its_pages(world: World) -> None:
    """
    A file changed a moment ago, read again while the attributes its first open saw are
    still the ones trusted: the kernel keeps its pages and no OPEN goes out; once they are
    asked again (the trust ran out), a same-second change could hide: the pages go.
    """
    world.fs._store = None
    await aio(world.setup())
    entry = await world.lookup_path(b"data", b"hello")
    world.now += 0.1
    first = await aio(world.fs.open(entry.st_ino, os.O_RDONLY, None))
    await aio(world.fs.release(first.fh))
    world.now += 0.5
    world.client.calls.clear()
    again = await aio(world.fs.open(entry.st_ino, os.O_RDONLY, None))
    await aio(world.fs.release(again.fh))
    assert again.keep_cache and world.client.calls == []
    world.now += 1
    await world.lookup_path(b"data", b"hello")
    world.now += 0.1
    later = await aio(world.fs.open(entry.st_ino, os.O_RDONLY, None))
    assert not later.keep_cache


@pytest_twisted.ensureDeferred
async def test_a_walk_down_the_tree_lists_the_next_directories_ahead(world: World) -> None:
    """
    A directory read right after its parent (find, grep -r): its subdirectories are listed
    ahead and kept, so their readdirs ask nothing; a lone readdir lists nothing ahead.
    """
    await aio(world.setup())
    for d in (b"a", b"b", b"c"):
        world.client.put(b"/exp/app/data/sub/" + d + b"/file", b"x")
    age(world, *[p for p in world.client.tree if p.startswith(b"/exp/app/data")])
    vol = await world.lookup_path(b"data")
    world.now += MOST_TRUST + 1
    await aio(world.fs.getattr(vol.st_ino, None))
    await world.readdir(vol.st_ino)
    assert not [c for c in world.client.calls if c[0] == "listdir" and b"/sub/" in c[1]]
    sub = await aio(world.fs.lookup(vol.st_ino, b"sub", None))

    async def walk() -> None:  # on the handlers' loop, as pyfuse3 runs them
        fh = handle_of(await world.fs.opendir(sub.st_ino, None))
        await world.fs.readdir(fh, 0, None)
        await world.fs.releasedir(fh)
        for _ in range(5):
            await asyncio.sleep(0)  # the listings ahead run

    await aio(walk())
    ahead = sorted(c[1] for c in world.client.calls if c[0] == "listdir" and b"/sub/" in c[1])
    assert ahead == [b"/exp/app/data/sub/a", b"/exp/app/data/sub/b", b"/exp/app/data/sub/c"]
    world.client.calls.clear()
    a = await aio(world.fs.lookup(sub.st_ino, b"a", None))
    assert await world.readdir(a.st_ino) == [b"file"]
    assert world.client.calls == []


@pytest_twisted.ensureDeferred
async def test_the_mount_counts_what_went_through_it(world: World) -> None:
    """Bytes read and written through the mount, and I/O errors (health, in Status)."""
    world.fs._store = None
    await aio(world.setup())
    entry = await world.lookup_path(b"data", b"hello")
    fi = await aio(world.fs.open(entry.st_ino, os.O_RDWR, None))
    assert bytes(await aio(world.fs.read(fi.fh, 0, 5))) == b"hello"
    assert await aio(world.fs.write(fi.fh, 0, b"HEY")) == 3
    world.client.kill()
    assert await fuse_errno(world.fs.getattr(ROOT_INODE + 999, None)) == errno.ESTALE
    world.now += MOST_TRUST + 1
    assert await fuse_errno(world.fs.lookup(entry.st_ino, b"x", None)) in IO_ERRNOS
    counters = world.fs.counters
    assert (counters.read_bytes, counters.written_bytes) == (5, 3)
    assert counters.io_errors == 1


@pytest_twisted.ensureDeferred
async def test_the_kernel_keeps_a_listing_only_while_it_is_the_one_kept_here(
    world: World,
) -> None:
    """
    An opendir tells the kernel to keep the listing in its page cache (FOPEN_CACHE_DIR), and
    to read its own copy again (FOPEN_KEEP_CACHE) only while the listing it was filled from is
    the one trusted here: a changed or expired listing makes it read the directory anew.
    A file opened for reading asks for no FLUSH at close (FOPEN_NOFLUSH); one written does.
    """
    assert OPEN_FLAGS, "pyfuse3 lacks telemount's patch: run scripts/dev setup"
    await aio(world.setup())
    age(world, b"/exp/app/data", b"/exp/app/data/hello", b"/exp/app/data/sub")
    vol = await world.lookup_path(b"data")
    world.now += MOST_TRUST + 1
    await aio(world.fs.getattr(vol.st_ino, None))

    async def opened() -> FileInfo:
        answer = await aio(world.fs.opendir(vol.st_ino, None))
        assert isinstance(answer, FileInfo) and answer.cache_readdir
        return answer

    first = await opened()
    assert not first.keep_cache  # nothing kept yet
    world.listing = []
    await aio(world.fs.readdir(first.fh, 0, None))
    await aio(world.fs.releasedir(first.fh))
    second = await opened()
    assert second.keep_cache  # the kernel's copy is the listing kept here
    await aio(world.fs.releasedir(second.fh))
    made = await aio(world.fs.create(vol.st_ino, b"made", 0o644, os.O_WRONLY, None))
    assert not made[0].noflush
    await aio(world.fs.release(made[0].fh))
    node = world.fs._node(vol.st_ino)
    world.fs._dircache.drop(node.vol.vid, node.rel)  # as a change through another volume does
    third = await opened()
    assert not third.keep_cache  # listed again here: the kernel reads it again too
    await aio(world.fs.releasedir(third.fh))
    world.now += MOST_TRUST + 1
    assert not (await opened()).keep_cache  # expired
    root = await aio(world.fs.opendir(ROOT_INODE, None))
    assert isinstance(root, int)  # the volumes are never kept by the kernel
    hello = await aio(world.fs.lookup(vol.st_ino, b"hello", None))
    reading = await aio(world.fs.open(hello.st_ino, os.O_RDONLY, None))
    assert reading.noflush
    await aio(world.fs.release(reading.fh))


def _fields(**changed: bool) -> Any:
    names = ("size", "mode", "uid", "gid", "atime", "mtime")
    return SimpleNamespace(**{f"update_{n}": changed.get(n, False) for n in names})


@pytest_twisted.ensureDeferred
async def test_mode_and_times_set_while_a_made_file_is_written_go_out_with_its_flush(
    world: World,
) -> None:
    """
    tar makes each file, writes it, sets its times and mode, and closes it: the times and
    mode are answered here and sent at the flush, after the writes, in one round trip with
    the LSTAT that says what the file is then. A write after the times lets the write's time
    stand; a refused change fails the close.
    """
    await aio(world.setup())
    vol = await world.lookup_path(b"data")
    path = b"/exp/app/data/made"
    fi, _ = await aio(world.fs.create(vol.st_ino, b"made", 0o600, os.O_WRONLY, None))
    made = await aio(world.fs.lookup(vol.st_ino, b"made", None))
    await aio(world.fs.write(fi.fh, 0, b"four"))
    world.client.calls.clear()
    attr = EntryAttributes()
    attr.st_mtime_ns = HOUR_AGO * 10**9
    attr.st_mode = stat.S_IFREG | 0o644
    timed = await aio(world.fs.setattr(made.st_ino, attr, _fields(mtime=True), None, None))
    moded = await aio(world.fs.setattr(made.st_ino, attr, _fields(mode=True), None, None))
    seen = await aio(world.fs.getattr(made.st_ino, None))
    assert timed.st_mtime_ns == moded.st_mtime_ns == seen.st_mtime_ns == HOUR_AGO * 10**9
    assert stat.S_IMODE(seen.st_mode) == 0o644 and seen.st_size == 4
    assert [c[0] for c in world.client.calls if c[0] != "write"] == []  # nothing asked yet
    await aio(world.fs.flush(fi.fh))
    ((_, sent_to, sent),) = [c for c in world.client.calls if c[0] == "fsetstat"]
    assert sent_to == path and sent.permissions == 0o644 and sent.mtime == HOUR_AGO
    assert [c[0] for c in world.client.calls][-2:] == ["fsetstat", "lstat"]
    await aio(world.fs.release(fi.fh))
    entry = world.client.tree[path]
    assert stat.S_IMODE(entry.mode) == 0o644 and entry.mtime == HOUR_AGO
    assert world.client.data(path) == b"four"

    # Times set, then more written: the write's time is the file's.
    fi, _ = await aio(world.fs.create(vol.st_ino, b"later", 0o600, os.O_WRONLY, None))
    later = await aio(world.fs.lookup(vol.st_ino, b"later", None))
    await aio(world.fs.setattr(later.st_ino, attr, _fields(mtime=True, mode=True), None, None))
    await aio(world.fs.write(fi.fh, 0, b"x"))
    await aio(world.fs.flush(fi.fh))
    await aio(world.fs.release(fi.fh))
    entry = world.client.tree[b"/exp/app/data/later"]
    assert stat.S_IMODE(entry.mode) == 0o644 and entry.mtime != HOUR_AGO

    # A change the server refuses shows at the close.
    fi, _ = await aio(world.fs.create(vol.st_ino, b"refused", 0o600, os.O_WRONLY, None))
    refused = await aio(world.fs.lookup(vol.st_ino, b"refused", None))
    await aio(world.fs.setattr(refused.st_ino, attr, _fields(mode=True), None, None))
    world.client.fail_setstat = ft.FX_PERMISSION_DENIED
    assert await fuse_errno(world.fs.flush(fi.fh)) == errno.EPERM
    await aio(world.fs.release(fi.fh))


@pytest_twisted.ensureDeferred
async def test_writes_lost_to_a_reconnect_fail_the_flush_that_carries_a_mode(
    world: World,
) -> None:
    """
    A mode set while writing waits for the flush: writes the old connection lost fail it; with
    none lost, the handle is opened again on the new connection and the mode goes out there.
    """
    await aio(world.setup())
    vol = await world.lookup_path(b"data")
    fi, _ = await aio(world.fs.create(vol.st_ino, b"lost", 0o600, os.O_WRONLY, None))
    made = await aio(world.fs.lookup(vol.st_ino, b"lost", None))
    world.client.hold_writes = True
    await aio(world.fs.write(fi.fh, 0, b"never answered"))
    attr = EntryAttributes()
    attr.st_mode = stat.S_IFREG | 0o644
    await aio(world.fs.setattr(made.st_ino, attr, _fields(mode=True), None, None))
    world.client.kill()
    world.source.client = FakeSFTPClient(world.client.tree)
    assert await fuse_errno(world.fs.flush(fi.fh)) == errno.EIO
    assert stat.S_IMODE(world.client.tree[b"/exp/app/data/lost"].mode) == 0o600
    assert await fuse_errno(world.fs.release(fi.fh)) == errno.EIO  # the kernel ignores it

    # Nothing lost (every write answered before the reconnect): the mode gets there.
    fi, _ = await aio(world.fs.create(vol.st_ino, b"kept", 0o600, os.O_WRONLY, None))
    kept = await aio(world.fs.lookup(vol.st_ino, b"kept", None))
    await aio(world.fs.write(fi.fh, 0, b"answered"))
    await aio(world.fs.setattr(kept.st_ino, attr, _fields(mode=True), None, None))
    world.source.client.kill()
    world.source.client = FakeSFTPClient(world.client.tree)
    await aio(world.fs.flush(fi.fh))
    await aio(world.fs.release(fi.fh))
    entry = world.client.tree[b"/exp/app/data/kept"]
    assert stat.S_IMODE(entry.mode) == 0o644 and bytes(entry.data) == b"answered"
