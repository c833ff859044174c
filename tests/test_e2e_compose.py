"""
End to end: ``telenet compose`` runs a three-service Compose project on a connection to the
embedded demo cluster, with real dockerd, real Compose v2, the managed plug-ins and a real
telemount volume.

``web`` is engaged against the demo cluster's agent with a read-only remote mount of
``/var/run/secrets/kubernetes.io`` (it serves the token it reads); ``worker`` is on the
connection (it fetches the cluster's echo service by its cluster name, and ``web`` and ``db``
by their Compose names); ``db`` is a plain local service with the user's named volume. After
``telenet compose down`` nothing of the project is left but the user's volume.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import BUSYBOX, require, run
from .test_e2e_cli import BODY, SECRETS, SERVICE, TELENET, Env, uid
from .test_e2e_cli import env as cli_env

pytestmark = pytest.mark.e2e

#: The module's environment: the CLI tests' demo cluster and config, set up once here.
env = cli_env


def compose_v2() -> bool:
    found = subprocess.run(["docker", "compose", "version", "--short"], capture_output=True)
    if found.returncode == 0 and found.stdout.decode().lstrip("v").startswith("2."):
        return True
    if shutil.which("docker-compose") is None:
        return False
    found = subprocess.run(["docker-compose", "version", "--short"], capture_output=True)
    return found.returncode == 0 and found.stdout.decode().lstrip("v").startswith("2.")


def new_project(env: Env, kind: str, tag: str) -> tuple[str, str, str]:
    """A fresh project's name, its directory (made) and the name of its connection."""
    require(compose_v2(), "Compose v2 is not installed (run: scripts/dev setup)")
    name = f"{env.prefix}{kind}{uid()[:4]}"
    directory = os.path.join(env.workdir, name)
    os.makedirs(directory)
    return name, directory, f"{env.prefix}-{tag}"


def connections(env: Env, connection: str) -> str:
    """The top-level ``x-telenet`` block naming the test cluster's connection."""
    return f"""\
x-telenet:
  connections:
    - name: {connection}
      vifNetwork: {env.cluster["network"]}
      clusterDNS: {env.cluster["cluster_dns"]}
"""


@pytest.fixture
def project(env: Env) -> Iterator[dict[str, Any]]:
    name, directory, connection = new_project(env, "shop", "cmp")
    with open(os.path.join(directory, "compose.yaml"), "w") as f:
        f.write(
            f"""\
{connections(env, connection)}services:
  web:
    image: {BUSYBOX}
    command: ["sh", "-c", "mkdir -p /www && cp {SECRETS}/serviceaccount/token /www/token
      && (touch {SECRETS}/x 2>/dev/null || echo read-only > /www/ro)
      && exec httpd -f -p 80 -h /www"]
    x-telenet:
      type: engage
      agent: {env.cluster["agent"]}
      container: {env.cluster["sample_container"]}
      remoteMounts: ["{SECRETS}:ro"]
  worker:
    image: {BUSYBOX}
    command: ["sh", "-c", "trap 'exit 0' TERM; while sleep 0.1; do :; done"]
    x-telenet:
      type: connect
  db:
    image: {BUSYBOX}
    command: ["sh", "-c", "echo db-ok > /data/hello && exec httpd -f -p 80 -h /data"]
    volumes:
      - dbdata:/data
volumes:
  dbdata:
"""
        )
    env.connections.add(connection)
    facts = {"name": name, "directory": directory, "connection": connection}
    try:
        yield facts
    finally:
        compose(env, facts, "down", "--timeout", "1", check=False)
        env.telenet("quit", "--name", connection, check=False)
        run("docker", "volume", "rm", "-f", f"{name}_dbdata", check=False)


