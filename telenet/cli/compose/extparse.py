# -*- test-case-name: tests.test_compose_extension -*-
"""
The extension read from one compose file's YAML nodes, so that every error names the file,
the line and the key path: ``compose.yaml:12: services.api.x-telenet.agent: …``. Unknown keys,
wrong types and bad values are errors here, file by file; ``telenet.cli.compose.extmerge``
merges the files' blocks and fills in the defaults.

Telepresence's ``x-tele`` is read with its own keys where the meaning is the same: its
connections (``name``, ``namespace`` for the default name, ``also-proxy`` as ``subnets``;
``manager-namespace`` and ``mapped-namespaces`` are ignored with a warning) and
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
    ENGAGE,
    POLICIES,
    TELENET_KEY,
    TELEPRESENCE_KEY,
    TRAFFIC_MANAGER_TYPES,
    TYPES,
)
from telenet.cli.compose.source import (
    ComposeError,
    Where,
    error_at,
    where_of,
)
from telenet.cli.connection import CLIError
from telenet.cli.runflags import RemoteMount, RunFlagsError
from telenet.cli.subnets import check_subnet
from telenet.cli.workload import check_agent, check_container, mount_options

Warn = Callable[[str], None]

TAG_RESET = "!reset"
TAG_OVERRIDE = "!override"
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")

#: The fields of a connection: telenet's key → kind; Telepresence's keys → telenet's.
CONNECTION_FIELDS = {
    "name": "str",
    "vif": "str",
    "vifNetwork": "str",
    "subnets": "cidrs",
    "clusterDNS": "str",
    "clusterDomains": "strs",
    "namespace": "str",
    "mappedNamespaces": "strs",
}
TELE_CONNECTION_FIELDS = {
    "name": "name",
    "namespace": "namespace",
    "also-proxy": "subnets",
    "mapped-namespaces": "mappedNamespaces",
}
TELE_IGNORED = {"manager-namespace": "telenet has no traffic manager"}
MOUNT_FIELDS = {"volume": "str", "volumePattern": "pattern", "policy": "policy"}
SERVICE_FIELDS = {
    "type": "type",
    "connection": "connection",
    "agent": "str",
    "container": "str",
    "remoteMounts": "strs",
    "mountOptions": "mountopts",
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
    return node.tag if node.tag in (TAG_RESET, TAG_OVERRIDE) else None


def _is_str(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag in ("tag:yaml.org,2002:str", TAG_OVERRIDE)


class Reader:
    """I read one file's blocks; ``flavor`` is the key read (``x-telenet`` or ``x-tele``)."""

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
        if tag == TAG_RESET:
            return Located(None, self.where(node), tag)
        if kind == "cidrs":
            items = [
                (self._checked(check_subnet, text, f"{path}[{i}]", where), where)
                for i, (text, where) in enumerate(self.strings(node, path))
            ]
            return Located(items, self.where(node), tag)
        if kind == "strs":
            return Located(self.strings(node, path), self.where(node), tag)
        if kind == "mountopts":
            items = self.strings(node, path)
            for i, (text, where) in enumerate(items):
                self._checked(_mount_option, text, f"{path}[{i}]", where)
            return Located(items, self.where(node), tag)
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
        if _tag(node) == TAG_RESET:
            return Located(None, self.where(node), TAG_RESET)
        for key, value in self.pairs(node, path, ("connections", "mounts")):
            if _tag(value) == TAG_RESET:
                block[key] = Located(None, self.where(value), TAG_RESET)
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
        if _tag(node) == TAG_RESET:
            return Located(None, self.where(node), TAG_RESET)
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
            if key == "agent" and block[key].tag != TAG_RESET:
                self._checked(_agent, block[key].value, where, block[key].where)
            if key == "container" and block[key].tag != TAG_RESET:
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


def _mount_option(text: str, what: str) -> str:
    mount_options([text], what)
    return text


def _container(text: str, what: str) -> str:
    check_container(text, what)
    return text
