"""
Tests for ``telenet.sftp.client``: the protocol against a real Conch ``FileTransferServer`` over
iosim, deadlines and keepalives on a ``task.Clock``, the read-ahead window, the pipelined
writer and the reconnecting manager.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path
from typing import Any

import pytest
from twisted.conch.ssh import filetransfer as ft
from twisted.internet import defer, task
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from telenet.sftp.channel import LAZY_DELAY
from telenet.sftp.client import SFTPClient
from telenet.sftp.codec import FAKE_STATVFS, MAX_CHUNK, FileAttrs, pack_attrs, parse_attrs
from telenet.sftp.connection import SFTPConnectionManager
from telenet.sftp.errors import (
    ConnectionDead,
    SFTPNotConnected,
    SFTPStatusError,
    error_to_errno,
    status_errno,
)
from telenet.sftp.transfer import PipelinedWriter, ReadAhead, ReadBudget
from tests.helpers import failure_of, result_of
from tests.sftpfakes import ConchRootedServer, SFTPPair


def _packet(kind: int, body: bytes) -> bytes:
    return struct.pack("!LB", len(body) + 1, kind) + body


def _ns(data: bytes) -> bytes:
    return struct.pack("!L", len(data)) + data


def _version(ext: dict[bytes, bytes] | None = None) -> bytes:
    body = struct.pack("!L", 3) + b"".join(_ns(k) + _ns(v) for k, v in (ext or {}).items())
    return _packet(ft.FXP_VERSION, body)


def _requests(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, request id, body) of each packet a client wrote (INIT has no id)."""
    out = []
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack_from("!L", data, pos)
        kind = data[pos + 4]
        if kind == ft.FXP_INIT:
            out.append((kind, -1, data[pos + 5 : pos + 4 + length]))
        else:
            (rid,) = struct.unpack_from("!L", data, pos + 5)
            out.append((kind, rid, data[pos + 9 : pos + 4 + length]))
        pos += 4 + length
    return out


@implementer(ITCPTransport)
class _TCPStringTransport(StringTransport):
    nodelay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled


def _client_on_string(
    timeout: float = 10.0, keepalive: float = 5.0
) -> tuple[SFTPClient, _TCPStringTransport, task.Clock]:
    clock = task.Clock()
    client = SFTPClient(clock, timeout=timeout, keepalive=keepalive)
    transport = _TCPStringTransport()
    client.makeConnection(transport)
    return client, transport, clock


def _ready_client(**kw: Any) -> tuple[SFTPClient, _TCPStringTransport, task.Clock]:
    client, transport, clock = _client_on_string(**kw)
    client.dataReceived(_version())
    assert result_of(client.ready) is client
    transport.clear()
    return client, transport, clock


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "file").write_bytes(b"hello world")
    (tmp_path / "big").write_bytes(os.urandom(3 * 1024 * 1024 + 12345))
    return tmp_path


@pytest.fixture
def pair(tree: Path) -> SFTPPair:
    p = SFTPPair(str(tree))
    assert p.wait(p.client.ready) is p.client
    return p


# -- handshake ---------------------------------------------------------------------------------


def test_connection_sends_init_and_turns_nagle_off() -> None:
    """The client speaks first with FXP_INIT version 3 and sets TCP_NODELAY."""
    client, transport, _ = _client_on_string()
    ((kind, _, body),) = _requests(transport.value())
    assert kind == ft.FXP_INIT and body == struct.pack("!L", 3)
    assert transport.nodelay is True
    assert not client.ready.called


def test_ready_keeps_extensions_and_asks_for_limits() -> None:
    """VERSION's extensions are kept; limits@openssh.com caps the read and write sizes."""
    client, transport, _ = _client_on_string()
    transport.clear()
    client.dataReceived(_version({b"limits@openssh.com": b"1", b"posix-rename@openssh.com": b"1"}))
    assert not client.ready.called, "ready waits for the limits answer"
    ((kind, rid, body),) = _requests(transport.value())
    assert kind == ft.FXP_EXTENDED and body == _ns(b"limits@openssh.com")
    client.dataReceived(
        _packet(ft.FXP_EXTENDED_REPLY, struct.pack("!LQQQQ", rid, 34000, 32768, 16384, 64))
    )
    assert result_of(client.ready) is client
    assert client.maxRead == 32768 and client.maxWrite == 16384
    assert b"posix-rename@openssh.com" in client.extensions


def test_no_version_in_time_fails_ready_and_aborts() -> None:
    """A server that never answers INIT is given up after the deadline."""
    client, transport, clock = _client_on_string(timeout=3)
    clock.advance(2.9)
    assert not client.ready.called
    clock.advance(0.2)
    assert failure_of(client.ready).check(ConnectionDead)
    assert transport.disconnected  # StringTransport's abortConnection


# -- operations against Conch's server --------------------------------------------------------


def test_stat_lstat_and_listdir(pair: SFTPPair, tree: Path) -> None:
    """Attributes come back typed; listings carry attributes and leave out . and .."""
    os.symlink("dir/file", tree / "link")
    c = pair.client
    a = pair.wait(c.stat(b"/dir/file"))
    assert isinstance(a, FileAttrs) and a.size == 11 and stat.S_ISREG(a.permissions or 0)
    assert stat.S_ISLNK(pair.wait(c.lstat(b"/link")).permissions or 0)
    assert pair.wait(c.stat(b"/link")).size == 11
    names = {e.filename: e.attrs for e in pair.wait(c.listdir(b"/"))}
    assert set(names) == {b"dir", b"big", b"link"}
    assert stat.S_ISDIR(names[b"dir"].permissions or 0)


