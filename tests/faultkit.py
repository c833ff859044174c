"""
Shared pieces of the fault suite (tests/test_faults_*.py).

Iteration counts are short by default (CI) and full with ``TELENET_FAULTS=full``::

    TELENET_FAULTS=full .venv/bin/python -m pytest tests/test_faults_*.py

Figures each test reaches are appended to ``/tmp/tntest-faults-figures.txt`` (one line per test)
so that a full run's numbers can be copied into docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable

FULL = os.environ.get("TELENET_FAULTS", "").lower() == "full"
FIGURES = "/tmp/tntest-faults-figures.txt"


def scaled(ci: int, full: int) -> int:
    """``full`` iterations with TELENET_FAULTS=full, else ``ci``."""
    return full if FULL else ci


def record(test: str, **figures: object) -> None:
    """Append one test's figures (kills survived, requests sent, leaks) to the figures file."""
    line = json.dumps({"test": test, "full": FULL, "at": time.strftime("%F %T"), **figures})
    with open(FIGURES, "a") as f:
        f.write(line + "\n")


def unix_exchange(path: str, raw: bytes, timeout: float = 15) -> bytes:
    """
    Send ``raw`` to a unix socket and read until the server closes the connection; a recv
    that waits longer than ``timeout`` raises ``socket.timeout``.
    """
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(raw)
        # No half-close: Twisted takes it for a hang-up and cancels the request (as it should).
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def unix_http(path: str, raw: bytes, timeout: float = 15) -> tuple[int, bytes]:
    """
    Send ``raw`` (a whole HTTP/1.0 request) to a unix socket; the status and body of the answer.

    The status is 0 when the server closed the connection without answering.
    """
    answer = unix_exchange(path, raw, timeout)
    if not answer:
        return 0, b""
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def post(path: str, endpoint: str, body: bytes, timeout: float = 15) -> tuple[int, bytes]:
    """POST ``body`` to a plug-in endpoint such as ``/VolumeDriver.Create``."""
    raw = (
        f"POST {endpoint} HTTP/1.0\r\nHost: plugin\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    return unix_http(path, raw, timeout)


def reads_back(path: str, content: str) -> bool:
    """Whether ``path`` can be read and holds ``content`` (a mount that works again)."""
    try:
        with open(path) as f:
            return f.read() == content
    except OSError:
        return False


def rss_kib(pid: int) -> int:
    """The resident set of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def process_state(pid: int) -> str:
    """The one-letter state of a process (R, S, D, Z, T...)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


class FsyncedWriter:
    """
    A thread appending ``chunk``-byte chunks to ``path`` (chunk i is bytes ``i % 251``), each
    followed by fsync, until an error: ``acked`` counts the chunks whose fsync succeeded,
    ``error`` holds what stopped it.
    """

    def __init__(self, path: str, chunk: int = 256 * 1024) -> None:
        self.path = path
        self.chunk = chunk
        self.acked = 0
        self.error: list[BaseException] = []
        self.thread = threading.Thread(target=self._write, daemon=True)

    def start(self) -> FsyncedWriter:
        self.thread.start()
        return self

    def _write(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                for i in range(100_000):
                    os.write(fd, bytes([i % 251]) * self.chunk)
                    os.fsync(fd)
                    self.acked = i + 1
            finally:
                os.close(fd)
        except OSError as e:
            self.error.append(e)

    def assert_acked_on_disk(self, on_disk: str) -> None:
        """Every acknowledged chunk is in ``on_disk`` (the server's copy), byte for byte."""
        with open(on_disk, "rb") as f:
            data = f.read()
        chunk = self.chunk
        assert len(data) >= self.acked * chunk, (len(data), self.acked)
        for i in range(self.acked):
            assert data[i * chunk : (i + 1) * chunk] == bytes([i % 251]) * chunk, i


class PluginCallTap:
    """
    A unix-socket stand-in in front of a plug-in, at the socket dockerd uses: it forwards each
    call (dockerd opens a connection per call) to the plug-in's real socket, and lets a test
    act at an exact point of one call: ``kill_on`` names a call (``/NetworkDriver.Join``);
    when dockerd sends it next, ``kill`` runs before the call reaches the plug-in and dockerd's
    connection is dropped unanswered, as a plug-in killed right then would drop it.
    ``calls`` lists the paths seen, with the body's length; ``log`` each forwarded call as
    tests/fixtures keep them (path, dockerd's headers, request and answer, decoded).
    """

    def __init__(self, path: str, target: str, kill: Callable[[], None]) -> None:
        self.path = path
        self.target = target
        self.kill = kill
        self.kill_on: str | None = None
        self.killed = threading.Event()
        self.calls: list[tuple[str, int]] = []
        self.log: list[dict[str, object]] = []
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(path)
        os.chmod(path, 0o660)
        self._server.listen(64)
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self._server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    @staticmethod
    def _request(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(60)
            try:
                request = self._request(conn)
                if not request:
                    return
                path = request.split(b" ", 2)[1].decode()
                self.calls.append((path, len(request.partition(b"\r\n\r\n")[2])))
                if path == self.kill_on:
                    self.kill_on = None
                    self.kill()
                    self.killed.set()
                    return
                # A plug-in being restarted: its socket would queue the call, so wait for it.
                deadline = time.monotonic() + 30
                while True:
                    try:
                        answer = unix_exchange(self.target, request, timeout=60)
                        break
                    except (ConnectionRefusedError, FileNotFoundError):
                        if time.monotonic() > deadline:
                            return
                        time.sleep(0.05)
                conn.sendall(answer)
                self.log.append(_logged(request, answer))
            except OSError:
                return


def _logged(request: bytes, answer: bytes) -> dict[str, object]:
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    kept = {k: v for k, v in headers.items() if k in ("User-Agent", "Content-Length", "Accept")}
    reply_head, _, reply = answer.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in reply_head.lower():
        reply = _dechunked(reply)
    return {
        "path": lines[0].split(" ")[1],
        "headers": kept,
        "request": json.loads(body) if body.strip() else {},
        "answer_docker_accepted": json.loads(reply) if reply.strip() else None,
    }


def _dechunked(data: bytes) -> bytes:
    body = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        body, data = body + rest[:size], rest[size + 2 :]
    return body
