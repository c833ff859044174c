# -*- test-case-name: tests.test_netlink -*-
"""
The daemon's link and route operations: ``PyrouteNetlink``, the pyroute2 implementation of
``telenet.core.interfaces.INetlink``.

The teleroute servicer needs a handful of netlink operations: the ``br-daemon`` bridge, veth
pairs whose far end moves into the plug-in's network namespace, and the routes through the
VIF (watched live). ``PyrouteNetlink`` runs them with pyroute2's ``AsyncIPRoute`` on the
asyncio loop Twisted runs on, so nothing blocks the reactor and no thread is needed.
``telenet.testing.MemoryNetlink`` is the fake; ``tests/test_netlink.py`` holds both to one
contract.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from telenet.core.aio import as_deferred
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
from telenet.core.netip import Address, Network
from telenet.core.netip import Interface as IPInterface

log = Logger()

T = TypeVar("T")

_IFF_UP = 0x1
_IFF_NOARP = 0x80
_RT_TABLE_MAIN = 254
_RTN_UNICAST = 1
_EEXIST = 17
_IFA_F_NODAD = 0x02  # linux/if_addr.h
_IP6_RT_PRIO_ADDRCONF = 256  # the metric of the kernel's IPv6 prefix routes
_ENODEV = 19


@implementer(IRouteWatch)
class _PyrouteWatch:
    def __init__(self, tasks: list[asyncio.Task[None]], closer: Callable[[], None]) -> None:
        self._tasks = tasks
        self._closer = closer

    def stop(self) -> defer.Deferred[None]:
        for task in self._tasks:
            task.cancel()
        self._closer()
        return defer.succeed(None)


@implementer(INetlink)
class PyrouteNetlink:
    """
    ``INetlink`` on pyroute2's ``AsyncIPRoute``, on the asyncio loop of Twisted's reactor.

    ``netns`` names a network namespace to work in (it must exist; tests use a scratch one);
    by default the daemon's own. Requires the asyncio reactor.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._ipr: Any = None
        self._watches: set[_PyrouteWatch] = set()
        # One operation at a time on the shared socket: two dumps in flight on it fail with
        # EBUSY (seen when the gateway looked for links while an endpoint was being made).
        self._one_at_a_time = asyncio.Lock()

    # -- plumbing -------------------------------------------------------------------------

    def _socket(self) -> Any:
        from pyroute2 import AsyncIPRoute

        if self.netns is None:
            return AsyncIPRoute()
        # flags=0: a missing namespace is an error, not silently created.
        return AsyncIPRoute(netns=self.netns, flags=0)

    async def _conn(self) -> Any:
        if self._ipr is None:
            self._ipr = self._socket()
        return self._ipr

    def _run(
        self, what: str, coro: Coroutine[Any, Any, T], exists: type[AlreadyExists] = AlreadyExists
    ) -> defer.Deferred[T]:
        async def guarded() -> T:
            from pyroute2.netlink.exceptions import NetlinkError

            try:
                async with self._one_at_a_time:
                    return await coro
            except NetlinkError as e:
                if e.code == _EEXIST:
                    raise exists(f"{what}: {e.args[1] if len(e.args) > 1 else e}") from e
                if e.code == _ENODEV:
                    raise LinkNotFound(f"{what}: no such link") from e
                raise NetlinkFailure(f"{what}: {e}") from e
            except NetlinkFailure:
                raise
            except OSError as e:
                raise NetlinkFailure(f"{what}: {e}") from e

        return as_deferred(guarded())

    async def _index(self, name: str) -> int:
        ipr = await self._conn()
        found = await ipr.link_lookup(ifname=name)
        if not found:
            raise LinkNotFound(f"no link named {name!r}")
        return int(found[0])

    async def _find(self, name: str, ipr: Any = None) -> Any | None:
        from pyroute2.netlink.exceptions import NetlinkError

        if ipr is None:
            ipr = await self._conn()
        try:
            msgs = await ipr.link("get", ifname=name)
        except NetlinkError as e:
            if e.code == _ENODEV:
                return None
            raise
        return msgs[0] if msgs else None

    async def _names(self) -> dict[int, str]:
        ipr = await self._conn()
        return {m["index"]: m.get("ifname") async for m in await ipr.link("dump")}

    @staticmethod
    def _link(msg: Any, names: dict[int, str]) -> Link:
        master = msg.get("master")
        return Link(
            name=msg.get("ifname"),
            index=msg["index"],
            mac=msg.get("address") or "",
            kind=msg.get(("linkinfo", "kind")),
            master=names.get(master) if master else None,
            up=bool(msg["flags"] & _IFF_UP),
            arp=not msg["flags"] & _IFF_NOARP,
        )

    # -- links ----------------------------------------------------------------------------

    def ensure_bridge(self, name: str) -> defer.Deferred[Link]:
        async def go() -> Link:
            ipr = await self._conn()
            msg = await self._find(name)
            if msg is None:
                await ipr.link("add", ifname=name, kind="bridge")
                log.info("Created bridge {bridge}", bridge=name)
            elif msg.get(("linkinfo", "kind")) != "bridge":
                raise LinkExists(f"link {name!r} exists and is not a bridge")
            else:
                log.info("Taking over bridge {bridge} left by an earlier run", bridge=name)
            # ARP is left as it is: on for a new bridge, whatever telenet.network.gateway made it
            # for one taken over.
            await ipr.link("set", ifname=name, state="up")
            msg = await self._find(name)
            if msg is None:
                raise LinkNotFound(f"bridge {name!r} vanished while being set up")
            return self._link(msg, await self._names())

        return self._run(f"ensure bridge {name}", go(), LinkExists)

    def create_veth(self, name: str, mac: str, peer: str, peer_mac: str) -> defer.Deferred[None]:
        async def go() -> None:
            ipr = await self._conn()
            await ipr.link(
                "add",
                ifname=name,
                kind="veth",
                address=mac,
                peer={"ifname": peer, "address": peer_mac},
            )

        return self._run(f"create veth {name}/{peer}", go(), LinkExists)

    def set_master(self, name: str, master: str) -> defer.Deferred[None]:
        async def go() -> None:
            ipr = await self._conn()
            master_index = await self._index(master)
            await ipr.link("set", index=await self._index(name), master=master_index)

        return self._run(f"set master of {name} to {master}", go())

    def _set_link(self, what: str, name: str, **attributes: Any) -> defer.Deferred[None]:
        """Set ``attributes`` of link ``name``; ``what`` says it in errors."""

        async def go() -> None:
            ipr = await self._conn()
            await ipr.link("set", index=await self._index(name), **attributes)

        return self._run(what, go())

    def move_to_netns(self, name: str, pid: int) -> defer.Deferred[None]:
        return self._set_link(f"move {name} to the netns of pid {pid}", name, net_ns_pid=pid)

    def set_up(self, name: str) -> defer.Deferred[None]:
        return self._set_link(f"set {name} up", name, state="up")

    def delete_link(self, name: str) -> defer.Deferred[None]:
        async def go() -> None:
            ipr = await self._conn()
            await ipr.link("del", index=await self._index(name))

        return self._run(f"delete {name}", go())

    def get_link(self, name: str) -> defer.Deferred[Link | None]:
        async def go() -> Link | None:
            msg = await self._find(name)
            return None if msg is None else self._link(msg, await self._names())

        return self._run(f"look up {name}", go())

    def links(self) -> defer.Deferred[list[Link]]:
        async def go() -> list[Link]:
            ipr = await self._conn()
            msgs = [m async for m in await ipr.link("dump")]
            names = {m["index"]: m.get("ifname") for m in msgs}
            return sorted((self._link(m, names) for m in msgs), key=lambda link: link.index)

        return self._run("list links", go())

    # -- addresses and routes -------------------------------------------------------------

    def add_address(self, name: str, address: IPInterface) -> defer.Deferred[None]:
        async def go() -> None:
            ipr = await self._conn()
            # IPv6 without duplicate address detection, as Docker adds its own: the addresses
            # come from Docker's IPAM, and the gateway's copy on the bridge (same L2 as the
            # daemon's tpd-N) would otherwise fail DAD against the original.
            await ipr.addr(
                "add",
                index=await self._index(name),
                address=str(address.ip),
                prefixlen=address.network.prefixlen,
                **({"flags": _IFA_F_NODAD} if address.version == 6 else {}),
            )

        return self._run(f"add {address} to {name}", go())

    def addresses(self, name: str) -> defer.Deferred[list[IPInterface]]:
        async def go() -> list[IPInterface]:
            msg = await self._find(name)
            if msg is None:
                return []
            ipr = await self._conn()
            return [
                ipaddress.ip_interface((m.get("address"), m["prefixlen"]))
                async for m in await ipr.addr("dump", index=msg["index"])
            ]

        return self._run(f"list addresses of {name}", go())

    def add_route(
        self, dst: Network, name: str, gateway: Address | None = None
    ) -> defer.Deferred[None]:
        async def go() -> None:
            ipr = await self._conn()
            spec: dict[str, Any] = {"dst": str(dst), "oif": await self._index(name)}
            if gateway is not None:
                spec["gateway"] = str(gateway)
            await ipr.route("add", **spec)

        return self._run(f"add route {dst} dev {name}", go())

    def delete_route(self, dst: Network, name: str) -> defer.Deferred[None]:
        async def go() -> None:
            ipr = await self._conn()
            await ipr.route("del", dst=str(dst), oif=await self._index(name))

        return self._run(f"delete route {dst} dev {name}", go())

    def replace_route(self, dst: Network, name: str, source: Address) -> defer.Deferred[None]:
        async def go() -> None:
            ipr = await self._conn()
            # IPv6 routes are keyed by metric too: the kernel's prefix route has 256.
            metric = {"priority": _IP6_RT_PRIO_ADDRCONF} if dst.version == 6 else {}
            await ipr.route(
                "replace", dst=str(dst), oif=await self._index(name), prefsrc=str(source), **metric
            )

        return self._run(f"replace route {dst} dev {name} src {source}", go())

    def set_arp(self, name: str, on: bool) -> defer.Deferred[None]:
        return self._set_link(f"set arp {'on' if on else 'off'} for {name}", name, arp=on)

    async def _routes(self, ipr: Any, name: str) -> frozenset[Network]:
        msg = await self._find(name, ipr)
        if msg is None:
            return frozenset()
        index = msg["index"]
        found: set[Network] = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            async for r in await ipr.route("dump", family=family):
                if (
                    r.get("oif") != index
                    or r.get("table") != _RT_TABLE_MAIN
                    or r["type"] != _RTN_UNICAST
                    or r.get("dst") is None
                ):
                    continue
                dst = ipaddress.ip_network((r.get("dst"), r["dst_len"]), strict=False)
                if include_route(dst):
                    found.add(dst)
        return frozenset(found)

    def routes(self, name: str) -> defer.Deferred[frozenset[Network]]:
        async def go() -> frozenset[Network]:
            return await self._routes(await self._conn(), name)

        return self._run(f"list routes through {name}", go())

    def watch_routes(self, name: str, callback: RouteCallback) -> defer.Deferred[IRouteWatch]:
        async def go() -> IRouteWatch:
            from pyroute2.netlink.rtnl import (
                RTMGRP_IPV4_IFADDR,
                RTMGRP_IPV4_ROUTE,
                RTMGRP_IPV6_IFADDR,
                RTMGRP_IPV6_ROUTE,
                RTMGRP_LINK,
            )

            events = self._socket()
            await events.bind(
                groups=RTMGRP_LINK
                | RTMGRP_IPV4_IFADDR
                | RTMGRP_IPV6_IFADDR
                | RTMGRP_IPV4_ROUTE
                | RTMGRP_IPV6_ROUTE
            )
            dirty = asyncio.Event()
            # A connection of its own for dumps: the bound one only carries events.
            ipr = self._socket()
            current = await self._routes(ipr, name)
            _safe_call(callback, current, name)

            async def read() -> None:
                # The kernel drops IPv4 routes silently when a link goes down, so any
                # link, address or route event means "look again".
                while True:
                    async for _ in events.get():
                        pass
                    dirty.set()

            async def refresh() -> None:
                nonlocal current
                while True:
                    await dirty.wait()
                    dirty.clear()
                    try:
                        fresh = await self._routes(ipr, name)
                    except Exception:
                        log.failure("Could not list the routes through {link}", link=name)
                        continue
                    if fresh != current:
                        current = fresh
                        _safe_call(callback, fresh, name)

            tasks = [asyncio.ensure_future(read()), asyncio.ensure_future(refresh())]
            for task in tasks:
                task.add_done_callback(_log_task_end)

            def closer() -> None:
                events.close()
                ipr.close()
                self._watches.discard(watch)

            watch = _PyrouteWatch(tasks, closer)
            self._watches.add(watch)
            return watch

        return self._run(f"watch routes through {name}", go())

    def close(self) -> defer.Deferred[None]:
        for watch in list(self._watches):
            watch.stop()
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        return defer.succeed(None)


def _safe_call(callback: RouteCallback, routes: frozenset[Network], name: str) -> None:
    try:
        callback(routes)
    except Exception:
        log.failure("Route watch callback for {link} failed", link=name)


def _log_task_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("Route watch stopped: {error!r}", error=task.exception())