def test_file_round_trip(pair: SFTPPair, tree: Path) -> None:
    """open/write/read/fstat/close; a read past the end gives b""."""
    c = pair.client
    h = pair.wait(
        c.open(b"/new", ft.FXF_WRITE | ft.FXF_CREAT | ft.FXF_TRUNC, FileAttrs(permissions=0o600))
    )
    pair.wait(c.write(h, 0, b"abc"))
    pair.wait(c.write(h, 3, b"defg"))
    assert pair.wait(c.fstat(h)).size == 7
    pair.wait(c.close(h))
    assert (tree / "new").read_bytes() == b"abcdefg"
    assert stat.S_IMODE((tree / "new").stat().st_mode) == 0o600
    h = pair.wait(c.open(b"/new", ft.FXF_READ))
    assert pair.wait(c.read(h, 2, 100)) == b"cdefg"
    assert pair.wait(c.read(h, 7, 100)) == b""


def test_setstat_is_path_based(pair: SFTPPair, tree: Path) -> None:
    """setstat changes mode and times through SETSTAT on the path (Conch ignores size)."""
    c = pair.client
    pair.wait(c.setstat(b"/dir/file", FileAttrs(permissions=0o640, atime=1000000, mtime=2000000)))
    st = (tree / "dir" / "file").stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert int(st.st_mtime) == 2000000 and int(st.st_atime) == 1000000


def test_attributes_round_trip() -> None:
    """Every attribute survives packing and parsing; half pairs are left out."""
    full = FileAttrs(size=1 << 40, uid=1, gid=2, permissions=0o100644, atime=3, mtime=4)
    assert parse_attrs(pack_attrs(full), 0) == (full, len(pack_attrs(full)))
    assert parse_attrs(pack_attrs(FileAttrs(uid=1, atime=3)), 0)[0] == FileAttrs()
    assert pack_attrs(None) == b"\0\0\0\0"


def test_fsetstat_sends_fsetstat_not_fstat() -> None:
    """Unlike Conch's ClientFile.setAttrs, fsetstat really sends FXP_FSETSTAT."""
    client, transport, _ = _ready_client()
    client.fsetstat(b"H", FileAttrs(size=0))
    ((kind, _, body),) = _requests(transport.value())
    assert kind == ft.FXP_FSETSTAT and body.startswith(_ns(b"H"))


def test_directory_and_name_operations(pair: SFTPPair, tree: Path) -> None:
    """mkdir, rename, symlink (draft order for a server without OpenSSH extensions), rmdir."""
    c = pair.client
    pair.wait(c.mkdir(b"/d2", FileAttrs(permissions=0o700)))
    assert (tree / "d2").is_dir()
    pair.wait(c.rename(b"/dir/file", b"/d2/moved"))
    assert (tree / "d2" / "moved").read_bytes() == b"hello world"
    pair.wait(c.symlink(b"/d2/ln", b"moved"))
    assert os.readlink(tree / "d2" / "ln") == "moved"
    assert pair.wait(c.readlink(b"/d2/ln")) == b"moved"
    assert pair.wait(c.realpath(b"/d2/../dir")) == b"/dir"
    pair.wait(c.remove(b"/d2/ln"))
    pair.wait(c.remove(b"/d2/moved"))
    pair.wait(c.rmdir(b"/d2"))
    assert not (tree / "d2").exists()


def test_symlink_uses_openssh_order_when_server_is_openssh_like() -> None:
    """A server announcing @openssh.com extensions gets SYMLINK as (target, link)."""
    client, transport, _ = _client_on_string()
    client.dataReceived(_version({b"posix-rename@openssh.com": b"1"}))
    transport.clear()
    client.symlink(b"/link", b"target")
    ((kind, _, body),) = _requests(transport.value())
    assert kind == ft.FXP_SYMLINK and body == _ns(b"target") + _ns(b"/link")


def test_extensions_missing_fall_back(pair: SFTPPair) -> None:
    """No statvfs@openssh.com: made-up numbers; no fsync@openssh.com: nothing to do."""
    c = pair.client
    assert pair.wait(c.statvfs(b"/")) == FAKE_STATVFS
    assert pair.wait(c.fsync(b"whatever")) is None
    err = pair.error(c.hardlink(b"/a", b"/b"))
    assert isinstance(err, SFTPStatusError) and err.errno == errno.ENOTSUP
    assert not c.canNoReplaceRename and not c.canFsync


def test_rename_prefers_posix_rename() -> None:
    """With posix-rename@openssh.com, an overwriting rename goes through it."""
    client, transport, _ = _client_on_string()
    client.dataReceived(_version({b"posix-rename@openssh.com": b"1"}))
    transport.clear()
    client.rename(b"/a", b"/b")
    client.rename(b"/a", b"/b", overwrite=False)
    (k1, _, b1), (k2, _, b2) = _requests(transport.value())
    assert k1 == ft.FXP_EXTENDED and b1 == _ns(b"posix-rename@openssh.com") + _ns(b"/a") + _ns(
        b"/b"
    )
    assert k2 == ft.FXP_RENAME


