"""
Fault suite for teleroute (legacy plug-in, real daemon container): item 1 (kill -9 of
``twistd teleroute`` during a join/leave loop).

Counts are short by default and full with ``TELENET_FAULTS=full`` (see tests/faultkit.py).
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time

import pytest

from .conftest import wait_for
from .faultkit import record, scaled
from .test_e2e_teleroute import (  # noqa: F401 (fixtures)
    BODY,
    LegacyPlugin,
    Setup,
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
            started = docker("run", "-d", "--name", name, "--network", s.network,
                             "local/busybox", "sleep", "60", check=False, timeout=90)
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
    assert _docker_endpoints(s) == _plugin_endpoints(s), (plugin.state(), plugin.log()[-2000:])
    assert len(_docker_endpoints(s)) == 2
    assert s.run(f"ping -c 1 -W 2 {s.address}", check=False).returncode == 0
    # The daemon keeps the veth pairs per address for the next container (by design): the
    # fixture's teardown checks that no tp-* link is left once the daemon is gone, and that
    # the plug-in's state holds no endpoint of the removed network.
    record("kill9-teleroute", kills=KILLS, joins_ok=ops["joined"], joins_failed=ops["failed"],
           slow_removals=len(slow))
    assert ops["joined"] >= 1
