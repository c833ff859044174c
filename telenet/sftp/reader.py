"""
The packets-in half of ``SFTPChannel``: framing of the server's byte stream, dispatch of each
answer to the request it is for, and the VERSION handshake.

A mixin rather than a collaborator: it works on the channel's request table, its dead flag
and its timers as tightly as the sending side does, so it shares the object and lives in its
own module to keep each class small.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from twisted.conch.ssh import filetransfer as ft
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from telenet.sftp.codec import MAX_CHUNK, U32, Malformed, ns, parse_attrs, parse_names, parse_string
from telenet.sftp.errors import ConnectionDead, SFTPStatusError

__all__ = ["BIG_PACKET", "MAX_PACKET", "MIN_CHUNK", "PacketReader"]

# The namespace these lines had before the client was split (twistd prints it).
log = Logger(namespace="telenet.sftp.client")

#: Packets at least this long (READ answers) are gathered in pieces, not in a buffer.
BIG_PACKET = 1 << 16
#: A server packet declared longer than this ends the connection: it would have to be
#: buffered whole (OpenSSH's own limit is 256 KiB; our READs ask for at most ``MAX_CHUNK``).
MAX_PACKET = 1 << 20
#: The smallest read and write sizes a server's ``limits@openssh.com`` may set: a smaller one
#: would turn one read-ahead window into millions of requests.
MIN_CHUNK = 4096

_LEN_TYPE = struct.Struct("!LB")

#: What each request is answered with, besides STATUS (an error, or OK where nothing else
#: is expected). EXTENDED requests may get either.
_ANSWERS = {
    ft.FXP_OPEN: ft.FXP_HANDLE,
    ft.FXP_OPENDIR: ft.FXP_HANDLE,
    ft.FXP_READ: ft.FXP_DATA,
    ft.FXP_STAT: ft.FXP_ATTRS,
    ft.FXP_LSTAT: ft.FXP_ATTRS,
    ft.FXP_FSTAT: ft.FXP_ATTRS,
    ft.FXP_READDIR: ft.FXP_NAME,
    ft.FXP_REALPATH: ft.FXP_NAME,
    ft.FXP_READLINK: ft.FXP_NAME,
    ft.FXP_EXTENDED: ft.FXP_EXTENDED_REPLY,
}


class PacketReader:
    """
    I read an SFTP v3 server's packets and answer the pending requests with typed results.

    A mixin for ``SFTPChannel`` (which must come before ``ft.FileTransferClient`` in the
    bases, so that this ``dataReceived`` replaces Conch's parser). It relies on the channel's
    attributes ``_clock``, ``_buf``, ``_pieces``, ``_need``, ``_pending``, ``_dead``,
    ``_lastReceived``, ``_versioned``, ``_openSSHSymlink``, ``_deadlineCall``,
    ``_keepaliveCall``, ``keepaliveInterval``, ``ready``, ``extensions``, ``serverVersion``,
    ``maxRead`` and ``maxWrite``, and on its methods ``abort``, ``_request`` and
    ``_keepalive``.
    """

    _clock: IReactorTime
    keepaliveInterval: float
    ready: Deferred[Any]
    extensions: dict[bytes, bytes]
    serverVersion: int
    maxRead: int
    maxWrite: int
    _buf: bytearray
    _pieces: list[bytes | memoryview]
    _need: int
    _pending: dict[int, tuple[Deferred[Any], float, int, int]]
    _deadlineCall: IDelayedCall | None
    _keepaliveCall: IDelayedCall | None
    _lastReceived: float
    _versioned: bool
    _dead: Failure | None
    _openSSHSymlink: bool

    if TYPE_CHECKING:

        def abort(self, reason: str = "aborted") -> None: ...

        def _keepalive(self) -> None: ...

        def _request(
            self,
            kind: int,
            payload: bytes,
            data: bytes | None = None,
            lazy: bool = False,
            asked: int = 0,
        ) -> Deferred[Any]: ...

    # -- packets in ----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        # Copy-light: complete packets are parsed where they arrived (READ data is handed on
        # as a view of the received bytes), a big packet split across reads is gathered in
        # pieces and joined once, and only small leftovers go through the bytearray. A packet
        # declared longer than MAX_PACKET ends the connection before anything is gathered.
        if self._dead is not None:
            return  # aborted: whatever still arrives is dropped, not buffered
        self._lastReceived = self._clock.seconds()
        source: bytes | memoryview | bytearray = data
        if self._need:
            take = min(self._need, len(data))
            self._pieces.append(data if take == len(data) else memoryview(data)[:take])
            self._need -= take
            if self._need:
                return
            packet = b"".join(self._pieces)
            self._pieces = []
            self._parse(packet, len(packet))
            if take == len(data):
                return
            source = memoryview(data)[take:]
        buf = self._buf
        if buf:
            buf += source
            source = buf
        end = len(source)
        pos = self._parse(source, end)
        rest = end - pos
        if rest >= 4 and self._dead is None:
            (length,) = U32.unpack_from(source, pos)
            if not 5 <= length <= MAX_PACKET:
                self._badLength(length)
                return
            if length >= BIG_PACKET:
                # Most of a READ answer: gather it in pieces (see above).
                if source is buf:
                    with memoryview(buf) as view:  # released before the buffer changes
                        self._pieces = [view[pos:].tobytes()]
                    buf.clear()
                else:
                    self._pieces = [memoryview(source)[pos:]]
                self._need = 4 + length - rest
                return
        if self._dead is not None:
            buf.clear()
        elif source is buf:
            if pos:
                del buf[:pos]
        elif rest:
            buf += memoryview(source)[pos:]

    def _badLength(self, length: int) -> None:
        self._buf.clear()
        self._pieces = []
        self._need = 0
        self.abort(f"malformed SFTP packet: declared length {length}")

    def _parse(self, buf: bytes | memoryview | bytearray, end: int) -> int:
        """Dispatch the complete packets in ``buf[:end]``; return where the rest starts."""
        pos = 0
        while end - pos >= 9 and self._dead is None:
            length, kind = _LEN_TYPE.unpack_from(buf, pos)
            if not 5 <= length <= MAX_PACKET:
                self._badLength(length)
                break
            stop = pos + 4 + length
            if stop > end:
                break
            try:
                self._dispatch(kind, buf, pos + 5, stop)
            except Exception as e:
                # The server does not speak SFTP as we do: nothing it sends can be trusted.
                self.abort(f"malformed SFTP packet of type {kind}: {e}")
            pos = stop
        return pos

    def _dispatch(
        self, kind: int, buf: bytes | memoryview | bytearray, pos: int, stop: int
    ) -> None:
        """
        Answer the request ``buf[pos:stop]`` is for; raise if it is malformed or answers
        something that was not asked (that request is failed first, the caller aborts).
        """
        if kind == ft.FXP_VERSION:
            if self._versioned:
                raise Malformed("a second VERSION")
            self._versioned = True
            self._gotVersion(bytes(buf[pos:stop]))
            return
        if stop - pos < 4:
            raise Malformed("no request id")
        (rid,) = U32.unpack_from(buf, pos)
        entry = self._pending.pop(rid, None)
        if entry is None:
            raise Malformed(f"an answer to request {rid}, which was not asked")
        d, _, sent, asked = entry
        try:
            self._answer(d, kind, sent, asked, buf, pos + 4, stop)
        except Exception as e:
            name = ft.FileTransferBase.packetTypes.get(sent, str(sent))
            d.errback(ConnectionDead(f"malformed SFTP answer to {name}: {e}"))
            raise

    def _answer(
        self,
        d: Deferred[Any],
        kind: int,
        sent: int,
        asked: int,
        buf: bytes | memoryview | bytearray,
        pos: int,
        stop: int,
    ) -> None:
        expected = _ANSWERS.get(sent)
        if kind == ft.FXP_STATUS:
            if pos + 4 > stop:
                raise Malformed("a STATUS without its code")
            (code,) = U32.unpack_from(buf, pos)
            if code == ft.FX_OK:
                if expected is not None and sent != ft.FXP_EXTENDED:
                    raise Malformed("STATUS OK where an answer with data is due")
                d.callback(None)
                return
            message = b""
            if stop - pos >= 8:  # a message that runs past the packet is cut, not fatal
                (n,) = U32.unpack_from(buf, pos + 4)
                message = bytes(buf[pos + 8 : min(pos + 8 + n, stop)])
            if code == ft.FX_EOF and sent == ft.FXP_READ:
                d.callback(b"")
            elif code == ft.FX_EOF and sent == ft.FXP_READDIR:
                d.callback([])
            else:
                name = ft.FileTransferBase.packetTypes.get(sent, str(sent))
                d.errback(SFTPStatusError(code, message.decode("utf-8", "replace"), name))
            return
        if kind != expected:
            name = ft.FileTransferBase.packetTypes.get(kind, str(kind))
            raise Malformed(f"a {name} packet")
        if kind == ft.FXP_DATA:
            (n,) = U32.unpack_from(buf, pos)
            if pos + 4 + n > stop or n > asked:
                raise Malformed(f"{n} bytes of DATA for {asked} asked in {stop - pos - 4}")
            if isinstance(buf, bytearray):  # reused for what comes next: copy
                with memoryview(buf) as view:
                    d.callback(view[pos + 4 : pos + 4 + n].tobytes())
            else:  # immutable: a view, no copy
                d.callback(memoryview(buf)[pos + 4 : pos + 4 + n])
        elif kind == ft.FXP_HANDLE:
            d.callback(parse_string(buf, pos, stop)[0])
        elif kind == ft.FXP_ATTRS:
            d.callback(parse_attrs(buf, pos, stop)[0])
        elif kind == ft.FXP_NAME:
            (count,) = U32.unpack_from(buf, pos)
            pos += 4
            if count * 12 > stop - pos:  # each entry is at least two strings and flags
                raise Malformed(f"NAME with {count} entries in {stop - pos} bytes")
            d.callback(parse_names(buf, pos, stop, count))
        else:  # EXTENDED_REPLY
            d.callback(bytes(buf[pos:stop]))

    def _gotVersion(self, data: bytes) -> None:
        if len(data) < 4:
            raise Malformed("a VERSION without a version")
        (self.serverVersion,) = U32.unpack_from(data, 0)
        pos = 4
        while pos < len(data):
            name, pos = parse_string(data, pos)
            value, pos = parse_string(data, pos)
            self.extensions[name] = value
        # OpenSSH (and servers copying it, like Go's pkg/sftp) swapped SYMLINK's arguments;
        # announcing OpenSSH extensions is the usual sign of that camp.
        self._openSSHSymlink = any(n.endswith(b"@openssh.com") for n in self.extensions)
        self.gotServerVersion(self.serverVersion, dict(self.extensions))
        if b"limits@openssh.com" in self.extensions:
            self._request(ft.FXP_EXTENDED, ns(b"limits@openssh.com")).addCallbacks(
                self._gotLimits, lambda f: None
            ).addBoth(self._becomeReady)
        else:
            self._becomeReady(None)

    def _gotLimits(self, reply: bytes) -> None:
        _, maxRead, maxWrite, _ = struct.unpack_from("!QQQQ", reply, 0)
        if maxRead:
            self.maxRead = max(MIN_CHUNK, min(MAX_CHUNK, maxRead))
        if maxWrite:
            self.maxWrite = max(MIN_CHUNK, min(MAX_CHUNK, maxWrite))

    def _becomeReady(self, _: object) -> None:
        if self._dead is not None or self.ready.called:
            return
        if self._deadlineCall is not None and not self._pending:
            self._deadlineCall.cancel()
            self._deadlineCall = None
        self._keepaliveCall = self._clock.callLater(self.keepaliveInterval, self._keepalive)
        self.ready.callback(self)

    def gotServerVersion(self, serverVersion: int, extData: dict[bytes, bytes]) -> None:
        log.debug(
            "SFTP server version {version}, extensions {extensions}",
            version=serverVersion,
            extensions=sorted(n.decode("ascii", "replace") for n in extData),
        )
