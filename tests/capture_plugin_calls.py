"""
Capture what a real dockerd sends to network and volume plug-ins, for the replay tests.

    .venv/bin/python -m tests.capture_plugin_calls tests/fixtures/dockerd-VERSION-plugin-calls.json

Runs telenet's own legacy plug-ins (``twistd teleroute`` with a real daemon container and
cluster, ``twistd telemount`` with an sftp-agent) behind a ``faultkit.PluginCallTap`` on the
sockets dockerd uses, plays the same stories as the Docker 20.10 capture, and writes every
call in order: path, dockerd's headers, the request body and the answer dockerd accepted.
Needs root, dockerd and the images scripts/dev makes; removes everything it made.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

from .conftest import Agent, Telemount, free_port
from .faultkit import PluginCallTap
from .test_e2e_teleroute import BUSYBOX, Cluster, LegacyPlugin, Setup, docker, uid


def _tapped(public: str, private: str) -> PluginCallTap:
    """A recording tap at ``public`` in front of the plug-in at ``private`` (it kills nothing)."""
    if os.path.exists(public):
        os.unlink(public)
    return PluginCallTap(public, private, lambda: None)


def network_story(workdir: str) -> tuple[str, list[dict[str, object]]]:
    os.makedirs(workdir)
    plugin = LegacyPlugin(workdir)
    public, plugin.socket = plugin.socket, os.path.join(workdir, "teleroute.sock")
    tap = _tapped(public, plugin.socket)
    plugin.start()
    cluster = Cluster().start()
    s = Setup(plugin, cluster, "wget -q -O- -T 5 http://{host}:{port}{path}")
    story = (
        f"docker network create -d {plugin.driver} --internal -o host=DAEMON -o port=4039 "
        "NET; docker network connect --driver-opt daemon=true NET DAEMON; docker run --rm "
        "--network NET --dns DAEMON busybox ip route; docker network disconnect NET "
        "DAEMON; docker rm -f DAEMON; docker network rm NET"
    )
    try:
        s.start()
        s.run("ip route")
        docker("network", "disconnect", s.network, s.daemon)
    finally:
        s.stop()
        cluster.stop()
        plugin.stop()
        tap.close()
    return story, tap.log


def volume_story(workdir: str) -> tuple[str, list[dict[str, object]]]:
    root = os.path.join(workdir, "exports")
    os.makedirs(os.path.join(root, "echo", "var", "run", "secrets"))
    agent = Agent(root, free_port(), os.path.join(workdir, "agent.log")).start()
    plugin = Telemount(workdir, name=f"tntestcap{uid()}")
    public, plugin.socket = plugin.socket, os.path.join(workdir, "telemount.sock")
    tap = _tapped(public, plugin.socket)
    plugin.start()
    volume = f"tntest-echo-{uid()}"
    # No `docker volume rm` of a volume Docker does not know: it asks every volume plug-in
    # socket in /run/docker/plugins, and retries the dead ones for minutes.
    story = "; ".join(
        [
            f"docker volume create -d {plugin.name} -o container=echo -o port=PORT "
            "-o host=127.0.0.1 -o dir=/var/run/secrets VOL",
            "docker volume ls --filter driver=DRIVER",
            "docker volume inspect VOL",
            "docker run --rm -v VOL:/secrets:ro busybox ls /secrets",
            "docker run --rm --mount type=volume,src=VOL,dst=/x busybox true",
            "docker volume rm VOL",
            "docker volume create -d DRIVER -o bogus=1 bad",
        ]
    )
    removed = False
    try:
        docker(
            "volume",
            "create",
            "-d",
            plugin.name,
            "-o",
            "container=echo",
            "-o",
            f"port={agent.port}",
            "-o",
            "host=127.0.0.1",
            "-o",
            "dir=/var/run/secrets",
            volume,
        )
        docker("volume", "ls", "--filter", f"driver={plugin.name}")
        docker("volume", "inspect", volume)
        docker("run", "--rm", "-v", f"{volume}:/secrets:ro", BUSYBOX, "ls", "/secrets")
        docker("run", "--rm", "--mount", f"type=volume,src={volume},dst=/x", BUSYBOX, "true")
        docker("volume", "rm", volume)
        removed = True
        docker("volume", "create", "-d", plugin.name, "-o", "bogus=1", f"{volume}-bad", check=False)
    finally:
        if not removed:
            docker("volume", "rm", "-f", volume, check=False)
        plugin.daemon.stop()
        agent.daemon.stop()
        tap.close()
    return story, tap.log


def main(out: str) -> None:
    version = docker("version", "-f", "{{.Server.Version}} (API {{.Server.APIVersion}})").stdout
    workdir = tempfile.mkdtemp(prefix="tntest-capture-")
    try:
        network, network_calls = network_story(os.path.join(workdir, "net"))
        volumes, volume_calls = volume_story(os.path.join(workdir, "vol"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    activate = [c for c in network_calls + volume_calls if c["path"] == "/Plugin.Activate"]
    capture = {
        "what": f"Every call dockerd {version.strip()} made to two legacy plug-ins (telenet's, "
        "behind a recording socket), in order, with the request bodies verbatim and "
        "the answer that was given and accepted.",
        "network_story": network,
        "volume_story": volumes,
        "activate": activate,
        "network_calls": [c for c in network_calls if c["path"] != "/Plugin.Activate"],
        "volume_calls": [c for c in volume_calls if c["path"] != "/Plugin.Activate"],
    }
    with open(out, "w") as f:
        json.dump(capture, f, indent=1)
        f.write("\n")
    print(f"{len(network_calls)} network and {len(volume_calls)} volume calls -> {out}")


if __name__ == "__main__":
    main(sys.argv[1])
