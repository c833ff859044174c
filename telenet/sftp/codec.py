"""
SFTP v3 wire format for the client: the structs, the limits, the typed results (FileAttrs,
NameEntry, StatVFS) and the packing and parsing of ATTRS, strings and NAME entries.

Pure functions over bytes, with no connection state: the packet reader and the request
senders share them, and tests use them to build and check packets.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from twisted.conch.ssh import filetransfer as ft

__all__ = [
    "FAKE_STATVFS",
    "HDR",
    "MAX_CHUNK",
    "U32",
    "U64",
    "Data",
    "FileAttrs",
    "Malformed",
    "NameEntry",
    "StatVFS",
    "ns",
    "pack_attrs",
    "parse_attrs",
    "parse_names",
    "parse_string",
]

#: What a READ gives: bytes, or a view of received bytes (no copy).
Data = bytes | memoryview

#: OpenSSH's sftp-server answers at most 256 KiB - 1 KiB per READ; ask for no more.
MAX_CHUNK = 255 * 1024

HDR = struct.Struct("!LBL")  # length, type, request id
U32 = struct.Struct("!L")
U64 = struct.Struct("!Q")
#: The largest file size there can be (off_t).
_MAX_SIZE = (1 << 63) - 1


class FileAttrs(NamedTuple):
    """SFTP v3 file attributes; a field the server did not send is None."""

    size: int | None = None
    uid: int | None = None
    gid: int | None = None
    permissions: int | None = None
    atime: int | None = None
    mtime: int | None = None


class NameEntry(NamedTuple):
    """One entry of a directory listing."""

    filename: bytes
    longname: bytes
    attrs: FileAttrs


class StatVFS(NamedTuple):
    """The reply to ``statvfs@openssh.com`` (or made-up numbers when it is missing)."""

    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    favail: int
    fsid: int
    flag: int
    namemax: int


#: What statvfs reports when the server has no ``statvfs@openssh.com``: like sshfs, plenty.
FAKE_STATVFS = StatVFS(4096, 4096, 1 << 30, 1 << 30, 1 << 30, 1 << 20, 1 << 20, 1 << 20, 0, 0, 255)


def ns(data: bytes) -> bytes:
    return U32.pack(len(data)) + data


def pack_attrs(attrs: FileAttrs | None) -> bytes:
    """Encode attributes as SFTP v3 ATTRS (pairs like uid/gid need both halves)."""
    if attrs is None:
        return b"\0\0\0\0"
    flags = 0
    out = []
    if attrs.size is not None:
        flags |= ft.FILEXFER_ATTR_SIZE
        out.append(U64.pack(attrs.size))
    if attrs.uid is not None and attrs.gid is not None:
        flags |= ft.FILEXFER_ATTR_UIDGID
        out.append(struct.pack("!LL", attrs.uid, attrs.gid))
    if attrs.permissions is not None:
        flags |= ft.FILEXFER_ATTR_PERMISSIONS
        out.append(U32.pack(attrs.permissions))
    if attrs.atime is not None and attrs.mtime is not None:
        flags |= ft.FILEXFER_ATTR_ACMODTIME
        out.append(struct.pack("!LL", attrs.atime & 0xFFFFFFFF, attrs.mtime & 0xFFFFFFFF))
    return U32.pack(flags) + b"".join(out)


class Malformed(ValueError):
    """A server packet that does not parse, or that answers what was not asked."""


def parse_attrs(
    buf: bytes | bytearray | memoryview, pos: int, end: int | None = None
) -> tuple[FileAttrs, int]:
    """
    Decode SFTP v3 ATTRS at ``buf[pos:end]``; return them and the position after them.

    Raises ``ValueError`` (or ``struct.error``) when they do not fit before ``end``.
    """
    if end is None:
        end = len(buf)
    (flags,) = U32.unpack_from(buf, pos)
    pos += 4
    size = uid = gid = perms = atime = mtime = None
    if flags & ft.FILEXFER_ATTR_SIZE:
        (size,) = U64.unpack_from(buf, pos)
        pos += 8
        if size > _MAX_SIZE:  # the kernel's (and pyfuse3's) off_t cannot hold it
            raise Malformed(f"a size of {size} bytes")
    if flags & ft.FILEXFER_ATTR_UIDGID:
        uid, gid = struct.unpack_from("!LL", buf, pos)
        pos += 8
    if flags & ft.FILEXFER_ATTR_PERMISSIONS:
        (perms,) = U32.unpack_from(buf, pos)
        pos += 4
    if flags & ft.FILEXFER_ATTR_ACMODTIME:
        atime, mtime = struct.unpack_from("!LL", buf, pos)
        pos += 8
    if flags & ft.FILEXFER_ATTR_EXTENDED:
        (count,) = U32.unpack_from(buf, pos)
        pos += 4
        if count * 8 > end - pos:  # each pair is two strings of at least 4 bytes
            raise Malformed(f"ATTRS with {count} extended pairs in {end - pos} bytes")
        for _ in range(count * 2):  # skip type and data strings
            (n,) = U32.unpack_from(buf, pos)
            pos += 4 + n
            if pos > end:
                break
    if pos > end:
        raise Malformed("ATTRS longer than their packet")
    return FileAttrs(size, uid, gid, perms, atime, mtime), pos


def parse_string(
    buf: bytes | bytearray | memoryview, pos: int, end: int | None = None
) -> tuple[bytes, int]:
    """The SFTP string at ``buf[pos:]``, which must end by ``end``; and the position after it."""
    (n,) = U32.unpack_from(buf, pos)
    pos += 4
    if pos + n > (len(buf) if end is None else end):
        raise Malformed(f"a string of {n} bytes runs past its packet")
    return bytes(buf[pos : pos + n]), pos + n


#: ATTRS with all four SFTP v3 fields (what OpenSSH and the agent send for every entry).
_FULL_ATTRS = struct.Struct("!LQLLLLL")
_FULL_SIZE = _FULL_ATTRS.size
_ALL_FIELDS = (
    ft.FILEXFER_ATTR_SIZE
    | ft.FILEXFER_ATTR_UIDGID
    | ft.FILEXFER_ATTR_PERMISSIONS
    | ft.FILEXFER_ATTR_ACMODTIME
)


def parse_names(
    buf: bytes | bytearray | memoryview, pos: int, stop: int, count: int
) -> list[NameEntry]:
    """
    ``count`` NAME entries at ``buf[pos:stop]``, each checked to end by ``stop``; the usual
    ATTRS (all four fields, no extensions) are read with one unpack (a listing of thousands
    of entries spends most of its time here).
    """
    names = []
    u32 = U32.unpack_from
    full = _FULL_ATTRS.unpack_from
    for _ in range(count):
        (n,) = u32(buf, pos)
        start = pos + 4
        pos = start + n
        if pos > stop:
            raise Malformed(f"a string of {n} bytes runs past its packet")
        filename = bytes(buf[start:pos])
        (n,) = u32(buf, pos)
        start = pos + 4
        pos = start + n
        if pos > stop:
            raise Malformed(f"a string of {n} bytes runs past its packet")
        longname = bytes(buf[start:pos])
        if pos + _FULL_SIZE <= stop and u32(buf, pos)[0] == _ALL_FIELDS:
            _, size, uid, gid, perms, atime, mtime = full(buf, pos)
            if size > _MAX_SIZE:  # as parse_attrs: off_t cannot hold it
                raise Malformed(f"a size of {size} bytes")
            attrs = FileAttrs(size, uid, gid, perms, atime, mtime)
            pos += _FULL_SIZE
        else:
            attrs, pos = parse_attrs(buf, pos, stop)
        names.append(NameEntry(filename, longname, attrs))
    return names
