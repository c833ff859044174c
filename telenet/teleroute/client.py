# -*- test-case-name: tests.test_routeplugin -*-
"""
The teleroute plug-in's real client of a daemon: ``GrpcTelerouteClient``.

The network plug-in talks to the daemon's ``telepresence.teleroute.Teleroute`` service. The
driver logic in ``netplugin`` sees only ``ITelerouteClient`` (``telenet.teleroute.interfaces``:
Deferreds in, ``TelerouteError`` out), so it runs in unit tests against
``telenet.testing.teleroute.MemoryTeleroute``, with no sockets.
``GrpcTelerouteClient`` is the real one, on ``grpc.aio``; it needs Twisted's asyncio reactor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import empty_pb2
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from telenet.core.aio import as_deferred
from telenet.core.gocompat import host_port
from telenet.teleroute.interfaces import ConnectSession, ITelerouteClient, TelerouteError
from telenet.teleroute.proto import teleroute_pb2

log = Logger()

StatusCode = grpc.StatusCode


def grpc_target(host: str, port: int) -> str:
    """``host:port`` as gRPC wants it; an IPv6 literal goes in brackets."""
    return host_port(host, port)


#: gRPC's own reconnect back-off starts at one second and grows to two minutes; a daemon that
#: comes back must be found at once, and the plug-in paces its own retries anyway.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
]


@implementer(ITelerouteClient)
class GrpcTelerouteClient:
    """
    ``ITelerouteClient`` over ``grpc.aio``, on Twisted's asyncio reactor.

    The channel is made on first use (it binds to the running loop), so the client can be built
    before the reactor runs.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = grpc_target(host, port)
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._streams: set[Any] = set()

    def _get_stub(self) -> Any:
        if self._stub is None:
            from telenet.teleroute.proto import teleroute_pb2_grpc

            self._channel = grpc.aio.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
            self._stub = teleroute_pb2_grpc.TelerouteStub(self._channel)
        return self._stub

    def connect(
        self, request: teleroute_pb2.ConnectRequest, timeout: float
    ) -> defer.Deferred[ConnectSession]:
        return as_deferred(self._connect(request, timeout))

    async def _connect(
        self, request: teleroute_pb2.ConnectRequest, timeout: float
    ) -> ConnectSession:
        call = self._get_stub().Connect(request)
        first = await self._first(call, "Connect", "no Info", "before its Info", timeout)

        def info(message: Any) -> None:
            log.debug("Info from {target}: {info}", target=self.target, info=dict(message.info))

        return self._follow(call, "Connect", ConnectSession(dict(first.info), call.cancel), info)

    def watch_routes(
        self,
        request: teleroute_pb2.WatchRoutesRequest,
        on_update: Callable[[teleroute_pb2.RoutesUpdate], None],
        timeout: float,
    ) -> defer.Deferred[ConnectSession]:
        return as_deferred(self._watch_routes(request, on_update, timeout))

    async def _watch_routes(
        self,
        request: teleroute_pb2.WatchRoutesRequest,
        on_update: Callable[[teleroute_pb2.RoutesUpdate], None],
        timeout: float,
    ) -> ConnectSession:
        call = self._get_stub().WatchRoutes(request)
        first = await self._first(call, "WatchRoutes", "no routes", "at once", timeout)
        on_update(first)
        return self._follow(call, "WatchRoutes", ConnectSession({}, call.cancel), on_update)

    async def _first(self, call: Any, stream: str, none: str, ended: str, timeout: float) -> Any:
        """A server stream's first message, within ``timeout``; TelerouteError if it fails."""
        try:
            first = await asyncio.wait_for(call.read(), timeout)
        except TimeoutError:
            call.cancel()
            raise TelerouteError(
                StatusCode.DEADLINE_EXCEEDED, f"{none} from {self.target} within {timeout:g}s"
            ) from None
        except grpc.aio.AioRpcError as e:
            raise _error(e) from None
        if first is grpc.aio.EOF:
            raise TelerouteError(
                StatusCode.UNAVAILABLE, f"{self.target} ended the {stream} stream {ended}"
            )
        return first

    def _follow(
        self,
        call: Any,
        stream: str,
        session: ConnectSession,
        on_message: Callable[[Any], None],
    ) -> ConnectSession:
        """Read the rest of a server stream in the background; ``session`` ends with it."""
        self._streams.add(call)
        task = asyncio.ensure_future(self._read_on(call, stream, session, on_message))
        task.add_done_callback(lambda _: self._streams.discard(call))
        return session

    async def _read_on(
        self,
        call: Any,
        stream: str,
        session: ConnectSession,
        on_message: Callable[[Any], None],
    ) -> None:
        reason = f"the daemon ended the {stream} stream"
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    break
                try:
                    on_message(message)
                except Exception:
                    log.failure(
                        "handling a {stream} message from {target} failed",
                        stream=stream,
                        target=self.target,
                    )
        except grpc.aio.AioRpcError as e:
            reason = f"the {stream} stream broke: {e.code().name}: {e.details()}"
        except asyncio.CancelledError:
            reason = f"the {stream} stream was cancelled"
        session.end(reason)

    def create_endpoint(
        self, request: teleroute_pb2.CreateEndpointRequest, timeout: float
    ) -> defer.Deferred[None]:
        return as_deferred(self._unary("CreateEndpoint", request, timeout, none=True))

    def remove_endpoint(
        self, request: teleroute_pb2.EndpointIdentifier, timeout: float
    ) -> defer.Deferred[None]:
        return as_deferred(self._unary("RemoveEndpoint", request, timeout, none=True))

    def join(
        self, request: teleroute_pb2.EndpointIdentifier, timeout: float
    ) -> defer.Deferred[teleroute_pb2.JoinResponse]:
        return as_deferred(self._unary("Join", request, timeout))

    def leave(
        self, request: teleroute_pb2.EndpointIdentifier, timeout: float
    ) -> defer.Deferred[None]:
        return as_deferred(self._unary("Leave", request, timeout, none=True))

    async def _unary(self, method: str, request: Any, timeout: float, none: bool = False) -> Any:
        try:
            answer = await getattr(self._get_stub(), method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise _error(e) from None
        if none:
            assert isinstance(answer, empty_pb2.Empty)
            return None
        return answer

    def close(self) -> defer.Deferred[None]:
        for call in list(self._streams):
            call.cancel()
        channel, self._channel, self._stub = self._channel, None, None
        if channel is None:
            return defer.succeed(None)
        return as_deferred(channel.close(grace=None))


def _error(e: grpc.aio.AioRpcError) -> TelerouteError:
    return TelerouteError(e.code(), e.details() or e.code().name)
