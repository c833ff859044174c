"""Which project: files, directory, name, .env and profiles, as docker compose decides them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from telenet.cli.compose.project import (
    ComposeOptions,
    is_active,
    load_project,
    normalize_project_name,
    parse_dotenv,
)
from telenet.cli.compose.source import ComposeError

COMPOSE = """
services:
  web:
    image: nginx
  debug:
    image: busybox
    profiles: [debug]
  migrate:
    image: migrate/migrate
    profiles: [tools, ci]
"""


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    project = tmp_path / "My Shop"
    project.mkdir()
    (project / "compose.yaml").write_text(COMPOSE)
    return project


def test_default_files_with_their_override(shop: Path) -> None:
    """compose.yaml and compose.override.yml beside it, found from a subdirectory too."""
    (shop / "compose.override.yml").write_text("services:\n  web:\n    image: nginx:1.27\n")
    sub = shop / "src" / "app"
    sub.mkdir(parents=True)
    project = load_project(ComposeOptions(), str(sub), {})
    assert project.files == (str(shop / "compose.yaml"), str(shop / "compose.override.yml"))
    assert project.directory == str(shop)
    assert project.services()["web"]["image"] == "nginx:1.27"


def test_name_from_the_directory(shop: Path) -> None:
    """'My Shop' becomes 'myshop', as compose-go normalizes it."""
    assert load_project(ComposeOptions(), str(shop), {}).name == "myshop"
    assert normalize_project_name("_My.Shop-2") == "myshop-2"


def test_name_precedence(shop: Path) -> None:
    """-p, then COMPOSE_PROJECT_NAME (environment or .env), then name:, then the directory."""
    (shop / "compose.yaml").write_text("name: shop\n" + COMPOSE)
    assert load_project(ComposeOptions(), str(shop), {}).name == "shop"
    (shop / ".env").write_text("COMPOSE_PROJECT_NAME=from-dotenv\n")
    assert load_project(ComposeOptions(), str(shop), {}).name == "from-dotenv"
    env = {"COMPOSE_PROJECT_NAME": "from-env"}
    assert load_project(ComposeOptions(), str(shop), env).name == "from-env"
    options = ComposeOptions(project_name="given")
    assert load_project(options, str(shop), env).name == "given"
    with pytest.raises(ComposeError, match="--project-name 'Bad Name' is not a project name"):
        load_project(ComposeOptions(project_name="Bad Name"), str(shop), {})


def test_files_given_and_compose_file(shop: Path, tmp_path: Path) -> None:
    """-f files in order, relative to the working directory; else COMPOSE_FILE."""
    other = tmp_path / "other.yaml"
    other.write_text("services:\n  extra:\n    image: redis\n")
    options = ComposeOptions(files=("My Shop/compose.yaml", "other.yaml"))
    project = load_project(options, str(tmp_path), {})
    assert project.files == (str(shop / "compose.yaml"), str(other))
    assert project.directory == str(shop)
    assert set(project.services()) == {"web", "debug", "migrate", "extra"}
    env = {"COMPOSE_FILE": f"{shop / 'compose.yaml'}:{other}"}
    assert load_project(ComposeOptions(), str(tmp_path), env).files == project.files
    env = {"COMPOSE_FILE": f"{shop / 'compose.yaml'};{other}", "COMPOSE_PATH_SEPARATOR": ";"}
    assert load_project(ComposeOptions(), str(tmp_path), env).files == project.files


def test_project_directory(shop: Path, tmp_path: Path) -> None:
    options = ComposeOptions(files=("My Shop/compose.yaml",), project_directory="elsewhere")
    project = load_project(options, str(tmp_path), {})
    assert project.directory == str(tmp_path / "elsewhere")
    assert project.name == "elsewhere"


def test_no_file_and_stdin(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match="no compose file: none of compose.yaml"):
        load_project(ComposeOptions(), str(tmp_path), {})
    with pytest.raises(ComposeError, match="standard input"):
        load_project(ComposeOptions(files=("-",)), str(tmp_path), {})
    (tmp_path / "compose.yaml").write_text("")
    with pytest.raises(ComposeError, match="empty compose file"):
        load_project(ComposeOptions(), str(tmp_path), {})


def test_profiles(shop: Path) -> None:
    """A service with profiles is active when one is given, or '*', or the command names it."""
    project = load_project(ComposeOptions(), str(shop), {})
    assert project.active_services() == ["web"]
    assert project.active_services(targeted=["migrate"]) == ["web", "migrate"]
    project = load_project(ComposeOptions(profiles=("ci",)), str(shop), {})
    assert project.profiles == ("ci",)
    assert project.active_services() == ["web", "migrate"]
    project = load_project(ComposeOptions(), str(shop), {"COMPOSE_PROFILES": "debug, tools"})
    assert project.active_services() == ["web", "debug", "migrate"]
    assert is_active({"profiles": ["x"]}, ["*"])


def test_env_files(shop: Path, tmp_path: Path) -> None:
    """--env-file replaces .env; the process's environment wins over both."""
    (shop / ".env").write_text("COMPOSE_PROFILES=debug\n")
    env_file = tmp_path / "ci.env"
    env_file.write_text("export COMPOSE_PROFILES='tools' # CI\n")
    project = load_project(ComposeOptions(env_files=(str(env_file),)), str(shop), {})
    assert project.profiles == ("tools",)
    assert project.env_files == (str(env_file),)
    assert load_project(ComposeOptions(), str(shop), {}).profiles == ("debug",)
    with pytest.raises(ComposeError, match="--env-file .*missing.env: no such file"):
        load_project(ComposeOptions(env_files=("missing.env",)), str(shop), {})


def test_parse_dotenv() -> None:
    text = "# comment\nA=1\nexport B=\"two words\"\nC=three # note\nD='#not a comment'\n\nE\n"
    os.environ.setdefault("E", "e")
    assert parse_dotenv(text, ".env") == {
        "A": "1",
        "B": "two words",
        "C": "three",
        "D": "#not a comment",
        "E": os.environ["E"],
    }
    with pytest.raises(ComposeError, match=r"^\.env:1: '1A' is not a variable name$"):
        parse_dotenv("1A=x\n", ".env")


def test_extends_file_is_made_absolute(shop: Path, tmp_path: Path) -> None:
    """The rendered file lives elsewhere: extends.file must not be relative to it."""
    (shop / "base.yaml").write_text("services:\n  base:\n    image: x\n")
    (shop / "compose.yaml").write_text(
        "services:\n  web:\n    extends: {file: base.yaml, service: base}\n"
    )
    project = load_project(ComposeOptions(), str(shop), {})
    assert project.services()["web"]["extends"]["file"] == str(shop / "base.yaml")
