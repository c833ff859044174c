"""
Fault suite for teleroute (legacy plug-in, real daemon container): item 1 (kill -9 of
``twistd teleroute`` during a join/leave loop).

Counts are short by default and full with ``TELENET_FAULTS=full`` (see tests/faultkit.py).
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from telenet.netplugin.sweep import JOIN_WITHIN

from .conftest import wait_for
from .faultkit import PluginCallTap, record, scaled
from .test_e2e_teleroute import (  # noqa: F401 (fixtures)
    BODY,
    Cluster,
    LegacyPlugin,
    Setup,
    assert_nothing_left,
    cluster,
    docker,
    http_get_command,
    images,
    legacy_plugin,
    legacy_setup,
    reaches_cluster,
    uid,
    workdir,
)

pytestmark = pytest.mark.e2e

KILLS = scaled(3, 20)


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def restart(plugin: LegacyPlugin) -> None:
    """Start the plug-in again and wait until it answers (a killed one leaves its socket)."""
    plugin.start()
    wait_for(lambda: _answers(plugin.socket), 20, "the restarted plug-in to answer")


def _docker_endpoints(s: Setup) -> set[str]:
    out = docker("network", "inspect", "-f", "{{json .Containers}}", s.network).stdout
    return {c["EndpointID"] for c in (json.loads(out) or {}).values()}


def _plugin_endpoints(s: Setup) -> set[str]:
    return {i for i, e in s.plugin.state().get("endpoints", {}).items()}


def test_kill_9_during_join_leave_loop(legacy_setup: Setup) -> None:  # noqa: F811
    """
    kill -9 of the plug-in at random points while containers join and leave: every container
    can always be removed, the network is still served after each restart (a new workload
    reaches the cluster), and no tp-* link is left once the containers are gone.
    """
    s = legacy_setup
    plugin = s.plugin
    assert isinstance(plugin, LegacyPlugin)
    stop = threading.Event()
    ops = {"joined": 0, "failed": 0}
    names: list[str] = []
    slow: list[str] = []

    def loop() -> None:
        while not stop.is_set():
            name = f"tntest-k-{uid()}"
            names.append(name)
            s.containers.append(name)
            started = docker(
                "run",
                "-d",
                "--name",
                name,
                "--network",
                s.network,
                "local/busybox",
                "sleep",
                "60",
                check=False,
                timeout=90,
            )
            ops["joined" if started.returncode == 0 else "failed"] += 1
            t = time.monotonic()
            docker("rm", "-f", name, timeout=90)
            if time.monotonic() - t > 20:
                slow.append(name)

    steady = f"tntest-steady-{uid()}"
    s.run("sleep 600", name=steady, detach=True)
    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    rng = random.Random(3)
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.3, 2.0))
            plugin.kill()
            time.sleep(rng.uniform(0, 0.3))
            restart(plugin)
    finally:
        stop.set()
        worker.join(timeout=180)
    assert not worker.is_alive(), "a container could not be removed"
    assert reaches_cluster(s).strip() == BODY, (plugin.log()[-2000:], s.daemon_logs())
    for name in names:
        gone = docker("container", "inspect", name, check=False).returncode != 0
        assert gone, f"{name} not removed"
    # Nothing Docker saw succeed is lost, nothing stale is kept: the plug-in's endpoints are
    # exactly those Docker has on the network (the daemon's and the long-lived workload's).
    # An endpoint Docker let go during a kill is forgotten by the restarted plug-in within
    # the sweep's bounds (telenet/netplugin/sweep.py): at once, about 2 s, or JOIN_WITHIN.
    converged = time.monotonic()
    wait_for(
        lambda: _docker_endpoints(s) == _plugin_endpoints(s),
        JOIN_WITHIN + 15,
        "the plug-in's endpoints to be Docker's",
        interval=0.5,
    )
    converged = time.monotonic() - converged
    assert _docker_endpoints(s) == _plugin_endpoints(s), (plugin.state(), plugin.log()[-2000:])
    assert len(_docker_endpoints(s)) == 2
    assert s.run(f"ping -c 1 -W 2 {s.address}", check=False).returncode == 0
    # The daemon keeps the veth pairs per address for the next container (by design): the
    # fixture's teardown checks that no tp-* link is left once the daemon is gone, and that
    # the plug-in's state holds no endpoint of the removed network.
    record(
        "kill9-teleroute",
        kills=KILLS,
        joins_ok=ops["joined"],
        joins_failed=ops["failed"],
        slow_removals=len(slow),
        converged_after=round(converged, 1),
        forgotten=plugin.log().count("forgetting endpoint"),
    )
    assert ops["joined"] >= 1


@pytest.fixture
def tapped_setup(
    images: None,  # noqa: F811
    workdir: str,  # noqa: F811
    cluster: Cluster,  # noqa: F811
    http_get_command: str,  # noqa: F811
) -> Iterator[tuple[Setup, PluginCallTap]]:
    """The legacy plug-in behind a ``PluginCallTap`` on the socket dockerd uses."""
    plugin = LegacyPlugin(workdir)
    public, plugin.socket = plugin.socket, os.path.join(workdir, "teleroute.sock")
    tap = PluginCallTap(public, plugin.socket, plugin.kill)
    plugin.start()
    s = Setup(plugin, cluster, http_get_command)
    try:
        s.start()
        yield s, tap
        s.stop()
        assert_nothing_left(s)
    finally:
        s.stop()
        plugin.stop()
        tap.close()


@pytest.mark.parametrize(
    "call", ["/NetworkDriver.Join", "/NetworkDriver.Leave", "/NetworkDriver.DeleteEndpoint"]
)
def test_killed_at_the_exact_call_converges_on_dockers_endpoints(
    tapped_setup: tuple[Setup, PluginCallTap], call: str
) -> None:
    """
    kill -9 of the plug-in the moment dockerd sends ``call`` for a workload (the call never
    reaches it). Docker goes on without the plug-in's answer: its retry carries an empty
    body, then it detaches the container anyway (and deletes the endpoint whatever
    DeleteEndpoint answers). The restarted plug-in ends with exactly Docker's endpoints, and
    the network serves new workloads. At DeleteEndpoint this is the leak the kill loop found
    once: nothing but the interface Docker moved back into the host's namespace tells the
    plug-in the endpoint is gone.
    """
    s, tap = tapped_setup
    plugin = s.plugin
    assert isinstance(plugin, LegacyPlugin)
    name = f"tntest-x-{uid()}"
    tap.kill_on = call
    if call == "/NetworkDriver.Join":
        run = threading.Thread(
            target=lambda: s.run("sleep 600", name=name, detach=True, check=False, timeout=90)
        )
    else:
        s.run("sleep 600", name=name, detach=True)
        run = threading.Thread(target=lambda: docker("rm", "-f", name, timeout=90))
    run.start()
    assert tap.killed.wait(60), tap.calls
    before = _plugin_endpoints(s)
    restart(plugin)
    run.join(timeout=90)
    assert not run.is_alive()
    if call == "/NetworkDriver.Join":
        # The run failed (Docker's retried Join had no body); Docker undid the endpoint.
        assert (
            docker(
                "container", "inspect", "-f", "{{.State.Running}}", name, check=False
            ).stdout.strip()
            != "true"
        )
        docker("rm", "-f", name, check=False)
    waited = time.monotonic()
    wait_for(
        lambda: _docker_endpoints(s) == _plugin_endpoints(s),
        15,
        "the plug-in's endpoints to be Docker's",
        interval=0.2,
    )
    waited = time.monotonic() - waited
    assert len(_docker_endpoints(s)) == 1  # the daemon's
    assert (call, 0) in [(path, size) for path, size in tap.calls], tap.calls  # the retry
    if call == "/NetworkDriver.DeleteEndpoint":
        assert len(before) == 2  # the leak as it was: the plug-in never heard the delete
        assert "forgetting endpoint" in plugin.log() and "left the container" in plugin.log()
    assert reaches_cluster(s).strip() == BODY, plugin.log()[-2000:]
    record("kill9-teleroute-at-call", call=call, converged_after=round(waited, 1))
