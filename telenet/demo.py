# -*- test-case-name: tests.test_e2e_demo -*-
"""
``telenet demo``: the telemount story on this machine, with nothing but Docker needed.

It exports a sample directory with ``twistd sftp-agent`` (the stand-in for a traffic-agent),
serves ``twistd telemount``, then does what a user does: creates a volume, reads the agent's
files from a busybox container, writes one back, and removes it all again.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

IMAGE = "local/busybox"


class DemoError(Exception):
    pass


def _say(text: str) -> None:
    print(text, flush=True)


def _run(*args: str) -> str:
    _say("$ " + shlex.join(args))
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if result.stdout:
        print(result.stdout, end="" if result.stdout.endswith("\n") else "\n", flush=True)
    if result.returncode != 0:
        raise DemoError(f"{args[0]} {args[1]} failed: {result.stderr.strip()}")
    return result.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(
    predicate: Callable[[], bool],
    what: str,
    proc: subprocess.Popen[bytes],
    log: str,
    timeout: float = 20,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    with open(log, errors="replace") as f:
        tail = f.read()[-2000:]
    raise DemoError(f"{what} did not start; its log:\n{tail}")


def _connects(family: int, address: str | tuple[str, int]) -> bool:
    try:
        with socket.socket(family) as s:
            s.settimeout(0.3)
            s.connect(address)
            return True
    except OSError:
        return False


@contextmanager
def _process(args: list[str], log: str) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_demo(plugin: str = "telemount", keep: bool = False) -> None:
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    sock = f"/run/docker/plugins/{plugin}.sock"
    if _connects(socket.AF_UNIX, sock):
        raise DemoError(f"a plug-in already serves {sock}; stop it or pass --plugin-name")
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        raise DemoError(f"image {IMAGE} is missing: run `scripts/dev setup` first")
    work = tempfile.mkdtemp(prefix="telenet-demo-")
    exports = os.path.join(work, "exports")
    secrets = os.path.join(exports, "echo", "var", "run", "secrets")
    os.makedirs(secrets)
    for name, text in (("token", "demo-token-123\n"), ("namespace", "default\n")):
        with open(os.path.join(secrets, name), "w") as f:
            f.write(text)
    port = _free_port()
    volume = "telenet-demo-vol"
    _say(f"telenet demo: an SFTP export at {exports} becomes a Docker volume\n")
    with ExitStack() as stack:
        agent_log = os.path.join(work, "agent.log")
        agent = stack.enter_context(
            _process(
                [
                    twistd,
                    "-n",
                    "--pidfile=",
                    "sftp-agent",
                    "--root",
                    exports,
                    "--listen",
                    f"tcp:{port}:interface=127.0.0.1",
                ],
                agent_log,
            )
        )
        _wait(
            lambda: _connects(socket.AF_INET, ("127.0.0.1", port)), "sftp-agent", agent, agent_log
        )
        _say(f"sftp-agent exports {exports} as /tel_app_exports on 127.0.0.1:{port}")
        plugin_log = os.path.join(work, "telemount.log")
        telemount = stack.enter_context(
            _process(
                [
                    twistd,
                    "-n",
                    "--pidfile=",
                    "telemount",
                    "--listen",
                    f"unix:{sock}:mode=660:lockfile=1:backlog=128",
                    "--mount-root",
                    os.path.join(work, "mnt"),
                    "--state-dir",
                    os.path.join(work, "state"),
                ],
                plugin_log,
            )
        )
        _wait(lambda: _connects(socket.AF_UNIX, sock), "telemount", telemount, plugin_log)
        _say(f"telemount serves {sock}\n")
        _run(
            "docker",
            "volume",
            "create",
            "-d",
            plugin,
            "-o",
            "host=127.0.0.1",
            "-o",
            f"port={port}",
            "-o",
            "container=echo",
            "-o",
            "dir=/var/run/secrets",
            volume,
        )
        try:
            _run("docker", "run", "--rm", "-v", f"{volume}:/secrets", IMAGE, "ls", "-l", "/secrets")
            _run(
                "docker", "run", "--rm", "-v", f"{volume}:/secrets", IMAGE, "cat", "/secrets/token"
            )
            _run(
                "docker",
                "run",
                "--rm",
                "-v",
                f"{volume}:/secrets",
                IMAGE,
                "sh",
                "-c",
                "echo hello from a container > /secrets/greeting",
            )
            with open(os.path.join(secrets, "greeting")) as f:
                _say(f"the agent's export now holds greeting: {f.read().strip()!r}\n")
        finally:
            _run("docker", "volume", "rm", volume)
    if keep:
        _say(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    _say("demo finished: volume removed, plug-in and agent stopped")
