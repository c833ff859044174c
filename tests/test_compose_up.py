"""
``telenet compose up``, ``stop``, ``down`` and the other subcommands with connection work,
``telenet quit`` and ``telenet status`` knowing compose projects: through ``main``, against
MemoryDocker, MemoryControl and FakeProcesses (docs/compose.md, "Subcommands").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from telenet.cli.compose.state import StateStore, private_root
from telenet.cli.naming import LABEL_CONNECTION, LABEL_VOLUME_PLUGIN

from .test_compose_command import Setup, make_setup, run

AGENT = "10.96.0.20:8022"


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    return make_setup(tmp_path, monkeypatch)


def store(setup: Setup) -> StateStore:
    return StateStore(private_root(setup.environ))


def subcommands(setup: Setup) -> list[list[str]]:
    """Each Compose call's subcommand and arguments (after the project's options)."""
    found = []
    for command in setup.compose_commands():
        options = ("--project-name", "--project-directory", "--file", "--env-file", "--profile")
        i = max(j for j, token in enumerate(command) if token in options) + 2
        found.append(command[i:])
    return found


def compose_makes_volumes(setup: Setup) -> None:
    """What Compose makes for the project's volumes: the telemount one and the user's."""
    conn = setup.world.connector.find("blue")
    driver = conn.label(LABEL_VOLUME_PLUGIN) or ""
    project = {"com.docker.compose.project": "shop"}
    setup.world.docker.create_volume(
        "shop_telenet-uploads", driver, {}, {**project, LABEL_CONNECTION: "blue"}
    )
    setup.world.docker.create_volume("shop_data", driver, {}, project)
    setup.world.docker.create_volume("shop_local", "local", {}, project)


def test_up_connects_opens_the_bridge_and_starts(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attached up: connect (with progress), bridge, render with its port, up, bridge closed."""
    code, out, err = run(capsys, "compose", "--profile", "debug", "up", "--build")
    assert (code, err) == (0, "")
    assert "Connecting to blue for project shop" in out
    assert "\nConnected to blue: daemon tp-blue" in out
    ((opened, agent, port), (closed, closed_port)) = setup.world.control.calls
    assert (opened, agent, closed, closed_port) == ("open_bridge", AGENT, "close_bridge", port)
    assert setup.probed and setup.probed[0][1:] == (port, AGENT)
    ((command),) = setup.compose_commands()
    assert command[-2:] == ["up", "--build"]
    assert command[command.index("--profile") + 1] == "debug"
    rendered = Path(command[command.index("--file") + 1])
    document = yaml.safe_load(rendered.read_text())
    assert document["volumes"]["telenet-uploads"]["driver_opts"]["port"] == str(port)
    state = store(setup).read("shop")
    assert state is not None
    assert (state.started, state.connections, state.bridges) == (["blue"], ["blue"], [])
    assert state.file == str(rendered)


