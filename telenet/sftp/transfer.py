"""
Many READs or WRITEs in flight for one open remote file: ``ReadAhead`` keeps a window of
READs ahead of a sequential reader, ``PipelinedWriter`` sends WRITEs without waiting for
their answers.

Separate from the client: they are users of its ``read`` and ``writeChunks``, with their own
buffering and error rules, not part of the protocol.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from telenet.sftp.client import SFTPClient
from telenet.sftp.codec import Data

__all__ = ["PipelinedWriter", "ReadAhead"]

# The namespace these lines had before the client was split (twistd prints it).
log = Logger(namespace="telenet.sftp.client")


class _Chunk:
    """One READ range of a ``ReadAhead`` window, filled in when its answers arrive."""

    __slots__ = ("offset", "size", "data", "error", "waiters")

    def __init__(self, offset: int, size: int) -> None:
        self.offset = offset
        self.size = size
        self.data: Data | None = None  # complete (maybe short at EOF) once set
        self.error: Failure | None = None
        self.waiters: list[Deferred[None]] = []

    @property
    def end(self) -> int:
        return self.offset + self.size

    def wait(self) -> Deferred[None]:
        if self.error is not None:
            return defer.fail(self.error)
        if self.data is not None:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self.waiters.append(d)
        return d

    def finish(self, data: Data | None, error: Failure | None) -> None:
        self.data = data
        self.error = error
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            if error is not None:
                d.errback(error)
            else:
                d.callback(None)


class ReadBudget:
    """
    The read-ahead a process's readers share: each of the ``streams`` read in the last
    ``idle`` seconds may keep ``total / streams`` in flight, within ``least`` and its own
    window. One reader streams with its whole window; four at once stay within ``total``
    together (memory: what is in flight is held until the kernel takes it).
    """

    def __init__(
        self,
        total: int,
        least: int = 1 << 20,
        idle: float = 1.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.least = least
        self.idle = idle
        self._now = now
        self._active: dict[int, float] = {}  # id of a reader -> when it last read

    def window(self, reader: object, most: int) -> int:
        """How far ahead ``reader``, reading now, may keep READs in flight."""
        now = self._now()
        self._active[id(reader)] = now
        if len(self._active) > 1:
            stale = [k for k, t in self._active.items() if now - t > self.idle]
            for key in stale:
                del self._active[key]
        return max(self.least, min(most, self.total // len(self._active)))

    def release(self, reader: object) -> None:
        self._active.pop(id(reader), None)


class ReadAhead:
    """
    I read one open remote file, keeping a window of READs in flight ahead of a
    sequential reader.

    Reads that continue where the last one stopped grow the window (up to ``window`` bytes,
    in ``chunk``-sized requests); a jump elsewhere drops it. Short answers are re-requested
    for the remainder, unless they reach ``sizeHint`` (the size the caller knows of: asking
    again would only fetch an EOF); an empty answer means end of file.
    """

    def __init__(
        self,
        client: SFTPClient,
        handle: bytes,
        chunk: int | None = None,
        window: int = 8 << 20,
        initial: int = 1 << 20,
        sizeHint: int | None = None,
        budget: ReadBudget | None = None,
    ) -> None:
        self._client = client
        self._budget = budget
        self._handle = handle
        self._chunkSize = min(chunk or client.maxRead, client.maxRead)
        self._window = window
        self._initial = initial
        self._ahead = 0
        self._chunks: deque[_Chunk] = deque()
        self._next = -1  # where a sequential reader reads next
        self._eof: int | None = None
        # The size the file had at open: no read-ahead past it (reads past it still work).
        self._sizeHint = sizeHint

    @property
    def bufferedBytes(self) -> int:
        return sum(c.size for c in self._chunks)

    def reset(self, sizeHint: int | None = None) -> None:
        """
        Forget the window (after a seek, a write, an error, or news that the file changed:
        then pass its new size); answers still due are ignored.
        """
        self._chunks.clear()
        self._eof = None
        self._ahead = 0
        if self._budget is not None:
            self._budget.release(self)
        if sizeHint is not None:
            self._sizeHint = sizeHint

    def prefetch(self, size: int) -> None:
        """
        Start reading the first ``size`` bytes now, before anyone asks: a small file is then
        already on its way while the kernel is still answering the open.
        """
        if self._chunks or size <= 0:
            return
        self._fill(0, min(size, self._chunkSize))

    def read(self, offset: int, size: int) -> Data | Deferred[Data]:
        """
        ``size`` bytes at ``offset`` (fewer only at end of file): the bytes themselves when
        the window already holds them, else a Deferred.
        """
        chunks = self._chunks
        sequential = offset == self._next
        self._next = offset + size
        if chunks and chunks[0].offset <= offset <= chunks[-1].end:
            # Drop what lies wholly behind this read: the kernel keeps it in its page cache.
            while chunks and chunks[0].end <= offset:
                chunks.popleft()
        elif chunks and offset < chunks[0].offset:
            # A late read behind the window: serve it on its own, keep the window.
            return self._fetchAlone(offset, size)
        else:
            self.reset()
        if sequential or offset == 0:
            window = self._window
            if self._budget is not None:
                window = self._budget.window(self, window)
            self._ahead = min(window, max(self._initial, self._ahead * 2))
        else:
            self._ahead = 0
        end = offset + size
        ahead = self._ahead
        if self._sizeHint is not None:
            ahead = min(ahead, max(0, self._sizeHint - end))
        self._fill(offset, end + ahead)
        wanted = [c for c in chunks if c.offset < offset + size and c.end > offset]
        if not wanted:  # at (known) end of file
            return b""
        if all(c.data is not None for c in wanted):
            return self._assemble(wanted, offset, size)
        waits = [c.wait() for c in wanted if c.data is None]
        d = defer.gatherResults(waits, consumeErrors=True)
        return d.addCallbacks(lambda _: self._assemble(wanted, offset, size), self._failed)

    def _failed(self, failure: Failure) -> Failure:
        self.reset()
        if isinstance(failure.value, defer.FirstError):
            return failure.value.subFailure
        return failure

    def _fill(self, offset: int, until: int) -> None:
        chunks = self._chunks
        pos = chunks[-1].end if chunks else offset
        if self._eof is not None:
            until = min(until, self._eof)
        while pos < until:
            size = min(self._chunkSize, until - pos)
            chunk = _Chunk(pos, size)
            chunks.append(chunk)
            self._fetch(chunk, pos, size, [])
            pos += size

    def _fetch(self, chunk: _Chunk, offset: int, size: int, parts: list[Data]) -> None:
        def got(data: Data) -> None:
            if data:
                parts.append(data)
                hint = self._sizeHint
                if len(data) < size and (hint is None or offset + len(data) < hint):
                    # A short answer before the known end: ask again for the rest.
                    self._fetch(chunk, offset + len(data), size - len(data), parts)
                    return
            result = parts[0] if len(parts) == 1 else b"".join(parts)
            if len(result) < chunk.size and chunk in self._chunks:
                self._eof = chunk.offset + len(result)
                # Chunks beyond EOF will come back empty; drop them now.
                while self._chunks and self._chunks[-1].offset >= self._eof:
                    self._chunks.pop().finish(b"", None)
            chunk.finish(result, None)

        def failed(failure: Failure) -> None:
            chunk.finish(None, failure)

        self._client.read(self._handle, offset, size).addCallbacks(got, failed)

    def _fetchAlone(self, offset: int, size: int) -> Deferred[Data]:
        pieces: list[_Chunk] = []
        pos = offset
        while pos < offset + size:
            n = min(self._chunkSize, offset + size - pos)
            chunk = _Chunk(pos, n)
            pieces.append(chunk)
            self._fetch(chunk, pos, n, [])
            pos += n
        d = defer.gatherResults([c.wait() for c in pieces], consumeErrors=True)
        return d.addCallbacks(lambda _: self._assemble(pieces, offset, size), self._failed)

    @staticmethod
    def _assemble(chunks: list[_Chunk], offset: int, size: int) -> Data:
        end = offset + size
        if len(chunks) == 1:
            c = chunks[0]
            data = c.data or b""
            if c.offset == offset and len(data) <= size:
                return data
            return data[offset - c.offset : end - c.offset]
        parts = []
        for c in chunks:
            data = c.data or b""
            start = max(offset - c.offset, 0)
            parts.append(data[start : end - c.offset])
            if len(data) < c.size:  # end of file
                break
        return b"".join(parts)


class PipelinedWriter:
    """
    I write one open remote file without waiting for each WRITE's answer.

    ``write`` sends at once and only makes the caller wait while more than ``maxInFlight``
    bytes are unanswered. The first failed WRITE is remembered and raised by every later
    ``write``, ``flush`` and ``fsync``: an error is never dropped.
    """

    def __init__(self, client: SFTPClient, handle: bytes, maxInFlight: int = 8 << 20) -> None:
        self._client = client
        self._handle = handle
        self._chunkSize = client.maxWrite
        self._max = maxInFlight
        self.inFlight = 0
        self.error: Failure | None = None
        self._roomWaiters: deque[Deferred[None]] = deque()
        self._drainWaiters: list[Deferred[None]] = []

    def write(self, offset: int, data: bytes) -> Deferred[None] | None:
        """
        Queue ``data`` at ``offset``.

        Returns None when the caller may go on at once, or a Deferred that fires when the
        window has room again. Raises the remembered error of an earlier write.
        """
        if self.error is not None:
            self.error.raiseException()
        try:
            sent = self._client.writeChunks(self._handle, offset, data)
        except Exception:
            self.error = Failure()
            raise
        step = self._chunkSize
        n = len(data)
        for i, request in enumerate(sent):
            size = min(step, n - i * step) if len(sent) > 1 else n
            self.inFlight += size
            request.addCallbacks(
                self._acked, self._failed, callbackArgs=(size,), errbackArgs=(size,)
            )
        if self.error is not None:  # the connection was already dead
            self.error.raiseException()
        if self.inFlight <= self._max:
            return None
        d: Deferred[None] = Deferred()
        self._roomWaiters.append(d)
        return d

    def _acked(self, _: object, size: int) -> None:
        self.inFlight -= size
        self._wake()

    def _failed(self, failure: Failure, size: int) -> None:
        self.inFlight -= size
        if self.error is None:
            log.warn("SFTP write failed: {error}", error=failure.getErrorMessage())
            self.error = failure
        self._wake()

    def _wake(self) -> None:
        while self._roomWaiters and (self.inFlight <= self._max or self.error is not None):
            d = self._roomWaiters.popleft()
            if self.error is not None:
                d.errback(self.error)
            else:
                d.callback(None)
        if self.inFlight == 0 and self._drainWaiters:
            waiters, self._drainWaiters = self._drainWaiters, []
            for d in waiters:
                if self.error is not None:
                    d.errback(self.error)
                else:
                    d.callback(None)

    def flush(self) -> Deferred[None]:
        """Fires when every write so far was answered; fails with the first write error."""
        if self.inFlight == 0:
            return defer.fail(self.error) if self.error is not None else defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._drainWaiters.append(d)
        return d
