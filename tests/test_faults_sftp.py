"""
Fault suite, item 4 (bad input) for the FUSE client's side of SFTP: a hostile server.

- ``test_hostile_server_never_hangs_or_crashes_the_client``: hypothesis plays a server that
  answers ``SFTPClient`` requests with malformed packets (wrong and huge lengths, unknown
  types, wrong request ids, truncated fields, odd status codes, names that are not UTF-8,
  absurd NAME counts, ATTRS with any flags, DATA longer than asked), cut at random points.
  Every request must end (a typed result or a failure) by its deadline, ``dataReceived``
  never raises, and the client never holds more than one packet's worth of bytes.
- One deterministic test per bug the property found (see each docstring).
- ``test_hostile_server_under_a_real_mount`` (e2e): the FUSE helper (``python -m
  telenet.fuse.helper``) mounted against a hostile TCP server; file operations fail within the
  timeout, the helper lives, nothing is left in D state; switched to a real agent, the mount
  recovers by itself.
- ``test_malformed_answers_to_each_operation_under_a_real_mount`` (e2e): a proxy to a real
  agent corrupts only the answers one operation needs (READ, WRITE, MKDIR, ...): that
  operation fails with EIO, the rest of the mount keeps working.

Client-level tests use a ``StringTransport`` and a ``task.Clock``: no global reactor.
"""

from __future__ import annotations

import errno
import os
import socket
import socketserver
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.conch.ssh import filetransfer as ft
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from telenet.sftp.client import SFTPClient
from telenet.sftp.codec import FileAttrs, NameEntry, StatVFS, pack_attrs
from telenet.sftp.errors import ConnectionDead, SFTPProtocolError, SFTPStatusError, error_to_errno
from telenet.sftp.reader import MAX_PACKET, MIN_CHUNK

from .conftest import Agent, free_port, fuse_mounts, port_open, wait_for
from .faultkit import process_state, reads_back, record, rss_kib, scaled
from .test_sftpfs import MountHelper

EXAMPLES = scaled(300, 3000)
#: Rounds of file operations against the hostile server (each malformation is met at least once).
ROUNDS = scaled(11, 40)
TIMEOUT = 10.0

# -- a client on a string transport ------------------------------------------------------------


class _Transport(StringTransport):
    """A connection to nowhere: what the client writes piles up in ``value()``."""


def _packet(kind: int, body: bytes) -> bytes:
    return struct.pack("!LB", len(body) + 1, kind) + body


def _ns(data: bytes) -> bytes:
    return struct.pack("!L", len(data)) + data


EXTENSIONS = {
    b"posix-rename@openssh.com": b"1",
    b"statvfs@openssh.com": b"2",
    b"hardlink@openssh.com": b"1",
    b"fsync@openssh.com": b"1",
}


def _version(ext: dict[bytes, bytes]) -> bytes:
    return _packet(
        ft.FXP_VERSION, struct.pack("!L", 3) + b"".join(_ns(k) + _ns(v) for k, v in ext.items())
    )


def _sent(data: bytes) -> list[tuple[int, int]]:
    """(type, request id) of each request the client wrote, INIT left out."""
    out = []
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack_from("!L", data, pos)
        kind = data[pos + 4]
        if kind != ft.FXP_INIT:
            out.append((kind, struct.unpack_from("!L", data, pos + 5)[0]))
        pos += 4 + length
    return out


def _client(ext: dict[bytes, bytes] | None = None) -> tuple[SFTPClient, _Transport, task.Clock]:
    clock = task.Clock()
    client = SFTPClient(clock, timeout=TIMEOUT, keepalive=5.0)
    transport = _Transport()
    client.makeConnection(transport)
    client.dataReceived(_version(EXTENSIONS if ext is None else ext))
    assert client.ready.called
    transport.clear()
    return client, transport, clock


def _outcome(d: Deferred[Any]) -> list[Any]:
    box: list[Any] = []
    d.addBoth(box.append)
    return box


def _buffered(client: SFTPClient) -> int:
    """Bytes the client holds of packets not yet complete."""
    return len(client._buf) + sum(len(p) for p in client._pieces)


def _attrs_ok(attrs: object) -> bool:
    """Attributes the file system can hand to the kernel (pyfuse3's EntryAttributes)."""
    return isinstance(attrs, FileAttrs) and (attrs.size or 0) <= 2**63 - 1


