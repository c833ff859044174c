"""Finding Compose v2 (plug-in or docker-compose program) and refusing v1."""

from __future__ import annotations

import pytest

from telenet.cli.compose.discovery import ComposeProgram, find_compose, parse_version
from telenet.cli.compose.source import ComposeError
from telenet.testing import FakeProcesses

MISSING = FileNotFoundError(2, "No such file or directory")
NOT_A_COMMAND = (b"", b"docker: 'compose' is not a docker command.\n", 1)


def test_plugin_first() -> None:
    """``docker compose`` answering v2 is used, whatever docker-compose is."""
    run = FakeProcesses(
        {
            ("docker", "compose", "version", "--short"): (b"2.29.7\n", b"", 0),
            ("docker-compose",): (b"1.29.2\n", b"", 0),
        }
    )
    program = find_compose(run.blocking)
    assert program == ComposeProgram(("docker", "compose"), "2.29.7")
    assert program.major == 2
    assert run.commands == [["docker", "compose", "version", "--short"]]


def test_docker_compose_v2_program() -> None:
    """No plug-in: a docker-compose v2 program (Debian 13's package) is used."""
    run = FakeProcesses(
        {
            ("docker", "compose"): NOT_A_COMMAND,
            ("docker-compose", "version", "--short"): (b"v2.26.1\n", b"", 0),
        }
    )
    assert find_compose(run.blocking) == ComposeProgram(("docker-compose",), "2.26.1")
    assert run.commands[-1] == ["docker-compose", "version", "--short"]


def test_v1_is_refused_with_what_to_install() -> None:
    run = FakeProcesses(
        {
            ("docker", "compose"): NOT_A_COMMAND,
            ("docker-compose", "version", "--short"): (b"1.29.2\n", b"", 0),
        }
    )
    with pytest.raises(ComposeError) as e:
        find_compose(run.blocking)
    assert str(e.value) == (
        "docker-compose is Compose 1.29.2 (v1), which telenet compose does not run: install "
        "Compose v2 (Debian 13: apt-get install docker-compose; elsewhere Docker's "
        "docker-compose-plugin package)"
    )


def test_nothing_installed() -> None:
    run = FakeProcesses({("docker",): MISSING, ("docker-compose",): MISSING})
    with pytest.raises(ComposeError) as e:
        find_compose(run.blocking)
    assert str(e.value) == (
        "Docker Compose is not installed (docker compose and docker-compose do not answer): "
        "install Compose v2 (Debian 13: apt-get install docker-compose; elsewhere Docker's "
        "docker-compose-plugin package)"
    )


def test_garbled_version() -> None:
    run = FakeProcesses({("docker", "compose", "version"): (b"unknown\n", b"", 0)})
    with pytest.raises(ComposeError, match="docker compose version --short printed 'unknown'"):
        find_compose(run.blocking)


def test_docker_cli_is_configurable() -> None:
    run = FakeProcesses({("podman", "compose"): (b"2.30.0\n", b"", 0)})
    assert find_compose(run.blocking, "podman").argv == ("podman", "compose")


@pytest.mark.parametrize(
    "text,version",
    [
        ("2.29.7", (2, 29, 7)),
        ("v2.24.0-desktop.1", (2, 24, 0)),
        ("1.29.2, build 5becea4c", (1, 29, 2)),
        ("2.30", (2, 30, 0)),
    ],
)
def test_parse_version(text: str, version: tuple[int, int, int]) -> None:
    assert parse_version(text) == version


def test_parse_version_refuses_garbage() -> None:
    with pytest.raises(ValueError):
        parse_version("Docker Compose")
