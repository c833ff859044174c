"""The ``telenet`` entry point: argument splitting, one-line errors, exit codes."""

from __future__ import annotations

from typing import Any

import pytest

from telenet.cli import _split, main


def test_split_keeps_docker_arguments_away_from_argparse() -> None:
    """docker-run takes everything after it; engage everything after its first ``--``."""
    assert _split(["docker-run", "--rm", "-it", "img"]) == (["docker-run"], ["--rm", "-it", "img"])
    assert _split(["--connection", "b", "docker-run", "--name", "x", "img"]) == (
        ["--connection", "b", "docker-run"], ["--name", "x", "img"],
    )  # fmt: skip
    assert _split(["--config=f", "engage", "--agent", "h:1", "--docker-run", "--", "-v", "a:/b",
                   "img", "--", "x"]) == (
        ["--config=f", "engage", "--agent", "h:1", "--docker-run"],
        ["-v", "a:/b", "img", "--", "x"],
    )  # fmt: skip
    assert _split(["status", "--name", "x"]) == (["status", "--name", "x"], None)


def test_config_error_is_one_line(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad config file: exit 1, one line naming the file and the key."""
    config = tmp_path / "config.yml"
    config.write_text("docker:\n  telemount:\n    tagg: x\n")
    assert main(["--config", str(config), "status"]) == 1
    err = capsys.readouterr().err
    assert err == f"telenet status: {config}: unknown key docker.telemount.tagg\n"


def test_connect_requires_docker_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """telenet only has the containerized daemon: connect without --docker is a usage error."""
    with pytest.raises(SystemExit) as e:
        main(["connect", "--name", "x"])
    assert e.value.code == 2
    assert "--docker" in capsys.readouterr().err


def test_docker_run_help(capsys: pytest.CaptureFixture[str]) -> None:
    """docker-run --help is telenet's; docker-run alone is a usage error."""
    assert main(["docker-run", "--help"]) == 0
    assert "docker run on the connection's network" in capsys.readouterr().out
    assert main(["docker-run"]) == 2


def test_engage_requires_docker_run(capsys: pytest.CaptureFixture[str]) -> None:
    """engage without --docker-run is a usage error naming it."""
    with pytest.raises(SystemExit):
        main(["engage", "--agent", "h:1", "--container", "c", "--", "img"])
    assert "--docker-run" in capsys.readouterr().err
