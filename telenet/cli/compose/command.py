# -*- test-case-name: tests.test_compose_command -*-
"""
``telenet compose [-f FILE ...] [--env-file F] [--profile P ...] [--project-name N]
[--project-directory D] SUBCOMMAND [ARGS ...]`` (docs/compose.md).

Every run reads the files, the extension and checks both (nothing starts on a bad file), then
finds Compose v2. Then:

- ``config``: the connections' facts are read (they must be up), the project is rendered to
  ``<private dir>/<project>/compose.yaml`` (with the bridges ``up`` opened, if any) and Compose
  prints it (``docker compose … config ARGS``, so its own options work);
- ``up``, ``create``, ``start``, ``restart``, ``run`` (``PREPARED``): the connections are
  connected and the bridges opened and probed (``telenet.cli.compose.session``), the project
  rendered with the bridges' ports, and Compose run on the rendered file; an attached ``up``
  closes the bridges when Compose returns, the others leave them open until ``stop``/``down``;
- ``stop`` closes the bridges (of the services it stops), ``down`` removes the telemount
  volumes and bridges and quits the connections telenet started, each once Compose succeeded;
- the others (``PASS_THROUGH``) run Compose on the rendered file while the project has one,
  else on the user's own files, which Compose reads as they are (it ignores ``x-`` keys).

Compose is always given the project's name, its directory, the files, the env files and the
profiles, so that it sees the project telenet saw. The private directory is
``$XDG_RUNTIME_DIR/telenet/compose`` (else ``~/.cache/telenet/compose``), mode 0700; the
user's files are never written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from telenet.cli.compose.arguments import ENDING, PREPARED, RENDERED, SUBCOMMANDS
from telenet.cli.compose.discovery import ComposeProgram, find_compose
from telenet.cli.compose.extcheck import check_extension
from telenet.cli.compose.extension import Extension
from telenet.cli.compose.extmerge import read_extension
from telenet.cli.compose.facts import FactsReader
from telenet.cli.compose.mounts import plan_mounts
from telenet.cli.compose.project import ComposeOptions, Project, load_project
from telenet.cli.compose.render import BridgeFacts, Rendered, render
from telenet.cli.compose.session import Session
from telenet.cli.compose.source import ComposeError, dump_yaml
from telenet.cli.compose.state import ProjectState, StateStore, private_root, write_private
from telenet.cli.config import print_warning
from telenet.cli.interfaces import IDocker
from telenet.cli.lookup import ConnectionLookup
from telenet.cli.workload import Probe, bridge_host
from telenet.core.processes import AttachedProcesses, BlockingProcesses, run_attached, run_blocking

RENDERED_FILE = "compose.yaml"


def dump(document: dict[str, object], project: Project) -> str:
    header = (
        f"# Rendered by telenet compose for project {project.name} from "
        f"{', '.join(project.files)}.\n# Written again on each run: edit those files instead.\n"
    )
    return header + dump_yaml(document)


@attrs.define
class ComposeCommand:
    """I run ``telenet compose``: the files read and checked, Compose found and run."""

    docker: IDocker
    lookup: ConnectionLookup
    say: Callable[[str], None] = print
    warn: Callable[[str], None] = print_warning
    run: BlockingProcesses = run_blocking
    attached: AttachedProcesses = run_attached
    cwd: Callable[[], str] = os.getcwd
    environ: Mapping[str, str] = attrs.field(factory=lambda: os.environ)
    docker_cli: str = "docker"
    connector: Any = None
    probe: Probe | None = None

    def load(self, options: ComposeOptions) -> tuple[Project, Extension]:
        """The project and its extension, checked; ComposeError for the first problem."""
        project = load_project(options, self.cwd(), self.environ)
        extension = read_extension(project.documents, project.services(), self.warn)
        check_extension(project, extension, project.active_services())
        return project, extension

    def session(self) -> Session:
        return Session(
            self.docker,
            self.lookup,
            StateStore(private_root(self.environ)),
            self.connector,
            self.say,
            self.probe,
        )

    def main(self, options: ComposeOptions, subcommand: str, args: list[str]) -> int:
        """The exit code of Compose (or ComposeError before Compose runs)."""
        if subcommand not in SUBCOMMANDS:
            raise ComposeError(
                f"{subcommand} is not a subcommand telenet compose runs; it runs: "
                f"{', '.join(SUBCOMMANDS)}"
            )
        project, extension = self.load(options)
        program = find_compose(self.run, self.docker_cli)
        session = self.session()
        state = session.state(project.name)
        if subcommand in PREPARED:
            return self.start(session, program, project, extension, state, subcommand, args)
        if subcommand in RENDERED:
            ports = {b_service: b.port for b in state.bridges for b_service in b.services}
            path, _ = self.write_rendered(project, extension, ports)
            return self.attached(self.command(program, project, (path,), subcommand, args))
        files = project.files
        if state.file is not None and os.path.exists(state.file):
            files = (state.file,)
        code = self.attached(self.command(program, project, files, subcommand, args))
        if subcommand in ENDING and code != 0:
            self.say(f"Compose's {subcommand} failed: telenet leaves the bridges open")
        elif subcommand == "down":
            session.cleanup(state)
        elif subcommand == "stop":
            session.close_bridges(state, services_named(args))
        return code

    def start(
        self,
        session: Session,
        program: ComposeProgram,
        project: Project,
        extension: Extension,
        state: ProjectState,
        subcommand: str,
        args: list[str],
    ) -> int:
        """
        ``up``, ``create``, ``start``, ``restart``, ``run``: connections and bridges made, the
        project rendered with the bridges' ports, Compose run; an attached ``up`` closes the
        bridges when Compose returns (after ^C too: Compose stops the services).
        """
        targeted = services_targeted(subcommand, args, project.services())
        active = project.active_services(targeted)
        check_extension(project, extension, active)
        ports = session.prepare(
            state, extension, active, bridged_services(project, extension, active)
        )
        try:
            path, rendered = self.write_rendered(project, extension, ports, targeted)
        except BaseException:
            session.undo(state)
            raise
        state.file = path
        state.argv = self.command(program, project, (path,), "", [])[:-1]
        session.store.write(state)
        self.remake(session, state, rendered, subcommand)
        try:
            return self.attached(self.command(program, project, (path,), subcommand, args))
        finally:
            if subcommand == "up" and not detached(args):
                session.close_bridges(state)

    def remake(
        self, session: Session, state: ProjectState, rendered: Rendered, subcommand: str
    ) -> None:
        """
        The telemount volumes Docker has for a bridge that is closed (after ``stop``) made
        again for the new one: Docker keeps a volume's options, so the containers that mount
        one are removed with it (``rm --force --stop``), and Compose makes both again
        (``start``/``restart`` cannot: ``up --detach --no-deps`` does, first).
        """
        stale, services = session.stale_volumes(state.project, rendered)
        if not stale:
            return
        if services:
            self.say(
                f"Making {', '.join(services)} again: the bridge of "
                f"{', '.join(stale)} was closed (telenet compose stop)"
            )
            self.attached([*state.argv, "rm", "--force", "--stop", *services])
        for volume in stale:
            session.remove_volume(volume)
        if services and subcommand in ("start", "restart"):
            self.attached([*state.argv, "up", "--detach", "--no-deps", *services])

    def write_rendered(
        self,
        project: Project,
        extension: Extension,
        ports: Mapping[str, int],
        targeted: Sequence[str] = (),
    ) -> tuple[str, Rendered]:
        """The project rendered into the private directory: the file's path."""
        rendered = self.render(project, extension, ports, targeted)
        path = write_private(
            private_root(self.environ),
            project.name,
            RENDERED_FILE,
            dump(rendered.document, project),
        )
        for note in rendered.notes:
            self.say(note)
        self.say(f"Rendered {path}")
        return path, rendered

    def down_projects_of(self, connection: str) -> list[str]:
        """``compose down`` for each project that uses ``connection`` (``telenet quit``)."""
        session = self.session()
        done = []
        for name in session.store.projects_of(connection):
            state = session.state(name)
            if state.argv:
                self.say(f"Taking down compose project {name}, which uses {connection}")
                self.attached([*state.argv, "down"])
            session.cleanup(state, quit_started=False)
            done.append(name)
        return done

    def render(
        self,
        project: Project,
        extension: Extension,
        ports: Mapping[str, int] | None = None,
        targeted: Sequence[str] = (),
    ) -> Rendered:
        """
        The project rendered with the facts of the running connections; ``ports``: the
        bridges telenet opened for the project, by service.
        """
        active = project.active_services(targeted)
        reader = FactsReader(self.docker, self.lookup.config, self.lookup)
        if extension.used_connections(set(active)):
            self.lookup.check_docker()
        bridged = bridged_services(project, extension, active)
        ports = {s: p for s, p in (ports or {}).items() if s in bridged}
        unknown = sorted(set(bridged) - set(ports))
        facts, notes = reader.preview(project.name, extension, active, unknown)
        bridges = dict(facts.bridges)
        for service, port in ports.items():
            spec = extension.services[service]
            connected = reader.connected(spec.connection)
            bridges[service] = BridgeFacts(bridge_host(connected.connection), port, str(spec.agent))
        facts = attrs.evolve(facts, bridges=bridges)
        rendered = render(project.model, extension, active, facts)
        return attrs.evolve(rendered, notes=(*notes, *rendered.notes))

    @staticmethod
    def command(
        program: ComposeProgram,
        project: Project,
        files: tuple[str, ...],
        subcommand: str,
        args: list[str],
    ) -> list[str]:
        """Compose's command line: the project as telenet saw it, then the subcommand."""
        argv = [*program.argv, "--project-name", project.name]
        argv += ["--project-directory", project.directory]
        for file in files:
            argv += ["--file", file]
        for env_file in project.env_files:
            argv += ["--env-file", env_file]
        for profile in project.profiles:
            argv += ["--profile", profile]
        return [*argv, subcommand, *args]


