"""
telenet gather-logs and telenet loglevel (telenet.cli.gatherlogs, loglevel, pluginsocket), with
MemoryDocker/MemoryControl and a fake plug-in call; the socket client against a real socket.
"""

from __future__ import annotations

import http.server
import json
import os
import socketserver
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import telenet.cli.main as cli
from telenet.cli import diagnose, gatherlogs, pluginsocket
from telenet.cli.doctor import Doctor
from telenet.cli.gatherlogs import LogGatherer
from telenet.cli.loglevel import LevelSetter
from telenet.cli.main import main
from telenet.cli.pluginsocket import PluginCallError

from .test_cli_connect import World


class Plugins:
    """What the plug-ins answer on their sockets, and what they were asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, dict[str, Any]]] = []
        self.down: set[str] = set()

    def __call__(self, path: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        self.asked.append((path, endpoint, body))
        if any(part in path for part in self.down):
            raise PluginCallError(f"{path}: [Errno 111] Connection refused")
        kind = "teleroute" if "teleroute" in path or path.endswith("2.sock") else "telemount"
        if endpoint == "/Telenet.Logs":
            return {"Lines": [f"2026-12-07T10:00:00+0000 [{kind}#info] hello from 10.1.2.3"]}
        if endpoint == "/Telenet.Health":
            return {"Version": "0.1.0", "Volumes": 0}
        return {"level": body["Level"], "configured": "info", "until": None}


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.world = World()
        self.world.connect("blue")
        self.docker = self.world.docker
        self.docker.logs["tp-blue"] = "daemon started on 172.17.0.2\n"
        for info in self.docker.plugins.values():
            kind = "teleroute" if "teleroute" in info["Name"] else "telemount"
            info["Config"] = {"Interface": {"Socket": f"{kind}.sock"}}
        self.plugins = Plugins()
        self.files: dict[str, bytes] = {}
        connector = self.world.connector
        self.doctor = Doctor(
            self.docker,
            connector.config,
            connector.lookup,
            host_routes=lambda: [],
            mounts=lambda: [],
            probe=lambda d, c, r: {"grpc": None, "bridge": True, "dns": {}, "agents": {}},
        )
        self.environ = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "HOME": str(tmp_path)}
        self.gatherer = LogGatherer(
            self.docker,
            connector.config,
            connector.reporter,
            self.doctor,
            plugin_call=self.plugins,
            files=self._files,
            environ=self.environ,
        )
        self.setter = LevelSetter(
            self.docker, connector.config, connector.lookup, plugin_call=self.plugins
        )

    def _files(self, pattern: str) -> list[tuple[str, bytes]]:
        directory, _, glob = pattern.rpartition("/")
        suffix = glob.lstrip("*")
        return sorted(
            (p, data)
            for p, data in self.files.items()
            if p.startswith(directory + "/") and p.endswith(suffix)
        )

    def plugin_id(self, kind: str) -> str:
        return str(self.docker.plugins[f"telenet/{kind}:latest"]["Id"])


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def test_every_part(setup: Setup) -> None:
    telemount = setup.plugin_id("telemount")
    helper = f"/var/lib/docker/plugins/{telemount}/rootfs/var/lib/telenet/telemount/mounts"
    setup.files[f"{helper}/10.0.0.5-2222.log"] = b"helper mounted\n"
    parts = setup.gatherer.gather(since=1000.0)
    assert sorted(parts) == [
        "cli/README.txt",
        "config.json",
        "daemon/tp-blue.log",
        "docker/plugins.json",
        "docker/version.json",
        "doctor.txt",
        "helpers/10.0.0.5-2222.log",
        "plugins/telemount-telenet_telemount_latest.health.json",
        "plugins/telemount-telenet_telemount_latest.log",
        "plugins/teleroute-telenet_teleroute_latest.health.json",
        "plugins/teleroute-telenet_teleroute_latest.log",
        "status.json",
    ]
    assert parts["daemon/tp-blue.log"] == "daemon started on 172.17.0.2"
    assert setup.docker.logs_since == 1000.0
    assert "hello from" in parts["plugins/telemount-telenet_telemount_latest.log"]
    assert parts["helpers/10.0.0.5-2222.log"] == "helper mounted\n"
    assert json.loads(parts["status.json"])[0]["connection"] == "blue"
    assert json.loads(parts["docker/version.json"])["ApiVersion"] == "1.41"
    assert {p["Name"] for p in json.loads(parts["docker/plugins.json"])} == {
        "telenet/teleroute:latest",
        "telenet/telemount:latest",
    }
    assert parts["doctor.txt"].startswith("OK    dockerd")
    # The managed plug-ins were asked on their sockets, for the lines since then.
    socket = f"/run/docker/plugins/{telemount}/telemount.sock"
    assert (socket, "/Telenet.Logs", {"Since": 1000.0}) in setup.plugins.asked


def test_cli_log_directory_files(setup: Setup) -> None:
    logs = os.path.join(setup.environ["XDG_CACHE_HOME"], "telenet", "logs")
    setup.files[f"{logs}/cli.log"] = b"a line\n"
    parts = setup.gatherer.gather(None)
    assert parts["cli/cli.log"] == "a line\n"
    assert "cli/README.txt" not in parts


def test_a_plugin_that_does_not_answer_is_a_note(setup: Setup) -> None:
    setup.plugins.down.add(setup.plugin_id("teleroute"))
    parts = setup.gatherer.gather(None)
    note = parts["plugins/teleroute-telenet_teleroute_latest.log"]
    assert note.startswith("could not ask the plug-in on /run/docker/plugins/")
    assert "Connection refused" in note and "journalctl -u docker" in note
    assert "plugins/teleroute-telenet_teleroute_latest.health.json" not in parts


def test_engine_elsewhere_and_legacy(setup: Setup) -> None:
    setup.docker.here = False
    parts = setup.gatherer.gather(None)
    assert parts["plugins/teleroute-telenet_teleroute_latest.log"].startswith(
        "the engine runs elsewhere"
    )
    assert setup.plugins.asked == []
    assert pluginsocket.socket_of(setup.docker, "teleroute") is None
    setup.docker.here = True
    assert pluginsocket.socket_of(setup.docker, "teleroute") == "/run/docker/plugins/teleroute.sock"


def test_dockerd_gone_still_gives_a_zip(setup: Setup) -> None:
    from telenet.cli.dockerapi import DockerUnavailable

    setup.docker.fail["api_version"] = DockerUnavailable("Cannot connect")
    setup.docker.fail["containers"] = DockerUnavailable("Cannot connect")
    parts = setup.gatherer.gather(None)
    assert parts["docker/unreachable.txt"].startswith("dockerd did not answer: Cannot connect")
    assert "config.json" in parts and "doctor.txt" in parts


def test_anonymizer() -> None:
    clean = gatherlogs.Anonymizer(["blue", "tp-blue", "myhost", "x"])
    text = "tp-blue on myhost: 172.17.0.2 -> 10.1.2.3, again 172.17.0.2, [fd00::5]:53, 127.0.0.1"
    assert clean(text) == "name-1 on name-2: ip-1 -> ip-2, again ip-1, [ip-3]:53, 127.0.0.1"
    assert clean("blue") == "name-3"
    assert clean("version 1.2.3.4.5 and 999.1.1.1") == "version 1.2.3.4.5 and 999.1.1.1"


# -- loglevel


def test_loglevel_daemon_and_plugins(setup: Setup) -> None:
    data = setup.setter.set("debug", 30.0)
    assert data["ok"] is True
    assert setup.world.control.calls[-1] == ("set_log_level", "debug", 30.0)
    assert [d["connection"] for d in data["daemons"]] == ["blue"]
    assert [(p["kind"], p["level"]) for p in data["plugins"]] == [
        ("teleroute", "debug"),
        ("telemount", "debug"),
    ]
    bodies = [body for _, endpoint, body in setup.plugins.asked if endpoint == "/Telenet.LogLevel"]
    assert bodies == [{"Level": "debug", "Duration": 30.0}] * 2


def test_loglevel_reports_who_failed(setup: Setup) -> None:
    setup.plugins.down.add(setup.plugin_id("telemount"))
    setup.world.control.answering = False
    data = setup.setter.set("warn", 0)
    assert data["ok"] is False
    assert "Connection refused" in data["daemons"][0]["error"]
    assert "error" not in data["plugins"][0] and "Connection refused" in data["plugins"][1]["error"]


def test_loglevel_without_connection_sets_the_installed_plugins(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    setup.world.connector.quit("blue")
    data = setup.setter.set("info", 0)
    assert data["daemons"] == [] and len(data["plugins"]) == 2 and data["ok"] is True


# -- through main


@pytest.fixture
def in_main(setup: Setup, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Setup:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("TELENET_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TELENET_SYSTEM_CONFIG", str(tmp_path / "etc.yml"))
    monkeypatch.setattr(
        cli,
        "make_connector",
        lambda config, say: attrs.evolve(setup.world.connector, config=config, say=say),
    )
    monkeypatch.setattr(diagnose, "make_gatherer", lambda connector: setup.gatherer)
    monkeypatch.setattr(diagnose, "make_level_setter", lambda connector: setup.setter)
    return setup


def test_main_gather_logs(
    in_main: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "out.zip"
    assert main(["gather-logs", "-o", str(target), "--since", "1h", "--anonymize"]) == 0
    assert capsys.readouterr().out.startswith(f"Wrote {target} (")
    with zipfile.ZipFile(target) as z:
        names = z.namelist()
        daemon = z.read("daemon/tp-blue.log").decode()
        status = z.read("status.json").decode()
    assert "daemon/tp-blue.log" in names
    assert daemon == "daemon started on ip-1" or daemon.startswith("daemon started on ip-")
    assert '"blue"' not in status and "name-" in status
    assert in_main.docker.logs_since is not None
    assert main(["--format", "json", "gather-logs", "-o", str(target)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["file"] == str(target) and "doctor.txt" in data["parts"]


def test_main_gather_logs_errors(
    in_main: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gather-logs", "--since", "soon"]) == 1
    assert "--since 'soon' is not a duration" in capsys.readouterr().err
    assert main(["gather-logs", "-o", str(tmp_path / "no" / "dir" / "x.zip")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_main_loglevel(in_main: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["loglevel", "debug", "--duration", "2m"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "Log level debug for 120 s:"
    assert "  daemon blue: ok" in out
    assert main(["loglevel", "LOUD"]) == 1
    assert "LEVEL 'LOUD' is not one of" in capsys.readouterr().err
    assert main(["loglevel", "info", "-d", "later"]) == 1
    assert "--duration 'later'" in capsys.readouterr().err
    in_main.world.control.answering = False
    assert main(["loglevel", "info", "--output", "json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False


# -- the socket client, against a real unix socket


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/Telenet.Health":
            code, answer = 200, {"Echo": body}
        else:
            code, answer = 404, {"Err": f"unknown plug-in endpoint {self.path!r}"}
        data = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class _UnixHTTP(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> Any:
        request, _ = super().get_request()
        return request, ("local", 0)


@pytest.fixture
def plugin_socket(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "p.sock")
    server = _UnixHTTP(path, _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path
    server.shutdown()
    server.server_close()


def test_call_plugin_over_a_unix_socket(plugin_socket: str, tmp_path: Path) -> None:
    assert pluginsocket.call_plugin(plugin_socket, "/Telenet.Health", {"A": 1}) == {
        "Echo": {"A": 1}
    }
    older = "unknown plug-in endpoint '/Telenet.Logs': a plug-in older than this telenet"
    with pytest.raises(PluginCallError, match=older):
        pluginsocket.call_plugin(plugin_socket, "/Telenet.Logs", {})
    with pytest.raises(PluginCallError, match="No such file"):
        pluginsocket.call_plugin(str(tmp_path / "none.sock"), "/Telenet.Logs", {})
