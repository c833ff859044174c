"""ProcessMounter's handling of helper processes, with a FUSE-less stand-in helper."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from telenet.core.dockerplugin import PluginError
from telenet.core.interfaces import IMounter, VolumeSpec
from telenet.fuse.protocol import Status
from telenet.testing import MemoryMounter
from telenet.volumes.mounter import ProcessMounter, control_request, host_dir_name

HELPER = [sys.executable, os.path.join(os.path.dirname(__file__), "fake_helper.py")]


@pytest.fixture
def ports() -> Iterator[tuple[int, int]]:
    """Two loopback ports that accept connections, standing in for SFTP servers to ping."""
    from twisted.internet import protocol, reactor

    listeners = [
        reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol), interface="127.0.0.1")
        for _ in range(2)
    ]
    yield listeners[0].getHost().port, listeners[1].getHost().port
    for listener in listeners:
        listener.stopListening()


@pytest.fixture
def mounter(tmp_path: Path, ports: tuple[int, int]) -> Iterator[ProcessMounter]:
    from twisted.internet import reactor

    m = ProcessMounter(
        reactor,
        mount_root=str(tmp_path / "mnt"),
        state_dir=str(tmp_path / "state"),
        timeout=2,
        helper=HELPER,
    )
    yield m
    for entry in os.listdir(m.state_dir) if os.path.isdir(m.state_dir) else []:
        if entry.endswith(".sock"):
            os.unlink(os.path.join(m.state_dir, entry))


def test_interfaces() -> None:
    """Both mounters provide IMounter."""
    from twisted.internet import reactor

    assert verifyObject(IMounter, ProcessMounter(reactor, "/x", "/y"))
    assert verifyObject(IMounter, MemoryMounter())


def test_mountpoints_follow_the_go_layout() -> None:
    """Volumes appear under <root>/<safe host>/<port>/<volume>; odd hosts get a unique suffix."""
    from twisted.internet import reactor

    m = ProcessMounter(reactor, "/mnt/volumes", "/s")
    assert m.mountpoint("127.0.0.1", 8022, "v") == "/mnt/volumes/127.0.0.1/8022/v"
    assert host_dir_name("::1").startswith("a_1-")
    assert host_dir_name("::1") != host_dir_name("a_1")


@pytest_twisted.ensureDeferred
async def test_one_helper_serves_every_volume_of_a_server(
    mounter: ProcessMounter, ports: tuple[int, int]
) -> None:
    """The first attach starts a helper; later ones reuse it; the last detach stops it."""
    mp = await mounter.attach(VolumeSpec("127.0.0.1", ports[0], "a", "/tel_app_exports/c", False))
    assert mp.endswith(f"/127.0.0.1/{ports[0]}/a")
    status = await mounter.status("127.0.0.1", ports[0])
    pid = status["pid"]
    await mounter.attach(VolumeSpec("127.0.0.1", ports[0], "b", "/tel_app_exports/c/d", True))
    status = await mounter.status("127.0.0.1", ports[0])
    assert status["pid"] == pid
    assert status["volumes"] == {
        "a": {"path": "/tel_app_exports/c", "ro": False},
        "b": {"path": "/tel_app_exports/c/d", "ro": True},
    }
    await mounter.detach("127.0.0.1", ports[0], "a")
    assert (await mounter.status("127.0.0.1", ports[0]))["mounted"] is True
    await mounter.detach("127.0.0.1", ports[0], "b")
    assert (await mounter.status("127.0.0.1", ports[0])) == {"mounted": False, "connected": False}
    await _wait_gone(pid)


@pytest_twisted.ensureDeferred
async def test_helper_errors_reach_the_caller(
    mounter: ProcessMounter, ports: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A helper's error line, or its death before mounting, becomes the PluginError message."""
    monkeypatch.setenv("FAKE_HELPER_ERROR", "cannot reach SFTP server at 127.0.0.1:1: refused")
    with pytest.raises(PluginError, match="cannot reach SFTP server at 127.0.0.1:.*: refused"):
        await mounter.attach(VolumeSpec("127.0.0.1", ports[0], "a", "/tel_app_exports/c", False))
    monkeypatch.setenv("FAKE_HELPER_ERROR", "die")
    with pytest.raises(PluginError, match=r"exited \(code 7\) before mounting: fake helper"):
        await mounter.attach(VolumeSpec("127.0.0.1", ports[0], "a", "/tel_app_exports/c", False))


