# -*- test-case-name: tests.test_cli_dockerhttp -*-
"""
The Docker API calls of the CLI's quick paths (``status``, ``docker-run``, ``quit``), spoken
directly over the engine's unix socket (HTTP/1.1, one connection a call).

Importing docker-py (requests, urllib3) costs a ``telenet`` run about 60 ms before its first
call; these few calls need none of it. ``QuickAPI`` answers them with docker-py's method names
and JSON results; any other method is docker-py's (``fallback``, made on first use). Errors:
``StatusError`` (the engine's answer, with its message) and ``Unreachable`` (the socket).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode


class StatusError(Exception):
    """The engine answered ``status``; ``explanation`` is its message (docker-py's name)."""

    def __init__(self, status: int, explanation: str) -> None:
        super().__init__(f"{status}: {explanation}")
        self.status_code = status
        self.explanation = explanation


class Unreachable(Exception):
    """The engine's socket did not answer (the ``OSError`` is the cause)."""


def _exchange(path: str, timeout: float, request: bytes) -> tuple[int, str, dict[str, str], bytes]:
    """One request on a fresh connection (``Connection: close``): status, reason, headers
    (names lower-cased), body."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise OSError(f"not an HTTP answer: {lines[0][:60]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _unchunked(body)
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers, body


def _unchunked(data: bytes) -> bytes:
    out: list[bytes] = []
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            return b"".join(out)
        out.append(data[:size])
        data = data[size + 2 :]


def _path(arg: str) -> str:
    """A name or id in a URL path, quoted as docker-py quotes it."""
    return quote(arg, safe="/:")


def _filters(filters: Mapping[str, Any] | None) -> dict[str, str]:
    """docker-py's ``filters`` argument as the query's JSON (each value a list)."""
    if not filters:
        return {}
    shaped = {k: v if isinstance(v, list) else [v] for k, v in filters.items()}
    return {"filters": json.dumps(shaped)}


class QuickAPI:
    """docker-py's ``APIClient`` for a few calls, on the unix socket ``path``."""

    def __init__(self, path: str, fallback: Callable[[], Any], timeout: float = 120.0) -> None:
        self._path = path
        self._fallback = fallback
        self._timeout = timeout

    def __getattr__(self, name: str) -> Any:
        # Everything else (creating, exec, streams, plug-in installs) is docker-py's.
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._fallback(), name)

    def _send(
        self, method: str, path: str, query: Mapping[str, str] | None = None, body: Any = None
    ) -> tuple[dict[str, str], bytes]:
        """The answer's headers and body; StatusError for a status of 400 or more."""
        url = path + ("?" + urlencode(query) if query else "")
        payload = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {url} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        if body is not None or method in ("POST", "PUT"):
            head += f"Content-Length: {len(payload)}\r\n"
        try:
            status, reason, headers, data = _exchange(
                self._path, self._timeout, head.encode() + b"\r\n" + payload
            )
        except OSError as e:
            raise Unreachable(str(e)) from e
        if status >= 400:
            try:
                message = json.loads(data).get("message", "")
            except (ValueError, AttributeError):
                message = data.decode("utf-8", "replace")
            raise StatusError(status, " ".join(message.split()) or reason)
        return headers, data

    def _request(
        self, method: str, path: str, query: Mapping[str, str] | None = None, body: Any = None
    ) -> Any:
        data = self._send(method, path, query, body)[1]
        return json.loads(data) if data else None

    def ping_api_version(self) -> str:
        """
        The engine's API version, from the ``Api-Version`` header of ``/_ping``: ``/version``
        asks containerd for its own version first, which costs the engine a few milliseconds
        more (and many more when it is busy).
        """
        version = self._send("GET", "/_ping")[0].get("api-version")
        return version if version else str(self.version()["ApiVersion"])

    def version(self) -> dict[str, Any]:
        return dict(self._request("GET", "/version"))

    def info(self) -> dict[str, Any]:
        return dict(self._request("GET", "/info"))

    def inspect_container(self, container: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/containers/{_path(container)}/json"))

    def containers(
        self, all: bool = False, filters: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        query = {"all": "1" if all else "0", **_filters(filters)}
        return list(self._request("GET", "/containers/json", query))

    def remove_container(self, container: str, v: bool = False, force: bool = False) -> None:
        query = {"v": "1" if v else "0", "force": "1" if force else "0"}
        self._request("DELETE", f"/containers/{_path(container)}", query)

    def inspect_image(self, image: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/images/{_path(image)}/json"))

    def networks(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/networks"))

    def inspect_network(self, net_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/networks/{_path(net_id)}"))

    def connect_container_to_network(
        self, container: str, net_id: str, driver_opt: Mapping[str, str] | None = None
    ) -> None:
        endpoint: dict[str, Any] = {"DriverOpts": dict(driver_opt)} if driver_opt else {}
        body = {"Container": container, "EndpointConfig": endpoint}
        self._request("POST", f"/networks/{_path(net_id)}/connect", body=body)

    def inspect_plugin(self, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/plugins/{_path(name)}/json"))

    def volumes(self, filters: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return dict(self._request("GET", "/volumes", _filters(filters)))
