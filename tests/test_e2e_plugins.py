"""
End to end: scripts/plugins makes both managed plug-ins from the project image, no registry.

The teleroute story with the managed plug-in is in test_e2e_teleroute; here: both plug-ins are
created and enabled by one command, with their settings, telemount serves a volume through its
propagated mount, and ``remove`` takes them away again.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import pytest

from .conftest import BUSYBOX, Agent, run

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "plugins")
IMAGE = os.environ.get("TELENET_IMAGE", "telenet")


class Plugins:
    def __init__(self) -> None:
        prefix = f"tntest{uuid.uuid4().hex[:8]}"
        self.teleroute = f"{prefix}/teleroute:latest"
        self.telemount = f"{prefix}/telemount:latest"

    def args(self) -> list[str]:
        return ["--teleroute", self.teleroute, "--telemount", self.telemount]

    def inspect(self, name: str) -> dict[str, object]:
        out = run("docker", "plugin", "inspect", name).stdout
        return dict(json.loads(out)[0])


@pytest.fixture
def plugins(docker_ready: None, fuse_ready: None) -> Iterator[Plugins]:
    found = run("docker", "image", "inspect", IMAGE, check=False)
    assert found.returncode == 0, f"image {IMAGE} is missing (run: scripts/dev setup)"
    p = Plugins()
    yield p
    for name in (p.teleroute, p.telemount):
        run("docker", "plugin", "rm", "-f", name, check=False)


def test_install_both_then_remove(plugins: Plugins, sftp_agent: Agent) -> None:
    """One command creates and enables both; telemount mounts a volume; remove cleans up."""
    out = run(
        "bash",
        SCRIPT,
        "install",
        "--image",
        IMAGE,
        *plugins.args(),
        "--set",
        "DISCONNECTED_LINGER_TIME=3s",
        timeout=600,
    )
    assert out.stdout.split() == [plugins.teleroute, plugins.telemount]

    route = plugins.inspect(plugins.teleroute)
    config = route["Config"]
    assert route["Enabled"] is True
    assert isinstance(config, dict)
    assert config["PidHost"] is True and config["Network"] == {"Type": "host"}
    assert config["Linux"]["Capabilities"] == ["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]
    assert config["Interface"]["Socket"] == "teleroute.sock"

    mount = plugins.inspect(plugins.telemount)
    assert mount["Enabled"] is True
    assert "DISCONNECTED_LINGER_TIME=3s" in mount["Settings"]["Env"]  # type: ignore[index]
    assert mount["Config"]["PropagatedMount"] == "/mnt/volumes"  # type: ignore[index]

    # Installing again is a no-op for plug-ins that exist and are enabled.
    again = run("bash", SCRIPT, "install", "--image", IMAGE, *plugins.args())
    assert again.stdout.split() == [plugins.teleroute, plugins.telemount]

    volume = f"tntest-{uuid.uuid4().hex[:8]}"
    run(
        "docker",
        "volume",
        "create",
        "-d",
        plugins.telemount,
        "-o",
        "host=127.0.0.1",
        "-o",
        f"port={sftp_agent.port}",
        "-o",
        "container=echo",
        "-o",
        "dir=/var/run/secrets",
        volume,
    )
    try:
        cat = run(
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            f"{volume}:/secrets",
            BUSYBOX,
            "cat",
            "/secrets/token",
        )
        assert cat.stdout == "s3cr3t-token\n"
    finally:
        run("docker", "volume", "rm", "-f", volume, check=False)

    run("bash", SCRIPT, "remove", *plugins.args())
    listed = run("docker", "plugin", "ls", "--format", "{{.Name}}").stdout.split()
    assert plugins.teleroute not in listed and plugins.telemount not in listed
