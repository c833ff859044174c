"""
The seam between the network plug-in and a daemon's teleroute service: ``ITelerouteClient``,
its error ``TelerouteError`` and the ``ConnectSession`` it opens.

``telenet.teleroute.client.GrpcTelerouteClient`` is the real client,
``telenet.testing.teleroute.MemoryTeleroute`` gives the fake, and
tests/test_teleroute_client_contract.py holds them alike.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from twisted.internet import defer
from zope.interface import Attribute, Interface

from telenet.teleroute.proto import teleroute_pb2


class TelerouteError(Exception):
    """A daemon call failed with a gRPC status ``code``; ``details`` is the daemon's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class ConnectSession:
    """
    An open ``Connect`` stream: the daemon's ``Info`` and a way to hear when the stream ends
    (also an open ``WatchRoutes`` stream, with no ``Info``).

    ``ended`` fires (never fails) with a reason text once, when the daemon ends the stream, the
    connection breaks, or ``cancel`` is called.
    """

    def __init__(self, info: dict[str, str], cancel: Callable[[], None]) -> None:
        self.info = info
        self.ended: defer.Deferred[str] = defer.Deferred()
        self._cancel = cancel

    @property
    def is_open(self) -> bool:
        return not self.ended.called

    def end(self, reason: str) -> None:
        """Record that the stream is over (called by the client that owns the stream)."""
        if not self.ended.called:
            self.ended.callback(reason)

    def cancel(self) -> None:
        """Close the stream from our side: the daemon sees the plug-in leave."""
        if self.is_open:
            self._cancel()
            self.end("closed by the plug-in")


class ITelerouteClient(Interface):
    """
    One daemon's teleroute service, as the network plug-in uses it.

    Every call takes a timeout in seconds and returns a Deferred that fails with
    ``TelerouteError`` (status code and message) when the daemon says no or cannot be reached.
    """

    target = Attribute("The daemon's address as host:port (IPv6 in brackets).")

    def connect(
        request: teleroute_pb2.ConnectRequest, timeout: float
    ) -> defer.Deferred[ConnectSession]:
        """Open the Connect stream; fires when the daemon's first ``Info`` arrived."""

    def create_endpoint(
        request: teleroute_pb2.CreateEndpointRequest, timeout: float
    ) -> defer.Deferred[None]:
        """Ask the daemon for (or to reuse) a veth pair for a Docker endpoint."""

    def remove_endpoint(
        request: teleroute_pb2.EndpointIdentifier, timeout: float
    ) -> defer.Deferred[None]:
        """Tell the daemon to forget an endpoint."""

    def join(
        request: teleroute_pb2.EndpointIdentifier, timeout: float
    ) -> defer.Deferred[teleroute_pb2.JoinResponse]:
        """The interface, routes and gateways for the joining container."""

    def leave(request: teleroute_pb2.EndpointIdentifier, timeout: float) -> defer.Deferred[None]:
        """Tell the daemon a container left the endpoint."""

    def watch_routes(
        request: teleroute_pb2.WatchRoutesRequest,
        on_update: Callable[[teleroute_pb2.RoutesUpdate], None],
        timeout: float,
    ) -> defer.Deferred[ConnectSession]:
        """
        Open the ``WatchRoutes`` stream (a telenet extension): ``on_update`` gets each
        ``RoutesUpdate``; fires with the stream (its ``info`` empty) once the first one was
        handed over. A daemon without the extension fails it with ``UNIMPLEMENTED``.
        """

    def close() -> defer.Deferred[None]:
        """Close the connection and any open stream."""


#: Makes the client of the daemon at (host, port).
ClientFactory = Callable[[str, int], ITelerouteClient]
