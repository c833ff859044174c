# -*- test-case-name: tests.test_compose_extension -*-
"""
The extension of a project: the blocks of its files (``telenet.cli.compose.extparse``) merged in
file order as Compose merges ``x-`` mappings, with two refinements: ``connections`` merge by
``name`` (a later file's entry adds to or overrides the earlier entry of that name), and a
service's ``remoteMounts`` by path. ``!reset`` and ``!override`` on a block or a key do what
they do in Compose. Then the defaults are filled in and the references checked
(``telenet.cli.compose.extension`` has the values).

``x-telenet`` is read at each level (the top, each service) where a file gives it; ``x-tele``
where none does (it is then ignored, with a warning).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs
from yaml.nodes import MappingNode, Node

from telenet.cli.compose.extension import (
    CONNECT,
    ENGAGE,
    REMOTE,
    TELENET_KEY,
    TELEPRESENCE_KEY,
    TYPES,
    ConnectionSpec,
    Extension,
    MountPolicy,
    ServiceSpec,
)
from telenet.cli.compose.extparse import (
    TAG_OVERRIDE,
    TAG_RESET,
    Block,
    Located,
    Reader,
    Warn,
)
from telenet.cli.compose.source import SourceDocument, Where, child, error_at, where_of
from telenet.cli.naming import default_connection_name

# -- merging the files' blocks


def _merge_block(
    base: Block | None, block: Located, lists: Callable[[str, Located, Located], Located]
) -> Block | None:
    """One more file's block onto the earlier ones' (``lists`` merges a field both have)."""
    if block.tag == TAG_RESET:
        return None
    if block.tag == TAG_OVERRIDE or base is None:
        return {k: v for k, v in block.value.items() if v.tag != TAG_RESET}
    merged = dict(base)
    for key, value in block.value.items():
        if value.tag == TAG_RESET:
            merged.pop(key, None)
        elif key in merged and value.tag != TAG_OVERRIDE:
            merged[key] = lists(key, merged[key], value)
        else:
            merged[key] = value
    return merged


def _connection_key(item: Located) -> str | None:
    name = item.value.get("name")
    return name.value if name is not None else None


def _top_lists(key: str, base: Located, other: Located) -> Located:
    if base.value is None or other.value is None:
        return other
    if key == "mounts":
        return Located(base.value + other.value, other.where)
    connections = list(base.value)
    for item in other.value:
        same = [i for i, c in enumerate(connections) if _connection_key(c) == _connection_key(item)]
        if same:
            old = connections[same[0]]
            connections[same[0]] = Located({**old.value, **item.value}, item.where)
        else:
            connections.append(item)
    return Located(connections, other.where)


def _service_lists(key: str, base: Located, other: Located) -> Located:
    if key != "remoteMounts" or base.value is None or other.value is None:
        return other
    by_path = {m.path: (m, w) for m, w in base.value}
    for mount, where in other.value:
        by_path.pop(mount.path, None)
        by_path[mount.path] = (mount, where)
    return Located(list(by_path.values()), other.where)


@attrs.define
class _Blocks:
    """The merged blocks of one flavor: the top-level one, and each service's."""

    top: Block | None = None
    top_seen: Where | None = None
    services: dict[str, Block | None] = attrs.field(factory=dict)
    service_seen: dict[str, Where] = attrs.field(factory=dict)


def _service_nodes(document: SourceDocument) -> list[tuple[str, Node]]:
    services = child(document.node, "services")
    if not isinstance(services, MappingNode):
        return []
    return [(str(key.value), service) for key, service in services.value]


def _telenet_levels(documents: list[SourceDocument]) -> tuple[Where | None, set[str]]:
    """Where a top-level x-telenet is, if any file has one; the services that have one."""
    top = None
    services = set()
    for document in documents:
        node = child(document.node, TELENET_KEY)
        if node is not None:
            top = where_of(document.file, node)
        services |= {n for n, s in _service_nodes(document) if child(s, TELENET_KEY) is not None}
    return top, services


def _read_blocks(
    documents: Iterable[SourceDocument],
    flavor: str,
    warn: Warn,
    skip_top: bool = False,
    skip: Iterable[str] = (),
) -> _Blocks:
    """The blocks of ``flavor``, but the top-level one if ``skip_top`` and those of ``skip``."""
    blocks = _Blocks()
    skip = set(skip)
    for document in documents:
        reader = Reader(document.file, flavor, warn)
        node = child(document.node, flavor)
        if node is not None and skip_top:
            warn(f"{reader.where(node)}: {flavor}: ignored, {TELENET_KEY} is given")
        elif node is not None:
            blocks.top = _merge_block(blocks.top, reader.top(node), _top_lists)
            blocks.top_seen = reader.where(node)
        for name, service in _service_nodes(document):
            node = child(service, flavor)
            if node is None:
                continue
            if name in skip:
                where = f"{reader.where(node)}: services.{name}.{flavor}"
                warn(f"{where}: ignored, {TELENET_KEY} is given")
                continue
            block = reader.service(node, name)
            blocks.services[name] = _merge_block(blocks.services.get(name), block, _service_lists)
            blocks.service_seen[name] = reader.where(node)
    return blocks


# -- the values, with their defaults


