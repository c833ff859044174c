"""
The exported directory as Conch's ``ISFTPServer``, confined to its root like a chroot.

The directory is exported as the virtual path ``/tel_app_exports``. ``/`` lists only
``tel_app_exports``; relative paths resolve against ``/tel_app_exports``, so ``x`` and
``/tel_app_exports/x`` name the same entry. No path can leave the root: ``..`` is clamped at
the virtual ``/``, and symlinks are followed by this module (never by the kernel) with their
targets interpreted inside the virtual tree, as a chroot would.

The extensions ``posix-rename@openssh.com``, ``statvfs@openssh.com``,
``hardlink@openssh.com`` and ``lsetstat@openssh.com`` are served by ``extendedRequest``
(``fsync@openssh.com`` by the protocol, on the handle's queue). Every method blocks: the
protocol (``telenet.sftp.server``) decides where it runs. Separate from the protocol so that
path confinement can be read (and tested) on its own.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import time
from collections.abc import Iterator
from typing import Any

from twisted.conch.interfaces import ISFTPFile, ISFTPServer
from twisted.conch.ssh.filetransfer import (
    FXF_APPEND,
    FXF_CREAT,
    FXF_EXCL,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
)
from zope.interface import implementer

from telenet.sftp.codec import FileAttrs, parse_attrs
from telenet.sftp.requests import expect_end, get_string

__all__ = [
    "EXPORT_NAME",
    "EXTENSIONS",
    "MAX_READ_LENGTH",
    "Attrs",
    "RootedDirectory",
    "RootedFile",
    "RootedFilesystem",
    "attrs_from_stat",
    "longname",
]

EXPORT_NAME = b"tel_app_exports"
"""The one entry of the virtual ``/``: the exported root."""

EXTENSIONS: dict[bytes, bytes] = {
    b"posix-rename@openssh.com": b"1",
    b"statvfs@openssh.com": b"2",
    b"hardlink@openssh.com": b"1",
    b"fsync@openssh.com": b"1",
    b"lsetstat@openssh.com": b"1",
}
"""OpenSSH extensions announced in the VERSION packet, with OpenSSH's version strings."""

MAX_READ_LENGTH = 1024 * 1024
"""Longest read served at once; longer requests get a short read, which clients handle."""

_MAX_SYMLINKS = 40
_UINT32_MAX = 2**32 - 1

Attrs = dict[str, Any]


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _clamp32(value: float) -> int:
    # SFTP v3 times are uint32; a file dated before 1970 must not break a listing.
    return min(max(int(value), 0), _UINT32_MAX)


def attrs_from_stat(st: os.stat_result) -> Attrs:
    """SFTP attributes (Conch's dict form) for a stat result."""
    return {
        "size": st.st_size,
        "uid": st.st_uid,
        "gid": st.st_gid,
        "permissions": st.st_mode,
        "atime": _clamp32(st.st_atime),
        "mtime": _clamp32(st.st_mtime),
    }


def longname(name: bytes, st: os.stat_result) -> bytes:
    """An ``ls -l`` style line, as OpenSSH puts in SSH_FXP_NAME replies."""
    recent = abs(time.time() - st.st_mtime) < 182 * 24 * 3600
    when = time.strftime("%b %d %H:%M" if recent else "%b %d  %Y", time.localtime(st.st_mtime))
    head = (
        f"{stat.filemode(st.st_mode)} {st.st_nlink:>4} {st.st_uid:<8} {st.st_gid:<8} "
        f"{st.st_size:>8} {when} "
    )
    return head.encode("ascii") + name


def _attrs_dict(a: FileAttrs) -> Attrs:
    """Conch's dict of attributes for decoded ``FileAttrs`` (uid with gid, atime with mtime)."""
    d: Attrs = {}
    if a.size is not None:
        d["size"] = a.size
    if a.uid is not None and a.gid is not None:
        d["uid"], d["gid"] = a.uid, a.gid
    if a.permissions is not None:
        d["permissions"] = a.permissions
    if a.atime is not None and a.mtime is not None:
        d["atime"], d["mtime"] = a.atime, a.mtime
    return d


