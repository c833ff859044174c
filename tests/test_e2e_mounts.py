"""
End to end, on real dockerd: the teleroute network's subnet as the user chooses it
(``--docker-subnet``), engagements that never copy an image's files into a remote directory
(``nocopy``), and a first mount that waits for an agent that starts late
(``intercept.mountTimeout``, the volumes' ``timeout``).

The CLI module's ``Env`` (this module's own plug-ins, demo cluster and connections); each test
removes what it made in the cluster container and checks that nothing of its own is left.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time

import pytest

from telenet.cli.subnets import host_routes

from . import test_e2e_cli as cli
from .conftest import BUSYBOX, run
from .test_e2e_cli import (
    SECRETS,
    TELENET,
    Env,
    assert_nothing_left,
    in_container,
    ip_on,
    quit_leaves_nothing,
    uid,
)

pytestmark = pytest.mark.e2e

#: The module's environment: the CLI module's fixture, made again for this module.
env = cli.env


def docker_subnets() -> list[tuple[str, str]]:
    """(network name, subnet) of every Docker network."""
    names = run("docker", "network", "ls", "--format", "{{.Name}}").stdout.split()
    found = []
    for name in names:
        out = run("docker", "network", "inspect", "-f", "{{json .IPAM.Config}}", name, check=False)
        for config in json.loads(out.stdout or "null") or []:
            if config.get("Subnet"):
                found.append((name, config["Subnet"]))
    return found


def free_subnet() -> str:
    """A /24 of 10.213.0.0/16 that no Docker network and no route of this machine overlaps."""
    taken = [ipaddress.ip_network(s) for _, s in docker_subnets()]
    taken += [ipaddress.ip_network(r.subnet) for r in host_routes()]
    for candidate in ipaddress.ip_network("10.213.0.0/16").subnets(new_prefix=24):
        if not any(candidate.version == t.version and candidate.overlaps(t) for t in taken):
            return str(candidate)
    raise AssertionError("no free /24 in 10.213.0.0/16")


def refused(env: Env, name: str, *flags: str) -> str:
    """``telenet connect`` that must fail: its stderr, after checking nothing was left."""
    result = env.connect(name, *flags, check=False)
    env.connections.discard(name)
    assert result.returncode == 1, result
    assert result.stderr.count("\n") == 1, result.stderr
    assert_nothing_left(env, name)
    return result.stderr


def test_docker_subnet_is_the_networks_and_a_colliding_one_is_refused(env: Env) -> None:
    """
    --docker-subnet CIDR: the network's IPAM subnet, in status, and a workload's address is
    in it. One that overlaps another Docker network, a routed subnet or a route of the host
    is refused with one line naming both, leaving nothing behind.
    """
    name = f"{env.prefix}-net"
    subnet = free_subnet()
    env.connect(name, "--docker-subnet", subnet)
    out = run("docker", "network", "inspect", "-f", "{{json .IPAM.Config}}", name).stdout
    assert [c["Subnet"] for c in json.loads(out)] == [subnet]
    assert env.status(name)["network"]["subnet"] == subnet
    workload = f"{env.prefix}-in-subnet"
    env.telenet(
        "--connection", name, "docker-run", "-d", "--name", workload, BUSYBOX, "sleep", "60"
    )
    try:
        assert ipaddress.ip_address(ip_on(workload, name)) in ipaddress.ip_network(subnet)
        assert ipaddress.ip_address(ip_on(f"tp-{name}", name)) in ipaddress.ip_network(subnet)
    finally:
        run("docker", "rm", "-f", workload)
    quit_leaves_nothing(env, name)

    clash = f"{env.prefix}-clash"
    cluster_net = env.cluster["network"]
    cluster_subnet = dict(docker_subnets())[cluster_net]
    assert refused(env, clash, "--docker-subnet", cluster_subnet) == (
        f"telenet connect: --docker-subnet {cluster_subnet} overlaps Docker network "
        f"{cluster_net} ({cluster_subnet})\n"
    )
    inside = str(next(ipaddress.ip_network(subnet).subnets(new_prefix=26)))
    assert refused(env, clash, "--subnet", subnet, "--docker-subnet", inside) == (
        f"telenet connect: --docker-subnet {inside} overlaps the routed subnet {subnet}\n"
    )
    networks = [ipaddress.ip_network(s) for _, s in docker_subnets()]
    routes = [
        r
        for r in host_routes()
        if not any(ipaddress.ip_network(r.subnet).overlaps(n) for n in networks)
    ]
    if routes:  # a route of the machine that is not a Docker network's (its LAN)
        route = routes[0]
        assert refused(env, clash, "--docker-subnet", route.subnet) == (
            f"telenet connect: --docker-subnet {route.subnet} overlaps {route.what}\n"
        )


def test_engage_never_copies_the_image_into_the_remote_directory(env: Env) -> None:
    """
    An image with files at the remote mount's path, engaged against an empty remote
    directory: the container sees the empty directory, and the agent's directory stays empty
    (Docker's copy-up would write the image's files there).
    """
    name = f"{env.prefix}-nocopy"
    env.connect(name)
    cluster, sample = env.cluster["container"], env.cluster["sample_container"]
    remote = f"/srv/nocopy-{uid()}"
    on_agent = f"/exports/{sample}{remote}"
    image = f"{env.prefix}-nocopy-image"
    context = os.path.join(env.workdir, "nocopy")
    os.makedirs(context)
    with open(os.path.join(context, "Dockerfile"), "w") as f:
        f.write(
            f"FROM {BUSYBOX}\n"
            f"RUN mkdir -p {remote}/sub && echo image > {remote}/from-image"
            f" && echo image > {remote}/sub/nested\n"
        )
    in_container(cluster, f"mkdir -p {on_agent}")
    try:
        run("docker", "build", "-q", "-t", image, context, timeout=300)
        result = env.telenet(
            "engage",
            "--name",
            name,
            "--agent",
            env.cluster["agent"],
            "--container",
            sample,
            "--remote-mount",
            remote,
            "--docker-run",
            "--",
            image,
            "sh",
            "-c",
            f"echo entries=$(ls -A {remote} | wc -l)",
        )
        assert "entries=0" in result.stdout.split(), result
        assert in_container(cluster, f"ls -A {on_agent}") == ""
    finally:
        run("docker", "rmi", "-f", image, check=False)
        in_container(cluster, f"rm -rf {on_agent}")
    assert env.volumes() == []
    quit_leaves_nothing(env, name)


def start_agent_later(env: Env, root: str, port: int, delay: float) -> subprocess.Popen[str]:
    """An sftp-agent exporting ``root`` on ``port`` of the cluster container, in ``delay`` s."""
    script = (
        f"sleep {delay}; exec docker exec {env.cluster['container']} twistd -n "
        f"--pidfile={root}.pid sftp-agent --root {root} --listen tcp:{port}"
    )
    return subprocess.Popen(
        ["sh", "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )


def stop_agent(env: Env, root: str, agent: subprocess.Popen[str]) -> None:
    """The late agent stopped (by its pid file, in the cluster container) and its tree gone."""
    run(
        "docker",
        "exec",
        env.cluster["container"],
        "sh",
        "-c",
        f"[ -f {root}.pid ] && kill $(cat {root}.pid); rm -rf {root} {root}.pid",
        check=False,
    )
    try:
        agent.wait(timeout=30)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()


def test_engage_waits_for_an_agent_that_starts_late(env: Env) -> None:
    """
    The agent starts two seconds after ``telenet engage`` does: the engagement waits for it
    (intercept.mountTimeout, default 10 s) and its container reads the agent's file.
    """
    name = f"{env.prefix}-late"
    env.connect(name)
    cluster, ip = env.cluster["container"], env.cluster["ip"]
    root = f"/exports-late-{uid()}"
    token = f"{SECRETS}/serviceaccount/token"
    in_container(cluster, f"mkdir -p {root}/echo{SECRETS}/serviceaccount")
    in_container(cluster, f"echo late-token > {root}/echo{token}")
    engage = subprocess.Popen(
        [
            TELENET,
            "engage",
            "--name",
            name,
            "--agent",
            f"{ip}:8024",
            "--container",
            "echo",
            "--remote-mount",
            f"{SECRETS}:ro",
            "--docker-run",
            "--",
            BUSYBOX,
            "cat",
            token,
        ],
        env={**os.environ, "TELENET_CONFIG": env.config},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    agent = start_agent_later(env, root, 8024, 2)
    try:
        out, err = engage.communicate(timeout=120)
    finally:
        if engage.poll() is None:
            engage.kill()
            engage.wait()
        stop_agent(env, root, agent)
    assert engage.returncode == 0, (out, err)
    assert "late-token" in out.split(), (out, err)
    assert env.volumes() == [] and env.status(name)["bridges"] == []
    quit_leaves_nothing(env, name)


def test_a_volume_waits_for_its_agent_for_its_timeout(env: Env) -> None:
    """
    ``docker volume create -o timeout=…`` by hand: an agent that starts two seconds later is
    mounted (its file is read through the volume); with none, the creation fails after the
    timeout naming the server's address, and no volume exists.
    """
    name = f"{env.prefix}-vol"
    env.connect(name)  # makes the plug-ins when this test runs alone
    cluster, ip = env.cluster["container"], env.cluster["ip"]
    root = f"/exports-vol-{uid()}"
    in_container(cluster, f"mkdir -p {root}/echo/data && echo waited > {root}/echo/data/file")
    volume = f"{env.prefix}-waiting"
    options = ["-o", f"host={ip}", "-o", "port=8025", "-o", "container=echo", "-o", "dir=/data"]

    def create(timeout: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(
            "docker", "volume", "create", "-d", env.plugins[1], *options,
            "-o", f"timeout={timeout}", volume, check=check,
        )  # fmt: skip

    agent = start_agent_later(env, root, 8025, 2)
    try:
        started = time.monotonic()
        create("20s")
        assert time.monotonic() - started >= 1.5
        read = run("docker", "run", "--rm", "-v", f"{volume}:/v:nocopy", BUSYBOX, "cat", "/v/file")
        assert read.stdout == "waited\n"
    finally:
        run("docker", "volume", "rm", "-f", volume, check=False)
        stop_agent(env, root, agent)

    started = time.monotonic()
    result = create("2s", check=False)
    assert result.returncode != 0
    assert f"cannot reach SFTP server at {ip}:8025" in result.stderr, result.stderr
    assert "(tried for 2s)" in result.stderr, result.stderr
    assert 1.5 <= time.monotonic() - started < 30
    assert volume not in env.volumes()
    quit_leaves_nothing(env, name)