def read_extension(
    documents: Iterable[SourceDocument], services: Iterable[str], warn: Warn
) -> Extension:
    """
    The project's extension from its files (in merge order), for the services the merged
    project has; ComposeError (``FILE:LINE: key.path: …``) for anything wrong in it.
    """
    documents = list(documents)
    telenet_top, telenet_services = _telenet_levels(documents)
    telenet = _read_blocks(documents, TELENET_KEY, warn)
    tele = _read_blocks(
        documents, TELEPRESENCE_KEY, warn, telenet_top is not None, telenet_services
    )
    if telenet_top is not None or tele.top_seen is None:
        top, key = telenet.top, TELENET_KEY
    else:
        top, key = tele.top, TELEPRESENCE_KEY
    top = top or {}
    connections = _connections(top.get("connections"), key)
    mounts = tuple(_mount(item) for item in (_items(top.get("mounts"))))
    specs: dict[str, ServiceSpec] = {}
    for service in services:
        flavor = TELENET_KEY if service in telenet.service_seen else TELEPRESENCE_KEY
        blocks = telenet if flavor == TELENET_KEY else tele
        block = blocks.services.get(service)
        if block is None:
            continue
        where = blocks.service_seen[service]
        spec, connections = _service(service, block, where, flavor, key, connections)
        specs[service] = spec
    return Extension(connections=tuple(connections), mounts=mounts, services=specs, key=key)


def _items(located: Located | None) -> list[Located]:
    return list(located.value) if located is not None and located.value is not None else []


def _connections(located: Located | None, key: str) -> list[ConnectionSpec]:
    items = _items(located)
    found = []
    for i, item in enumerate(items):
        block: Block = item.value
        name = block["name"].value if "name" in block else None
        if name is None:
            if len(items) > 1:
                raise error_at(
                    item.where,
                    f"{key}.connections[{i}]",
                    "name is required when several connections are declared",
                )
            namespace = block["namespace"].value if "namespace" in block else None
            name = default_connection_name(namespace=namespace)
        found.append(
            ConnectionSpec(
                name=name,
                vif=_scalar(block, "vif"),
                vif_network=_scalar(block, "vifNetwork"),
                subnets=tuple(s for s, _ in _list(block, "subnets")),
                cluster_dns=_scalar(block, "clusterDNS"),
                cluster_domains=tuple(d for d, _ in _list(block, "clusterDomains")),
                namespace=_scalar(block, "namespace"),
                mapped_namespaces=tuple(n for n, _ in _list(block, "mappedNamespaces")),
                where=item.where,
            )
        )
    return found


def _scalar(block: Block, key: str) -> Any:
    located = block.get(key)
    return located.value if located is not None else None


def _list(block: Block, key: str) -> list[Any]:
    located = block.get(key)
    return list(located.value) if located is not None and located.value is not None else []


def _mount(item: Located) -> MountPolicy:
    block: Block = item.value
    return MountPolicy(
        policy=_scalar(block, "policy") or REMOTE,
        volume=_scalar(block, "volume"),
        pattern=_scalar(block, "volumePattern"),
        where=item.where,
    )


def _service(
    service: str,
    block: Block,
    where: Where,
    flavor: str,
    key: str,
    connections: list[ConnectionSpec],
) -> tuple[ServiceSpec, list[ConnectionSpec]]:
    path = f"services.{service}.{flavor}"
    kind = _scalar(block, "type")
    if kind is None:
        raise error_at(where, path, f"type is required ({' or '.join(TYPES)})")
    names = _scalar(block, "connection")
    connection_where = block["connection"].where if "connection" in block else where
    if names is None:
        if len(connections) > 1:
            known = ", ".join(c.name for c in connections)
            raise error_at(
                where,
                path,
                f"connection is required: {key}.connections declares several ({known})",
            )
        if not connections:
            # Telepresence's rule: no connection declared is one with the kubeconfig's defaults.
            connections = [ConnectionSpec(name=default_connection_name())]
        names = [connections[0].name]
    declared = [c.name for c in connections]
    for name in names:
        if name not in declared:
            known = (
                f"{key}.connections declares {', '.join(declared)}"
                if declared
                else (f"{key}.connections declares none")
            )
            raise error_at(
                connection_where, f"{path}.connection", f"no connection {name!r} ({known})"
            )
    if len(set(names)) != len(names):
        raise error_at(connection_where, f"{path}.connection", "a connection is named twice")
    if kind == CONNECT:
        for extra in ("agent", "container", "remoteMounts", "mountOptions"):
            if extra in block:
                raise error_at(block[extra].where, f"{path}.{extra}", "only type engage takes it")
    agent = _scalar(block, "agent")
    if kind == ENGAGE and agent is None:
        raise error_at(
            where,
            path,
            "type engage needs an agent: agent: HOST:PORT (the agent's SFTP server, as the "
            "daemon reaches it)",
        )
    mounts = _list(block, "remoteMounts")
    spec = ServiceSpec(
        service=service,
        type=kind,
        connections=tuple(names),
        agent=agent,
        container=_scalar(block, "container") or service,
        remote_mounts=tuple(m for m, _ in mounts),
        mount_options=tuple(text for text, _ in _list(block, "mountOptions")),
        where=where,
        connection_where=connection_where,
        mount_wheres=tuple(w for _, w in mounts),
    )
    return spec, connections
