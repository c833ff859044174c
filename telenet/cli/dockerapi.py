# -*- test-case-name: tests.test_cli_connect -*-
"""
What the CLI asks of Docker, as one interface (``telenet.cli.interfaces.IDocker``), with the
docker SDK behind it.

Results are the Docker API's own JSON shapes (``docker inspect``), so the memory fake
(``telenet.testing.MemoryDocker``) and the real thing answer alike. Errors are ``DockerError``
(``NotFound``, ``Conflict``) carrying Docker's explanation.

The plug-ins are made without a registry the way ``scripts/plugins`` does: the rootfs is a
``docker export`` of a container of the telenet image, and each plug-in's ``config.json`` is
the one in ``plugins/<kind>/`` (kept here too; a unit test checks that they agree).
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from zope.interface import implementer

from telenet.cli.dockercontext import DockerContextError, DockerEndpoint, resolve
from telenet.cli.interfaces import ContainerSpec, IDocker

MIN_API_VERSION = (1, 41)
"""Docker 20.10: what telenet is tested with."""

_PATH = "/opt/telenet/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PLUGIN_CONFIGS: dict[str, dict[str, Any]] = {
    "teleroute": {
        "description": "telenet teleroute: Docker network driver routing containers through a "
        "Telepresence daemon",
        "documentation": "https://github.com/telepresenceio/telepresence/blob/release/v2/docs/"
        "reference/plugins.md",
        "entrypoint": [
            "/opt/telenet/bin/twistd",
            "--nodaemon",
            "--pidfile=",
            "teleroute",
            "--listen",
            "unix:/run/docker/plugins/teleroute.sock:mode=660:lockfile=1:backlog=128",
            "--state-dir",
            "/var/lib/telenet/teleroute",
        ],
        "workdir": "/",
        "env": [
            {
                "name": "PATH",
                "description": "search path of the plug-in's processes",
                "settable": [],
                "value": _PATH,
            },
        ],
        "interface": {"socket": "teleroute.sock", "types": ["docker.networkdriver/1.0"]},
        "network": {"type": "host"},
        "pidhost": True,
        # SYS_ADMIN and SYS_PTRACE: entering workloads' namespaces, for live routes and to give
        # them their interface back after a daemon restart (docs/teleroute.md).
        "linux": {"capabilities": ["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]},
    },
    "telemount": {
        "description": "telenet telemount: Docker volume driver mounting SFTP exports of "
        "Telepresence agents",
        "documentation": "https://github.com/telepresenceio/docker-volume-telemount",
        "entrypoint": [
            "/opt/telenet/bin/twistd",
            "--nodaemon",
            "--pidfile=",
            "telemount",
            "--listen",
            "unix:/run/docker/plugins/telemount.sock:mode=660:lockfile=1:backlog=128",
            "--mount-root",
            "/mnt/volumes",
            "--state-dir",
            "/var/lib/telenet/telemount",
        ],
        "workdir": "/",
        "env": [
            {
                "name": "PATH",
                "description": "search path of the plug-in's processes",
                "settable": [],
                "value": _PATH,
            },
            {
                "name": "DISCONNECTED_LINGER_TIME",
                "description": "how long a disconnected, unused mount stays before it is "
                "unmounted (Go duration)",
                "settable": ["value"],
                "value": "5s",
            },
            {
                "name": "HOST_PING_TIMEOUT",
                "description": "how long to wait for an SFTP server to accept a connection "
                "(Go duration)",
                "settable": ["value"],
                "value": "1s",
            },
        ],
        "interface": {"socket": "telemount.sock", "types": ["docker.volumedriver/1.0"]},
        "network": {"type": "host"},
        "propagatedmount": "/mnt/volumes",
        "linux": {"capabilities": ["CAP_SYS_ADMIN"], "devices": [{"path": "/dev/fuse"}]},
    },
}


class DockerError(Exception):
    """Docker refused or failed; ``str()`` is Docker's explanation."""


class NotFound(DockerError):
    pass


class Conflict(DockerError):
    """The name is taken (HTTP 409)."""