def _set_path_attrs(real: bytes, attrs: Attrs, link: bool = False) -> None:
    """Apply SETSTAT ``attrs`` to ``real``; ``link``: to a symlink itself (lsetstat)."""
    if link and ("size" in attrs or "permissions" in attrs) and os.path.islink(real):
        raise _oserror(errno.EOPNOTSUPP)  # a symlink has no size or modes to set
    if "size" in attrs:
        os.truncate(real, attrs["size"])
    if "uid" in attrs and "gid" in attrs:
        os.chown(real, attrs["uid"], attrs["gid"], follow_symlinks=False)
    if "permissions" in attrs:
        os.chmod(real, attrs["permissions"] & 0o7777)
    if "atime" in attrs and "mtime" in attrs:
        os.utime(real, (attrs["atime"], attrs["mtime"]), follow_symlinks=False)


@implementer(ISFTPFile)
class RootedFile:
    """An open file of the export. Methods block: the protocol runs them in its pool."""

    def __init__(self, fd: int, append: bool) -> None:
        self.fd = fd
        self.append = append

    def close(self) -> None:
        os.close(self.fd)

    def readChunk(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, min(length, MAX_READ_LENGTH), offset)

    def writeChunk(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            # With O_APPEND, Linux pwrite appends whatever the offset says, as SFTP wants.
            written = os.pwrite(self.fd, view, offset)
            view = view[written:]
            offset += written

    def getAttrs(self) -> Attrs:
        return attrs_from_stat(os.fstat(self.fd))

    def setAttrs(self, attrs: Attrs) -> None:
        if "size" in attrs:
            os.ftruncate(self.fd, attrs["size"])
        if "uid" in attrs and "gid" in attrs:
            os.fchown(self.fd, attrs["uid"], attrs["gid"])
        if "permissions" in attrs:
            os.fchmod(self.fd, attrs["permissions"] & 0o7777)
        if "atime" in attrs and "mtime" in attrs:
            os.utime(self.fd, (attrs["atime"], attrs["mtime"]))

    def fsync(self) -> None:
        os.fsync(self.fd)


class RootedDirectory:
    """A directory listing: an iterator of (name, longname, attrs), as Conch expects."""

    def __init__(
        self, real: bytes | None, names: list[bytes], fixed: dict[bytes, tuple[bytes, Attrs]]
    ) -> None:
        self._real = real
        self._names = names[::-1]  # popped from the end: O(1) per entry, in the given order
        self._fixed = fixed

    def __iter__(self) -> Iterator[tuple[bytes, bytes, Attrs]]:
        return self

    def __next__(self) -> tuple[bytes, bytes, Attrs]:
        while self._names:
            name = self._names.pop()
            if name in self._fixed:
                return name, *self._fixed[name]
            assert self._real is not None
            try:
                st = os.lstat(os.path.join(self._real, name))
            except OSError:
                continue  # removed since the listing was taken
            return name, longname(name, st), attrs_from_stat(st)
        raise StopIteration

    def close(self) -> None:
        self._names = []


@implementer(ISFTPServer)
class RootedFilesystem:
    """
    The export as an L{ISFTPServer}: every path is resolved inside C{root}.

    Paths are bytes on the wire and stay bytes here, so names that are not UTF-8 work.
    """

    def __init__(self, root: str | bytes) -> None:
        self.root: bytes = os.path.realpath(os.fsencode(root))
        # Conch's FileTransferServer adapts its avatar to ISFTPServer; we are both.
        self.avatar = self

    # -- path resolution ------------------------------------------------------------------

    def _real(self, comps: list[bytes]) -> bytes | None:
        """The host path of virtual components, or None when outside the export."""
        if not comps or comps[0] != EXPORT_NAME:
            return None
        return b"/".join([self.root, *comps[1:]]) if len(comps) > 1 else self.root

    def _walk(self, path: bytes, follow_last: bool) -> list[bytes]:
        """
        Resolve C{path} to virtual components, following symlinks inside the virtual tree.

        A missing last component is allowed (it may be about to be created); a missing or
        non-directory intermediate one is an error, as in the kernel.
        """
        if b"\0" in path:
            raise _oserror(errno.EINVAL)
        comps: list[bytes] = [] if path.startswith(b"/") else [EXPORT_NAME]
        todo = list(reversed(path.split(b"/")))
        links = 0
        while todo:
            part = todo.pop()
            if part in (b"", b"."):
                continue
            if part == b"..":
                if comps:
                    comps.pop()
                continue
            comps.append(part)
            last = all(p in (b"", b".") for p in todo)
            if last and not follow_last:
                continue
            real = self._real(comps)
            if real is None:
                if last:
                    continue
                raise _oserror(errno.ENOENT)
            try:
                st = os.lstat(real)
            except FileNotFoundError:
                if last:
                    continue
                raise
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_SYMLINKS:
                    raise _oserror(errno.ELOOP)
                target = os.readlink(real)
                comps.pop()
                if target.startswith(b"/"):
                    comps = []
                todo.extend(reversed(target.split(b"/")))
            elif not last and not stat.S_ISDIR(st.st_mode):
                raise _oserror(errno.ENOTDIR)
        return comps

    def _path(self, path: bytes, follow: bool = True) -> bytes:
        """The confined host path for C{path}; the virtual tree above the export is refused."""
        comps = self._walk(path, follow)
        real = self._real(comps)
        if real is None:
            # "/" and its direct children are read-only; deeper paths simply don't exist.
            raise _oserror(errno.EACCES if len(comps) <= 1 else errno.ENOENT)
        # Belt and braces against a symlink swapped in since the walk: the kernel's view of
        # the parent must still be inside the root.
        check = real if follow or real == self.root else os.path.dirname(real)
        resolved = os.path.realpath(check)
        if resolved != self.root and not resolved.startswith(self.root + b"/"):
            raise _oserror(errno.EACCES)
        return real

    def _mutable_path(self, path: bytes) -> bytes:
        """A path that may be removed, renamed or created: never the export root itself."""
        real = self._path(path, follow=False)
        if real == self.root:
            raise _oserror(errno.EACCES)
        return real

    def _is_virtual_root(self, path: bytes, follow: bool = True) -> bool:
        return self._walk(path, follow) == []

    def _root_attrs(self) -> Attrs:
        attrs = attrs_from_stat(os.stat(self.root))
        attrs["permissions"] = stat.S_IFDIR | 0o555
        return attrs

    # -- ISFTPServer ----------------------------------------------------------------------

    def gotVersion(self, otherVersion: int, extData: dict[bytes, bytes]) -> dict[bytes, bytes]:
        return dict(EXTENSIONS)

    def openFile(self, filename: bytes, flags: int, attrs: Attrs) -> RootedFile:
        want_read = bool(flags & FXF_READ)
        want_write = bool(flags & FXF_WRITE)
        if want_write:
            mode = os.O_RDWR if want_read else os.O_WRONLY
        else:
            mode = os.O_RDONLY
        if flags & FXF_APPEND:
            mode |= os.O_APPEND
        if flags & FXF_CREAT:
            mode |= os.O_CREAT
            if flags & FXF_EXCL:
                mode |= os.O_EXCL
        if flags & FXF_TRUNC:
            mode |= os.O_TRUNC
        exclusive = bool(mode & os.O_EXCL)
        # O_EXCL must see a symlink itself (even a dangling one) as "exists", like open(2).
        real = self._path(filename, follow=not exclusive)
        perms = attrs.get("permissions", 0o666) & 0o7777
        # O_NONBLOCK: a FIFO in the export would otherwise make open wait for a peer, on the
        # reactor thread, and the whole agent would hang (SIGTERM included). Regular files
        # are made blocking again; reads and writes of a FIFO fail anyway (pread: ESPIPE).
        fd = os.open(real, mode | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, perms)
        try:
            st_mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(st_mode):
                raise _oserror(errno.EISDIR)
            if stat.S_ISREG(st_mode):
                os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return RootedFile(fd, append=bool(flags & FXF_APPEND))

    def removeFile(self, filename: bytes) -> None:
        os.unlink(self._mutable_path(filename))

    def renameFile(self, oldpath: bytes, newpath: bytes) -> None:
        # SFTP v3 rename does not overwrite (posix-rename@openssh.com does).
        old, new = self._mutable_path(oldpath), self._mutable_path(newpath)
        if os.path.lexists(new):
            raise _oserror(errno.EEXIST)
        os.rename(old, new)

    def posixRename(self, oldpath: bytes, newpath: bytes) -> None:
        os.rename(self._mutable_path(oldpath), self._mutable_path(newpath))

    def makeDirectory(self, path: bytes, attrs: Attrs) -> None:
        os.mkdir(self._mutable_path(path), attrs.get("permissions", 0o777) & 0o7777)

    def removeDirectory(self, path: bytes) -> None:
        os.rmdir(self._mutable_path(path))

    def openDirectory(self, path: bytes) -> RootedDirectory:
        if self._is_virtual_root(path):
            st = os.stat(self.root)
            entry = (longname(EXPORT_NAME, st), attrs_from_stat(st))
            return RootedDirectory(None, [EXPORT_NAME], {EXPORT_NAME: entry})
        real = self._path(path)
        return RootedDirectory(real, sorted(os.listdir(real)), {})

    def getAttrs(self, path: bytes, followLinks: bool) -> Attrs:
        if self._is_virtual_root(path, bool(followLinks)):
            return self._root_attrs()
        # lstat even when following: the walk already resolved every link we allow.
        return attrs_from_stat(os.lstat(self._path(path, follow=bool(followLinks))))

    def setAttrs(self, path: bytes, attrs: Attrs) -> None:
        _set_path_attrs(self._path(path), attrs)

    def readLink(self, path: bytes) -> bytes:
        return os.readlink(self._path(path, follow=False))

    def makeLink(self, linkPath: bytes, targetPath: bytes) -> None:
        # The target is stored verbatim; following it later stays confined by _walk.
        if b"\0" in targetPath:
            raise _oserror(errno.EINVAL)
        os.symlink(targetPath, self._mutable_path(linkPath))

    def realPath(self, path: bytes) -> bytes:
        return b"/" + b"/".join(self._walk(path, follow_last=True))

    def statvfs(self, path: bytes) -> bytes:
        """The reply body of ``statvfs@openssh.com``: eleven uint64s, as OpenSSH sends."""
        real = self.root if self._is_virtual_root(path) else self._path(path)
        st = os.statvfs(real)
        return struct.pack(
            "!11Q",
            st.f_bsize,
            st.f_frsize,
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_favail,
            st.f_fsid,
            st.f_flag & (os.ST_RDONLY | os.ST_NOSUID),
            st.f_namemax,
        )

    def hardLink(self, oldpath: bytes, newpath: bytes) -> None:
        os.link(self._mutable_path(oldpath), self._mutable_path(newpath), follow_symlinks=False)

    def extendedRequest(self, extName: bytes, extData: bytes) -> bytes:
        two_paths = {
            b"posix-rename@openssh.com": self.posixRename,
            b"hardlink@openssh.com": self.hardLink,
        }
        if extName in two_paths:
            old, pos = get_string(extData, 0)
            new, pos = get_string(extData, pos)
            expect_end(extData, pos)
            two_paths[extName](old, new)
            return b""
        if extName == b"lsetstat@openssh.com":
            path, pos = get_string(extData, 0)
            attrs, pos = parse_attrs(extData, pos)
            expect_end(extData, pos)
            _set_path_attrs(self._path(path, follow=False), _attrs_dict(attrs), link=True)
            return b""
        if extName == b"statvfs@openssh.com":
            path, pos = get_string(extData, 0)
            expect_end(extData, pos)
            return self.statvfs(path)
        raise NotImplementedError(f"unsupported extension {extName!r}")
