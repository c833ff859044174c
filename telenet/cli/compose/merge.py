# -*- test-case-name: tests.test_compose_merge -*-
"""
Several compose files merged into one project, by the rules of Compose v2 (compose-go's
``override.Merge`` and ``override.EnforceUnicity``), so that the rendered file says what
``docker compose -f a.yml -f b.yml`` would have run.

Each file in turn, onto what the earlier ones made:

- ``!reset`` and ``!override`` first drop their key from the earlier files' result; a reset key
  is then gone, an overridden one takes this file's value as it is;
- a mapping merges key by key (a later file's ``x-`` keys too); a sequence is appended to; any
  other value replaces; ``null`` keeps the earlier value;
- the exceptions Compose makes, by key path: ``command``, ``entrypoint`` and
  ``healthcheck.test`` replace; ``environment``, ``labels``, ``dns``, ``dns_search``,
  ``dns_opt``, ``env_file``, ``sysctls``, ``tmpfs``, ``annotations`` and a few more become
  sequences (``KEY=VALUE``) and are appended to; ``networks``, ``depends_on`` and ``models`` of
  a service become mappings and merge; ``build`` given as a string is ``{context: …}``;
  ``logging`` merges only for the same driver; ``extra_hosts`` skips repeats; a network's
  ``ipam.config`` merges entries of the same subnet;
- then the sequences Compose keeps unique are made so, a later entry replacing an earlier one
  with the same key: a service's ``volumes`` by target, ``ports`` by published and target port,
  ``secrets`` and ``configs`` by target, ``environment``, ``labels``, ``dns`` … by ``KEY``.

Values are not interpolated (``${VAR}`` stays for Compose to expand in the rendered file).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from telenet.cli.compose.source import RESET, ComposeError, Override

Path = tuple[str, ...]
Merger = Callable[[Any, Any, Path], Any]


def _matches(path: Path, pattern: Path) -> bool:
    if len(path) != len(pattern):
        return False
    return all(p in ("*", k) for k, p in zip(path, pattern, strict=True))


def _go_text(value: Any) -> str:
    """A scalar as Go's ``%v`` prints it (``true``, ``1.5``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    return str(value)


def to_sequence(value: Any) -> list[Any]:
    """compose-go's ``convertIntoSequence``: a mapping as sorted ``KEY=VALUE`` (null: ``KEY``)."""
    if isinstance(value, dict):
        seq: list[Any] = []
        for key, item in value.items():
            if item is None:
                seq.append(key)
            elif isinstance(item, list):
                seq.extend(f"{key}={_go_text(each)}" for each in item)
            else:
                seq.append(f"{key}={_go_text(item)}")
        return sorted(seq)
    if isinstance(value, list):
        return list(value)
    if isinstance(value, str):
        return [value]
    return []


def to_mapping(value: Any, default: dict[str, Any] | None = None) -> dict[str, Any]:
    """compose-go's ``convertIntoMapping``: a list of names as ``{name: default}``."""
    if isinstance(value, dict):
        return value
    if isinstance(value, list):
        return {str(k): copy.deepcopy(default) if default is not None else None for k in value}
    return {}


def _to_sequence_merger(base: Any, other: Any, path: Path) -> Any:
    return to_sequence(base) + to_sequence(other)


def _override(base: Any, other: Any, path: Path) -> Any:
    return other


def _extra_hosts(base: Any, other: Any, path: Path) -> Any:
    right = to_sequence(base)
    return right + [v for v in to_sequence(other) if v not in right]


def _depends_on(base: Any, other: Any, path: Path) -> Any:
    default = {"condition": "service_started", "required": True}
    return _mappings(to_mapping(base, default), to_mapping(other, default), path)


def _mapping_of_names(base: Any, other: Any, path: Path) -> Any:
    return _mappings(to_mapping(base), to_mapping(other), path)


def _build(base: Any, other: Any, path: Path) -> Any:
    def as_mapping(value: Any) -> dict[str, Any]:
        if isinstance(value, str):
            return {"context": value}
        return value if isinstance(value, dict) else {}

    return _mappings(as_mapping(base), as_mapping(other), path)


