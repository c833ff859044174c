"""
What the CLI's quick commands import (issue 19: a fast CLI): ``telenet --help`` only argparse and
the CLI's entry point; ``status`` and ``docker-run`` neither Twisted nor docker-py. Modules, not
time: each run is a fresh interpreter, whose ``sys.modules`` is the answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.application.internet import backoffPolicy

from telenet.cli.workload import PROBE_BACKOFF
from tests.unixhttp import QuietHandler, UnixServer, serving

ROOT = Path(__file__).resolve().parent.parent

#: Never on the quick paths: the reactor, the apps' frameworks, docker-py and its HTTP stack.
HEAVY = (
    "twisted",
    "grpc",
    "google.protobuf",
    "docker",
    "requests",
    "urllib3",
    "telenet.teleroute",
    "telenet.netplugin",
    "telenet.volumes",
    "telenet.fuse",
    "telenet.sftp",
    "telenet.daemon",
)


def modules_after(code: str, env: dict[str, str] | None = None) -> list[str]:
    """The modules a fresh interpreter holds after ``code`` (which may exit)."""
    script = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))\n" + code
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.stderr.strip(), proc
    return list(json.loads(proc.stderr.strip().splitlines()[-1]))


def test_help_imports_only_the_entry_point() -> None:
    """``telenet --help``: of telenet, the entry point and the argument tables of compose and
    of doctor/gather-logs/loglevel; no YAML, no attrs, no Twisted, no gRPC, no docker-py."""
    modules = modules_after("from telenet.cli.main import main\nmain(['--help'])\n")
    assert "argparse" in modules
    ours = [m for m in modules if m == "telenet" or m.startswith("telenet.")]
    assert ours == [
        "telenet",
        "telenet.cli",
        "telenet.cli.compose",
        "telenet.cli.compose.arguments",
        "telenet.cli.diagnoseargs",
        "telenet.cli.main",
    ]
    others = ("yaml", "attr", "attrs", "zope", "http", "ssl") + HEAVY
    assert [m for m in modules if m.split(".")[0] in others or m.startswith(others)] == []


def test_status_and_docker_run_modules_import_no_twisted_nor_docker_py() -> None:
    """What ``status`` and ``docker-run`` import talks to Docker without docker-py."""
    modules = modules_after(
        "import telenet.cli.main, telenet.cli.config, telenet.cli.connector\n"
        "import telenet.cli.runner, telenet.cli.dockerhttp, telenet.cli.status\n"
    )
    assert "telenet.cli.runner" in modules
    assert [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)] == []


#: What a connection ``tn`` looks like to the docker-run path (the engine's JSON, trimmed).
DAEMON = {
    "Id": "d1",
    "Config": {"Labels": {"telenet.cli.connection": "tn", "telenet.role": "daemon"}},
    "State": {"Running": True},
    "NetworkSettings": {"Networks": {"tn": {"IPAddress": "10.9.0.2"}}},
}
NETWORK = {
    "Name": "tn",
    "Id": "n1",
    "Labels": {"telenet.cli.connection": "tn", "telepresence.io/teleroute/daemon": "d1"},
}
ANSWERS: dict[tuple[str, str], Any] = {
    ("GET", "/_ping"): "OK",
    ("GET", "/containers/json"): [{"Id": "d1"}],
    ("GET", "/containers/d1/json"): DAEMON,
    ("GET", "/containers/tp-tn/json"): DAEMON,
    ("GET", "/networks"): [NETWORK],
    ("GET", "/networks/tn"): NETWORK,
    ("POST", "/networks/tn/connect"): None,
    ("DELETE", "/containers/c1"): None,
}


class _Engine(UnixServer):
    asked: list[str]


class _Handler(QuietHandler):
    protocol_version = "HTTP/1.1"
    server: _Engine

    def _answer(self) -> None:
        path = self.path.partition("?")[0]
        self.server.asked.append(f"{self.command} {path}")
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        found = (self.command, path) in ANSWERS
        data = json.dumps(ANSWERS.get((self.command, path), {"message": "no"})).encode()
        self.send_response(200 if found else 404)
        self.send_header("Api-Version", "1.41")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[_Engine, Path]]:
    """A fake engine on a socket, and a fake docker CLI (``create`` prints c1) beside it."""
    server = _Engine(str(tmp_path / "docker.sock"), _Handler)
    server.asked = []
    docker = tmp_path / "bin" / "docker"
    docker.parent.mkdir()
    docker.write_text(
        f'#!/bin/sh\necho "$*" >> {tmp_path}/docker.log\n[ "$1" = create ] && echo c1\nexit 0\n'
    )
    docker.chmod(0o755)
    with serving(server):
        yield server, tmp_path


def test_a_docker_run_imports_only_its_path(engine: tuple[_Engine, Path]) -> None:
    """
    A whole ``docker-run`` (against a fake engine and docker CLI), with a config file: of
    telenet, the modules of its path alone (not the connector's other collaborators, whose
    imports include http.client and secrets); no PyYAML for a plain config.yml.
    """
    server, tmp = engine
    config = tmp / "config.yml"
    config.write_text("docker:\n  daemonImage: telenet-x\n  teleroute: {namespace: tn}\n")
    env = {
        **os.environ,
        "DOCKER_HOST": f"unix://{tmp}/docker.sock",
        "PATH": f"{tmp}/bin:{os.environ['PATH']}",
        "TELENET_CONFIG": str(config),
    }
    env.pop("TELENET_CONNECTION", None)
    code = (
        "from telenet.cli.main import main\nsys.exit(main(['docker-run', '--rm', 'img', 'true']))"
    )
    modules = modules_after(code, env)
    assert (tmp / "docker.log").read_text().splitlines() == [
        "create --dns 10.9.0.2 --dns-search default.svc.cluster.local --dns-search "
        "svc.cluster.local --dns-search cluster.local --dns-search tel2-search --rm img true",
        "start --attach c1",
    ]
    assert "POST /networks/tn/connect" in server.asked
    assert server.asked[-1] == "DELETE /containers/c1"
    assert "GET /version" not in server.asked  # /_ping says the API version
    ours = [m for m in modules if m == "telenet" or m.startswith("telenet.")]
    assert ours == [
        "telenet",
        "telenet.cli",
        "telenet.cli.compose",
        "telenet.cli.compose.arguments",
        "telenet.cli.config",
        "telenet.cli.connection",
        "telenet.cli.connector",
        "telenet.cli.daemoncontrol",
        "telenet.cli.diagnoseargs",
        "telenet.cli.dockerapi",
        "telenet.cli.dockercontext",
        "telenet.cli.dockerhttp",
        "telenet.cli.interfaces",
        "telenet.cli.lookup",
        "telenet.cli.main",
        "telenet.cli.naming",
        "telenet.cli.plainyaml",
        "telenet.cli.runflags",
        "telenet.cli.runner",
        "telenet.cli.workload",
        "telenet.core",
        "telenet.core.gocompat",
        "telenet.core.volumeowner",
    ]
    others = ("yaml", "http", "email", "ssl", "secrets") + HEAVY
    assert [m for m in modules if m.split(".")[0] in others or m.startswith(others)] == []


def test_probe_backoff_is_twisteds() -> None:
    """Written out to spare the import, the agent probe's delays are still Twisted's policy."""
    twisted = backoffPolicy(initialDelay=0.25, maxDelay=2.0, factor=1.6, jitter=lambda: 0)
    for failures in (0, 1, 2, 3, 4, 5, 6, 10, 1000):
        assert PROBE_BACKOFF(failures) == twisted(failures)