def test_errors_are_typed_with_errno(pair: SFTPPair, tree: Path) -> None:
    """A missing path is ENOENT; FX_FAILURE uses the operation's likely errno."""
    c = pair.client
    err = pair.error(c.stat(b"/nope"))
    assert isinstance(err, SFTPStatusError) and err.errno == errno.ENOENT
    assert "STAT" in str(err)
    err = pair.error(c.rmdir(b"/dir"))  # not empty: Conch says only "failure"
    assert error_to_errno(err, errno.ENOTEMPTY) == errno.ENOTEMPTY


def test_status_errno_table() -> None:
    """Codes map to errnos; FX_FAILURE messages with errno text are understood."""
    assert status_errno(ft.FX_PERMISSION_DENIED, "") == errno.EACCES
    assert status_errno(ft.FX_OP_UNSUPPORTED, "") == errno.ENOTSUP
    assert status_errno(18, "") == errno.ENOTEMPTY
    assert status_errno(ft.FX_FAILURE, "[Errno 39] Directory not empty: 'x'") == 39
    assert status_errno(ft.FX_FAILURE, "mkdir /x: file exists") == errno.EEXIST
    assert status_errno(ft.FX_FAILURE, "Failure") == errno.EIO
    assert status_errno(ft.FX_FAILURE, "Failure", errno.ENOTEMPTY) == errno.ENOTEMPTY
    # Statuses that fold several errnos: strerror() text (sftp-agent's) tells them apart,
    # OpenSSH's fixed texts give the first.
    assert status_errno(ft.FX_NO_SUCH_FILE, "No such file") == errno.ENOENT
    assert status_errno(ft.FX_NO_SUCH_FILE, "Not a directory") == errno.ENOTDIR
    assert status_errno(ft.FX_NO_SUCH_FILE, "Too many levels of symbolic links") == errno.ELOOP
    assert status_errno(ft.FX_PERMISSION_DENIED, "Permission denied") == errno.EACCES
    assert status_errno(ft.FX_PERMISSION_DENIED, "Operation not permitted") == errno.EPERM
    assert status_errno(ft.FX_BAD_MESSAGE, "Bad message") == errno.EINVAL
    assert status_errno(ft.FX_BAD_MESSAGE, "File name too long") == errno.ENAMETOOLONG
    assert error_to_errno(SFTPNotConnected("x")) == errno.ENOTCONN
    assert error_to_errno(ConnectionDead("x")) == errno.EIO


# -- deadlines and keepalive ---------------------------------------------------------------------


def test_request_past_deadline_kills_connection_and_fails_everything() -> None:
    """One late answer aborts the transport and fails every pending request at once."""
    client, transport, clock = _ready_client(timeout=10)
    pending = [client.stat(b"/a"), client.read(b"H", 0, 10), client.write(b"H", 0, b"x")]
    clock.advance(9.9)
    assert not any(d.called for d in pending)
    clock.advance(0.2)
    for d in pending:
        assert failure_of(d).check(ConnectionDead, ConnectionLost)
    assert transport.disconnected
    assert not client.alive
    assert failure_of(client.stat(b"/b")).check(ConnectionLost), "later requests fail at once"


def test_each_request_gets_its_own_deadline() -> None:
    """Answered requests do not count; a later request is timed from when it was sent."""
    client, transport, clock = _ready_client(timeout=10)
    first = client.lstat(b"/a")
    clock.advance(5)
    ((_, rid, _),) = _requests(transport.value())
    client.dataReceived(
        _packet(ft.FXP_STATUS, struct.pack("!LL", rid, ft.FX_NO_SUCH_FILE) + _ns(b"no") + _ns(b""))
    )
    assert failure_of(first).check(SFTPStatusError)
    second = client.lstat(b"/b")
    clock.advance(6)  # first's deadline is past, second's is not
    assert client.alive and not second.called
    clock.advance(4.1)
    assert failure_of(second).check(ConnectionDead)


def test_keepalive_when_idle_and_dead_when_unanswered() -> None:
    """Idle for the keepalive interval: a cheap LSTAT; no answer within the deadline: dead."""
    client, transport, clock = _ready_client(timeout=10, keepalive=5)
    clock.advance(4.9)
    assert transport.value() == b""
    clock.advance(0.2)
    ((kind, rid, _),) = _requests(transport.value())
    assert kind == ft.FXP_LSTAT
    client.dataReceived(
        _packet(ft.FXP_STATUS, struct.pack("!LL", rid, ft.FX_NO_SUCH_FILE) + _ns(b"") + _ns(b""))
    )
    transport.clear()
    clock.advance(5.1)
    assert len(_requests(transport.value())) == 1, "the next keepalive"
    clock.advance(10)
    assert not client.alive and transport.disconnected


def test_connection_lost_fails_pending_and_tells_observers() -> None:
    """A dropped connection fails pending requests with ConnectionLost and notifies."""
    client, transport, _ = _ready_client()
    seen: list[Failure] = []
    client.lostObservers.append(seen.append)
    d = client.stat(b"/x")
    client.connectionLost(Failure(ConnectionLost("gone")))
    assert failure_of(d).check(ConnectionLost)
    assert len(seen) == 1 and not client.alive


