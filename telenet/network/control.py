# -*- test-case-name: tests.test_control -*-
"""
The daemon's control API (docs/daemon.md, "Control API"), HTTP + JSON for the telenet CLI.

- ``GET /status``: version, ``dns.local_address``, ``teleroute.port``, ``routes``, ``bridges``
  and more (see ``telenet.daemon``).
- ``GET /bridges``: ``{"bridges": [{"port": N, "agent": "host:port", ...}]}``.
- ``POST /bridges`` with ``{"agent": "host:port"}``: opens an SFTP bridge (a TCP proxy from a
  local port to the agent's raw SFTP server), answers ``{"port": N, "agent": "host:port"}``.
- ``DELETE /bridges/<port>``: closes it, answers ``{"port": N, "closed": true}``.
- ``GET /subnets``: ``{"subnets": [...], "routes": [...]}``, the ``--subnet`` ones and every
  routed subnet (those plus the VIF's); ``PUT /subnets`` with ``{"subnets": ["CIDR", ...]}``
  replaces the ``--subnet`` ones (running workloads follow: live routes) and answers the same.
- ``GET /loglevel``: ``{"level", "configured", "until"}``; ``POST /loglevel`` with
  ``{"level": "debug", "duration": SECONDS}``: that level now, the configured one back after
  the duration (``telenet loglevel``; 0 or absent: until changed again).

Errors are JSON too: ``{"error": "<message>"}`` with 400 (bad request), 404 (unknown path or
bridge), 405 (wrong method), 413 (body too big) or 500.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from typing import Any, Protocol, cast

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from telenet.core.dockerplugin import PluginSite
from telenet.core.pluginadmin import LevelControl
from telenet.core.reactor import IReactor

log = Logger()

MAX_BODY = 64 * 1024
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?")


class BridgeLike(Protocol):
    """What the control API needs of an open bridge (``telenet.sftpproxy.Bridge``)."""

    @property
    def listen_port(self) -> int: ...

    def close(self) -> defer.Deferred[None]: ...


class SubnetsLike(Protocol):
    """What the control API needs of the routed subnets (``telenet.network.vif.RouteTable``)."""

    @property
    def static(self) -> frozenset[ipaddress.IPv4Network | ipaddress.IPv6Network]: ...

    def current(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]: ...

    def set_static(self, static: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None: ...


BridgeOpener = Callable[[str, int], "defer.Deferred[BridgeLike]"]
StatusSource = Callable[[], dict[str, Any]]


class ControlError(Exception):
    """A request the API refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_agent(text: Any) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port); ControlError 400 when malformed."""
    if not isinstance(text, str) or not text:
        raise ControlError(400, '"agent" must be a string "host:port"')
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ControlError(400, f"bad agent address {text!r}: expected [ipv6]:port")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ControlError(400, f"bad IPv6 address in agent {text!r}") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ControlError(400, f"bad agent address {text!r}: expected host:port")
        if ":" in host:
            raise ControlError(400, f"bad agent address {text!r}: write IPv6 as [addr]:port")
        if not _HOSTNAME.fullmatch(host):
            raise ControlError(400, f"bad host in agent {text!r}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ControlError(400, f"bad port in agent {text!r}: 1-65535")
    return host, int(port_text)


def _order(n: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, str]:
    return n.version, str(n)


def parse_subnets(body: Any) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``{"subnets": ["CIDR", ...]}``; ControlError 400 when malformed."""
    if (
        not isinstance(body, dict)
        or set(body) != {"subnets"}
        or not isinstance(body["subnets"], list)
    ):
        raise ControlError(400, 'expected {"subnets": ["CIDR", ...]}')
    subnets = []
    for text in body["subnets"]:
        if not isinstance(text, str):
            raise ControlError(400, f"bad subnet {text!r}: expected a CIDR string")
        try:
            subnet = ipaddress.ip_network(text)
        except ValueError as e:
            raise ControlError(400, f"bad subnet {text!r}: {e}") from None
        if subnet.prefixlen == 0:
            raise ControlError(400, f"bad subnet {text!r}: a default route is not routed")
        subnets.append(subnet)
    return subnets


@attrs.define
class OpenBridge:
    agent: str
    bridge: BridgeLike

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"port": self.bridge.listen_port, "agent": self.agent}
        for key in ("connections", "bytes_in", "bytes_out"):
            value = getattr(self.bridge, key, None)
            if isinstance(value, int):
                info[key] = value
        return info


