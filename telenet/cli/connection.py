# -*- test-case-name: tests.test_cli_connect -*-
"""
Connections: ``telenet connect --docker``, ``status`` and ``quit`` (reference §4).

A connection named N is:

- the daemon container ``tp-N`` (project image, ``twistd telepresence-daemon``) on Docker's
  default bridge, with ``--pid host``, NET_ADMIN and the forwarding sysctls, its control API
  published on a free port of 127.0.0.1, attached to the VIF network when one is given;
- the teleroute network N: internal, options ``host`` (the daemon's bridge address) and
  ``port``, labelled ``telepresence.io/teleroute/daemon=<daemon container id>``, with a subnet
  that overlaps neither the routed subnets nor an existing Docker network; the daemon joins it
  first, with ``daemon=true``.

Everything is found again through labels, so no state file is kept. Connecting twice reports
the running connection; a daemon container that died is replaced, and so is a labelled
network whose daemon is gone (its other containers are reconnected).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

import attrs
import yaml
from zope.interface import Interface, implementer

from telenet.cli.config import Config, PluginConfig
from telenet.cli.dockerapi import (
    ContainerSpec,
    DockerError,
    DockerUnavailable,
    IDocker,
    api_version_ok,
    subnets_of,
)
from telenet.cli.subnets import choose_subnet
from telenet.core.gocompat import safe_name

LABEL_DAEMON = "telepresence.io/teleroute/daemon"
"""On a teleroute network: the id of its daemon container (Telepresence's label)."""
LABEL_CONNECTION = "telenet.cli.connection"
"""On the daemon container, the network and engagement volumes: the connection's name."""
LABEL_ROLE = "telenet.role"
LABEL_NETWORK_PLUGIN = "telenet.network-plugin"
LABEL_VOLUME_PLUGIN = "telenet.volume-plugin"

CONTAINER_PREFIX = "tp-"


class CLIError(Exception):
    """A failure the user can act on; the message is one line."""


class NotConnected(CLIError):
    pass


# -- the daemon's control API


class IControl(Interface):
    """The daemon's control API (contracts §6)."""

    def status() -> dict[str, Any]:
        """``GET /status``."""

    def open_bridge(agent: str) -> int:
        """``POST /bridges {"agent": agent}``: the bridge's port."""

    def close_bridge(port: int) -> None:
        """``DELETE /bridges/<port>``."""


class ControlError(Exception):
    """The control API did not answer, or answered an error (its message)."""


class _JSONControl:
    """The control API's calls over a transport: ``_exchange`` gives (HTTP status, body)."""

    def _exchange(self, method: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        raise NotImplementedError

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        payload = json.dumps(body).encode() if body is not None else None
        status, data = self._exchange(method, path, payload)
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            raise ControlError(f"{method} {path}: not JSON (HTTP {status})") from None
        if status >= 400:
            message = decoded.get("error") if isinstance(decoded, dict) else None
            raise ControlError(message or f"{method} {path}: HTTP {status}")
        return decoded

    def status(self) -> dict[str, Any]:
        return dict(self._request("GET", "/status"))

    def open_bridge(self, agent: str) -> int:
        return int(self._request("POST", "/bridges", {"agent": agent})["port"])

    def close_bridge(self, port: int) -> None:
        self._request("DELETE", f"/bridges/{port}")


@implementer(IControl)
@attrs.define
class HTTPControl(_JSONControl):
    """``IControl`` over HTTP to ``host:port`` (the published port on the host's loopback)."""

    host: str
    port: int
    timeout: float = 10.0

    def _exchange(self, method: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as e:
            raise ControlError(f"{method} {path}: {e or type(e).__name__}") from None
        finally:
            conn.close()


#: Run by ``docker exec`` in the daemon container: one request to its control API on its own
#: loopback; prints the status, a newline, and the body.
_EXEC_REQUEST = (
    "import http.client, sys\n"
    "method, path, port, body = sys.argv[1:5]\n"
    "c = http.client.HTTPConnection('127.0.0.1', int(port), timeout=10)\n"
    "c.request(method, path, body=body.encode() or None,\n"
    "          headers={'Content-Type': 'application/json'} if body else {})\n"
    "r = c.getresponse()\n"
    "sys.stdout.buffer.write(b'%d\\n' % r.status + r.read())\n"
)


@implementer(IControl)
@attrs.define
class ExecControl(_JSONControl):
    """
    ``IControl`` through ``docker exec`` in the daemon container, on its ``port`` there: for
    an engine elsewhere (in a VM, on another host, behind TCP), whose published loopback
    ports are not this machine's.
    """

    docker: IDocker
    container: str
    port: int

    def _exchange(self, method: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        argv = [
            "python3",
            "-c",
            _EXEC_REQUEST,
            method,
            path,
            str(self.port),
            (payload or b"").decode(),
        ]
        try:
            code, out, err = self.docker.exec_in(self.container, argv)
        except DockerError as e:
            raise ControlError(f"{method} {path}: {e}") from None
        status, _, data = out.partition(b"\n")
        if code != 0 or not status.isdigit():
            why = (err.decode(errors="replace").strip().splitlines() or ["no answer"])[-1]
            raise ControlError(f"{method} {path}: {why}")
        return int(status), data


# -- names


def kube_context(environ: dict[str, str] | None = None) -> tuple[str, str]:
    """(current context, its namespace or ``default``) of the kubeconfig, if there is one."""
    env = os.environ if environ is None else environ
    paths = [p for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    if not paths:
        paths = [os.path.join(env.get("HOME") or os.path.expanduser("~"), ".kube", "config")]
    context, namespace = "", "default"
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(data, dict):
            continue
        current = data.get("current-context")
        if not isinstance(current, str) or not current:
            continue
        context = current
        for entry in data.get("contexts") or []:
            if isinstance(entry, dict) and entry.get("name") == current:
                ns = (entry.get("context") or {}).get("namespace")
                if isinstance(ns, str) and ns:
                    namespace = ns
        break
    return context, namespace


def default_connection_name(environ: dict[str, str] | None = None) -> str:
    """
    Telepresence's default for a containerized daemon: ``<context>-<namespace>-cn`` from the
    kubeconfig; ``in-cluster-<namespace>-cn`` when there is no current context.
    """
    context, namespace = kube_context(environ)
    name = f"{context}-{namespace}" if context else f"in-cluster-{namespace}"
    return safe_name(name + "-cn")


def container_name(connection: str) -> str:
    return CONTAINER_PREFIX + connection


# -- connections


@attrs.frozen
class ConnectRequest:
    name: str
    vif: str | None = None
    vif_network: str | None = None
    subnets: tuple[str, ...] = ()
    cluster_dns: str | None = None
    cluster_domains: tuple[str, ...] = ()


@attrs.define
class Connection:
    """A running (or dead) connection, as found through Docker."""

    name: str
    container: dict[str, Any] | None
    network: dict[str, Any] | None

    @property
    def running(self) -> bool:
        return bool(self.container and self.container["State"].get("Running"))

    @property
    def container_id(self) -> str | None:
        return str(self.container["Id"]) if self.container else None

    def label(self, key: str) -> str | None:
        labels = (self.container or {}).get("Config", {}).get("Labels") or {}
        value = labels.get(key)
        return str(value) if value is not None else None

    def bridge_ip(self) -> str | None:
        """The daemon's address on Docker's default bridge (the plug-ins' ``host``)."""
        return _address_on(self.container, "bridge")

    def dns_ip(self) -> str | None:
        """The daemon's address on its teleroute network (the workloads' ``--dns``)."""
        return _address_on(self.container, self.name)

    def control_address(self, daemon_port: int) -> tuple[str, int] | None:
        ports = ((self.container or {}).get("NetworkSettings") or {}).get("Ports") or {}
        for binding in ports.get(f"{daemon_port}/tcp") or []:
            if binding.get("HostPort"):
                host = binding.get("HostIp") or "127.0.0.1"
                return ("127.0.0.1" if host == "0.0.0.0" else host), int(binding["HostPort"])
        return None


def _address_on(container: dict[str, Any] | None, network: str) -> str | None:
    networks = ((container or {}).get("NetworkSettings") or {}).get("Networks") or {}
    settings = networks.get(network) or {}
    return settings.get("IPAddress") or settings.get("GlobalIPv6Address") or None


def _labels(obj: dict[str, Any] | None) -> dict[str, str]:
    if not obj:
        return {}
    labels = obj.get("Labels")
    if labels is None:
        labels = (obj.get("Config") or {}).get("Labels")
    return dict(labels or {})


@attrs.define
class Connector:
    """I make, find, describe and end connections through an ``IDocker``."""

    docker: IDocker
    config: Config
    say: Callable[[str], None] = print
    control_factory: Callable[[str, int], IControl] = HTTPControl
    exec_control_factory: Callable[[IDocker, str, int], IControl] = ExecControl
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    ready_timeout: float = 30.0

    # -- lookups

    def check_docker(self) -> None:
        try:
            version = self.docker.api_version()
        except DockerUnavailable as e:
            raise CLIError(f"{e}; is dockerd running?") from None
        if not api_version_ok(version):
            raise CLIError(
                f"Docker API {version} is too old: telenet needs Docker 20.10 (API 1.41) or newer"
            )

    def connection_names(self) -> list[str]:
        names = {
            _labels(c).get(LABEL_CONNECTION, "")
            for c in self.docker.containers(f"{LABEL_ROLE}=daemon")
        }
        for net in self.docker.networks():
            labels = _labels(net)
            if labels.get(LABEL_CONNECTION) and LABEL_DAEMON in labels:
                names.add(labels[LABEL_CONNECTION])
        return sorted(n for n in names if n)

    def find(self, name: str | None) -> Connection:
        """The connection named ``name``, or the only one; NotConnected when there is none."""
        if name is None:
            names = self.connection_names()
            if not names:
                raise NotConnected("not connected: run telenet connect --docker first")
            if len(names) > 1:
                raise CLIError(f"several connections ({', '.join(names)}): pick one with --name")
            name = names[0]
        container = self.docker.container(container_name(name))
        if container is not None and _labels(container).get(LABEL_CONNECTION) != name:
            container = None
        network = self.docker.network(name)
        if network is not None and LABEL_DAEMON not in _labels(network):
            network = None
        if container is None and network is None:
            raise NotConnected(
                f"not connected to {name}: run telenet connect --docker --name {name}"
            )
        return Connection(name, container, network)

    def control(self, conn: Connection) -> IControl:
        control = self._control_of(conn) if conn.running else None
        if control is None:
            raise CLIError(
                f"the daemon of {conn.name} is not running: run telenet connect "
                f"--docker --name {conn.name} again"
            )
        return control

    def _control_of(self, conn: Connection) -> IControl | None:
        """
        The daemon's control API: at its published port on this machine's loopback, or,
        for an engine elsewhere, through docker exec; None while the port is not published.
        """
        if not self.docker.engine_is_here():
            if conn.container_id is None:
                return None
            return self.exec_control_factory(
                self.docker, conn.container_id, self.config.daemon_port
            )
        address = conn.control_address(self.config.daemon_port)
        return self.control_factory(*address) if address is not None else None

    # -- plug-ins

    def ensure_plugins(self, kinds: tuple[str, ...] = ("teleroute", "telemount")) -> dict[str, str]:
        """The driver name of each plug-in kind, installed or made when missing."""
        drivers: dict[str, str] = {}
        to_create: list[tuple[str, str]] = []
        for kind in kinds:
            cfg = self._plugin_config(kind)
            info = self.docker.plugin(cfg.name)
            if info is not None:
                if not info.get("Enabled"):
                    self.say(f"Enabling plug-in {cfg.name}")
                    self._enable(cfg.name)
                drivers[kind] = cfg.name
            elif self.docker.socket_answers(cfg.legacy_socket):
                drivers[kind] = cfg.repository
            elif cfg.registry:
                self.say(f"Installing plug-in {cfg.name}")
                try:
                    self.docker.install_plugin(cfg.name)
                except DockerError as e:
                    raise CLIError(f"plug-in install of {cfg.name} refused: {e}") from None
                drivers[kind] = cfg.name
            else:
                to_create.append((cfg.name, kind))
                drivers[kind] = cfg.name
        if to_create:
            image = self.config.daemon_image
            self._require_image(image)
            names = ", ".join(name for name, _ in to_create)
            self.say(
                f"Creating plug-in{'s' if len(to_create) > 1 else ''} {names} from image {image}"
            )
            try:
                self.docker.create_plugins(image, to_create)
            except DockerError as e:
                raise CLIError(f"could not create plug-in {names}: {e}") from None
            for name, _ in to_create:
                self._enable(name)
        return drivers

    def _plugin_config(self, kind: str) -> PluginConfig:
        return self.config.teleroute if kind == "teleroute" else self.config.telemount

    def _enable(self, name: str) -> None:
        try:
            self.docker.enable_plugin(name)
        except DockerError as e:
            raise CLIError(f"could not enable plug-in {name}: {e}") from None

    def _require_image(self, image: str) -> None:
        if not self.docker.image_exists(image):
            raise CLIError(
                f"image {image} not found: build it with scripts/build-image (or set "
                "docker.daemonImage in the config)"
            )

    def plugin_status(self, driver: str | None, kind: str) -> dict[str, Any]:
        if not driver:
            return {"kind": kind, "name": None, "mode": None, "enabled": False}
        info = self.docker.plugin(driver)
        if info is not None:
            return {
                "kind": kind,
                "name": driver,
                "mode": "managed",
                "enabled": bool(info.get("Enabled")),
            }
        answers = self.docker.socket_answers(f"/run/docker/plugins/{driver}.sock")
        return {"kind": kind, "name": driver, "mode": "legacy", "enabled": answers}

    # -- connect

    def connect(self, req: ConnectRequest) -> Connection:
        self.check_docker()
        name = req.name
        if safe_name(name) != name:
            raise CLIError(
                f"--name {name!r}: use letters, digits and _.- only (e.g. {safe_name(name)})"
            )
        if req.vif and req.vif_network:
            raise CLIError("give --vif or --vif-network, not both")
        self._check_network_name(name)
        existing = self.docker.container(container_name(name))
        if existing is not None:
            if _labels(existing).get(LABEL_CONNECTION) != name:
                raise CLIError(
                    f"a container named {container_name(name)} exists and is not "
                    "telenet's: remove or rename it"
                )
            conn = Connection(name, existing, self.docker.network(name))
            if conn.running:
                return self._reuse(conn)
            code = existing["State"].get("ExitCode")
            self.say(
                f"Removing the daemon container {container_name(name)}, which stopped "
                f"(exit code {code})"
            )
            self.docker.remove_container(existing["Id"])
        if req.vif_network is not None and self.docker.network(req.vif_network) is None:
            raise CLIError(f"--vif-network {req.vif_network}: no such Docker network")
        drivers = self.ensure_plugins()
        self._require_image(self.config.daemon_image)
        started = self.clock()
        container_id = self._start_daemon(req, drivers)
        try:
            conn = Connection(name, self.docker.container(container_id), None)
            status = self._wait_ready(conn)
            network = self._ensure_network(conn, drivers["teleroute"], req, status)
            conn = Connection(name, self.docker.container(container_id), network)
        except BaseException:
            self.docker.remove_container(container_id)
            raise
        self.network_gc()
        subnet = ", ".join(subnets_of(network)) or "?"
        self.say(
            f"Connected to {name}: daemon {container_name(name)}, network {name} ({subnet}), "
            f"DNS {conn.dns_ip()} ({self.clock() - started:.1f} s)"
        )
        return conn

    def _check_network_name(self, name: str) -> None:
        network = self.docker.network(name)
        if network is not None and LABEL_DAEMON not in _labels(network):
            raise CLIError(
                f"a Docker network named {name} exists and is not a teleroute "
                "network of telenet: choose another --name"
            )

    def _reuse(self, conn: Connection) -> Connection:
        self.say(f"Already connected to {conn.name} (daemon {container_name(conn.name)})")
        status = self._wait_ready(conn)
        driver = conn.label(LABEL_NETWORK_PLUGIN)
        network = conn.network
        daemon_id = conn.container_id
        if (
            network is None
            or _labels(network).get(LABEL_DAEMON) != daemon_id
            or daemon_id not in (network.get("Containers") or {})
        ):
            if not driver:
                raise CLIError(
                    f"the daemon container {container_name(conn.name)} has no "
                    f"{LABEL_NETWORK_PLUGIN} label: telenet quit --name "
                    f"{conn.name}, then connect again"
                )
            self.ensure_plugins()
            req = ConnectRequest(conn.name)
            network = self._ensure_network(conn, driver, req, status)
        return Connection(conn.name, self.docker.container(conn.container_id or ""), network)

    def _daemon_command(self, req: ConnectRequest) -> list[str]:
        command = [
            "twistd",
            "--nodaemon",
            "--pidfile=",
            "telepresence-daemon",
            "--control",
            f"tcp:{self.config.daemon_port}",
            "--teleroute-port",
            str(self.config.teleroute_port),
            "--name",
            safe_name("docker-" + req.name),
        ]
        if req.vif_network:
            # Found by its address on that network: Docker's interface names follow neither
            # the order of connection nor any order the CLI can know.
            network = self.docker.network(req.vif_network) or {}
            vif_subnets = subnets_of(network)
            if not vif_subnets:
                raise CLIError(f"--vif-network {req.vif_network} has no subnet to find it by")
            for subnet in vif_subnets:
                command += ["--vif-subnet", subnet]
        elif req.vif:
            command += ["--vif", req.vif]
        for subnet in req.subnets:
            command += ["--subnet", subnet]
        if req.cluster_dns:
            command += ["--cluster-dns", req.cluster_dns]
        for domain in req.cluster_domains:
            command += ["--cluster-domain", domain]
        return command

    def _use_ipv6(self) -> bool:
        bridge = self.docker.network("bridge") or {}
        return self.config.enable_ipv6 and bool(bridge.get("EnableIPv6"))

    def _start_daemon(self, req: ConnectRequest, drivers: dict[str, str]) -> str:
        sysctls = {"net.ipv4.ip_forward": "1"}
        if self._use_ipv6():
            sysctls.update(
                {"net.ipv6.conf.all.disable_ipv6": "0", "net.ipv6.conf.all.forwarding": "1"}
            )
        spec = ContainerSpec(
            image=self.config.daemon_image,
            command=self._daemon_command(req),
            name=container_name(req.name),
            labels={
                LABEL_CONNECTION: req.name,
                LABEL_ROLE: "daemon",
                LABEL_NETWORK_PLUGIN: drivers["teleroute"],
                LABEL_VOLUME_PLUGIN: drivers["telemount"],
            },
            pid_host=True,
            cap_add=["NET_ADMIN"],
            sysctls=sysctls,
            ports={f"{self.config.daemon_port}/tcp": ("127.0.0.1", None)},
        )
        self.say(f"Starting the daemon container {spec.name} ({spec.image})")
        try:
            container_id = self.docker.create_container(spec)
        except DockerError as e:
            raise CLIError(f"could not create the daemon container {spec.name}: {e}") from None
        try:
            if req.vif_network:
                self.docker.connect(req.vif_network, container_id, None)
            self.docker.start_container(container_id)
        except DockerError as e:
            self.docker.remove_container(container_id)
            raise CLIError(f"could not start the daemon container {spec.name}: {e}") from None
        except BaseException:
            self.docker.remove_container(container_id)
            raise
        return container_id

    def _wait_ready(self, conn: Connection) -> dict[str, Any]:
        """The daemon's /status once its control API answers."""
        deadline = self.clock() + self.ready_timeout
        last = "no answer yet"
        container_id = conn.container_id or ""
        while True:
            current = self.docker.container(container_id)
            if current is None or not current["State"].get("Running"):
                logs = self.docker.container_logs(container_id, 20).strip().splitlines()
                why = logs[-1] if logs else "no output"
                code = (current or {}).get("State", {}).get("ExitCode")
                raise CLIError(
                    f"the daemon container {container_name(conn.name)} exited (code {code}): {why}"
                )
            conn = Connection(conn.name, current, conn.network)
            control = self._control_of(conn)
            if control is not None:
                try:
                    return control.status()
                except ControlError as e:
                    last = str(e)
            if self.clock() >= deadline:
                raise CLIError(
                    f"the daemon {container_name(conn.name)} is not answering on its "
                    f"control port after {self.ready_timeout:.0f} s ({last}); see "
                    f"docker logs {container_name(conn.name)}"
                )
            self.sleep(0.1)

    def _blocked_subnets(self, req: ConnectRequest, status: dict[str, Any]) -> list[str]:
        blocked: list[str] = []
        for net in self.docker.networks():
            blocked += subnets_of(net)
        blocked += list(req.subnets)
        blocked += [r for r in status.get("routes") or [] if isinstance(r, str)]
        return blocked

    def _ensure_network(
        self, conn: Connection, driver: str, req: ConnectRequest, status: dict[str, Any]
    ) -> dict[str, Any]:
        name = conn.name
        daemon_id = conn.container_id or ""
        host = conn.bridge_ip()
        if host is None:
            raise CLIError(
                f"the daemon container {container_name(name)} has no address on "
                "Docker's default bridge"
            )
        ipv6 = self._use_ipv6()
        if not self.config.enable_ipv4 and not ipv6:
            raise CLIError(
                "unable to create teleroute network because both the IPv4 and IPv6 "
                "families are disabled"
            )
        if ipv6 and not self.config.enable_ipv4 and ipaddress.ip_address(host).version == 4:
            host = f"::ffff:{host}"
        reconnect: list[str] = []
        try:
            existing = self.docker.network(name)
            if existing is not None:
                # Removed before the subnet is chosen, so its subnet can be had again.
                reconnect = self._remove_stale_network(existing, daemon_id)
        except DockerError as e:
            raise CLIError(f"Unable to create network {name}: {e}") from None
        subnet = choose_subnet(self._blocked_subnets(req, status))
        if subnet is None:
            self.say("Warning: no free subnet among the candidates; Docker's IPAM chooses one")
        options = {"host": host, "port": str(self.config.teleroute_port)}
        labels = {LABEL_DAEMON: daemon_id, LABEL_CONNECTION: name}
        subnet_text = str(subnet) if subnet is not None else None
        deadline = self.clock() + self.ready_timeout
        while True:
            try:
                network_id, warning = self.docker.create_network(
                    name, driver, options, labels, subnet_text, ipv6
                )
                break
            except DockerError as e:
                # The control API answers before the teleroute gRPC port may (a loaded host):
                # the plug-in then refuses the network, and a later try succeeds.
                if "teleroute service" not in str(e) or self.clock() >= deadline:
                    raise CLIError(f"Unable to create network {name}: {e}") from None
            self.sleep(0.2)
        if warning:
            self.say(f"Warning from Docker: {warning}")
        try:
            # The daemon joins first: the plug-in learns the daemon's addresses from it.
            self.docker.connect(network_id, daemon_id, {"daemon": "true"})
        except DockerError as e:
            self._remove_network_quietly(network_id)
            raise CLIError(f"Unable to create network {name}: connecting the daemon: {e}") from None
        for container in reconnect:
            try:
                self.docker.connect(network_id, container, None)
            except DockerError as e:
                self.say(f"Warning: could not reconnect container {container[:12]} to {name}: {e}")
        network = self.docker.network(network_id)
        if network is None:
            raise CLIError(f"Unable to create network {name}: it vanished")
        return network

    def _remove_stale_network(self, network: dict[str, Any], daemon_id: str) -> list[str]:
        """Remove our network whose daemon is gone; the other containers it had."""
        labels = _labels(network)
        if LABEL_DAEMON not in labels:
            raise DockerError("a network of that name exists and is not telenet's")
        owner = labels[LABEL_DAEMON]
        if owner != daemon_id:
            current = self.docker.container(owner)
            if current is not None and current["State"].get("Running"):
                who = current.get("Name", owner[:12]).lstrip("/")
                raise DockerError(f"it belongs to the running daemon {who}; quit that first")
        self.say(f"Replacing the network {network['Name']} of a daemon that is gone")
        attached = list(network.get("Containers") or {})
        for container in attached:
            try:
                self.docker.disconnect(network["Id"], container)
            except DockerError:
                pass
        self.docker.remove_network(network["Id"])
        return [c for c in attached if c not in (owner, daemon_id)]

    def _remove_network_quietly(self, network: str) -> None:
        try:
            self.docker.remove_network(network)
        except DockerError:
            pass

    # -- quit and garbage collection

    def network_gc(self) -> list[str]:
        """Remove every labelled teleroute network whose daemon is gone; their names."""
        removed = []
        for net in self.docker.networks():
            owner = _labels(net).get(LABEL_DAEMON)
            if not owner:
                continue
            daemon = self.docker.container(owner)
            if daemon is not None and daemon["State"].get("Running"):
                continue
            try:
                self.docker.remove_network(net["Id"])
            except DockerError as e:
                if "has active endpoints" not in str(e):
                    self.say(f"Warning: could not remove network {net['Name']}: {e}")
                continue
            removed.append(str(net["Name"]))
        return removed

    def quit(self, name: str | None) -> None:
        self.check_docker()
        try:
            conn = self.find(name)
        except NotConnected as e:
            self.say(str(e).split(":")[0].capitalize())
            self.network_gc()
            return
        for volume in self.volumes(conn):
            self._remove_volume(volume)
        if conn.container is not None:
            self.say(f"Stopping the daemon container {container_name(conn.name)}")
            self.docker.stop_container(conn.container["Id"], 10)
            self.docker.remove_container(conn.container["Id"])
        if conn.network is not None:
            for container in conn.network.get("Containers") or {}:
                try:
                    self.docker.disconnect(conn.network["Id"], container)
                except DockerError:
                    pass
            try:
                self.docker.remove_network(conn.network["Id"])
            except DockerError as e:
                raise CLIError(f"could not remove network {conn.name}: {e}") from None
        removed = self.network_gc()
        extra = f"; removed stale networks {', '.join(removed)}" if removed else ""
        self.say(f"Disconnected from {conn.name}{extra}")

    def volumes(self, conn: Connection) -> list[str]:
        """The names of the connection's engagement volumes."""
        driver = conn.label(LABEL_VOLUME_PLUGIN)
        if not driver:
            return []
        try:
            found = self.docker.volumes(driver, f"{LABEL_CONNECTION}={conn.name}")
        except DockerError:
            # A plug-in that is gone has no volumes to remove either.
            return []
        return sorted(v["Name"] for v in found)

    def _remove_volume(self, name: str, timeout: float = 5.0) -> None:
        deadline = self.clock() + timeout
        while True:
            try:
                self.docker.remove_volume(name)
                return
            except DockerError as e:
                if "in use" not in str(e) or self.clock() >= deadline:
                    self.say(f"Warning: could not remove volume {name}: {e}")
                    return
            self.sleep(0.2)

    # -- status

    def select(self, use: str) -> str:
        """
        The one connection whose name ``use`` (a regular expression) matches anywhere, like
        Telepresence's ``--use``: NotConnected when none does, CLIError when several do.
        """
        try:
            pattern = re.compile(use)
        except re.error as e:
            raise CLIError(f"--use {use!r} is not a regular expression: {e}") from None
        names = self.connection_names()
        matches = [n for n in names if pattern.search(n)]
        if not matches:
            known = f"connections: {', '.join(names)}" if names else "there is no connection"
            raise NotConnected(f"no connection matches --use {use!r}: {known}")
        if len(matches) > 1:
            raise CLIError(
                f"--use {use!r} matches several connections ({', '.join(matches)}): "
                "give an expression that matches one"
            )
        return matches[0]

    def status(self, name: str | None) -> dict[str, Any]:
        """The status of the connection named ``name``, or of the only one."""
        self.check_docker()
        return self._describe(self.find(name))

    def statuses(self, name: str | None = None, use: str | None = None) -> list[dict[str, Any]]:
        """
        The status of the connection named ``name``, of the one ``use`` matches
        (L{select}), or, with neither, of every connection; NotConnected when there is none.
        """
        self.check_docker()
        if name is not None and use is not None:
            raise CLIError("give --name or --use, not both")
        if use is not None:
            name = self.select(use)
        if name is not None:
            return [self._describe(self.find(name))]
        found = []
        for each in self.connection_names():
            try:
                found.append(self._describe(self.find(each)))
            except NotConnected:
                continue  # gone since it was listed
        if not found:
            raise NotConnected("not connected: run telenet connect --docker first")
        return found

    def _describe(self, conn: Connection) -> dict[str, Any]:
        # The daemon object has telenet's keys and those of Telepresence's containerized
        # daemon (`telepresence status --output json`: in_docker, name, status,
        # container_network, daemon_port, dns.local_address(es), subnets).
        address = conn.control_address(self.config.daemon_port) if conn.running else None
        daemon: dict[str, Any] = {
            "in_docker": True,
            "name": conn.name,
            "running": conn.running,
            "status": "Not connected",
            "container": conn.container_id,
            "container_name": container_name(conn.name),
            "container_network": conn.network["Name"] if conn.network is not None else None,
            "daemon_port": address[1] if address else None,
            "control": (
                "docker exec"
                if conn.running and not self.docker.engine_is_here()
                else f"{address[0]}:{address[1]}"
                if address
                else None
            ),
            "version": None,
            "dns": {"local_address": None, "local_addresses": []},
            "subnets": [],
            "routes": [],
            "vif": None,
        }
        bridges: list[Any] = []
        if conn.running:
            try:
                status = self.control(conn).status()
            except (ControlError, CLIError) as e:
                daemon["error"] = str(e)
            else:
                routes = [str(r) for r in status.get("routes") or []]
                daemon.update(
                    version=status.get("version"),
                    dns=_dns_status(status.get("dns")),
                    subnets=routes,
                    routes=routes,
                    vif=status.get("vif"),
                )
                bridges = list(status.get("bridges") or [])
                if conn.network is not None and conn.dns_ip() is not None:
                    daemon["status"] = "Connected"
                else:
                    daemon["error"] = (
                        f"the daemon is not on network {conn.name}: run telenet connect "
                        f"--docker --name {conn.name} again"
                    )
        network = None
        if conn.network is not None:
            network = {
                "name": conn.network["Name"],
                "id": conn.network["Id"],
                "subnet": next(iter(subnets_of(conn.network)), None),
                "driver": conn.network.get("Driver"),
            }
        volumes = self.volumes(conn)
        return {
            "connection": conn.name,
            "daemon": daemon,
            "network": network,
            "plugins": [
                self.plugin_status(conn.label(LABEL_NETWORK_PLUGIN), "network"),
                self.plugin_status(conn.label(LABEL_VOLUME_PLUGIN), "volume"),
            ],
            "bridges": bridges,
            "volumes": volumes,
        }


def _dns_status(dns: Any) -> dict[str, Any]:
    """The daemon's ``dns`` with both ``local_address`` and the ``local_addresses`` list."""
    dns = dict(dns) if isinstance(dns, dict) else {}
    addresses = dns.pop("local_addresses", None)
    first = dns.pop("local_address", None)
    if not isinstance(addresses, list):
        addresses = [first] if first else []
    addresses = [str(a) for a in addresses if a]
    return {
        "local_address": first or (addresses[0] if addresses else None),
        "local_addresses": addresses,
        **dns,
    }


def format_status(status: dict[str, Any]) -> str:
    """The human-readable form of ``telenet status`` for one connection."""
    daemon = status["daemon"]
    lines = [f"Connection {status['connection']}: {daemon.get('status') or 'Not connected'}"]
    state = "running" if daemon.get("running") else "not running"
    cid = (daemon.get("container") or "")[:12] or "none"
    container = daemon.get("container_name") or daemon["name"]
    lines.append(
        f"  daemon:  {container} ({cid}), {state}"
        + (f", version {daemon['version']}" if daemon.get("version") else "")
    )
    if daemon.get("error"):
        lines.append(f"  error:   {daemon['error']}")
    dns = (daemon.get("dns") or {}).get("local_addresses") or []
    if dns:
        lines.append(f"  DNS:     {', '.join(dns)}")
    if daemon.get("routes"):
        lines.append(f"  routes:  {', '.join(daemon['routes'])}")
    network = status.get("network")
    lines.append(
        f"  network: {network['name']} ({network['subnet']}, driver {network['driver']})"
        if network
        else "  network: none"
    )
    for plugin in status["plugins"]:
        enabled = "enabled" if plugin["enabled"] else "disabled"
        lines.append(f"  {plugin['kind']} plug-in: {plugin['name']} ({plugin['mode']}, {enabled})")
    bridges = status.get("bridges") or []
    lines.append(
        "  bridges: " + (", ".join(f"{b['port']} -> {b['agent']}" for b in bridges) or "none")
    )
    lines.append("  volumes: " + (", ".join(status.get("volumes") or []) or "none"))
    return "\n".join(lines)


def format_statuses(statuses: list[dict[str, Any]]) -> str:
    """Several connections' statuses, one block each."""
    return "\n\n".join(format_status(s) for s in statuses)


_CIDR = re.compile(r"^[0-9a-fA-F:.]+/\d+$")


def check_subnet(text: str) -> str:
    """A ``--subnet`` value, normalized; CLIError when it is not a CIDR."""
    try:
        if not _CIDR.match(text):
            raise ValueError(text)
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise CLIError(f"--subnet {text!r} is not a CIDR like 10.96.0.0/12") from None
    if network.prefixlen == 0:
        raise CLIError("--subnet must not be a default route")
    return str(network)
