"""A network namespace in memory: ``MemoryNetlink``, the fake of ``INetlink``."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import defer
from zope.interface import implementer

from telenet.core.interfaces import (
    AlreadyExists,
    INetlink,
    IRouteWatch,
    Link,
    LinkExists,
    LinkNotFound,
    NetlinkFailure,
    RouteCallback,
    include_route,
)
from telenet.core.netip import Address as _Address
from telenet.core.netip import Interface as _IPInterface
from telenet.core.netip import Network as _Network

_PID_MAX = 1 << 22


@implementer(IRouteWatch)
class _MemoryRouteWatch:
    def __init__(self, owner: MemoryNetlink, name: str, callback: RouteCallback) -> None:
        self.owner = owner
        self.name = name
        self.callback = callback
        self.last: frozenset[_Network] = frozenset()

    def stop(self) -> defer.Deferred[None]:
        self.owner._watches.discard(self)
        return defer.succeed(None)


@implementer(INetlink)
class MemoryNetlink:
    """
    An ``INetlink`` for one pretend network namespace, behaving as the kernel does for the
    operations the daemon uses (checked by ``tests/test_netlink.py`` against pyroute2).

    Inspect ``links_by_name`` (name to ``Link``), ``moved`` (link name to the pid whose netns
    it went to) and ``calls`` (``(operation, args...)`` in order). ``processes``, when set,
    limits the pids ``move_to_netns`` accepts. ``fail`` maps an operation name to an
    exception it raises next time (then forgets).
    """

    def __init__(self, processes: set[int] | None = None) -> None:
        self.links_by_name: dict[str, Link] = {
            "lo": Link("lo", 1, "00:00:00:00:00:00", None, None, True)
        }
        self._next_index = 2
        self._peers: dict[str, str] = {}
        self._addresses: dict[str, list[_IPInterface]] = {}
        self._routes: dict[str, set[_Network]] = {}
        # Connected routes taken over by replace_route, per link.
        self._replaced: dict[str, set[_Network]] = {}
        self._watches: set[_MemoryRouteWatch] = set()
        self.moved: dict[str, int] = {}
        self.processes = processes
        self.fail: dict[str, Exception] = {}
        self.calls: list[tuple[Any, ...]] = []

    def _op(self, *call: Any) -> None:
        self.calls.append(call)
        error = self.fail.pop(call[0], None)
        if error is not None:
            raise error

    def _get(self, name: str) -> Link:
        link = self.links_by_name.get(name)
        if link is None:
            raise LinkNotFound(f"no link named {name!r}")
        return link

    def _new(self, name: str, mac: str, kind: str | None) -> None:
        if name in self.links_by_name:
            raise LinkExists(f"link {name!r} exists already")
        self.links_by_name[name] = Link(name, self._next_index, mac, kind, None, False)
        self._next_index += 1

    def _remove(self, name: str) -> None:
        del self.links_by_name[name]
        self._addresses.pop(name, None)
        self._routes.pop(name, None)
        self._replaced.pop(name, None)
        for other, link in list(self.links_by_name.items()):
            if link.master == name:
                self.links_by_name[other] = attrs.evolve(link, master=None)

    def _connected(self, name: str) -> set[_Network]:
        link = self.links_by_name.get(name)
        if link is None or not link.up:
            return set()
        return {a.network for a in self._addresses.get(name, [])} - self._replaced.get(name, set())

    def _current(self, name: str) -> frozenset[_Network]:
        every = self._connected(name) | self._routes.get(name, set())
        return frozenset(n for n in every if include_route(n))

    def _notify(self) -> None:
        for watch in list(self._watches):
            now = self._current(watch.name)
            if now != watch.last:
                watch.last = now
                watch.callback(now)

    def _done(self, result: Any = None) -> defer.Deferred[Any]:
        self._notify()
        return defer.succeed(result)

    def _call(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        try:
            return self._done(f(*args))
        except NetlinkFailure:
            return defer.fail()

    # -- links ----------------------------------------------------------------------------

    def ensure_bridge(self, name: str) -> defer.Deferred[Link]:
        def go() -> Link:
            self._op("ensure_bridge", name)
            link = self.links_by_name.get(name)
            if link is None:
                self._new(name, _fake_mac(self._next_index), "bridge")
            elif link.kind != "bridge":
                raise LinkExists(f"link {name!r} exists and is not a bridge")
            self.links_by_name[name] = attrs.evolve(self.links_by_name[name], up=True)
            return self.links_by_name[name]

        return self._call(go)

    def create_veth(self, name: str, mac: str, peer: str, peer_mac: str) -> defer.Deferred[None]:
        def go() -> None:
            self._op("create_veth", name, peer)
            if name in self.links_by_name or peer in self.links_by_name or name == peer:
                raise LinkExists(f"create veth {name}/{peer}: a link of that name exists")
            self._new(name, mac, "veth")
            self._new(peer, peer_mac, "veth")
            self._peers[name], self._peers[peer] = peer, name

        return self._call(go)

    def set_master(self, name: str, master: str) -> defer.Deferred[None]:
        def go() -> None:
            self._op("set_master", name, master)
            link, bridge = self._get(name), self._get(master)
            if bridge.kind != "bridge":
                raise NetlinkFailure(f"set master of {name} to {master}: not a bridge")
            self.links_by_name[name] = attrs.evolve(link, master=master)

        return self._call(go)

    def move_to_netns(self, name: str, pid: int) -> defer.Deferred[None]:
        def go() -> None:
            self._op("move_to_netns", name, pid)
            self._get(name)
            known = self.processes
            if pid <= 0 or pid >= _PID_MAX or (known is not None and pid not in known):
                raise NetlinkFailure(f"move {name} to the netns of pid {pid}: No such process")
            self._remove(name)
            self.moved[name] = pid

        return self._call(go)

    def set_up(self, name: str) -> defer.Deferred[None]:
        def go() -> None:
            self._op("set_up", name)
            self.links_by_name[name] = attrs.evolve(self._get(name), up=True)

        return self._call(go)

    def delete_link(self, name: str) -> defer.Deferred[None]:
        def go() -> None:
            self._op("delete_link", name)
            self._get(name)
            self._remove(name)
            peer = self._peers.pop(name, None)
            if peer is not None:
                self._peers.pop(peer, None)
                if peer in self.links_by_name:
                    self._remove(peer)

        return self._call(go)

    def arrive(self, name: str, kind: str = "veth") -> None:
        """A link comes into this namespace from another (Docker handing one back)."""
        self._new(name, _fake_mac(self._next_index), kind)

    def get_link(self, name: str) -> defer.Deferred[Link | None]:
        return defer.succeed(self.links_by_name.get(name))

    def links(self) -> defer.Deferred[list[Link]]:
        return defer.succeed(sorted(self.links_by_name.values(), key=lambda link: link.index))

    # -- addresses and routes -------------------------------------------------------------

    def add_address(self, name: str, address: _IPInterface) -> defer.Deferred[None]:
        def go() -> None:
            self._op("add_address", name, address)
            self._get(name)
            current = self._addresses.setdefault(name, [])
            if address in current:
                raise AlreadyExists(f"add {address} to {name}: File exists")
            current.append(address)

        return self._call(go)

    def addresses(self, name: str) -> defer.Deferred[list[_IPInterface]]:
        return defer.succeed(list(self._addresses.get(name, [])))

    def add_route(
        self, dst: _Network, name: str, gateway: _Address | None = None
    ) -> defer.Deferred[None]:
        def go() -> None:
            self._op("add_route", dst, name, gateway)
            link = self._get(name)
            if not link.up:
                raise NetlinkFailure(f"add route {dst} dev {name}: Network is down")
            if gateway is not None and not any(gateway in n for n in self._connected(name)):
                raise NetlinkFailure(f"add route {dst} dev {name}: Network is unreachable")
            routes = self._routes.setdefault(name, set())
            if dst in routes or dst in self._connected(name):
                raise AlreadyExists(f"add route {dst} dev {name}: File exists")
            routes.add(dst)

        return self._call(go)

    def delete_route(self, dst: _Network, name: str) -> defer.Deferred[None]:
        def go() -> None:
            self._op("delete_route", dst, name)
            self._get(name)
            routes = self._routes.get(name, set())
            if dst not in routes:
                raise NetlinkFailure(f"delete route {dst} dev {name}: No such process")
            routes.discard(dst)

        return self._call(go)

    def replace_route(self, dst: _Network, name: str, source: _Address) -> defer.Deferred[None]:
        def go() -> None:
            self._op("replace_route", dst, name, source)
            if not self._get(name).up:
                raise NetlinkFailure(f"replace route {dst} dev {name}: Network is down")
            if not any(a.ip == source for every in self._addresses.values() for a in every):
                raise NetlinkFailure(f"replace route {dst} dev {name}: Invalid prefsrc address")
            for other in self.links_by_name:
                self._routes.get(other, set()).discard(dst)
                if dst in self._connected(other):
                    self._replaced.setdefault(other, set()).add(dst)
            self._routes.setdefault(name, set()).add(dst)

        return self._call(go)

    def set_arp(self, name: str, on: bool) -> defer.Deferred[None]:
        def go() -> None:
            self._op("set_arp", name, on)
            self.links_by_name[name] = attrs.evolve(self._get(name), arp=on)

        return self._call(go)

    def routes(self, name: str) -> defer.Deferred[frozenset[_Network]]:
        return defer.succeed(self._current(name))

    def watch_routes(self, name: str, callback: RouteCallback) -> defer.Deferred[IRouteWatch]:
        watch = _MemoryRouteWatch(self, name, callback)
        watch.last = self._current(name)
        callback(watch.last)
        self._watches.add(watch)
        return defer.succeed(watch)

    def close(self) -> defer.Deferred[None]:
        self._watches.clear()
        return defer.succeed(None)


def _fake_mac(n: int) -> str:
    return "02:00:00:" + ":".join(f"{b:02x}" for b in n.to_bytes(3, "big"))
