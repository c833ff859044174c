"""
``telenet compose`` through ``main``: its arguments, the rendered file in the private
directory, Compose's command line, one-line errors before anything runs; against
MemoryDocker, MemoryControl and FakeProcesses.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from telenet.cli import main as cli
from telenet.cli.compose.command import ComposeCommand
from telenet.cli.compose.state import private_root
from telenet.cli.connection import CLIError
from telenet.cli.main import _split, main
from telenet.testing import FakeProcesses

from .test_cli_connect import World

COMPOSE = """\
name: shop
x-telenet:
  connections:
    - name: blue
services:
  api:
    image: registry.example.com/shop/api:1.4
    volumes:
      - uploads:/srv/uploads
    x-telenet:
      type: engage
      agent: 10.96.0.20:8022
      remoteMounts: [/srv/uploads]
  web:
    image: nginx:1.27
    x-telenet:
      type: connect
  debug:
    image: busybox
    profiles: [debug]
volumes:
  uploads:
"""

V2 = {("docker", "compose", "version", "--short"): (b"2.29.7\n", b"", 0)}


@attrs.define
class Setup:
    world: World
    processes: FakeProcesses
    project: Path
    environ: dict[str, str]
    #: The agents that do not answer the probe through their bridge.
    unreachable: set[str] = attrs.field(factory=set)
    probed: list[tuple[str, int, str]] = attrs.field(factory=list)
    #: Called by each probe first (a crash while probing).
    on_probe: Any = None

    def probe(self, host: str, port: int, agent: str) -> None:
        self.probed.append((host, port, agent))
        if self.on_probe is not None:
            self.on_probe()
        if agent in self.unreachable:
            raise CLIError(f"agent {agent} is unreachable from the daemon (no answer within 6 s)")

    def compose_commands(self) -> list[list[str]]:
        return [c for c in self.processes.commands if c[2:3] != ["version"]]


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    return make_setup(tmp_path, monkeypatch)


def make_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    """A project ``shop`` in ``tmp_path``, main's connector and ComposeCommand over fakes."""
    world = World()
    config = tmp_path / "config.yml"
    config.write_text("")
    monkeypatch.setenv("TELENET_CONFIG", str(config))
    monkeypatch.setenv("TELENET_SYSTEM_CONFIG", str(tmp_path / "none.yml"))
    project = tmp_path / "shop"
    project.mkdir()
    (project / "compose.yaml").write_text(COMPOSE)
    processes = FakeProcesses(dict(V2))
    environ = {"XDG_RUNTIME_DIR": str(tmp_path / "run"), "HOME": str(tmp_path)}
    made = Setup(world, processes, project, environ)
    monkeypatch.setattr(
        cli,
        "make_connector",
        lambda config, say: attrs.evolve(world.connector, config=config, say=say),
    )

    def make_compose(connector: Any, say: Any) -> ComposeCommand:
        return ComposeCommand(
            connector.docker,
            connector.lookup,
            say=say,
            warn=say,
            run=processes.blocking,
            attached=processes.attached,
            cwd=lambda: str(project),
            environ=environ,
            connector=connector,
            probe=made.probe,
        )

    monkeypatch.setattr(cli, "make_compose", make_compose)
    return made


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_split_keeps_compose_arguments_away_from_argparse() -> None:
    """compose's own options go to argparse; the subcommand's arguments do not."""
    assert _split(["compose", "-f", "a.yml", "--profile=x", "exec", "-T", "api", "ls", "-l"]) == (
        ["compose", "-f", "a.yml", "--profile=x", "exec"],
        ["-T", "api", "ls", "-l"],
    )
    assert _split(["--format", "json", "compose", "-pshop", "ps", "--format", "json"]) == (
        ["--format", "json", "compose", "-pshop", "ps"],
        ["--format", "json"],
    )
    assert _split(["compose"]) == (["compose"], [])


