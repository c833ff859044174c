"""
The connection under ``SFTPClient``: one SFTP v3 stream's life cycle, request deadlines, the
idle keepalive, the abort that fails every pending request, and the sending of requests
(straight to the socket when nothing is queued). ``PacketReader`` reads the answers.

Separate from the operations (``telenet.sftp.client``) so that each class stays about one
thing: this one is the plumbing, that one the SFTP requests built on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self

from twisted.conch.ssh import filetransfer as ft
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from telenet.core.internals import lean_reads, nothing_queued
from telenet.sftp.codec import HDR, MAX_CHUNK, ns
from telenet.sftp.errors import ConnectionDead
from telenet.sftp.reader import PacketReader

__all__ = ["DEFAULT_KEEPALIVE", "DEFAULT_TIMEOUT", "LAZY_DELAY", "SFTPChannel"]

# The namespace these lines had before the client was split (twistd prints it).
log = Logger(namespace="telenet.sftp.client")

#: Bytes read from the socket per reactor iteration.
RECV_SIZE = 1 << 18
#: Bytes sent per reactor iteration (at most).
SEND_SIZE = 1 << 20
#: Seconds a lazy request (a reader's CLOSE) may wait for company.
LAZY_DELAY = 0.002
DEFAULT_TIMEOUT = 10.0
DEFAULT_KEEPALIVE = 5.0


class SFTPChannel(PacketReader, ft.FileTransferClient):
    """
    I carry SFTP v3 requests to one server over one stream connection, and their answers back.

    ``_request`` sends one and returns a Deferred of its answer (parsed by ``PacketReader``),
    failed by the deadline check when it is not answered within ``timeout``. ``SFTPClient``
    puts the SFTP operations on top.
    """

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float = DEFAULT_TIMEOUT,
        keepalive: float = DEFAULT_KEEPALIVE,
    ) -> None:
        super().__init__()
        self._clock = clock
        self.timeout = timeout
        self.keepaliveInterval = keepalive
        self.ready: Deferred[Self] = Deferred()
        self.extensions: dict[bytes, bytes] = {}
        self.serverVersion = 0
        self.maxRead = MAX_CHUNK
        self.maxWrite = MAX_CHUNK
        #: Callables told (once) with the reason when this connection ends.
        self.lostObservers: list[Callable[[Failure], None]] = []
        self._buf = bytearray()
        # A big packet arriving in pieces: the pieces so far and the bytes still missing.
        self._pieces: list[bytes | memoryview] = []
        self._need = 0
        # request id -> (deferred, deadline, packet type, bytes asked for by a READ);
        # insertion order is send order, so the first entry always has the earliest deadline.
        self._pending: dict[int, tuple[Deferred[Any], float, int, int]] = {}
        self._nextId = 0
        self._deadlineCall: IDelayedCall | None = None
        self._keepaliveCall: IDelayedCall | None = None
        self._lastReceived = 0.0
        self._connectedAt = 0.0
        self._versioned = False
        self._dead: Failure | None = None
        self._openSSHSymlink = False
        self._direct = False
        self._held: list[bytes] = []
        self._heldCall: IDelayedCall | None = None

    def __repr__(self) -> str:
        return f"<SFTPClient pending={len(self._pending)} dead={self._dead is not None}>"

    # -- connection life cycle ---------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        if ITCPTransport.providedBy(transport):
            # Without it every small request waits for a delayed ACK (~40 ms).
            transport.setTcpNoDelay(True)
        if transport is not None and hasattr(transport, "bufferSize"):
            # Twisted reads 64 KiB and sends 128 KiB per loop iteration; READ answers and
            # WRITE requests come 255 KiB at a time.
            transport.bufferSize = RECV_SIZE
            # typing note: SEND_LIMIT is a FileDescriptor attribute, like bufferSize above.
            transport.SEND_LIMIT = SEND_SIZE  # type: ignore[attr-defined]
        # Only a plain TCP transport gets its socket written directly (see _send). Imported
        # here: the mount helper keeps pyOpenSSL out, and tcp's import would bring it in.
        from twisted.internet import tcp

        self._direct = isinstance(transport, tcp.Connection) and not getattr(
            transport, "TLS", False
        )
        self._lastReceived = self._connectedAt = self._clock.seconds()
        if self._direct:
            lean_reads(transport)  # answers are read without Twisted's per-event log context
        super().connectionMade()
        # VERSION has the same deadline as any request.
        self._deadlineCall = self._clock.callLater(self.timeout, self._checkDeadline)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        # After an abort, its own reason says more than "aborted".
        cause = self._dead or reason
        lost = ConnectionLost(f"SFTP connection lost: {reason.getErrorMessage()}")
        lost.__cause__ = reason.value
        self._fail(lost, abort=False)
        observers, self.lostObservers = self.lostObservers, []
        for observer in observers:
            try:
                observer(cause)
            except Exception:
                log.failure("SFTP lost-connection observer failed")

    @property
    def alive(self) -> bool:
        """Whether requests can still be sent on this connection."""
        return self._dead is None and bool(self.connected)

    def abort(self, reason: str = "aborted") -> None:
        """Declare the connection dead: fail everything pending and drop the transport."""
        self._fail(ConnectionDead(reason), abort=True)

    def _fail(self, exc: Exception, abort: bool) -> None:
        if self._dead is not None:
            return
        self._dead = Failure(exc)
        for call in (self._deadlineCall, self._keepaliveCall, self._heldCall):
            if call is not None and call.active():
                call.cancel()
        self._deadlineCall = self._keepaliveCall = self._heldCall = None
        self._held = []
        pending, self._pending = self._pending, {}
        if not self.ready.called:
            self.ready.errback(Failure(exc))
        for d, _, _, _ in pending.values():
            d.errback(Failure(exc))
        if abort and self.transport is not None:
            log.warn("SFTP connection declared dead: {reason}", reason=str(exc))
            # typing note: ITransport lacks abortConnection; TCP and test transports have it.
            getattr(self.transport, "abortConnection", self.transport.loseConnection)()

    def _checkDeadline(self) -> None:
        self._deadlineCall = None
        now = self._clock.seconds()
        if not self.ready.called:
            # From the connection's start: a server trickling bytes does not extend it.
            deadline = self._connectedAt + self.timeout
            if now >= deadline - 1e-9:
                self.abort(f"no SFTP VERSION within {self.timeout:g}s")
                return
        elif not self._pending:
            return
        else:
            _, deadline, kind, _ = next(iter(self._pending.values()))
            if now >= deadline - 1e-9:
                name = ft.FileTransferBase.packetTypes.get(kind, str(kind))
                self.abort(f"SFTP {name} request unanswered for {self.timeout:g}s")
                return
        self._deadlineCall = self._clock.callLater(deadline - now, self._checkDeadline)

    def _keepalive(self) -> None:
        self._keepaliveCall = None
        if self._dead is not None:
            return
        now = self._clock.seconds()
        idle = now - self._lastReceived
        if not self._pending and idle >= self.keepaliveInterval - 1e-9:
            # Any answer (even an error) proves the server is alive; the deadline does the rest.
            self._request(ft.FXP_LSTAT, ns(b"/")).addErrback(lambda f: None)
            idle = 0.0
        self._keepaliveCall = self._clock.callLater(
            max(self.keepaliveInterval - idle, 0.01), self._keepalive
        )

    # -- packets out ---------------------------------------------------------------------------

    def _request(
        self,
        kind: int,
        payload: bytes,
        data: bytes | None = None,
        lazy: bool = False,
        asked: int = 0,
    ) -> Deferred[Any]:
        """
        Send a request (``data``, if any, follows ``payload`` without being copied); a
        ``lazy`` one is held back until the next request or for ``LAZY_DELAY`` at most;
        ``asked`` is the most a READ may be answered with.
        """
        if self._dead is not None:
            return defer.fail(self._dead.value)
        transport = self.transport
        if not self.connected or transport is None:
            return defer.fail(ConnectionLost("SFTP connection is closed"))
        rid = self._nextId
        packet = HDR.pack(len(payload) + (len(data) if data else 0) + 5, kind, rid) + payload
        if lazy:
            self._held.append(packet)
            if self._heldCall is None:
                self._heldCall = self._clock.callLater(LAZY_DELAY, self._sendHeld)
        elif data is None:
            self._send([packet])
        else:
            self._send([packet, data])
        # Registered only once sent: a request that could not be sent is not waited for.
        self._nextId = (rid + 1) & 0xFFFFFFFF
        d: Deferred[Any] = Deferred()
        self._pending[rid] = (d, self._clock.seconds() + self.timeout, kind, asked)
        if self._deadlineCall is None:
            self._deadlineCall = self._clock.callLater(self.timeout, self._checkDeadline)
        return d

    def _sendHeld(self) -> None:
        self._heldCall = None
        if self._held and self._dead is None and self.transport is not None:
            self._send([])

    def _send(self, parts: list[bytes | memoryview]) -> None:
        """
        Send ``parts`` in order: straight to the socket while nothing is queued before them.

        A request waits for no reactor turn (and costs no poller updates) that way, which is
        most of a small request's cost here; the big parts of a WRITE are not copied either.
        Only what the socket does not take goes through the transport's buffer, and errors are
        left to the transport (a send it cannot do is retried there, and fails there).
        """
        # typing note: a tcp.Connection when _direct, and any ITransport otherwise.
        transport: Any = self.transport
        assert transport is not None
        if self._held:
            # Held requests were numbered first: they go first.
            parts = [*self._held, *parts]
            self._held = []
        if self._direct and nothing_queued(transport):
            try:
                sent = transport.socket.sendmsg(parts)
            except OSError:
                sent = 0
            if sent:
                while parts and sent >= len(parts[0]):
                    sent -= len(parts[0])
                    parts = parts[1:]
                if sent:
                    parts = [parts[0][sent:], *parts[1:]]
        if len(parts) == 1:
            transport.write(bytes(parts[0]))
        elif parts:
            transport.writeSequence([bytes(p) for p in parts])

    def _sendRequest(self, msg: int, data: bytes) -> Deferred[Any]:
        # Conch's convenience methods route here; their results are this class's typed ones.
        return self._request(msg, data)

    @property
    def pendingCount(self) -> int:
        return len(self._pending)

    def hasExtension(self, name: bytes) -> bool:
        return name in self.extensions

    def _extended(self, name: bytes, payload: bytes, lazy: bool = False) -> Deferred[Any]:
        return self._request(ft.FXP_EXTENDED, ns(name) + payload, lazy=lazy)
