"""
Per-handle ordering of the server's file requests: a request waits for the earlier ones it
conflicts with (overlapping ranges with a write, or a barrier such as close, fsetstat or
fsync); others, such as disjoint reads, run at once, in parallel in the thread pool.

Separate from the protocol: it is a small scheduler that knows nothing of SFTP packets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred

__all__ = ["BARRIER", "EOF_OFFSET", "READ", "WRITE", "HandleQueue", "whole_file"]

_T = TypeVar("_T")

READ, WRITE, BARRIER = 0, 1, 2
EOF_OFFSET = 2**64


def whole_file(fileObj: object) -> tuple[int, int]:
    """The span of a request that orders against every other on its handle."""
    return 0, EOF_OFFSET


class _PendingOp:
    __slots__ = ("kind", "start", "end", "waiters")

    def __init__(self, kind: int, start: int, end: int) -> None:
        self.kind = kind
        self.start = start
        self.end = end
        self.waiters: list[Deferred[None]] = []

    def conflicts(self, other: _PendingOp) -> bool:
        if self.kind == BARRIER or other.kind == BARRIER:
            return True
        if self.kind == READ and other.kind == READ:
            return False
        return self.start < other.end and other.start < self.end


class HandleQueue:
    """
    Orders the requests of one handle: a request waits for earlier ones it conflicts with
    (overlapping ranges with a write, or a barrier such as close), others run at once.
    """

    def __init__(self) -> None:
        self._pending: list[_PendingOp] = []

    def __len__(self) -> int:
        return len(self._pending)

    def submit(
        self, kind: int, start: int, end: int, run: Callable[[], Deferred[_T]]
    ) -> Deferred[_T]:
        op = _PendingOp(kind, start, end)
        blockers = [p for p in self._pending if p.conflicts(op)]
        self._pending.append(op)
        d: Deferred[_T]
        if blockers:
            waits: list[Deferred[None]] = []
            for blocker in blockers:
                w: Deferred[None] = Deferred()
                blocker.waiters.append(w)
                waits.append(w)
            d = defer.gatherResults(waits).addCallback(lambda _: run())
        else:
            d = run()
        return d.addBoth(self._finish, op)

    def _finish(self, result: _T, op: _PendingOp) -> _T:
        self._pending.remove(op)
        for w in op.waiters:
            w.callback(None)
        return result