# -- read-ahead ------------------------------------------------------------------------------


def _read_all(pair: SFTPPair, reader: ReadAhead, size: int, step: int) -> bytes:
    out = []
    off = 0
    while True:
        got = reader.read(off, step)
        data = pair.wait(got) if isinstance(got, defer.Deferred) else got
        if not data:
            return b"".join(out)
        out.append(data)
        off += len(data)
        assert reader.bufferedBytes <= 1024 * 1024 + MAX_CHUNK + step


def test_read_ahead_reads_a_file_in_order(pair: SFTPPair, tree: Path) -> None:
    """Sequential reads get the file exactly; the window stays bounded."""
    h = pair.wait(pair.client.open(b"/big", ft.FXF_READ))
    reader = ReadAhead(pair.client, h, window=1024 * 1024, initial=256 * 1024)
    assert _read_all(pair, reader, 0, 128 * 1024) == (tree / "big").read_bytes()


def test_read_ahead_keeps_many_reads_in_flight(pair: SFTPPair) -> None:
    """A sequential reader has the window's worth of READs outstanding."""
    h = pair.wait(pair.client.open(b"/big", ft.FXF_READ))
    reader = ReadAhead(pair.client, h, chunk=64 * 1024, window=1024 * 1024, initial=512 * 1024)
    reader.read(0, 65536)
    assert pair.client.pendingCount == (65536 + 512 * 1024) // 65536
    pair.pump.flush()
    reader.read(65536, 65536)  # sequential: the window grows to 1 MiB past this read
    assert reader.bufferedBytes == 65536 + 1024 * 1024
    assert pair.client.pendingCount == (2 * 65536 + 1024 * 1024 - 9 * 65536) // 65536


class _ShortReads(ConchRootedServer):
    """A server that never returns more than 1000 bytes per READ."""

    def openFile(self, filename: bytes, flags: int, attrs: dict[str, Any]) -> Any:
        f = super().openFile(filename, flags, attrs)
        read = f.readChunk
        f.readChunk = lambda offset, length: read(offset, min(length, 1000))
        return f


def test_read_ahead_rerequests_short_reads(tree: Path) -> None:
    """Short answers are not EOF: the rest is asked for until the chunk is whole."""
    pair = SFTPPair(str(tree), avatar=_ShortReads(str(tree)))
    pair.wait(pair.client.ready)
    h = pair.wait(pair.client.open(b"/big", ft.FXF_READ))
    reader = ReadAhead(pair.client, h, chunk=50000, window=200000, initial=100000)
    assert _read_all(pair, reader, 0, 65536) == (tree / "big").read_bytes()


def test_read_ahead_random_access(pair: SFTPPair, tree: Path) -> None:
    """Seeks drop the window; reads behind it and past EOF are still right."""
    data = (tree / "big").read_bytes()
    h = pair.wait(pair.client.open(b"/big", ft.FXF_READ))
    reader = ReadAhead(pair.client, h, window=1024 * 1024)
    for off, n in [
        (0, 4096),
        (4096, 4096),
        (2_000_000, 100),
        (100, 50),
        (len(data) - 10, 4096),
        (len(data) + 5, 10),
        (1_000_000, 300_000),
    ]:
        got = reader.read(off, n)
        assert (pair.wait(got) if isinstance(got, defer.Deferred) else got) == data[off : off + n]
    reader.reset()
    assert reader.bufferedBytes == 0


def test_read_ahead_error_fails_the_read_and_resets() -> None:
    """A failed READ fails the read that needed it and drops the window."""
    client, transport, clock = _ready_client()
    reader = ReadAhead(client, b"H", chunk=1000, window=4000, initial=2000)
    d = reader.read(0, 500)
    assert not isinstance(d, bytes)
    client.connectionLost(Failure(ConnectionLost("gone")))
    assert failure_of(d).check(ConnectionLost)
    assert reader.bufferedBytes == 0


# -- pipelined writes ----------------------------------------------------------------------------


def test_writer_does_not_wait_for_answers_until_window_full() -> None:
    """Writes go out at once; only a full window makes the writer wait."""
    client, transport, _ = _ready_client()
    writer = PipelinedWriter(client, b"H", maxInFlight=3 * MAX_CHUNK)
    assert writer.write(0, b"x" * MAX_CHUNK) is None
    assert writer.write(MAX_CHUNK, b"x" * (2 * MAX_CHUNK + 10)) is not None
    sent = _requests(transport.value())
    assert [k for k, _, _ in sent] == [ft.FXP_WRITE] * 4
    assert writer.inFlight == 3 * MAX_CHUNK + 10
    flushed = writer.flush()
    for _, rid, _ in sent[:3]:
        client.dataReceived(
            _packet(ft.FXP_STATUS, struct.pack("!LL", rid, ft.FX_OK) + _ns(b"") + _ns(b""))
        )
    assert not flushed.called
    client.dataReceived(
        _packet(ft.FXP_STATUS, struct.pack("!LL", sent[3][1], ft.FX_OK) + _ns(b"") + _ns(b""))
    )
    assert result_of(flushed) is None and writer.inFlight == 0


