# -*- test-case-name: tests.test_compose_render -*-
"""
Which volumes of a compose project become telemount volumes when services are engaged, and
which are read-only (docs/compose.md, "Volumes").

For each remote mount ``PATH[:ro]`` of an engaged service, the service's volume entry whose
target is ``PATH`` decides:

- none: a new telemount volume ``telenet-<service>-<i>`` is mounted there (as ``telenet
  engage`` mounts it);
- a named compose volume ``V``: unless a ``local`` policy keeps it, ``V`` is replaced by the
  telemount volume ``telenet-V``, in every service that mounts it (a shared volume stays
  shared); two engaged services that map ``V`` to different remote directories are an error;
- an anonymous volume: replaced by ``telenet-<service>-<i>``;
- a bind mount, a tmpfs or anything else the user mounts from here: kept (the user's local
  path wins, as ``-v`` wins over a remote mount in ``telenet engage``), with a note.

Read-only: an entry is read-only when the remote mount is ``:ro``, the entry is (``:ro``,
``read_only: true``), or the volume's policy is ``remoteReadOnly``; a telemount volume is
mounted read-only (``ro`` option) only when every entry that uses it is, so a volume two
services share stays writable if one of them needs it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from telenet.cli.compose.extension import LOCAL, REMOTE_READ_ONLY, Extension, ServiceSpec
from telenet.cli.compose.source import error_at

_BIND_PREFIXES = ("/", ".", "~")
_MODES_RO = ("ro", "readonly")


@attrs.frozen
class VolumeEntry:
    """A service's volume entry, short or long syntax."""

    index: int
    kind: str
    source: str | None
    target: str
    readonly: bool

    @property
    def named(self) -> str | None:
        """The compose volume it mounts, if it mounts a named one."""
        return self.source if self.kind == "volume" and self.source else None


def _clean(path: str) -> str:
    return posixpath.normpath(path) if path not in ("", "/") else path


def parse_entry(index: int, entry: Any) -> VolumeEntry:
    """One entry of a service's ``volumes``."""
    if isinstance(entry, dict):
        kind = str(entry.get("type") or "volume")
        source = entry.get("source")
        return VolumeEntry(
            index=index,
            kind=kind,
            source=str(source) if source not in (None, "") else None,
            target=_clean(str(entry.get("target") or "")),
            readonly=entry.get("read_only") is True,
        )
    parts = str(entry).split(":")
    if len(parts) == 1:
        return VolumeEntry(index, "volume", None, _clean(parts[0]), False)
    source, target = parts[0], parts[1]
    modes = parts[2].split(",") if len(parts) > 2 else []
    if source.startswith(_BIND_PREFIXES):
        kind = "bind"
    elif "$" in source:
        kind = "unknown"
    else:
        kind = "volume"
    return VolumeEntry(index, kind, source, _clean(target), any(m in _MODES_RO for m in modes))


def service_entries(service: Mapping[str, Any]) -> list[VolumeEntry]:
    volumes = service.get("volumes") or []
    return [parse_entry(i, e) for i, e in enumerate(volumes if isinstance(volumes, list) else [])]


@attrs.frozen
class RemoteVolume:
    """A telemount volume of the rendered project, served through ``service``'s bridge."""

    key: str
    service: str
    container: str
    path: str
    readonly: bool
    replaces: str | None = None


@attrs.frozen
class EntryChange:
    """A service's volume entry that mounts a telemount volume (``index`` None: a new one)."""

    service: str
    index: int | None
    volume: str
    target: str
    readonly: bool


@attrs.frozen
class MountPlan:
    volumes: tuple[RemoteVolume, ...] = ()
    changes: tuple[EntryChange, ...] = ()
    notes: tuple[str, ...] = ()


def free_key(base: str, taken: set[str]) -> str:
    """``base``, or ``base-2``, ``base-3``… : the first not in ``taken`` (which it joins)."""
    key, n = base, 1
    while key in taken:
        n += 1
        key = f"{base}-{n}"
    taken.add(key)
    return key


