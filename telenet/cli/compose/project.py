# -*- test-case-name: tests.test_compose_project -*-
"""
Which project ``telenet compose`` works on, decided as ``docker compose`` decides it.

- Files: every ``-f``, in order; without one, ``COMPOSE_FILE`` (split on
  ``COMPOSE_PATH_SEPARATOR``, else ``:``); without that, the first of ``compose.yaml``,
  ``compose.yml``, ``docker-compose.yml``, ``docker-compose.yaml`` in the working directory or
  the nearest parent having one, with the first ``compose.override.yml``,
  ``compose.override.yaml``, ``docker-compose.override.yml`` or ``docker-compose.override.yaml``
  beside it. Standard input (``-f -``) is refused: telenet reads the files twice.
- The project directory: ``--project-directory``, else the first file's directory. Relative
  paths in the files resolve against it, so it is passed to Compose with the rendered file.
- The environment Compose reads ``COMPOSE_*`` from: this process's, over the ``--env-file``
  files (else ``.env`` in the working directory).
- The name: ``-p``/``--project-name``, else ``COMPOSE_PROJECT_NAME``, else the top-level
  ``name``, else the project directory's base name, lower-cased and stripped to
  ``[a-z0-9_-]``.
- Profiles: every ``--profile``, else ``COMPOSE_PROFILES`` (comma-separated). A service with
  ``profiles`` is active when one of them is given (or ``*`` is), or when the command names it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from telenet.cli.compose.merge import merge_documents
from telenet.cli.compose.source import (
    ComposeError,
    Locator,
    Override,
    SourceDocument,
    load_source,
)

DEFAULT_FILES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
DEFAULT_OVERRIDES = (
    "compose.override.yml",
    "compose.override.yaml",
    "docker-compose.override.yml",
    "docker-compose.override.yaml",
)

_PROJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@attrs.frozen
class ComposeOptions:
    """The options of ``telenet compose`` before its subcommand (Compose's own)."""

    files: tuple[str, ...] = ()
    env_files: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()
    project_name: str | None = None
    project_directory: str | None = None


@attrs.frozen
class Project:
    """A project as Compose will see it: files, directory, name, profiles, the merged model."""

    name: str
    directory: str
    files: tuple[str, ...]
    env_files: tuple[str, ...]
    profiles: tuple[str, ...]
    documents: tuple[SourceDocument, ...]
    model: dict[str, Any]

    @property
    def locator(self) -> Locator:
        return Locator(self.documents)

    def services(self) -> dict[str, dict[str, Any]]:
        services = self.model.get("services") or {}
        return services if isinstance(services, dict) else {}

    def active_services(self, targeted: Iterable[str] = ()) -> list[str]:
        """The services that run with these profiles, or because the command names them."""
        return [
            name
            for name, service in self.services().items()
            if is_active(service, self.profiles) or name in set(targeted)
        ]


def is_active(service: Any, profiles: Iterable[str]) -> bool:
    """Compose's rule: no ``profiles``, or one of them given, or ``*`` given."""
    own = service.get("profiles") if isinstance(service, dict) else None
    if not own:
        return True
    given = set(profiles)
    return "*" in given or any(p in given for p in own)


def normalize_project_name(name: str) -> str:
    """compose-go's ``NormalizeProjectName``: lower-case, only ``[a-z0-9_-]``, no leading ``_-``."""
    return "".join(re.findall(r"[a-z0-9_-]", name.lower())).lstrip("_-")


def check_project_name(name: str, what: str) -> str:
    if not _PROJECT_NAME.match(name):
        raise ComposeError(
            f"{what} {name!r} is not a project name: lower-case letters, digits, '-' and '_', "
            "starting with a letter or digit"
        )
    return name


def parse_dotenv(text: str, path: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (``export``, quotes and comments allowed), as Compose's ``.env``."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, eq, value = line.partition("=")
        key = key.strip()
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*$", key):
            raise ComposeError(f"{path}:{number}: {key!r} is not a variable name")
        if not eq:
            if key in os.environ:
                values[key] = os.environ[key]
            continue
        value = value.strip()
        quote = value[:1]
        end = value.find(quote, 1) if quote in ("'", '"') else -1
        if end > 0:
            value = value[1:end]
            if quote == '"':
                value = value.replace("\\n", "\n")
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].rstrip()
        values[key] = value
    return values


def _read_dotenv(path: str, required: bool) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as f:
            return parse_dotenv(f.read(), path)
    except FileNotFoundError:
        if required:
            raise ComposeError(f"--env-file {path}: no such file") from None
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ComposeError(f"{path}: cannot read it: {e}") from None


def compose_environment(
    options: ComposeOptions, cwd: str, environ: Mapping[str, str]
) -> tuple[dict[str, str], tuple[str, ...]]:
    """The environment Compose reads ``COMPOSE_*`` from, and the env files given (absolute)."""
    env_files = tuple(os.path.join(cwd, f) for f in options.env_files)
    values: dict[str, str] = {}
    if env_files:
        for path in env_files:
            values.update(_read_dotenv(path, required=True))
    else:
        values.update(_read_dotenv(os.path.join(_working_dir(options, cwd), ".env"), False))
    values.update(environ)
    return values, env_files


def _working_dir(options: ComposeOptions, cwd: str) -> str:
    if options.project_directory:
        return os.path.join(cwd, options.project_directory)
    if options.files and options.files[0] != "-":
        return os.path.dirname(os.path.join(cwd, options.files[0]))
    return cwd


def find_files(options: ComposeOptions, cwd: str, environment: Mapping[str, str]) -> list[str]:
    """The compose files, absolute, in merge order (see the module docstring)."""
    given = list(options.files)
    if not given and environment.get("COMPOSE_FILE"):
        separator = environment.get("COMPOSE_PATH_SEPARATOR") or os.pathsep
        given = [f for f in environment["COMPOSE_FILE"].split(separator) if f]
    if given:
        if "-" in given:
            raise ComposeError(
                "-f - (standard input) is not supported: telenet compose reads the files "
                "before Compose does; give a file"
            )
        return [os.path.normpath(os.path.join(cwd, f)) for f in given]
    directory = _working_dir(options, cwd)
    while True:
        for name in DEFAULT_FILES:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                found = [path]
                override = next(
                    (
                        os.path.join(directory, o)
                        for o in DEFAULT_OVERRIDES
                        if os.path.isfile(os.path.join(directory, o))
                    ),
                    None,
                )
                return found + ([override] if override else [])
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    raise ComposeError(
        f"no compose file: none of {', '.join(DEFAULT_FILES)} in {_working_dir(options, cwd)} "
        "or a parent directory; give one with -f FILE"
    )


def _absolute_extends(data: dict[str, Any], file: str) -> None:
    """An ``extends.file`` is relative to the file that says it: made absolute."""
    services = data.get("services")
    if isinstance(services, Override):
        services = services.value
    if not isinstance(services, dict):
        return
    for service in services.values():
        extends = service.get("extends") if isinstance(service, dict) else None
        if isinstance(extends, dict) and isinstance(extends.get("file"), str):
            target = os.path.expanduser(extends["file"])
            extends["file"] = os.path.normpath(os.path.join(os.path.dirname(file), target))


def load_project(options: ComposeOptions, cwd: str, environ: Mapping[str, str]) -> Project:
    """Find, read and merge the project's files; ComposeError for anything wrong with them."""
    environment, env_files = compose_environment(options, cwd, environ)
    files = find_files(options, cwd, environment)
    documents: list[SourceDocument] = []
    for file in files:
        documents += load_source(file)
    for document in documents:
        _absolute_extends(document.data, document.file)
    try:
        model = merge_documents(d.data for d in documents)
    except ComposeError as e:
        raise ComposeError(f"{', '.join(files)}: {e}") from None
    if not model:
        raise ComposeError(f"{', '.join(files)}: empty compose file")
    directory = (
        os.path.normpath(os.path.join(cwd, options.project_directory))
        if options.project_directory
        else os.path.dirname(files[0])
    )
    if options.profiles:
        profiles = tuple(options.profiles)
    else:
        text = environment.get("COMPOSE_PROFILES", "")
        profiles = tuple(p.strip() for p in text.split(",") if p.strip())
    return Project(
        name=_project_name(options, environment, model, directory),
        directory=directory,
        files=tuple(files),
        env_files=env_files,
        profiles=profiles,
        documents=tuple(documents),
        model=model,
    )


def _project_name(
    options: ComposeOptions, environment: Mapping[str, str], model: dict[str, Any], directory: str
) -> str:
    if options.project_name:
        return check_project_name(options.project_name, "--project-name")
    if environment.get("COMPOSE_PROJECT_NAME"):
        return check_project_name(environment["COMPOSE_PROJECT_NAME"], "COMPOSE_PROJECT_NAME")
    name = model.get("name")
    if isinstance(name, str) and name:
        if "$" in name:
            raise ComposeError(
                f"name {name!r}: telenet compose does not expand variables in the project name; "
                "give it with -p"
            )
        return check_project_name(name, "name")
    normalized = normalize_project_name(os.path.basename(directory))
    if not normalized:
        raise ComposeError(
            f"the project directory {directory} gives no project name; give one with -p"
        )
    return normalized