def test_writer_error_surfaces_on_next_write_and_flush(pair: SFTPPair) -> None:
    """A failed WRITE is never dropped: the next write and every flush raise it."""
    c = pair.client
    h = pair.wait(c.open(b"/dir/file", ft.FXF_READ))  # writes to it will fail
    writer = PipelinedWriter(c, h)
    assert writer.write(0, b"data") is None
    pair.pump.flush()
    assert writer.error is not None
    with pytest.raises(SFTPStatusError):
        writer.write(4, b"more")
    assert pair.error(writer.flush())
    assert pair.error(writer.flush()), "still reported"


def test_writer_on_dead_connection_raises() -> None:
    """Writing after the connection died raises at once."""
    client, transport, _ = _ready_client()
    client.abort("test")
    writer = PipelinedWriter(client, b"H")
    with pytest.raises(ConnectionLost):
        writer.write(0, b"x")


# -- the connection manager ----------------------------------------------------------------------


@implementer(ITCPTransport)
class _Endpoint:
    """Connects each attempt to a fresh Conch server over iosim, or refuses."""

    def __init__(self, root: str, clock: task.Clock) -> None:
        self.root = root
        self.clock = clock
        self.refuse = False
        self.attempts = 0
        self.pumps: list[iosim.IOPump] = []
        self.clients: list[SFTPClient] = []

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        self.attempts += 1
        if self.refuse:
            return defer.fail(ConnectionRefusedError())
        client = factory.buildProtocol(None)
        server = ft.FileTransferServer(avatar=ConchRootedServer(self.root))
        pump = iosim.connect(
            server,
            iosim.makeFakeServer(server),
            client,
            iosim.makeFakeClient(client),
            greet=False,
            clock=self.clock,
        )
        pump.flush()
        self.pumps.append(pump)
        self.clients.append(client)
        return defer.succeed(client)


def _manager(tree: Path) -> tuple[SFTPConnectionManager, _Endpoint, task.Clock]:
    clock = task.Clock()
    endpoint = _Endpoint(str(tree), clock)
    manager = SFTPConnectionManager(
        endpoint,
        clock,
        timeout=10,
        keepalive=5,
        retryPolicy=lambda n: 2.0 * max(n, 1),
        label="srv:22",
    )
    return manager, endpoint, clock


def test_manager_connects_and_hands_out_the_connection(tree: Path) -> None:
    """Once connected, connection() answers at once with the live client."""
    manager, endpoint, clock = _manager(tree)
    waiting = manager.whenConnected()
    seen: list[bool] = []
    manager.addObserver(seen.append)
    manager.start()
    client = result_of(waiting)
    assert result_of(manager.connection()) is client is manager.current()
    assert manager.connected and seen == [True]


def test_manager_fails_fast_while_disconnected_then_reconnects(tree: Path) -> None:
    """After a loss, callers get SFTPNotConnected at once; the manager reconnects by itself."""
    manager, endpoint, clock = _manager(tree)
    manager.start()
    first = manager.current()
    endpoint.refuse = True
    first.transport.loseConnection()
    endpoint.pumps[0].flush()
    assert not manager.connected
    err = failure_of(manager.connection()).value
    assert isinstance(err, SFTPNotConnected) and "srv:22 is not connected" in str(err)
    clock.advance(2.0)  # retryPolicy(0) → refused
    assert endpoint.attempts == 2 and not manager.connected
    endpoint.refuse = False
    clock.advance(2.0)  # retryPolicy(1)
    assert endpoint.attempts == 3
    assert manager.connected and manager.current() is not first
    assert manager.since == clock.seconds()


def test_manager_declares_dead_connection_and_reconnects(tree: Path) -> None:
    """A server that stops answering is dropped after the deadline, then reconnected to."""
    manager, endpoint, clock = _manager(tree)
    manager.start()
    client = manager.current()
    endpoint.pumps[0].server.dataReceived = lambda data: None  # the server hangs
    d = client.stat(b"/")
    endpoint.pumps[0].flush()
    clock.advance(10.1)
    assert failure_of(d).check(ConnectionDead)
    endpoint.pumps[0].flush()  # deliver the abort
    assert not manager.connected
    clock.advance(2.0)
    assert manager.connected and manager.current() is not client


def test_manager_when_connected_can_give_up(tree: Path) -> None:
    """whenConnected(failAfterFailures=1) fails with the reason after one failed attempt."""
    manager, endpoint, clock = _manager(tree)
    endpoint.refuse = True
    d = manager.whenConnected(failAfterFailures=1)
    forever = manager.whenConnected()
    manager.start()
    err = failure_of(d).value
    assert isinstance(err, SFTPNotConnected) and "refused" in str(err).lower()
    assert not forever.called
    manager.stop()
    assert failure_of(forever).check(SFTPNotConnected)
    clock.advance(100)
    assert endpoint.attempts == 1, "stopped managers do not retry"


def test_manager_stop_closes_the_connection(tree: Path) -> None:
    """stop() closes the live connection and does not reconnect."""
    manager, endpoint, clock = _manager(tree)
    manager.start()
    client = manager.current()
    manager.stop()
    endpoint.pumps[0].flush()
    clock.advance(100)
    assert not client.alive and endpoint.attempts == 1
    with pytest.raises(SFTPNotConnected):
        manager.current()


