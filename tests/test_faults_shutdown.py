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

import errno
import ipaddress
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from typing import Any, cast

import grpc
import pytest
import pytest_twisted
from google.protobuf import empty_pb2
from twisted.application.service import Service
from twisted.conch.ssh.filetransfer import FXF_READ, FXF_WRITE
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from telenet.core.dockerplugin import PluginSite
from telenet.core.interfaces import IMounter, VolumeSpec
from telenet.core.netip import encode_addr
from telenet.daemon import Options as DaemonOptions
from telenet.daemon import makeService
from telenet.mountplugin import VolumeDriver, _MounterService
from telenet.netplugin.driver import NetworkDriver
from telenet.routeplugin import _DriverService
from telenet.sftp.rooted import RootedFilesystem
from telenet.teleroute.proto import teleroute_pb2, teleroute_pb2_grpc
from telenet.teleroute.service import CoreRefusal, TelerouteCore
from telenet.testing import MemoryNetlink
from telenet.volumes.mounter import EXIT_GRACE, ProcessMounter

from .conftest import TWISTD, Agent, Daemon, Telemount, fuse_mounts, require, wait_for
from .faultkit import post, process_state, record
from .test_e2e_telemount import helper_pids

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
    with open(os.path.join(workdir, "state", "state.json")) as f:
        saved = json.load(f)
    if delay is not None:
        assert status == 200, (status, answer, log)
        assert "Err" not in json.loads(answer), answer
        # What Docker was told succeeded is saved for the next start.
        assert endpoint in saved["endpoints"], saved
    else:
        assert status == 500 and json.loads(answer)["Err"], (status, answer)
        assert endpoint not in saved["endpoints"], saved
    assert network in saved["networks"], saved
    record(
        f"sigterm-teleroute-{call}-{'mute' if delay is None else 'slow'}",
        exit_s=round(elapsed, 2),
        inflight_status=status,
    )


# -- twistd telemount: a Create in flight to a slow (but working) server -----------------------


def test_telemount_unmounts_only_after_requests_in_flight() -> None:
    """
    telemount's mounter service stops in order: requests in flight are answered first, then
    the helpers are stopped and unmounted, then (after a moment for the answers of requests
    that failed with their helper to be written) the state thread stops.
    """
    events: list[str] = []
    drained: defer.Deferred[None] = defer.Deferred()
    clock = MemoryReactorClock()

    class Site:
        reactor = clock

        def drain(self) -> defer.Deferred[None]:
            events.append("drain")
            return drained

    class Mounter:
        def adopt(self, expected: object) -> defer.Deferred[None]:
            events.append("adopt")
            return defer.succeed(None)

        def shutdown(self) -> defer.Deferred[None]:
            events.append("shutdown")
            return defer.succeed(None)

    class Driver:
        def expected_mounts(self) -> dict[str, str]:
            return {}

    class Pool:
        def start(self) -> None:
            events.append("pool.start")

        def stop(self) -> None:
            events.append("pool.stop")

    svc = _MounterService(
        cast(IMounter, Mounter()),
        cast(VolumeDriver, Driver()),
        cast(PluginSite, Site()),
        cast(ThreadPool, Pool()),
    )
    svc.startService()
    assert events == ["pool.start", "adopt"]
    stopped: list[object] = []
    svc.stopService().addCallback(stopped.append)
    assert events[2:] == ["drain"] and not stopped
    drained.callback(None)
    assert events[2:] == ["drain", "shutdown"] and not stopped
    clock.advance(0.1)
    assert events[2:] == ["drain", "shutdown", "pool.stop"] and stopped


STAND_IN_HELPER = textwrap.dedent(
    """
    # A mount helper stand-in: with $LINGER it takes that long to exit after its shutdown is
    # answered; with $NEVER_READY it never reports ready (a server that does not answer).
    import argparse, json, os, socket, sys, time
    parser = argparse.ArgumentParser()
    for flag in ("--host", "--port", "--mountpoint", "--control", "--log-file", "--timeout"):
        parser.add_argument(flag)
    args = parser.parse_args()
    if os.environ.get("NEVER_READY"):
        time.sleep(3600)
    server = socket.socket(socket.AF_UNIX)
    server.bind(args.control)
    server.listen(4)
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    while True:
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                op = json.loads(line).get("op")
                reply = {"ok": True, "pid": os.getpid(), "host": args.host,
                         "port": int(args.port), "mountpoint": args.mountpoint,
                         "connected": True, "volumes": {}, "since": 0}
                stream.write(json.dumps(reply).encode() + b"\\n")
                stream.flush()
                if op == "shutdown":
                    os.unlink(args.control)
                    time.sleep(float(os.environ.get("LINGER", "0")))
                    sys.exit(0)
    """
)


