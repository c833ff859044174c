# -*- test-case-name: tests.test_compose_up -*-
"""
What ``telenet compose`` made for a project, kept in its private directory
(``<root>/<project>/state.json``, beside the rendered ``compose.yaml``) so that a later
``down``, ``stop``, ``telenet quit`` or ``telenet status`` finds it from a fresh process.

Bridges live in a daemon, which has no labels: they are recorded here, each written *before*
anything else is done with it, so that a run that crashes leaves a record a later ``down``
cleans up from. The telemount volumes are found through Docker instead (their labels:
Compose's project label and ``telenet.cli.connection``), so a lost state file never hides one.

Light (the standard library and attrs): ``telenet status`` reads it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping

import attrs

STATE_FILE = "state.json"


def private_root(environ: Mapping[str, str]) -> str:
    """Where rendered files go: ``$XDG_RUNTIME_DIR/telenet/compose``, else under ~/.cache."""
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "telenet", "compose")
    home = environ.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".cache", "telenet", "compose")


def write_private(root: str, project: str, name: str, text: str) -> str:
    """``text`` in ``root/<project>/<name>`` (directory 0700, file 0600, replaced atomically)."""
    directory = os.path.join(root, project)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        path = os.path.join(directory, name)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


@attrs.frozen
class Bridge:
    """A bridge telenet opened for a project: its daemon's connection, agent, port, users."""

    connection: str
    agent: str
    port: int
    services: tuple[str, ...] = ()


@attrs.define
class ProjectState:
    """What telenet made for one project."""

    project: str
    connections: list[str] = attrs.field(factory=list)
    started: list[str] = attrs.field(factory=list)
    bridges: list[Bridge] = attrs.field(factory=list)
    file: str | None = None
    #: Compose's command line for the project, without the subcommand (``telenet quit``).
    argv: list[str] = attrs.field(factory=list)

    def to_json(self) -> str:
        data = attrs.asdict(self)
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ProjectState:
        data = json.loads(text)
        bridges = [
            Bridge(
                str(b["connection"]),
                str(b["agent"]),
                int(b["port"]),
                tuple(str(s) for s in b.get("services") or ()),
            )
            for b in data.get("bridges") or []
        ]
        return cls(
            project=str(data["project"]),
            connections=[str(c) for c in data.get("connections") or []],
            started=[str(c) for c in data.get("started") or []],
            bridges=bridges,
            file=data.get("file"),
            argv=[str(a) for a in data.get("argv") or []],
        )


@attrs.define
class StateStore:
    """The projects' states under ``root``."""

    root: str

    def path(self, project: str) -> str:
        return os.path.join(self.root, project, STATE_FILE)

    def read(self, project: str) -> ProjectState | None:
        """The project's state; None when there is none (or it cannot be read)."""
        try:
            with open(self.path(project), encoding="utf-8") as f:
                return ProjectState.from_json(f.read())
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, state: ProjectState) -> None:
        write_private(self.root, state.project, STATE_FILE, state.to_json())

    def remove(self, project: str) -> None:
        """The project's state and rendered file gone, and its directory when empty."""
        directory = os.path.join(self.root, project)
        for name in (STATE_FILE, "compose.yaml"):
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                pass
        try:
            os.rmdir(directory)
        except OSError:
            pass

    def projects(self) -> list[ProjectState]:
        """Every project with a state, by name."""
        try:
            names = sorted(os.listdir(self.root))
        except OSError:
            return []
        found = (self.read(name) for name in names)
        return [state for state in found if state is not None]

    def projects_of(self, connection: str) -> list[str]:
        """The names of the projects that use ``connection``."""
        return [s.project for s in self.projects() if connection in s.connections]