def test_a_write_that_cannot_be_sent_is_an_error_not_a_hang() -> None:
    """If the transport refuses data, nothing is left pending and flush fails at once."""
    client, transport, _ = _ready_client()

    def refuse(data: Any) -> None:
        raise TypeError("Data must be bytes")

    transport.writeSequence = refuse  # type: ignore[method-assign]
    writer = PipelinedWriter(client, b"H")
    with pytest.raises(TypeError):
        writer.write(0, b"x")
    assert client.pendingCount == 0 and writer.inFlight == 0
    assert failure_of(writer.flush()).check(TypeError)


def test_writer_sends_big_writes_in_chunks(pair: SFTPPair, tree: Path) -> None:
    """A write bigger than maxWrite goes out as several WRITEs and lands byte for byte."""
    data = os.urandom(3 * MAX_CHUNK + 4321)
    c = pair.client
    h = pair.wait(c.open(b"/chunked", ft.FXF_WRITE | ft.FXF_CREAT))
    writer = PipelinedWriter(c, h)
    assert writer.write(0, data[:1000]) is None
    assert writer.write(1000, data[1000:]) is None
    assert c.pendingCount == 5
    pair.wait(writer.flush())
    assert (tree / "chunked").read_bytes() == data


def test_read_ahead_stops_at_the_size_seen_at_open(pair: SFTPPair) -> None:
    """With a size hint there is no read-ahead past it; reads past it still work."""
    h = pair.wait(pair.client.open(b"/big", ft.FXF_READ))
    reader = ReadAhead(pair.client, h, sizeHint=100_000)
    reader.read(0, 4096)
    assert reader.bufferedBytes == 100_000
    pair.pump.flush()
    got = reader.read(200_000, 10)
    assert (pair.wait(got) if isinstance(got, defer.Deferred) else got) != b""


def test_short_answer_at_the_known_size_is_the_end() -> None:
    """A short answer that reaches the size hint is taken as EOF: no READ just to hear it."""
    client, transport, _ = _ready_client()
    reader = ReadAhead(client, b"H", sizeHint=1000)
    d = reader.read(0, 4096)
    assert not isinstance(d, bytes)
    [(kind, rid, _)] = _requests(transport.value())
    assert kind == ft.FXP_READ
    transport.clear()
    client.dataReceived(_packet(ft.FXP_DATA, struct.pack("!L", rid) + _ns(b"x" * 1000)))
    assert result_of(d) == b"x" * 1000
    assert transport.value() == b"", "nothing more is asked"
    assert reader.read(0, 4096) == b"x" * 1000, "served from the window"


def test_short_answer_before_the_known_size_is_asked_again() -> None:
    """Short of the size hint, the rest is still asked for."""
    client, transport, _ = _ready_client()
    reader = ReadAhead(client, b"H", sizeHint=3000)
    d = reader.read(0, 4096)
    [(_, rid, _)] = _requests(transport.value())
    transport.clear()
    client.dataReceived(_packet(ft.FXP_DATA, struct.pack("!L", rid) + _ns(b"a" * 1000)))
    [(kind, rid2, body)] = _requests(transport.value())
    assert kind == ft.FXP_READ and struct.unpack("!QL", body[-12:]) == (1000, 3096)
    client.dataReceived(_packet(ft.FXP_DATA, struct.pack("!L", rid2) + _ns(b"b" * 2000)))
    assert result_of(d) == b"a" * 1000 + b"b" * 2000


def test_prefetch_reads_before_anyone_asks(pair: SFTPPair, tree: Path) -> None:
    """prefetch() sends the READ at once; the first read is then served from it."""
    h = pair.wait(pair.client.open(b"/dir/file", ft.FXF_READ))
    reader = ReadAhead(pair.client, h, sizeHint=11)
    reader.prefetch(4096)
    assert pair.client.pendingCount == 1
    pair.pump.flush()
    assert reader.read(0, 4096) == b"hello world"
    assert pair.client.pendingCount == 0


def test_reset_with_a_new_size_forgets_a_stale_window(pair: SFTPPair, tree: Path) -> None:
    """After reset(size) the reader fetches again and reads ahead up to the new size."""
    h = pair.wait(pair.client.open(b"/dir/file", ft.FXF_READ))
    reader = ReadAhead(pair.client, h, sizeHint=11)
    assert pair.wait(reader.read(0, 4096)) == b"hello world"
    (tree / "dir" / "file").write_bytes(b"hello world, again")
    assert reader.read(0, 4096) == b"hello world", "the window still holds the old bytes"
    reader.reset(18)
    got = reader.read(0, 4096)
    assert (pair.wait(got) if isinstance(got, defer.Deferred) else got) == b"hello world, again"


def test_a_lazy_close_goes_out_with_the_next_request_or_soon() -> None:
    """close(soon=True) waits for company (sent before it) or LAZY_DELAY, whichever is first."""
    client, transport, clock = _ready_client()
    first = client.close(b"A", soon=True)
    assert transport.value() == b""
    client.stat(b"/x")
    kinds = [(kind, rid) for kind, rid, _ in _requests(transport.value())]
    assert [k for k, _ in kinds] == [ft.FXP_CLOSE, ft.FXP_STAT]
    assert kinds[0][1] < kinds[1][1], "numbered in the order they were made"
    transport.clear()
    second = client.close(b"B", soon=True)
    clock.advance(LAZY_DELAY)
    assert [k for k, _, _ in _requests(transport.value())] == [ft.FXP_CLOSE]
    for d in (first, second):
        assert not d.called
    client.connectionLost(Failure(ConnectionLost("gone")))
    assert failure_of(first).check(ConnectionLost) and failure_of(second).check(ConnectionLost)


