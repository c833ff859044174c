"""telenet config view and telenet version (telenet.cli.info), through main with fakes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

import telenet
import telenet.cli.main as cli
from telenet.cli import info
from telenet.cli.dockerapi import DockerUnavailable
from telenet.cli.main import main

from .test_cli_connect import World


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No file anywhere and none of the variables set, under tmp_path."""
    for name in info.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TELENET_SYSTEM_CONFIG", str(tmp_path / "etc" / "config.yml"))
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def view(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out, err = run(capsys, *args, "config", "view", "--output", "json")
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_everywhere(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = view(capsys)
    settings = data["settings"]
    assert settings["grpc.daemonPort"] == {"value": 4038, "source": "default"}
    assert settings["docker.teleroute.tag"] == {"value": "latest", "source": "default"}
    assert settings["connection"] == {"value": None, "source": "default"}
    roles = {f["role"]: f for f in data["files"]}
    assert roles["system"]["path"] == str(home / "etc" / "config.yml")
    assert roles["system"]["source"] == "$TELENET_SYSTEM_CONFIG"
    assert roles["user"] == {
        "role": "user",
        "path": str(home / "xdg" / "telenet" / "config.yml"),
        "source": "default",
        "read": False,
    }
    assert roles["telepresence"]["path"] == str(home / "xdg" / "telepresence" / "config.yml")
    assert data["logs"]["directory"] == str(home / ".cache" / "telenet" / "logs")
    assert data["logs"]["directory_exists"] is False


def test_each_file_is_a_source(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    system = write(
        home / "etc" / "config.yml", "grpc:\n  daemonPort: 5000\n  teleroutePort: 5001\n"
    )
    user = write(home / "xdg" / "telenet" / "config.yml", "grpc:\n  teleroutePort: 6001\n")
    settings = view(capsys)["settings"]
    assert settings["grpc.daemonPort"] == {"value": 5000, "source": str(system)}
    assert settings["grpc.teleroutePort"] == {"value": 6001, "source": str(user)}
    assert settings["docker.daemonImage"]["source"] == "default"


def test_telepresences_file_when_the_user_has_none(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tp = write(home / "xdg" / "telepresence" / "config.yml", "docker:\n  enableIPv6: false\n")
    data = view(capsys)
    assert data["settings"]["docker.enableIPv6"] == {"value": False, "source": str(tp)}
    assert {"role": "telepresence", "path": str(tp), "source": "default", "read": True} in data[
        "files"
    ]


def test_config_option_and_environment(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    by_env = write(home / "env.yml", "docker:\n  daemonImage: from-env\n")
    monkeypatch.setenv("TELENET_CONFIG", str(by_env))
    monkeypatch.setenv("TELENET_CONNECTION", "blue")
    data = view(capsys)
    assert data["settings"]["docker.daemonImage"] == {"value": "from-env", "source": str(by_env)}
    assert data["settings"]["connection"] == {"value": "blue", "source": "$TELENET_CONNECTION"}
    user = next(f for f in data["files"] if f["role"] == "user")
    assert user == {"role": "user", "path": str(by_env), "source": "$TELENET_CONFIG", "read": True}
    assert data["environment"]["TELENET_CONNECTION"] == "blue"
    assert all(f["role"] != "telepresence" for f in data["files"])

    by_option = write(home / "opt.yml", "docker:\n  teleroute:\n    tag: '2.21'\n")
    data = view(capsys, "--config", str(by_option), "--connection", "green")
    assert data["settings"]["docker.teleroute.tag"] == {"value": "2.21", "source": str(by_option)}
    assert data["settings"]["docker.daemonImage"]["source"] == "default"
    assert data["settings"]["connection"] == {"value": "green", "source": "--connection"}
    user = next(f for f in data["files"] if f["role"] == "user")
    assert (user["path"], user["source"]) == (str(by_option), "--config")


def test_text_and_global_format(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(home / "etc" / "config.yml", "grpc:\n  daemonPort: 5000\n")
    code, out, _ = run(capsys, "config", "view")
    assert code == 0
    line = next(x for x in out.splitlines() if "grpc.daemonPort" in x)
    assert "5000" in line and str(home / "etc" / "config.yml") in line
    assert "Log directory: " in out
    code, out, _ = run(capsys, "--format", "yaml", "config", "view")
    assert yaml.safe_load(out)["settings"]["grpc.daemonPort"]["value"] == 5000


def test_config_view_needs_no_docker(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_docker(config: Any, say: Any) -> Any:
        raise AssertionError("config view must not reach Docker")

    monkeypatch.setattr(cli, "make_connector", no_docker)
    assert view(capsys)["settings"]["grpc.daemonPort"]["value"] == 4038


def test_config_view_needs_an_action(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["config"])
    assert e.value.code == 2


# -- telenet version


@pytest.fixture
def world(home: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    w = World()
    monkeypatch.setattr(
        cli, "make_connector", lambda config, say: attrs.evolve(w.connector, config=config, say=say)
    )
    return w


def versions(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, err = run(capsys, "version", "--output", "json")
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


def test_version_with_nothing_running(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    data = versions(capsys)
    assert data == {
        "cli": telenet.__version__,
        "docker": {"reachable": True, "api_version": "1.41"},
        "connections": "not running",
    }
    code, out, _ = run(capsys, "version")
    assert code == 0
    assert out.splitlines() == [
        f"Client: telenet {telenet.__version__}",
        "Docker: API 1.41",
        "Daemon: not running",
    ]


def test_version_when_docker_does_not_answer(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.docker.version = None
    data = versions(capsys)
    assert data["cli"] == telenet.__version__
    assert data["docker"]["reachable"] is False
    assert "does not answer" in data["docker"]["error"]
    assert data["connections"] == "not running"
    code, out, _ = run(capsys, "--format", "json", "version")
    assert code == 0 and json.loads(out)["docker"]["reachable"] is False
    code, out, _ = run(capsys, "version")
    assert code == 0 and "Docker: unreachable (Docker at unix://" in out


def test_version_fails_softly_midway(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.connect("blue")
    world.docker.fail["containers"] = DockerUnavailable("Docker went away")
    data = versions(capsys)
    assert data["docker"] == {"reachable": False, "error": "Docker went away"}


def test_version_of_a_connection(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    conn = world.connect("blue")
    daemon = world.docker.containers_by_id[conn.container_id]
    daemon["Config"]["Labels"][info.VERSION_LABEL] = "0.1.0"
    world.docker.plugins["telenet/teleroute:latest"]["Settings"] = {
        "Env": [f"{info.VERSION_ENV}=0.1.1"]
    }
    data = versions(capsys)
    (blue,) = data["connections"]
    assert blue["connection"] == "blue"
    assert blue["daemon"] == {"version": "0.1.0", "image": "telenet", "running": True}
    teleroute, telemount = blue["plugins"]
    assert teleroute == {
        "kind": "teleroute",
        "name": "telenet/teleroute:latest",
        "mode": "managed",
        "enabled": True,
        "version": "0.1.1",
    }
    # Without a version in its settings: the tag of its reference.
    assert telemount["version"] == "latest"
    code, out, _ = run(capsys, "version")
    assert "Daemon blue: 0.1.0 (image telenet)" in out
    assert "  teleroute: 0.1.1 (telenet/teleroute:latest, managed)" in out


def test_version_of_a_stopped_daemon_and_legacy_plugins(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.docker.legacy_sockets.update(
        {"/run/docker/plugins/teleroute.sock", "/run/docker/plugins/telemount.sock"}
    )
    conn = world.connect("blue")
    world.docker.kill("tp-blue")
    daemon = world.docker.containers_by_id[conn.container_id]
    daemon["Config"]["Image"] = "registry.example/telenet:0.2.0"
    blue = versions(capsys)["connections"][0]
    assert blue["daemon"] == {
        "version": "0.2.0",
        "image": "registry.example/telenet:0.2.0",
        "running": False,
    }
    assert [p["mode"] for p in blue["plugins"]] == ["legacy", "legacy"]
    assert [p["version"] for p in blue["plugins"]] == ["unknown", "unknown"]


@pytest.mark.parametrize(
    "reference,version",
    [
        ("telenet", None),
        ("telenet:0.1.0", "0.1.0"),
        ("localhost:5000/telenet", None),
        ("ghcr.io/telepresenceio/teleroute:amd64-2.21.1", "2.21.1"),
        ("telenet/telemount:latest", "latest"),
    ],
)
def test_image_version(reference: str, version: str | None) -> None:
    assert info.image_version(reference) == version


def test_daemon_version_from_environment() -> None:
    container = {
        "Config": {"Image": "telenet", "Labels": {}, "Env": [f"{info.VERSION_ENV}=0.3.0"]},
        "State": {"Running": True},
    }
    assert info.daemon_version(container)["version"] == "0.3.0"


def test_plugin_version_from_its_config_env() -> None:
    from telenet.testing.docker import MemoryDocker

    docker = MemoryDocker()
    docker.plugins["p:latest"] = {
        "Name": "p:latest",
        "Enabled": False,
        "Config": {"Env": [{"Name": info.VERSION_ENV, "Value": "0.4.0", "Settable": []}]},
        "Settings": {"Env": ["PATH=/bin"]},
    }
    found = info.plugin_version(docker, "teleroute", "p:latest")
    assert (found["version"], found["enabled"]) == ("0.4.0", False)


def test_a_plugin_that_is_gone() -> None:
    from telenet.testing.docker import MemoryDocker

    found = info.plugin_version(MemoryDocker(), "telemount", "telenet/telemount:latest")
    assert found["version"] == "not installed"
    assert info.plugin_version(MemoryDocker(), "telemount", None)["version"] == "not running"


def test_config_view_stays_import_light(home: Path) -> None:
    """config view loads neither Twisted's application machinery, the apps, nor docker-py."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from telenet.cli.main import main\n"
        "assert main(['config', 'view', '--output', 'json']) == 0\n"
        "heavy = [m for m in sys.modules if m.startswith(('twisted', 'docker'))\n"
        "         or m in ('telenet.daemon', 'telenet.routeplugin', 'telenet.mountplugin')]\n"
        "assert not heavy, heavy\n"
    )
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["settings"]["grpc.daemonPort"]["value"] == 4038
