"""
Small files fetched ahead of their opens: a reader walking a directory's small files finds the
next ones already here (OPEN and READ pipelined, in batches, the SFTP socket corked).

``Listing`` and ``Ahead`` are its records; ``PrefetchMixin`` is the part of ``SFTPOperations``
that keeps them. Separate because it is an optimisation with its own bookkeeping and bounds:
the handlers only ask it to walk, to hand over (``_take_ahead``) or to drop what it fetched.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import stat
from collections.abc import Callable
from typing import Any

from twisted.conch.ssh import filetransfer as ft
from twisted.python.failure import Failure

from telenet.fuse.dircache import DirCache
from telenet.fuse.nodes import Node
from telenet.fuse.resume import Resume, running_loop
from telenet.sftp.client import SFTPClient
from telenet.sftp.codec import FileAttrs

__all__ = ["AHEAD_BYTES", "AHEAD_FILES", "AHEAD_TOTAL", "PAGE", "PREFETCH_MAX", "PrefetchMixin"]

#: Files up to this size opened for reading are read whole at open, ahead of the kernel.
PREFETCH_MAX = 128 << 10
PAGE = 4096
#: A reader opening a directory's small files one after the other (in listing or name order)
#: has this many of the next ones fetched ahead (OPEN and READ pipelined, in batches)...
AHEAD_FILES = 16
#: ... and all walks together at most this many files and bytes (the oldest make room).
AHEAD_TOTAL = 64
AHEAD_BYTES = 4 << 20
#: Directory listings remembered to guess the next file from, and the largest one kept.
LISTINGS = 8
LISTING_MAX = 4096


class Listing:
    """A directory's entries as last listed: the orders a reader may walk its files in."""

    __slots__ = ("names", "attrs", "pos", "by_name", "name_pos", "last", "order", "cursor")

    def __init__(self, entries: list[tuple[bytes, FileAttrs]]) -> None:
        self.names = [name for name, _ in entries]
        self.attrs = {name: attrs for name, attrs in entries}
        self.pos = {name: i for i, name in enumerate(self.names)}
        self.by_name: list[bytes] | None = None  # sorted when first needed
        self.name_pos: dict[bytes, int] = {}
        self.last: bytes | None = None  # the file opened last
        self.order: list[bytes] | None = None  # the order the reader follows, once seen
        self.cursor = 0  # where in ``order`` the next file to fetch is

    def sorted_names(self) -> list[bytes]:
        if self.by_name is None:
            self.by_name = sorted(self.names)
            self.name_pos = {name: i for i, name in enumerate(self.by_name)}
        return self.by_name