class Bridges(service.Service):
    """I keep the open SFTP bridges by local port, and close them all when stopped."""

    def __init__(self, opener: BridgeOpener) -> None:
        self.opener = opener
        self.open: dict[int, OpenBridge] = {}

    async def add(self, agent: Any) -> dict[str, Any]:
        host, port = parse_agent(agent)
        try:
            bridge = await self.opener(host, port)
        except Exception as e:
            raise ControlError(500, f"cannot open a bridge to {agent}: {e}") from e
        entry = OpenBridge(agent, bridge)
        self.open[bridge.listen_port] = entry
        log.info(
            "Opened SFTP bridge on port {port} to {agent}", port=bridge.listen_port, agent=agent
        )
        return entry.describe()

    async def remove(self, port: int) -> dict[str, Any]:
        entry = self.open.pop(port, None)
        if entry is None:
            raise ControlError(404, f"no bridge on port {port}")
        await entry.bridge.close()
        log.info("Closed SFTP bridge on port {port} to {agent}", port=port, agent=entry.agent)
        return {"port": port, "closed": True}

    def describe(self) -> list[dict[str, Any]]:
        return [entry.describe() for _, entry in sorted(self.open.items())]

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        entries, self.open = list(self.open.values()), {}
        closes = [defer.maybeDeferred(e.bridge.close) for e in entries]
        return defer.gatherResults(closes, consumeErrors=True).addCallback(lambda _: None)


class ControlResource(resource.Resource):
    """The whole API as one leaf resource: a small dispatch on method and path."""

    isLeaf = True

    def __init__(
        self,
        status: StatusSource,
        bridges: Bridges,
        *,
        levels: LevelControl | None = None,
        subnets: SubnetsLike | None = None,
    ) -> None:
        super().__init__()
        self.status = status
        self.bridges = bridges
        self.subnets = subnets
        self.levels = levels

    def render(self, request: IRequest) -> int:
        site = getattr(request, "site", None)
        if isinstance(site, PluginSite):
            # Answered before the daemon stops, like a plug-in's requests.
            site.track(cast(server.Request, request).notifyFinish())
        d = defer.Deferred.fromCoroutine(self._dispatch(request))
        d.addCallbacks(
            lambda body: self._write(request, 200, body), lambda f: self._fail(request, f)
        )
        return server.NOT_DONE_YET

    async def _dispatch(self, request: IRequest) -> Any:
        method = (request.method or b"").decode("ascii", "replace")
        path = [p.decode("utf-8", "replace") for p in (request.postpath or []) if p]
        if path == ["status"]:
            self._allow(method, "GET")
            return self.status()
        if path == ["bridges"]:
            if method == "GET":
                return {"bridges": self.bridges.describe()}
            self._allow(method, "POST")
            body = self._json(request)
            if not isinstance(body, dict) or set(body) - {"agent"}:
                raise ControlError(400, 'expected {"agent": "host:port"}')
            return await self.bridges.add(body.get("agent"))
        if path == ["subnets"] and self.subnets is not None:
            if method == "PUT":
                self.subnets.set_static(parse_subnets(self._json(request)))
            else:
                self._allow(method, "GET")
            return {
                "subnets": [str(n) for n in sorted(self.subnets.static, key=_order)],
                "routes": [str(n) for n in self.subnets.current()],
            }
        if path == ["loglevel"] and self.levels is not None:
            if method == "GET":
                return self.levels.describe()
            self._allow(method, "POST")
            body = self._json(request)
            if not isinstance(body, dict) or set(body) - {"level", "duration"}:
                raise ControlError(400, 'expected {"level": "debug", "duration": SECONDS}')
            try:
                return self.levels.set(body.get("level"), body.get("duration") or 0)
            except ValueError as e:
                raise ControlError(400, str(e)) from None
        if len(path) == 2 and path[0] == "bridges":
            self._allow(method, "DELETE")
            if not path[1].isdigit():
                raise ControlError(400, f"bad bridge port {path[1]!r}")
            return await self.bridges.remove(int(path[1]))
        raise ControlError(404, "unknown path /" + "/".join(path))

    @staticmethod
    def _allow(method: str, allowed: str) -> None:
        if method != allowed:
            raise ControlError(405, f"method {method} not allowed here; use {allowed}")

    @staticmethod
    def _json(request: IRequest) -> Any:
        content = request.content
        raw = content.read(MAX_BODY + 1) if content is not None else b""
        if len(raw) > MAX_BODY:
            raise ControlError(413, f"request body over {MAX_BODY} bytes")
        try:
            return json.loads(raw or b"null")
        except ValueError as e:
            raise ControlError(400, f"malformed JSON: {e}") from None

    def _fail(self, request: IRequest, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, ControlError):
            self._write(request, error.status, {"error": error.message})
            return
        log.failure("Control API request failed", failure)
        self._write(request, 500, {"error": str(error) or type(error).__name__})

    @staticmethod
    def _write(request: Any, code: int, body: Any) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        data = json.dumps(body).encode()
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", str(len(data)).encode())
        request.write(data)
        request.finish()


def control_site(
    status: StatusSource,
    bridges: Bridges,
    reactor: IReactor | None = None,
    *,
    levels: LevelControl | None = None,
    subnets: SubnetsLike | None = None,
) -> server.Site:
    """The control API's site: requests in flight at SIGTERM are answered first."""
    site = PluginSite(
        ControlResource(status, bridges, levels=levels, subnets=subnets), reactor=reactor
    )
    site.noisy = False
    return site
