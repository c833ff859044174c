"""
The CLI's seams: ``IDocker`` (the Docker engine, ``telenet.cli.dockerapi.SDKDocker``) and
``IControl`` (the daemon's control API, ``telenet.cli.daemoncontrol``), with ``ContainerSpec``,
the one value their signatures take.

The fakes are ``telenet.testing.MemoryDocker`` and ``MemoryControl``; the contract tests
(tests/test_docker_contract.py, tests/test_control_contract.py) hold both sides to the same
answers. Errors stay with the implementations: ``DockerError`` and its kinds in
``telenet.cli.dockerapi``, ``DaemonControlError`` in ``telenet.cli.daemoncontrol``.
"""

from __future__ import annotations

from typing import Any

import attrs
from zope.interface import Interface


@attrs.frozen
class ContainerSpec:
    """What ``create_container`` makes (the daemon container, the demo cluster)."""

    image: str
    command: list[str]
    name: str
    labels: dict[str, str] = attrs.field(factory=dict)
    pid_host: bool = False
    cap_add: list[str] = attrs.field(factory=list)
    sysctls: dict[str, str] = attrs.field(factory=dict)
    ports: dict[str, tuple[str, int | None]] = attrs.field(factory=dict)
    network: str | None = None
    environment: dict[str, str] = attrs.field(factory=dict)
    binds: list[str] = attrs.field(factory=list)


class IDocker(Interface):
    """The Docker engine, as the CLI uses it (synchronous; dicts as the API's JSON)."""

    def api_version() -> str:
        """The engine's API version ("1.41"); DockerUnavailable when nothing answers."""

    def plugin(name: str) -> dict[str, Any] | None:
        """``docker plugin inspect NAME`` (``Name``, ``Enabled``, ``Id``), or None."""

    def enable_plugin(name: str) -> None:
        """``docker plugin enable NAME`` (5 s timeout)."""

    def install_plugin(name: str) -> None:
        """``docker plugin install --grant-all-permissions NAME`` (pulled, then enabled)."""

    def create_plugins(image: str, plugins: list[tuple[str, str]]) -> None:
        """Make managed plug-ins ``(name, kind)`` from the image's rootfs (not enabled)."""

    def socket_answers(path: str) -> bool:
        """
        Whether a legacy plug-in accepts connections on the unix socket ``path``, for this
        engine (False when the engine runs elsewhere: the socket here cannot serve it).
        """

    def image_exists(name: str) -> bool:
        """Whether the image is present locally."""

    def container(name: str) -> dict[str, Any] | None:
        """``docker inspect`` of a container (by name or id), or None."""

    def containers(label: str) -> list[dict[str, Any]]:
        """Every container (running or not) with the label (``KEY`` or ``KEY=VALUE``)."""

    def create_container(spec: ContainerSpec) -> str:
        """Create (not start) a container; its id."""

    def start_container(container: str) -> None:
        """Start it."""

    def stop_container(container: str, timeout: float) -> None:
        """Stop it (SIGTERM, then SIGKILL after ``timeout``); a stopped one is fine."""

    def remove_container(container: str) -> None:
        """Remove it, running or not, with its anonymous volumes; a missing one is fine."""

    def container_logs(container: str, tail: int, since: float | None = None) -> str:
        """The last lines of its output (those since the Unix time ``since``, if given)."""

    def engine_info() -> dict[str, Any]:
        """``docker version``'s engine part (``Version``, ``ApiVersion``, ``Os``, …)."""

    def plugin_list() -> list[dict[str, Any]]:
        """``docker plugin ls``: every managed plug-in's inspection."""

    def exec_in(container: str, argv: list[str]) -> tuple[int, bytes, bytes]:
        """``docker exec CONTAINER ARGV...``: its exit code, stdout and stderr."""

    def engine_is_here() -> bool:
        """
        Whether the engine runs on this machine: its published loopback ports and its legacy
        plug-in directory are ours (not so for an engine in a VM or on another host).
        """

    def networks() -> list[dict[str, Any]]:
        """``docker network inspect`` of every network."""

    def network(name: str) -> dict[str, Any] | None:
        """``docker network inspect NAME`` (with ``Containers``), or None."""

    def create_network(
        name: str,
        driver: str,
        options: dict[str, str],
        labels: dict[str, str],
        subnet: str | None,
        ipv6: bool,
    ) -> tuple[str, str]:
        """An internal network; (id, warning). Conflict when the name is taken."""

    def remove_network(network: str) -> None:
        """``docker network rm``."""

    def connect(network: str, container: str, driver_opts: dict[str, str] | None) -> None:
        """``docker network connect [--driver-opt K=V]``."""

    def disconnect(network: str, container: str) -> None:
        """``docker network disconnect --force``."""

    def volumes(driver: str, label: str | None = None) -> list[dict[str, Any]]:
        """
        The volumes of one driver, with the label if given. (Always by driver: listing or
        inspecting without one makes dockerd ask every plug-in, and one that hangs stalls it.)
        """

    def create_volume(
        name: str, driver: str, options: dict[str, str], labels: dict[str, str]
    ) -> None:
        """``docker volume create``."""

    def remove_volume(name: str) -> None:
        """``docker volume rm`` (refused while in use)."""


class IControl(Interface):
    """The daemon's control API (docs/daemon.md, "Control API")."""

    def status() -> dict[str, Any]:
        """``GET /status``."""

    def open_bridge(agent: str) -> int:
        """``POST /bridges {"agent": agent}``: the bridge's port."""

    def close_bridge(port: int) -> None:
        """``DELETE /bridges/<port>``."""

    def set_log_level(level: str, duration: float) -> dict[str, Any]:
        """``POST /loglevel``: ``level`` now, the configured one back after ``duration`` s."""
