"""The Docker engine in memory, as the CLI uses it: ``MemoryDocker``."""

from __future__ import annotations

import copy
import ipaddress
import itertools
from collections.abc import Callable
from typing import Any

from zope.interface import implementer

# -- docker and the daemon's control API (the telenet CLI) ---------------------------------
from telenet.cli.dockerapi import Conflict, DockerError, DockerUnavailable, NotFound
from telenet.cli.interfaces import ContainerSpec, IDocker

ExecHandler = Callable[[dict[str, Any], list[str]], tuple[int, bytes, bytes]]

_DEFAULT_POOLS = [f"172.{n}.0.0/16" for n in range(17, 32)] + [
    f"192.168.{n}.0/20" for n in range(0, 256, 16)
]


@implementer(IDocker)
class MemoryDocker:
    """
    An ``IDocker`` in memory, answering with the API's JSON shapes and Docker's error texts
    (tests/test_docker_contract.py holds it to SDKDocker on dockerd):
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
        self.logs_since: float | None = None
        self.calls: list[tuple[Any, ...]] = []
        self.fail: dict[str, DockerError] = {}
        #: Whether the engine runs on this machine (``engine_is_here``).
        self.here = True
        #: Answers ``exec_in(container inspect, argv)`` as (code, stdout, stderr).
        self.exec_handler: ExecHandler | None = None
        self._ids = itertools.count(1)
        self._ports = itertools.count(40000)
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
        subnet = ipaddress.ip_network(network["IPAM"]["Config"][0]["Subnet"])
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
        if found is None:
            raise NotFound(f"No such container: {container}")
        if not found["State"].get("Running"):
            # dockerd answers 409, not 404, for a container that is there but stopped.
            raise Conflict(f"container {found['Id']} is not running")
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

    def container_logs(self, container: str, tail: int, since: float | None = None) -> str:
        # ``since`` is kept for the tests, not applied: these logs carry no times.
        self.logs_since = since
        found = self._find_container(container)
        text = self.logs.get(found["Name"].lstrip("/"), "") if found else ""
        return "\n".join(text.splitlines()[-tail:])

    def engine_info(self) -> dict[str, Any]:
        self._check("engine_info")
        return {"Version": "20.10.0-memory", "ApiVersion": self.version, "Os": "linux"}

    def plugin_list(self) -> list[dict[str, Any]]:
        self._check("plugin_list")
        return [copy.deepcopy(p) for p in self.plugins.values()]

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
            ipaddress.ip_network(c["Subnet"])
            for n in self.networks_by_id.values()
            for c in n["IPAM"]["Config"]
        ]
        if subnet is None:
            subnet = next(
                (
                    p
                    for p in _DEFAULT_POOLS
                    if not any(ipaddress.ip_network(p).overlaps(u) for u in used)
                ),
                None,
            )
            if subnet is None:
                raise DockerError(
                    "could not find an available, non-overlapping IPv4 address "
                    "pool among the defaults to assign to the network"
                )
        elif any(ipaddress.ip_network(subnet).overlaps(u) for u in used):
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
        found = self._find_container(container)
        if found is not None:
            # The endpoints are kept by id; the caller may give a name.
            net["Containers"].pop(found["Id"], None)
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
