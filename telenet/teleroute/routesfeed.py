# -*- test-case-name: tests.test_liveroutes_daemon -*-
"""
The daemon's side of live routes (a telenet extension of teleroute): ``RoutesFeed``.

Go Telepresence gives a container its routes once, at Join. A telenet daemon also serves
``WatchRoutes``: each subscriber (a plug-in) gets the whole set of routed subnets with the
per-family next hops at once, and again whenever the set or a next hop changes, so that the
plug-in can program running containers. The feed is the publish side only, Twisted-native
and free of gRPC; the servicer (``telenet.teleroute.service``) streams what it publishes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.logger import Logger

from telenet.core.netip import Address, Network, encode_addr, encode_prefix
from telenet.teleroute.proto import teleroute_pb2

log = Logger()

RoutesListener = Callable[[teleroute_pb2.RoutesUpdate], None]


def routes_update(
    routes: Iterable[Network], via_ipv4: Address | None, via_ipv6: Address | None
) -> teleroute_pb2.RoutesUpdate:
    """The ``RoutesUpdate`` for a set of routed subnets (IPv4 first) and the next hops."""
    ordered = sorted(set(routes), key=lambda n: (n.version, n))
    update = teleroute_pb2.RoutesUpdate(routes=[encode_prefix(n) for n in ordered])
    if via_ipv4 is not None:
        update.via_ip_v4 = encode_addr(via_ipv4)
    if via_ipv6 is not None:
        update.via_ip_v6 = encode_addr(via_ipv6)
    return update


class RoutesFeed:
    """
    I tell subscribers the current ``RoutesUpdate`` when they subscribe and after every
    change (``changed()``, called by whoever saw the routes or the next hops move); a change
    that leaves the update as it was is not sent again.
    """

    def __init__(self, current: Callable[[], teleroute_pb2.RoutesUpdate]) -> None:
        self._current = current
        self._listeners: list[RoutesListener] = []
        self._last: bytes | None = None

    @property
    def subscribers(self) -> int:
        return len(self._listeners)

    def subscribe(self, listener: RoutesListener) -> Callable[[], None]:
        """Call ``listener`` with the current update now and on every change; the unsubscriber."""
        self._listeners.append(listener)
        update = self._current()
        self._last = update.SerializeToString(deterministic=True)
        self._tell(listener, update)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def changed(self) -> None:
        """The routes or next hops may have changed: send the update if it differs."""
        update = self._current()
        wire = update.SerializeToString(deterministic=True)
        if wire == self._last:
            return
        self._last = wire
        if self._listeners:
            log.info(
                "Routes changed: telling {count} plug-in stream(s)", count=len(self._listeners)
            )
        for listener in list(self._listeners):
            self._tell(listener, update)

    def _tell(self, listener: RoutesListener, update: teleroute_pb2.RoutesUpdate) -> None:
        try:
            listener(update)
        except Exception:
            log.failure("A routes subscriber failed")
