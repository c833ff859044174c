# -*- test-case-name: tests.test_internals -*-
"""
The private parts of asyncio, Twisted and pyfuse3 that telenet's fast paths rely on, in one
place: nothing else in telenet touches an underscored name of those libraries.

Each is a measured win on a hot path (docs/performance.md): a task woken inside the callback
that settles it, reads handed by the loop straight to the reactor, a send without a reactor
turn when nothing is queued, and a FUSE fd that stays registered between requests.
``tests/test_internals.py`` fails loudly when an upgrade of Python, Twisted or pyfuse3 changes
one of them; each function also degrades to the public behaviour when its internal is gone.
"""

from __future__ import annotations

import asyncio
from asyncio.tasks import _current_tasks  # type: ignore[attr-defined]
from collections.abc import Callable
from typing import Any


def reactor_loop(reactor: object) -> asyncio.AbstractEventLoop | None:
    """The asyncio loop under Twisted's asyncio reactor; None under any other reactor."""
    loop = getattr(reactor, "_asyncioEventloop", None)
    return loop if isinstance(loop, asyncio.AbstractEventLoop) else None


def task_running(loop: asyncio.AbstractEventLoop) -> bool:
    """
    Whether a task of ``loop`` is running right now (a callback may then not run another
    task's step inline: asyncio allows one running task per loop).
    """
    return _current_tasks.get(loop) is not None


def nothing_queued(transport: Any) -> bool:
    """
    Whether a Twisted TCP transport is connected with nothing waiting in its write buffers,
    so that a send straight to its socket keeps the order of the bytes.
    """
    return bool(
        transport.connected
        and not transport.disconnecting
        and not transport.dataBuffer
        and not transport._tempDataLen
    )


def lean_reads(transport: Any) -> None:
    """
    On the asyncio reactor, have the loop call the reactor's read handler for ``transport``
    directly rather than through Twisted's per-event log context: a few microseconds per
    read, much of a small request's cost through a bridge or the SFTP client. The reactor
    still handles the read, its errors and disconnects; a pause and resume (flow control in
    a bulk transfer) puts Twisted's own registration back. On any other reactor, or if these
    internals change, nothing happens.
    """
    reactor = getattr(transport, "reactor", None)
    loop = reactor_loop(reactor)
    readers = getattr(reactor, "_readers", None)
    handler = getattr(reactor, "_readOrWrite", None)
    if loop is None or not isinstance(readers, dict) or handler is None:
        return
    fd = transport.fileno()
    if fd >= 0 and readers.get(transport) == fd:
        loop.add_reader(fd, handler, transport, True)


def patch_pyfuse3_waiting(
    module: Any,
    wait_readable: Callable[[int], Any],
    notify_closing: Callable[[int], None],
    lock: type,
) -> None:
    """
    Put these in place of pyfuse3.asyncio's ``wait_readable``, ``notify_closing`` and the
    class of its read lock (its only use of ``Lock``), which its ``main`` looks up at call
    time.
    """
    module.wait_readable = wait_readable
    module.notify_closing = notify_closing
    module.Lock = lock
