"""
How a FUSE handler fails: every exception becomes a ``FUSEError`` with the right errno.

Separate because every handler module uses it, and it is the one place that decides which
errors are expected (the server's or the network's) and which are bugs to log.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from pyfuse3 import FUSEError
from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure

from telenet.sftp.errors import SFTPStatusError, error_to_errno

__all__ = ["fuse_error", "fuse_op"]

#: The helper process's one log namespace (its events read the same from every module).
log = Logger(namespace="telenet.fuse.helper")
P = ParamSpec("P")
R = TypeVar("R")

#: The errnos that say the server or the connection failed an operation (health counters).
IO_ERRNOS = frozenset({errno.EIO, errno.ENOTCONN, errno.ETIMEDOUT, errno.ECONNRESET})

# Errors that are the server's or the network's, not bugs.
_EXPECTED = (SFTPStatusError, ConnectionError, ConnectionLost, defer.TimeoutError)


def fuse_op(
    failure_errno: int = errno.EIO,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """
    Turn every exception of a FUSE handler into a FUSEError.

    pyfuse3 lets anything else escape into its main loop, which would leave the kernel request
    unanswered (and its caller stuck in D state). ``failure_errno`` is what a bare SFTP
    FX_FAILURE most likely means for this operation.
    """

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(fn)
        async def handler(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(*args, **kwargs)
            except Exception as e:
                error = fuse_error(e, failure_errno)
                counters = getattr(args[0], "counters", None) if args else None
                if counters is not None and error.errno in IO_ERRNOS:
                    counters.io_errors += 1
                raise error from None

        return handler

    return decorate


def fuse_error(exc: BaseException, failure_errno: int = errno.EIO) -> FUSEError:
    """The FUSEError for ``exc``; anything unexpected is logged (it is a bug)."""
    if isinstance(exc, FUSEError):
        return exc
    if not isinstance(exc, _EXPECTED):
        log.failure(
            "unexpected error in a FUSE handler", Failure(exc, type(exc), exc.__traceback__)
        )
    return FUSEError(error_to_errno(exc, failure_errno))
