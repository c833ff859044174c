"""
IMounter's contract, asserted alike of the memory fake and of the real ProcessMounter (real
FUSE helper, real sftp-agent), so that driver tests on the fake say something true.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from telenet.core.dockerplugin import PluginError
from telenet.core.interfaces import IMounter, VolumeSpec
from telenet.testing import MemoryMounter
from telenet.volumes.mounter import ProcessMounter

from .conftest import Agent, free_port, require

EXPORT = "/tel_app_exports/echo/var/run/secrets"


class Setup:
    def __init__(self, mounter: IMounter, host: str, port: int, dead_port: int) -> None:
        self.mounter, self.host, self.port, self.dead_port = mounter, host, port, dead_port


@pytest.fixture(params=["memory", "real"])
def setup(request: pytest.FixtureRequest, workdir: str) -> Iterator[Setup]:
    if request.param == "memory":
        fake = MemoryMounter(mount_root=os.path.join(workdir, "mnt"))
        fake.remote_dirs = {EXPORT}
        fake.unreachable.add(("127.0.0.1", 1))
        yield Setup(fake, "127.0.0.1", 8022, 1)
        return
    request.getfixturevalue("fuse_ready")
    require(os.geteuid() == 0, "real mounts need root")
    from twisted.internet import reactor

    agent: Agent = request.getfixturevalue("sftp_agent")
    real = ProcessMounter(
        reactor, os.path.join(workdir, "mnt"), os.path.join(workdir, "state"), timeout=3
    )
    yield Setup(real, "127.0.0.1", agent.port, free_port())
    pytest_twisted.blockon(real.shutdown())


@pytest_twisted.ensureDeferred
async def test_attach_status_detach(setup: Setup) -> None:
    """attach mounts and names the volume's path; the last detach unmounts."""
    m = setup.mounter
    assert verifyObject(IMounter, m)
    path = await m.attach(VolumeSpec(setup.host, setup.port, "v1", EXPORT, False))
    assert path == m.mountpoint(setup.host, setup.port, "v1")
    assert path.endswith("/v1")
    await m.attach(VolumeSpec(setup.host, setup.port, "v2", EXPORT, True))
    status: dict[str, Any] = await m.status(setup.host, setup.port)
    assert status["mounted"] is True and status["connected"] is True
    assert status["volumes"] == {
        "v1": {"path": EXPORT, "ro": False},
        "v2": {"path": EXPORT, "ro": True},
    }
    await m.detach(setup.host, setup.port, "v1")
    assert list((await m.status(setup.host, setup.port))["volumes"]) == ["v2"]
    await m.detach(setup.host, setup.port, "v2")
    assert (await m.status(setup.host, setup.port))["mounted"] is False


@pytest_twisted.ensureDeferred
async def test_attach_is_idempotent(setup: Setup) -> None:
    """Attaching the same volume twice is one volume."""
    m = setup.mounter
    await m.attach(VolumeSpec(setup.host, setup.port, "v", EXPORT, False))
    await m.attach(VolumeSpec(setup.host, setup.port, "v", EXPORT, False))
    assert list((await m.status(setup.host, setup.port))["volumes"]) == ["v"]
    await m.release(setup.host, setup.port)
    assert (await m.status(setup.host, setup.port))["mounted"] is False


@pytest_twisted.ensureDeferred
async def test_missing_directory_and_absent_server(setup: Setup) -> None:
    """A missing remote directory and an absent server are PluginErrors saying which."""
    m = setup.mounter
    with pytest.raises(PluginError, match="/tel_app_exports/echo/nope"):
        await m.attach(VolumeSpec(setup.host, setup.port, "v", "/tel_app_exports/echo/nope", False))
    with pytest.raises(
        PluginError, match=f"cannot reach SFTP server at 127.0.0.1:{setup.dead_port}"
    ):
        await m.attach(VolumeSpec("127.0.0.1", setup.dead_port, "w", EXPORT, False))
    assert await m.reachable(setup.host, setup.port, 1) is True
    assert await m.reachable("127.0.0.1", setup.dead_port, 1) is False
    await m.shutdown()
