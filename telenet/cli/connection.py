# -*- test-case-name: tests.test_cli_connect -*-
"""
Connections: ``telenet connect --docker``, ``status`` and ``quit`` (docs/cli.md).

A connection named N is:

- the daemon container ``tp-N`` (project image, ``twistd telepresence-daemon``) on Docker's
  default bridge, with ``--pid host``, NET_ADMIN and the forwarding sysctls, its control API
  published on a free port of 127.0.0.1, attached to the VIF network when one is given;
- the teleroute network N: internal, options ``host`` (the daemon's bridge address) and
  ``port``, labelled ``telepresence.io/teleroute/daemon=<daemon container id>``, with a subnet
  that overlaps neither the routed subnets nor an existing Docker network (the user's
  ``--docker-subnet``, which must not overlap those or the host's routes either, or one chosen
  automatically); the daemon joins it first, with ``daemon=true``.

Everything is found again through labels, so no state file is kept. Connecting twice reports
the running connection; a daemon container that died is replaced, and so is a labelled
network whose daemon is gone (its other containers are reconnected).

This module holds what a connection is (the request, what Docker says of one) and the errors
the user sees; ``telenet.cli.connector.Connector`` makes, finds, describes and ends them.
"""

from __future__ import annotations

from typing import Any

import attrs

from telenet.core.gocompat import is_namespace


class CLIError(Exception):
    """A failure the user can act on; the message is one line."""


class NotConnected(CLIError):
    pass


def check_namespace(value: str, option: str) -> str:
    """A Kubernetes namespace name, lower-cased; CLIError naming ``option`` otherwise."""
    name = value.strip().lower()
    if not is_namespace(name):
        raise CLIError(
            f"{option} {value!r} is not a namespace name (lower-case letters, digits and -)"
        )
    return name


@attrs.frozen
class ConnectRequest:
    name: str
    vif: str | None = None
    vif_network: str | None = None
    subnets: tuple[str, ...] = ()
    cluster_dns: str | None = None
    cluster_domains: tuple[str, ...] = ()
    #: The connected namespace (None: config.yml's ``cluster.namespace``, else ``default``).
    namespace: str | None = None
    #: Namespaces whose services resolve as ``name.ns`` (empty: config.yml's, else any).
    mapped_namespaces: tuple[str, ...] = ()
    #: The teleroute network's subnet the user chose (``--docker-subnet``), checked; None:
    #: chosen automatically.
    docker_subnet: str | None = None


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
