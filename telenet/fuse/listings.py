"""
Keeping directory listings (``telenet.fuse.dircache``), and listing a directory whose names
are being looked up one after the other.

A program that stats a tree by path (``git status`` refreshing its index, ``make``,
``rsync``) looks up every name of a directory in turn, one round trip each. From the second
name missed in a directory within a second, the directory is listed instead (its READDIRs
pipelined) and the lookups still to come in it are answered from the listing, as are the
opens a walk of its files makes (the listing tells ``PrefetchMixin`` what comes next).
"""

from __future__ import annotations

import asyncio

from twisted.internet.defer import Deferred

from telenet.fuse.dircache import Snapshot
from telenet.fuse.inodes import InodeTable
from telenet.fuse.nodes import Node
from telenet.fuse.resume import wait
from telenet.sftp.codec import FileAttrs, NameEntry

__all__ = ["LOOKUP_LISTING_AFTER", "ListingsMixin"]

#: A miss in a directory this soon after another one there lists the directory.
LOOKUP_LISTING_AFTER = 1.0
#: The last miss of a directory whose listing could not be kept: look its names up alone.
UNKEPT = -1.0
#: Directories whose last miss is remembered (a plain bound; forgetting one costs a lstat).
MISSES_KEPT = 1024


class ListingsMixin(InodeTable):
    """Relies on ``InodeTable`` (``_dircache``, ``_trust``, ``_fresh``, ``_specials``)."""

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
