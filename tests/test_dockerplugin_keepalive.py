"""
The plug-in HTTP layer answers each call on its own connection (no keep-alive).

dockerd keeps idle connections to a plug-in socket; when it sends a call on one just as the
plug-in's idle timeout closes it, its plug-in client (moby ``pkg/plugins``) retries the call with
the request body it already drained: an empty body, which the plug-in refuses. A refused
DeleteNetwork or VolumeDriver.Remove leaves stale state in the plug-in (dockerd forgets the
object anyway). With ``Connection: close`` on every answer dockerd never reuses a connection, so
there is no idle connection to race with.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from telenet.core import dockerplugin
from telenet.core.dockerplugin import PluginError, PluginResource

from .faultkit import unix_exchange


def _refuse(body: dict[str, Any]) -> dict[str, Any]:
    raise PluginError("no")


def _call_keep_alive(path: str, endpoint: str) -> tuple[bytes, bytes]:
    """
    POST as Go's net/http does (HTTP/1.1, no Connection header: keep-alive), then read until
    the server closes the connection; the head and body of the answer.
    """
    body = b"{}"
    raw = (
        f"POST {endpoint} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    # Longer than nothing, far shorter than the idle timeout (30 s): a connection kept alive
    # makes recv time out.
    head, _, rest = unix_exchange(path, raw, timeout=5).partition(b"\r\n\r\n")
    return head, rest


@pytest.mark.parametrize(
    ("endpoint", "status", "answer"),
    [("/T.Echo", b" 200 ", b'{"ok": true}'), ("/T.Refuse", b" 500 ", b'{"Err": "no"}')],
)
@pytest_twisted.ensureDeferred
async def test_every_answer_closes_the_connection(
    tmp_path: Any, endpoint: str, status: bytes, answer: bytes
) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    resource = PluginResource(
        ["VolumeDriver"], {"/T.Echo": lambda body: {"ok": True}, "/T.Refuse": _refuse}
    )
    path = str(tmp_path / "p.sock")
    port = await serverFromString(reactor, f"unix:{path}:mode=660").listen(
        dockerplugin.plugin_site(resource)
    )
    try:
        head, body = await threads.deferToThread(_call_keep_alive, path, endpoint)
    finally:
        await port.stopListening()
    assert status in head.split(b"\r\n")[0], head
    assert b"connection: close" in head.lower(), head
    assert answer in body  # chunked: HTTP/1.1 with no Content-Length
