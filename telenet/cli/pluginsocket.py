# -*- test-case-name: tests.test_cli_gatherlogs -*-
"""
The CLI's side of a plug-in's telenet-only calls (``/Telenet.Health``, ``/Telenet.LogLevel``,
``/Telenet.Logs``; ``telenet.core.pluginadmin``): where its socket is, and one call over it.

A managed plug-in listens under ``/run/docker/plugins/<id>/`` (the socket its config names), a
legacy one on ``/run/docker/plugins/<driver>.sock``; either is this machine's only when the
engine runs here. Separate so that loglevel, gather-logs and status share one client, and
tests replace ``call_plugin`` with a function.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable
from typing import Any

from telenet.cli.interfaces import IDocker

PLUGIN_DIR = "/run/docker/plugins"

#: ``(socket path, endpoint, body) -> answer``; raises PluginCallError.
PluginCall = Callable[[str, str, dict[str, Any]], dict[str, Any]]


class PluginCallError(Exception):
    """The plug-in did not answer, or answered an error (its message)."""


def socket_of(docker: IDocker, driver: str) -> str | None:
    """The plug-in's socket on this machine; None when the engine runs elsewhere."""
    if not docker.engine_is_here():
        return None
    info = docker.plugin(driver)
    if info is None:
        return f"{PLUGIN_DIR}/{driver}.sock"
    socket_name = ((info.get("Config") or {}).get("Interface") or {}).get("Socket") or ""
    return f"{PLUGIN_DIR}/{info.get('Id')}/{socket_name}"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("plugin", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def call_plugin(
    path: str, endpoint: str, body: dict[str, Any], timeout: float = 5.0
) -> dict[str, Any]:
    """POST ``body`` to ``endpoint`` on the plug-in's socket ``path``; its JSON answer."""
    conn = _UnixConnection(path, timeout)
    try:
        conn.request(
            "POST",
            endpoint,
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        status, data = response.status, response.read()
    except (OSError, http.client.HTTPException) as e:
        raise PluginCallError(f"{path}: {e or type(e).__name__}") from None
    finally:
        conn.close()
    try:
        answer = json.loads(data) if data else {}
    except ValueError:
        raise PluginCallError(f"{endpoint}: not JSON (HTTP {status})") from None
    if status >= 400 or not isinstance(answer, dict):
        message = answer.get("Err") if isinstance(answer, dict) else None
        if status == 404 and endpoint.startswith("/Telenet."):
            message = f"{message}: a plug-in older than this telenet (make it again)"
        raise PluginCallError(message or f"{endpoint}: HTTP {status}")
    return answer