def compose(
    env: Env, project: dict[str, Any], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return env.telenet(
        "compose",
        "--project-directory",
        project["directory"],
        "-f",
        os.path.join(project["directory"], "compose.yaml"),
        "-p",
        project["name"],
        *args,
        check=check,
    )


def fetch(env: Env, project: dict[str, Any], host: str, path: str = "/") -> str:
    """
    An HTTP GET in the worker (busybox's nc: its static wget cannot resolve names), tried for a
    while: httpd and the mounts start with the project.
    """
    get = (
        f"printf 'GET {path} HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' | nc -w 5 {host} 80 "
        "| sed '1,/^\\r*$/d'"
    )
    deadline = time.monotonic() + 30
    while True:
        result = compose(env, project, "exec", "-T", "worker", "sh", "-c", get, check=False)
        if (result.returncode == 0 and result.stdout.strip()) or time.monotonic() > deadline:
            assert result.returncode == 0, f"{host}{path}: {result.stdout}{result.stderr}"
            return result.stdout
        time.sleep(0.5)


def project_leftovers(project: dict[str, Any], env: Env) -> dict[str, list[str]]:
    label = f"label=com.docker.compose.project={project['name']}"
    containers = run("docker", "ps", "-a", "-q", "--filter", label).stdout.split()
    networks = run("docker", "network", "ls", "-q", "--filter", label).stdout.split()
    return {"containers": containers, "networks": networks, "telemount": env.volumes()}


def test_compose_project_on_the_connection(env: Env, project: dict[str, Any]) -> None:
    out = compose(env, project, "up", "-d").stdout
    assert f"Connected to {project['connection']}" in out, out
    assert fetch(env, project, SERVICE).strip() == BODY
    assert fetch(env, project, "web", "/token").strip() == "demo-token-123"
    assert fetch(env, project, "web", "/ro").strip() == "read-only"
    assert fetch(env, project, "db", "/hello").strip() == "db-ok"
    status = env.status(project["connection"])
    assert project["name"] in str(status.get("compose_projects")), status
    assert len(status["bridges"]) == 1, status
    assert env.volumes() != []

    compose(env, project, "down", "--timeout", "1")
    assert project_leftovers(project, env) == {"containers": [], "networks": [], "telemount": []}
    # The connection up started is quit with the project; the user's volume stays.
    assert (
        run("docker", "network", "ls", "-q", "--filter", f"name=^{project['connection']}$").stdout
        == ""
    )
    assert (
        run("docker", "volume", "inspect", f"{project['name']}_dbdata", check=False).returncode == 0
    )


def running(project: str) -> list[str]:
    """The names of the project's running services."""
    label = f"label=com.docker.compose.project={project}"
    out = run(
        "docker", "ps", "--filter", label, "--format", '{{.Label "com.docker.compose.service"}}'
    )
    return sorted(out.stdout.split())


@pytest.fixture
def layered(env: Env) -> Iterator[dict[str, Any]]:
    """
    A project in two files: ``app`` on the connection in the first, and in the second ``probe``,
    engaged with a read-only remote mount, in the ``debug`` profile only.
    """
    name, directory, connection = new_project(env, "lay", "lay")
    loop = "trap 'exit 0' TERM INT; while sleep 0.1; do :; done"
    files = [os.path.join(directory, "compose.yaml"), os.path.join(directory, "debug.yaml")]
    with open(files[0], "w") as f:
        f.write(
            f"""\
{connections(env, connection)}services:
  app:
    image: {BUSYBOX}
    command: ["sh", "-c", "{loop}"]
    x-telenet:
      type: connect
"""
        )
    with open(files[1], "w") as f:
        f.write(
            f"""\
services:
  probe:
    image: {BUSYBOX}
    profiles: [debug]
    command: ["sh", "-c", "{loop}"]
    x-telenet:
      type: engage
      connection: {connection}
      agent: {env.cluster["agent"]}
      container: {env.cluster["sample_container"]}
      remoteMounts: ["{SECRETS}:ro"]
"""
        )
    env.connections.add(connection)
    argv = ["compose", "--project-directory", directory, "-p", name, "--profile", "debug"]
    for path in files:
        argv += ["-f", path]
    facts = {"name": name, "connection": connection, "argv": argv}
    try:
        yield facts
    finally:
        env.telenet(*argv, "down", "--timeout", "1", check=False)
        env.telenet("quit", "--name", connection, check=False)


def test_interrupted_up_then_quit_takes_the_project_down(env: Env, layered: dict[str, Any]) -> None:
    """
    An attached ``up`` of two files with a profile, interrupted as a terminal's ^C does (SIGINT
    to the whole process group): Compose stops the services, telenet closes the bridge and stays
    connected. ``telenet quit`` then runs ``down`` for the project, with its profile.
    """
    argv, name = layered["argv"], layered["name"]
    log = open(os.path.join(env.workdir, f"{name}-up.log"), "w+")
    up = subprocess.Popen(
        [TELENET, *argv, "up"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TELENET_CONFIG": env.config},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while running(name) != ["app", "probe"]:
            assert up.poll() is None, open(log.name).read()
            assert time.monotonic() < deadline, open(log.name).read()
            time.sleep(0.5)
        # The second file's engaged service, active by the profile, reads the remote token.
        token = env.telenet(
            *argv, "exec", "-T", "probe", "cat", f"{SECRETS}/serviceaccount/token"
        ).stdout
        assert token.strip() == "demo-token-123"
        assert len(env.status(layered["connection"])["bridges"]) == 1

        os.killpg(up.pid, signal.SIGINT)
        up.wait(timeout=120)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        log.close()
    assert running(name) == [], open(log.name).read()
    status = env.status(layered["connection"])
    assert status["daemon"]["status"] == "Connected", status
    assert status["bridges"] == [], status
    assert name in str(status.get("compose_projects")), status

    out = env.telenet("quit", "--name", layered["connection"]).stdout
    assert f"Taking down compose project {name}, which uses {layered['connection']}" in out, out
    assert project_leftovers(layered, env) == {"containers": [], "networks": [], "telemount": []}