class DockerUnavailable(DockerError):
    """
    No Docker engine answers; ``str()`` is one line naming the context and endpoint tried.
    ``endpoint`` (a ``DockerEndpoint``) and ``reason`` are set when known.
    """

    def __init__(
        self, message: str, *, endpoint: DockerEndpoint | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.reason = reason


#: The first engine API that makes a network without IPv4 (``EnableIPv4: false``; Docker 28).
NO_IPV4_API_VERSION = (1, 47)


def _api_at_least(version: str, wanted: tuple[int, ...]) -> bool:
    try:
        return tuple(int(p) for p in version.split(".")) >= wanted
    except ValueError:
        return False


def api_version_ok(version: str) -> bool:
    try:
        parts = tuple(int(p) for p in version.split("."))
    except ValueError:
        return False
    return parts >= MIN_API_VERSION


def _socket_answers(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            s.connect(path)
            return True
    except OSError:
        return False


class _ChunkReader(io.RawIOBase):
    """A file object over an iterator of byte chunks (docker-py's export stream)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buffer))
        b[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def _under_rootfs(name: str) -> str:
    """``rootfs/<name>`` for a member of an exported rootfs (``./x``, ``/x`` or ``x``)."""
    while name.startswith("./"):
        name = name[2:]
    name = name.lstrip("/")
    return "rootfs" if name in ("", ".") else f"rootfs/{name}"


def plugin_contexts(
    export: io.RawIOBase | io.BufferedIOBase, plugins: list[tuple[str, str]], directory: str
) -> dict[str, str]:
    """
    One ``docker plugin create`` context per plug-in ``(name, kind)``, written in one pass over
    an exported rootfs: ``config.json`` of the kind, ``rootfs/…`` and a marker
    ``rootfs/etc/telenet-plugin`` holding the name. Docker stores a rootfs by content and
    refuses a second plug-in with the very same one, so the marker must differ between any two
    plug-ins made from one image, whatever their kind.
    """
    import tarfile  # plug-in creation only

    paths = {name: os.path.join(directory, f"{i}.tar") for i, (name, _) in enumerate(plugins)}
    kinds = dict(plugins)
    outs = {name: tarfile.open(path, "w") for name, path in paths.items()}
    try:
        with tarfile.open(fileobj=export, mode="r|") as source:
            for member in source:
                member.name = _under_rootfs(member.name)
                if member.islnk():
                    member.linkname = _under_rootfs(member.linkname)
                data = source.extractfile(member) if member.isreg() else None
                payload = data.read() if data is not None else None
                for out in outs.values():
                    out.addfile(member, io.BytesIO(payload) if payload is not None else None)
        for plugin, out in outs.items():
            for name, payload in (
                ("config.json", json.dumps(PLUGIN_CONFIGS[kinds[plugin]], indent=2).encode()),
                ("rootfs/etc/telenet-plugin", f"{plugin}\n".encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                info.mode = 0o644
                out.addfile(info, io.BytesIO(payload))
    finally:
        for out in outs.values():
            out.close()
    return paths


@implementer(IDocker)
class SDKDocker:
    """
    ``IDocker`` with docker-py, on the engine the ``docker`` CLI would use (``DOCKER_HOST``,
    ``DOCKER_CONTEXT``, the current context of ``~/.docker/config.json``, the default socket:
    see ``telenet.cli.dockercontext``), or on ``endpoint`` if given.

    ``client_factory`` makes the docker-py client (``docker.DockerClient`` unless given) from
    keyword arguments: ``base_url``, ``tls``, ``version``, ``timeout``, ``use_ssh_client``.
    """

    def __init__(
        self,
        client: Any = None,
        endpoint: DockerEndpoint | None = None,
        client_factory: Callable[..., Any] | None = None,
    ) -> None:
        self._client = client
        self._endpoint = endpoint
        self._client_factory = client_factory
        self._here: bool | None = None
        self._quick: Any = None

    @property
    def endpoint(self) -> DockerEndpoint:
        """The engine addressed (resolved at first use); DockerContextError if it cannot be."""
        if self._endpoint is None:
            self._endpoint = resolve()
        return self._endpoint

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                endpoint = self.endpoint
            except DockerContextError as e:
                raise DockerUnavailable(str(e), reason=str(e)) from None
            self._client = self._connect(endpoint)
        return self._client

    def _connect(self, endpoint: DockerEndpoint) -> Any:
        import docker
        import docker.errors
        import docker.tls

        tls: Any = False
        if endpoint.tls is not None:
            material = endpoint.tls
            cert = None
            if material.client_cert and material.client_key:
                cert = (material.client_cert, material.client_key)
            try:
                tls = docker.tls.TLSConfig(
                    client_cert=cert, ca_cert=material.ca_cert, verify=material.verify
                )
            except docker.errors.TLSParameterError as e:
                raise DockerUnavailable(
                    f"Docker at {endpoint.describe()}: unusable TLS material: {_explain(e)}",
                    endpoint=endpoint,
                    reason=_explain(e),
                ) from None
        factory = self._client_factory or docker.DockerClient
        try:
            return factory(
                base_url=endpoint.host,
                tls=tls,
                version="auto",
                timeout=120,
                use_ssh_client=endpoint.host.startswith("ssh://"),
            )
        except docker.errors.DockerException as e:
            raise self._unreachable(e) from None

    def _unreachable(self, e: Exception) -> DockerUnavailable:
        """DockerUnavailable naming the context and endpoint, and why it did not answer."""
        try:
            endpoint: DockerEndpoint | None = self.endpoint
        except DockerContextError:
            endpoint = None
        reason = _unreachable_reason(e)
        where = endpoint.describe() if endpoint is not None else "the Docker endpoint"
        return DockerUnavailable(
            f"Docker at {where} does not answer: {reason}", endpoint=endpoint, reason=reason
        )

    @property
    def api(self) -> Any:
        """docker-py's APIClient; on a local socket, its quick calls made without docker-py."""
        if self._client is None and self._client_factory is None:
            if self._quick is None:
                try:
                    endpoint = self.endpoint
                except DockerContextError as e:
                    raise DockerUnavailable(str(e), reason=str(e)) from None
                if endpoint.host.startswith("unix://") and endpoint.tls is None:
                    from telenet.cli.dockerhttp import QuickAPI

                    self._quick = QuickAPI(
                        endpoint.host[len("unix://") :], lambda: self.client.api, timeout=120
                    )
            if self._quick is not None:
                return self._quick
        return self.client.api

    def _call(self, method: Any, *args: Any, **kw: Any) -> Any:
        from telenet.cli import dockerhttp

        try:
            return method(*args, **kw)
        except dockerhttp.StatusError as e:
            raise _status_error(e.status_code, _explain(e)) from None
        except dockerhttp.Unreachable as e:
            raise self._unreachable(e) from None
        except Exception as e:
            ours = self._sdk_error(e)
            if ours is e:
                raise
            raise ours from None

    def _sdk_error(self, e: Exception) -> Exception:
        """docker-py's error as ours (imported only once docker-py has raised)."""
        import docker.errors
        import requests

        if isinstance(e, docker.errors.NotFound):
            return NotFound(_explain(e))
        if isinstance(e, docker.errors.APIError):
            return _status_error(e.status_code or 500, _explain(e))
        if isinstance(e, requests.exceptions.ConnectionError):
            return self._unreachable(e)
        if isinstance(e, docker.errors.DockerException):
            return DockerError(_explain(e))
        return e

    def _maybe(self, method: Any, *args: Any, **kw: Any) -> Any:
        try:
            return self._call(method, *args, **kw)
        except NotFound:
            return None

    def api_version(self) -> str:
        from telenet.cli.dockerhttp import QuickAPI

        api = self.api
        if isinstance(api, QuickAPI):
            return self._call(api.ping_api_version)
        return str(self._call(api.version)["ApiVersion"])

    def plugin(self, name: str) -> dict[str, Any] | None:
        return self._maybe(self.api.inspect_plugin, name)

    def enable_plugin(self, name: str) -> None:
        self._call(self.api.enable_plugin, name, timeout=5)

    def install_plugin(self, name: str) -> None:
        privileges = self._call(self.api.plugin_privileges, name)
        for _ in self._call(self.api.pull_plugin, name, privileges, name):
            pass
        self.enable_plugin(name)

    def create_plugins(self, image: str, plugins: list[tuple[str, str]]) -> None:
        # Named after the first plug-in, so that a leftover (the CLI killed meanwhile) says
        # whose it is.
        rootfs_name = "rootfs-" + re.sub(r"[^a-zA-Z0-9_.-]", "_", plugins[0][0])
        self._maybe(self.api.remove_container, rootfs_name, force=True)
        import tempfile

        created = self._call(self.api.create_container, image, ["true"], name=rootfs_name)
        try:
            with tempfile.TemporaryDirectory(prefix="telenet-plugin-") as tmp:
                stream = self._call(self.api.export, created["Id"])
                reader = io.BufferedReader(_ChunkReader(iter(stream)), 1 << 20)
                contexts = plugin_contexts(reader, plugins, tmp)
                for name, _ in plugins:
                    with open(contexts[name], "rb") as context:
                        # docker-py's create_plugin wants an unpacked directory; posting the
                        # context we already have saves writing the rootfs out twice.
                        response = self._call(
                            self.api._post,
                            self.api._url("/plugins/create"),
                            params={"name": name},
                            data=context,
                            headers={"Content-Type": "application/x-tar"},
                        )
                        self._call(self.api._raise_for_status, response)
        finally:
            self._maybe(self.api.remove_container, created["Id"], force=True)

    def socket_answers(self, path: str) -> bool:
        # A legacy plug-in's socket here serves only an engine that runs here too.
        return self.engine_is_here() and _socket_answers(path)

    def exec_in(self, container: str, argv: list[str]) -> tuple[int, bytes, bytes]:
        created = self._call(self.api.exec_create, container, argv, stdout=True, stderr=True)
        out, err = self._call(self.api.exec_start, created["Id"], demux=True)
        code = self._call(self.api.exec_inspect, created["Id"]).get("ExitCode")
        return (code if isinstance(code, int) else 1), out or b"", err or b""

    def engine_is_here(self) -> bool:
        """
        Whether the engine runs on this machine (its plug-in directory is ours): a unix
        socket, and the engine's name is this host's (an engine in a VM behind a unix socket,
        as Docker Desktop's or Colima's, has the VM's).
        """
        if self._here is None:
            try:
                local = self.endpoint.local
            except DockerContextError:
                local = False
            info = self._maybe(self.api.info) if local else None
            self._here = info is not None and info.get("Name") == socket.gethostname()
        return self._here

    def image_exists(self, name: str) -> bool:
        return self._maybe(self.api.inspect_image, name) is not None

    def container(self, name: str) -> dict[str, Any] | None:
        return self._maybe(self.api.inspect_container, name)

    def containers(self, label: str) -> list[dict[str, Any]]:
        found = self._call(self.api.containers, all=True, filters={"label": label})
        inspected = (self.container(c["Id"]) for c in found)
        return [c for c in inspected if c is not None]

    def create_container(self, spec: ContainerSpec) -> str:
        host_config = self.api.create_host_config(
            pid_mode="host" if spec.pid_host else None,
            cap_add=spec.cap_add or None,
            sysctls=spec.sysctls or None,
            port_bindings={k: v for k, v in spec.ports.items()} or None,
            network_mode=spec.network,
            binds=spec.binds or None,
        )
        created = self._call(
            self.api.create_container,
            spec.image,
            spec.command,
            name=spec.name,
            labels=spec.labels,
            # docker-py appends "/tcp" to a string port itself: give (port, protocol).
            ports=[_port_tuple(p) for p in spec.ports] or None,
            environment=spec.environment or None,
            host_config=host_config,
        )
        return str(created["Id"])

    def start_container(self, container: str) -> None:
        self._call(self.api.start, container)

    def stop_container(self, container: str, timeout: float) -> None:
        self._maybe(self.api.stop, container, timeout=int(timeout))

    def remove_container(self, container: str) -> None:
        try:
            self._call(self.api.remove_container, container, force=True, v=True)
        except NotFound:
            pass
        except DockerError as e:
            # Docker answers 409 "removal ... already in progress" for an --rm container.
            if "already in progress" not in str(e):
                raise

    def container_logs(self, container: str, tail: int, since: float | None = None) -> str:
        extra = {"since": int(since)} if since is not None else {}
        logs = self._maybe(self.api.logs, container, tail=tail, **extra)
        return logs.decode("utf-8", "replace") if logs else ""

    def engine_info(self) -> dict[str, Any]:
        return dict(self._call(self.api.version))

    def plugin_list(self) -> list[dict[str, Any]]:
        return list(self._call(self.api.plugins))

    def networks(self) -> list[dict[str, Any]]:
        found = self._call(self.api.networks)
        return list(found)

    def network(self, name: str) -> dict[str, Any] | None:
        found = self._maybe(self.api.inspect_network, name)
        # inspect_network matches ids by prefix too; a user's name must match exactly.
        if found is not None and name not in (found["Name"], found["Id"]):
            return None
        return found

    def create_network(
        self,
        name: str,
        driver: str,
        options: dict[str, str],
        labels: dict[str, str],
        subnet: str | None,
        ipv6: bool,
        subnet6: str | None = None,
        ipv4: bool = True,
    ) -> tuple[str, str]:
        import docker.types

        warning = ""
        if not ipv4:
            version = self.api_version()
            if _api_at_least(version, NO_IPV4_API_VERSION):
                subnet = None
            else:
                ipv4 = True
                warning = (
                    f"Docker API {version} cannot make a network without IPv4 (API "
                    f"{'.'.join(map(str, NO_IPV4_API_VERSION))}, Docker 28, can): {name} has "
                    "IPv4 too"
                )
        pools = [docker.types.IPAMPool(subnet=s) for s in (subnet, subnet6 if ipv6 else None) if s]
        ipam = docker.types.IPAMConfig(pool_configs=pools) if pools else None
        if not ipv4:
            created = self._call(
                self._create_network_without_ipv4, name, driver, options, labels, ipam
            )
        else:
            created = self._call(
                self.api.create_network,
                name,
                driver=driver,
                options=options,
                ipam=ipam,
                internal=True,
                labels=labels,
                enable_ipv6=ipv6,
                scope="local",
                # Docker before API 1.44 makes a second network of the same name without it.
                check_duplicate=True,
            )
        engine_warning = str(created.get("Warning") or "")
        return str(created["Id"]), "; ".join(w for w in (warning, engine_warning) if w)

    def _create_network_without_ipv4(
        self,
        name: str,
        driver: str,
        options: dict[str, str],
        labels: dict[str, str],
        ipam: dict[str, Any] | None,
    ) -> Any:
        """``EnableIPv4: false`` (API 1.47), which docker-py's ``create_network`` cannot send."""
        body = {
            "Name": name,
            "Driver": driver,
            "Options": options,
            "IPAM": ipam,
            "Internal": True,
            "Labels": labels,
            "EnableIPv4": False,
            "EnableIPv6": True,
            "Scope": "local",
        }
        response = self.api._post_json(self.api._url("/networks/create"), data=body)
        return self.api._result(response, json=True)

    def remove_network(self, network: str) -> None:
        self._call(self.api.remove_network, network)

    def connect(self, network: str, container: str, driver_opts: dict[str, str] | None) -> None:
        # Docker 20.10 accepts a container that has not started into a network that does not
        # exist, and fails only at its start; say so now, as for a running one.
        if self.network(network) is None:
            raise NotFound(f"network {network} not found")
        self._call(
            self.api.connect_container_to_network, container, network, driver_opt=driver_opts
        )

    def disconnect(self, network: str, container: str) -> None:
        try:
            self._call(self.api.disconnect_container_from_network, container, network, force=True)
        except NotFound:
            raise
        except DockerError:
            # Docker 20.10 answers a network that does not exist with "not connected" (500).
            if self.network(network) is None:
                raise NotFound(f"network {network} not found") from None
            raise

    def volumes(self, driver: str, label: str | None = None) -> list[dict[str, Any]]:
        filters = {"driver": driver, **({"label": label} if label else {})}
        found = self._call(self.api.volumes, filters=filters)
        return list(found.get("Volumes") or [])

    def create_volume(
        self, name: str, driver: str, options: dict[str, str], labels: dict[str, str]
    ) -> None:
        self._call(self.api.create_volume, name, driver=driver, driver_opts=options, labels=labels)

    def remove_volume(self, name: str) -> None:
        self._call(self.api.remove_volume, name)


def _status_error(status: int, explanation: str) -> DockerError:
    if status == 404:
        return NotFound(explanation)
    if status == 409:
        return Conflict(explanation)
    return DockerError(explanation)


def _unreachable_reason(e: Exception) -> str:
    """Why Docker did not answer, briefly (one line)."""
    text = str(e)
    for reason in (
        "No such file or directory",
        "Permission denied",
        "Connection refused",
        "timed out",
        "Name or service not known",
    ):
        if reason in text:
            return reason
    return _explain(e)


def _port_tuple(spec: str) -> tuple[int, str]:
    port, _, protocol = spec.partition("/")
    return int(port), protocol or "tcp"


def _explain(e: Exception) -> str:
    text = getattr(e, "explanation", None) or str(e)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(str(text).split())


def subnets_of(network: dict[str, Any]) -> list[str]:
    """The subnets in a network's IPAM configuration."""
    configs: Iterable[dict[str, Any]] = (network.get("IPAM") or {}).get("Config") or []
    return [c["Subnet"] for c in configs if c.get("Subnet")]
