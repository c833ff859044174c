"""
Memory fakes of telenet's interfaces, for unit tests (ours and anyone building on telenet).

Each fake is checked against the real implementation by a contract test, so a test that passes
with a fake says something about the real thing.
"""

from __future__ import annotations

import copy
import os
import posixpath
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from telenet.core.dockerplugin import PluginError
from telenet.core.interfaces import IMounter, IStateStore


@implementer(IStateStore)
class MemoryStateStore:
    """An ``IStateStore`` in memory; ``saves`` counts the writes."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self._data = copy.deepcopy(data or {})
        self.saves = 0

    def load(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)

    def save(self, data: dict[str, Any]) -> None:
        self._data = copy.deepcopy(data)
        self.saves += 1


@implementer(IMounter)
class MemoryMounter:
    """
    An ``IMounter`` that mounts nothing but keeps the books a real one would.

    ``servers`` maps ``(host, port)`` to ``{volume: (remote dir, ro)}`` for mounted servers.
    ``remote_dirs`` lists the directories the fake SFTP servers have; ``unreachable`` the
    servers that refuse connections.
    """

    def __init__(self, mount_root: str = "/mnt/volumes") -> None:
        self.mount_root = mount_root
        self.servers: dict[tuple[str, int], dict[str, tuple[str, bool]]] = {}
        self.remote_dirs: set[str] | None = None
        self.unreachable: set[tuple[str, int]] = set()
        self.calls: list[tuple[str, ...]] = []
        self.since: dict[tuple[str, int], float] = {}

    def mountpoint(self, host: str, port: int, name: str) -> str:
        return posixpath.join(self.mount_root, host, str(port), name)

    def attach(
        self, host: str, port: int, name: str, remote_dir: str, ro: bool
    ) -> defer.Deferred[str]:
        self.calls.append(("attach", host, str(port), name))
        if (host, port) in self.unreachable:
            return defer.fail(PluginError(f"cannot reach SFTP server at {host}:{port}"))
        if self.remote_dirs is not None and remote_dir not in self.remote_dirs:
            return defer.fail(
                PluginError(f"remote directory {remote_dir} does not exist on {host}:{port}")
            )
        self.servers.setdefault((host, port), {})[name] = (remote_dir, ro)
        return defer.succeed(self.mountpoint(host, port, name))

    def detach(self, host: str, port: int, name: str) -> defer.Deferred[None]:
        self.calls.append(("detach", host, str(port), name))
        volumes = self.servers.get((host, port), {})
        volumes.pop(name, None)
        if not volumes:
            self.servers.pop((host, port), None)
        return defer.succeed(None)

    def status(self, host: str, port: int) -> defer.Deferred[dict[str, Any]]:
        volumes = self.servers.get((host, port))
        if volumes is None:
            return defer.succeed({"mounted": False, "connected": False})
        return defer.succeed(
            {
                "mounted": True,
                "connected": (host, port) not in self.unreachable,
                "since": self.since.get((host, port), 0.0),
                "volumes": {n: {"path": p, "ro": ro} for n, (p, ro) in volumes.items()},
            }
        )

    def release(self, host: str, port: int) -> defer.Deferred[None]:
        self.calls.append(("release", host, str(port)))
        self.servers.pop((host, port), None)
        return defer.succeed(None)

    def reachable(self, host: str, port: int, timeout: float) -> defer.Deferred[bool]:
        return defer.succeed((host, port) not in self.unreachable)

    def adopt(self, expected: Any) -> defer.Deferred[None]:
        self.calls.append(("adopt",))
        for key in list(self.servers):
            wanted = expected.get(key, {})
            self.servers[key] = {n: v for n, v in self.servers[key].items() if n in wanted}
            if not self.servers[key]:
                del self.servers[key]
        return defer.succeed(None)

    def shutdown(self) -> defer.Deferred[None]:
        self.calls.append(("shutdown",))
        self.servers.clear()
        return defer.succeed(None)


# -- netlink (teleroute daemon) ------------------------------------------------------------

import attrs  # noqa: E402

from telenet.core.netip import Address as _Address  # noqa: E402
from telenet.core.netip import Interface as _IPInterface  # noqa: E402
from telenet.core.netip import Network as _Network  # noqa: E402
from telenet.core.netlink import (  # noqa: E402
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


# -- docker and the daemon's control API (the telenet CLI) ---------------------------------

import ipaddress as _ipaddress  # noqa: E402
import itertools as _itertools  # noqa: E402

from telenet.cli.connection import ControlError, IControl  # noqa: E402
from telenet.cli.dockerapi import (  # noqa: E402
    Conflict,
    ContainerSpec,
    DockerError,
    DockerUnavailable,
    IDocker,
    NotFound,
)

ExecHandler = Callable[[dict[str, Any], list[str]], tuple[int, bytes, bytes]]

_DEFAULT_POOLS = [f"172.{n}.0.0/16" for n in range(17, 32)] + [
    f"192.168.{n}.0/20" for n in range(0, 256, 16)
]


@implementer(IDocker)
class MemoryDocker:
    """
    An ``IDocker`` in memory, answering with the API's JSON shapes and Docker's error texts:
    containers get addresses from their networks' subnets when they run, networks without a
    subnet get one from Docker's default pools, a network with endpoints cannot be removed.

    ``calls`` records every change as ``(method, name, ...)`` tuples; ``fail[method]`` makes
    the next call of that method raise the given error; ``kill(name)`` makes a container
    exit as ``docker kill`` does.
    """

    def __init__(self, version: str = "1.41") -> None:
        self.version: str | None = version
        self.images = {"telenet", "local/busybox"}
        self.plugins: dict[str, dict[str, Any]] = {}
        self.legacy_sockets: set[str] = set()
        self.containers_by_id: dict[str, dict[str, Any]] = {}
        self.networks_by_id: dict[str, dict[str, Any]] = {}
        self.volumes_by_name: dict[str, dict[str, Any]] = {}
        self.volumes_in_use: set[str] = set()
        self.logs: dict[str, str] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.fail: dict[str, DockerError] = {}
        #: Whether the engine runs on this machine (``engine_is_here``).
        self.here = True
        #: Answers ``exec_in(container inspect, argv)`` as (code, stdout, stderr).
        self.exec_handler: ExecHandler | None = None
        self._ids = _itertools.count(1)
        self._ports = _itertools.count(40000)
        self._add_network("bridge", "bridge", "172.17.0.0/16", {}, internal=False)

    # -- helpers for tests

    def _new_id(self) -> str:
        return f"{next(self._ids):064x}"

    def _check(self, method: str) -> None:
        if self.version is None:
            raise DockerUnavailable(
                "Docker at unix:///var/run/docker.sock (context default, the "
                "default) does not answer: Connection refused"
            )
        error = self.fail.pop(method, None)
        if error is not None:
            raise error

    def _add_network(
        self, name: str, driver: str, subnet: str, labels: dict[str, str], internal: bool
    ) -> dict[str, Any]:
        nid = self._new_id()
        network: dict[str, Any] = {
            "Name": name,
            "Id": nid,
            "Driver": driver,
            "Labels": dict(labels),
            "Internal": internal,
            "Options": {},
            "EnableIPv6": False,
            "IPAM": {"Config": [{"Subnet": subnet}]},
            "Containers": {},
        }
        self.networks_by_id[nid] = network
        return network

    def _find_container(self, ref: str) -> dict[str, Any] | None:
        for cid, c in self.containers_by_id.items():
            if ref in (cid, c["Name"].lstrip("/")) or (len(ref) >= 12 and cid.startswith(ref)):
                return c
        return None

    def _find_network(self, ref: str) -> dict[str, Any] | None:
        for nid, n in self.networks_by_id.items():
            if ref in (nid, n["Name"]):
                return n
        return None

    def _join(self, network: dict[str, Any], container: dict[str, Any]) -> None:
        subnet = _ipaddress.ip_network(network["IPAM"]["Config"][0]["Subnet"])
        used = {str(e["IPv4Address"]).split("/")[0] for e in network["Containers"].values()}
        hosts = subnet.hosts()
        next(hosts)  # the gateway
        address = next(str(h) for h in hosts if str(h) not in used)
        network["Containers"][container["Id"]] = {
            "Name": container["Name"].lstrip("/"),
            "IPv4Address": f"{address}/{subnet.prefixlen}",
        }
        settings = container["NetworkSettings"]["Networks"].setdefault(network["Name"], {})
        settings.update(IPAddress=address, NetworkID=network["Id"])

    def _leave_all(self, container: dict[str, Any]) -> None:
        for network in self.networks_by_id.values():
            network["Containers"].pop(container["Id"], None)

    def kill(self, name: str, code: int = 137) -> None:
        """The container exits (``docker kill``): it leaves its networks' endpoints."""
        container = self._find_container(name)
        assert container is not None, name
        container["State"].update(Running=False, ExitCode=code)
        self._leave_all(container)

    def network_names(self) -> list[str]:
        return sorted(n["Name"] for n in self.networks_by_id.values())

    def container_names(self) -> list[str]:
        return sorted(c["Name"].lstrip("/") for c in self.containers_by_id.values())

    # -- IDocker

    def api_version(self) -> str:
        self._check("api_version")
        assert self.version is not None
        return self.version

    def plugin(self, name: str) -> dict[str, Any] | None:
        self._check("plugin")
        found = self.plugins.get(name)
        return copy.deepcopy(found) if found is not None else None

    def enable_plugin(self, name: str) -> None:
        self._check("enable_plugin")
        if name not in self.plugins:
            raise NotFound(f"plugin {name} not found")
        self.calls.append(("enable_plugin", name))
        self.plugins[name]["Enabled"] = True

    def install_plugin(self, name: str) -> None:
        self._check("install_plugin")
        self.calls.append(("install_plugin", name))
        self.plugins[name] = {"Name": name, "Id": self._new_id(), "Enabled": True}

    def create_plugins(self, image: str, plugins: list[tuple[str, str]]) -> None:
        self._check("create_plugins")
        if image not in self.images:
            raise NotFound(f"No such image: {image}")
        for name, kind in plugins:
            if name in self.plugins:
                raise Conflict(f"plugin {name} already exists")
            self.calls.append(("create_plugin", name, kind, image))
            self.plugins[name] = {"Name": name, "Id": self._new_id(), "Enabled": False}

    def exec_in(self, container: str, argv: list[str]) -> tuple[int, bytes, bytes]:
        self._check("exec_in")
        found = self.container(container)
        if found is None or not found["State"].get("Running"):
            raise NotFound(f"No such container: {container}")
        self.calls.append(("exec_in", found["Name"].lstrip("/"), tuple(argv)))
        if self.exec_handler is None:
            return 126, b"", b"MemoryDocker runs no processes"
        return self.exec_handler(found, argv)

    def engine_is_here(self) -> bool:
        return self.here

    def socket_answers(self, path: str) -> bool:
        # As SDKDocker: a legacy socket here serves only an engine that runs here.
        return self.here and path in self.legacy_sockets

    def image_exists(self, name: str) -> bool:
        self._check("image_exists")
        return name in self.images

    def container(self, name: str) -> dict[str, Any] | None:
        self._check("container")
        found = self._find_container(name)
        return copy.deepcopy(found) if found is not None else None

    def containers(self, label: str) -> list[dict[str, Any]]:
        self._check("containers")
        key, eq, value = label.partition("=")
        return [
            copy.deepcopy(c)
            for c in self.containers_by_id.values()
            if key in c["Config"]["Labels"] and (not eq or c["Config"]["Labels"][key] == value)
        ]

    def create_container(self, spec: ContainerSpec) -> str:
        self._check("create_container")
        if self._find_container(spec.name) is not None:
            raise Conflict(f'Conflict. The container name "/{spec.name}" is already in use')
        if spec.image not in self.images:
            raise NotFound(f"No such image: {spec.image}")
        cid = self._new_id()
        self.containers_by_id[cid] = {
            "Id": cid,
            "Name": "/" + spec.name,
            "Config": {"Image": spec.image, "Cmd": list(spec.command), "Labels": dict(spec.labels)},
            "HostConfig": {
                "PidMode": "host" if spec.pid_host else "",
                "CapAdd": list(spec.cap_add),
                "Sysctls": dict(spec.sysctls),
                "NetworkMode": spec.network or "default",
            },
            "State": {"Running": False, "ExitCode": 0},
            "NetworkSettings": {"Networks": {spec.network or "bridge": {}}, "Ports": {}},
            "spec": spec,
        }
        self.calls.append(("create_container", spec.name))
        return cid

    def start_container(self, container: str) -> None:
        self._check("start_container")
        found = self._find_container(container)
        if found is None:
            raise NotFound(f"No such container: {container}")
        found["State"].update(Running=True, ExitCode=0)
        for name in list(found["NetworkSettings"]["Networks"]):
            network = self._find_network(name)
            if network is not None:
                self._join(network, found)
        spec: ContainerSpec = found["spec"]
        found["NetworkSettings"]["Ports"] = {
            port: [{"HostIp": host, "HostPort": str(hostport or next(self._ports))}]
            for port, (host, hostport) in spec.ports.items()
        }
        self.calls.append(("start_container", found["Name"].lstrip("/")))

    def stop_container(self, container: str, timeout: float) -> None:
        self._check("stop_container")
        found = self._find_container(container)
        if found is not None and found["State"]["Running"]:
            self.calls.append(("stop_container", found["Name"].lstrip("/")))
            self.kill(found["Id"], 143)

    def remove_container(self, container: str) -> None:
        self._check("remove_container")
        found = self._find_container(container)
        if found is not None:
            self._leave_all(found)
            del self.containers_by_id[found["Id"]]
            self.calls.append(("remove_container", found["Name"].lstrip("/")))

    def container_logs(self, container: str, tail: int) -> str:
        found = self._find_container(container)
        text = self.logs.get(found["Name"].lstrip("/"), "") if found else ""
        return "\n".join(text.splitlines()[-tail:])

    def networks(self) -> list[dict[str, Any]]:
        self._check("networks")
        return [copy.deepcopy(n) for n in self.networks_by_id.values()]

    def network(self, name: str) -> dict[str, Any] | None:
        self._check("network")
        found = self._find_network(name)
        return copy.deepcopy(found) if found is not None else None

    def create_network(
        self,
        name: str,
        driver: str,
        options: dict[str, str],
        labels: dict[str, str],
        subnet: str | None,
        ipv6: bool,
    ) -> tuple[str, str]:
        self._check("create_network")
        if self._find_network(name) is not None:
            raise Conflict(f"network with name {name} already exists")
        known = driver == "bridge" or (
            self.plugins.get(driver, {}).get("Enabled")
            or f"/run/docker/plugins/{driver}.sock" in self.legacy_sockets
        )
        if not known:
            raise NotFound(f"plugin {driver!r} not found")
        used = [
            _ipaddress.ip_network(c["Subnet"])
            for n in self.networks_by_id.values()
            for c in n["IPAM"]["Config"]
        ]
        if subnet is None:
            subnet = next(
                (
                    p
                    for p in _DEFAULT_POOLS
                    if not any(_ipaddress.ip_network(p).overlaps(u) for u in used)
                ),
                None,
            )
            if subnet is None:
                raise DockerError(
                    "could not find an available, non-overlapping IPv4 address "
                    "pool among the defaults to assign to the network"
                )
        elif any(_ipaddress.ip_network(subnet).overlaps(u) for u in used):
            raise DockerError("Pool overlaps with other one on this address space")
        network = self._add_network(name, driver, subnet, labels, internal=True)
        network["Options"] = dict(options)
        network["EnableIPv6"] = ipv6
        self.calls.append(("create_network", name, subnet))
        return network["Id"], ""

    def remove_network(self, network: str) -> None:
        self._check("remove_network")
        found = self._find_network(network)
        if found is None:
            raise NotFound(f"network {network} not found")
        if found["Containers"]:
            raise DockerError(
                f"error while removing network: network {found['Name']} id {found['Id']} "
                "has active endpoints"
            )
        del self.networks_by_id[found["Id"]]
        self.calls.append(("remove_network", found["Name"]))

    def connect(self, network: str, container: str, driver_opts: dict[str, str] | None) -> None:
        self._check("connect")
        net = self._find_network(network)
        found = self._find_container(container)
        if net is None or found is None:
            raise NotFound(f"No such network or container: {network} {container}")
        if net["Name"] in found["NetworkSettings"]["Networks"] and found["State"]["Running"]:
            raise DockerError(
                f"endpoint with name {found['Name'].lstrip('/')} already exists in network "
                f"{net['Name']}"
            )
        found["NetworkSettings"]["Networks"][net["Name"]] = {"DriverOpts": driver_opts}
        if found["State"]["Running"]:
            self._join(net, found)
        self.calls.append(("connect", net["Name"], found["Name"].lstrip("/"), driver_opts))

    def disconnect(self, network: str, container: str) -> None:
        self._check("disconnect")
        net = self._find_network(network)
        if net is None:
            raise NotFound(f"network {network} not found")
        net["Containers"].pop(container, None)
        found = self._find_container(container)
        if found is not None:
            found["NetworkSettings"]["Networks"].pop(net["Name"], None)
        self.calls.append(("disconnect", net["Name"], container))

    def volumes(self, driver: str, label: str | None = None) -> list[dict[str, Any]]:
        self._check("volumes")
        key, eq, value = (label or "").partition("=")
        return [
            copy.deepcopy(v)
            for v in self.volumes_by_name.values()
            if v["Driver"] == driver
            and (not key or (key in v["Labels"] and (not eq or v["Labels"][key] == value)))
        ]

    def create_volume(
        self, name: str, driver: str, options: dict[str, str], labels: dict[str, str]
    ) -> None:
        self._check("create_volume")
        if name in self.volumes_by_name:
            raise Conflict(f"volume {name} already exists")
        self.volumes_by_name[name] = {
            "Name": name,
            "Driver": driver,
            "Options": dict(options),
            "Labels": dict(labels),
        }
        self.calls.append(("create_volume", name))

    def remove_volume(self, name: str) -> None:
        self._check("remove_volume")
        if name not in self.volumes_by_name:
            raise NotFound(f"get {name}: no such volume")
        if name in self.volumes_in_use:
            raise DockerError(f"remove {name}: volume is in use")
        del self.volumes_by_name[name]
        self.calls.append(("remove_volume", name))


