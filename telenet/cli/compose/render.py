# -*- test-case-name: tests.test_compose_render -*-
"""
The renderer: the merged project, its extension and the facts of the connections and bridges
in, the compose document Compose runs out. Pure: it reads nothing and changes nothing.

What it does (docs/compose.md, "What rendering does"):

- every service of a connection joins the connection's teleroute network, declared as an
  external network (``telenet-<connection>``), besides its own networks (``default`` when it
  named none); its ``dns`` starts with the daemons' addresses and ``dns_search`` with their
  search domains, both from ``telenet.cli.workload.workload_dns`` as for ``docker-run``;
- engaged services get telemount volumes for their remote mounts (``telenet.cli.compose.mounts``
  decides which, and which are read-only), with the driver options
  ``telenet.cli.workload.telemount_options`` spells for ``telenet engage``, through the
  service's own bridge;
- the project networks those services join get a subnet (``telenet.cli.subnets.choose_subnet``)
  that overlaps neither the routed subnets nor another Docker network, unless their IPAM is
  the user's; a network that exists keeps its subnet while that still fits;
- ``x-telenet`` and ``x-tele`` are left out. The user's files are never written.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from telenet.cli.compose.extension import TELENET_KEY, TELEPRESENCE_KEY, Extension, ServiceSpec
from telenet.cli.compose.merge import to_mapping, to_sequence
from telenet.cli.compose.mounts import EntryChange, MountPlan, free_key, plan_mounts
from telenet.cli.compose.source import ComposeError
from telenet.cli.naming import LABEL_CONNECTION
from telenet.cli.subnets import Network, choose_subnet
from telenet.cli.workload import WorkloadDNS, mount_options, telemount_options


@attrs.frozen
class ConnectionFacts:
    """What the renderer needs of a running connection."""

    name: str
    network: str
    dns: WorkloadDNS
    routes: tuple[str, ...] = ()
    volume_driver: str = "telenet/telemount:latest"
    #: How long a telemount volume's first connection waits for its agent (``timeout``).
    mount_timeout: float = 0.0


@attrs.frozen
class BridgeFacts:
    """An engaged service's SFTP bridge: the daemon's bridge address and the bridge's port."""

    host: str
    port: int
    agent: str


@attrs.frozen
class Facts:
    """Everything the renderer needs that is not in the files."""

    project: str
    connections: Mapping[str, ConnectionFacts] = attrs.field(factory=dict)
    bridges: Mapping[str, BridgeFacts] = attrs.field(factory=dict)
    #: Every Docker network's subnets, by network name.
    networks: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)


@attrs.frozen
class Rendered:
    """The document to run, the notes for the user, the telemount volumes' keys it declares."""

    document: dict[str, Any]
    notes: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    plan: MountPlan = MountPlan()


def _networks(value: Any) -> list[Network]:
    found = []
    for item in value:
        try:
            found.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            continue
    return found


def overlapping(a: Iterable[str], b: Iterable[str]) -> list[tuple[str, str]]:
    """The pairs of subnets, one of each, that overlap (same IP version)."""
    pairs = []
    for x in _networks(a):
        for y in _networks(b):
            if x.version == y.version and x.overlaps(y):
                pairs.append((str(x), str(y)))
    return pairs