def test_detached_up_keeps_the_bridge_until_stop(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """up -d leaves the bridge open (a second up reuses it); stop closes it, stays connected."""
    assert run(capsys, "compose", "up", "-d")[0] == 0
    ((port, agent),) = setup.world.control.bridges.items()
    assert agent == AGENT
    assert run(capsys, "compose", "up", "-d", "web")[0] == 0
    assert list(setup.world.control.bridges) == [port]
    code, out, _ = run(capsys, "compose", "stop")
    assert code == 0
    assert f"Closing the bridge on port {port} to {AGENT}" in out
    assert setup.world.control.bridges == {}
    assert setup.world.connector.find("blue").running
    assert subcommands(setup) == [["up", "-d"], ["up", "-d", "web"], ["stop"]]
    # stop ran on the rendered file.
    command = setup.compose_commands()[-1]
    assert command[command.index("--file") + 1] == store(setup).read("shop").file  # type: ignore[union-attr]


def test_stop_of_other_services_keeps_the_bridge(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "compose", "up", "--detach")
    run(capsys, "compose", "stop", "-t", "3", "web")
    assert len(setup.world.control.bridges) == 1
    run(capsys, "compose", "stop", "api")
    assert setup.world.control.bridges == {}


def test_down_removes_only_telenets_and_quits_what_it_started(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "compose", "--profile", "debug", "up", "-d")[0] == 0
    compose_makes_volumes(setup)
    code, _, err = run(capsys, "compose", "--profile", "debug", "down")
    assert (code, err) == (0, "")
    assert set(setup.world.docker.volumes_by_name) == {"shop_data", "shop_local"}
    assert setup.world.control.bridges == {}
    assert "tp-blue" not in setup.world.docker.container_names()
    assert store(setup).read("shop") is None
    # Every Compose call had the profile.
    assert all(c[c.index("--profile") + 1] == "debug" for c in setup.compose_commands())
    assert subcommands(setup) == [["up", "-d"], ["down"]]


def test_down_leaves_a_connection_it_did_not_start(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    setup.world.connect("blue")
    run(capsys, "compose", "up", "-d")
    _, out, _ = run(capsys, "compose", "up", "-d")
    assert "Connecting to" not in out
    run(capsys, "compose", "down")
    assert setup.world.connector.find("blue").running
    assert setup.world.control.bridges == {}


def test_unreachable_agent_fails_up_before_anything(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    The agent's address, after intercept.mountTimeout of probes; nothing started, the bridge
    closed, the connection quit.
    """
    setup.unreachable.add(AGENT)
    code, _, err = run(capsys, "compose", "up", "-d")
    assert code == 1
    assert err == (
        f"telenet compose: service api: agent {AGENT} is unreachable from the daemon "
        "(no answer within 6 s), tried for 10 s; nothing was started\n"
    )
    assert len(setup.probed) > 2
    assert setup.compose_commands() == []
    assert setup.world.control.bridges == {}
    assert "tp-blue" not in setup.world.docker.container_names()
    assert store(setup).projects() == []


def test_interrupted_attached_up_closes_the_bridges(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """^C: Compose stops the services; telenet closes the bridges as it returns."""

    def interrupted(command: list[str]) -> int:
        setup.processes.commands.append(command)
        raise KeyboardInterrupt

    setup.processes.attached = interrupted  # type: ignore[method-assign]
    assert run(capsys, "compose", "up")[::2] == (1, "telenet compose: interrupted\n")
    assert setup.world.control.bridges == {}
    assert setup.world.connector.find("blue").running


@pytest.mark.parametrize("subcommand", ["create", "start", "restart", "run"])
def test_other_starting_subcommands_open_the_bridges(
    setup: Setup, capsys: pytest.CaptureFixture[str], subcommand: str
) -> None:
    """They leave the bridges open, as up -d does, until stop or down."""
    assert run(capsys, "compose", subcommand, "api")[0] == 0
    assert list(setup.world.control.bridges.values()) == [AGENT]
    assert subcommands(setup) == [[subcommand, "api"]]


def test_quit_takes_down_the_projects_of_the_connection(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "compose", "--profile", "debug", "up", "-d")
    compose_makes_volumes(setup)
    code, out, _ = run(capsys, "quit", "--name", "blue")
    assert code == 0
    assert "Taking down compose project shop, which uses blue" in out
    down = setup.compose_commands()[-1]
    assert down[-1] == "down" and down[down.index("--profile") + 1] == "debug"
    assert set(setup.world.docker.volumes_by_name) == {"shop_data", "shop_local"}
    assert "tp-blue" not in setup.world.docker.container_names()
    assert store(setup).projects() == []


def test_status_lists_the_compose_projects(
    setup: Setup, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in setup.environ.items():
        monkeypatch.setenv(key, value)
    run(capsys, "compose", "up", "-d")
    code, out, _ = run(capsys, "status")
    assert code == 0
    assert "  compose projects: shop" in out
    _, out, _ = run(capsys, "status", "-o", "json")
    assert json.loads(out)["compose_projects"] == ["shop"]


def test_a_crashed_up_is_cleaned_up_by_down(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bridge is recorded before Compose runs: a later down finds and closes it."""

    def crash(command: list[str]) -> int:
        raise SystemExit(137)

    setup.processes.attached = crash  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        run(capsys, "compose", "up", "-d")
    assert len(setup.world.control.bridges) == 1
    del setup.processes.attached
    assert run(capsys, "compose", "down")[0] == 0
    assert setup.world.control.bridges == {}
    assert "tp-blue" not in setup.world.docker.container_names()


@pytest.mark.parametrize("subcommand", ["up", "start"])
def test_after_stop_the_volumes_of_the_closed_bridge_are_made_again(
    setup: Setup, capsys: pytest.CaptureFixture[str], subcommand: str
) -> None:
    """Docker keeps a volume's options: the one for the closed bridge goes, with its users."""
    run(capsys, "compose", "up", "-d")
    ((old_port, _),) = setup.world.control.bridges.items()
    conn = setup.world.connector.find("blue")
    setup.world.docker.create_volume(
        "shop_telenet-uploads",
        conn.label(LABEL_VOLUME_PLUGIN) or "",
        {"port": str(old_port)},
        {"com.docker.compose.project": "shop", LABEL_CONNECTION: "blue"},
    )
    run(capsys, "compose", "stop")
    code, out, _ = run(capsys, "compose", subcommand, "-d" if subcommand == "up" else "api")
    assert code == 0
    assert "Making api again: the bridge of shop_telenet-uploads was closed" in out
    assert "shop_telenet-uploads" not in setup.world.docker.volumes_by_name
    expected = [["rm", "--force", "--stop", "api"]]
    if subcommand == "start":
        expected.append(["up", "--detach", "--no-deps", "api"])
    assert subcommands(setup)[2:] == [
        *expected,
        [subcommand, "-d" if subcommand == "up" else "api"],
    ]


def test_a_failed_down_keeps_the_record(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "compose", "up", "-d")
    setup.processes.codes[("docker", "compose", "--project-name")] = 1
    code, out, _ = run(capsys, "compose", "down")
    assert code == 1
    assert "Compose's down failed: telenet leaves the bridges open" in out
    assert len(setup.world.control.bridges) == 1
    assert store(setup).read("shop") is not None


def test_a_service_named_is_active_whatever_its_profiles(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """As Compose: up SERVICE starts it even when its profiles are not given."""
    text = (setup.project / "compose.yaml").read_text()
    profiled = text.replace(
        "      - uploads:/srv/uploads\n", "      - uploads:/srv/uploads\n    profiles: [engaged]\n"
    )
    (setup.project / "compose.yaml").write_text(profiled)
    run(capsys, "compose", "up", "-d", "web")
    assert setup.world.control.bridges == {}
    run(capsys, "compose", "up", "-d", "api")
    assert list(setup.world.control.bridges.values()) == [AGENT]


def test_down_leaves_a_connection_another_project_uses(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other project's down quits it instead."""
    run(capsys, "compose", "up", "-d")
    run(capsys, "compose", "-p", "other", "up", "-d", "web")
    _, out, _ = run(capsys, "compose", "down")
    assert "Leaving blue connected: project other uses it" in out
    assert setup.world.connector.find("blue").running
    run(capsys, "compose", "-p", "other", "down")
    assert "tp-blue" not in setup.world.docker.container_names()


def test_no_bridge_when_no_telemount_volume_is_needed(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """The remote mount lands on a bind mount, which wins: nothing to bridge, no probe."""
    text = (setup.project / "compose.yaml").read_text()
    (setup.project / "compose.yaml").write_text(text.replace("- uploads:/srv", "- ./up:/srv"))
    assert run(capsys, "compose", "up", "-d")[0] == 0
    assert setup.world.control.bridges == {} and setup.probed == []


def test_the_bridge_is_recorded_before_the_probe(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bridge is in the record while the agent is probed; a failed probe leaves nothing."""
    seen = []

    def crash() -> None:
        state = store(setup).read("shop")
        seen.append([(b.agent, b.port) for b in state.bridges] if state else [])
        raise SystemExit(137)

    setup.on_probe = crash
    with pytest.raises(SystemExit):
        run(capsys, "compose", "up", "-d")
    ((_, _, port),) = [c for c in setup.world.control.calls if c[0] == "open_bridge"]
    assert seen == [[(AGENT, port)]]
    # An exception that can be caught closes it at once.
    assert setup.world.control.bridges == {}
    setup.on_probe = None
    setup.unreachable.add(AGENT)
    _, out, _ = run(capsys, "compose", "up", "-d")
    assert "Warning" not in out
    assert store(setup).read("shop") is None and setup.world.control.bridges == {}
