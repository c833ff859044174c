"""
POSIX semantics of a telemount mount, end to end: the real mount helper against OpenSSH's
sftp-server (behind socat) and against sftp-agent, both running as root, used by root and by
other users (child processes that drop to their ids), as a local filesystem would be.

What is checked: the kernel refuses what the owner and modes shown forbid (the mount has
``default_permissions``); a volume's ``uid``/``gid``/``umask`` options make a non-root user
the owner of everything while the server still writes as itself; chown, chmod, utimes and
truncate reach the server; new names get their creator's owner and the modes asked for; and
each refused operation fails with the errno a local filesystem gives.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import free_port, port_open, require, wait_for
from tests.test_sftpfs import SFTP_SERVER, MountHelper, SocatSFTP, in_thread

USER = 1000
OTHER = 1001
SYSTEM_PYTHON = "/usr/bin/python3"


class AgentSFTP:
    """``twistd sftp-agent`` exporting a directory as /tel_app_exports, in its own group."""

    def __init__(self, root: str, port: int) -> None:
        self.root = root
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentSFTP:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
        self.proc = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "sftp-agent", "--root", self.root]
            + ["--listen", f"tcp:{self.port}:interface=127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        wait_for(lambda: port_open(self.port), 15, "sftp-agent to listen")
        return self

    def kill(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)


class Mounted:
    """A mount helper serving ``disk`` (the server's directory) as volumes of one mount."""

    def __init__(self, helper: MountHelper, disk: str, remote: str) -> None:
        self.helper = helper
        self.disk = disk  # the exported directory, on the server's disk
        self.remote = remote  # the same directory as the SFTP server names it

    def add(self, name: str, sub: str, **options: Any) -> str:
        os.makedirs(os.path.join(self.disk, sub), exist_ok=True)
        path = f"{self.remote}/{sub}"
        reply = self.helper.request({"op": "add", "name": name, "path": path, **options})
        assert reply == {"ok": True}, reply
        return self.helper.path(name)

    def on_disk(self, *parts: str) -> str:
        return os.path.join(self.disk, *parts)


@pytest.fixture(params=["openssh", "agent"])
def mounted(request: Any, fuse_ready: None, workdir: str) -> Iterator[Mounted]:
    require(shutil.which("socat") is not None, "socat is not installed")
    require(os.access(SFTP_SERVER, os.X_OK), "openssh-sftp-server is not installed")
    require(os.access(SYSTEM_PYTHON, os.X_OK), f"{SYSTEM_PYTHON} is missing")
    export = os.path.join(workdir, "export")
    os.makedirs(export)
    os.chmod(workdir, 0o755)
    port = free_port()
    server: SocatSFTP | AgentSFTP
    if request.param == "openssh":
        server, remote = SocatSFTP(export, port), export
    else:
        server, remote = AgentSFTP(export, port), "/tel_app_exports"
    server.start()
    helper = MountHelper(workdir, port)
    try:
        helper.start()
        assert helper.report.get("ready") is True, helper.report
        yield Mounted(helper, export, remote)
    finally:
        helper.cleanup()
        server.kill()


def as_user(uid: int, gid: int, code: str, cwd: str) -> dict[str, Any]:
    """
    Run ``code`` (Python; it fills the dict ``out``) as ``uid``:``gid`` with no other groups
    and umask 022, in ``cwd``; returns ``out``. ``err(fn, *args)`` gives the errno ``fn``
    fails with (0 when it succeeds).
    """
    program = (
        textwrap.dedent(
            """
        import json, os, sys
        def err(fn, *args):
            try:
                fn(*args)
            except OSError as e:
                return e.errno
            return 0
        out = {}
        """
        )
        + textwrap.dedent(code)
        + "\nprint(json.dumps(out))\n"
    )

    def run() -> dict[str, Any]:
        done = subprocess.run(
            # The system's Python: the test's own may sit where other users cannot reach.
            [SYSTEM_PYTHON, "-c", program],
            cwd=cwd,
            user=uid,
            group=gid,
            extra_groups=[],
            umask=0o022,
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return dict(__import__("json").loads(done.stdout))

    return dict(in_thread(run, 90))


def errno_of(fn: Any, *args: Any) -> int:
    try:
        fn(*args)
    except OSError as e:
        return int(e.errno or 0)
    return 0


@pytest.mark.e2e
def test_e2e_a_non_root_user_works_on_a_uid_volume(mounted: Mounted) -> None:
    """
    uid/gid/umask: everything shows as the user's, who creates, writes, renames and removes
    files; they land on the server's disk, written by the server's own user.
    """
    vol = mounted.add("mine", "mine", uid=USER, gid=USER, umask=0o027)
    os.chmod(mounted.on_disk("mine"), 0o755)  # root's, 0755 on the server
    out = as_user(
        USER,
        USER,
        """
        with open("notes.txt", "w") as f:
            f.write("first\\n")
        with open("notes.txt", "a") as f:
            f.write("second\\n")
        os.mkdir("dir")
        os.rename("notes.txt", "dir/renamed.txt")
        with open("gone", "w") as f:
            f.write("x")
        os.remove("gone")
        st = os.stat("dir/renamed.txt")
        out["owner"] = [st.st_uid, st.st_gid]
        out["mode"] = st.st_mode & 0o777
        out["root"] = [os.stat(".").st_uid, os.stat(".").st_mode & 0o777]
        out["chown_other"] = err(os.chown, "dir/renamed.txt", 0, 0)
        """,
        vol,
    )
    assert out["owner"] == [USER, USER]
    assert out["mode"] == 0o644 & ~0o027
    assert out["root"] == [USER, 0o755 & ~0o027]
    assert out["chown_other"] == errno.EPERM
    with open(mounted.on_disk("mine", "dir", "renamed.txt")) as f:
        assert f.read() == "first\nsecond\n"
    assert not os.path.exists(mounted.on_disk("mine", "notes.txt"))
    assert not os.path.exists(mounted.on_disk("mine", "gone"))
    # The server wrote as its own user (root here): the ids are only shown.
    assert os.stat(mounted.on_disk("mine", "dir", "renamed.txt")).st_uid == 0

    def as_root() -> None:
        path = os.path.join(vol, "dir", "renamed.txt")
        assert errno_of(os.chown, path, 0, 0) == errno.EPERM  # the owner shown cannot change
        os.chown(path, USER, USER)  # the one shown: nothing to do
        os.chmod(path, 0o600)  # modes reach the server, shown less the umask
        assert stat.S_IMODE(os.stat(mounted.on_disk("mine", "dir", "renamed.txt")).st_mode) == (
            0o600
        )

    in_thread(as_root, 30)


@pytest.mark.e2e
def test_e2e_permissions_follow_the_owner_and_modes_shown(mounted: Mounted) -> None:
    """Without options: the server's ids and modes, and the kernel enforces them."""
    vol = mounted.add("data", "data")
    os.chmod(mounted.on_disk("data"), 0o755)
    os.makedirs(mounted.on_disk("data", "shared"))
    os.chmod(mounted.on_disk("data", "shared"), 0o1777)
    with open(mounted.on_disk("data", "rootfile"), "w") as f:
        f.write("root's\n")
    os.chmod(mounted.on_disk("data", "rootfile"), 0o644)
    out = as_user(
        USER,
        USER,
        """
        out["write_root_dir"] = err(open, "new", "w")
        out["mkdir_root_dir"] = err(os.mkdir, "newdir")
        out["write_root_file"] = err(open, "rootfile", "a")
        out["chmod_root_file"] = err(os.chmod, "rootfile", 0o666)
        out["chown_root_file"] = err(os.chown, "rootfile", 1000, 1000)
        out["utime_root_file"] = err(os.utime, "rootfile", (1, 1))
        out["unlink_root_file"] = err(os.unlink, "rootfile")
        with open("shared/mine", "w") as f:
            f.write("mine\\n")
        os.mkdir("shared/mydir", 0o750)
        os.chmod("shared/mine", 0o640)
        os.utime("shared/mine", (1_000_000_000, 1_200_000_000))
        """,
        vol,
    )
    assert out == {
        "write_root_dir": errno.EACCES,
        "mkdir_root_dir": errno.EACCES,
        "write_root_file": errno.EACCES,
        "chmod_root_file": errno.EPERM,
        "chown_root_file": errno.EPERM,
        "utime_root_file": errno.EPERM,
        "unlink_root_file": errno.EACCES,
    }
    # New names are their creator's, with the modes asked for (the umask applied once).
    mine = os.stat(mounted.on_disk("data", "shared", "mine"))
    assert (mine.st_uid, mine.st_gid, stat.S_IMODE(mine.st_mode)) == (USER, USER, 0o640)
    assert int(mine.st_mtime) == 1_200_000_000
    mydir = os.stat(mounted.on_disk("data", "shared", "mydir"))
    assert (mydir.st_uid, stat.S_IMODE(mydir.st_mode)) == (USER, 0o750)
    # The sticky directory: another user may not remove them.
    other = as_user(
        OTHER,
        OTHER,
        """
        out["unlink"] = err(os.unlink, "shared/mine")
        out["rename"] = err(os.rename, "shared/mine", "shared/stolen")
        out["read_private_dir"] = err(os.listdir, "shared/mydir")
        """,
        vol,
    )
    assert other == {"unlink": errno.EPERM, "rename": errno.EPERM, "read_private_dir": errno.EACCES}

    def as_root() -> None:
        path = os.path.join(vol, "shared", "mine")
        os.chown(path, OTHER, OTHER)
        os.chmod(path, 0o4755)
        os.truncate(path, 2)
        st = os.stat(mounted.on_disk("data", "shared", "mine"))
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_size) == (
            OTHER,
            OTHER,
            0o4755,
            2,
        )
        shown = os.stat(path)
        assert (shown.st_uid, stat.S_IMODE(shown.st_mode), shown.st_size) == (OTHER, 0o4755, 2)
        os.symlink("mine", os.path.join(vol, "shared", "link"))
        os.chown(os.path.join(vol, "shared", "link"), USER, USER, follow_symlinks=False)
        assert os.lstat(mounted.on_disk("data", "shared", "link")).st_uid == USER
        assert os.stat(mounted.on_disk("data", "shared", "mine")).st_uid == OTHER

    in_thread(as_root, 30)


@pytest.mark.e2e
def test_e2e_refused_operations_fail_with_a_local_errno(mounted: Mounted) -> None:
    """Each refused operation fails as on a local filesystem; links and POSIX rename work."""
    vol = mounted.add("data", "data")
    other = mounted.add("other", "other")

    def story() -> None:
        p = lambda *names: os.path.join(vol, *names)  # noqa: E731
        os.mkdir(p("full"))
        with open(p("full", "f"), "w") as f:
            f.write("f\n")
        os.mkdir(p("empty"))
        with open(p("file"), "w") as f:
            f.write("file\n")
        os.symlink("file", p("link"))
        assert errno_of(os.rmdir, p("full")) == errno.ENOTEMPTY
        assert errno_of(os.mkdir, p("full")) == errno.EEXIST
        assert errno_of(os.unlink, p("full")) == errno.EISDIR
        assert errno_of(os.rmdir, p("file")) == errno.ENOTDIR
        assert errno_of(os.stat, p("file", "x")) == errno.ENOTDIR
        assert errno_of(os.mkdir, p("n" * 256)) == errno.ENAMETOOLONG
        assert errno_of(os.open, p("n" * 256), os.O_CREAT | os.O_WRONLY) == errno.ENAMETOOLONG
        assert errno_of(os.rename, p("empty"), p("full")) == errno.ENOTEMPTY
        assert errno_of(os.rename, p("file"), p("empty")) == errno.EISDIR
        assert errno_of(os.rename, p("empty"), p("file")) == errno.ENOTDIR
        assert errno_of(os.rename, p("file"), os.path.join(other, "file")) == errno.EXDEV
        assert errno_of(os.open, p("link"), os.O_RDONLY | os.O_NOFOLLOW) == errno.ELOOP
        assert errno_of(os.open, p("file"), os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
        # FIFOs are the mount's own (SFTP cannot make them): usable, never on the server
        os.mkfifo(p("full", "fifo"))
        assert stat.S_ISFIFO(os.lstat(p("full", "fifo")).st_mode)
        assert not os.path.lexists(mounted.on_disk("data", "full", "fifo"))
        os.unlink(p("full", "f"))
        assert errno_of(os.rmdir, p("full")) == errno.ENOTEMPTY
        os.unlink(p("full", "fifo"))
        with open(p("full", "f"), "w") as f:
            f.write("f\n")
        assert errno_of(os.link, p("full"), p("dirlink")) == errno.EPERM
        assert errno_of(os.link, p("file"), p("link")) == errno.EEXIST
        # hard links (hardlink@openssh.com) share the file
        os.link(p("file"), p("hard"))
        with open(p("hard"), "a") as f:
            f.write("more\n")
        with open(mounted.on_disk("data", "file")) as f:
            assert f.read() == "file\nmore\n"
        assert os.stat(mounted.on_disk("data", "hard")).st_nlink == 2
        # POSIX rename: a link onto the same file changes nothing; another file is replaced
        os.rename(p("hard"), p("file"))
        assert os.path.exists(mounted.on_disk("data", "hard"))
        with open(p("new"), "w") as f:
            f.write("new\n")
        os.rename(p("new"), p("hard"))
        with open(mounted.on_disk("data", "hard")) as f:
            assert f.read() == "new\n"
        os.unlink(p("hard"))
        os.mkdir(p("empty2"))
        os.rename(p("empty2"), p("empty"))
        assert sorted(os.listdir(mounted.on_disk("data"))) == ["empty", "file", "full", "link"]
        # a regular file through mknod
        os.mknod(p("node"), stat.S_IFREG | 0o600)
        assert stat.S_ISREG(os.stat(mounted.on_disk("data", "node")).st_mode)

    in_thread(story, 60)