def test_a_held_close_fails_with_the_connection() -> None:
    """A CLOSE still held when the connection dies fails with it and is never sent."""
    client, transport, clock = _ready_client()
    d = client.close(b"A", soon=True)
    client.abort("test")
    assert failure_of(d).check(ConnectionDead)
    clock.advance(1)
    assert transport.value() == b""


@pytest.mark.parametrize("step", [1, 7, 4096, 65536, 200_000, 262_144, 1 << 20])
def test_answers_split_anywhere_arrive_whole(step: int) -> None:
    """Answers cut at any points (big READ answers too) each reach their request intact."""
    client, transport, _ = _ready_client()
    sizes = [10, 300_000, 0, 70_000, 5, 255 * 1024, 1]
    reads = [client.read(b"H", 0, max(n, 1)) for n in sizes]
    stat = client.stat(b"/x")
    rids = [rid for _, rid, _ in _requests(transport.value())]
    payloads = [os.urandom(n) for n in sizes]
    stream = b""
    for rid, payload in zip(rids[:-1], payloads, strict=True):
        if payload:
            stream += _packet(ft.FXP_DATA, struct.pack("!L", rid) + _ns(payload))
        else:
            status = struct.pack("!LL", rid, ft.FX_EOF) + _ns(b"eof") + _ns(b"")
            stream += _packet(ft.FXP_STATUS, status)
    stream += _packet(ft.FXP_ATTRS, struct.pack("!L", rids[-1]) + pack_attrs(FileAttrs(size=7)))
    for pos in range(0, len(stream), step):
        client.dataReceived(stream[pos : pos + step])
    for d, payload in zip(reads, payloads, strict=True):
        assert bytes(result_of(d)) == payload
    assert result_of(stat).size == 7
    assert client.pendingCount == 0 and client.alive


def _names(rid: int, *names: bytes) -> bytes:
    body = struct.pack("!LL", rid, len(names))
    for name in names:
        body += _ns(name) + _ns(b"") + struct.pack("!L", 0)
    return _packet(ft.FXP_NAME, body)


def test_listdir_pipelines_readdirs() -> None:
    """READDIRs go out two at first and twice as many per full batch; none past a short
    batch; the entries come back in order, and the handle is closed."""
    client, transport, _ = _ready_client()
    listing = client.listdir(b"/d")
    ((kind, rid, _),) = _requests(transport.value())
    assert kind == ft.FXP_OPENDIR
    transport.clear()
    client.dataReceived(_packet(ft.FXP_HANDLE, struct.pack("!L", rid) + _ns(b"H")))
    sent = _requests(transport.value())
    assert [k for k, _, _ in sent] == [ft.FXP_READDIR] * 2
    transport.clear()
    client.dataReceived(_names(sent[0][1], b"a", b"b", b"c"))
    more = _requests(transport.value())
    assert [k for k, _, _ in more] == [ft.FXP_READDIR] * 3, "a full batch: 4 in flight"
    transport.clear()
    client.dataReceived(_names(sent[1][1], b"d", b"e", b"f"))
    client.dataReceived(_names(more[0][1], b"g"))  # shorter: the end is near
    later = _requests(transport.value())
    assert [k for k, _, _ in later] == [ft.FXP_READDIR] * 5, "8 in flight, then no more"
    transport.clear()
    client.dataReceived(_packet(ft.FXP_STATUS, struct.pack("!LL", more[1][1], ft.FX_EOF)))
    assert [e.filename for e in result_of(listing)] == [b"a", b"b", b"c", b"d", b"e", b"f", b"g"]
    ((kind, _, body),) = _requests(transport.value())
    assert kind == ft.FXP_CLOSE and body == _ns(b"H")
    for _, rid, _ in more[2:] + later:  # answers to what was still in flight: taken quietly
        client.dataReceived(_packet(ft.FXP_STATUS, struct.pack("!LL", rid, ft.FX_EOF)))
    assert client.alive


def test_listdir_of_a_big_directory(pair: SFTPPair, tree: Path) -> None:
    """Many batches (Conch sends at most 250 names per READDIR): every name, once; onBatch
    sees them batch by batch, in order."""
    (tree / "many").mkdir()
    for i in range(1234):
        (tree / "many" / f"f{i:04d}").write_bytes(b"")
    batches: list[list[Any]] = []
    names = [e.filename for e in pair.wait(pair.client.listdir(b"/many", batches.append))]
    assert sorted(names) == [b"f%04d" % i for i in range(1234)]
    assert len(batches) > 1 and [e.filename for b in batches for e in b] == names
    assert pair.client.pendingCount == 0


