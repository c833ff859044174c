"""
Fixtures for end-to-end tests: real dockerd, real FUSE, real SFTP servers, real twistd apps.

The plug-ins run as real ``twistd`` processes (as a user runs them), named with the ``tntest``
prefix so that cleanup touches nothing else. When ``CI=true`` a test whose requirement is
missing fails instead of skipping: CI must prove the end-to-end story, not excuse it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
BUSYBOX = "local/busybox"


def require(condition: bool, why: str) -> None:
    """Skip (or, in CI, fail) a test whose real-world requirement is missing."""
    if not condition:
        if IN_CI:
            pytest.fail(f"end-to-end requirement missing in CI: {why}")
        pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def run(
    *args: str, check: bool = True, timeout: float = 120, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command, returning its output; on failure the assertion shows stderr."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check:
        assert result.returncode == 0, (
            f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}"
        )
    return result


def fuse_mounts(fragment: str) -> list[str]:
    """Mount points in /proc/mounts whose path contains ``fragment``."""
    with open("/proc/mounts") as f:
        return [line.split()[1] for line in f if fragment in line.split()[1]]


class Daemon:
    """A background process (a twistd app) with its log, stopped at teardown."""

    def __init__(self, args: list[str], log_path: str, env: dict[str, str] | None = None):
        self.args = args
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(self.env or {})}
        )
        log.close()
        return self

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-5000:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)

    def stop(self) -> int | None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None


@pytest.fixture(scope="session")
def docker_ready() -> None:
    """A dockerd answering, and the local busybox image (scripts/dev setup makes both)."""
    require(shutil.which("docker") is not None, "the docker CLI is not installed")
    info = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
    require(info.returncode == 0, "dockerd does not answer (run: scripts/dev setup)")
    image = subprocess.run(["docker", "image", "inspect", BUSYBOX], capture_output=True)
    require(image.returncode == 0, f"image {BUSYBOX} is missing (run: scripts/dev setup)")


@pytest.fixture(scope="session")
def fuse_ready() -> None:
    require(os.path.exists("/dev/fuse"), "/dev/fuse is missing")
    require(os.geteuid() == 0, "FUSE mounts for Docker need root")
    require(shutil.which("fusermount3") is not None, "fuse3 is not installed")


@pytest.fixture
def workdir() -> Iterator[str]:
    """A scratch directory with the test prefix, removed afterwards."""
    path = f"/tmp/tntest-{uuid.uuid4().hex[:8]}"
    os.makedirs(path)
    yield path
    for mp in fuse_mounts(path):
        subprocess.run(["fusermount3", "-uz", mp], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


class Agent:
    """A ``twistd sftp-agent`` exporting ``root`` on a loopback port."""

    def __init__(self, root: str, port: int, log_path: str) -> None:
        self.root = root
        self.port = port
        self.daemon = Daemon(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "sftp-agent",
                "--root",
                root,
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
            ],
            log_path,
        )

    def start(self) -> Agent:
        self.daemon.start()
        try:
            wait_for(lambda: port_open(self.port) or not self.daemon.alive(), 20, "sftp-agent")
        except AssertionError:
            raise AssertionError(f"sftp-agent did not listen: {self.daemon.log()}") from None
        assert self.daemon.alive(), f"sftp-agent died: {self.daemon.log()}"
        return self


@pytest.fixture
def sftp_agent(workdir: str) -> Iterator[Agent]:
    """An sftp-agent whose export holds ``echo/var/run/secrets/{token,namespace}``."""
    root = os.path.join(workdir, "exports")
    secrets = os.path.join(root, "echo", "var", "run", "secrets")
    os.makedirs(secrets)
    for name, text in (("token", "s3cr3t-token\n"), ("namespace", "default\n")):
        with open(os.path.join(secrets, name), "w") as f:
            f.write(text)
    agent = Agent(root, free_port(), os.path.join(workdir, "agent.log")).start()
    yield agent
    agent.daemon.stop()


class Telemount:
    """A ``twistd telemount`` legacy plug-in under a unique driver name."""

    def __init__(self, workdir: str, name: str | None = None) -> None:
        self.name = name or f"tntest{uuid.uuid4().hex[:8]}"
        self.socket = f"/run/docker/plugins/{self.name}.sock"
        self.mount_root = os.path.join(workdir, "mnt")
        self.state_dir = os.path.join(workdir, "state")
        self.log_path = os.path.join(workdir, "telemount.log")
        self.daemon = self._new_daemon()

    def _new_daemon(self) -> Daemon:
        return Daemon(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "telemount",
                "--listen",
                f"unix:{self.socket}:mode=660:lockfile=1:backlog=128",
                "--mount-root",
                self.mount_root,
                "--state-dir",
                self.state_dir,
                "--timeout",
                "3",
            ],
            self.log_path,
        )

    def start(self) -> Telemount:
        self.daemon = self._new_daemon().start()
        try:
            wait_for(
                lambda: _unix_answers(self.socket) or not self.daemon.alive(),
                20,
                "telemount socket",
            )
        except AssertionError:
            raise AssertionError(f"telemount did not listen: {self.daemon.log()}") from None
        assert self.daemon.alive(), f"telemount died: {self.daemon.log()}"
        return self

    def volumes(self) -> list[str]:
        """
        The volumes this plug-in serves Docker, asked over its socket as dockerd asks it.

        Not `docker volume ls`: dockerd lists every volume plug-in it ever used, and retries
        each dead one (the ones earlier tests stopped) for seconds, so a listing late in a
        run can take minutes.
        """
        answer = plugin_call(self.socket, "/VolumeDriver.List", {})
        return sorted(v["Name"] for v in answer["Volumes"])


def plugin_call(path: str, endpoint: str, body: dict[str, Any], timeout: float = 30) -> Any:
    """POST ``body`` to a Docker plug-in's unix socket, as dockerd does; the decoded answer."""
    import http.client
    import json

    class _Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(timeout)
            self.sock.connect(path)

    connection = _Connection("plugin", timeout=timeout)
    try:
        connection.request("POST", endpoint, json.dumps(body), {"Content-Type": "application/json"})
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def _unix_answers(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(0.5)
            s.connect(path)
            return True
    except OSError:
        return False


@pytest.fixture
def telemount(workdir: str, docker_ready: None, fuse_ready: None) -> Iterator[Telemount]:
    """A running telemount plug-in; its volumes, mounts and helpers are gone afterwards."""
    plugin = Telemount(workdir).start()
    yield plugin
    # A plug-in that stopped answering would stall every later `docker volume` call of the
    # run (dockerd retries a dead plug-in socket), so it is replaced before the cleanup and
    # always stopped after it, whatever failed.
    answered = plugin.daemon.alive() and _unix_answers(plugin.socket)
    try:
        if not answered:
            plugin.daemon.kill(signal.SIGKILL)
            plugin.start()
        for volume in plugin.volumes():
            # Only containers using this plug-in's volumes: other tests may be running.
            users = run("docker", "ps", "-aq", "--filter", f"volume={volume}").stdout.split()
            for container in users:
                run("docker", "rm", "-f", container, check=False)
            run("docker", "volume", "rm", "-f", volume, check=False)
    finally:
        plugin.daemon.stop()
        for path in (plugin.socket, plugin.socket + ".lock"):
            if os.path.lexists(path) and not plugin.daemon.alive():
                os.unlink(path)
    leftovers = fuse_mounts(plugin.mount_root)
    subprocess.run(["pkill", "-9", "-f", f"telenet.fuse.helper .*{workdir}"], capture_output=True)
    assert answered, f"the plug-in stopped answering on {plugin.socket}: {plugin.daemon.log()}"
    assert leftovers == [], f"mounts left behind after the plug-in stopped: {leftovers}"