def _logging(base: Any, other: Any, path: Path) -> Any:
    if not isinstance(base, dict) or not isinstance(other, dict):
        return other
    if "driver" not in base or "driver" not in other or base["driver"] == other["driver"]:
        return _mappings(base, other, path)
    return other


def _ipam_config(base: Any, other: Any, path: Path) -> Any:
    if not isinstance(base, list) or not isinstance(other, list):
        return other
    configs: list[dict[str, Any]] = []

    def index(subnet: Any) -> int:
        return next((i for i, c in enumerate(configs) if c.get("subnet") == subnet), -1)

    for original in base:
        right = to_mapping(original)
        for item in other:
            left = to_mapping(item)
            if left.get("subnet") != right.get("subnet") and index(left.get("subnet")) < 0:
                configs.append(left)
                continue
            merged = _mappings(copy.deepcopy(right), left, path)
            i = index(merged.get("subnet"))
            if i >= 0:
                configs[i] = merged
            else:
                configs.append(merged)
    return configs


SPECIAL: tuple[tuple[Path, Merger], ...] = tuple(
    (tuple(pattern.split(".")), merger)
    for pattern, merger in (
        ("networks.*.ipam.config", _ipam_config),
        ("networks.*.labels", _to_sequence_merger),
        ("volumes.*.labels", _to_sequence_merger),
        ("services.*.annotations", _to_sequence_merger),
        ("services.*.build", _build),
        ("services.*.build.args", _to_sequence_merger),
        ("services.*.build.additional_contexts", _to_sequence_merger),
        ("services.*.build.extra_hosts", _extra_hosts),
        ("services.*.build.labels", _to_sequence_merger),
        ("services.*.command", _override),
        ("services.*.depends_on", _depends_on),
        ("services.*.deploy.labels", _to_sequence_merger),
        ("services.*.dns", _to_sequence_merger),
        ("services.*.dns_opt", _to_sequence_merger),
        ("services.*.dns_search", _to_sequence_merger),
        ("services.*.entrypoint", _override),
        ("services.*.env_file", _to_sequence_merger),
        ("services.*.label_file", _to_sequence_merger),
        ("services.*.environment", _to_sequence_merger),
        ("services.*.extra_hosts", _extra_hosts),
        ("services.*.healthcheck.test", _override),
        ("services.*.labels", _to_sequence_merger),
        ("services.*.volumes.*.volume.labels", _to_sequence_merger),
        ("services.*.logging", _logging),
        ("services.*.models", _mapping_of_names),
        ("services.*.networks", _mapping_of_names),
        ("services.*.sysctls", _to_sequence_merger),
        ("services.*.tmpfs", _to_sequence_merger),
        ("services.*.ulimits.*", _override),
    )
)


def _merge(base: Any, other: Any, path: Path) -> Any:
    for pattern, merger in SPECIAL:
        if _matches(path, pattern):
            return merger(base, other, path)
    if other is None:
        return base
    if isinstance(base, dict):
        if not isinstance(other, dict):
            raise ComposeError(f"cannot override {'.'.join(path)}: a mapping by {_kind(other)}")
        return _mappings(base, other, path)
    if isinstance(base, list):
        if not isinstance(other, list):
            raise ComposeError(f"cannot override {'.'.join(path)}: a sequence by {_kind(other)}")
        return base + other
    return other


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a sequence"
    return "a single value"


def _mappings(base: dict[str, Any], other: dict[str, Any], path: Path) -> dict[str, Any]:
    for key, value in other.items():
        if key not in base:
            base[key] = value
        else:
            base[key] = _merge(base[key], value, (*path, key))
    return base


# -- !reset and !override


def _tagged(value: Any, path: Path, found: list[Path]) -> Any:
    """``value`` without its tags: reset keys dropped, overridden ones unwrapped; their paths."""
    if isinstance(value, Override):
        found.append(path)
        return _tagged(value.value, path, [])
    if isinstance(value, dict):
        plain = {}
        for key, item in value.items():
            if item is RESET:
                found.append((*path, key))
                continue
            plain[key] = _tagged(item, (*path, key), found)
        return plain
    if isinstance(value, list):
        # compose-go drops a reset item from this file's own sequence only.
        return [_tagged(item, path, found) for item in value if item is not RESET]
    return value


def _drop(document: dict[str, Any], path: Path) -> None:
    node: Any = document
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(path[-1], None)