# What each operation's success must look like: the file system relies on these types.
OPS: dict[str, tuple[Callable[[SFTPClient, int], Deferred[Any]], Callable[[Any, int], bool]]] = {
    "stat": (lambda c, n: c.stat(b"/a"), lambda r, n: _attrs_ok(r)),
    "lstat": (lambda c, n: c.lstat(b"/a"), lambda r, n: _attrs_ok(r)),
    "fstat": (lambda c, n: c.fstat(b"h"), lambda r, n: _attrs_ok(r)),
    "open": (lambda c, n: c.open(b"/a", ft.FXF_READ), lambda r, n: isinstance(r, bytes)),
    "opendir": (lambda c, n: c.opendir(b"/"), lambda r, n: isinstance(r, bytes)),
    "read": (
        lambda c, n: c.read(b"h", 0, n),
        lambda r, n: isinstance(r, bytes | memoryview) and len(r) <= n,
    ),
    "readdir": (
        lambda c, n: c.readdir(b"h"),
        lambda r, n: (
            isinstance(r, list) and all(isinstance(e, NameEntry) and _attrs_ok(e.attrs) for e in r)
        ),
    ),
    "realpath": (lambda c, n: c.realpath(b"."), lambda r, n: isinstance(r, bytes)),
    "readlink": (lambda c, n: c.readlink(b"/l"), lambda r, n: isinstance(r, bytes)),
    "close": (lambda c, n: c.close(b"h"), lambda r, n: r is None),
    "write": (lambda c, n: c.write(b"h", 0, b"x" * n), lambda r, n: r is None),
    "mkdir": (lambda c, n: c.mkdir(b"/d"), lambda r, n: r is None),
    "remove": (lambda c, n: c.remove(b"/a"), lambda r, n: r is None),
    "setstat": (lambda c, n: c.setstat(b"/a", FileAttrs(size=n)), lambda r, n: r is None),
    "rename": (lambda c, n: c.rename(b"/a", b"/b"), lambda r, n: r is None or isinstance(r, bytes)),
    "statvfs": (lambda c, n: c.statvfs(b"/"), lambda r, n: isinstance(r, StatVFS)),
    "fsync": (lambda c, n: c.fsync(b"h"), lambda r, n: r is None or isinstance(r, bytes)),
}