def test_listing_entries_with_all_or_some_attributes() -> None:
    """Entries with all four attribute groups (read in one go) and with fewer or extended
    ones parse alike; a name running past the packet is malformed."""
    client, transport, _ = _ready_client()
    listing = client.readdir(b"H")
    ((_, rid, _),) = _requests(transport.value())
    full = struct.pack("!LQLLLLL", 0xF, 10, 1, 2, 0o100644, 3, 4)
    size_only = struct.pack("!LQ", 0x1, 20)
    extended = struct.pack("!LQLLLLL", 0x8000000F, 30, 1, 2, 0o100600, 5, 6)
    extended += struct.pack("!L", 1) + _ns(b"type") + _ns(b"data")
    body = struct.pack("!LL", rid, 3)
    for name, attrs in ((b"a", full), (b"b", size_only), (b"c", extended)):
        body += _ns(name) + _ns(b"long " + name) + attrs
    client.dataReceived(_packet(ft.FXP_NAME, body))
    a, b, c = result_of(listing)
    assert (a.filename, a.longname, a.attrs) == (
        b"a",
        b"long a",
        FileAttrs(10, 1, 2, 0o100644, 3, 4),
    )
    assert b.attrs == FileAttrs(size=20)
    assert c.attrs == FileAttrs(30, 1, 2, 0o100600, 5, 6)
    broken = client.readdir(b"H")
    ((_, rid, _),) = _requests(transport.value())[-1:]
    client.dataReceived(
        _packet(ft.FXP_NAME, struct.pack("!LL", rid, 1) + struct.pack("!L", 99) + b"x" * 12)
    )
    assert failure_of(broken).check(ConnectionDead)


def test_a_listed_size_past_off_t_is_malformed() -> None:
    """The one-unpack path for the usual ATTRS checks the size as parse_attrs does."""
    client, transport, _ = _ready_client()
    listing = client.readdir(b"H")
    ((_, rid, _),) = _requests(transport.value())
    attrs = struct.pack("!LQLLLLL", 0xF, 1 << 63, 1, 2, 0o100644, 3, 4)
    body = struct.pack("!LL", rid, 1) + _ns(b"a") + _ns(b"long a") + attrs
    client.dataReceived(_packet(ft.FXP_NAME, body))
    assert failure_of(listing).check(ConnectionDead)


def test_manager_first_connection_waits_for_a_late_server(tree: Path) -> None:
    """
    whenFirstConnected(wait): a server that starts within ``wait`` is connected to (the
    retries follow the backoff); without ``wait`` the first refusal is the answer.
    """
    manager, endpoint, clock = _manager(tree)
    endpoint.refuse = True
    d = manager.whenFirstConnected(10.0)
    manager.start()
    clock.advance(2.0)  # retryPolicy(1): refused again
    assert endpoint.attempts == 2 and not d.called
    endpoint.refuse = False
    clock.advance(4.0)  # retryPolicy(2)
    assert result_of(d) is manager.current()

    manager, endpoint, clock = _manager(tree)
    endpoint.refuse = True
    once = manager.whenFirstConnected(0)
    manager.start()
    err = failure_of(once).value
    assert isinstance(err, SFTPNotConnected) and endpoint.attempts == 1


def test_manager_first_connection_gives_up_after_its_wait(tree: Path) -> None:
    """A server that never answers: SFTPNotConnected naming it, the reason and the wait."""
    manager, endpoint, clock = _manager(tree)
    endpoint.refuse = True
    d = manager.whenFirstConnected(5.0)
    manager.start()
    clock.advance(2.0)  # attempt 2 at 2 s; the back-off's next, at 6 s, is made at 5 s
    assert not d.called
    clock.advance(3.0)
    err = failure_of(d).value
    assert isinstance(err, SFTPNotConnected)
    assert str(err).startswith("cannot reach srv:22: ") and str(err).endswith("(tried for 5s)")
    assert endpoint.attempts == 3
    manager.stop()


def test_readers_share_a_read_budget() -> None:
    """One reader streams with its whole window; several at once share the total."""
    now = [0.0]
    budget = ReadBudget(8 << 20, least=1 << 20, idle=1.0, now=lambda: now[0])
    a, b, c, d = object(), object(), object(), object()
    assert budget.window(a, 8 << 20) == 8 << 20
    assert budget.window(b, 8 << 20) == 4 << 20
    budget.window(c, 8 << 20)
    assert budget.window(d, 8 << 20) == 2 << 20
    assert budget.window(a, 1 << 20) == 1 << 20  # never above the reader's own window
    budget.release(b)
    budget.release(c)
    assert budget.window(a, 8 << 20) == 4 << 20
    now[0] = 5.0  # d stopped reading: an idle reader's share goes back
    assert budget.window(a, 8 << 20) == 8 << 20
    many = ReadBudget(8 << 20, least=1 << 20)
    readers = [object() for _ in range(20)]
    assert [many.window(r, 8 << 20) for r in readers][-1] == 1 << 20  # at least ``least``


def test_read_ahead_keeps_to_its_budget() -> None:
    """A reader's window is what the budget gives it; a reset gives its share back."""
    client, transport, _ = _ready_client()
    budget = ReadBudget(4000, least=1000)
    other = object()
    budget.window(other, 4000)
    reader = ReadAhead(client, b"H", chunk=1000, window=4000, initial=2000, budget=budget)

    def asked_to() -> int:
        reads = [body for kind, _, body in _requests(transport.value()) if kind == ft.FXP_READ]
        return max(sum(struct.unpack("!QL", body[-12:])) for body in reads)

    reader.read(0, 1000)
    assert asked_to() == 1000 + 2000  # the initial window: within the half it may have
    reader.read(1000, 1000)
    assert asked_to() == 2000 + 2000  # not 4000 ahead: two readers share 4000
    reader.reset()
    assert budget.window(other, 4000) == 4000