@pytest_twisted.ensureDeferred
async def test_a_hung_helper_times_out(
    mounter: ProcessMounter, ports: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A helper that never reports is killed and the attach fails with a timeout."""
    import telenet.volumes.mounter

    monkeypatch.setattr(telenet.volumes.mounter, "START_GRACE", 0.5)
    monkeypatch.setenv("FAKE_HELPER_ERROR", "hang")
    with pytest.raises(PluginError, match="timed out mounting the SFTP server at 127.0.0.1:"):
        await mounter.attach(VolumeSpec("127.0.0.1", ports[0], "a", "/tel_app_exports/c", False))


@pytest_twisted.ensureDeferred
async def test_missing_remote_dir(mounter: ProcessMounter, ports: tuple[int, int]) -> None:
    """The helper's refusal of a volume is the attach's error."""
    with pytest.raises(PluginError, match="remote directory /tel_app_exports/missing does not"):
        await mounter.attach(
            VolumeSpec("127.0.0.1", ports[0], "a", "/tel_app_exports/missing", False)
        )
    await mounter.shutdown()


@pytest_twisted.ensureDeferred
async def test_a_new_mounter_adopts_running_helpers(
    mounter: ProcessMounter, ports: tuple[int, int]
) -> None:
    """After a plug-in restart the helpers are adopted; unknown volumes and servers go."""
    from twisted.internet import reactor

    await mounter.attach(VolumeSpec("127.0.0.1", ports[0], "keep", "/tel_app_exports/c", False))
    await mounter.attach(VolumeSpec("127.0.0.1", ports[0], "stale", "/tel_app_exports/c", False))
    await mounter.attach(VolumeSpec("127.0.0.1", ports[1], "orphan", "/tel_app_exports/c", False))
    pid = (await mounter.status("127.0.0.1", ports[0]))["pid"]
    orphan_pid = (await mounter.status("127.0.0.1", ports[1]))["pid"]

    again = ProcessMounter(reactor, mounter.mount_root, mounter.state_dir, timeout=2, helper=HELPER)
    await again.adopt({("127.0.0.1", ports[0]): {"keep": ("/tel_app_exports/c", False)}})
    status = await again.status("127.0.0.1", ports[0])
    assert status["pid"] == pid
    assert list(status["volumes"]) == ["keep"]
    assert (await again.status("127.0.0.1", ports[1]))["mounted"] is False
    await _wait_gone(orphan_pid)
    await again.shutdown()
    await _wait_gone(pid)
    assert [e for e in os.listdir(again.state_dir) if e.endswith(".sock")] == []


@pytest_twisted.ensureDeferred
async def test_dead_helper_is_replaced(mounter: ProcessMounter, ports: tuple[int, int]) -> None:
    """A helper killed behind the plug-in's back is replaced at the next attach."""
    await mounter.attach(VolumeSpec("127.0.0.1", ports[0], "a", "/tel_app_exports/c", False))
    pid = (await mounter.status("127.0.0.1", ports[0]))["pid"]
    os.kill(pid, signal.SIGKILL)
    await _wait_gone(pid)
    await mounter.attach(VolumeSpec("127.0.0.1", ports[0], "a", "/tel_app_exports/c", False))
    assert (await mounter.status("127.0.0.1", ports[0]))["pid"] != pid
    await mounter.shutdown()


@pytest_twisted.ensureDeferred
async def test_control_request_to_nobody(tmp_path: Path) -> None:
    """A control request to a socket nobody serves fails with ControlUnavailable."""
    from twisted.internet import reactor

    from telenet.volumes.mounter import ControlUnavailable

    with pytest.raises(ControlUnavailable):
        await control_request(reactor, str(tmp_path / "none.sock"), Status())


async def _wait_gone(pid: int) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # Reap it if it is our child (the fake helper is, in these tests).
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"process {pid} is still alive")


@pytest_twisted.ensureDeferred
async def test_absent_server_is_reported_by_the_ping(tmp_path: Path) -> None:
    """With nobody listening, attach fails within the ping timeout, naming the server."""
    from twisted.internet import protocol, reactor

    listener = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
    port = listener.getHost().port
    await listener.stopListening()
    m = ProcessMounter(
        reactor,
        str(tmp_path / "mnt"),
        str(tmp_path / "state"),
        timeout=2,
        helper=HELPER,
        ping_timeout=1,
    )
    assert await m.reachable("127.0.0.1", port, 1) is False
    with pytest.raises(PluginError, match=f"cannot reach SFTP server at 127.0.0.1:{port}: "):
        await m.attach(VolumeSpec("127.0.0.1", port, "a", "/tel_app_exports/c", False))


@pytest_twisted.ensureDeferred
async def test_a_server_that_starts_late_is_waited_for(tmp_path: Path) -> None:
    """
    A volume's wait: a server that starts listening after the attach began is mounted; one
    that never does fails after the wait, naming the server and how long it was tried.
    """
    from twisted.internet import protocol, reactor, task

    listener = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
    port = listener.getHost().port
    await listener.stopListening()
    m = ProcessMounter(
        reactor,
        str(tmp_path / "mnt"),
        str(tmp_path / "state"),
        timeout=2,
        helper=HELPER,
        ping_timeout=0.5,
        retry_policy=lambda failures: 0.1,
    )
    late: list[Any] = []

    def start_listening() -> None:
        late.append(
            reactor.listenTCP(
                port, protocol.Factory.forProtocol(protocol.Protocol), interface="127.0.0.1"
            )
        )

    reactor.callLater(0.6, start_listening)
    started = reactor.seconds()
    try:
        spec = VolumeSpec("127.0.0.1", port, "a", "/tel_app_exports/c", False, wait=5)
        await m.attach(spec)
        assert reactor.seconds() - started >= 0.6
        assert (await m.status("127.0.0.1", port))["mounted"] is True
        await m.detach("127.0.0.1", port, "a")
    finally:
        for listening in late:
            await listening.stopListening()
    await task.deferLater(reactor, 0, lambda: None)
    started = reactor.seconds()
    with pytest.raises(PluginError) as raised:
        await m.attach(VolumeSpec("127.0.0.1", port, "b", "/tel_app_exports/c", False, wait=0.5))
    assert str(raised.value).startswith(f"cannot reach SFTP server at 127.0.0.1:{port}: ")
    assert str(raised.value).endswith("(tried for 0.5s)")
    assert 0.4 <= reactor.seconds() - started < 3