u32 = st.one_of(
    st.integers(0, 40),
    st.sampled_from([2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
)
junk = st.binary(max_size=64)
# Names with invalid UTF-8, slashes, NULs, "", ".", "..".
names = st.one_of(
    st.binary(max_size=24),
    st.sampled_from(
        [b"", b".", b"..", b"a/b", b"../../etc", b"\xff\xfe", b"nul\0name", b"x" * 300]
    ),
)


#: The answer each request expects when it succeeds (besides STATUS).
RIGHT = {
    ft.FXP_OPEN: "handle",
    ft.FXP_OPENDIR: "handle",
    ft.FXP_READ: "data",
    ft.FXP_STAT: "attrs",
    ft.FXP_LSTAT: "attrs",
    ft.FXP_FSTAT: "attrs",
    ft.FXP_READDIR: "name",
    ft.FXP_REALPATH: "name",
    ft.FXP_READLINK: "name",
    ft.FXP_EXTENDED: "extended",
}


@st.composite
def attrs_bytes(draw: st.DrawFn, good: bool = False) -> bytes:
    """Well-formed ATTRS, or (unless ``good``) any flags followed by any bytes."""
    if good or draw(st.booleans()):
        return pack_attrs(
            FileAttrs(
                draw(st.none() | st.integers(0, 2**64 - 1)),
                draw(st.none() | st.integers(0, 2**32 - 1)),
                draw(st.none() | st.integers(0, 2**32 - 1)),
                draw(st.none() | st.integers(0, 2**32 - 1)),
                draw(st.none() | st.integers(0, 2**32 - 1)),
                draw(st.none() | st.integers(0, 2**32 - 1)),
            )
        )
    return struct.pack("!L", draw(u32)) + draw(st.binary(max_size=48))


@st.composite
def body(draw: st.DrawFn, rid: int, asked: int, request: int) -> tuple[int, bytes]:
    """(packet type, body after the type) of one answer to request ``rid``, good or bad."""
    r = struct.pack("!L", rid)
    shapes = ["status", "handle", "data", "attrs", "name", "extended", "unknown", "version", "noid"]
    shape = draw(st.sampled_from(["right"] * 6 + shapes))
    if shape == "right":  # the kind of answer the request expects, with anything in it
        answer = RIGHT.get(request)
        if answer is None or draw(st.integers(0, 3)) == 0:
            codes = [ft.FX_OK] * 3 if answer is None else [ft.FX_EOF]
            code = draw(st.sampled_from([*codes, ft.FX_NO_SUCH_FILE, 99]))
            return ft.FXP_STATUS, r + struct.pack("!L", code) + _ns(b"msg") + _ns(b"")
        shape = answer
        if shape == "data":
            data = draw(st.binary(max_size=asked))
            return ft.FXP_DATA, r + _ns(data)
        if shape == "extended":
            return ft.FXP_EXTENDED_REPLY, r + draw(st.binary(min_size=80, max_size=100))
        if shape == "attrs":
            return ft.FXP_ATTRS, r + draw(attrs_bytes(good=True))
        if shape == "name":
            entries = draw(st.lists(st.tuples(names, names, attrs_bytes(good=True)), max_size=3))
            raw = b"".join(_ns(a) + _ns(b) + c for a, b, c in entries)
            return ft.FXP_NAME, r + struct.pack("!L", len(entries)) + raw
    if shape == "status":
        code = draw(st.one_of(st.integers(0, 32), u32))
        message = draw(st.binary(max_size=40))
        tail = draw(
            st.sampled_from(
                [
                    _ns(message) + _ns(b"en"),
                    _ns(message),
                    b"",
                    struct.pack("!L", 2**32 - 1) + message,
                ]
            )
        )
        return ft.FXP_STATUS, r + struct.pack("!L", code) + tail
    if shape == "handle":
        handle = draw(st.binary(max_size=300))
        n = draw(st.one_of(st.just(len(handle)), u32))
        return ft.FXP_HANDLE, r + struct.pack("!L", n) + handle
    if shape == "data":
        size = draw(st.sampled_from([0, 1, asked, asked + 1, 2 * asked + 7]))
        data = b"d" * size
        n = draw(st.one_of(st.just(size), u32))
        return ft.FXP_DATA, r + struct.pack("!L", n) + data
    if shape == "attrs":
        return ft.FXP_ATTRS, r + draw(attrs_bytes())
    if shape == "name":
        entries = draw(st.lists(st.tuples(names, names, attrs_bytes()), max_size=6))
        count = draw(st.one_of(st.just(len(entries)), u32))
        raw = b"".join(_ns(a) + _ns(b) + c for a, b, c in entries)
        if draw(st.booleans()):
            raw = raw[: draw(st.integers(0, len(raw)))]
        return ft.FXP_NAME, r + struct.pack("!L", count) + raw
    if shape == "extended":
        return ft.FXP_EXTENDED_REPLY, r + draw(st.binary(max_size=120))
    if shape == "unknown":
        kind = draw(st.integers(0, 255).filter(lambda k: k not in (ft.FXP_VERSION,)))
        return kind, r + draw(junk)
    if shape == "version":
        return ft.FXP_VERSION, struct.pack("!L", draw(u32)) + draw(junk)
    return draw(st.integers(0, 255)), draw(st.binary(max_size=3))  # no (whole) request id


@st.composite
def stream(draw: st.DrawFn, sent: list[tuple[int, int, int]]) -> bytes:
    """What the hostile server writes: answers (to real or made-up ids), bad framing, junk."""
    out = []
    for _ in range(draw(st.integers(0, 10))):
        real = draw(st.integers(0, 5)) > 0
        if sent and real:
            request, rid, asked = draw(st.sampled_from(sent))
        else:
            request, rid, asked = ft.FXP_STAT, draw(u32), 16
        kind, b = draw(body(rid, asked, request))
        length = len(b) + 1
        framing = draw(st.sampled_from(["ok"] * 12 + ["length", "huge", "cut", "junk"]))
        if framing == "length":
            length = draw(st.one_of(st.integers(0, length + 8), u32))
        elif framing == "huge":
            length = draw(st.sampled_from([2**32 - 1, MAX_PACKET + 1, 2**31, 5 * MAX_PACKET]))
        packet = struct.pack("!LB", length & 0xFFFFFFFF, kind) + b
        if framing == "cut":
            packet = packet[: draw(st.integers(0, len(packet)))]
        elif framing == "junk":
            packet = draw(st.binary(min_size=1, max_size=80))
        out.append(packet)
    return b"".join(out)


def test_hostile_server_never_hangs_or_crashes_the_client() -> None:
    """
    Whatever a server sends after VERSION, every request ends by its deadline with a result
    of the right type or a failure the file system maps to an errno; ``dataReceived`` never
    raises; the client never buffers more than one packet (``MAX_PACKET``) plus what one read
    of the socket brings.
    """
    figures = {"examples": 0, "requests": 0, "succeeded": 0, "failed": 0, "bytes": 0, "dead": 0}
    worst = {"buffered": 0}

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        client, transport, clock = _client()
        ops = data.draw(
            st.lists(
                st.tuples(st.sampled_from(sorted(OPS)), st.integers(1, 4096)),
                min_size=1,
                max_size=8,
            )
        )
        issued = []
        for name, n in ops:
            issued.append((name, n, _outcome(OPS[name][0](client, n))))
        kinds = _sent(transport.value())
        asked = [n for name, n in ops if name == "read"]
        sent = []
        for kind, rid in kinds:
            sent.append((kind, rid, asked.pop(0) if kind == ft.FXP_READ else 0))
        raw = data.draw(stream(sent))
        # Cut anywhere, as TCP may; a chunk may also hold a huge declared length's tail.
        cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=6)))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        if data.draw(st.booleans()):
            pieces.append(b"\0" * (256 << 10))  # a flood after whatever came
        for piece in pieces:
            client.dataReceived(piece)  # must not raise
            worst["buffered"] = max(worst["buffered"], _buffered(client))
            assert _buffered(client) <= MAX_PACKET + len(piece) + 8
            if transport.disconnecting:
                break
        if transport.disconnecting:
            client.connectionLost(Failure(ConnectionLost("aborted")))
        clock.advance(TIMEOUT + 1)
        for name, n, box in issued:
            assert box, f"{name} never ended"
            result = box[0]
            if isinstance(result, Failure):
                assert isinstance(
                    result.value, SFTPStatusError | ConnectionLost | SFTPProtocolError
                ), (
                    name,
                    result,
                )
                assert error_to_errno(result.value) > 0
                figures["failed"] += 1
            else:
                assert OPS[name][1](result, n), (name, n, result)
                figures["succeeded"] += 1
        # A server that answered went quiet: the keepalive it does not answer ends it too.
        clock.advance(TIMEOUT + 1)
        assert client.pendingCount == 0 and not client.alive
        figures["examples"] += 1
        figures["requests"] += len(issued)
        figures["bytes"] += len(raw)
        figures["dead"] += not client.alive

    one()
    record("sftp-hostile-server-client", **figures, max_buffered=worst["buffered"])
    assert figures["failed"] > 0 and figures["dead"] > 0


