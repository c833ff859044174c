"""
The SFTP client's errors, and the errno each one means to a file system.

Separate from the protocol code so that the FUSE side (and tests) can map failures to errnos
without reaching into the client's machinery.
"""

from __future__ import annotations

import errno
import os
import re

from twisted.conch.ssh import filetransfer as ft
from twisted.internet import defer
from twisted.internet.error import ConnectionLost

__all__ = [
    "ConnectionDead",
    "SFTPNotConnected",
    "SFTPProtocolError",
    "SFTPStatusError",
    "error_to_errno",
    "status_errno",
]

# SFTP v3 status codes beyond the ones Conch names; later drafts' codes are sent by some
# servers (Go's pkg/sftp among them), so they are mapped too.
_STATUS_ERRNO = {
    ft.FX_NO_SUCH_FILE: errno.ENOENT,
    ft.FX_PERMISSION_DENIED: errno.EACCES,
    ft.FX_BAD_MESSAGE: errno.EINVAL,
    ft.FX_NO_CONNECTION: errno.ENOTCONN,
    ft.FX_CONNECTION_LOST: errno.ENOTCONN,
    ft.FX_OP_UNSUPPORTED: errno.ENOTSUP,
    9: errno.EBADF,  # INVALID_HANDLE
    10: errno.ENOENT,  # NO_SUCH_PATH
    ft.FX_FILE_ALREADY_EXISTS: errno.EEXIST,
    12: errno.EROFS,  # WRITE_PROTECT
    13: errno.ENXIO,  # NO_MEDIA
    14: errno.ENOSPC,  # NO_SPACE_ON_FILESYSTEM
    15: errno.EDQUOT,  # QUOTA_EXCEEDED
    17: errno.EBUSY,  # LOCK_CONFLICT
    18: errno.ENOTEMPTY,  # DIR_NOT_EMPTY
    19: errno.ENOTDIR,  # NOT_A_DIRECTORY
    20: errno.EINVAL,  # INVALID_FILENAME
    21: errno.ELOOP,  # LINK_LOOP
    24: errno.EISDIR,  # FILE_IS_A_DIRECTORY
}

# FX_FAILURE carries no errno; servers that put strerror() text in the message (Conch,
# Go's pkg/sftp) still let us recover the common ones.
_ERRNO_IN_MESSAGE = re.compile(r"\[Errno (\d+)\]")
_MESSAGE_ERRNOS = [
    (os.strerror(e).lower(), e)
    for e in (
        errno.ENOTEMPTY,
        errno.EEXIST,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENOSPC,
        errno.EROFS,
        errno.EXDEV,
        errno.ELOOP,
        errno.ENAMETOOLONG,
        errno.EDQUOT,
        errno.EINVAL,
        errno.EBUSY,
        errno.EPERM,
        errno.ETXTBSY,
        errno.EMLINK,
    )
] + [("file exists", errno.EEXIST), ("not empty", errno.ENOTEMPTY)]


# SFTP v3 folds several errnos into one status. A server that puts strerror() text in the
# message (sftp-agent) still tells them apart; OpenSSH's fixed texts fall back to the first.
_FOLDED = {
    ft.FX_NO_SUCH_FILE: (errno.ENOENT, errno.ENOTDIR, errno.ELOOP),
    ft.FX_PERMISSION_DENIED: (errno.EACCES, errno.EPERM),
    ft.FX_BAD_MESSAGE: (errno.EINVAL, errno.ENAMETOOLONG),
}


class SFTPStatusError(ft.SFTPError):
    """The server answered a request with an error status."""

    def __init__(self, code: int, message: str, request: str = "") -> None:
        super().__init__(code, message)
        self.request = request
        self.args = (code, message, request)

    @property
    def errno(self) -> int:
        """The closest errno for this status (see ``error_to_errno``)."""
        return status_errno(self.code, self.message)

    def __str__(self) -> str:
        what = f"{self.request}: " if self.request else ""
        return f"{what}SFTP status {self.code}: {self.message}"


class ConnectionDead(ConnectionLost):
    """The connection stopped answering (a request or keepalive passed its deadline)."""

    def __str__(self) -> str:
        return " ".join(str(a) for a in self.args) or "SFTP connection declared dead"


class SFTPProtocolError(ConnectionError):
    """A well-framed answer whose content makes no sense (a short statvfs reply, no name)."""


class SFTPNotConnected(ConnectionError):
    """There is no live SFTP connection right now (the manager is reconnecting)."""


def status_errno(code: int, message: str, default: int = errno.EIO) -> int:
    """Map an SFTP status code (and, for FX_FAILURE, its message) to an errno."""
    folded = _FOLDED.get(code)
    if folded is not None:
        lowered = message.lower()
        for candidate in folded[1:]:
            if os.strerror(candidate).lower() in lowered:
                return candidate
        return folded[0]
    mapped = _STATUS_ERRNO.get(code)
    if mapped is not None:
        return mapped
    match = _ERRNO_IN_MESSAGE.search(message)
    if match:
        return int(match.group(1))
    lowered = message.lower()
    for text, number in _MESSAGE_ERRNOS:
        if text in lowered:
            return number
    return default


def error_to_errno(exc: BaseException, failure_default: int = errno.EIO) -> int:
    """
    The errno a FUSE operation should return for ``exc``.

    :param failure_default: what a bare FX_FAILURE means for this operation (OpenSSH sends
        "Failure" for every unmapped errno, so e.g. rmdir passes ENOTEMPTY here).
    """
    if isinstance(exc, SFTPStatusError):
        return status_errno(exc.code, exc.message, failure_default)
    if isinstance(exc, SFTPNotConnected):
        return errno.ENOTCONN
    if isinstance(exc, (ConnectionLost, ConnectionError, defer.TimeoutError, EOFError)):
        return errno.EIO
    if isinstance(exc, NotImplementedError):
        return errno.ENOTSUP
    return errno.EIO
