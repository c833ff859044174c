# -*- test-case-name: tests.test_compose_extension -*-
"""
The extension read from the compose files' YAML nodes, so that every error names the file,
the line and the key path: ``compose.yaml:12: services.api.x-telenet.agent: …``.

Each file's blocks are read on their own (unknown keys, wrong types and bad values are errors
there), then merged in file order as Compose merges ``x-`` mappings, with two refinements:
``connections`` merge by ``name`` (a later file's entry adds to or overrides the earlier entry
of that name), and a service's ``remoteMounts`` by path. ``!reset`` and ``!override`` on a
block or a key do what they do in Compose. Then the defaults are filled in and the references
checked (``telenet.cli.compose.extension`` has the values).

Telepresence's ``x-tele`` is read where ``x-telenet`` is not given, at each level (top, each
service): its connections (``name``, ``namespace`` for the default name, ``also-proxy`` as
``subnets``; ``manager-namespace`` and ``mapped-namespaces`` are ignored with a warning) and
``type: connect``. Its ``never-proxy``, the ``ignore`` policy, and the types that need a
traffic manager (``intercept``, ``ingest``, ``replace``, ``wiretap``, ``proxy``) are errors
saying what telenet offers instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from telenet.cli.compose.extension import (
    CONNECT,
    ENGAGE,
    POLICIES,
    REMOTE,
    TELENET_KEY,
    TELEPRESENCE_KEY,
    TRAFFIC_MANAGER_TYPES,
    TYPES,
    ConnectionSpec,
    Extension,
    MountPolicy,
    ServiceSpec,
)
from telenet.cli.compose.source import (
    ComposeError,
    SourceDocument,
    Where,
    child,
    error_at,
    where_of,
)
from telenet.cli.connection import CLIError
from telenet.cli.naming import default_connection_name
from telenet.cli.runflags import RemoteMount, RunFlagsError
from telenet.cli.subnets import check_subnet
from telenet.cli.workload import check_agent, check_container

Warn = Callable[[str], None]

_TAG_RESET = "!reset"
_TAG_OVERRIDE = "!override"
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")

#: The fields of a connection: telenet's key → kind; Telepresence's keys → telenet's.
CONNECTION_FIELDS = {
    "name": "str",
    "vif": "str",
    "vifNetwork": "str",
    "subnets": "cidrs",
    "clusterDNS": "str",
    "clusterDomains": "strs",
}
TELE_CONNECTION_FIELDS = {"name": "name", "namespace": "namespace", "also-proxy": "subnets"}
TELE_IGNORED = {
    "manager-namespace": "telenet has no traffic manager",
    "mapped-namespaces": "the daemon resolves every name under its cluster domains",
}
MOUNT_FIELDS = {"volume": "str", "volumePattern": "pattern", "policy": "policy"}
SERVICE_FIELDS = {
    "type": "type",
    "connection": "connection",
    "agent": "str",
    "container": "str",
    "remoteMounts": "strs",
}
TELE_SERVICE_FIELDS = {"type": "type", "connection": "connection"}


@attrs.frozen
class Located:
    """A value read from a node: where it is, and its Compose tag (``!reset``, ``!override``)."""

    value: Any
    where: Where
    tag: str | None = None


Block = dict[str, Located]


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    kind = node.tag.rpartition(":")[2]
    if kind == "null":
        return "nothing"
    if kind in ("int", "float"):
        return f"the number {node.value}"
    if kind == "bool":
        return node.value
    return f"{node.value!r}"


def _tag(node: Node) -> str | None:
    return node.tag if node.tag in (_TAG_RESET, _TAG_OVERRIDE) else None


def _is_str(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag in ("tag:yaml.org,2002:str", _TAG_OVERRIDE)


class _Reader:
    """Reads one file's blocks; ``flavor`` is the key read (``x-telenet`` or ``x-tele``)."""

    def __init__(self, file: str, flavor: str, warn: Warn) -> None:
        self.file = file
        self.flavor = flavor
        self.warn = warn

    def where(self, node: Node) -> Where:
        return where_of(self.file, node)

    def fail(self, node: Node, path: str, message: str) -> ComposeError:
        return error_at(self.where(node), path, message)

    def pairs(self, node: Node, path: str, known: Iterable[str]) -> list[tuple[str, Node]]:
        if not isinstance(node, MappingNode):
            raise self.fail(node, path, f"expected a mapping, got {_describe(node)}")
        known = list(known)
        found = []
        for key, value in node.value:
            name = str(key.value)
            if name not in known:
                raise self.fail(key, f"{path}.{name}", f"unknown key (known: {', '.join(known)})")
            found.append((name, value))
        return found

    def string(self, node: Node, path: str) -> str:
        if not _is_str(node):
            raise self.fail(node, path, f"expected a string, got {_describe(node)}")
        return str(node.value)

    def strings(self, node: Node, path: str) -> list[tuple[str, Where]]:
        if not isinstance(node, SequenceNode):
            raise self.fail(node, path, f"expected a list of strings, got {_describe(node)}")
        return [
            (self.string(item, f"{path}[{i}]"), self.where(item))
            for i, item in enumerate(node.value)
        ]

    def value(self, kind: str, node: Node, path: str) -> Located:
        """One field's value, checked as its ``kind`` says."""
        tag = _tag(node)
        if tag == _TAG_RESET:
            return Located(None, self.where(node), tag)
        if kind == "cidrs":
            items = [
                (self._checked(check_subnet, text, f"{path}[{i}]", where), where)
                for i, (text, where) in enumerate(self.strings(node, path))
            ]
            return Located(items, self.where(node), tag)
        if kind == "strs":
            return Located(self.strings(node, path), self.where(node), tag)
        if kind == "connection":
            if isinstance(node, SequenceNode) and self.flavor == TELENET_KEY:
                names = self.strings(node, path)
                if not names:
                    raise self.fail(node, path, "expected at least one connection name")
                return Located([n for n, _ in names], self.where(node), tag)
            return Located([self.string(node, path)], self.where(node), tag)
        text = self.string(node, path)
        if kind == "pattern":
            try:
                re.compile(text)
            except re.error as e:
                raise self.fail(node, path, f"{text!r} is not a regular expression: {e}") from None
        elif kind == "policy":
            if text == "ignore":
                raise self.fail(
                    node,
                    path,
                    "policy ignore is not supported by telenet: use local (the compose volume "
                    "as it is) or remote",
                )
            if text not in POLICIES:
                raise self.fail(node, path, f"{text!r}: expected {', '.join(POLICIES)}")
        return Located(text, self.where(node), tag)

    def _checked(self, check: Callable[[str, str], str], text: str, path: str, w: Where) -> str:
        try:
            return check(text, path)
        except CLIError as e:
            raise error_at(w, "", str(e)) from None

    def top(self, node: Node) -> Located:
        """The top-level block: ``connections`` and ``mounts``."""
        path = self.flavor
        block: Block = {}
        if _tag(node) == _TAG_RESET:
            return Located(None, self.where(node), _TAG_RESET)
        for key, value in self.pairs(node, path, ("connections", "mounts")):
            if _tag(value) == _TAG_RESET:
                block[key] = Located(None, self.where(value), _TAG_RESET)
                continue
            if not isinstance(value, SequenceNode):
                raise self.fail(
                    value, f"{path}.{key}", f"expected a list of mappings, got {_describe(value)}"
                )
            read = self.connection if key == "connections" else self.mount
            items = [read(item, f"{path}.{key}[{i}]") for i, item in enumerate(value.value)]
            if key == "connections":
                self._unique_names(items, f"{path}.{key}")
            block[key] = Located(items, self.where(value), _tag(value))
        return Located(block, self.where(node), _tag(node))

    def connection(self, node: Node, path: str) -> Located:
        block: Block = {}
        telepresence = self.flavor == TELEPRESENCE_KEY
        known = [*TELE_CONNECTION_FIELDS, *TELE_IGNORED, "never-proxy"]
        for key, value in self.pairs(node, path, known if telepresence else CONNECTION_FIELDS):
            where = f"{path}.{key}"
            if key in TELE_IGNORED:
                self.warn(f"{self.where(value)}: {where}: ignored ({TELE_IGNORED[key]})")
                continue
            if key == "never-proxy":
                raise self.fail(
                    value,
                    where,
                    "telenet routes the subnets of the VIF and of subnets (also-proxy); it cannot "
                    "leave some out: remove never-proxy",
                )
            field = TELE_CONNECTION_FIELDS[key] if telepresence else key
            kind = "cidrs" if field == "subnets" else CONNECTION_FIELDS.get(field, "str")
            block[field] = self.value(kind, value, where)
            if field == "name":
                name = block[field].value
                if not _NAME.match(name):
                    raise self.fail(value, where, f"{name!r} is not a connection name")
        if "vif" in block and "vifNetwork" in block:
            raise self.fail(node, path, "give vif or vifNetwork, not both")
        return Located(block, self.where(node), _tag(node))

    def _unique_names(self, items: list[Located], path: str) -> None:
        seen: dict[str | None, Where] = {}
        for i, item in enumerate(items):
            name = item.value["name"].value if "name" in item.value else None
            if name in seen:
                what = f"connection {name!r}" if name else "a connection without a name"
                raise error_at(
                    item.where,
                    f"{path}[{i}]",
                    f"{what} is already declared at line {seen[name].line}",
                )
            seen[name] = item.where

    def mount(self, node: Node, path: str) -> Located:
        block = {
            key: self.value(MOUNT_FIELDS[key], value, f"{path}.{key}")
            for key, value in self.pairs(node, path, MOUNT_FIELDS)
        }
        if ("volume" in block) == ("volumePattern" in block):
            raise self.fail(
                node,
                path,
                "give volume (a name) or volumePattern (a regular expression), one of them",
            )
        return Located(block, self.where(node), _tag(node))

    def service(self, node: Node, service: str) -> Located:
        """A service's block (``type``, ``connection``, ``agent``, …)."""
        path = f"services.{service}.{self.flavor}"
        if _tag(node) == _TAG_RESET:
            return Located(None, self.where(node), _TAG_RESET)
        known = TELE_SERVICE_FIELDS if self.flavor == TELEPRESENCE_KEY else SERVICE_FIELDS
        if isinstance(node, MappingNode):
            # The type first: a traffic manager's type is the error, whatever else is there.
            for key, value in node.value:
                if key.value == "type":
                    self._type(value, f"{path}.type", service)
        block: Block = {}
        for key, value in self.pairs(node, path, known):
            where = f"{path}.{key}"
            if key == "remoteMounts":
                items = self.strings(value, where)
                mounts: list[tuple[RemoteMount, Where]] = []
                for i, (text, w) in enumerate(items):
                    try:
                        mount = RemoteMount.parse(text, f"{where}[{i}]")
                    except RunFlagsError as e:
                        raise error_at(w, "", str(e)) from None
                    if any(m.path == mount.path for m, _ in mounts):
                        raise error_at(w, f"{where}[{i}]", f"{mount.path} is mounted twice")
                    mounts.append((mount, w))
                block[key] = Located(mounts, self.where(value), _tag(value))
                continue
            block[key] = self.value(known[key], value, where)
            if key == "agent" and block[key].tag != _TAG_RESET:
                self._checked(_agent, block[key].value, where, block[key].where)
            if key == "container" and block[key].tag != _TAG_RESET:
                self._checked(_container, block[key].value, where, block[key].where)
        return Located(block, self.where(node), _tag(node))

    def _type(self, node: Node, path: str, service: str) -> None:
        text = self.string(node, path)
        if text in TRAFFIC_MANAGER_TYPES:
            raise self.fail(
                node,
                path,
                f"service {service}: type {text} needs Telepresence's traffic manager, which "
                "telenet does not have; telenet offers type: engage (what telenet engage does: "
                "the agent's directories mounted, under x-telenet) or type: connect",
            )
        if text == ENGAGE and self.flavor == TELEPRESENCE_KEY:
            raise self.fail(node, path, "type engage is telenet's: write it under x-telenet")
        if text not in TYPES:
            raise self.fail(node, path, f"{text!r}: expected {' or '.join(TYPES)}")


def _agent(text: str, what: str) -> str:
    check_agent(text, what)
    return text


def _container(text: str, what: str) -> str:
    check_container(text, what)
    return text


# -- merging the files' blocks


def _merge_block(
    base: Block | None, block: Located, lists: Callable[[str, Located, Located], Located]
) -> Block | None:
    """One more file's block onto the earlier ones' (``lists`` merges a field both have)."""
    if block.tag == _TAG_RESET:
        return None
    if block.tag == _TAG_OVERRIDE or base is None:
        return {k: v for k, v in block.value.items() if v.tag != _TAG_RESET}
    merged = dict(base)
    for key, value in block.value.items():
        if value.tag == _TAG_RESET:
            merged.pop(key, None)
        elif key in merged and value.tag != _TAG_OVERRIDE:
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
        reader = _Reader(document.file, flavor, warn)
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
        for extra in ("agent", "container", "remoteMounts"):
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
        where=where,
        connection_where=connection_where,
        mount_wheres=tuple(w for _, w in mounts),
    )
    return spec, connections
