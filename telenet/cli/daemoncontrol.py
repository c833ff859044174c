# -*- test-case-name: tests.test_cli_connect -*-
"""
The daemon's control API as the CLI calls it (docs/daemon.md, "Control API"): ``IControl``,
over HTTP to the published port (``HTTPControl``) or through ``docker exec`` (``ExecControl``).

Separate from the connections: it is a client of one wire protocol, used by the connector
(readiness, status) and the runner (SFTP bridges). Its error is ``DaemonControlError``:
``telenet.network.control`` is the daemon's side and has its own ``ControlError``.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

import attrs
from zope.interface import implementer

from telenet.cli.dockerapi import DockerError
from telenet.cli.interfaces import IControl, IDocker


class DaemonControlError(Exception):
    """The control API did not answer, or answered an error (its message)."""


class _JSONControl:
    """The control API's calls over a transport: ``_exchange`` gives (HTTP status, body)."""

    def _exchange(self, method: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        raise NotImplementedError

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        payload = json.dumps(body).encode() if body is not None else None
        status, data = self._exchange(method, path, payload)
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            raise DaemonControlError(f"{method} {path}: not JSON (HTTP {status})") from None
        if status >= 400:
            message = decoded.get("error") if isinstance(decoded, dict) else None
            raise DaemonControlError(message or f"{method} {path}: HTTP {status}")
        return decoded

    def status(self) -> dict[str, Any]:
        return dict(self._request("GET", "/status"))

    def open_bridge(self, agent: str) -> int:
        return int(self._request("POST", "/bridges", {"agent": agent})["port"])

    def close_bridge(self, port: int) -> None:
        self._request("DELETE", f"/bridges/{port}")

    def set_log_level(self, level: str, duration: float) -> dict[str, Any]:
        return dict(self._request("POST", "/loglevel", {"level": level, "duration": duration}))


@implementer(IControl)
@attrs.define
class HTTPControl(_JSONControl):
    """``IControl`` over HTTP to ``host:port`` (the published port on the host's loopback)."""

    host: str
    port: int
    timeout: float = 10.0

    def _exchange(self, method: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as e:
            raise DaemonControlError(f"{method} {path}: {e or type(e).__name__}") from None
        finally:
            conn.close()


#: Run by ``docker exec`` in the daemon container: one request to its control API on its own
#: loopback; prints the status, a newline, and the body.
_EXEC_REQUEST = (
    "import http.client, sys\n"
    "method, path, port, body = sys.argv[1:5]\n"
    "c = http.client.HTTPConnection('127.0.0.1', int(port), timeout=10)\n"
    "c.request(method, path, body=body.encode() or None,\n"
    "          headers={'Content-Type': 'application/json'} if body else {})\n"
    "r = c.getresponse()\n"
    "sys.stdout.buffer.write(b'%d\\n' % r.status + r.read())\n"
)


@implementer(IControl)
@attrs.define
class ExecControl(_JSONControl):
    """
    ``IControl`` through ``docker exec`` in the daemon container, on its ``port`` there: for
    an engine elsewhere (in a VM, on another host, behind TCP), whose published loopback
    ports are not this machine's.
    """

    docker: IDocker
    container: str
    port: int

    def _exchange(self, method: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        argv = [
            "python3",
            "-c",
            _EXEC_REQUEST,
            method,
            path,
            str(self.port),
            (payload or b"").decode(),
        ]
        try:
            code, out, err = self.docker.exec_in(self.container, argv)
        except DockerError as e:
            raise DaemonControlError(f"{method} {path}: {e}") from None
        status, _, data = out.partition(b"\n")
        if code != 0 or not status.isdigit():
            why = (err.decode(errors="replace").strip().splitlines() or ["no answer"])[-1]
            raise DaemonControlError(f"{method} {path}: {why}")
        return int(status), data