@pytest.fixture
def stand_in_mounter(tmp_path: Any) -> Iterator[tuple[ProcessMounter, int]]:
    """A ProcessMounter whose helper is STAND_IN_HELPER, and a port that accepts connections."""
    from twisted.internet import protocol, reactor

    helper = tmp_path / "helper.py"
    helper.write_text(STAND_IN_HELPER)
    factory = protocol.ServerFactory()
    factory.protocol = protocol.Protocol
    server = reactor.listenTCP(0, factory, interface="127.0.0.1")
    mounter = ProcessMounter(
        reactor,
        mount_root=str(tmp_path / "mnt"),
        state_dir=str(tmp_path / "state"),
        timeout=2,
        helper=[sys.executable, str(helper)],
    )
    yield mounter, int(getattr(server.getHost(), "port", 0))
    server.stopListening()


@pytest_twisted.ensureDeferred
async def test_telemount_shutdown_waits_for_its_helpers_to_exit(
    stand_in_mounter: tuple[ProcessMounter, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The mounter's shutdown returns once the helpers it started have exited, not as soon as
    they have unmounted: with the plug-in now unmounting after the requests in flight are
    answered, helpers were still exiting when the plug-in was gone.
    """
    mounter, port = stand_in_mounter
    monkeypatch.setenv("LINGER", "0.5")
    await mounter.attach(VolumeSpec("127.0.0.1", port, "v", "/tel_app_exports/c", False))
    pid = (await mounter.status("127.0.0.1", port))["pid"]
    started = time.monotonic()
    await mounter.shutdown()
    took = time.monotonic() - started
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert 0.4 <= took < EXIT_GRACE, took


@pytest_twisted.ensureDeferred
async def test_telemount_shutdown_kills_a_helper_still_starting(
    stand_in_mounter: tuple[ProcessMounter, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A helper still starting when the plug-in stops (its server accepts connections but never
    answers, and the drain gave up on the Create) is killed at once: the attach fails, the
    shutdown is quick, and the helper does not outlive the plug-in (it would have run until
    its own timeout).
    """
    mounter, port = stand_in_mounter
    monkeypatch.setenv("NEVER_READY", "1")
    attaching = mounter.attach(VolumeSpec("127.0.0.1", port, "v", "/tel_app_exports/c", False))
    outcome: list[Any] = []
    attaching.addBoth(outcome.append)
    from twisted.internet import reactor

    await deferLater(reactor, 0.5, lambda: None)
    assert not outcome
    started = time.monotonic()
    await mounter.shutdown()
    took = time.monotonic() - started
    await deferLater(reactor, 0.1, lambda: None)
    assert outcome and isinstance(outcome[0], Failure), outcome
    assert "exited" in str(outcome[0].value), outcome[0]
    assert took < EXIT_GRACE, took
    assert (
        subprocess.run(["pgrep", "-f", str(mounter.state_dir)], capture_output=True).stdout == b""
    )


class SlowBridge:
    """A TCP relay to ``target`` that waits ``delay`` seconds before relaying a connection."""

    def __init__(self, target: int, delay: float) -> None:
        self.target = target
        self.delay = delay
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(conn)
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        time.sleep(self.delay)
        try:
            up = socket.create_connection(("127.0.0.1", self.target))
        except OSError:
            conn.close()
            return
        self.sockets.append(up)
        for a, b in ((conn, up), (up, conn)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        for s in self.sockets:
            s.close()


@pytest.mark.e2e
def test_telemount_sigterm_with_create_in_flight_to_a_slow_server(
    telemount: Telemount, sftp_agent: Agent
) -> None:
    """
    SIGTERM of ``twistd telemount`` while a Create waits for a server that answers after
    1.5 s: the Create is completed and answered (200, and the volume is saved), the plug-in
    exits within 10 s, and no FUSE mount or helper is left. (Before the fix the request was
    dropped unanswered, the plug-in took the whole 8 s drain to exit, and the new volume's
    helper and FUSE mount stayed behind.)
    """
    slow = SlowBridge(sftp_agent.port, 1.5)
    opts = {"host": "127.0.0.1", "port": str(slow.port), "container": "echo"}
    name = f"tntest-shut-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"Name": name, "Opts": opts}).encode()
    answer: list[tuple[int, bytes]] = []
    try:
        t = threading.Thread(
            target=lambda: answer.append(
                post(telemount.socket, "/VolumeDriver.Create", body, timeout=20)
            )
        )
        t.start()
        time.sleep(0.5)
        elapsed, code = _sigterm_and_wait(telemount.daemon)
        t.join(timeout=10)
    finally:
        slow.close()
    log = telemount.daemon.log()
    mounts = fuse_mounts(telemount.mount_root)
    helpers = [(pid, process_state(pid)) for pid in helper_pids(telemount)]
    for mp in mounts:
        subprocess.run(["fusermount3", "-uz", mp], capture_output=True)
    for pid, _ in helpers:
        os.kill(pid, signal.SIGKILL)
    with open(os.path.join(telemount.state_dir, "volumes.json")) as f:
        saved = json.load(f)["volumes"]
    # Docker never heard of this volume: it is removed through the plug-in, not by the
    # fixture's `docker volume rm` (dockerd would ask every plug-in it ever knew).
    telemount.start()
    removed = post(telemount.socket, "/VolumeDriver.Remove", json.dumps({"Name": name}).encode())
    assert elapsed <= EXIT_WITHIN, f"SIGTERM took {elapsed:.1f}s: {log}"
    assert answer and answer[0][0] == 200, (answer, log)
    assert mounts == [] and helpers == [], (mounts, helpers, log)
    assert name in saved
    assert removed[0] == 200, removed
    record("sigterm-telemount-slow-create", exit_s=round(elapsed, 2), inflight_status=200)


@pytest.mark.e2e
def test_telemount_sigterm_with_default_timeout_and_a_mute_server(
    workdir: str, fuse_ready: None
) -> None:
    """
    ``twistd telemount`` with its default timeout (10 s, longer than the 8 s drain) gets
    SIGTERM while a Create waits for a server that accepts connections and never speaks: the
    drain gives up at 8 s, the helper still starting is killed, the Create is answered with
    an error, and the plug-in exits within 10 s with no helper and no mount left. (Before, the
    request was dropped unanswered; with the helpers waited for, the exit took the whole
    10 s helper timeout.)
    """
    sock = os.path.join(workdir, "telemount.sock")
    mount_root = os.path.join(workdir, "mnt")
    plugin = Daemon(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "telemount",
            "--listen",
            f"unix:{sock}:mode=660",
            "--mount-root",
            mount_root,
            "--state-dir",
            os.path.join(workdir, "state"),
        ],
        os.path.join(workdir, "telemount.log"),
    ).start()
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)
    answer: list[tuple[int, bytes]] = []
    try:
        wait_for(lambda: os.path.exists(sock) or not plugin.alive(), 20, "the plug-in socket")
        opts = {"host": "127.0.0.1", "port": str(mute.getsockname()[1]), "container": "echo"}
        body = json.dumps({"Name": f"tntest-shut-{uuid.uuid4().hex[:8]}", "Opts": opts})
        t = threading.Thread(
            target=lambda: answer.append(
                post(sock, "/VolumeDriver.Create", body.encode(), timeout=30)
            )
        )
        t.start()
        wait_for(lambda: "starting mount helper" in plugin.log(), 10, "the helper to start")
        elapsed, code = _sigterm_and_wait(plugin)
        t.join(timeout=10)
    finally:
        plugin.stop()
        mute.close()
    log = plugin.log()
    helpers = subprocess.run(
        ["pgrep", "-f", f"telenet.fuse.helper .*{mount_root}"], capture_output=True, text=True
    ).stdout.split()
    for pid in helpers:
        os.kill(int(pid), signal.SIGKILL)
    assert elapsed <= EXIT_WITHIN, f"SIGTERM took {elapsed:.1f}s: {log}"
    assert answer and answer[0][0] == 500, (answer, log)
    assert json.loads(answer[0][1])["Err"], answer
    assert helpers == [] and fuse_mounts(mount_root) == [], (helpers, log)
    record("sigterm-telemount-default-timeout-mute", exit_s=round(elapsed, 2), inflight_status=500)


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


def test_agent_opening_a_fifo_does_not_block() -> None:
    """
    Opening a FIFO of the export (read or write) returns at once: it blocked waiting for a
    peer, on the agent's reactor thread. Reading it then fails rather than waits.
    """
    with tempfile.TemporaryDirectory(prefix="tntest-shut-") as root:
        os.mkfifo(os.path.join(root, "pipe"))
        fs = RootedFilesystem(root)
        outcome: list[object] = []

        def go() -> None:
            f = fs.openFile(b"pipe", FXF_READ, {})
            try:
                f.readChunk(0, 10)
            except OSError as e:
                outcome.append(e.errno)
            finally:
                f.close()
            try:
                fs.openFile(b"pipe", FXF_WRITE, {})
            except OSError as e:
                outcome.append(e.errno)

        t = threading.Thread(target=go, daemon=True)
        t.start()
        t.join(timeout=5)
        if t.is_alive():
            # Unblock the thread (a writer for its open) before failing.
            os.close(os.open(os.path.join(root, "pipe"), os.O_WRONLY | os.O_NONBLOCK))
            raise AssertionError("opening a FIFO blocked")
        # pread on a FIFO: ESPIPE; a FIFO opened for writing with no reader: ENXIO.
        assert outcome == [errno.ESPIPE, errno.ENXIO], outcome


@pytest.mark.e2e
def test_sftp_agent_sigterm_with_a_client_opening_a_fifo(sftp_agent: Agent) -> None:
    """
    A client opens a FIFO in the export: the agent keeps serving other clients, and SIGTERM
    still stops it within 10 s (the open blocked its reactor: other clients got no answer
    and SIGTERM was never acted on).
    """
    os.mkfifo(os.path.join(sftp_agent.root, "echo", "pipe"))
    first = RawSFTP(sftp_agent.port)
    path = b"/tel_app_exports/echo/pipe"
    first.request(3, _string(path) + struct.pack("!LL", 0x01, 0))
    kind, _ = first.read()
    assert kind in (101, 102), kind  # answered: a handle or a status, not a hang
    started = time.monotonic()
    second = RawSFTP(sftp_agent.port)
    served = time.monotonic() - started
    elapsed, code = _sigterm_and_wait(sftp_agent.daemon)
    first.close()
    second.close()
    assert served < 2, served
    assert elapsed <= EXIT_WITHIN, elapsed
    assert code in (0, -signal.SIGTERM), sftp_agent.daemon.log()
    record(
        "sigterm-sftp-agent-fifo", exit_s=round(elapsed, 2), other_client_served_s=round(served, 2)
    )


# -- twistd telepresence-daemon --------------------------------------------------------------


def test_daemon_stop_deletes_the_pair_of_a_create_endpoint_in_flight() -> None:
    """
    TelerouteCore.stop while a CreateEndpoint waits for netlink: the pair it makes is deleted
    too (it was left behind: stop deleted only the pairs that existed when it began), and a
    CreateEndpoint after stop began is refused with UNAVAILABLE.
    """
    gates: list[defer.Deferred[None]] = []

    class SlowNetlink(MemoryNetlink):
        def create_veth(self, name: str, mac: str, peer: str, peer_mac: str) -> Any:
            gate: defer.Deferred[None] = defer.Deferred()
            gates.append(gate)
            return gate.addCallback(
                lambda _: super(SlowNetlink, self).create_veth(name, mac, peer, peer_mac)
            )

    pid = 4242
    netlink = SlowNetlink(processes={pid})
    core = TelerouteCore(netlink, list)
    core.start()
    core.connect(teleroute_pb2.ConnectRequest(pid=pid))

    def create(endpoint_id: str, address: str) -> defer.Deferred[None]:
        return core.create_endpoint(
            teleroute_pb2.CreateEndpointRequest(
                id=endpoint_id, addr_ipv4=encode_addr(ipaddress.ip_address(address))
            )
        )

    created: list[object] = []
    create("e1", "172.30.0.5").addBoth(created.append)
    assert len(gates) == 1
    stopped: list[object] = []
    core.stop().addBoth(stopped.append)
    late: list[Any] = []
    create("e2", "172.30.0.6").addBoth(late.append)
    assert not created and not stopped and not late
    gates[0].callback(None)
    assert created == [None] and stopped == [None]
    assert isinstance(late[0].value, CoreRefusal), late
    assert late[0].value.code == grpc.StatusCode.UNAVAILABLE
    assert [n for n in netlink.links_by_name if n.startswith("tp-")] == []
    assert len(gates) == 1, "the late CreateEndpoint made a veth"


def test_daemon_services_stop_one_after_the_other_in_reverse() -> None:
    """
    The daemon's children stop one at a time, last started first: the netlink closer (the
    first child) only once teleroute (which uses netlink until its CreateEndpoints in flight
    are done) has stopped. Twisted's MultiService stops them all at once.
    """
    events: list[str] = []
    gates: dict[str, defer.Deferred[None]] = {}

    class Child(Service):
        def stopService(self) -> defer.Deferred[None]:  # noqa: N802
            super().stopService()
            name = str(self.name)
            events.append(f"stop {name}")
            gates[name] = defer.Deferred()
            return gates[name]

    top = makeService(_daemon_options(), reactor=MemoryReactorClock(), netlink=MemoryNetlink())
    for child in list(top):
        child.disownServiceParent()
    for name in ("netlink", "teleroute", "control"):
        c = Child()
        c.setName(name)
        c.setServiceParent(top)
    top.startService()
    stopped: list[object] = []
    top.stopService().addCallback(stopped.append)
    assert events == ["stop control"]
    gates["control"].errback(RuntimeError("a child that fails to stop"))
    assert events == ["stop control", "stop teleroute"]
    gates["teleroute"].callback(None)
    assert events == ["stop control", "stop teleroute", "stop netlink"] and not stopped
    gates["netlink"].callback(None)
    assert stopped


def _daemon_options() -> DaemonOptions:
    options = DaemonOptions()
    options.parseOptions(["--dns-port", "0"])
    return options


DAEMON_CLIENT = textwrap.dedent(
    """
    import ipaddress, json, struct, sys, threading, time, urllib.request, uuid
    import grpc
    from telenet.core.netip import encode_addr, encode_prefix
    from telenet.teleroute.proto import teleroute_pb2 as pb, teleroute_pb2_grpc as pbg
    from tests.test_faults_shutdown import RawSFTP, WINDOW, _chunk, _string, CHUNK

    agent_port, pid, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    req = urllib.request.Request(
        "http://127.0.0.1:4038/bridges", method="POST",
        data=json.dumps({"agent": f"127.0.0.1:{agent_port}"}).encode(),
        headers={"Content-Type": "application/json"})
    bridge_port = json.load(urllib.request.urlopen(req, timeout=10))["port"]
    stub = pbg.TelerouteStub(grpc.insecure_channel("127.0.0.1:4039"))
    stream = stub.Connect(pb.ConnectRequest(pid=pid, gateways=[
        encode_prefix(ipaddress.ip_interface("172.30.0.1/16"))]))
    info = dict(next(stream).info)
    # The daemon's own endpoint first: a Join answers with routes via its address.
    stub.CreateEndpoint(pb.CreateEndpointRequest(
        id="d" * 64, daemon=True, addr_ipv4=encode_addr(ipaddress.ip_address("172.30.0.2"))),
        timeout=10)
    lock = threading.Lock()
    out = {"info": info, "codes": {}, "samples": {}, "creates": 0, "ends": {}, "acked": [],
           "failed_writes": 0, "bridge_port": bridge_port}
    counter = iter(range(3, 60000))

    def call(method, request):
        try:
            getattr(stub, method)(request, timeout=15)
            code, details = "OK", ""
        except grpc.RpcError as e:
            code, details = e.code().name, e.details() or ""
        with lock:
            key = f"{method}:{code}"
            out["codes"][key] = out["codes"].get(key, 0) + 1
            if code != "OK":
                seen = out["samples"].setdefault(key, [])
                if details[:120] not in seen:
                    seen.append(details[:120])
        return code

    def worker(n):
        while True:
            with lock:
                i = next(counter)
            eid = uuid.uuid4().hex * 2
            ident = pb.EndpointIdentifier(id=eid)
            codes = [call("CreateEndpoint", pb.CreateEndpointRequest(
                id=eid, addr_ipv4=encode_addr(ipaddress.ip_address("172.30.0.0") + i)))]
            if codes[0] == "OK":
                with lock:
                    out["creates"] += 1
                for method in ("Join", "Leave", "RemoveEndpoint"):
                    codes.append(call(method, ident))
            if "UNAVAILABLE" in codes or "CANCELLED" in codes:
                break
        out["ends"][f"rpc{n}"] = time.monotonic()

    def watch_stream():
        try:
            for _ in stream:
                pass
            out["stream"] = "OK"
        except grpc.RpcError as e:
            out["stream"] = e.code().name
        out["ends"]["stream"] = time.monotonic()

    def sftp():
        c = RawSFTP(bridge_port)
        h = c.open(b"/tel_app_exports/echo/through-bridge", 0x02 | 0x08 | 0x10)
        sent, i = {}, 0
        while True:
            while len(sent) < WINDOW:
                rid = c.request(6, _string(h) + struct.pack("!Q", i * CHUNK) + _string(_chunk(i)))
                sent[rid] = i
                i += 1
            try:
                kind, body = c.read()
            except OSError:
                kind = 0
            if kind == 0:
                break
            rid, code = struct.unpack_from("!LL", body)
            if code == 0:
                out["acked"].append(sent.pop(rid))
            else:
                out["failed_writes"] += 1
        out["ends"]["sftp"] = time.monotonic()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    threads += [threading.Thread(target=watch_stream), threading.Thread(target=sftp)]
    for t in threads:
        t.daemon = True
        t.start()
    while out["creates"] < 20 or len(out["acked"]) < 50:
        time.sleep(0.05)
    print("ready", flush=True)
    for t in threads:
        t.join(timeout=30)
    out["hung"] = [t.name for t in threads if t.is_alive()]
    with open(out_path, "w") as f:
        json.dump(out, f)
    print("done", flush=True)
    """
)


class Netns:
    """Scratch network namespaces (named with the test prefix), removed afterwards."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add(self) -> str:
        name = f"tntest-shut-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    def links(self, name: str) -> list[str]:
        out = subprocess.run(
            ["ip", "-n", name, "-o", "link"], capture_output=True, text=True, check=True
        ).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def remove(self) -> None:
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def netns() -> Iterator[Netns]:
    require(os.geteuid() == 0, "network namespaces need root")
    require(shutil.which("ip") is not None, "iproute2 (ip) is not installed")
    n = Netns()
    try:
        yield n
    finally:
        n.remove()


@pytest.mark.e2e
def test_daemon_sigterm_with_rpcs_stream_and_bridge_in_flight(workdir: str, netns: Netns) -> None:
    """
    SIGTERM of ``twistd telepresence-daemon`` (in a scratch netns) while three clients loop
    over CreateEndpoint/Join/Leave/RemoveEndpoint, a plug-in holds its Connect stream, and an
    SFTP client streams pipelined writes through one of the daemon's bridges to an agent:

    - the daemon exits within 10 s, cleanly (no traceback);
    - every RPC gets a status (none is left hanging: no DEADLINE_EXCEEDED, no UNKNOWN), the
      Connect stream ends with OK;
    - the bridged connection is closed (the client is not left waiting), and every write the
      agent acknowledged through the bridge is on its disk;
    - no ``tp-`` veth is left in the daemon's netns or the plug-in's.
    """
    daemon_ns, host_ns = netns.add(), netns.add()
    # The daemon's teleroute address (Docker would put it on its tpd- interface): its DNS
    # server binds there once the daemon's endpoint is created.
    subprocess.run(["ip", "-n", daemon_ns, "addr", "add", "172.30.0.2/32", "dev", "lo"], check=True)
    root = os.path.join(workdir, "exports")
    os.makedirs(os.path.join(root, "echo"))
    agent_port = 8022
    agent = Daemon(
        [
            "ip",
            "netns",
            "exec",
            daemon_ns,
            TWISTD,
            "-n",
            "--pidfile=",
            "sftp-agent",
            "--root",
            root,
            "--listen",
            f"tcp:{agent_port}:interface=127.0.0.1",
        ],
        os.path.join(workdir, "agent.log"),
    ).start()
    sleeper = subprocess.Popen(["ip", "netns", "exec", host_ns, "sleep", "300"])
    daemon = Daemon(
        [
            "ip",
            "netns",
            "exec",
            daemon_ns,
            TWISTD,
            "-n",
            "--pidfile=",
            "telepresence-daemon",
            "--subnet",
            "10.200.0.0/16",
        ],
        os.path.join(workdir, "daemon.log"),
    ).start()
    client: Daemon | None = None
    try:
        wait_for(
            lambda: "listening on port 4039" in daemon.log() or not daemon.alive(),
            20,
            "the daemon's gRPC port",
        )
        assert daemon.alive(), daemon.log()
        wait_for(lambda: "starting on" in agent.log() or not agent.alive(), 20, "the agent")
        assert agent.alive(), agent.log()
        result_path = os.path.join(workdir, "client.json")
        client = Daemon(
            [
                "ip",
                "netns",
                "exec",
                daemon_ns,
                sys.executable,
                "-c",
                DAEMON_CLIENT,
                str(agent_port),
                str(sleeper.pid),
                result_path,
            ],
            os.path.join(workdir, "client.log"),
            env={"PYTHONPATH": os.getcwd()},
        ).start()
        wait_for(
            lambda: "ready" in client.log() or not client.alive(), 30, "the clients to get going"
        )
        assert client.alive(), client.log()
        signalled = time.monotonic()
        elapsed, code = _sigterm_and_wait(daemon)
        assert client.proc is not None
        client.proc.wait(timeout=40)
    finally:
        daemon.stop()
        if client is not None:
            client.stop()
        agent.stop()
        sleeper.kill()
        sleeper.wait()
    with open(daemon.log_path, errors="replace") as f:
        log = f.read()
    assert elapsed <= EXIT_WITHIN, f"SIGTERM took {elapsed:.1f}s: {log}"
    assert code in (0, -signal.SIGTERM), log
    assert "Traceback" not in log, log
    with open(result_path) as f:
        out = json.load(f)
    assert out["hung"] == [], out
    bad = {
        k: v for k, v in out["codes"].items() if k.split(":")[1] in ("DEADLINE_EXCEEDED", "UNKNOWN")
    }
    assert bad == {}, (bad, out["samples"])
    # gRPC's words when the grace period ran out on calls still running (the daemon's
    # netlink had been closed under them).
    cut = [k for k, details in out["samples"].items() if "Cancelling all calls" in details]
    assert cut == [], (cut, out["samples"])
    assert out["stream"] == "OK", out
    ends = {k: round(v - signalled, 2) for k, v in out["ends"].items()}
    assert max(ends.values()) <= EXIT_WITHIN, ends
    assert out["failed_writes"] == 0, out
    with open(os.path.join(root, "echo", "through-bridge"), "rb") as streamed:
        data = streamed.read()
    for i in out["acked"]:
        assert data[i * CHUNK : (i + 1) * CHUNK] == _chunk(i), f"acknowledged chunk {i} is lost"
    leftovers = [
        link for ns in (daemon_ns, host_ns) for link in netns.links(ns) if link.startswith("tp-")
    ]
    assert leftovers == [], (
        leftovers,
        [line for line in log.splitlines() if any(link in line for link in leftovers)],
        out["codes"],
        out["samples"],
        log[-3000:],
    )
    record(
        "sigterm-telepresence-daemon",
        exit_s=round(elapsed, 2),
        rpcs=out["codes"],
        creates=out["creates"],
        ends_after_s=ends,
        bridged_writes_acked=len(out["acked"]),
        lost=0,
        errors=out["samples"],
    )
