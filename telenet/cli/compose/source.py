# -*- test-case-name: tests.test_compose_source -*-
"""
A compose file read as Docker Compose reads it, with the line of every node kept.

Compose (compose-go, Go's yaml v3/v4) reads YAML 1.2: ``yes``, ``no``, ``on`` and ``off`` are
strings, ``22:22`` is a string and not a base-60 number, ``2024-01-01`` is a string. PyYAML
reads YAML 1.1, so its ``SafeLoader`` would turn ``- 22:22`` in ``ports`` into 1342 and
``DEBUG: yes`` into ``true``. ``ComposeLoader`` resolves plain scalars by YAML 1.2's core
schema instead: null, ``true``/``false``, decimal, ``0o`` and ``0x`` integers, floats; every
other scalar is a string. Mapping keys are the key's text (Compose makes every key a string).

Compose's two tags are kept as values for ``telenet.cli.compose.merge``: ``!reset`` (the key
goes back to its default before this file is merged) and ``!override`` (the value replaces the
earlier files' instead of being merged with it). A key given twice in one mapping is an error,
as in Compose.

Errors are ``ComposeError``, one line: ``FILE:LINE: key.path: what is wrong``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import attrs
import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from telenet.cli.connection import CLIError


class ComposeError(CLIError):
    """A compose file, its extension or the project is wrong; one line saying where and why."""


@attrs.frozen
class Where:
    """A place in a file: its path and a line (from 1)."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def where_of(file: str, node: Node) -> Where:
    return Where(file, node.start_mark.line + 1)


def error_at(where: Where | None, path: str, message: str) -> ComposeError:
    """``FILE:LINE: key.path: message`` (the parts that are known)."""
    parts = [str(where)] if where is not None else []
    if path:
        parts.append(path)
    parts.append(message)
    return ComposeError(": ".join(parts))


class Reset:
    """A value tagged ``!reset``: the key is dropped from what earlier files said."""

    def __repr__(self) -> str:
        return "RESET"

    def __copy__(self) -> Reset:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Reset:
        return self


RESET = Reset()


@attrs.frozen
class Override:
    """A value tagged ``!override``: it replaces what earlier files said, unmerged."""

    value: Any


class _Core12Resolver(Resolver):
    """YAML 1.2's core schema for plain scalars (and ``<<`` merge keys, which Compose reads)."""

    yaml_implicit_resolvers: dict[Any, Any] = {}


_Core12Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_Core12Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
_Core12Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
_Core12Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
_Core12Resolver.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^<<$"), ["<"])


class ComposeLoader(Reader, Scanner, Parser, Composer, SafeConstructor, _Core12Resolver):
    """PyYAML's safe loader with YAML 1.2 scalars, string keys and Compose's tags."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        _Core12Resolver.__init__(self)

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, MappingNode):
            raise ConstructorError(
                None, None, f"expected a mapping, found {node.id}", node.start_mark
            )
        self.flatten_mapping(node)
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                raise ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                )
            mapping[key_node.value] = self.construct_object(value_node, deep=deep)
        return mapping


def _construct_int(loader: SafeConstructor, node: Node) -> int:
    text = str(node.value)
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)


def _construct_reset(loader: SafeConstructor, node: Node) -> Reset:
    return RESET


def _construct_override(loader: ComposeLoader, node: Node) -> Override:
    if isinstance(node, ScalarNode):
        tag = loader.resolve(ScalarNode, node.value, (node.style is None, False))
        plain: Node = ScalarNode(tag, node.value, node.start_mark, node.end_mark, node.style)
    elif isinstance(node, SequenceNode):
        plain = SequenceNode(
            Resolver.DEFAULT_SEQUENCE_TAG, node.value, node.start_mark, node.end_mark
        )
    else:
        plain = MappingNode(
            Resolver.DEFAULT_MAPPING_TAG, node.value, node.start_mark, node.end_mark
        )
    return Override(loader.construct_object(plain, deep=True))


ComposeLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
ComposeLoader.add_constructor("!reset", _construct_reset)
ComposeLoader.add_constructor("!override", _construct_override)


class ComposeDumper(yaml.SafeDumper):
    """
    PyYAML's safe dumper, quoting every string that YAML 1.1 *or* 1.2 would read as something
    else: ``'0o17'`` and ``'1e5'`` are numbers to Compose, though not to PyYAML.
    """

    yaml_implicit_resolvers = {
        k: list(v) for k, v in yaml.SafeDumper.yaml_implicit_resolvers.items()
    }


for _first, _resolvers in _Core12Resolver.yaml_implicit_resolvers.items():
    for _tag, _regexp in _resolvers:
        ComposeDumper.add_implicit_resolver(_tag, _regexp, [_first])


def dump_yaml(document: Any) -> str:
    """A document as YAML that Compose reads back the same (see ``ComposeDumper``)."""
    return yaml.dump(
        document,
        Dumper=ComposeDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
    )


@attrs.frozen
class SourceDocument:
    """One YAML document of a compose file: its root node (with marks) and its value."""

    file: str
    node: MappingNode
    data: dict[str, Any]


def parse_source(text: str, file: str) -> list[SourceDocument]:
    """The documents of a compose file's text; ComposeError for invalid YAML or a non-mapping."""
    loader = ComposeLoader(text)
    documents = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _check_duplicate_keys(file, node)
            if not isinstance(node, MappingNode):
                raise error_at(where_of(file, node), "", "the top level must be a mapping")
            data = loader.construct_document(node)
            documents.append(SourceDocument(file, node, data))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = Where(file, mark.line + 1) if mark is not None else None
        problem = e.problem or e.context or "invalid YAML"
        raise error_at(where, "", f"not valid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise ComposeError(f"{file}: not valid YAML: {e}") from None
    finally:
        loader.dispose()
    return documents


def load_source(path: str) -> list[SourceDocument]:
    """The documents of the compose file at ``path`` (never written)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ComposeError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ComposeError(f"{path}: is a directory, not a compose file") from None
    except OSError as e:
        raise ComposeError(f"{path}: cannot read it: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ComposeError(f"{path}: not UTF-8 text") from None
    return parse_source(text, path)


def _walk(node: Node, seen: set[int]) -> Iterator[MappingNode]:
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, MappingNode):
        yield node
        for key, value in node.value:
            yield from _walk(key, seen)
            yield from _walk(value, seen)
    elif isinstance(node, SequenceNode):
        for item in node.value:
            yield from _walk(item, seen)


def _check_duplicate_keys(file: str, root: Node) -> None:
    for mapping in _walk(root, set()):
        lines: dict[str, int] = {}
        for key, _ in mapping.value:
            if not isinstance(key, ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            line = key.start_mark.line + 1
            if key.value in lines:
                raise error_at(
                    Where(file, line),
                    "",
                    f"key {key.value!r} is already defined at line {lines[key.value]}",
                )
            lines[key.value] = line


def child(node: Node | None, key: str | int) -> Node | None:
    """The node under ``key`` of a mapping (or index of a sequence) node; None if there is none."""
    if isinstance(node, MappingNode) and isinstance(key, str):
        for key_node, value in node.value:
            if isinstance(key_node, ScalarNode) and key_node.value == key:
                return value
    elif isinstance(node, SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        return node.value[key]
    return None


@attrs.frozen
class Locator:
    """Where a key path of the merged project was last written, across the files in order."""

    documents: tuple[SourceDocument, ...]

    def where(self, *path: str | int) -> Where | None:
        for document in reversed(self.documents):
            node: Node | None = document.node
            for key in path:
                node = child(node, key)
            if node is not None:
                return where_of(document.file, node)
        return None
