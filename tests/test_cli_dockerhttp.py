"""
``telenet.cli.dockerhttp.QuickAPI``: docker-py's calls of the CLI's quick paths, straight over the
engine's unix socket; here against a small HTTP server on a socket in a temporary directory.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from telenet.cli.dockerapi import Conflict, DockerUnavailable, NotFound, SDKDocker
from telenet.cli.dockercontext import DockerEndpoint
from telenet.cli.dockerhttp import QuickAPI, StatusError, Unreachable
from tests.unixhttp import QuietHandler, UnixServer, serving


class Engine:
    """What the fake engine was asked, and what it answers (path -> (status, body))."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, dict[str, list[str]], Any]] = []
        self.answers: dict[tuple[str, str], tuple[int, Any]] = {}
        self.chunked = False
        #: Headers sent with every answer.
        self.headers: dict[str, str] = {}


class _Server(UnixServer):
    engine: Engine


class _Handler(QuietHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _answer(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        engine = self.server.engine
        engine.asked.append((self.command, url.path, parse_qs(url.query), body))
        status, answer = engine.answers.get((self.command, url.path), (404, {"message": "no"}))
        data = json.dumps(answer).encode() if answer is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, value in engine.headers.items():
            self.send_header(name, value)
        if engine.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(data), 7):
                piece = data[i : i + 7]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def engine() -> Iterator[tuple[Engine, str]]:
    with tempfile.TemporaryDirectory(prefix="tn-") as d:
        path = os.path.join(d, "docker.sock")
        server = _Server(path, _Handler)
        server.engine = Engine()
        with serving(server):
            yield server.engine, path


def _never() -> Any:
    raise AssertionError("docker-py was not to be used")


def test_calls_as_docker_py_makes_them(engine: tuple[Engine, str]) -> None:
    """Paths, queries (filters as JSON lists) and bodies as docker-py sends them; JSON back."""
    fake, path = engine
    fake.answers = {
        ("GET", "/containers/json"): (200, [{"Id": "c1"}]),
        ("GET", "/networks/tn"): (200, {"Name": "tn", "Id": "n1"}),
        ("POST", "/networks/tn/connect"): (200, None),
        ("DELETE", "/containers/c1"): (204, None),
        ("GET", "/plugins/ns/telemount:latest/json"): (200, {"Enabled": True}),
        ("GET", "/volumes"): (200, {"Volumes": None}),
    }
    api = QuickAPI(path, _never, timeout=5)
    assert api.containers(all=True, filters={"label": "telenet.role=daemon"}) == [{"Id": "c1"}]
    assert api.inspect_network("tn") == {"Name": "tn", "Id": "n1"}
    api.connect_container_to_network("c1", "tn", driver_opt={"k": "v"})
    api.connect_container_to_network("c1", "tn")
    api.remove_container("c1", force=True, v=True)
    assert api.inspect_plugin("ns/telemount:latest") == {"Enabled": True}
    assert api.volumes(filters={"driver": "d"}) == {"Volumes": None}
    assert fake.asked == [
        (
            "GET",
            "/containers/json",
            {"all": ["1"], "filters": ['{"label": ["telenet.role=daemon"]}']},
            None,
        ),
        ("GET", "/networks/tn", {}, None),
        (
            "POST",
            "/networks/tn/connect",
            {},
            {"Container": "c1", "EndpointConfig": {"DriverOpts": {"k": "v"}}},
        ),
        ("POST", "/networks/tn/connect", {}, {"Container": "c1", "EndpointConfig": {}}),
        ("DELETE", "/containers/c1", {"v": ["1"], "force": ["1"]}, None),
        ("GET", "/plugins/ns/telemount:latest/json", {}, None),
        ("GET", "/volumes", {"filters": ['{"driver": ["d"]}']}, None),
    ]


def test_a_chunked_answer(engine: tuple[Engine, str]) -> None:
    fake, path = engine
    fake.chunked = True
    networks = [{"Name": f"net{i}", "Id": "x" * 64} for i in range(20)]
    fake.answers = {("GET", "/networks"): (200, networks)}
    assert QuickAPI(path, _never, timeout=5).networks() == networks


def test_engine_errors_carry_its_message(engine: tuple[Engine, str]) -> None:
    fake, path = engine
    fake.answers = {("DELETE", "/containers/c1"): (409, {"message": "removal in progress"})}
    api = QuickAPI(path, _never, timeout=5)
    with pytest.raises(StatusError) as e:
        api.remove_container("c1")
    assert (e.value.status_code, e.value.explanation) == (409, "removal in progress")


def test_other_calls_are_docker_py_s() -> None:
    class Fallback:
        def create_container(self, image: str) -> str:
            return f"made {image}"

    api = QuickAPI("/nonexistent.sock", Fallback)
    assert api.create_container("busybox") == "made busybox"
    with pytest.raises(Unreachable):
        api.version()


def test_sdkdocker_maps_the_quick_errors(engine: tuple[Engine, str]) -> None:
    """On a local socket SDKDocker uses the quick calls: 404 NotFound (None where it may be
    missing), 409 Conflict, the engine's message kept; docker-py stays unimported."""
    fake, path = engine
    fake.answers = {
        ("GET", "/containers/tp-x/json"): (200, {"Id": "x"}),
        ("GET", "/networks/tn"): (200, {"Name": "tn", "Id": "n1"}),
        ("POST", "/networks/tn/connect"): (409, {"message": "endpoint already exists"}),
        ("GET", "/networks/gone"): (404, {"message": "network gone not found"}),
    }
    docker = SDKDocker(
        endpoint=DockerEndpoint("default", f"unix://{path}", None, "the default", True)
    )
    assert docker.container("tp-x") == {"Id": "x"}
    assert docker.container("tp-y") is None
    assert docker.network("gone") is None
    with pytest.raises(Conflict, match="endpoint already exists"):
        docker.connect("tn", "c1", None)
    with pytest.raises(NotFound, match="network gone not found"):
        docker.connect("gone", "c1", None)
    assert docker._client is None


def test_api_version_from_the_ping(engine: tuple[Engine, str]) -> None:
    """The API version is the ``Api-Version`` header of ``/_ping`` (``/version`` costs the
    engine a call to containerd); an engine that sends none is asked ``/version``."""
    fake, path = engine
    fake.headers = {"Api-Version": "1.41"}
    fake.answers = {
        ("GET", "/_ping"): (200, "OK"),
        ("GET", "/version"): (200, {"ApiVersion": "1.40"}),
    }
    docker = SDKDocker(
        endpoint=DockerEndpoint("default", f"unix://{path}", None, "the default", True)
    )
    assert docker.api_version() == "1.41"
    assert fake.asked == [("GET", "/_ping", {}, None)]
    fake.headers = {}
    assert docker.api_version() == "1.40"
    assert [a[1] for a in fake.asked[1:]] == ["/_ping", "/version"]
    assert docker._client is None


def test_sdkdocker_says_which_socket_does_not_answer() -> None:
    with tempfile.TemporaryDirectory(prefix="tn-") as d:
        path = os.path.join(d, "docker.sock")
        docker = SDKDocker(
            endpoint=DockerEndpoint("default", f"unix://{path}", None, "DOCKER_HOST", True)
        )
        with pytest.raises(DockerUnavailable) as e:
            docker.networks()
    assert str(e.value) == (
        f"Docker at unix://{path} (context default, from DOCKER_HOST) does not answer: "
        "No such file or directory"
    )
