"""
Strict parsing of SFTP client requests, for the server side.

Unlike Conch's ``getNS``, a truncated string is refused rather than cut short: ``BadMessage``
is answered with FX_BAD_MESSAGE. Shared by the request handlers (``telenet.sftp.server``)
and the extension requests of the filesystem (``telenet.sftp.rooted``).
"""

from __future__ import annotations

import struct

__all__ = ["BadMessage", "expect_end", "get_string"]


class BadMessage(ValueError):
    """A request that does not parse; answered with FX_BAD_MESSAGE."""


def get_string(data: bytes, pos: int) -> tuple[bytes, int]:
    """Parse an SFTP string at C{pos}; unlike Conch's getNS, refuse a truncated one."""
    if len(data) < pos + 4:
        raise BadMessage("truncated string length")
    (n,) = struct.unpack_from("!L", data, pos)
    end = pos + 4 + n
    if len(data) < end:
        raise BadMessage("truncated string")
    return data[pos + 4 : end], end


def expect_end(data: bytes, pos: int) -> None:
    if pos != len(data):
        raise BadMessage("trailing bytes in request")
