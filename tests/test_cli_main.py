"""The ``telenet`` entry point: argument splitting, one-line errors, exit codes."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
import yaml

from telenet.cli import main as cli
from telenet.cli.main import _split, main

from .test_cli_connect import World
from .test_cli_runner import FakeDockerCLI


def test_split_keeps_docker_arguments_away_from_argparse() -> None:
    """docker-run takes everything after it; engage everything after its first ``--``."""
    assert _split(["docker-run", "--rm", "-it", "img"]) == (["docker-run"], ["--rm", "-it", "img"])
    assert _split(["--connection", "b", "docker-run", "--name", "x", "img"]) == (
        ["--connection", "b", "docker-run"],
        ["--name", "x", "img"],
    )
    assert _split(
        [
            "--config=f",
            "engage",
            "--agent",
            "h:1",
            "--docker-run",
            "--",
            "-v",
            "a:/b",
            "img",
            "--",
            "x",
        ]
    ) == (
        ["--config=f", "engage", "--agent", "h:1", "--docker-run"],
        ["-v", "a:/b", "img", "--", "x"],
    )
    assert _split(["status", "--name", "x"]) == (["status", "--name", "x"], None)


def test_config_error_is_one_line(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad config file: exit 1, one line naming the file and the key."""
    config = tmp_path / "config.yml"
    config.write_text("grpc:\n  daemonPort: many\n")
    assert main(["--config", str(config), "status"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"telenet status: {config}: grpc.daemonPort: expected a port number (1-65535), "
        "got str 'many'\n"
    )


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


@pytest.fixture
def world(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> World:
    """main against a World's MemoryDocker and MemoryControl, with an empty config."""
    w = World()
    config = tmp_path / "config.yml"
    config.write_text("")
    monkeypatch.setenv("TELENET_CONFIG", str(config))
    monkeypatch.setenv("TELENET_SYSTEM_CONFIG", str(tmp_path / "none.yml"))
    monkeypatch.delenv("TELENET_CONNECTION", raising=False)
    monkeypatch.setattr(
        cli, "make_connector", lambda config, say: attrs.evolve(w.connector, config=config, say=say)
    )
    return w


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_of_several_connections(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """Several connections: {"connections": [...]} in json and yaml, one block each in text."""
    world.connect("blue")
    code, out, _ = run(capsys, "status", "--output", "json")
    assert code == 0 and json.loads(out)["connection"] == "blue"  # one: the object itself
    code, out, _ = run(capsys, "status", "--output", "json", "--multi-daemon")
    assert [c["connection"] for c in json.loads(out)["connections"]] == ["blue"]
    world.connect("green")
    code, out, _ = run(capsys, "status", "--output", "json")
    data = json.loads(out)
    assert list(data) == ["connections"]
    assert [(c["connection"], c["daemon"]["name"]) for c in data["connections"]] == [
        ("blue", "blue"),
        ("green", "green"),
    ]
    code, out, _ = run(capsys, "status", "-o", "yaml")
    assert [c["connection"] for c in yaml.safe_load(out)["connections"]] == ["blue", "green"]
    code, out, _ = run(capsys, "status")
    assert out.startswith("Connection blue: Connected\n")
    assert "\n\nConnection green: Connected\n" in out
    code, out, _ = run(capsys, "status", "--name", "green", "-o", "json")
    assert json.loads(out)["connection"] == "green"


def test_status_use_picks_by_regex(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """--use, on status or before it: the one connection matched; several is an error."""
    for name in ("blue", "blue-2", "green"):
        world.connect(name)
    code, out, _ = run(capsys, "status", "--use", "een", "-o", "json")
    assert code == 0 and json.loads(out)["daemon"]["name"] == "green"
    code, out, _ = run(capsys, "--use", "2$", "status", "-o", "json")
    assert json.loads(out)["connection"] == "blue-2"
    code, out, err = run(capsys, "status", "--use", "blue")
    assert code == 1 and out == ""
    assert err == (
        "telenet status: --use 'blue' matches several connections (blue, blue-2): "
        "give an expression that matches one\n"
    )
    code, out, _ = run(capsys, "status", "--use", "red")
    assert (code, out) == (0, "No connection matches --use 'red'\n")


def test_format_json_status(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """--format json: status prints its object (one line); not connected, today's null object."""
    code, out, err = run(capsys, "--format", "json", "status")
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "connection": None,
        "daemon": None,
        "network": None,
        "plugins": [],
        "bridges": [],
        "volumes": [],
    }
    world.connect("blue")
    code, out, err = run(capsys, "--format=json", "status")
    assert out.count("\n") == 1 and err == ""
    daemon = json.loads(out)["daemon"]
    assert (daemon["status"], daemon["container_network"]) == ("Connected", "blue")
    assert daemon["dns"]["local_addresses"] == ["172.16.0.2:53"]
    code, out, _ = run(capsys, "--format", "yaml", "status")
    assert yaml.safe_load(out)["daemon"]["in_docker"] is True
    # The command's own --output decides the status object's shape.
    code, out, _ = run(capsys, "--format", "yaml", "status", "-o", "json")
    assert json.loads(out)["connection"] == "blue"


def test_format_json_failure(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """--format json: a failure is {"error": <the one-line message>} on stdout, exit non-zero."""
    world.docker.version = None
    code, out, err = run(capsys, "--format", "json", "quit")
    assert (code, err) == (1, "")
    assert json.loads(out) == {
        "error": "Docker at unix:///var/run/docker.sock (context "
        "default, the default) does not answer: Connection refused; is "
        "dockerd running?"
    }
    code, out, err = run(capsys, "--format", "yaml", "status")
    assert code == 1 and yaml.safe_load(out)["error"].startswith("Docker at unix://")
    # Usage errors too (exit 2), instead of argparse's usage on stderr.
    code, out, err = run(capsys, "--format", "json", "connect", "--name", "x")
    assert (code, err) == (2, "")
    assert json.loads(out) == {
        "error": "telenet connect: the following arguments are required: --docker"
    }
    code, out, err = run(capsys, "--format", "json", "docker-run")
    assert (code, json.loads(out), err) == (
        2,
        {"error": "telenet docker-run: its arguments are required"},
        "",
    )
    # Without --format, as before: one line on stderr.
    code, out, err = run(capsys, "quit")
    assert (code, out) == (1, "") and err.startswith("telenet quit: Docker at unix://")


def test_format_json_connect_and_quit(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """connect and quit: progress lines on stderr, then one object on stdout."""
    code, out, err = run(capsys, "--format", "json", "connect", "--docker", "--name", "blue")
    assert code == 0
    assert json.loads(out) == {
        "ok": True,
        "command": "connect",
        "connection": "blue",
        "daemon": "tp-blue",
        "network": "blue",
        "subnet": "172.16.0.0/16",
    }
    assert "Starting the daemon container tp-blue" in err
    assert err.splitlines()[-1].startswith("Connected to blue: daemon tp-blue")
    code, out, err = run(capsys, "--format", "json", "connect", "--docker", "--name", "blue")
    assert json.loads(out)["connection"] == "blue"
    assert err == "Already connected to blue (daemon tp-blue)\n"
    code, out, err = run(capsys, "--format", "json", "quit", "--use", "^bl")
    assert code == 0
    assert json.loads(out) == {"ok": True, "command": "quit", "connection": "blue"}
    assert err.splitlines()[-1] == "Disconnected from blue"
    code, out, err = run(capsys, "--format", "yaml", "quit", "--name", "blue")
    assert yaml.safe_load(out) == {"ok": True, "command": "quit", "connection": None}
    assert err == "Not connected to blue\n"
    # Text, as before: the progress lines on stdout.
    code, out, err = run(capsys, "connect", "--docker", "--name", "blue")
    assert (code, err) == (0, "") and out.splitlines()[-1].startswith("Connected to blue")


def test_connect_namespace_flags(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """--namespace and --mapped-namespaces (comma-separated) reach the daemon; bad ones are
    one-line errors."""
    code, out, err = run(
        capsys,
        "connect",
        "--docker",
        "--name",
        "blue",
        "--namespace",
        "Team-A",
        "--mapped-namespaces",
        "team-a, team-b",
    )
    assert code == 0
    daemon = world.docker.container("tp-blue")
    assert daemon is not None
    command = world.docker.containers_by_id[daemon["Id"]]["spec"].command
    assert command[-6:] == [
        "--namespace",
        "team-a",
        "--mapped-namespace",
        "team-a",
        "--mapped-namespace",
        "team-b",
    ]
    code, out, err = run(capsys, "connect", "--docker", "--name", "x", "--namespace", "a.b")
    assert code == 1
    assert err == (
        "telenet connect: --namespace 'a.b' is not a namespace name (lower-case letters, "
        "digits and -)\n"
    )


def test_format_json_docker_run_and_engage(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The container's output is its own; telenet's object (exit code, -d's id) follows it."""
    from telenet.cli.runner import WorkloadRunner

    docker = FakeDockerCLI(world, exit_code=3)
    builds: list[dict[str, Any]] = []

    def run_process(args: list[str], **kw: Any) -> Any:
        if args[1] == "build":
            builds.append(kw)
        return docker.run(args, **kw)

    monkeypatch.setattr(
        cli,
        "make_runner",
        lambda connector, say: WorkloadRunner(
            connector,
            say=say,
            sleep=world.clock.sleep,
            run_process=run_process,
            popen=docker.popen,
            probe=lambda host, port, agent: None,
        ),
    )
    code, out, err = run(capsys, "--format", "json", "docker-run", "--rm", "local/busybox")
    assert json.loads(out) == {"error": "not connected: run telenet connect --docker first"}
    world.connect("blue")
    code, out, err = run(capsys, "--format", "json", "docker-run", "--rm", "local/busybox")
    assert (code, err) == (3, "")
    assert json.loads(out) == {
        "ok": False,
        "command": "docker-run",
        "connection": "blue",
        "exit_code": 3,
    }
    code, out, err = run(capsys, "--format", "json", "docker-run", "-d", "local/busybox")
    result = json.loads(out)
    assert code == 0 and result["ok"] and list(result)[-1] == "container_id"
    assert world.docker.container(result["container_id"]) is not None
    docker.exit_code = 0
    code, out, err = run(
        capsys,
        "--format",
        "json",
        "engage",
        "--agent",
        "10.96.0.20:8022",
        "--container",
        "echo",
        "--remote-mount",
        "/data",
        "--docker-run",
        "--",
        "-v",
        "/tmp/d:/data",
        "local/busybox",
    )
    assert json.loads(out) == {
        "ok": True,
        "command": "engage",
        "connection": "blue",
        "exit_code": 0,
        "container": "echo",
    }
    assert err == "Skipping auto-mounting of /data: the docker run flags mount it\n"
    # docker build's progress goes to stderr too, not into the object's stream.
    code, out, err = run(
        capsys,
        "--format",
        "json",
        "engage",
        "--agent",
        "10.96.0.20:8022",
        "--container",
        "echo",
        "--docker-build",
        "ctx",
        "--",
        "IMAGE",
    )
    assert json.loads(out)["ok"] and builds == [{"stdout": 2}]
    assert err.startswith("Building the image from ")


def test_connect_docker_subnet_flag(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """--docker-subnet reaches the network (in connect's object); a bad one is one line, exit 1."""
    code, out, err = run(capsys, "connect", "--docker", "--name", "blue", "--docker-subnet", "x")
    assert (code, out) == (1, "")
    assert err == "telenet connect: --docker-subnet 'x' is not a CIDR like 10.96.0.0/12\n"
    code, out, err = run(
        capsys, "--format", "json", "connect", "--docker", "--name", "blue",
        "--docker-subnet", "192.168.77.9/24",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["subnet"] == "192.168.77.0/24"
