"""
End to end: ``twistd telemount`` and ``twistd sftp-agent`` with real dockerd, FUSE and busybox.

The story a user types (issue: Telemount), and what must hold around it: read-only volumes,
sharing, refusal of bad options and of removing a volume in use, a plug-in crash, an agent that
goes away and comes back, and OpenSSH's sftp-server as a server we did not write.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator

import pytest

from .conftest import (
    BUSYBOX,
    Agent,
    Daemon,
    Telemount,
    free_port,
    fuse_mounts,
    port_open,
    require,
    run,
    wait_for,
)

pytestmark = pytest.mark.e2e


def volume_name() -> str:
    return f"tntest-{uuid.uuid4().hex[:8]}"


def create_volume(
    plugin: Telemount,
    port: int,
    *,
    name: str | None = None,
    container: str = "echo",
    directory: str = "/var/run/secrets",
    ro: bool = False,
    check: bool = True,
    options: tuple[str, ...] = (),
) -> tuple[str, subprocess.CompletedProcess[str]]:
    name = name or volume_name()
    args = [
        "docker",
        "volume",
        "create",
        "-d",
        plugin.name,
        "-o",
        "host=127.0.0.1",
        "-o",
        f"port={port}",
        "-o",
        f"container={container}",
        "-o",
        f"dir={directory}",
    ]
    if ro:
        args += ["-o", "ro=true"]
    args += [f for option in options for f in ("-o", option)]
    return name, run(*args, name, check=check)


def busybox(
    *args: str,
    volumes: tuple[str, ...] = (),
    check: bool = True,
    timeout: float = 60,
    driver: str | None = None,
    user: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """
    ``docker run --rm`` of busybox with ``volumes``. With ``driver``, dockerd asks that volume
    driver alone for a volume it has no record of (``--volume-driver``); without, it asks
    every legacy plug-in it ever saw, and each dead one from an earlier test costs ~15 s.
    """
    flags = [f for v in volumes for f in ("-v", v)]
    if driver is not None:
        flags += ["--volume-driver", driver]
    if user is not None:
        flags += ["--user", user]
    return run(
        "docker",
        "run",
        "--rm",
        "--network",
        "none",
        "--name",
        f"tntest-{uuid.uuid4().hex[:8]}",
        *flags,
        BUSYBOX,
        *args,
        check=check,
        timeout=timeout,
    )


@contextlib.contextmanager
def sleeping_container(volume: str) -> Iterator[str]:
    """A container that has ``volume`` mounted at /s while the block runs."""
    name = f"tntest-{uuid.uuid4().hex[:8]}"
    run(
        "docker",
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        name,
        "-v",
        f"{volume}:/s",
        BUSYBOX,
        "sleep",
        "300",
    )
    try:
        yield name
    finally:
        run("docker", "rm", "-f", name)


def helper_pids(plugin: Telemount) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-f", f"telenet.fuse.helper .*{plugin.mount_root}"],
        capture_output=True,
        text=True,
    ).stdout
    return [int(p) for p in out.split()]


def test_story_read_write_remove(telemount: Telemount, sftp_agent: Agent) -> None:
    """The user's story: create, read the agent's files from a container, write back, remove."""
    vol, _ = create_volume(telemount, sftp_agent.port)
    listing = busybox("ls", "-l", "/secrets", volumes=(f"{vol}:/secrets",)).stdout
    assert "token" in listing and "namespace" in listing
    assert busybox("cat", "/secrets/token", volumes=(f"{vol}:/secrets",)).stdout == (
        "s3cr3t-token\n"
    )
    busybox(
        "sh",
        "-c",
        "echo written-by-container > /secrets/new.txt && mkdir /secrets/d",
        volumes=(f"{vol}:/secrets",),
    )
    exported = os.path.join(sftp_agent.root, "echo/var/run/secrets")
    with open(os.path.join(exported, "new.txt")) as f:
        assert f.read() == "written-by-container\n"
    assert os.path.isdir(os.path.join(exported, "d"))
    inspect = run("docker", "volume", "inspect", "-f", "{{.Status.remoteDir}}", vol).stdout
    assert inspect.strip() == "/tel_app_exports/echo/var/run/secrets"
    run("docker", "volume", "rm", vol)
    assert vol not in telemount.volumes()
    wait_for(lambda: not fuse_mounts(telemount.mount_root), 10, "the unmount of the last volume")
    wait_for(lambda: not helper_pids(telemount), 10, "the mount helper to exit")


def test_read_only_volume_refuses_writes(telemount: Telemount, sftp_agent: Agent) -> None:
    """ro=true gives EROFS to writers; a writable volume of the same agent still writes."""
    ro, _ = create_volume(telemount, sftp_agent.port, ro=True)
    rw, _ = create_volume(telemount, sftp_agent.port)
    result = busybox("sh", "-c", "echo x > /ro/nope", volumes=(f"{ro}:/ro",), check=False)
    assert result.returncode != 0
    assert "Read-only file system" in result.stderr
    assert busybox("cat", "/ro/token", volumes=(f"{ro}:/ro",)).stdout == "s3cr3t-token\n"
    busybox("sh", "-c", "echo ok > /rw/yes && cat /ro/yes", volumes=(f"{ro}:/ro", f"{rw}:/rw"))
    assert not os.path.exists(os.path.join(sftp_agent.root, "echo/var/run/secrets/nope"))
    # Both volumes, one agent: one FUSE mount, one helper process.
    assert len(fuse_mounts(telemount.mount_root)) == 1
    assert len(helper_pids(telemount)) == 1


def test_non_root_container_on_a_uid_volume(telemount: Telemount, sftp_agent: Agent) -> None:
    """
    A container running as uid 1000 owns a uid=1000 volume: it creates, writes, renames and
    removes files, which land on the agent's disk. Without the options the same user may not
    write into the agent's root-owned 0755 directory.
    """
    exported = os.path.join(sftp_agent.root, "echo/var/run/secrets")
    os.chmod(exported, 0o755)
    plain, _ = create_volume(telemount, sftp_agent.port)
    refused = busybox(
        "sh", "-c", "echo x > /v/nope", volumes=(f"{plain}:/v",), user="1000:1000", check=False
    )
    assert refused.returncode != 0 and "Permission denied" in refused.stderr, refused.stderr
    owned, _ = create_volume(
        telemount, sftp_agent.port, options=("uid=1000", "gid=1000", "umask=022")
    )
    script = (
        "set -e; echo first > /v/a.txt; echo second >> /v/a.txt; mkdir /v/dir;"
        " mv /v/a.txt /v/dir/b.txt; echo gone > /v/gone; rm /v/gone;"
        " stat -c '%u:%g %a' /v /v/dir/b.txt"
    )
    out = busybox("sh", "-c", script, volumes=(f"{owned}:/v",), user="1000:1000").stdout
    assert out.split("\n")[:2] == ["1000:1000 755", "1000:1000 644"], out
    with open(os.path.join(exported, "dir", "b.txt")) as f:
        assert f.read() == "first\nsecond\n"
    assert not os.path.exists(os.path.join(exported, "a.txt"))
    assert not os.path.exists(os.path.join(exported, "gone"))
    assert not os.path.exists(os.path.join(exported, "nope"))


def test_volume_in_use_cannot_be_removed(telemount: Telemount, sftp_agent: Agent) -> None:
    """docker volume rm of a volume a running container uses is refused with our message."""
    vol, _ = create_volume(telemount, sftp_agent.port)
    with sleeping_container(vol):
        result = run("docker", "volume", "rm", vol, check=False)
        assert result.returncode != 0
        assert "volume is in use" in result.stderr or "mounted by containers" in result.stderr
    run("docker", "volume", "rm", vol)


@pytest.mark.parametrize(
    "opts, message",
    [
        (["-o", "bogus=1", "-o", "container=c", "-o", "port=1"], 'illegal option "bogus"'),
        (["-o", "port=8022"], 'missing required option "container"'),
        (["-o", "container=c"], 'missing required option "port"'),
        (
            ["-o", "container=c", "-o", "port=99999"],
            "port must be an unsigned integer between 1 and 65535",
        ),
        (["-o", "container=c", "-o", "port=1", "-o", "ro=maybe"], "ro must be a boolean"),
        (
            ["-o", "container=c", "-o", "port=1", "-o", "uid=root"],
            "uid must be an unsigned integer between 0 and 4294967294",
        ),
        (
            ["-o", "container=c", "-o", "port=1", "-o", "umask=9"],
            "umask must be an octal number between 0 and 0777",
        ),
        (
            ["-o", "container=c", "-o", "port=1", "-o", "dir=../../etc"],
            'dir "../../etc" leaves the export of container "c"',
        ),
    ],
)
def test_bad_options_reach_the_user(telemount: Telemount, opts: list[str], message: str) -> None:
    """docker volume create shows our message for each kind of bad option."""
    result = run(
        "docker", "volume", "create", "-d", telemount.name, *opts, volume_name(), check=False
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_unreachable_agent_is_reported(telemount: Telemount) -> None:
    """Creating a volume on a server nobody serves fails quickly, saying so."""
    started = time.monotonic()
    _, result = create_volume(telemount, free_port(), check=False)
    assert result.returncode != 0
    assert "cannot reach SFTP server at 127.0.0.1" in result.stderr
    assert time.monotonic() - started < 30


def test_missing_remote_directory_is_reported(telemount: Telemount, sftp_agent: Agent) -> None:
    """A dir that does not exist in the export is refused at create, with the remote path."""
    _, result = create_volume(telemount, sftp_agent.port, directory="/no/such", check=False)
    assert result.returncode != 0
    assert "/tel_app_exports/echo/no/such" in result.stderr


def test_plugin_kill_and_restart_keeps_volumes(telemount: Telemount, sftp_agent: Agent) -> None:
    """kill -9 of the plug-in: after restart the volumes are listed and mountable."""
    vol, _ = create_volume(telemount, sftp_agent.port)
    with sleeping_container(vol) as name:
        telemount.daemon.kill(signal.SIGKILL)
        # The running container keeps its files while the plug-in is down.
        assert run("docker", "exec", name, "cat", "/s/token").stdout == "s3cr3t-token\n"
        telemount.start()
        assert vol in telemount.volumes()
        assert busybox("cat", "/s/namespace", volumes=(f"{vol}:/s",)).stdout == "default\n"
        assert run("docker", "exec", name, "cat", "/s/token").stdout == "s3cr3t-token\n"
        # It still knows the running container uses the volume.
        assert run("docker", "volume", "rm", vol, check=False).returncode != 0
    run("docker", "volume", "rm", vol)
    assert len(helper_pids(telemount)) <= 1


def test_agent_death_gives_errors_then_recovers(telemount: Telemount, sftp_agent: Agent) -> None:
    """Kill the agent during a read: the reader fails within 10 s; restart it: works again."""
    exported = os.path.join(sftp_agent.root, "echo/var/run/secrets")
    with open(os.path.join(exported, "big"), "wb") as f:
        f.write(os.urandom(1024 * 1024) * 64)
    vol, _ = create_volume(telemount, sftp_agent.port)
    with sleeping_container(vol) as name:
        # A slow reader (the pipe to a sleeping reader) keeps the read going while we kill.
        reader = subprocess.Popen(
            [
                "docker",
                "exec",
                name,
                "sh",
                "-c",
                "while true; do cat /s/big > /dev/null || exit 3; done",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        assert reader.poll() is None, reader.communicate()
        sftp_agent.daemon.kill(signal.SIGKILL)
        killed = time.monotonic()
        try:
            reader.wait(timeout=10)
        except subprocess.TimeoutExpired:
            reader.kill()
            raise AssertionError("the reader did not get an error within 10 s") from None
        assert reader.returncode == 3
        assert time.monotonic() - killed < 10
        # Back again: the same volume works in the same container without a remount.
        sftp_agent.start()

        def readable() -> bool:
            result = run("docker", "exec", name, "cat", "/s/token", check=False)
            return result.stdout == "s3cr3t-token\n"

        wait_for(readable, 30, "the volume to work again", interval=0.5)
        assert busybox("cat", "/s/namespace", volumes=(f"{vol}:/s",)).stdout == "default\n"


@pytest.fixture
def openssh_server(workdir: str) -> Iterator[int]:
    """OpenSSH's sftp-server on TCP (socat), seeing ``<workdir>/exports`` as /tel_app_exports."""
    sftp_server = "/usr/lib/openssh/sftp-server"
    require(os.path.exists(sftp_server), "openssh-sftp-server is not installed")
    require(
        shutil.which("socat") is not None and shutil.which("unshare") is not None,
        "socat and unshare are needed to serve sftp-server on TCP",
    )
    root = os.path.join(workdir, "exports")
    secrets = os.path.join(root, "echo", "var", "run", "secrets")
    os.makedirs(secrets)
    with open(os.path.join(secrets, "token"), "w") as f:
        f.write("s3cr3t-token\n")
    # Each connection runs sftp-server chrooted in a private mount namespace: a tmpfs root
    # with the host's /usr, /etc and /dev, and the export at /tel_app_exports. Nothing is
    # made on the host's own root.
    chroot = os.path.join(workdir, "sftp-root")
    os.makedirs(chroot)
    port = free_port()
    wrapper = os.path.join(workdir, "sftp-server.sh")
    with open(wrapper, "w") as f:
        f.write(
            textwrap.dedent(f"""\
            #!/bin/sh
            exec unshare -m --propagation private sh -ec '
              r={chroot}
              mount -t tmpfs tmpfs "$r"
              mkdir "$r/usr" "$r/etc" "$r/dev" "$r/tel_app_exports"
              for d in bin lib lib32 lib64 libx32 sbin; do
                if [ -L "/$d" ]; then ln -s "$(readlink "/$d")" "$r/$d"; fi
              done
              mount --rbind /usr "$r/usr"
              mount --rbind /etc "$r/etc"
              mount --rbind /dev "$r/dev"
              mount --bind {root} "$r/tel_app_exports"
              cd "$r"
              exec chroot "$r" {sftp_server}'
            """)
        )
    os.chmod(wrapper, 0o755)
    daemon = Daemon(
        ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"EXEC:{wrapper}"],
        os.path.join(workdir, "socat.log"),
    ).start()
    wait_for(lambda: port_open(port), 10, "socat")
    yield port
    daemon.stop()


