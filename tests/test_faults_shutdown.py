"""
Fault suite, item 7 for the other twistd apps: SIGTERM completes the requests in flight, closes
what the app holds open and exits within 10 s.

- ``twistd teleroute``: a CreateEndpoint or Join held up by the daemon (a slow one, a mute one);
- ``twistd sftp-agent``: a client streaming writes (and reads) when the signal comes;
- ``twistd telepresence-daemon`` (in a scratch network namespace): unary RPCs in flight, a
  Connect stream and an SFTP transfer through one of its bridges.

(telemount's is in tests/test_faults_telemount.py.) The unit test of the order in which the
teleroute plug-in stops is not end-to-end; the others are.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from typing import Any, cast

import grpc
import pytest
from google.protobuf import empty_pb2
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.python.threadpool import ThreadPool

from telenet.dockerplugin import PluginSite
from telenet.proto import teleroute_pb2, teleroute_pb2_grpc
from telenet.routeplugin import NetworkDriver, _DriverService

from .conftest import TWISTD, Agent, Daemon, wait_for
from .faultkit import post, record

#: Item 7: every app exits within this many seconds of SIGTERM.
EXIT_WITHIN = 10.0


def _sigterm_and_wait(daemon: Daemon) -> tuple[float, int | None]:
    """SIGTERM ``daemon``; how long it took to exit, and its exit code."""
    assert daemon.proc is not None
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    try:
        daemon.proc.wait(timeout=EXIT_WITHIN + 5)
    except Exception:
        daemon.proc.kill()
        daemon.proc.wait()
        raise AssertionError(
            f"no exit within {EXIT_WITHIN + 5}s of SIGTERM: {daemon.log()}"
        ) from None
    return time.monotonic() - started, daemon.proc.returncode


# -- twistd teleroute ------------------------------------------------------------------------


def test_teleroute_closes_daemon_connections_only_after_requests_in_flight() -> None:
    """
    The plug-in's driver service stops in order: the site's requests in flight are answered
    first, then the daemon connections close (closing them first cancelled a Join waiting for
    a slow daemon), then the state thread stops (stopping it first left a request's save, and
    so its answer, waiting for ever).
    """
    events: list[str] = []
    drained: defer.Deferred[None] = defer.Deferred()
    closed: defer.Deferred[None] = defer.Deferred()

    class Site:
        def drain(self) -> defer.Deferred[None]:
            events.append("drain")
            return drained

    class Driver:
        def start(self) -> None:
            events.append("driver.start")

        def stop(self) -> defer.Deferred[None]:
            events.append("driver.stop")
            return closed

    class Pool:
        def start(self) -> None:
            events.append("pool.start")

        def stop(self) -> None:
            events.append("pool.stop")

    reactor = MemoryReactorClock()
    svc = _DriverService(
        cast(NetworkDriver, Driver()), reactor, cast(PluginSite, Site()), cast(ThreadPool, Pool())
    )
    svc.startService()
    reactor.run()
    assert events == ["pool.start", "driver.start"]
    stopped: list[object] = []
    svc.stopService().addCallback(stopped.append)
    assert events[2:] == ["drain"] and not stopped
    drained.callback(None)
    assert events[2:] == ["drain", "driver.stop"] and not stopped
    closed.callback(None)
    assert events[2:] == ["drain", "driver.stop", "pool.stop"] and stopped


class HeldDaemon(teleroute_pb2_grpc.TelerouteServicer):
    """
    A teleroute daemon whose CreateEndpoint and Join take ``delay`` seconds (None: forever,
    until the test ends). Connect sends its Info and holds the stream open.
    """

    def __init__(self, delay: float | None) -> None:
        self.delay = delay
        self.done = threading.Event()
        self.started: list[str] = []

    def _hold(self, what: str, context: Any) -> None:
        self.started.append(what)
        if self.delay is None:
            while not self.done.is_set() and context.is_active():
                time.sleep(0.05)
        else:
            self.done.wait(self.delay)

    def Connect(self, request: Any, context: Any) -> Iterator[Any]:  # noqa: N802
        yield teleroute_pb2.Info(info={"name": "held-daemon", "version": "0"})
        while not self.done.is_set() and context.is_active():
            time.sleep(0.05)

    def CreateEndpoint(self, request: Any, context: Any) -> Any:  # noqa: N802
        self._hold("CreateEndpoint", context)
        return empty_pb2.Empty()

    def Join(self, request: Any, context: Any) -> Any:  # noqa: N802
        self._hold("Join", context)
        return teleroute_pb2.JoinResponse(interface_src_name="tp-held", interface_dst_prefix="tpd")

    def Leave(self, request: Any, context: Any) -> Any:  # noqa: N802
        return empty_pb2.Empty()

    def RemoveEndpoint(self, request: Any, context: Any) -> Any:  # noqa: N802
        return empty_pb2.Empty()


def _teleroute(workdir: str) -> tuple[Daemon, str]:
    sock = os.path.join(workdir, "teleroute.sock")
    daemon = Daemon(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "teleroute",
            "--listen",
            f"unix:{sock}:mode=660",
            "--state-dir",
            os.path.join(workdir, "state"),
        ],
        os.path.join(workdir, "teleroute.log"),
    ).start()
    wait_for(lambda: os.path.exists(sock) or not daemon.alive(), 20, "the teleroute plug-in socket")
    assert daemon.alive(), daemon.log()
    return daemon, sock


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("call", "delay"),
    [("CreateEndpoint", 1.5), ("Join", 1.5), ("CreateEndpoint", None)],
    ids=["create-endpoint-slow-daemon", "join-slow-daemon", "create-endpoint-mute-daemon"],
)
def test_teleroute_sigterm_with_request_in_flight(
    workdir: str, call: str, delay: float | None
) -> None:
    """
    SIGTERM of ``twistd teleroute`` while Docker's CreateEndpoint or Join waits for the daemon.

    A daemon that answers in 1.5 s: the request gets the daemon's answer (a success, not a
    cancelled call). A daemon that never answers: the request gets an error after the call
    timeout (3 s). Either way the plug-in exits within 10 s.
    """
    held = HeldDaemon(delay)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    teleroute_pb2_grpc.add_TelerouteServicer_to_server(held, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    plugin, sock = _teleroute(workdir)
    network = uuid.uuid4().hex * 2
    endpoint = uuid.uuid4().hex * 2
    try:
        body = {
            "NetworkID": network,
            "Options": {"com.docker.network.generic": {"host": "127.0.0.1", "port": str(port)}},
            "IPv4Data": [{"AddressSpace": "", "Gateway": "172.31.0.1/16", "Pool": "172.31.0.0/16"}],
        }
        status, answer = post(sock, "/NetworkDriver.CreateNetwork", json.dumps(body).encode())
        assert status == 200 and json.loads(answer) == {}, (status, answer, plugin.log())
        if call == "Join":
            held.delay = 0.0
            status, answer = post(
                sock,
                "/NetworkDriver.CreateEndpoint",
                json.dumps(
                    {
                        "NetworkID": network,
                        "EndpointID": endpoint,
                        "Interface": {"Address": "172.31.0.5/16"},
                    }
                ).encode(),
            )
            assert status == 200, (status, answer)
            held.delay = delay
            held.started.clear()
            request: dict[str, Any] = {
                "NetworkID": network,
                "EndpointID": endpoint,
                "SandboxKey": "/x",
            }
        else:
            request = {
                "NetworkID": network,
                "EndpointID": endpoint,
                "Interface": {"Address": "172.31.0.5/16"},
            }
        result: list[tuple[int, bytes]] = []
        t = threading.Thread(
            target=lambda: result.append(
                post(sock, f"/NetworkDriver.{call}", json.dumps(request).encode(), timeout=20)
            )
        )
        t.start()
        wait_for(lambda: call in held.started, 10, f"the {call} to reach the daemon")
        elapsed, code = _sigterm_and_wait(plugin)
        t.join(timeout=10)
    finally:
        held.done.set()
        plugin.stop()
        server.stop(0)
    log = plugin.log()
    assert elapsed <= EXIT_WITHIN, f"SIGTERM took {elapsed:.1f}s: {log}"
    assert code in (0, -signal.SIGTERM), log
    assert result, f"the {call} in flight got no answer: {log}"
    status, answer = result[0]
    assert status != 0, f"the {call} in flight was dropped unanswered: {log}"
    if delay is not None:
        assert status == 200, (status, answer, log)
        assert "Err" not in json.loads(answer), answer
    else:
        assert status == 500 and json.loads(answer)["Err"], (status, answer)
    record(
        f"sigterm-teleroute-{call}-{'mute' if delay is None else 'slow'}",
        exit_s=round(elapsed, 2),
        inflight_status=status,
    )


# -- twistd sftp-agent -----------------------------------------------------------------------


class RawSFTP:
    """A pipelining raw SFTP v3 client on a blocking socket (no SSH, as the agent speaks)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=EXIT_WITHIN + 5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""
        self._next_id = 0
        self._send(1, struct.pack("!L", 3))  # FXP_INIT, version 3
        kind, _ = self.read()
        assert kind == 2, kind  # FXP_VERSION

    def _send(self, kind: int, payload: bytes) -> None:
        self.sock.sendall(struct.pack("!LB", len(payload) + 1, kind) + payload)

    def request(self, kind: int, payload: bytes) -> int:
        self._next_id += 1
        self._send(kind, struct.pack("!L", self._next_id) + payload)
        return self._next_id

    def read(self) -> tuple[int, bytes]:
        """The next packet's type and body; ``(0, b"")`` once the agent closed the connection."""
        while len(self._buf) < 4 or len(self._buf) < 4 + struct.unpack_from("!L", self._buf)[0]:
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                data = b""
            if not data:
                return 0, b""
            self._buf += data
        (length,) = struct.unpack_from("!L", self._buf)
        packet, self._buf = self._buf[4 : 4 + length], self._buf[4 + length :]
        return packet[0], packet[1:]

    def open(self, path: bytes, flags: int) -> bytes:
        self.request(3, struct.pack("!L", len(path)) + path + struct.pack("!LL", flags, 0))
        kind, body = self.read()
        assert kind == 102, (kind, body)  # FXP_HANDLE
        (n,) = struct.unpack_from("!L", body, 4)
        return body[8 : 8 + n]

    def close(self) -> None:
        self.sock.close()