# -- unique sequences


def _key_value(entry: Any) -> str:
    text = entry if isinstance(entry, str) else _go_text(entry)
    return text.partition("=")[0]


def volume_target(entry: Any) -> str:
    """The target of a service's volume entry, short (``SRC:TARGET[:MODE]``) or long syntax."""
    if isinstance(entry, dict):
        return str(entry.get("target", ""))
    if isinstance(entry, str):
        parts = entry.split(":")
        if len(parts) == 1:
            return parts[0]
        # A Windows drive (C:\\x) aside, the target is the second field.
        return parts[1]
    return ""


def _device(entry: Any) -> str:
    if isinstance(entry, dict):
        return str(entry.get("target", entry.get("source", "")))
    parts = str(entry).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _mount(default_dir: str) -> Callable[[Any], str]:
    def index(entry: Any) -> str:
        if isinstance(entry, dict):
            if "target" in entry:
                return str(entry["target"])
            return f"{default_dir}/{entry.get('source')}"
        return f"{default_dir}/{entry}"

    return index


def _env_file(entry: Any) -> str:
    return str(entry.get("path")) if isinstance(entry, dict) else str(entry)


def _port(entry: Any) -> str:
    if isinstance(entry, dict):
        host = entry.get("host_ip", "0.0.0.0")
        published = entry.get("published", "")
        protocol = entry.get("protocol", "tcp")
        return f"{host}:{published}:{entry.get('target')}/{protocol}"
    return str(entry)


UNIQUE: tuple[tuple[Path, Callable[[Any], str]], ...] = tuple(
    (tuple(pattern.split(".")), indexer)
    for pattern, indexer in (
        ("networks.*.labels", _key_value),
        ("networks.*.ipam.options", _key_value),
        ("services.*.annotations", _key_value),
        ("services.*.build.args", _key_value),
        ("services.*.build.additional_contexts", _key_value),
        ("services.*.build.platform", _key_value),
        ("services.*.build.tags", _key_value),
        ("services.*.build.labels", _key_value),
        ("services.*.cap_add", _key_value),
        ("services.*.cap_drop", _key_value),
        ("services.*.configs", _mount("")),
        ("services.*.deploy.labels", _key_value),
        ("services.*.devices", _device),
        ("services.*.dns", _key_value),
        ("services.*.dns_opt", _key_value),
        ("services.*.dns_search", _key_value),
        ("services.*.environment", _key_value),
        ("services.*.env_file", _env_file),
        ("services.*.expose", str),
        ("services.*.labels", _key_value),
        ("services.*.links", _key_value),
        ("services.*.networks.*.aliases", _key_value),
        ("services.*.networks.*.link_local_ips", _key_value),
        ("services.*.ports", _port),
        ("services.*.profiles", _key_value),
        ("services.*.secrets", _mount("/run/secrets")),
        ("services.*.sysctls", _key_value),
        ("services.*.tmpfs", _key_value),
        ("services.*.volumes", volume_target),
    )
)


def unique(value: Any, path: Path = ()) -> Any:
    """compose-go's ``EnforceUnicity``: a later entry with the same key replaces an earlier one."""
    if isinstance(value, dict):
        for key in list(value):
            value[key] = unique(value[key], (*path, key))
        return value
    if isinstance(value, list):
        for pattern, indexer in UNIQUE:
            if _matches(path, pattern):
                seq: list[Any] = []
                keys: dict[str, int] = {}
                for entry in value:
                    key = indexer(entry)
                    if key in keys:
                        seq[keys[key]] = entry
                    else:
                        keys[key] = len(seq)
                        seq.append(entry)
                return seq
    return value


def merge_documents(documents: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The project of several files' documents, in order (the inputs are not changed)."""
    merged: dict[str, Any] = {}
    for document in documents:
        tagged: list[Path] = []
        plain = _tagged(copy.deepcopy(document), (), tagged)
        for path in tagged:
            _drop(merged, path)
        merged = unique(_mappings(merged, plain, ()))
    return merged


def merged_sequence(values: Sequence[Any]) -> list[Any]:
    """Several values of a sequence key (``dns``) as one list, in order."""
    result: list[Any] = []
    for value in values:
        result += to_sequence(value)
    return result