class Ahead:
    """A small file fetched ahead of its open: the handle and bytes, once they arrive."""

    __slots__ = (
        "client",
        "started",
        "size",
        "mtime",
        "handle",
        "data",
        "failed",
        "dropped",
        "waiter",
    )

    def __init__(self, client: SFTPClient, started: float, size: int, mtime: int | None):
        self.client = client
        self.started = started
        self.size = size
        self.mtime = mtime
        self.handle: bytes | None = None
        self.data: bytes | memoryview | None = None
        self.failed = False
        self.dropped = False
        self.waiter: Resume[None] | None = None

    def settled(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter.set_result(None)

    def discard(self) -> None:
        """Nobody will use it: close its handle (now, or once its READ is answered)."""
        self.dropped = True
        if self.data is not None or self.failed:
            self.close()
        self.settled()

    def close(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None and self.client.alive:
            self.client.close(handle, soon=True).addErrback(lambda f: None)


class PrefetchMixin:
    """
    The fetch-ahead part of ``SFTPOperations`` (see ``_walk``).

    Relies on the attributes ``InodeTable.__init__`` sets: its own ``_listings``, ``_ahead``,
    ``_claiming``, ``_ahead_bytes``, ``_purging`` and ``_corked``, and the filesystem's
    ``_by_key`` (the inode table), ``_dircache`` (kept listings), ``_now`` and
    ``attr_timeout``.
    """

    _listings: collections.OrderedDict[tuple[int, bytes], Listing]
    _ahead: dict[tuple[int, bytes], Ahead]
    _claiming: dict[tuple[int, bytes], Ahead]
    _ahead_bytes: int
    _purging: asyncio.TimerHandle | None
    _corked: Any
    _by_key: dict[tuple[int, bytes], Node]
    _now: Callable[[], float]
    _dircache: DirCache
    attr_timeout: float

    def _remember_listing(self, node: Node, entries: list[tuple[bytes, FileAttrs]]) -> None:
        self._remember((node.vol.vid, node.rel), entries)

    def _remember(
        self, key: tuple[int, bytes], entries: list[tuple[bytes, FileAttrs]]
    ) -> Listing | None:
        self._listings.pop(key, None)
        if len(entries) > LISTING_MAX:
            return None  # bounded memory; a huge directory is walked without help
        listing = self._listings[key] = Listing(entries)
        while len(self._listings) > LISTINGS:
            self._listings.popitem(last=False)
        return listing

    def _walk(self, node: Node, client: SFTPClient) -> None:
        """
        ``node``, a small file, is being opened: if the files of its directory are being
        opened one after the other, in the order of the last listing or by name, fetch the
        next ones ahead (at most ``AHEAD_FILES`` and ``AHEAD_BYTES``, topped up in batches
        sent together), so that their opens find them here without a round trip.
        """
        parent, _, name = node.rel.rpartition(b"/")
        listing = self._listings.get((node.vol.vid, parent))
        if listing is None:
            # A listing kept (dircache) since: what a stat storm listed guides the reads after.
            kept = self._dircache.get((node.vol.vid, parent), self._now())
            listed = None if kept is None else kept.entries()
            listing = None if listed is None else self._remember((node.vol.vid, parent), listed)
            if listing is None:
                return
        last, listing.last = listing.last, name
        at = listing.pos.get(name)
        if at is None or last is None:
            return
        if listing.pos.get(last) == at - 1:
            order = listing.names
        else:
            order = listing.sorted_names()
            at = listing.name_pos[name]
            if listing.name_pos.get(last) != at - 1:
                listing.order = None  # no walk (or not one we can follow)
                return
        if listing.order is not order:
            listing.order = order
            listing.cursor = at + 1
        elif listing.cursor <= at:
            listing.cursor = at + 1
        if listing.cursor - at - 1 > AHEAD_FILES // 2:
            return  # enough of this walk on its way: top up in batches, not one by one
        vid = node.vol.vid
        while listing.cursor < len(order) and listing.cursor - at - 1 < AHEAD_FILES:
            name = order[listing.cursor]
            listing.cursor += 1
            attrs = listing.attrs[name]
            size = attrs.size
            if (
                size is None
                or size > PREFETCH_MAX
                or attrs.permissions is None
                or not stat.S_ISREG(attrs.permissions)
            ):
                continue
            rel = parent + b"/" + name if parent else name
            key = (vid, rel)
            other = self._by_key.get(key)
            if key in self._ahead or (other is not None and other.handles):
                continue
            if (
                other is not None
                and other.opened == (attrs.mtime, size)
                and other.expires > self._now()
            ):
                continue  # its open keeps the kernel's pages of it (files._keep_cache)
            while self._ahead and (
                len(self._ahead) >= AHEAD_TOTAL or self._ahead_bytes + size > AHEAD_BYTES
            ):
                # The oldest makes room (the dict is in fetch order): another walk's rest.
                self._take_ahead(next(iter(self._ahead))).discard()  # type: ignore[union-attr]
            self._fetch_ahead(client, key, node.vol.remote(rel), size, attrs.mtime)

    def _fetch_ahead(
        self, client: SFTPClient, key: tuple[int, bytes], path: bytes, size: int, mtime: int | None
    ) -> None:
        ahead = Ahead(client, self._now(), size, mtime)
        self._ahead[key] = ahead
        self._ahead_bytes += size
        if self._purging is None:
            self._purging = running_loop().call_later(
                self.attr_timeout + 0.1, self._purge_ahead, True
            )
        self._cork(client)
        asked = (size // PAGE + 1) * PAGE  # past the end: the short answer shows it

        def opened(handle: bytes) -> None:
            ahead.handle = handle
            if ahead.dropped:
                ahead.close()
                return
            self._cork(client)  # the READs of one batch of answers go out together
            client.read(handle, 0, asked).addCallbacks(got, failed)

        def got(data: bytes | memoryview) -> None:
            ahead.data = data
            if ahead.dropped:
                ahead.close()
            ahead.settled()

        def failed(_: Failure) -> None:
            ahead.failed = True
            ahead.discard()

        client.open(path, ft.FXF_READ).addCallbacks(opened, failed)

    def _take_ahead(self, key: tuple[int, bytes]) -> Ahead | None:
        ahead = self._ahead.pop(key, None)
        if ahead is not None:
            self._ahead_bytes -= ahead.size
        return ahead

    def _drop_ahead(self, vid: int, rel: bytes, under: bool = False) -> None:
        """This mount changes ``rel`` (and with ``under``, what is below it): drop its fetches."""
        if self._claiming:
            prefix = rel + b"/" if rel else b""
            for key, claimed in list(self._claiming.items()):
                if key == (vid, rel) or (under and key[0] == vid and key[1].startswith(prefix)):
                    claimed.discard()
        if not self._ahead:
            return
        ahead = self._take_ahead((vid, rel))
        if ahead is not None:
            ahead.discard()
        if under:
            prefix = rel + b"/" if rel else b""
            for key in [k for k in self._ahead if k[0] == vid and k[1].startswith(prefix)]:
                self._take_ahead(key).discard()  # type: ignore[union-attr]

    def _purge_ahead(self, timer: bool = False) -> None:
        """Close what was fetched ahead and not claimed within the attribute timeout."""
        if timer:
            self._purging = None
        horizon = self._now() - self.attr_timeout
        for key in [k for k, a in self._ahead.items() if a.started < horizon or a.failed]:
            self._take_ahead(key).discard()  # type: ignore[union-attr]
        if self._ahead and self._purging is None:
            self._purging = running_loop().call_later(
                self.attr_timeout + 0.1, self._purge_ahead, True
            )

    def _cork(self, client: SFTPClient) -> None:
        """
        Hold the SFTP socket's sends until the end of this loop iteration (TCP_CORK), so that
        requests made one by one leave in one segment: one wake-up of the server per batch.
        """
        if self._corked is not None:
            return
        try:
            sock = client.transport.getHandle()  # type: ignore[union-attr]
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        except Exception:
            return  # not a TCP socket (tests): sent one by one
        self._corked = sock
        running_loop().call_soon(self._uncork)

    def _uncork(self) -> None:
        sock, self._corked = self._corked, None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        except OSError:
            pass  # closed meanwhile