def test_hostile_handshake_ends_ready() -> None:
    """Whatever comes instead of a proper VERSION, ``ready`` fires or fails by the deadline."""

    @settings(max_examples=scaled(100, 1000), deadline=None, database=None)
    @given(
        raw=st.binary(max_size=200), kind=st.integers(0, 255), length=u32, split=st.integers(0, 200)
    )
    def one(raw: bytes, kind: int, length: int, split: int) -> None:
        clock = task.Clock()
        client = SFTPClient(clock, timeout=TIMEOUT)
        client.makeConnection(_Transport())
        box = _outcome(client.ready)
        stream = struct.pack("!LB", length, kind) + raw
        client.dataReceived(stream[:split])
        client.dataReceived(stream[split:])
        clock.advance(TIMEOUT + 0.1)
        assert box
        if isinstance(box[0], Failure):
            assert box[0].check(ConnectionLost)

    one()


# -- the bugs the property found, one test each -----------------------------------------------


def test_huge_declared_length_drops_the_connection_without_buffering() -> None:
    """
    A packet declared 2^32-1 bytes long ends the connection at once; the 64 MiB that follow
    are dropped, not gathered (before: the client gathered up to 4 GiB in pieces).
    """
    client, transport, clock = _client()
    box = _outcome(client.stat(b"/a"))
    tracemalloc.start()
    try:
        client.dataReceived(struct.pack("!LBL", 2**32 - 1, ft.FXP_DATA, 0) + b"x" * 1000)
        assert transport.disconnecting and box and box[0].check(ConnectionDead)
        chunk = b"y" * (256 << 10)
        for _ in range(256):
            client.dataReceived(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert _buffered(client) == 0
    assert peak < 1 << 20, f"{peak} bytes allocated for a dropped connection"
    record("sftp-huge-length", declared=2**32 - 1, fed_mib=64, peak_kib=peak // 1024)


def test_packet_longer_than_the_limit_is_refused_before_it_is_gathered() -> None:
    """Just over ``MAX_PACKET``: refused at its header, whatever it claims to be."""
    client, transport, _ = _client()
    box = _outcome(client.read(b"h", 0, 4096))
    client.dataReceived(struct.pack("!LBL", MAX_PACKET + 1, ft.FXP_DATA, 0))
    assert transport.disconnecting and box[0].check(ConnectionDead)


def test_truncated_answer_fails_its_request_instead_of_leaving_it_hanging() -> None:
    """
    ATTRS cut short inside a packet: the request fails at once (before: its entry was taken
    out of the pending table and then the parse failed, so the connection was aborted but
    that one request never ended, and the FUSE call above it hung).
    """
    client, transport, _ = _client()
    box = _outcome(client.stat(b"/a"))
    other = _outcome(client.lstat(b"/b"))
    # Flags say size + uid/gid, but only 4 bytes follow.
    client.dataReceived(_packet(ft.FXP_ATTRS, struct.pack("!LL", 0, 3) + b"\0" * 4))
    assert box and box[0].check(ConnectionDead), box
    assert other and other[0].check(ConnectionDead), other
    assert transport.disconnecting


def test_a_field_never_reads_into_the_next_packet() -> None:
    """
    A HANDLE string declared longer than its packet is malformed (before: it was cut from the
    bytes of the packets after it, and those packets were then parsed again as answers).
    """
    client, _, _ = _client()
    box = _outcome(client.open(b"/a", ft.FXF_READ))
    follower = _outcome(client.stat(b"/b"))
    handle = _packet(ft.FXP_HANDLE, struct.pack("!LL", 0, 40) + b"abc")
    client.dataReceived(handle + _packet(ft.FXP_ATTRS, struct.pack("!L", 1) + pack_attrs(None)))
    assert box[0].check(ConnectionDead)
    assert follower[0].check(ConnectionDead)


def test_data_longer_than_asked_is_refused() -> None:
    """READ of 10 bytes answered with 20: an error, not 20 bytes handed to the kernel."""
    client, _, _ = _client()
    box = _outcome(client.read(b"h", 0, 10))
    client.dataReceived(_packet(ft.FXP_DATA, struct.pack("!LL", 0, 20) + b"z" * 20))
    assert box[0].check(ConnectionDead), box


@pytest.mark.parametrize(
    "kind, body",
    [
        (ft.FXP_STATUS, struct.pack("!LL", 0, ft.FX_OK)),  # STAT answered "OK": no attributes
        (ft.FXP_HANDLE, _ns(b"h")),
        (ft.FXP_DATA, _ns(b"data")),
        (ft.FXP_NAME, struct.pack("!L", 0)),
    ],
)
def test_an_answer_of_the_wrong_type_is_an_error(kind: int, body: bytes) -> None:
    """
    STAT must get ATTRS or an error status (before: STATUS OK gave the file system None for
    attributes, and a HANDLE or NAME gave it bytes or a list: AttributeError in a handler).
    """
    client, _, _ = _client()
    box = _outcome(client.stat(b"/a"))
    if kind != ft.FXP_STATUS:
        body = struct.pack("!L", 0) + body
    client.dataReceived(_packet(kind, body))
    assert box and box[0].check(ConnectionDead), box


def test_answer_to_a_request_never_sent_drops_the_connection() -> None:
    """
    An answer to an unknown id (or a second answer) shows the server lost track: the
    connection ends now instead of every request waiting out its deadline.
    """
    client, transport, _ = _client()
    box = _outcome(client.stat(b"/a"))
    client.dataReceived(_packet(ft.FXP_STATUS, struct.pack("!LL", 77, ft.FX_OK)))
    assert box[0].check(ConnectionDead) and transport.disconnecting


def test_a_second_version_is_malformed() -> None:
    """VERSION after VERSION could swap the extension set (and SYMLINK's argument order)."""
    client, transport, _ = _client({})
    client.dataReceived(_version({b"posix-rename@openssh.com": b"1"}))
    assert transport.disconnecting and not client.hasExtension(b"posix-rename@openssh.com")


def test_a_trickling_server_does_not_extend_the_version_deadline() -> None:
    """
    A byte every 5 s never completing VERSION: ``ready`` fails after the timeout from the
    connection's start (before: each byte restarted the wait, forever).
    """
    clock = task.Clock()
    client = SFTPClient(clock, timeout=TIMEOUT)
    transport = _Transport()
    client.makeConnection(transport)
    box = _outcome(client.ready)
    for _ in range(4):
        clock.advance(5)
        client.dataReceived(b"\0")
    assert box and box[0].check(ConnectionDead), box


def test_tiny_limits_are_floored() -> None:
    """
    ``limits@openssh.com`` announcing 1-byte reads would make one 8 MiB read-ahead window
    8 million requests: sizes are floored at ``MIN_CHUNK``.
    """
    clock = task.Clock()
    client = SFTPClient(clock, timeout=TIMEOUT)
    transport = _Transport()
    client.makeConnection(transport)
    transport.clear()
    client.dataReceived(_version({b"limits@openssh.com": b"1"}))
    ((_, rid),) = _sent(transport.value())
    client.dataReceived(_packet(ft.FXP_EXTENDED_REPLY, struct.pack("!LQQQQ", rid, 1, 1, 1, 1)))
    assert client.ready.called
    assert client.maxRead == MIN_CHUNK and client.maxWrite == MIN_CHUNK


def test_listdir_leaves_out_names_no_entry_can_have() -> None:
    """``a/b``, ``""`` and names with NUL never reach the kernel (it fails getdents on them)."""
    client, transport, clock = _client()
    box = _outcome(client.listdir(b"/"))
    entries = [b".", b"..", b"", b"a/b", b"../x", b"n\0ul", b"ok", b"\xff\xfe"]
    raw = b"".join(_ns(n) + _ns(b"") + pack_attrs(None) for n in entries)
    answered: set[int] = set()
    batches = 0
    for _ in range(20):  # answer every request in order: one batch of names, then EOF
        clock.advance(0.01)  # held (lazy) requests go out
        for kind, rid in _sent(transport.value()):
            if rid in answered:
                continue
            answered.add(rid)
            if kind == ft.FXP_OPENDIR:
                body = _packet(ft.FXP_HANDLE, struct.pack("!L", rid) + _ns(b"h"))
            elif kind == ft.FXP_READDIR and not batches:
                batches += 1
                body = _packet(ft.FXP_NAME, struct.pack("!LL", rid, len(entries)) + raw)
            elif kind == ft.FXP_READDIR:
                body = _packet(ft.FXP_STATUS, struct.pack("!LL", rid, ft.FX_EOF))
            else:
                body = _packet(ft.FXP_STATUS, struct.pack("!LL", rid, ft.FX_OK))
            client.dataReceived(body)
        if box:
            break
    assert box, "listdir did not end"
    assert [e.filename for e in box[0]] == [b"ok", b"\xff\xfe"]


def test_a_size_no_file_can_have_is_malformed() -> None:
    """
    ATTRS with a size past 2^63-1: before, the file system's EntryAttributes raised
    OverflowError (EIO, but logged as a bug with its traceback, once per lookup or listing).
    """
    client, _, _ = _client()
    box = _outcome(client.lstat(b"/a"))
    ok = _outcome(client.lstat(b"/b"))
    client.dataReceived(
        _packet(ft.FXP_ATTRS, struct.pack("!L", 0) + pack_attrs(FileAttrs(size=2**63 - 1)))
        + _packet(ft.FXP_ATTRS, struct.pack("!L", 1) + pack_attrs(FileAttrs(size=2**63)))
    )
    assert box == [FileAttrs(size=2**63 - 1)]
    assert ok and ok[0].check(ConnectionDead), ok


def test_bad_status_codes_and_messages_are_errors_with_an_errno() -> None:
    """Unknown codes and messages that are not UTF-8 (or cut short) give EIO, not a crash."""
    client, _, _ = _client()
    boxes = [_outcome(client.remove(b"/a")) for _ in range(3)]
    client.dataReceived(
        _packet(ft.FXP_STATUS, struct.pack("!LL", 0, 2**32 - 1) + _ns(b"\xff\xfe\xfd") + _ns(b""))
        + _packet(ft.FXP_STATUS, struct.pack("!LLL", 1, 99, 2**32 - 1) + b"cut")
        + _packet(ft.FXP_STATUS, struct.pack("!LL", 2, ft.FX_EOF))
    )
    for box in boxes:
        assert box and isinstance(box[0].value, SFTPStatusError)
        assert error_to_errno(box[0].value) == errno.EIO


# -- end to end: a hostile TCP server under a real FUSE mount ----------------------------------


#: Requests answered with data (a STATUS OK is malformed for them).
_WITH_DATA = {
    ft.FXP_OPEN,
    ft.FXP_OPENDIR,
    ft.FXP_READ,
    ft.FXP_STAT,
    ft.FXP_LSTAT,
    ft.FXP_FSTAT,
    ft.FXP_READDIR,
    ft.FXP_REALPATH,
    ft.FXP_READLINK,
}


def _wrong_type(rid: int, request: int) -> bytes:
    if request in _WITH_DATA:
        return _packet(ft.FXP_STATUS, struct.pack("!LL", rid, ft.FX_OK))
    return _packet(ft.FXP_HANDLE, struct.pack("!L", rid) + _ns(b"h"))


class HostileServer:
    """
    A TCP server answering INIT properly, then every request with a malformed packet (a
    different kind of malformation per request, in turn); ``agent_port`` set, it proxies to a
    real agent instead (a well-behaved server again).
    """

    BAD: list[Callable[[int, int], bytes]] = [
        lambda rid, kind: struct.pack("!LBL", 2**32 - 1, ft.FXP_DATA, rid),  # huge length
        lambda rid, kind: _packet(200, struct.pack("!L", rid) + b"??"),  # unknown type
        lambda rid, kind: _packet(ft.FXP_STATUS, struct.pack("!LL", rid ^ 0x5555, 0)),  # wrong id
        lambda rid, kind: _packet(ft.FXP_ATTRS, struct.pack("!LL", rid, 0xFFFFFFFF)),  # cut ATTRS
        lambda rid, kind: _packet(ft.FXP_NAME, struct.pack("!LL", rid, 2**32 - 1) + _ns(b"\xff/")),
        lambda rid, kind: _packet(ft.FXP_DATA, struct.pack("!LL", rid, 2**31) + b"x" * 64),
        _wrong_type,  # STATUS OK where data is due, else a HANDLE
        lambda rid, kind: struct.pack("!L", 3) + b"\x65\x00\x00",  # length below a header
        lambda rid, kind: b"",  # no answer at all: the deadline
    ]

    def __init__(self) -> None:
        self.port = free_port()
        self.agent_port: int | None = None
        self.answers = 0
        self.connections = 0
        self.live: list[socket.socket] = []
        #: While proxying: answers to these request types are replaced by ``BAD[bad]``.
        self.corrupt: set[int] = set()
        self.bad = 0
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.connections += 1
                sock: socket.socket = self.request
                if outer.agent_port is not None:
                    return outer._proxy(sock)
                return outer._hostile(sock)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> HostileServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def turn_hostile(self) -> None:
        """From now on answer with malformed packets; cut the connections proxied so far."""
        self.agent_port = None
        for sock in self.live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _hostile(self, sock: socket.socket) -> None:
        buf = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
                while len(buf) >= 5:
                    (length,) = struct.unpack_from("!L", buf)
                    if len(buf) < 4 + length:
                        break
                    kind = buf[4]
                    rid = struct.unpack_from("!L", buf, 5)[0] if kind != ft.FXP_INIT else 0
                    buf = buf[4 + length :]
                    if kind == ft.FXP_INIT:
                        sock.sendall(_version(EXTENSIONS))
                        continue
                    bad = self.BAD[self.answers % len(self.BAD)]
                    self.answers += 1
                    sock.sendall(bad(rid, kind))
        except OSError:
            return

    def _proxy(self, sock: socket.socket) -> None:
        assert self.agent_port is not None
        try:
            upstream = socket.create_connection(("127.0.0.1", self.agent_port))
        except OSError:
            return
        self.live += [sock, upstream]

        kinds: dict[int, int] = {}  # request id -> request type, from the client's packets

        def pump(a: socket.socket, b: socket.socket, answers: bool) -> None:
            buf = b""
            try:
                while data := a.recv(65536):
                    buf += data
                    out = []
                    while len(buf) >= 9:
                        (length,) = struct.unpack_from("!L", buf)
                        if len(buf) < 4 + length:
                            break
                        packet, buf = buf[: 4 + length], buf[4 + length :]
                        kind = packet[4]
                        rid = struct.unpack_from("!L", packet, 5)[0]
                        if not answers:
                            kinds[rid] = kind
                        elif kind != ft.FXP_VERSION and (req := kinds.pop(rid, 0)) in self.corrupt:
                            packet = self.BAD[self.bad % len(self.BAD)](rid, req)
                            self.answers += 1
                        out.append(packet)
                    b.sendall(b"".join(out))
            except OSError:
                pass
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        back = threading.Thread(target=pump, args=(upstream, sock, True), daemon=True)
        back.start()
        pump(sock, upstream, False)
        back.join(5)
        upstream.close()


def _add_volume(helper: MountHelper) -> str:
    """Once ``helper`` is connected, add the agent's ``vol`` as volume ``v``; its path."""
    assert helper.report.get("ready"), (helper.report, helper.log_tail())
    wait_for(lambda: helper.request({"op": "status"}, 20).get("connected"), 20, "the connection")
    answer = helper.request(
        {"op": "add", "name": "v", "path": "/tel_app_exports/vol", "ro": False}, 20
    )
    assert answer == {"ok": True}, answer
    return os.path.join(helper.mountpoint, "v")


def _fs_ops(path: str) -> dict[str, Callable[[], object]]:
    def read() -> bytes:
        with open(os.path.join(path, "token"), "rb") as f:
            return f.read()

    def write() -> None:
        with open(os.path.join(path, "new"), "wb") as f:
            f.write(b"x" * 100000)
            f.flush()
            os.fsync(f.fileno())

    return {
        "stat": lambda: os.stat(os.path.join(path, "token")),
        "listdir": lambda: os.listdir(path),
        "read": read,
        "write": write,
        "mkdir": lambda: os.mkdir(os.path.join(path, "d")),
        "rename": lambda: os.rename(os.path.join(path, "token"), os.path.join(path, "t2")),
        "readlink": lambda: os.readlink(os.path.join(path, "link")),
        "statvfs": lambda: os.statvfs(path),
    }


@pytest.fixture
def fuse_workdir(fuse_ready: None, workdir: str) -> Iterator[str]:
    yield workdir


@pytest.mark.e2e
def test_hostile_server_under_a_real_mount(fuse_workdir: str) -> None:
    """
    A real FUSE helper against a hostile server: rounds of 8 concurrent file operations (stat,
    listdir, read, write+fsync, mkdir, rename, readlink, statvfs), each round on a fresh
    connection that gets the next kind of malformed answer, all end with an error (EIO or
    ENOTCONN) within the timeout (3 s) plus 10 s; the helper lives, never enters D state, its
    RSS stays bounded; once the server is a real agent again, the same mount serves the files
    without a remount.
    """
    workdir = fuse_workdir
    root = os.path.join(workdir, "exports")
    os.makedirs(os.path.join(root, "vol"))
    with open(os.path.join(root, "vol", "token"), "w") as f:
        f.write("s3cr3t\n")
    os.symlink("token", os.path.join(root, "vol", "link"))
    agent = Agent(root, free_port(), os.path.join(workdir, "agent.log")).start()
    hostile = HostileServer().start()
    helper: MountHelper | None = None
    try:
        # The volume is added while the server is still good: add checks the directory.
        hostile.agent_port = agent.port
        helper = started = MountHelper(workdir, hostile.port).start()
        vol = _add_volume(helper)
        assert os.listdir(vol)
        rss_before = rss_kib(helper.proc.pid)

        # Now hostile: existing connections are cut, new ones get malformed answers.
        hostile.turn_hostile()
        ops = _fs_ops(vol)
        results: dict[str, list[str]] = {}
        slowest = 0.0
        with ThreadPoolExecutor(max_workers=len(ops)) as pool:
            for _ in range(ROUNDS):
                time.sleep(1.1)  # let the kernel's caches (1 s) expire
                # Each round meets a fresh connection (the last one was dropped as malformed).
                wait_for(
                    lambda: started.request({"op": "status"}, 20).get("connected"), 15, "reconnect"
                )

                def timed(fn: Callable[[], object]) -> tuple[str, float]:
                    start = time.monotonic()
                    try:
                        fn()
                        outcome = "ok"
                    except OSError as e:
                        outcome = errno.errorcode.get(e.errno or 0, str(e.errno))
                    return outcome, time.monotonic() - start

                futures = {name: pool.submit(timed, fn) for name, fn in ops.items()}
                deadline = time.monotonic() + 3 + 10
                for name, future in futures.items():
                    outcome, took = future.result(timeout=max(deadline - time.monotonic(), 0.1))
                    results.setdefault(name, []).append(outcome)
                    slowest = max(slowest, took)
                assert helper.proc.poll() is None, f"the helper died: {helper.log_tail()}"
                state = process_state(helper.proc.pid)
                assert state != "D", "the helper is in D state"
        rss_after = rss_kib(helper.proc.pid)
        assert slowest <= 13, f"an operation took {slowest:.1f}s"
        # Every operation that needs the server failed; errors are EIO or "not connected".
        for name, outcomes in results.items():
            assert all(o in ("EIO", "ENOTCONN") for o in outcomes), (
                name,
                outcomes,
                helper.log_tail(),
            )
        assert hostile.answers >= len(HostileServer.BAD), hostile.answers
        assert rss_after - rss_before < 64 * 1024, (rss_before, rss_after)

        # A well-behaved server again: the mount recovers by itself.
        hostile.agent_port = agent.port

        token = os.path.join(vol, "token")
        wait_for(lambda: reads_back(token, "s3cr3t\n"), 30, "the mount to recover", interval=0.5)
        assert "token" in os.listdir(vol)
        with open(os.path.join(vol, "after"), "w") as f:
            f.write("fine")
        with open(os.path.join(root, "vol", "after")) as f:
            assert f.read() == "fine"
        assert helper.proc.poll() is None
        record(
            "sftp-hostile-server-mount",
            rounds=ROUNDS,
            operations=ROUNDS * len(ops),
            hostile_answers=hostile.answers,
            connections=hostile.connections,
            slowest_s=round(slowest, 2),
            rss_growth_kib=rss_after - rss_before,
            outcomes={k: sorted(set(v)) for k, v in results.items()},
        )
    finally:
        if helper is not None:
            helper.cleanup()
        hostile.stop()
        agent.daemon.stop()
    assert fuse_mounts(workdir) == []
    assert not port_open(hostile.port)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path: str) -> None:
    with open(path, "wb") as f:
        f.write(b"w" * 300000)
        f.flush()
        os.fsync(f.fileno())


#: (name, request types whose answers are corrupted, the file operation in round ``i``).
CASES: list[tuple[str, set[int], Callable[[str, int], object]]] = [
    ("lookup", {ft.FXP_LSTAT}, lambda v, i: os.stat(f"{v}/f{i}")),
    ("open", {ft.FXP_OPEN}, lambda v, i: open(f"{v}/f{i}", "rb").close()),
    ("read", {ft.FXP_READ}, lambda v, i: _read(f"{v}/f{i}")),
    ("readdir", {ft.FXP_READDIR}, lambda v, i: os.listdir(f"{v}/d{i}")),
    ("write", {ft.FXP_WRITE}, lambda v, i: _write(f"{v}/w{i}")),
    ("mkdir", {ft.FXP_MKDIR}, lambda v, i: os.mkdir(f"{v}/m{i}")),
    ("remove", {ft.FXP_REMOVE}, lambda v, i: os.unlink(f"{v}/u{i}")),
    ("rename", {ft.FXP_EXTENDED}, lambda v, i: os.rename(f"{v}/u{i}", f"{v}/r{i}")),
    ("readlink", {ft.FXP_READLINK}, lambda v, i: os.readlink(f"{v}/l{i}")),
    ("statvfs", {ft.FXP_EXTENDED}, lambda v, i: os.statvfs(v)),
]


@pytest.mark.e2e
def test_malformed_answers_to_each_operation_under_a_real_mount(fuse_workdir: str) -> None:
    """
    The server answers well except the one request type an operation needs, which gets a
    malformed answer (each kind of ``HostileServer.BAD`` in turn): that operation fails with
    EIO (ENOTCONN if the connection was already dropped) within the timeout plus 10 s, the
    helper lives and is never in D state, and the next round works on a new connection.
    """
    workdir = fuse_workdir
    rounds = scaled(1, len(HostileServer.BAD))  # per operation
    root = os.path.join(workdir, "exports")
    export = os.path.join(root, "vol")
    os.makedirs(export)
    for i in range(rounds * len(CASES)):
        for name in ("f", "u"):
            with open(os.path.join(export, f"{name}{i}"), "wb") as f:
                f.write(os.urandom(200000))
        os.makedirs(os.path.join(export, f"d{i}", "inner"))
        os.symlink(f"f{i}", os.path.join(export, f"l{i}"))
    agent = Agent(root, free_port(), os.path.join(workdir, "agent.log")).start()
    proxy = HostileServer().start()
    proxy.agent_port = agent.port
    helper: MountHelper | None = None
    outcomes: dict[str, list[str]] = {}
    slowest = 0.0
    try:
        helper = started = MountHelper(workdir, proxy.port).start()
        vol = _add_volume(helper)
        rss_before = rss_kib(helper.proc.pid)
        i = 0
        with ThreadPoolExecutor(max_workers=1) as pool:
            for r in range(rounds):
                for name, kinds, operation in CASES:
                    wait_for(
                        lambda: started.request({"op": "status"}, 20).get("connected"),
                        15,
                        "reconnect",
                    )
                    proxy.bad = i + r  # every kind of malformation, rotating over the cases
                    proxy.corrupt = kinds
                    before = proxy.answers
                    start = time.monotonic()
                    future = pool.submit(operation, vol, i)
                    try:
                        future.result(timeout=3 + 10)
                        outcome = "ok"
                    except OSError as e:
                        outcome = errno.errorcode.get(e.errno or 0, str(e.errno))
                    took = time.monotonic() - start
                    proxy.corrupt = set()
                    slowest = max(slowest, took)
                    outcomes.setdefault(name, []).append(outcome)
                    assert outcome in ("EIO", "ENOTCONN"), (name, r, outcome, helper.log_tail())
                    assert proxy.answers > before, f"{name}: no answer was corrupted"
                    assert helper.proc.poll() is None, f"the helper died: {helper.log_tail()}"
                    assert process_state(helper.proc.pid) != "D"
                    i += 1
        # Well-behaved again: the same mount works.
        wait_for(lambda: started.request({"op": "status"}, 20).get("connected"), 15, "reconnect")
        wait_for(lambda: _read(f"{vol}/f0") == _read(f"{export}/f0"), 15, "a read to work")
        _write(f"{vol}/after")
        assert os.path.getsize(f"{export}/after") == 300000
        rss_growth = rss_kib(helper.proc.pid) - rss_before
        assert rss_growth < 64 * 1024, rss_growth
        record(
            "sftp-malformed-answer-per-operation",
            operations=i,
            corrupted_answers=proxy.answers,
            connections=proxy.connections,
            slowest_s=round(slowest, 2),
            rss_growth_kib=rss_growth,
            outcomes={k: sorted(set(v)) for k, v in outcomes.items()},
        )
    finally:
        if helper is not None:
            helper.cleanup()
        proxy.stop()
        agent.daemon.stop()
    assert fuse_mounts(workdir) == []