@attrs.define
class _Shared:
    """A named compose volume that remote mounts replace: who maps it, from where."""

    owner: ServiceSpec
    path: str
    policy_ro: bool
    remote_ro: dict[tuple[str, str], bool] = attrs.field(factory=dict)


def plan_mounts(
    services: Mapping[str, Mapping[str, Any]],
    active: Iterable[str],
    extension: Extension,
    declared: Iterable[str],
) -> MountPlan:
    """
    The telemount volumes and entry changes for the ``active`` services; ``declared`` are
    the project's top-level volume keys (generated keys avoid them). ComposeError when two
    engaged services map one volume to different remote directories.
    """
    active = [s for s in active if s in services]
    entries = {s: service_entries(services[s]) for s in active}
    taken = set(declared)
    volumes: list[RemoteVolume] = []
    changes: list[EntryChange] = []
    notes: list[str] = []
    shared: dict[str, _Shared] = {}
    for name in active:
        spec = extension.services.get(name)
        if spec is None or not spec.engaged:
            continue
        for i, mount in enumerate(spec.remote_mounts):
            at = [e for e in entries[name] if e.target == mount.path]
            entry = at[-1] if at else None
            volume = entry.named if entry is not None else None
            if volume is not None:
                policy = extension.policy(volume)
                if policy is not None and policy.policy == LOCAL:
                    notes.append(
                        f"Skipping auto-mounting of {mount.path} in {name}: volume {volume} "
                        "is local"
                    )
                    continue
                _share(
                    shared,
                    volume,
                    spec,
                    i,
                    mount.path,
                    policy is not None and (policy.policy == REMOTE_READ_ONLY),
                )
                shared[volume].remote_ro[(name, mount.path)] = mount.readonly
                continue
            if entry is not None and entry.kind != "volume":
                notes.append(
                    f"Skipping auto-mounting of {mount.path} in {name}: the service mounts "
                    f"a {entry.kind} there"
                )
                continue
            key = free_key(f"telenet-{name}-{i}", taken)
            readonly = mount.readonly or (entry is not None and entry.readonly)
            volumes.append(RemoteVolume(key, name, spec.container, mount.path, readonly))
            changes.append(
                EntryChange(name, entry.index if entry else None, key, mount.path, readonly)
            )
    for volume, share in shared.items():
        key = free_key(f"telenet-{volume}", taken)
        uses = []
        for name in active:
            for entry in entries[name]:
                if entry.named != volume:
                    continue
                readonly = (
                    entry.readonly
                    or share.policy_ro
                    or share.remote_ro.get((name, entry.target), False)
                )
                uses.append(EntryChange(name, entry.index, key, entry.target, readonly))
        changes += uses
        volumes.append(
            RemoteVolume(
                key,
                share.owner.service,
                share.owner.container,
                share.path,
                readonly=all(u.readonly for u in uses),
                replaces=volume,
            )
        )
    return MountPlan(tuple(volumes), tuple(changes), tuple(notes))


def _share(
    shared: dict[str, _Shared],
    volume: str,
    spec: ServiceSpec,
    index: int,
    path: str,
    policy_ro: bool,
) -> None:
    earlier = shared.get(volume)
    if earlier is None:
        shared[volume] = _Shared(spec, path, policy_ro)
        return
    owner = earlier.owner
    if (owner.agent, owner.container, earlier.path) != (spec.agent, spec.container, path):
        raise error_at(
            spec.mount_wheres[index] if index < len(spec.mount_wheres) else spec.where,
            f"services.{spec.service}",
            f"volume {volume} is the remote mount {path} of container {spec.container} at "
            f"{spec.agent} here, and {earlier.path} of container {owner.container} at "
            f"{owner.agent} in service {owner.service}: give each service its own volume",
        )
    if sorted(owner.mount_options) != sorted(spec.mount_options):
        raise error_at(
            spec.where,
            f"services.{spec.service}",
            f"volume {volume} is mounted with mountOptions "
            f"[{', '.join(spec.mount_options)}] here and [{', '.join(owner.mount_options)}] in "
            f"service {owner.service}: one volume shows one owner",
        )