def strip_extension(model: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the project without ``x-telenet`` and ``x-tele``, at the top and in services."""
    document = copy.deepcopy(dict(model))
    for key in (TELENET_KEY, TELEPRESENCE_KEY):
        document.pop(key, None)
        for service in (document.get("services") or {}).values():
            if isinstance(service, dict):
                service.pop(key, None)
    return document


def render(
    model: Mapping[str, Any], extension: Extension, active: Iterable[str], facts: Facts
) -> Rendered:
    """The rendered project (see the module docstring); ComposeError for what cannot run."""
    document = strip_extension(model)
    services: dict[str, dict[str, Any]] = document.get("services") or {}
    active = [s for s in active if s in services]
    specs = [extension.services[s] for s in active if s in extension.services]
    used = [c for c in extension.used_connections({s.service for s in specs})]
    for name in used:
        if name not in facts.connections:
            raise ComposeError(f"connection {name} is not connected")
    for spec in specs:
        _check_routes(spec, facts)
    networks = document.setdefault("networks", {}) or {}
    document["networks"] = networks
    taken = set(networks)
    keys = {}
    for name in used:
        keys[name] = free_key(f"telenet-{name}", taken)
        networks[keys[name]] = {"name": facts.connections[name].network, "external": True}
    joined: list[str] = []
    for spec in specs:
        service = services[spec.service]
        own = _join(spec, service, [keys[c] for c in spec.connections])
        joined += [n for n in own if n not in joined]
        _dns(service, [facts.connections[c].dns for c in spec.connections])
    plan = plan_mounts(services, active, extension, (document.get("volumes") or {}).keys())
    volumes = _volumes(document, plan, extension, facts)
    _subnets(document, joined, used, facts)
    if not networks:
        del document["networks"]
    return Rendered(document, plan.notes, volumes, plan)


def _check_routes(spec: ServiceSpec, facts: Facts) -> None:
    names = spec.connections
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            pairs = overlapping(facts.connections[first].routes, facts.connections[second].routes)
            if pairs:
                a, b = pairs[0]
                raise ComposeError(
                    f"service {spec.service}: connections {first} and {second} route overlapping "
                    f"subnets ({a} and {b}); a container cannot reach both"
                )


def _join(spec: ServiceSpec, service: dict[str, Any], keys: list[str]) -> list[str]:
    """The service joins ``keys`` besides its own networks; its own networks, listed."""
    if service.get("network_mode") is not None:
        raise ComposeError(
            f"service {spec.service}: network_mode {service['network_mode']!r} cannot join a "
            "connection's network; remove network_mode"
        )
    declared = service.get("networks")
    networks = to_mapping(declared) if declared is not None else {"default": None}
    own = list(networks)
    for key in keys:
        networks.setdefault(key, None)
    service["networks"] = networks
    return own


def _dns(service: dict[str, Any], dns: list[WorkloadDNS]) -> None:
    servers = [s for d in dns for s in d.servers]
    service["dns"] = servers + [s for s in to_sequence(service.get("dns")) if s not in servers]
    search = [s for d in dns for s in d.search]
    if search:
        user = to_sequence(service.get("dns_search"))
        service["dns_search"] = search + [s for s in user if s not in search]


def _volumes(
    document: dict[str, Any], plan: MountPlan, extension: Extension, facts: Facts
) -> tuple[str, ...]:
    if not plan.volumes:
        return ()
    declared = document.setdefault("volumes", {}) or {}
    document["volumes"] = declared
    for volume in plan.volumes:
        spec = extension.services[volume.service]
        bridge = facts.bridges.get(volume.service)
        if bridge is None:
            raise ComposeError(f"service {volume.service}: no bridge to {spec.agent} is open")
        connection = facts.connections[spec.connection]
        declared[volume.key] = {
            "driver": connection.volume_driver,
            "driver_opts": telemount_options(
                bridge.host,
                bridge.port,
                volume.container,
                volume.path,
                volume.readonly,
                mount_options(spec.mount_options),
                wait=connection.mount_timeout,
            ),
            "labels": {LABEL_CONNECTION: connection.name},
        }
    services = document["services"]
    for change in plan.changes:
        _mount(services[change.service], change)
    return tuple(v.key for v in plan.volumes)


def _mount(service: dict[str, Any], change: EntryChange) -> None:
    entries = service.setdefault("volumes", []) or []
    service["volumes"] = entries
    entry: dict[str, Any] = {}
    if change.index is not None:
        old = entries[change.index]
        if isinstance(old, dict) and isinstance(old.get("volume"), dict):
            entry["volume"] = old["volume"]
    entry = {"type": "volume", "source": change.volume, "target": change.target, **entry}
    # Docker would copy the image's files into the remote directory at the first mount.
    entry["volume"] = {**entry.get("volume", {}), "nocopy": True}
    if change.readonly:
        entry["read_only"] = True
    if change.index is None:
        entries.append(entry)
    else:
        entries[change.index] = entry


def _subnets(document: dict[str, Any], joined: list[str], used: list[str], facts: Facts) -> None:
    """A subnet for each project network the connected services join (module docstring)."""
    routes = [r for name in used for r in facts.connections[name].routes]
    networks = document["networks"]
    chosen: list[str] = []
    for key in joined:
        definition = networks.get(key)
        definition = dict(definition) if isinstance(definition, dict) else {}
        if definition.get("external") or "ipam" in definition:
            continue
        if definition.get("driver") not in (None, "bridge"):
            continue
        docker_name = definition.get("name") or f"{facts.project}_{key}"
        others = [
            subnet
            for name, subnets in facts.networks.items()
            if name != docker_name
            for subnet in subnets
        ]
        blocked = routes + others + chosen
        existing = [s for s in facts.networks.get(docker_name, ()) if ":" not in s]
        if existing and not overlapping(existing[:1], blocked):
            subnet: str | None = str(ipaddress.ip_network(existing[0], strict=False))
        else:
            found = choose_subnet(blocked)
            subnet = str(found) if found is not None else None
        if subnet is None:
            continue
        chosen.append(subnet)
        definition["ipam"] = {"config": [{"subnet": subnet}]}
        networks[key] = definition
