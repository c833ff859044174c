"""
FIFOs, sockets and device nodes made through the mount, kept by the helper itself.

SFTP creates regular files, directories and symlinks only. The other kinds of node are local
kernel objects anyway: a FIFO or a unix socket lets processes on the same host meet, a device
number means something on this host only, and the kernel serves their opens itself without
asking the filesystem. So the mount keeps them in memory: they show in their directory
(through this mount only, never on the server) until unlinked, renamed away, their directory
renamed or removed with them, or the helper stops. The mount is ``nodev``: a device node may
be made and listed, never opened.
"""

from __future__ import annotations

from telenet.sftp.codec import FileAttrs

__all__ = ["Special", "SpecialNodes"]


class Special:
    """One node: its attributes (type bits in ``permissions``) and device number."""

    __slots__ = ("attrs", "rdev")

    def __init__(self, attrs: FileAttrs, rdev: int = 0) -> None:
        self.attrs = attrs
        self.rdev = rdev


class SpecialNodes:
    """
    The special nodes of every volume, by (volume id, relative path). Hard links are one
    ``Special`` under several paths.
    """

    def __init__(self) -> None:
        self._nodes: dict[tuple[int, bytes], Special] = {}

    def __bool__(self) -> bool:
        return bool(self._nodes)

    def get(self, vid: int, rel: bytes) -> Special | None:
        return self._nodes.get((vid, rel))

    def add(self, vid: int, rel: bytes, special: Special) -> None:
        self._nodes[(vid, rel)] = special

    def links(self, special: Special) -> int:
        return sum(1 for s in self._nodes.values() if s is special)

    def under(self, vid: int, rel: bytes) -> bool:
        """Whether directory ``rel`` holds any (at any depth)."""
        prefix = rel + b"/" if rel else b""
        return any(v == vid and r.startswith(prefix) for v, r in self._nodes)

    def children(self, vid: int, rel: bytes) -> list[tuple[bytes, FileAttrs]]:
        """(name, attributes) of those directly in directory ``rel``."""
        prefix = rel + b"/" if rel else b""
        return [
            (r[len(prefix) :], s.attrs)
            for (v, r), s in self._nodes.items()
            if v == vid and r.startswith(prefix) and b"/" not in r[len(prefix) :]
        ]

    def drop(self, vid: int, rel: bytes) -> None:
        """``rel`` is gone, and anything under it."""
        prefix = rel + b"/"
        for key in [
            k for k in self._nodes if k[0] == vid and (k[1] == rel or k[1].startswith(prefix))
        ]:
            del self._nodes[key]

    def move(self, vid: int, old: bytes, new: bytes) -> None:
        """``old`` is now ``new``, and so is everything under it."""
        prefix = old + b"/"
        for key in [
            k for k in self._nodes if k[0] == vid and (k[1] == old or k[1].startswith(prefix))
        ]:
            self._nodes[(vid, new + key[1][len(old) :])] = self._nodes.pop(key)

    def drop_volume(self, vid: int) -> None:
        for key in [k for k in self._nodes if k[0] == vid]:
            del self._nodes[key]
