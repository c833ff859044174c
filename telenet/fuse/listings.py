"""
What the mount knows of names and listings, and what it makes of a change: a name's
attributes while they are trusted (``_fresh``, ``_cached``), kept listings
(``telenet.fuse.dircache``) and what they answer (``_listed``), changes made through this
mount (``_stale``, ``_grew``), and listing a directory whose names are being looked up one
after the other.

A program that stats a tree by path (``git status`` refreshing its index, ``make``,
``rsync``) looks up every name of a directory in turn, one round trip each. From the second
name missed in a directory within a second, the directory is listed instead (its READDIRs
pipelined) and the lookups still to come in it are answered from the listing, as are the
opens a walk of its files makes (the listing tells ``PrefetchMixin`` what comes next).
"""

from __future__ import annotations

import asyncio
import functools
import stat
import time

from pyfuse3 import EntryAttributes
from twisted.internet.defer import Deferred

from telenet.fuse.dircache import Snapshot
from telenet.fuse.inodes import InodeTable, dir_of
from telenet.fuse.nodes import MountedVolume, Node, as_written, writing
from telenet.fuse.resume import wait
from telenet.sftp.codec import FileAttrs, NameEntry

__all__ = ["LOOKUP_LISTING_AFTER", "ListingsMixin"]

#: A miss in a directory this soon after another one there lists the directory.
LOOKUP_LISTING_AFTER = 1.0
#: Subdirectories listed ahead of a program walking down a tree, at most, per directory read.
AHEAD_DIRS = 16
#: A directory read this soon after its parent's was: the program is walking down the tree.
DESCENT_WITHIN = 1.0

#: The last miss of a directory whose listing could not be kept: look its names up alone.
UNKEPT = -1.0
#: Directories whose last miss is remembered (a plain bound; forgetting one costs a lstat).
MISSES_KEPT = 1024


