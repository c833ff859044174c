"""
How long what the server said may be trusted, and the directory listings kept that long.

A source tree is mostly files nobody has changed for hours; a stat storm over it (``git
status``, an editor's project scan, ``make``) should not wait for a round trip per name. As
NFS does with its attribute cache (``acregmin``/``acregmax``), a name or attribute is trusted
for a tenth of the time since it last changed, at least ``least`` (the mount's attribute
timeout, 1 s) and at most ``most`` (20 s, sshfs's flat ``cache_timeout``): something changed
in the last ten seconds shows a change on the server within a second, something untouched
for minutes shows one within 20 s at worst, as with sshfs. Changes made through this mount
show at once (the handlers drop what they change).

``DirCache`` keeps complete listings of directories (names and attributes) for as long as
the directory's own modification time says they may be trusted (a name added or removed
changes it), bounded in entries. Lookups, negative ones included, and ``readdir`` are served
from a listing while it holds.
"""

from __future__ import annotations

import collections
import itertools

from telenet.sftp.codec import FileAttrs

__all__ = ["LISTED_MAX", "MOST_TRUST", "DirCache", "Snapshot", "trust_for"]

#: The longest anything the server said is trusted (sshfs's cache_timeout).
MOST_TRUST = 20.0
#: Entries kept in all listings together (about 100 bytes each).
LISTED_MAX = 100_000

Key = tuple[int, bytes]  # (volume id, directory path relative to the volume)


def trust_for(mtime: int | None, wall_now: float, least: float, most: float) -> float:
    """Seconds to trust attributes whose modification time is ``mtime`` (wall clock)."""
    if mtime is None or most <= least:
        return least
    return min(most, max(least, (wall_now - mtime) / 10))


class Snapshot:
    """A directory as one complete listing showed it, trusted until ``until`` (monotonic)."""

    __slots__ = ("key", "names", "attrs", "taken", "until", "serial")

    #: Each listing's own number: what the kernel was given is remembered by it, not by a
    #: reference that would keep a dropped listing alive.
    _serials = itertools.count(1)

    def __init__(
        self, key: Key, entries: list[tuple[bytes, FileAttrs]], taken: float, until: float
    ) -> None:
        self.key = key
        self.names = [name for name, _ in entries]
        # None: the name is there, its attributes changed through this mount since.
        self.attrs: dict[bytes, FileAttrs | None] = dict(entries)
        self.taken = taken  # when the listing was asked for: what it says is at least this old
        self.until = until
        self.serial = next(Snapshot._serials)

    def entries(self) -> list[tuple[bytes, FileAttrs]] | None:
        """The listing, in order; None if some name's attributes are no longer known."""
        listed = [(name, self.attrs[name]) for name in self.names]
        if any(attrs is None for _, attrs in listed):
            return None
        return listed  # type: ignore[return-value]


class DirCache:
    """Listings by (volume, directory), the least recently used dropped beyond ``max_entries``."""

    def __init__(self, max_entries: int = LISTED_MAX) -> None:
        self.max_entries = max_entries
        self._held: collections.OrderedDict[Key, Snapshot] = collections.OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return len(self._held)

    def get(self, key: Key, now: float) -> Snapshot | None:
        """The listing of ``key`` if it is still to be trusted at ``now``."""
        snapshot = self._held.get(key)
        if snapshot is None:
            return None
        if snapshot.until <= now:
            self._pop(key)
            return None
        self._held.move_to_end(key)
        return snapshot

    def put(
        self, key: Key, entries: list[tuple[bytes, FileAttrs]], taken: float, until: float
    ) -> None:
        self._pop(key)
        if len(entries) > self.max_entries // 4:
            return  # a huge directory would push out everything else: listed each time
        self._held[key] = Snapshot(key, entries, taken, until)
        self._count += len(entries)
        while self._count > self.max_entries:
            self._pop(next(iter(self._held)))

    def add(self, key: Key, name: bytes, attrs: FileAttrs) -> None:
        """This mount made ``name`` in ``key``: a kept listing shows it."""
        snapshot = self._held.get(key)
        if snapshot is not None:
            if name not in snapshot.attrs:
                snapshot.names.append(name)
                self._count += 1
            snapshot.attrs[name] = attrs

    def remove(self, key: Key, name: bytes) -> None:
        """``name`` of ``key`` is gone through this mount: a kept listing no longer shows it."""
        snapshot = self._held.get(key)
        if snapshot is not None and name in snapshot.attrs:
            del snapshot.attrs[name]
            snapshot.names.remove(name)
            self._count -= 1

    def unknown(self, key: Key, name: bytes) -> None:
        """This mount changed ``name`` of ``key``: its attributes are to be asked again."""
        snapshot = self._held.get(key)
        if snapshot is not None and name in snapshot.attrs:
            snapshot.attrs[name] = None

    def drop(self, vid: int, rel: bytes, under: bool = False) -> None:
        """``rel`` changed through this mount (``under``: so did everything below it)."""
        self._pop((vid, rel))
        if under and self._held:
            prefix = rel + b"/" if rel else b""
            for key in [k for k in self._held if k[0] == vid and k[1].startswith(prefix)]:
                self._pop(key)

    def drop_volume(self, vid: int) -> None:
        for key in [k for k in self._held if k[0] == vid]:
            self._pop(key)

    def _pop(self, key: Key) -> None:
        snapshot = self._held.pop(key, None)
        if snapshot is not None:
            self._count -= len(snapshot.names)