def _string(data: bytes) -> bytes:
    return struct.pack("!L", len(data)) + data


CHUNK = 64 * 1024
WINDOW = 32


def _chunk(i: int) -> bytes:
    return bytes([i % 251]) * CHUNK


@pytest.mark.e2e
def test_sftp_agent_sigterm_with_transfers_in_flight(sftp_agent: Agent) -> None:
    """
    SIGTERM of ``twistd sftp-agent`` while a client streams pipelined 64 KiB WRITEs (32 in
    flight) and another streams READs of a 16 MiB file: the agent exits within 10 s, both
    connections end (no client is left waiting), and every WRITE the agent answered with
    FX_OK is in the file afterwards, byte for byte.
    """
    export = os.path.join(sftp_agent.root, "echo")
    with open(os.path.join(export, "big"), "wb") as f:
        f.write(os.urandom(16 << 20))
    writer, reader = RawSFTP(sftp_agent.port), RawSFTP(sftp_agent.port)
    wh = writer.open(b"/tel_app_exports/echo/streamed", 0x02 | 0x08 | 0x10)
    rh = reader.open(b"/tel_app_exports/echo/big", 0x01)
    acked: set[int] = set()
    failed: list[int] = []
    reads = {"data": 0}
    ended: dict[str, float] = {}
    signalled = threading.Event()
    signalled_at: list[float] = []

    def write_loop() -> None:
        sent: dict[int, int] = {}
        i = 0
        while True:
            while len(sent) < WINDOW and not signalled.is_set():
                rid = writer.request(
                    6, _string(wh) + struct.pack("!Q", i * CHUNK) + _string(_chunk(i))
                )
                sent[rid] = i
                i += 1
            if not sent:
                break
            kind, body = writer.read()
            if kind == 0:
                break
            rid, code = struct.unpack_from("!LL", body)
            if code == 0:
                acked.add(sent.pop(rid))
            else:
                failed.append(sent.pop(rid))
        ended["writer"] = time.monotonic()

    def read_loop() -> None:
        offset = 0
        outstanding = 0
        while True:
            while outstanding < 8 and not signalled.is_set():
                reader.request(5, _string(rh) + struct.pack("!QL", offset % (16 << 20), CHUNK))
                offset += CHUNK
                outstanding += 1
            if not outstanding:
                break
            kind, _ = reader.read()
            if kind == 0:
                break
            outstanding -= 1
            reads["data"] += kind == 103
        ended["reader"] = time.monotonic()

    threads = [threading.Thread(target=f, daemon=True) for f in (write_loop, read_loop)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(acked) >= 200 and reads["data"] >= 50, 30, "transfers under way")
        assert sftp_agent.daemon.proc is not None
        started = time.monotonic()
        sftp_agent.daemon.proc.send_signal(signal.SIGTERM)
        # The clients keep their requests flowing for a moment after the signal.
        time.sleep(0.2)
        signalled.set()
        signalled_at.append(time.monotonic())
        sftp_agent.daemon.proc.wait(timeout=EXIT_WITHIN + 5)
        elapsed = time.monotonic() - started
        for t in threads:
            t.join(timeout=EXIT_WITHIN)
        assert not any(t.is_alive() for t in threads), f"a client hung: {ended}"
    finally:
        writer.close()
        reader.close()
    log = sftp_agent.daemon.log()
    assert elapsed <= EXIT_WITHIN, f"SIGTERM took {elapsed:.1f}s: {log}"
    assert sftp_agent.daemon.proc.returncode in (0, -signal.SIGTERM), log
    assert "Traceback" not in log, log
    assert not failed, f"WRITEs answered with an error: {failed[:5]}"
    with open(os.path.join(export, "streamed"), "rb") as streamed:
        data = streamed.read()
    for i in sorted(acked):
        assert data[i * CHUNK : (i + 1) * CHUNK] == _chunk(i), f"acknowledged chunk {i} is lost"
    record(
        "sigterm-sftp-agent",
        exit_s=round(elapsed, 2),
        acked_writes=len(acked),
        chunk_bytes=CHUNK,
        lost=0,
        reads_answered=reads["data"],
    )
