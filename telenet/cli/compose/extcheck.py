# -*- test-case-name: tests.test_compose_extension -*-
"""
The extension checked against the merged project, before anything starts: what is decidable
from the files alone. Each failure is one line naming the file, the line and the key path.

- a ``mounts`` policy naming a volume the project does not have;
- a ``remote`` or ``remoteReadOnly`` policy for a volume that no engaged service mounts at one of
  its ``remoteMounts`` (a remote mount no service uses);
- a service of a connection with ``network_mode`` (it could not join the connection's network);
- a service on two connections whose declared subnets overlap;
- for the active services, two engaged services mapping one volume to different remote
  directories (``telenet.cli.compose.mounts``).

What needs the daemons (their routed subnets, an agent that does not answer) is checked by the
renderer and the orchestration, still before Compose runs.
"""

from __future__ import annotations

from collections.abc import Iterable

from telenet.cli.compose.extension import LOCAL, Extension
from telenet.cli.compose.mounts import plan_mounts, service_entries
from telenet.cli.compose.project import Project
from telenet.cli.compose.render import overlapping
from telenet.cli.compose.source import error_at


def check_extension(project: Project, extension: Extension, active: Iterable[str]) -> None:
    """ComposeError for the first problem the module docstring lists."""
    services = project.services()
    _check_policies(project, extension)
    for name, spec in extension.services.items():
        service = services.get(name) or {}
        if service.get("network_mode") is not None:
            raise error_at(
                project.locator.where("services", name, "network_mode"),
                f"services.{name}.network_mode",
                f"{service['network_mode']!r}: a service of a connection joins its network; "
                f"remove network_mode (or the service's {extension.key})",
            )
        declared = {c.name: c.subnets for c in extension.connections}
        names = spec.connections
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                pairs = overlapping(declared.get(first, ()), declared.get(second, ()))
                if pairs:
                    raise error_at(
                        spec.connection_where,
                        f"services.{name}.{extension.key}.connection",
                        f"connections {first} and {second} route overlapping subnets "
                        f"({pairs[0][0]} and {pairs[0][1]}); one service cannot use both",
                    )
    volumes = project.model.get("volumes") or {}
    plan_mounts(services, active, extension, volumes.keys() if isinstance(volumes, dict) else ())


def _check_policies(project: Project, extension: Extension) -> None:
    services = project.services()
    declared = project.model.get("volumes") or {}
    used = {
        entry.named: name
        for name, service in services.items()
        if isinstance(service, dict)
        for entry in service_entries(service)
        if entry.named
    }
    remote = set()
    for name, spec in extension.services.items():
        if not spec.engaged or not isinstance(services.get(name), dict):
            continue
        paths = {m.path for m in spec.remote_mounts}
        remote |= {
            e.named for e in service_entries(services[name]) if e.named and e.target in paths
        }
    for i, policy in enumerate(extension.mounts):
        if policy.volume is None:
            continue
        path = f"{extension.key}.mounts[{i}].volume"
        if policy.volume not in declared and policy.volume not in used:
            raise error_at(policy.where, path, f"no volume {policy.volume!r} in the project")
        if policy.policy != LOCAL and policy.volume not in remote:
            raise error_at(
                policy.where,
                path,
                f"volume {policy.volume} is {policy.policy}, but no engaged service mounts it at "
                "one of its remoteMounts (a remote mount no service uses)",
            )
