# -*- test-case-name: tests.test_compose_command -*-
"""
``telenet compose [-f FILE ...] [--env-file F] [--profile P ...] [--project-name N]
[--project-directory D] SUBCOMMAND [ARGS ...]`` (docs/compose.md).

Every run reads the files, the extension and checks both (nothing starts on a bad file), then
finds Compose v2. Then:

- ``config``: the connections' facts are read (they must be up), the project is rendered to
  ``<private dir>/<project>/compose.yaml`` and Compose prints it (``docker compose … config
  ARGS``, so its own options work);
- the subcommands that need no connection work (``PASS_THROUGH``) run Compose on the user's
  own files, which Compose reads as they are (it ignores ``x-`` keys);
- the others (``up``, ``down``, ``stop``, ``start``, ``create``, ``run``, …) come with the
  orchestration of connections and bridges, in the next stage; they are refused by name.

Compose is always given the project's name, its directory, the files, the env files and the
profiles, so that it sees the project telenet saw. The private directory is
``$XDG_RUNTIME_DIR/telenet/compose`` (else ``~/.cache/telenet/compose``), mode 0700; the
user's files are never written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping

import attrs

from telenet.cli.compose.arguments import RENDERED, SUBCOMMANDS
from telenet.cli.compose.discovery import ComposeProgram, find_compose
from telenet.cli.compose.extcheck import check_extension
from telenet.cli.compose.extension import Extension
from telenet.cli.compose.extmerge import read_extension
from telenet.cli.compose.facts import FactsReader
from telenet.cli.compose.mounts import plan_mounts
from telenet.cli.compose.project import ComposeOptions, Project, load_project
from telenet.cli.compose.render import Rendered, render
from telenet.cli.compose.source import ComposeError, dump_yaml
from telenet.cli.config import print_warning
from telenet.cli.interfaces import IDocker
from telenet.cli.lookup import ConnectionLookup
from telenet.core.processes import AttachedProcesses, BlockingProcesses, run_attached, run_blocking

RENDERED_FILE = "compose.yaml"


def private_root(environ: Mapping[str, str]) -> str:
    """Where rendered files go: ``$XDG_RUNTIME_DIR/telenet/compose``, else under ~/.cache."""
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "telenet", "compose")
    home = environ.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".cache", "telenet", "compose")


def dump(document: dict[str, object], project: Project) -> str:
    header = (
        f"# Rendered by telenet compose for project {project.name} from "
        f"{', '.join(project.files)}.\n# Written again on each run: edit those files instead.\n"
    )
    return header + dump_yaml(document)


def write_private(root: str, project: Project, text: str) -> str:
    """The rendered text in ``root/<project>/compose.yaml`` (0600, replaced atomically)."""
    directory = os.path.join(root, project.name)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    fd, tmp = tempfile.mkstemp(prefix=".compose-", suffix=".yaml", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        path = os.path.join(directory, RENDERED_FILE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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

    def load(self, options: ComposeOptions) -> tuple[Project, Extension]:
        """The project and its extension, checked; ComposeError for the first problem."""
        project = load_project(options, self.cwd(), self.environ)
        extension = read_extension(project.documents, project.services(), self.warn)
        check_extension(project, extension, project.active_services())
        return project, extension

    def main(self, options: ComposeOptions, subcommand: str, args: list[str]) -> int:
        """The exit code of Compose (or ComposeError before Compose runs)."""
        if subcommand not in SUBCOMMANDS:
            raise ComposeError(
                f"{subcommand} is not available yet (it needs the connections and bridges of "
                f"the next stage); telenet compose runs: {', '.join(SUBCOMMANDS)}"
            )
        project, extension = self.load(options)
        program = find_compose(self.run, self.docker_cli)
        if subcommand in RENDERED:
            rendered = self.render(project, extension)
            path = write_private(
                private_root(self.environ), project, dump(rendered.document, project)
            )
            for note in rendered.notes:
                self.say(note)
            self.say(f"Rendered {path}")
            return self.attached(self.command(program, project, (path,), subcommand, args))
        return self.attached(self.command(program, project, project.files, subcommand, args))

    def render(self, project: Project, extension: Extension) -> Rendered:
        """The project rendered with the facts of the running connections."""
        active = project.active_services()
        reader = FactsReader(self.docker, self.lookup.config, self.lookup)
        if extension.used_connections(set(active)):
            self.lookup.check_docker()
        declared = project.model.get("volumes") or {}
        plan = plan_mounts(project.services(), active, extension, declared)
        bridged = sorted({volume.service for volume in plan.volumes})
        facts, notes = reader.preview(project.name, extension, active, bridged)
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
