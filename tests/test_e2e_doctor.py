"""
End to end: ``telenet doctor`` on real dockerd. One connection is shared by every test; each
breaks one thing, sees doctor's line and exit code, runs the fix doctor printed, and sees
doctor pass again.

The connection, the plug-ins and the demo cluster come from tests/test_e2e_cli.py's ``env``
fixture (its own prefix here); everything is removed at the end.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import signal
import subprocess
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest

from telenet.cli.config import Config, load_config
from telenet.cli.doctor import Doctor
from telenet.cli.main import make_connector
from telenet.cli.pluginsocket import call_plugin, socket_of
from telenet.cli.subnets import host_routes

from .conftest import BUSYBOX, Telemount, run
from .test_e2e_cli import Env, env, uid  # noqa: F401  (env: the module's fixture)

pytestmark = pytest.mark.e2e


class Connected:
    def __init__(self, e: Env, name: str) -> None:
        self.env = e
        self.name = name
        self.tp = f"tp-{name}"

    def doctor(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """doctor --name's exit code and its checks by name."""
        done = self.env.telenet("doctor", "--name", self.name, "--output", "json", check=False)
        assert done.returncode in (0, 1), done.stderr
        data = json.loads(done.stdout)
        assert data["ok"] is (done.returncode == 0)
        return done.returncode, {c["check"]: c for c in data["checks"]}

    def failing(self) -> dict[str, dict[str, Any]]:
        code, checks = self.doctor()
        return {k: c for k, c in checks.items() if c["state"] == "fail"}

    def wait_healthy(self, timeout: float = 60) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            code, checks = self.doctor()
            if code == 0:
                return checks
            if time.monotonic() > deadline:
                pytest.fail(f"doctor still fails: {json.dumps(checks, indent=1)}")
            time.sleep(0.5)