FILE_TESTS = r"""
set -e
cd /v
cat token
echo hello > a.txt
test "$(cat a.txt)" = hello
echo more >> a.txt
test "$(wc -l < a.txt)" -eq 2
mkdir -p d/e
mv a.txt d/e/b.txt
test ! -e a.txt
test -f d/e/b.txt
ln -s e/b.txt d/link
test "$(readlink d/link)" = e/b.txt
test "$(head -1 d/link)" = hello
chmod 600 d/e/b.txt
test "$(stat -c %a d/e/b.txt)" = 600
touch -d '2020-01-02 03:04:05' d/e/b.txt
test "$(stat -c %Y d/e/b.txt)" = 1577934245
truncate -s 3 d/e/b.txt
test "$(cat d/e/b.txt)" = hel
dd if=/dev/urandom of=big bs=1M count=8 2>/dev/null
test "$(md5sum < big)" = "$(cat big | md5sum)"
test "$(stat -c %s big)" = 8388608
df /v > /dev/null
rm d/link d/e/b.txt big
rmdir d/e d
ls -la
echo ALL-OK
"""


@pytest.mark.parametrize("server", ["sftp-agent", "openssh"])
def test_file_operations(server: str, telemount: Telemount, request: pytest.FixtureRequest) -> None:
    """The same file tests pass against our agent and against OpenSSH's sftp-server."""
    if server == "openssh":
        port = request.getfixturevalue("openssh_server")
        root = os.path.join(os.path.dirname(telemount.mount_root), "exports")
    else:
        agent = request.getfixturevalue("sftp_agent")
        port, root = agent.port, agent.root
    vol, _ = create_volume(telemount, port)
    result = busybox("sh", "-c", FILE_TESTS, volumes=(f"{vol}:/v",), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ALL-OK" in result.stdout
    assert "s3cr3t-token" in result.stdout
    # The container's writes are the server's files, and its deletions are gone there too.
    left = sorted(os.listdir(os.path.join(root, "echo/var/run/secrets")))
    assert left in (["token"], ["namespace", "token"])