class ListingsMixin(InodeTable):
    """
    The handlers' base (names, files, directories). Relies on ``InodeTable`` (the table,
    ``_dircache``, ``_written``, ``_misses``, ``_lookup_listings``, ``_trust``, ``_set_attrs``,
    ``_changed_elsewhere``) and ``PrefetchMixin._remember_listing``.
    """

    def _cached(self, e: EntryAttributes, expires: float) -> EntryAttributes:
        """A kept entry, the kernel told only the time it has left (not its whole time again)."""
        left = max(0.0, expires - self._now())
        if e.attr_timeout > left:
            e.attr_timeout = e.entry_timeout = left
        return e

    def _stale(self, *nodes: Node) -> None:
        """This mount changed ``nodes``: what is known of them is to be asked for again."""
        for node in nodes:
            node.expires = 0.0
            self._dircache.drop(node.vol.vid, node.rel)
            self._changed_in(node)

    def _changed_in(self, node: Node) -> None:
        """``node`` changed through this mount: its directory's listing and its aliases."""
        vid, parent, name = node.vol.vid, *node.rel.rpartition(b"/")[::2]
        if node.rel:
            self._dircache.unknown((vid, parent), name)
        self._written[(vid, parent)] = self._now()
        if len(self._written) > 1024:
            self._written.pop(next(iter(self._written)))
        self._changed_elsewhere(node.vol, node.rel)

    def _listed(self, vid: int, rel: bytes) -> tuple[FileAttrs | None, Snapshot] | None:
        """
        What the listing of ``rel``'s directory says of it, if that listing is trusted: its
        attributes (None: no such name) and the listing. None if the server is to be asked
        (no listing, or attributes too old for this name's own age).
        """
        if not rel:
            return None
        now = self._now()
        snapshot = self._dircache.get((vid, dir_of(rel)), now)
        if snapshot is None:
            return None
        name = rel.rpartition(b"/")[2]
        attrs = snapshot.attrs.get(name)
        if attrs is None:
            return None if name in snapshot.attrs else (None, snapshot)
        if snapshot.taken + self._trust(attrs) <= now:
            return None
        return attrs, snapshot

    def _guessed(self, node: Node, attrs: FileAttrs) -> EntryAttributes:
        """Tell the kernel ``attrs``, worked out here (not said by the server)."""
        fetched = node.fetched
        entry = self._set_attrs(node, attrs)
        node.fetched = fetched  # a flush still asks the server after the writes
        return entry

    async def _fresh(self, node: Node) -> EntryAttributes:
        if node.expires > self._now() and node.entry is not None:
            return self._cached(node.entry, node.expires)
        if node.detached and node.entry is not None:
            return node.entry
        if self._specials:
            special = self._specials.get(node.vol.vid, node.rel)
            if special is not None:
                return self._set_attrs(node, special.attrs)
        h = writing(node)
        if h is not None and node.attrs is not None:
            # Its size is what its writes made it: no need to wait for them to land and ask.
            return self._guessed(node, as_written(node.attrs, h, int(time.time())))
        listed = None if node.handles else self._listed(node.vol.vid, node.rel)
        if listed is not None and listed[0] is not None:
            return self._set_attrs(node, listed[0], listed[1].taken)
        for h in list(node.handles):
            # Let write-behind land first, or the server reports a size that is too small.
            if h.writer is not None and h.writer.inFlight:
                try:
                    await wait(h.writer.flush())
                except Exception:
                    pass
        client = self._client()
        if node is node.vol.root:
            attrs = await wait(client.stat(node.remote))
        else:
            attrs = await wait(client.lstat(node.remote))
        return self._set_attrs(node, attrs)

    def _keep_listing(
        self, node: Node, entries: list[tuple[bytes, Node | FileAttrs]], taken: float
    ) -> None:
        """Keep a complete listing as long as its directory's age says it may be trusted."""
        if self._specials.children(node.vol.vid, node.rel):
            return  # names only this mount has
        if node.attrs is None or node.expires < taken:
            return  # nothing recent to judge the directory's age by
        until = taken + self._trust(node.attrs)
        if until > self._now():
            listed = [(n, a) for n, a in entries if isinstance(a, FileAttrs)]
            self._dircache.put((node.vol.vid, node.rel), listed, taken, until)

    def _grew(self, parent: Node, name: bytes, made: FileAttrs) -> None:
        """
        A name was made in ``parent`` through this mount: the server set the directory's
        mtime then, to the new name's own (``made``, read back right after); the rest of
        what we knew of it stands. The kernel, which checks the directory's permissions at
        every create (``default_permissions``), then asks no round trip per file of an untar.
        """
        now = self._now()
        known = parent.attrs if parent.expires > now else None
        parent.expires = 0.0
        self._changed_in(parent)
        key = (parent.vol.vid, parent.rel)
        kept = self._dircache.get(key, now)
        if kept is not None:
            # A directory being filled here (an untar, an install) stays listed while it is:
            # its new names are ours, and another client's show once it rests for a moment.
            kept.until = max(kept.until, now + self.attr_timeout)
        self._dircache.add(key, name, made)
        if known is not None and made.mtime is not None:
            self._set_attrs(parent, known._replace(mtime=made.mtime))
        if stat.S_ISDIR(made.permissions or 0):  # empty, as made: until someone else adds
            self._dircache.put(
                (parent.vol.vid, self._join(parent, name)), [], now, now + self._trust(made)
            )

    async def _listing_for_lookup(self, parent: Node) -> Snapshot | None:
        """
        The kept listing of ``parent``, made now if names of it are being looked up one
        after the other (or being made by another lookup); None: look the name up alone.
        """
        key = (parent.vol.vid, parent.rel)
        now = self._now()
        listing = self._lookup_listings.get(key)
        if listing is None:
            if now - self._written.get(key, -LOOKUP_LISTING_AFTER) < LOOKUP_LISTING_AFTER:
                return None  # this mount is filling it (an untar): each change drops a listing
            last = self._misses.pop(key, None)
            self._misses[key] = UNKEPT if last == UNKEPT else now
            if len(self._misses) > MISSES_KEPT:
                self._misses.pop(next(iter(self._misses)))
            if last is None or last == UNKEPT or now - last > LOOKUP_LISTING_AFTER:
                return None
            # An asyncio task (the handlers' loop): the lookups after this one await it too.
            listing = self._lookup_listings[key] = asyncio.ensure_future(self._list(parent))
            listing.add_done_callback(lambda _: self._lookup_listings.pop(key, None))
        try:
            await asyncio.shield(listing)
        except Exception:
            return None  # the lookup asks the server itself, and meets the error there
        kept = self._dircache.get(key, self._now())
        if kept is None and key in self._misses:
            self._misses[key] = UNKEPT  # too big to keep (or slower than its trust): not again
        return kept

    def _read_dir(self, node: Node, entries: list[tuple[bytes, FileAttrs]]) -> None:
        """
        A program read ``node``'s directory (``entries``). If it read the parent's a moment
        ago, it is walking down the tree (find, grep -r, git's untracked scan, du): the
        subdirectories it will read next are listed now, in the background, and kept.
        """
        vid, now = node.vol.vid, self._now()
        self._read_at[(vid, node.rel)] = now
        if len(self._read_at) > MISSES_KEPT:
            self._read_at.pop(next(iter(self._read_at)))
        if not node.rel or now - self._read_at.get((vid, dir_of(node.rel)), -1e9) > DESCENT_WITHIN:
            return
        started = 0
        for name, attrs in entries:
            if started >= AHEAD_DIRS:
                break
            if name in (b".", b"..") or not stat.S_ISDIR(attrs.permissions or 0):
                continue
            rel = self._join(node, name)
            key = (vid, rel)
            if key in self._lookup_listings or self._dircache.get(key, now) is not None:
                continue
            task = asyncio.ensure_future(self._list_ahead(node.vol, rel, attrs))
            self._lookup_listings[key] = task
            task.add_done_callback(functools.partial(self._listed_ahead, key))
            started += 1

    def _listed_ahead(self, key: tuple[int, bytes], _: object) -> None:
        self._lookup_listings.pop(key, None)

    async def _list_ahead(self, vol: MountedVolume, rel: bytes, attrs: FileAttrs) -> None:
        """List and keep the directory ``rel`` (``attrs``: its own, from its parent's listing)."""
        try:
            client = self._client()
            taken = self._now()
            names = await wait(client.listdir(vol.remote(rel)))
        except Exception:
            return  # the program meets the error itself if it gets there
        until = taken + self._trust(attrs)
        if vol.removed or until <= self._now() or self._specials.children(vol.vid, rel):
            return
        listed = [(e.filename, e.attrs) for e in names]
        self._dircache.put((vol.vid, rel), listed, taken, until)

    async def _list(self, node: Node) -> None:
        """List ``node``'s directory, with its attributes if they are old, and keep it."""
        client = self._client()
        taken = self._now()
        listing: Deferred[list[NameEntry]] = client.listdir(node.remote)
        if node.expires <= taken:
            await self._fresh(node)  # its LSTAT goes out beside the listing's requests
        names = await wait(listing)
        if node.vol.removed:
            return
        entries: list[tuple[bytes, Node | FileAttrs]] = [(e.filename, e.attrs) for e in names]
        self._remember_listing(node, entries)  # type: ignore[arg-type]
        self._keep_listing(node, entries, taken)
