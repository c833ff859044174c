# -*- test-case-name: tests.test_dockerplugin -*-
"""
The Docker plug-in HTTP protocol, shared by the network and volume plug-ins.

Docker POSTs JSON to ``/Plugin.Activate`` and ``/<Driver>.<Call>`` over a unix socket and expects
JSON back; a failure is ``{"Err": "<message>"}``. This module owns that envelope and nothing else:
decoding (strictly), size limits, dispatch to a driver's handler table, and the single place where
exceptions become ``{"Err": ...}``. Driver logic lives in ``mountplugin`` and ``netplugin``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web import http, resource, server
from twisted.web.iweb import IRequest

CONTENT_TYPE = b"application/vnd.docker.plugins.v1.2+json"

#: Docker's requests are a few hundred bytes; anything near this is not Docker.
MAX_BODY_BYTES = 1024 * 1024

#: Seconds an idle or trickling connection may hold a socket before it is closed.
IDLE_TIMEOUT = 30

#: Seconds a stopping plug-in waits for the requests it is serving to be answered.
DRAIN_TIMEOUT = 8.0

JSONObject = dict[str, Any]
Handler = Callable[[JSONObject], "JSONObject | Awaitable[JSONObject] | defer.Deferred[JSONObject]"]

log = Logger()


class PluginError(Exception):
    """
    A failure to report to Docker as ``{"Err": message}``.

    The message is shown to the user by the docker CLI, so it must say what to do.
    """

    code = http.INTERNAL_SERVER_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(PluginError):
    """The request itself is malformed (not JSON, wrong types, missing fields)."""

    code = http.BAD_REQUEST


class BodyTooLarge(BadRequest):
    code = http.REQUEST_ENTITY_TOO_LARGE


def _type_name(value: object) -> str:
    return {
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        list: "array",
        dict: "object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def field(body: Mapping[str, Any], name: str, kind: type, *, required: bool = True) -> Any:
    """
    Read one field of a request body with a type check.

    A missing optional field, or a JSON null, reads as ``None``. ``bool`` is not accepted where a
    number is asked for, although Python says it is an ``int``.
    """
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"missing required field {name!r}")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(
            f"field {name!r} must be a {_type_name(kind())}, not a {_type_name(value)}"
        )
    return value


def string_map(body: Mapping[str, Any], name: str) -> dict[str, str]:
    """Read an optional object of string values (Docker's ``Opts``); null or absent is empty."""
    value = field(body, name, dict, required=False) or {}
    for key, item in value.items():
        if not isinstance(item, str):
            raise BadRequest(f"{name}[{key!r}] must be a string, not a {_type_name(item)}")
    return dict(value)


def decode_body(raw: bytes) -> JSONObject:
    """Decode a request body strictly: UTF-8 JSON holding an object; an empty body is ``{}``."""
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"request body is not valid UTF-8: {e.reason} at byte {e.start}") from e
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from e
    except RecursionError as e:
        raise BadRequest("request body is nested too deeply") from e
    if not isinstance(value, dict):
        raise BadRequest(f"request body must be a JSON object, not a {_type_name(value)}")
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


class PluginRequest(server.Request):
    """
    A request that stops buffering its body past ``MAX_BODY_BYTES``.

    twisted.web would otherwise spool any body to disk before ``render`` could refuse it.
    """

    body_too_large = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY_BYTES:
            self.body_too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > MAX_BODY_BYTES:
            self.body_too_large = True
        if not self.body_too_large:
            super().handleContentChunk(data)


class PluginResource(resource.Resource):
    """
    One leaf resource serving a plug-in: ``/Plugin.Activate`` plus a handler table.

    ``handlers`` maps a path such as ``/VolumeDriver.Create`` to a callable taking the decoded
    body and returning a dict, a Deferred or a coroutine.
    """

    isLeaf = True

    def __init__(self, implements: list[str], handlers: Mapping[str, Handler]) -> None:
        super().__init__()
        self._implements = list(implements)
        self._handlers: dict[str, Handler] = {
            "/Plugin.Activate": lambda body: {"Implements": list(self._implements)},
            **handlers,
        }

    def render_GET(self, request: server.Request) -> Any:
        return self.render_POST(request)

    def render_POST(self, request: server.Request) -> Any:
        path = request.path.decode("utf-8", "replace")
        site = getattr(request, "site", None)
        if isinstance(site, PluginSite):
            site.track(request.notifyFinish())
        d = defer.maybeDeferred(self._call, request, path)
        finished = request.notifyFinish()
        # Docker hung up: stop working for nobody, and never write to a closed request.
        finished.addErrback(lambda _: d.cancel())
        d.addCallbacks(
            lambda result: _respond(request, http.OK, result),
            lambda failure: _respond(request, *_error_response(failure, path)),
        )
        d.addErrback(lambda f: log.failure("writing the answer to {path} failed", f, path=path))
        return server.NOT_DONE_YET

    def _call(self, request: IRequest, path: str) -> Any:
        handler = self._handlers.get(path)
        # Every call Docker makes, when asked for (telenet loglevel debug).
        log.debug("Plug-in call {path}", path=path)
        if handler is None:
            raise _NotFound(f"unknown plug-in endpoint {path!r}")
        if getattr(request, "body_too_large", False):
            raise BodyTooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")
        assert request.content is not None
        body = decode_body(request.content.read(MAX_BODY_BYTES + 1))
        result = handler(body)
        if isinstance(result, Awaitable) and not isinstance(result, defer.Deferred):
            return defer.ensureDeferred(result)  # type: ignore[arg-type]
        return result


