# -*- test-case-name: tests.test_sftpclient -*-
"""
SFTP version 3 over a plain TCP stream (no SSH layer), for the telemount FUSE filesystem.

``SFTPClient`` is a Conch ``FileTransferClient`` (its ``connectionMade`` sends FXP_INIT) with
its own packet parser and request table, because the FS needs things Conch's client lacks:
typed results, a deadline on every request, a keepalive, and an abort that fails every pending
request at once. The plumbing is ``SFTPChannel`` (``telenet.sftp.channel``, reading answers
with ``telenet.sftp.reader``); this module holds the operations. ``ReadAhead`` and
``PipelinedWriter`` (``telenet.sftp.transfer``) keep many READ/WRITE requests in flight for one
open file. ``SFTPConnectionManager`` (``telenet.sftp.connection``) reconnects by itself and
answers "not connected" at once instead of making callers wait.

Paths are ``bytes`` throughout (SFTP paths are byte strings; the FS gets bytes from the kernel).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable

from twisted.conch.ssh import filetransfer as ft
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost

from telenet.sftp.channel import SFTPChannel
from telenet.sftp.codec import (
    FAKE_STATVFS,
    HDR,
    U32,
    U64,
    Data,
    FileAttrs,
    NameEntry,
    StatVFS,
    ns,
    pack_attrs,
)
from telenet.sftp.errors import SFTPProtocolError, SFTPStatusError

__all__ = ["READDIR_AHEAD", "SFTPClient"]

#: READDIR requests a listing keeps in flight at most.
READDIR_AHEAD = 16

_READ = struct.Struct("!QL")


class SFTPClient(SFTPChannel):
    """
    I speak SFTP v3 to one server over one stream connection.

    Every request returns a Deferred with a typed result and has a deadline; when a request
    (or an idle-time keepalive) is not answered in time the connection is declared dead: the
    transport is aborted and every pending request fails at once with ``ConnectionDead``.
    ``ready`` fires once the server's VERSION (and its limits, if announced) arrived.
    """

    # -- operations ------------------------------------------------------------------------------

    def stat(self, path: bytes) -> Deferred[FileAttrs]:
        """Attributes of ``path``, following symlinks."""
        return self._request(ft.FXP_STAT, ns(path))

    def lstat(self, path: bytes) -> Deferred[FileAttrs]:
        """Attributes of ``path`` itself (a symlink is not followed)."""
        return self._request(ft.FXP_LSTAT, ns(path))

    def fstat(self, handle: bytes) -> Deferred[FileAttrs]:
        return self._request(ft.FXP_FSTAT, ns(handle))

    def setstat(self, path: bytes, attrs: FileAttrs, lazy: bool = False) -> Deferred[None]:
        """Change attributes; ``lazy``: sent with the next request (pipelined with it)."""
        return self._request(ft.FXP_SETSTAT, ns(path) + pack_attrs(attrs), lazy=lazy)

    def fsetstat(self, handle: bytes, attrs: FileAttrs, lazy: bool = False) -> Deferred[None]:
        # Conch's ClientFile.setAttrs sends FSTAT here by mistake; this is the real FSETSTAT.
        return self._request(ft.FXP_FSETSTAT, ns(handle) + pack_attrs(attrs), lazy=lazy)

    def open(
        self, path: bytes, flags: int, attrs: FileAttrs | None = None, lazy: bool = False
    ) -> Deferred[bytes]:
        """
        Open a file (``flags`` are ``FXF_*``); the result is the server's handle. ``lazy``:
        sent with the next request, in one write (an OPEN and the LSTAT after it).
        """
        packet = ns(path) + U32.pack(flags) + pack_attrs(attrs)
        return self._request(ft.FXP_OPEN, packet, lazy=lazy)

    def close(self, handle: bytes, soon: bool = False) -> Deferred[None]:
        """
        Close a handle; with ``soon``, the CLOSE may wait up to ``LAZY_DELAY`` to go out
        together with the next request (one send and one server wake-up fewer per small
        file read).
        """
        return self._request(ft.FXP_CLOSE, ns(handle), lazy=soon)

    def read(self, handle: bytes, offset: int, length: int) -> Deferred[Data]:
        """
        Up to ``length`` bytes at ``offset``; empty at end of file. Reads may be short. The
        result is often a view of the received bytes rather than a copy.
        """
        return self._request(ft.FXP_READ, ns(handle) + _READ.pack(offset, length), asked=length)

    def write(self, handle: bytes, offset: int, data: bytes) -> Deferred[None]:
        return self._request(
            ft.FXP_WRITE, b"".join((ns(handle), U64.pack(offset), U32.pack(len(data)))), data
        )

    def writeChunks(self, handle: bytes, offset: int, data: bytes) -> list[Deferred[None]]:
        """
        Write ``data`` at ``offset`` as WRITE requests of at most ``maxWrite`` bytes each,
        sent together in one buffer (one copy of ``data`` instead of two).
        """
        if self._dead is not None:
            return [defer.fail(self._dead.value)]
        transport = self.transport
        if not self.connected or transport is None:
            return [defer.fail(ConnectionLost("SFTP connection is closed"))]
        step = self.maxWrite
        n = len(data)
        if n <= step:
            return [self.write(handle, offset, data)]
        nsHandle = ns(handle)
        fixed = 5 + len(nsHandle) + 12
        view = memoryview(data)
        parts: list[bytes | memoryview] = []
        rid = self._nextId
        first = rid
        for start in range(0, n, step):
            size = min(step, n - start)
            parts.append(
                HDR.pack(fixed + size, ft.FXP_WRITE, rid)
                + nsHandle
                + U64.pack(offset + start)
                + U32.pack(size)
            )
            parts.append(view[start : start + size])
            rid = (rid + 1) & 0xFFFFFFFF
        self._send(parts)
        self._nextId = rid
        deadline = self._clock.seconds() + self.timeout
        sent = []
        rid = first
        for _ in range(len(parts) // 2):
            d: Deferred[None] = Deferred()
            self._pending[rid] = (d, deadline, ft.FXP_WRITE, 0)
            sent.append(d)
            rid = (rid + 1) & 0xFFFFFFFF
        if self._deadlineCall is None:
            self._deadlineCall = self._clock.callLater(self.timeout, self._checkDeadline)
        return sent

    def opendir(self, path: bytes) -> Deferred[bytes]:
        return self._request(ft.FXP_OPENDIR, ns(path))

    def readdir(self, handle: bytes) -> Deferred[list[NameEntry]]:
        """The next batch of entries; an empty list at the end."""
        return self._request(ft.FXP_READDIR, ns(handle))

    #: ``listdir`` takes ``onBatch``.
    listsInBatches = True

    def listdir(
        self, path: bytes, onBatch: Callable[[list[NameEntry]], None] | None = None
    ) -> Deferred[list[NameEntry]]:
        """
        Every entry of the directory ``path``, with attributes (``.``, ``..`` and names no
        entry can have, such as ``a/b``, left out); ``onBatch`` is also given each batch's
        entries, in order, as they arrive.
        """
        return Deferred.fromCoroutine(self._listdir(path, onBatch))

    async def _listdir(
        self, path: bytes, onBatch: Callable[[list[NameEntry]], None] | None = None
    ) -> list[NameEntry]:
        # READDIRs are pipelined: a server answers a handle's requests in order, each with
        # the next batch, and every one past the end with EOF. Two go out at first and
        # twice as many per batch received (up to READDIR_AHEAD), none once a batch comes
        # back shorter than an earlier one (the end is near): a big directory takes a few
        # round trips instead of one per batch, a small one costs a few EOFs more.
        handle = await self.opendir(path)
        entries: list[NameEntry] = []
        pending: deque[Deferred[list[NameEntry]]] = deque()
        depth = 2
        largest = 0
        try:
            while True:
                more = depth - len(pending)
                for i in range(more):  # all but the last held: one send for the lot
                    pending.append(self._request(ft.FXP_READDIR, ns(handle), lazy=i < more - 1))
                batch = await pending.popleft()
                if not batch:
                    break
                good = [e for e in batch if _entry_name_ok(e.filename)]
                entries.extend(good)
                if onBatch is not None:
                    onBatch(good)
                if len(batch) < largest:
                    depth = 0  # only what is on its way
                elif depth:
                    largest = len(batch)
                    depth = min(depth * 2, READDIR_AHEAD)
                if not depth and not pending:
                    pending.append(self.readdir(handle))
        finally:
            for d in pending:
                d.addErrback(lambda f: None)
            if self.alive:
                self.close(handle).addErrback(lambda f: None)
        return entries

    def mkdir(self, path: bytes, attrs: FileAttrs | None = None) -> Deferred[None]:
        return self._request(ft.FXP_MKDIR, ns(path) + pack_attrs(attrs))

    def rmdir(self, path: bytes) -> Deferred[None]:
        return self._request(ft.FXP_RMDIR, ns(path))

    def remove(self, path: bytes) -> Deferred[None]:
        return self._request(ft.FXP_REMOVE, ns(path))

    def rename(self, old: bytes, new: bytes, overwrite: bool = True) -> Deferred[None]:
        """
        Rename ``old`` to ``new``.

        With ``overwrite`` (POSIX semantics) ``posix-rename@openssh.com`` is used when the
        server has it; plain SFTP RENAME refuses an existing target on OpenSSH.
        """
        payload = ns(old) + ns(new)
        if overwrite and b"posix-rename@openssh.com" in self.extensions:
            return self._extended(b"posix-rename@openssh.com", payload)
        return self._request(ft.FXP_RENAME, payload)

    @property
    def canNoReplaceRename(self) -> bool:
        """Whether plain RENAME refuses to overwrite (true of OpenSSH, which has posix-rename)."""
        return b"posix-rename@openssh.com" in self.extensions

    def symlink(self, linkpath: bytes, target: bytes) -> Deferred[None]:
        """Create ``linkpath`` pointing at ``target``, in the argument order the server expects."""
        if self._openSSHSymlink:
            return self._request(ft.FXP_SYMLINK, ns(target) + ns(linkpath))
        return self._request(ft.FXP_SYMLINK, ns(linkpath) + ns(target))

    def readlink(self, path: bytes) -> Deferred[bytes]:
        return self._request(ft.FXP_READLINK, ns(path)).addCallback(_only_name, "READLINK")

    def realpath(self, path: bytes) -> Deferred[bytes]:
        return self._request(ft.FXP_REALPATH, ns(path)).addCallback(_only_name, "REALPATH")

    def hardlink(self, old: bytes, new: bytes) -> Deferred[None]:
        if b"hardlink@openssh.com" not in self.extensions:
            return defer.fail(SFTPStatusError(ft.FX_OP_UNSUPPORTED, "no hardlink@openssh.com"))
        return self._extended(b"hardlink@openssh.com", ns(old) + ns(new))

    @property
    def canLsetstat(self) -> bool:
        return b"lsetstat@openssh.com" in self.extensions

    def lsetstat(self, path: bytes, attrs: FileAttrs, lazy: bool = False) -> Deferred[None]:
        """SETSTAT that does not follow a symlink (``lsetstat@openssh.com``)."""
        if b"lsetstat@openssh.com" not in self.extensions:
            return defer.fail(SFTPStatusError(ft.FX_OP_UNSUPPORTED, "no lsetstat@openssh.com"))
        payload = ns(path) + pack_attrs(attrs)
        return self._extended(b"lsetstat@openssh.com", payload, lazy=lazy)

    def statvfs(self, path: bytes) -> Deferred[StatVFS]:
        """File system numbers for ``path`` (made up when the server cannot tell)."""
        if b"statvfs@openssh.com" not in self.extensions:
            return defer.succeed(FAKE_STATVFS)
        return self._extended(b"statvfs@openssh.com", ns(path)).addCallback(_statvfs)

    @property
    def canFsync(self) -> bool:
        return b"fsync@openssh.com" in self.extensions

    def fsync(self, handle: bytes) -> Deferred[None]:
        """``fsync@openssh.com`` when offered; otherwise nothing to do (the server decides)."""
        if b"fsync@openssh.com" not in self.extensions:
            return defer.succeed(None)
        return self._extended(b"fsync@openssh.com", ns(handle))


def _only_name(names: list[NameEntry], request: str) -> bytes:
    if len(names) != 1:
        raise SFTPProtocolError(f"{request} answered with {len(names)} names instead of one")
    return names[0].filename


def _statvfs(reply: bytes | None) -> StatVFS:
    if reply is None or len(reply) < 88:  # None: a bare STATUS OK
        size = 0 if reply is None else len(reply)
        raise SFTPProtocolError(f"statvfs@openssh.com answered with {size} bytes")
    return StatVFS(*struct.unpack_from("!11Q", reply, 0))


def _entry_name_ok(name: bytes) -> bool:
    """Whether a directory entry's name can be one (a server's ``a/b`` or ``""`` cannot)."""
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name