def test_pass_through_runs_compose_on_the_users_files(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """ps needs no connection: Compose gets the project as telenet saw it, and the arguments."""
    code, _, err = run(capsys, "compose", "--profile", "debug", "ps", "-a", "--format", "json")
    assert (code, err) == (0, "")
    assert setup.compose_commands() == [
        [
            "docker",
            "compose",
            "--project-name",
            "shop",
            "--project-directory",
            str(setup.project),
            "--file",
            str(setup.project / "compose.yaml"),
            "--profile",
            "debug",
            "ps",
            "-a",
            "--format",
            "json",
        ]
    ]
    assert setup.world.docker.calls == []


def test_compose_exit_code_is_telenets(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    setup.processes.codes[("docker", "compose", "--project-name")] = 3
    assert run(capsys, "compose", "logs", "api")[0] == 3


def test_config_prints_the_rendered_file(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    """config renders into the private directory and has Compose print that file."""
    setup.world.connect("blue")
    port = setup.world.control.open_bridge("10.96.0.20:8022")
    before = (setup.project / "compose.yaml").read_text()
    code, out, _ = run(capsys, "compose", "config", "--no-interpolate")
    assert code == 0
    root = private_root(setup.environ)
    rendered = os.path.join(root, "shop", "compose.yaml")
    assert f"Rendered {rendered}" in out
    ((command),) = setup.compose_commands()
    assert command[command.index("--file") + 1] == rendered
    assert command[command.index("--project-directory") + 1] == str(setup.project)
    assert command[-2:] == ["config", "--no-interpolate"]
    document = yaml.safe_load(Path(rendered).read_text())
    assert document["networks"]["telenet-blue"] == {"name": "blue", "external": True}
    api = document["services"]["api"]
    dns = setup.world.connector.find("blue").dns_ip()
    assert api["dns"] == [dns] and api["networks"] == {"default": None, "telenet-blue": None}
    assert document["volumes"]["telenet-uploads"]["driver_opts"]["port"] == str(port)
    assert stat.S_IMODE(os.stat(os.path.dirname(rendered)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(rendered).st_mode) == 0o600
    assert (setup.project / "compose.yaml").read_text() == before


def test_config_before_the_bridge_is_open(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    """The bridge opens with up: before, config shows port 0 and says so."""
    setup.world.connect("blue")
    code, out, _ = run(capsys, "compose", "config")
    assert code == 0
    assert (
        "service api: no bridge to 10.96.0.20:8022 is open yet; its port shows as 0 "
        "(telenet compose up opens it)"
    ) in out
    rendered = Path(private_root(setup.environ)) / "shop" / "compose.yaml"
    document = yaml.safe_load(rendered.read_text())
    assert document["volumes"]["telenet-uploads"]["driver_opts"]["port"] == "0"


def test_config_needs_the_connection(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "compose", "config")
    assert (code, err) == (
        1,
        "telenet compose: connection blue is not connected: run telenet connect --docker "
        "--name blue (telenet compose up will connect it)\n",
    )
    assert setup.compose_commands() == []


def test_unknown_subcommand_is_refused(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "compose", "frobnicate", "-d")
    assert code == 1
    assert err.startswith("telenet compose: frobnicate is not a subcommand telenet compose runs")
    assert err.count("\n") == 1
    assert setup.processes.commands == [] and setup.world.docker.calls == []


def test_bad_extension_is_one_line_before_anything(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    (setup.project / "compose.yaml").write_text(COMPOSE.replace("type: connect", "type: proxy"))
    code, _, err = run(capsys, "compose", "ps")
    assert code == 1
    assert err.startswith(
        f"telenet compose: {setup.project}/compose.yaml:17: services.web.x-telenet.type: "
        "service web: type proxy needs Telepresence's traffic manager"
    )
    assert err.count("\n") == 1
    assert setup.processes.commands == []


def test_compose_v1_is_refused(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    setup.processes.codes.clear()
    setup.processes.codes[("docker", "compose")] = 1
    setup.processes.codes[("docker-compose", "version")] = (b"1.29.2\n", b"", 0)
    code, _, err = run(capsys, "compose", "ps")
    assert code == 1
    assert err == (
        "telenet compose: docker-compose is Compose 1.29.2 (v1), which telenet compose does not "
        "run: install Compose v2 (Debian 13: apt-get install docker-compose; elsewhere Docker's "
        "docker-compose-plugin package)\n"
    )


def test_a_subcommand_is_required(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "compose", "-f", "compose.yaml")
    assert code == 1
    assert err == "telenet compose: a subcommand is required (telenet compose --help lists them)\n"


def test_format_json(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--format", "json", "compose", "ps")
    assert code == 0
    assert json.loads(out.splitlines()[-1]) == {
        "ok": True,
        "command": "compose",
        "subcommand": "ps",
        "exit_code": 0,
    }
    code, out, _ = run(capsys, "--format", "json", "compose", "frobnicate")
    assert code == 1
    assert json.loads(out)["error"].startswith("frobnicate is not a subcommand")


def test_private_root(tmp_path: Path) -> None:
    assert private_root({"XDG_RUNTIME_DIR": "/run/user/1000"}) == "/run/user/1000/telenet/compose"
    assert private_root({"HOME": "/home/me"}) == "/home/me/.cache/telenet/compose"


def test_config_of_a_project_without_the_extension(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """No service of a connection: nothing to ask Docker, the file is rendered as it is."""
    (setup.project / "compose.yaml").write_text(
        "services:\n  web:\n    image: nginx:1.27\n    environment: {DEBUG: 'on'}\n"
    )
    code, _, _ = run(capsys, "compose", "config")
    assert code == 0
    assert setup.world.docker.calls == []
    rendered = Path(private_root(setup.environ)) / "shop" / "compose.yaml"
    assert yaml.safe_load(rendered.read_text()) == {
        "services": {"web": {"image": "nginx:1.27", "environment": {"DEBUG": "on"}}}
    }


def test_unknown_compose_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["compose", "--ansi", "never", "ps"])
    assert e.value.code == 2
    assert "unrecognized arguments: --ansi\n" in capsys.readouterr().err
