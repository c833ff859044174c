"""
Tuning the helper process and its mount: malloc and the garbage collector, the mount's kernel
read-ahead, clearing a dead helper's mount, a cheaper FUSE fd waiter for pyfuse3's asyncio
mode, and pyfuse3's standard-library logging sent to the Twisted log.

Separate because none of it is the filesystem: each is a process- or kernel-level adjustment
``main`` makes once, around it.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
from typing import Any

from twisted.logger import Logger

from telenet.core.internals import patch_pyfuse3_waiting
from telenet.fuse.resume import Resume

__all__ = [
    "GC_THRESHOLDS",
    "KERNEL_READAHEAD_KB",
    "FuseFdWaiter",
    "StdlibToTwisted",
    "clear_stale_mount",
    "mount_dev",
    "tune_gc",
    "tune_malloc",
    "tune_readahead",
]

#: The helper process's one log namespace (its events read the same from every module).
log = Logger(namespace="telenet.fuse.helper")

#: Kernel read-ahead for the mount (KiB), so sequential reads come in big requests.
KERNEL_READAHEAD_KB = 1024
#: The cyclic garbage collector's thresholds (Python's are 700, 10, 10): fewer, cheaper runs.
GC_THRESHOLDS = (10_000, 20, 20)


class StdlibToTwisted(logging.Handler):
    """pyfuse3 logs through the standard library; send that to the Twisted log."""

    def emit(self, record: logging.LogRecord) -> None:
        log.emit(
            _LEVELS.get(record.levelno, _LEVELS[logging.INFO]),
            "{logger}: {message}",
            logger=record.name,
            message=record.getMessage(),
        )


def _levels() -> dict[int, Any]:
    from twisted.logger import LogLevel

    return {
        logging.DEBUG: LogLevel.debug,
        logging.INFO: LogLevel.info,
        logging.WARNING: LogLevel.warn,
        logging.ERROR: LogLevel.error,
        logging.CRITICAL: LogLevel.critical,
    }


_LEVELS = _levels()


def mount_dev(mountpoint: str) -> str | None:
    """The "major:minor" of the mount at ``mountpoint``, from /proc (never stat a FUSE mount)."""
    # mountinfo escapes these characters in paths as octal.
    escaped = "".join(
        {" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134"}.get(c, c) for c in mountpoint
    )
    dev = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                fields = line.split(" ")
                if len(fields) > 4 and fields[4] == escaped:
                    dev = fields[2]  # the last one is the mount on top
    except OSError:
        pass
    return dev


def tune_readahead(mountpoint: str) -> None:
    """FUSE starts at 128 KiB of kernel read-ahead; more means fewer, bigger read requests."""
    dev = mount_dev(mountpoint)
    if dev is None:
        return
    try:
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(str(KERNEL_READAHEAD_KB))
    except OSError as e:
        log.info("cannot raise read-ahead of {dev}: {error}", dev=dev, error=e)


def clear_stale_mount(mountpoint: str) -> None:
    """A dead helper's mount makes the mount point unusable (ENOTCONN): detach it."""
    import subprocess

    try:
        os.stat(mountpoint)
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO):
            subprocess.run(["fusermount3", "-uz", mountpoint], capture_output=True, check=False)


def tune_malloc() -> None:
    """
    Keep freed megabyte buffers in the heap: glibc otherwise maps and unmaps each one, and the
    page faults of touching fresh pages cost more than the copies themselves.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def tune_gc() -> None:
    """
    Keep the cyclic garbage collector's pauses short: what start-up made (Twisted, pyfuse3,
    trio: most of the heap) lives as long as the process, so it is frozen out of every
    collection; and collections run after more allocations. A full collection walked all of
    it, 20-100 ms with the loop stopped, during a listing or a tar of many small files.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class FuseFdWaiter:
    """
    A cheaper ``wait_readable`` for pyfuse3's asyncio mode.

    pyfuse3 registers the FUSE fd with the loop before each request and removes it after
    (two epoll_ctl calls and their bookkeeping), and passes a lock between its worker tasks so
    that one at a time waits (two more task wake-ups). Together that is a good part of a
    small request's cost. Here the registration stays while requests keep coming and the
    lock is a no-op; instead, this waiter wakes one task per request: a woken task reads the
    fd as soon as it runs (a read that blocks if nothing is there), so no other is woken
    until it has, and none at all unless a zero-timeout poll confirms a request is waiting
    (a callback queued before the last read may be stale). The task is woken through a
    ``Resume``: it reads and handles the request inside this waiter's loop callback, not a
    loop iteration later.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, closed: type[Exception]) -> None:
        self._loop = loop
        self._closed = closed
        self._waiters: dict[int, collections.deque[Resume[None]]] = {}
        self._polls: dict[int, Any] = {}
        self._idle: dict[int, int] = {}
        self._waking: set[int] = set()

    async def wait_readable(self, fd: int) -> None:
        waiters = self._waiters.get(fd)
        if waiters is None:
            import select

            waiters = self._waiters[fd] = collections.deque()
            poll = select.poll()
            poll.register(fd, select.POLLIN)
            self._polls[fd] = poll
        if fd not in self._idle:
            self._loop.add_reader(fd, self._ready, fd)
        self._idle[fd] = 0
        future: Resume[None] = Resume(self._loop)
        waiters.append(future)
        try:
            await future
        finally:
            if not future.done():
                if future in waiters:
                    waiters.remove(future)
            elif future.exception() is None:
                self._waking.discard(fd)  # our caller reads the request right now

    def _ready(self, fd: int) -> None:
        waiters = self._waiters.get(fd)
        idle = self._idle.get(fd)
        if waiters is None or idle is None:
            return  # closed or unwatched since this callback was queued
        while waiters and waiters[0].done():
            waiters.popleft()
        if fd in self._waking:
            return  # a woken task is about to read it
        if not self._polls[fd].poll(0):
            return  # queued before the last read took the request
        if waiters:
            # Marked first: the woken task runs (and reads the request) inside set_result.
            self._waking.add(fd)
            self._idle[fd] = 0
            waiters.popleft().set_result(None)
        elif idle >= 1:
            # Readable twice with nobody waiting: every worker is busy. Stop watching until
            # one waits, rather than spin on a level-triggered fd.
            self._unwatch(fd)
        else:
            self._idle[fd] = idle + 1

    def _unwatch(self, fd: int) -> None:
        if self._idle.pop(fd, None) is not None:
            self._loop.remove_reader(fd)

    def notify_closing(self, fd: int) -> None:
        self._unwatch(fd)
        for future in self._waiters.pop(fd, ()):
            if not future.done():
                future.set_exception(self._closed())
        self._polls.pop(fd, None)

    def install(self, module: Any) -> None:
        """
        Put ``wait_readable``, ``notify_closing`` and the read lock's class in place of
        pyfuse3.asyncio's (the lock is pyfuse3's only use of ``Lock``).
        """
        patch_pyfuse3_waiting(module, self.wait_readable, self.notify_closing, _FreeLock)


class _FreeLock:
    """pyfuse3's read lock, made redundant by ``FuseFdWaiter``."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None