class _NotFound(PluginError):
    code = http.NOT_FOUND


def _error_response(failure: Failure, path: str) -> tuple[int, JSONObject]:
    """The one place where a failure becomes Docker's error envelope."""
    error = failure.value
    if isinstance(error, PluginError):
        log.info("{path} refused: {message}", path=path, message=error.message)
        return error.code, {"Err": error.message}
    if isinstance(error, defer.CancelledError):
        return http.INTERNAL_SERVER_ERROR, {"Err": "request cancelled"}
    log.failure("{path} failed unexpectedly", failure, path=path)
    return http.INTERNAL_SERVER_ERROR, {"Err": f"internal error in {path}: {error!r}"}


def _respond(request: IRequest, code: int, body: object) -> None:
    if getattr(request, "_disconnected", False) or getattr(request, "finished", False):
        return
    try:
        payload = json.dumps(body).encode("utf-8")
    except (TypeError, ValueError) as e:
        code, payload = http.INTERNAL_SERVER_ERROR, json.dumps({"Err": f"bad answer: {e}"}).encode()
    request.setResponseCode(code)
    request.setHeader(b"content-type", CONTENT_TYPE)
    # One connection per call, no keep-alive. dockerd keeps idle connections to a plug-in and
    # would now and then send a call on one just as the idle timeout closes it; its plug-in
    # client then retries that call with an empty body (moby pkg/plugins reuses the drained
    # buffer), which is refused, and a refused DeleteNetwork or Remove leaves stale state here.
    request.setHeader(b"connection", b"close")
    channel = getattr(request, "channel", None)
    if channel is not None:
        channel.persistent = False
    request.write(payload)
    request.finish()


class PluginSite(server.Site):
    """
    A ``Site`` that answers the requests it is serving before the reactor stops.

    On SIGTERM twistd stops the application and then drops every connection; Docker would see
    a request that Docker may have half-done (a Mount, a Join) fail with a broken connection.
    I hold the reactor's shutdown (a "before shutdown" trigger) until every request in flight
    is answered, or ``DRAIN_TIMEOUT`` passes.
    """

    requestFactory = PluginRequest
    displayTracebacks = False

    def __init__(self, root: resource.Resource, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self._in_flight: set[defer.Deferred[None]] = set()
        self._trigger: Any = None

    def track(self, finished: defer.Deferred[None]) -> None:
        """Count ``finished`` (a request's ``notifyFinish()``) in flight until it fires."""
        self._in_flight.add(finished)

        def done(result: object) -> None:
            self._in_flight.discard(finished)

        finished.addBoth(done)

    def startFactory(self) -> None:
        super().startFactory()
        if self._trigger is None:
            self._trigger = self.reactor.addSystemEventTrigger(  # type: ignore[attr-defined]
                "before", "shutdown", self.drain
            )

    def drain(self, timeout: float = DRAIN_TIMEOUT) -> defer.Deferred[None]:
        """Fires once no request is in flight (and answers are flushed), or after ``timeout``."""
        if not self._in_flight:
            return defer.succeed(None)
        log.info("answering {n} request(s) in flight before stopping", n=len(self._in_flight))
        waiting = defer.DeferredList(list(self._in_flight), consumeErrors=True)
        waiting.addTimeout(timeout, self.reactor)
        waiting.addErrback(
            lambda f: log.warn("{n} request(s) still in flight at shutdown", n=len(self._in_flight))
        )
        # A moment for the answers to be written out before connections are dropped.
        waiting.addCallback(lambda _: task.deferLater(self.reactor, 0.1, lambda: None))
        return waiting  # type: ignore[return-value]


class DrainingService(service.Service):
    """
    A plug-in's own work, started with the application and stopped in order: the requests in
    flight finish first (``site``'s drain: a Mount or a Join under way is completed, saved and
    answered rather than racing the shutdown), then ``stop_work()``, then ``pool`` (the state
    thread those requests save through) stops. Subclasses say what ``start_work`` and
    ``stop_work`` do.
    """

    def __init__(self, site: PluginSite | None = None, pool: ThreadPool | None = None) -> None:
        self.site = site
        self.pool = pool

    def start_work(self) -> None:
        """What to begin once the pool runs."""

    def stop_work(self) -> defer.Deferred[Any]:
        """What to end once no request is in flight."""
        return defer.succeed(None)

    def startService(self) -> None:
        super().startService()
        if self.pool is not None:
            self.pool.start()
        self.start_work()

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        d = self.site.drain() if self.site is not None else defer.succeed(None)
        d.addBoth(lambda _: self.stop_work())
        d.addBoth(self._stop_pool)
        return d

    def _stop_pool(self, result: object) -> object:
        if self.pool is not None:
            self.pool.stop()
        return result


def ensure_socket_dir(endpoint: str) -> None:
    """Make the directory of a ``unix:`` listen endpoint's socket."""
    if endpoint.startswith("unix:"):
        path = endpoint[len("unix:") :].split(":", 1)[0]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)


def plugin_site(root: resource.Resource) -> server.Site:
    """A ``Site`` for a plug-in resource, with the size-limited request and an idle timeout."""
    return PluginSite(root, timeout=IDLE_TIMEOUT)


def plugin_endpoint(name: str, directory: str = "/run/docker/plugins") -> str:
    """The default listen endpoint of a legacy plug-in called ``name``."""
    return f"unix:{directory}/{name}.sock:mode=660:lockfile=1:backlog=128"