def apply(fix: str | None, prefix: str = "") -> None:
    """Run the command doctor printed (the part before a parenthesized alternative)."""
    assert fix
    command = fix.split(" (or ")[0]
    subprocess.run(prefix + command, shell=True, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def conn(env: Env) -> Iterator[Connected]:  # noqa: F811
    name = f"{env.prefix}-doc"
    env.connect(name)
    yield Connected(env, name)


def test_healthy_connection_passes(conn: Connected) -> None:
    checks = conn.wait_healthy(timeout=10)
    assert checks["plug-in teleroute"]["message"].endswith("answering")
    assert checks[f"{conn.name}: br-daemon"]["state"] == "ok"
    assert checks[f"{conn.name}: DNS"]["state"] in ("ok", "warn")
    text = conn.env.telenet("doctor", "--name", conn.name)
    assert len(text.stdout.splitlines()) == len(checks)


def test_disabled_plugin(conn: Connected) -> None:
    plugin = conn.env.plugins[1]
    run("docker", "plugin", "disable", "-f", plugin)
    found = conn.failing()
    check = found.pop("plug-in telemount")
    assert check["message"].endswith("disabled")
    assert check["fix"] == f"docker plugin enable {plugin}"
    apply(check["fix"])
    conn.wait_healthy(timeout=10)


def test_br_daemon_removed(conn: Connected) -> None:
    run("docker", "exec", conn.tp, "ip", "link", "del", "br-daemon")
    found = conn.failing()
    check = found[f"{conn.name}: br-daemon"]
    assert check["message"] == (
        f"br-daemon is missing in {conn.tp}: workloads cannot reach the daemon"
    )
    assert check["fix"] == f"docker restart {conn.tp}"
    apply(check["fix"])
    conn.wait_healthy()


def serve(container: str) -> None:
    """busybox httpd on port 2222 (this busybox has no pkill: its pid is kept)."""
    script = "echo $$ > /tmp/httpd.pid; exec httpd -f -p 2222"
    run("docker", "exec", "-d", container, "sh", "-c", script)


def test_agent_of_a_bridge_stopped(conn: Connected) -> None:
    """A bridge to an agent (busybox httpd on the cluster's network) that stops answering."""
    agent = f"{conn.env.prefix}-agent"
    network = conn.env.cluster["network"]
    run("docker", "run", "-d", "--name", agent, "--network", network, BUSYBOX, "sleep", "600")
    control = None
    port = None
    try:
        serve(agent)
        address = json.loads(
            run("docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", agent).stdout
        )[network]["IPAddress"]
        connector = make_connector(load_config(conn.env.config), print)
        control = connector.control(connector.find(conn.name))
        port = control.open_bridge(f"{address}:2222")
        conn.wait_healthy(timeout=10)
        run("docker", "exec", agent, "sh", "-c", "kill $(cat /tmp/httpd.pid)")
        check = conn.failing()[f"{conn.name}: SFTP bridges"]
        assert f"its agent {address}:2222 does not answer" in check["message"]
        assert check["fix"].startswith(f"start the agent at {address}:2222 again")
        serve(agent)
        conn.wait_healthy(timeout=10)
    finally:
        if control is not None and port is not None:
            control.close_bridge(port)
        run("docker", "rm", "-f", agent, check=False)


def test_route_colliding_in_a_scratch_netns(conn: Connected, tmp_path: Any) -> None:
    """The host's routes read in a scratch netns, where a route overlaps the routed subnet."""
    status = conn.env.status(conn.name)
    # Part of a routed subnet: the whole of it may be a Docker network's own route (the VIF's).
    routed = str(next(ipaddress.ip_network(status["daemon"]["routes"][0]).subnets(new_prefix=28)))
    netns = f"tn{uid()}"
    table = tmp_path / "route"
    run("ip", "netns", "add", netns)
    try:
        # Its loopback carries the route: no kernel module needed (some hosts lack dummy).
        run("ip", "-n", netns, "link", "set", "lo", "up")
        run("ip", "-n", netns, "route", "add", routed, "dev", "lo")

        def routes() -> list[Any]:
            table.write_text(run("ip", "netns", "exec", netns, "cat", "/proc/net/route").stdout)
            return host_routes(str(table))

        config = load_config(conn.env.config)
        connector = make_connector(config, print)
        doctor = Doctor(connector.docker, config, connector.lookup, host_routes=routes)
        found = {f.check: f for f in doctor.run(conn.name)}
        check = found[f"{conn.name}: subnets"]
        assert check.state == "fail"
        assert f"overlaps the host's route {routed} dev lo" in check.message
        apply(check.fix, prefix=f"ip netns exec {shlex.quote(netns)} ")
        found = {f.check: f for f in doctor.run(conn.name)}
        assert found[f"{conn.name}: subnets"].state == "ok"
    finally:
        run("ip", "netns", "del", netns, check=False)


def test_cluster_dns_stopped(conn: Connected) -> None:
    cluster = conn.env.cluster["container"]
    run("docker", "stop", "-t", "1", cluster)
    try:
        check = conn.failing()[f"{conn.name}: DNS"]
        server = f"{conn.env.cluster['cluster_dns']}:53"
        assert check["message"].startswith(
            f"the cluster's DNS server {server} does not answer the daemon"
        )
        assert check["fix"].startswith(f"start the cluster's DNS server {server}")
    finally:
        run("docker", "start", cluster)
    conn.wait_healthy(timeout=30)


def plugin_logs(conn: Connected, since: float) -> str:
    """The telemount plug-in's lines since ``since``, asked on its socket."""
    config = load_config(conn.env.config)
    docker = make_connector(config, print).docker
    path = socket_of(docker, conn.env.plugins[1])
    assert path is not None
    return "\n".join(call_plugin(path, "/Telenet.Logs", {"Since": since})["Lines"])


def list_volumes(conn: Connected) -> None:
    """dockerd asks the telemount plug-in for its volumes (/VolumeDriver.List)."""
    run("docker", "volume", "ls", "-q", "--filter", f"driver={conn.env.plugins[1]}")


def helper_pids(port: int) -> list[int]:
    """Host pids of the FUSE helpers serving the SFTP server on ``port`` (their command line)."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"--mountpoint" in argv and b"--port" in argv and str(port).encode() in argv:
            found.append(int(pid))
    return found


def test_stale_mount_of_a_killed_helper(conn: Connected) -> None:
    """A volume mounted through a bridge; its helper killed leaves a stale FUSE mount."""
    connector = make_connector(load_config(conn.env.config), print)
    control = connector.control(connector.find(conn.name))
    port = control.open_bridge(conn.env.cluster["agent"])
    volume = f"{conn.env.prefix}-stale"
    host = json.loads(
        run("docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", conn.tp).stdout
    )["bridge"]["IPAddress"]
    try:
        run(
            "docker", "volume", "create", "-d", conn.env.plugins[1], "-o", f"host={host}",
            "-o", f"port={port}", "-o", f"container={conn.env.cluster['sample_container']}",
            volume,
        )  # fmt: skip
        pids = helper_pids(port)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        check = conn.failing()["telemount mounts"]
        assert check["message"].endswith(
            "transport endpoint is not connected (its FUSE helper is gone)"
        )
        assert check["fix"].startswith("umount -l /var/lib/docker/plugins/")
        apply(check["fix"])
        assert conn.doctor()[1]["telemount mounts"]["state"] == "ok"
    finally:
        run("docker", "volume", "rm", "-f", volume, check=False)
        control.close_bridge(port)
    conn.wait_healthy(timeout=10)


def test_legacy_plugin_whose_process_is_gone(telemount: Telemount) -> None:
    """A legacy telemount killed: its socket is left and answers no more; started again, ok."""
    connector = make_connector(Config(), print)
    doctor = Doctor(connector.docker, connector.config, connector.lookup)
    users = ["a-connection"]
    found = doctor.check_plugin("telemount", telemount.name, users)
    assert (found.state, found.message) == (
        "ok",
        f"{telemount.name}: legacy, answering on {telemount.socket}",
    )
    telemount.daemon.kill(signal.SIGKILL)
    assert os.path.exists(telemount.socket)
    found = doctor.check_plugin("telemount", telemount.name, users)
    assert found.state == "fail"
    assert found.message == (
        f"{telemount.name}: legacy, and nothing answers on {telemount.socket} (its process is gone)"
    )
    assert found.fix == "start the plug-in again: twistd telemount (docs/telemount.md)"
    telemount.start()  # the fix: twistd telemount as it was started
    assert doctor.check_plugin("telemount", telemount.name, users).state == "ok"


def test_loglevel_for_a_while_on_a_running_plugin(conn: Connected) -> None:
    started = time.time()
    list_volumes(conn)
    assert "Plug-in call /VolumeDriver.List" not in plugin_logs(conn, started)
    done = conn.env.telenet("loglevel", "debug", "--duration", "3s", "--name", conn.name)
    assert f"daemon {conn.name}: ok" in done.stdout
    assert f"telemount plug-in {conn.env.plugins[1]}: ok" in done.stdout
    list_volumes(conn)
    assert "Plug-in call /VolumeDriver.List" in plugin_logs(conn, started)
    deadline = time.monotonic() + 10
    while "Log level back to info" not in plugin_logs(conn, started):
        assert time.monotonic() < deadline, plugin_logs(conn, started)
        time.sleep(0.2)
    after = time.time()
    list_volumes(conn)
    assert "Plug-in call" not in plugin_logs(conn, after)


def test_gather_logs_holds_every_part(conn: Connected, tmp_path: Any) -> None:
    # A line the managed plug-in writes now: its level set, for good, to what it was.
    conn.env.telenet("loglevel", "info", "--name", conn.name)
    target = tmp_path / "logs.zip"
    conn.env.telenet("gather-logs", "-o", str(target), "--since", "5m")
    with zipfile.ZipFile(target) as z:
        parts = {name: z.read(name).decode() for name in z.namelist()}
    route = f"plugins/teleroute-{conn.env.plugins[0].replace('/', '_').replace(':', '_')}"
    mount = f"plugins/telemount-{conn.env.plugins[1].replace('/', '_').replace(':', '_')}"
    for part in (
        "cli/README.txt",
        "config.json",
        "doctor.txt",
        "status.json",
        "docker/version.json",
        "docker/plugins.json",
        f"daemon/{conn.tp}.log",
        f"{route}.log",
        f"{route}.health.json",
        f"{mount}.log",
        f"{mount}.health.json",
    ):
        assert part in parts, sorted(parts)
    assert "Log level now info" in parts[f"{mount}.log"]
    assert json.loads(parts[f"{route}.health.json"])["Networks"]
    assert conn.env.plugins[1] in parts["docker/plugins.json"]
    assert conn.name in parts["status.json"]
    anonymized = tmp_path / "anon.zip"
    conn.env.telenet("gather-logs", "-o", str(anonymized), "--anonymize")
    with zipfile.ZipFile(anonymized) as z:
        status = z.read("status.json").decode()
    assert conn.name not in status and conn.env.cluster["ip"] not in status


def test_status_carries_the_plugins_health(conn: Connected) -> None:
    status = conn.env.status(conn.name)
    network, volume = status["plugins"]
    assert network["health"]["Networks"][0]["Connected"] is True
    assert network["health"]["Endpoints"] >= 1
    assert volume["health"]["Volumes"] == 0 and volume["health"]["Mounts"] == []
    text = conn.env.telenet("status", "--name", conn.name).stdout
    assert "1 linked" in text and "0 volumes, 0 mounts" in text


def test_leftover_network_of_a_removed_daemon(conn: Connected) -> None:
    """Last: it ends the connection."""
    run("docker", "rm", "-f", conn.tp)
    code, checks = conn.doctor()
    assert code == 1
    check = checks["leftovers"]
    assert check["message"] == (
        f"network {conn.name} is left from a connection whose daemon is gone"
    )
    assert check["fix"] == f"telenet quit --name {conn.name}"
    command = shlex.split(check["fix"])
    assert command[0] == "telenet"
    conn.env.telenet(*command[1:])
    conn.env.connections.discard(conn.name)
    code, checks = conn.doctor()
    assert checks["leftovers"]["state"] == "ok"
    assert [c for c in checks.values() if c["state"] == "fail"] == [
        checks[f"connection {conn.name}"]
    ]