@implementer(IControl)
class MemoryControl:
    """
    The daemon's control API in memory: ``status`` as given, bridges kept by port.
    ``answering = False`` makes every call fail as a daemon that is not up yet.
    """

    def __init__(self, status: dict[str, Any] | None = None) -> None:
        self.answering = True
        self.base_status = status or {
            "version": "0.1.0",
            "routes": [],
            "dns": {"local_address": None},
        }
        self.bridges: dict[int, str] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.refuse_agent: str | None = None
        self._ports = _itertools.count(33000)

    def _check(self) -> None:
        if not self.answering:
            raise ControlError("GET /status: [Errno 111] Connection refused")

    def status(self) -> dict[str, Any]:
        self._check()
        bridges = [{"port": p, "agent": a} for p, a in sorted(self.bridges.items())]
        return {**copy.deepcopy(self.base_status), "bridges": bridges}

    def open_bridge(self, agent: str) -> int:
        self._check()
        if self.refuse_agent is not None:
            raise ControlError(self.refuse_agent)
        port = next(self._ports)
        self.bridges[port] = agent
        self.calls.append(("open_bridge", agent, port))
        return port

    def close_bridge(self, port: int) -> None:
        self._check()
        if self.bridges.pop(port, None) is None:
            raise ControlError(f"no bridge on port {port}")
        self.calls.append(("close_bridge", port))


class FakeRunner:
    """
    A ``telenet.network.firewall.Runner`` that records each command (``commands``, the executable's
    base name first) and answers the exit code of the first ``codes`` prefix it matches, else 0.
    """

    def __init__(self, codes: dict[tuple[str, ...], int] | None = None) -> None:
        self.commands: list[list[str]] = []
        self.codes = codes or {}

    def __call__(
        self, executable: str, args: list[str]
    ) -> defer.Deferred[tuple[bytes, bytes, int]]:
        argv = [os.path.basename(executable), *args]
        self.commands.append(argv)
        code = next(
            (c for prefix, c in self.codes.items() if tuple(argv[: len(prefix)]) == prefix), 0
        )
        return defer.succeed((b"", b"boom" if code else b"", code))
