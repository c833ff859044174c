"""
Fault suite, item 4 (bad input): hypothesis fuzzing of every plug-in endpoint of the real
``twistd telemount`` and ``twistd teleroute`` over their unix sockets.

Bodies are wrong types, missing and unknown fields, huge numbers and strings, invalid UTF-8,
truncated JSON, non-objects, deep nesting and oversized bodies; connections are truncated
mid-body or trickle (slowloris). Every request that gets an answer gets a JSON object (an
error has ``Err``), the plug-ins never die, keep answering others, and their memory stays
bounded. Options that would make a plug-in contact a host are pinned to a closed loopback port
so the fuzzer only ever sends traffic to this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import TWISTD, Daemon, Telemount, require, wait_for
from .faultkit import post, record, rss_kib, scaled

pytestmark = pytest.mark.e2e

VOLUME_ENDPOINTS = [
    "/Plugin.Activate",
    "/VolumeDriver.Create",
    "/VolumeDriver.Remove",
    "/VolumeDriver.Mount",
    "/VolumeDriver.Unmount",
    "/VolumeDriver.Path",
    "/VolumeDriver.Get",
    "/VolumeDriver.List",
    "/VolumeDriver.Capabilities",
]
NETWORK_ENDPOINTS = [
    "/Plugin.Activate",
    "/NetworkDriver.GetCapabilities",
    "/NetworkDriver.CreateNetwork",
    "/NetworkDriver.DeleteNetwork",
    "/NetworkDriver.CreateEndpoint",
    "/NetworkDriver.EndpointOperInfo",
    "/NetworkDriver.DeleteEndpoint",
    "/NetworkDriver.Join",
    "/NetworkDriver.Leave",
    "/NetworkDriver.DiscoverNew",
    "/NetworkDriver.DiscoverDelete",
    "/NetworkDriver.ProgramExternalConnectivity",
    "/NetworkDriver.RevokeExternalConnectivity",
    "/NetworkDriver.AllocateNetwork",
    "/NetworkDriver.FreeNetwork",
]
#: Field names the drivers read, so that the fuzzer reaches past the first type check.
FIELDS = [
    "Name",
    "Opts",
    "ID",
    "NetworkID",
    "EndpointID",
    "Options",
    "Interface",
    "IPv4Data",
    "IPv6Data",
    "SandboxKey",
    "Address",
    "AddressIPv6",
    "MacAddress",
    "Gateway",
    "Pool",
    "host",
    "port",
    "container",
    "dir",
    "ro",
    "daemon",
    "com.docker.network.generic",
]
TRICKY = [
    "127.0.0.1",
    "::1",
    "..",
    "../..",
    "/etc",
    "a/../../b",
    "true",
    "4039",
    "0",
    "65536",
    "-1",
    "1e9",
    "\x00",
    "tp-aaaa",
    "10.0.0.1/24",
    "fd00::1/64",
    "ä" * 300,
    " ",
]

keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=12))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(TRICKY),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=16,
)
objects = st.dictionaries(keys, values, max_size=6)


def _pin(value: Any, closed_port: str) -> Any:
    """Point any host/port option at a closed loopback port: no traffic leaves this machine."""
    if isinstance(value, dict):
        pinned = {k: _pin(v, closed_port) for k, v in value.items()}
        for key in pinned:
            if key == "host" and isinstance(pinned[key], str):
                pinned[key] = "127.0.0.1"
            if key == "port" and isinstance(pinned[key], str) and pinned[key].isdigit():
                pinned[key] = closed_port
        return pinned
    if isinstance(value, list):
        return [_pin(v, closed_port) for v in value]
    return value


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """A request body: mostly JSON objects, else broken or hostile bytes."""
    kind = draw(st.sampled_from(["object"] * 6 + ["value", "binary", "truncated", "badutf8"]))
    if kind == "object":
        return json.dumps(draw(objects)).encode()
    if kind == "value":
        return json.dumps(draw(values)).encode()
    if kind == "binary":
        return draw(st.binary(max_size=200))
    text = json.dumps(draw(objects)).encode()
    if kind == "truncated":
        return text[: draw(st.integers(min_value=0, max_value=max(len(text) - 1, 0)))]
    at = draw(st.integers(min_value=0, max_value=len(text)))
    return (
        text[:at] + draw(st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\x80"])) + text[at:]
    )


class Counter:
    requests = 0


def check_answer(status: int, body: bytes, endpoint: str, payload: bytes) -> None:
    """Every answer is a JSON object; an error carries a string ``Err``."""
    assert status != 0, f"no answer from {endpoint} to {payload[:200]!r}"
    answer = json.loads(body)
    assert isinstance(answer, dict), (endpoint, payload[:200], body[:200])
    if status != 200:
        assert isinstance(answer.get("Err"), str) and answer["Err"], (endpoint, body[:300])
    assert status in (200, 400, 404, 413, 500), (status, endpoint, body[:300])


# -- the plug-ins under test


class Plugins:
    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.telemount = Telemount(workdir)
        self.route_name = f"tntest{uuid.uuid4().hex[:8]}"
        self.route_socket = f"/run/docker/plugins/{self.route_name}.sock"
        self.teleroute = Daemon(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "teleroute",
                "--listen",
                f"unix:{self.route_socket}:mode=660:lockfile=1:backlog=128",
                "--state-dir",
                os.path.join(workdir, "route-state"),
            ],
            os.path.join(workdir, "teleroute.log"),
        )
        with socket.socket() as s:  # a loopback port nobody listens on
            s.bind(("127.0.0.1", 0))
            self.closed_port = str(s.getsockname()[1])

    def start(self) -> Plugins:
        self.telemount.start()
        self.teleroute.start()
        wait_for(
            lambda: os.path.exists(self.route_socket) or not self.teleroute.alive(),
            20,
            "the teleroute socket",
        )
        assert self.teleroute.alive(), self.teleroute.log()
        return self

    def targets(self) -> list[tuple[str, list[str], Daemon]]:
        return [
            (self.telemount.socket, VOLUME_ENDPOINTS, self.telemount.daemon),
            (self.route_socket, NETWORK_ENDPOINTS, self.teleroute),
        ]

    def stop(self) -> None:
        self.telemount.daemon.stop()
        self.teleroute.stop()


@pytest.fixture(scope="module")
def plugins() -> Iterator[Plugins]:
    require(os.geteuid() == 0, "the plug-ins' sockets live in /run/docker/plugins (root)")
    require(os.path.exists("/dev/fuse"), "/dev/fuse is missing")
    workdir = f"/tmp/tntest-{uuid.uuid4().hex[:8]}"
    os.makedirs(workdir)
    p = Plugins(workdir).start()
    yield p
    p.stop()
    shutil.rmtree(workdir, ignore_errors=True)


FUZZ_EXAMPLES = scaled(700, 5000)


@pytest.mark.parametrize("which", ["telemount", "teleroute"])
def test_fuzz_every_endpoint(plugins: Plugins, which: str) -> None:
    """Random bodies to every endpoint: always a JSON answer, never a crash, bounded memory."""
    sock, endpoints, daemon = plugins.targets()[0 if which == "telemount" else 1]
    assert daemon.proc is not None
    pid = daemon.proc.pid
    before = rss_kib(pid)
    counter = Counter()

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        endpoint=st.sampled_from(endpoints + ["/Nope.Nope", "/", "/VolumeDriver."]),
        payload=payloads(),
    )
    def one(endpoint: str, payload: bytes) -> None:
        if payload[:1] == b"{":
            try:
                payload = json.dumps(_pin(json.loads(payload), plugins.closed_port)).encode()
            except ValueError:
                pass
        status, body = post(sock, endpoint, payload)
        counter.requests += 1
        check_answer(status, body, endpoint, payload)

    one()
    assert daemon.alive(), daemon.log()
    grown = rss_kib(pid) - before
    record(f"fuzz-{which}", requests=counter.requests, rss_growth_kib=grown)
    assert counter.requests >= FUZZ_EXAMPLES
    assert grown < 64 * 1024, f"{which} grew by {grown} KiB over {counter.requests} requests"


def test_hostile_bodies(plugins: Plugins) -> None:
    """Oversized, deeply nested, lying Content-Length and truncated bodies: no crash, bounded."""
    sent = 0
    for sock, endpoints, daemon in plugins.targets():
        assert daemon.proc is not None
        before = rss_kib(daemon.proc.pid)
        for endpoint in endpoints:
            for body in (
                b"[" * 200_000,
                b'{"a":' * 100_000,
                b"x" * (2 * 1024 * 1024),
                b'{"Name": "' + b"n" * 900_000 + b'"}',
            ):
                status, answer = post(sock, endpoint, body, timeout=30)
                sent += 1
                check_answer(status, answer, endpoint, body)
            # Content-Length far beyond the limit, then a stream of data: never buffered.
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(sock)
                s.sendall(f"POST {endpoint} HTTP/1.0\r\nContent-Length: {10**12}\r\n\r\n".encode())
                chunk = b"y" * 65536
                try:
                    for _ in range(64):  # 4 MiB
                        s.sendall(chunk)
                except OSError:
                    pass  # the plug-in may hang up on such a request
                sent += 1
            # A body cut short: the connection is dropped, the plug-in carries on.
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(sock)
                s.sendall(
                    f"POST {endpoint} HTTP/1.0\r\nContent-Length: 100\r\n\r\n"
                    '{"Name": "tnt'.encode()
                )
                s.close()
                sent += 1
        assert daemon.alive(), daemon.log()
        status, _ = post(sock, endpoints[1], b"{}")
        assert status in (200, 400, 500)
        grown = rss_kib(daemon.proc.pid) - before
        assert grown < 64 * 1024, f"grew by {grown} KiB"
    record("fuzz-hostile-bodies", requests=sent)


SLOW_CONNECTIONS = scaled(100, 400)


def test_slowloris(plugins: Plugins) -> None:
    """
    Connections that trickle a request or idle do not block anyone, and are closed.

    While ``SLOW_CONNECTIONS`` sockets hold half a request each, real requests still get answers
    within a second; the idle ones are closed by the plug-in's idle timeout.
    """
    from telenet.core.dockerplugin import IDLE_TIMEOUT

    slow: list[socket.socket] = []
    try:
        for sock, _, _ in plugins.targets():
            for i in range(SLOW_CONNECTIONS):
                s = socket.socket(socket.AF_UNIX)
                s.connect(sock)
                s.sendall(b"POST /Plugin.Activate HTTP/1.1\r\nHost: x\r\n" if i % 2 else b"PO")
                slow.append(s)
        for _ in range(3):
            for s in slow[::10]:
                s.send(b"X")
            for sock, _, _ in plugins.targets():
                started = time.monotonic()
                status, body = post(sock, "/Plugin.Activate", b"{}")
                assert status == 200 and b"Implements" in body
                assert time.monotonic() - started < 1.0, f"{sock} answered slowly"
        # The idle timeout closes the trickling connections.
        deadline = time.monotonic() + IDLE_TIMEOUT + 15
        open_ = list(slow)
        while open_ and time.monotonic() < deadline:
            still = []
            for s in open_:
                s.settimeout(0.01)
                try:
                    if s.recv(4096) == b"":
                        continue
                except TimeoutError:
                    pass
                except OSError:
                    continue
                still.append(s)
            open_ = still
            time.sleep(0.5)
        assert open_ == [], f"{len(open_)} slow connections still open"
    finally:
        for s in slow:
            s.close()
    for _, _, daemon in plugins.targets():
        assert daemon.alive(), daemon.log()
    record("fuzz-slowloris", connections=len(slow))