def detached(args: Sequence[str]) -> bool:
    """Whether ``up ARGS`` returns at once: ``-d``, ``--detach`` or ``--wait``."""
    for token in args:
        if token == "--":
            break
        if token in ("--detach", "--wait") or token.startswith("--wait="):
            return True
        if token.startswith("-") and not token.startswith("--") and "d" in token[1:]:
            return True
    return False


def services_named(args: Sequence[str]) -> list[str]:
    """The services ``stop ARGS`` names (its one option with a value is ``-t``/``--timeout``)."""
    named = []
    skip = False
    for token in args:
        if skip:
            skip = False
        elif token in ("-t", "--timeout"):
            skip = True
        elif not token.startswith("-"):
            named.append(token)
    return named


def services_targeted(
    subcommand: str, args: Sequence[str], services: Mapping[str, Any]
) -> list[str]:
    """
    The services the command names (Compose activates them whatever their profiles): for
    ``run``, the first argument that is a service; else every one.
    """
    named = [token for token in args if not token.startswith("-") and token in services]
    return named[:1] if subcommand == "run" else named


def bridged_services(project: Project, extension: Extension, active: Sequence[str]) -> list[str]:
    """The active services that get telemount volumes, so need a bridge."""
    declared = project.model.get("volumes") or {}
    plan = plan_mounts(project.services(), active, extension, declared)
    return sorted({volume.service for volume in plan.volumes})
