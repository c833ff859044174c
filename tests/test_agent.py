"""
Tests for L{telenet.agent} and its raw SFTP server (L{telenet.sftp.server}, serving the
directory L{telenet.sftp.rooted} confines) exporting a directory as /tel_app_exports.

Most tests drive the real server protocol with Conch's L{FileTransferClient} over an in-memory
L{iosim} connection backed by a C{tmp_path} directory. The last ones use real loopback sockets
(the agent on tcp:0 with its thread pool) and a real ``twistd sftp-agent`` process.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import pytest_twisted
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.filetransfer import (
    FX_BAD_MESSAGE,
    FX_FAILURE,
    FX_NO_SUCH_FILE,
    FX_PERMISSION_DENIED,
    FXF_APPEND,
    FXF_CREAT,
    FXF_EXCL,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    FXP_FSETSTAT,
    FXP_OPEN,
    FXP_SYMLINK,
    ClientFile,
    FileTransferClient,
    SFTPError,
)
from twisted.internet import defer, endpoints
from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.internet.testing import MemoryReactor
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.python.usage import UsageError
from twisted.test import iosim

from telenet import agent
from telenet.agent import Options, makeService
from telenet.sftp.codec import FileAttrs, pack_attrs
from telenet.sftp.runners import BlockingCallRunner, run_inline, threadpool_runner
from telenet.sftp.server import MAX_INFLIGHT, AgentFactory, AgentProtocol

from .sftpfakes import Pumped

_T = TypeVar("_T")

EXPORT = b"/tel_app_exports"
DENIED = {FX_NO_SUCH_FILE, FX_PERMISSION_DENIED}


class Client(FileTransferClient):
    """A Conch SFTP client that remembers the server's VERSION extensions."""

    transport: Any  # typing note: an iosim or TCP transport

    def __init__(self) -> None:
        super().__init__()
        self.serverExtensions: dict[bytes, bytes] | None = None
        self.lost = False

    def gotServerVersion(self, serverVersion: int, extData: dict[bytes, bytes]) -> None:
        self.serverExtensions = extData

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        super().connectionLost(reason)


class Harness(Pumped):
    """The agent protocol and a Conch client joined in memory; C{wait} pumps until a reply."""

    def __init__(self, root: Path, run_io: BlockingCallRunner = run_inline) -> None:
        self.root = root
        self.server: AgentProtocol = AgentFactory(str(root), run_io).buildProtocol(None)
        self.client = Client()
        self.pump = iosim.connect(
            self.server,
            iosim.makeFakeServer(self.server),
            self.client,
            iosim.makeFakeClient(self.client),
        )

    def code(self, d: Deferred[Any]) -> int:
        err = self.error(d)
        assert isinstance(err, SFTPError), f"expected an SFTPError, got {err!r}"
        return int(err.code)

    def read_file(self, path: bytes) -> bytes:
        f = self.wait(self.client.openFile(path, FXF_READ, {}))
        out = b""
        while True:
            box = self.fire(f.readChunk(len(out), 65536))
            if isinstance(box[0], Failure):
                box[0].trap(EOFError)
                break
            out += box[0]
        self.wait(f.close())
        return out

    def write_file(self, path: bytes, data: bytes, flags: int = FXF_WRITE | FXF_CREAT) -> None:
        f = self.wait(self.client.openFile(path, flags, {}))
        self.wait(f.writeChunk(0, data))
        self.wait(f.close())

    def listdir(self, path: bytes) -> list[tuple[bytes, bytes, dict[str, Any]]]:
        d = self.wait(self.client.openDirectory(path))
        entries: list[tuple[bytes, bytes, dict[str, Any]]] = []
        while True:
            box = self.fire(d.read())
            if isinstance(box[0], Failure):
                box[0].trap(EOFError)
                break
            entries.extend(box[0])
        self.wait(d.close())
        return entries

    def raw(self, kind: int, body: bytes) -> Deferred[Any]:
        """Send a request packet of our own making (C{body} after the request id)."""
        return self.client._sendRequest(kind, body)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """An export with a file and a subdirectory, next to an "outside" directory with a secret."""
    export = tmp_path / "export"
    (export / "sub").mkdir(parents=True)
    (export / "hello.txt").write_bytes(b"hello world\n")
    (export / "sub" / "inner.txt").write_bytes(b"inner\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not leak\n")
    return export


@pytest.fixture
def sftp(tree: Path) -> Harness:
    return Harness(tree)


# -- version, virtual tree, realpath ---------------------------------------------------------


def test_version_announces_openssh_extensions(sftp: Harness) -> None:
    """The VERSION packet lists the OpenSSH extensions with OpenSSH's version strings."""
    assert sftp.client.serverExtensions == {
        b"posix-rename@openssh.com": b"1",
        b"statvfs@openssh.com": b"2",
        b"hardlink@openssh.com": b"1",
        b"fsync@openssh.com": b"1",
        b"lsetstat@openssh.com": b"1",
    }


def test_virtual_root_lists_only_the_export(sftp: Harness) -> None:
    """Listing / shows exactly tel_app_exports, as a directory."""
    entries = sftp.listdir(b"/")
    assert [name for name, _, _ in entries] == [b"tel_app_exports"]
    assert stat.S_ISDIR(entries[0][2]["permissions"])
    assert stat.S_ISDIR(sftp.wait(sftp.client.getAttrs(b"/"))["permissions"])


def test_realpath_returns_virtual_paths(sftp: Harness) -> None:
    """realPath answers in the virtual tree: relative paths start at /tel_app_exports."""
    rp = sftp.client.realPath
    assert sftp.wait(rp(b".")) == "/tel_app_exports"
    assert sftp.wait(rp(b"")) == "/tel_app_exports"
    assert sftp.wait(rp(b"sub/../hello.txt")) == "/tel_app_exports/hello.txt"
    assert sftp.wait(rp(b"/tel_app_exports/sub/")) == "/tel_app_exports/sub"
    assert sftp.wait(rp(b"../../..")) == "/"
    assert sftp.wait(rp(b"new-file")) == "/tel_app_exports/new-file"


def test_relative_and_export_paths_name_the_same_entry(sftp: Harness) -> None:
    """`x` and `/tel_app_exports/x` read the same file."""
    assert sftp.read_file(b"hello.txt") == b"hello world\n"
    assert sftp.read_file(b"/tel_app_exports/hello.txt") == b"hello world\n"
    assert sftp.read_file(b"/tel_app_exports/sub/../hello.txt") == b"hello world\n"


# -- confinement -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        b"../outside/secret",
        b"../../outside/secret",
        b"/tel_app_exports/../outside/secret",
        b"sub/../../outside/secret",
        b"/../../../../etc/passwd",
        b"/etc/passwd",
    ],
)
def test_paths_cannot_climb_out(sftp: Harness, path: bytes) -> None:
    """`..` is clamped at the virtual / and host absolute paths do not exist."""
    assert sftp.code(sftp.client.openFile(path, FXF_READ, {})) in DENIED
    assert sftp.code(sftp.client.getAttrs(path)) in DENIED


def test_host_path_of_the_outside_is_refused(sftp: Harness, tree: Path) -> None:
    """The real host path of a file next to the export is not reachable, nor writable."""
    secret = str(tree.parent / "outside" / "secret").encode()
    assert sftp.code(sftp.client.openFile(secret, FXF_READ, {})) in DENIED
    created = str(tree.parent / "outside" / "new").encode()
    code = sftp.code(sftp.client.openFile(created, FXF_WRITE | FXF_CREAT, {}))
    assert code in DENIED
    assert not (tree.parent / "outside" / "new").exists()


def test_nothing_can_be_created_beside_the_export(sftp: Harness, tree: Path) -> None:
    """The virtual / is read-only and the export root cannot be removed or renamed."""
    assert sftp.code(sftp.client.makeDirectory(b"/evil", {})) in DENIED
    assert sftp.code(sftp.client.removeDirectory(b"/tel_app_exports")) in DENIED
    assert sftp.code(sftp.client.renameFile(b"/tel_app_exports", b"/moved")) in DENIED
    assert tree.is_dir()


def test_existing_symlinks_pointing_out_are_confined(sftp: Harness, tree: Path) -> None:
    """Links in the export to the outside (absolute or climbing) cannot be followed."""
    outside = tree.parent / "outside"
    os.symlink(outside, tree / "abs-dir")
    os.symlink(outside / "secret", tree / "abs-file")
    os.symlink("../outside/secret", tree / "rel-file")
    os.symlink("sub/../../outside", tree / "rel-dir")
    for link in (b"abs-file", b"rel-file", b"abs-dir/secret", b"rel-dir/secret"):
        assert sftp.code(sftp.client.openFile(link, FXF_READ, {})) in DENIED, link
        assert sftp.code(sftp.client.getAttrs(link, 1)) in DENIED, link
    for link in (b"abs-dir", b"rel-dir"):
        assert sftp.code(sftp.client.openDirectory(link)) in DENIED, link
    write = FXF_WRITE | FXF_CREAT | FXF_TRUNC
    assert sftp.code(sftp.client.openFile(b"abs-dir/planted", write, {})) in DENIED
    assert sftp.code(sftp.client.setAttrs(b"abs-file", {"permissions": 0o777})) in DENIED
    assert not (outside / "planted").exists()
    assert (outside / "secret").read_bytes() == b"do not leak\n"
    assert stat.S_IMODE(os.stat(outside / "secret").st_mode) != 0o777


def test_readlink_returns_the_link_text_and_lstat_sees_the_link(sftp: Harness, tree: Path) -> None:
    """readlink answers the stored text verbatim; lstat describes the link itself."""
    target = str(tree.parent / "outside" / "secret")
    os.symlink(target, tree / "abs-file")
    assert sftp.wait(sftp.client.readLink(b"abs-file")) == target
    assert stat.S_ISLNK(sftp.wait(sftp.client.getAttrs(b"abs-file", 0))["permissions"])


def test_symlinks_inside_the_export_are_followed(sftp: Harness, tree: Path) -> None:
    """Relative links within the export, and absolute ones in virtual terms, work."""
    os.symlink("sub/inner.txt", tree / "rel")
    os.symlink("/tel_app_exports/hello.txt", tree / "virt")
    os.symlink("sub", tree / "subdir")
    assert sftp.read_file(b"rel") == b"inner\n"
    assert sftp.read_file(b"virt") == b"hello world\n"
    assert sftp.read_file(b"subdir/inner.txt") == b"inner\n"
    assert [n for n, _, _ in sftp.listdir(b"subdir")] == [b"inner.txt"]
    assert sftp.wait(sftp.client.realPath(b"subdir/../virt")) == "/tel_app_exports/hello.txt"


def test_client_made_symlinks_resolve_in_the_virtual_tree(sftp: Harness, tree: Path) -> None:
    """
    SYMLINK takes OpenSSH's argument order (target, link). The text is stored as given, and
    following it is confined: escapes fail, virtual absolute targets work.
    """

    def symlink(target: bytes, link: bytes) -> Deferred[Any]:
        return sftp.raw(FXP_SYMLINK, NS(target) + NS(link))

    sftp.wait(symlink(b"/tel_app_exports/hello.txt", b"good"))
    sftp.wait(symlink(b"../../../../outside/secret", b"climb"))
    sftp.wait(symlink(str(tree.parent / "outside").encode(), b"hostdir"))
    assert os.readlink(tree / "climb") == "../../../../outside/secret"
    assert sftp.read_file(b"good") == b"hello world\n"
    assert sftp.code(sftp.client.openFile(b"climb", FXF_READ, {})) in DENIED
    assert sftp.code(sftp.client.openFile(b"hostdir/secret", FXF_READ, {})) in DENIED
    write = FXF_WRITE | FXF_CREAT
    assert sftp.code(sftp.client.openFile(b"hostdir/planted", write, {})) in DENIED
    assert not (tree.parent / "outside" / "planted").exists()


def test_symlink_loops_fail_instead_of_hanging(sftp: Harness, tree: Path) -> None:
    """A link cycle is reported as an error."""
    os.symlink("b", tree / "a")
    os.symlink("a", tree / "b")
    assert sftp.code(sftp.client.openFile(b"a", FXF_READ, {})) == FX_NO_SUCH_FILE


# -- files -----------------------------------------------------------------------------------


def test_write_read_roundtrip_with_offsets(sftp: Harness, tree: Path) -> None:
    """writeChunk at offsets builds the file; readChunk reads ranges; EOF past the end."""
    f = sftp.wait(sftp.client.openFile(b"new.bin", FXF_READ | FXF_WRITE | FXF_CREAT, {}))
    sftp.wait(f.writeChunk(0, b"abcdef"))
    sftp.wait(f.writeChunk(6, b"ghij"))
    sftp.wait(f.writeChunk(2, b"XY"))
    assert sftp.wait(f.readChunk(1, 4)) == b"bXYe"
    assert sftp.wait(f.readChunk(8, 100)) == b"ij"
    assert isinstance(sftp.error(f.readChunk(10, 10)), EOFError)
    assert sftp.wait(f.getAttrs())["size"] == 10
    sftp.wait(f.close())
    assert (tree / "new.bin").read_bytes() == b"abXYefghij"


def test_open_flags(sftp: Harness, tree: Path) -> None:
    """TRUNC empties, APPEND appends, EXCL refuses an existing name, no CREAT needs a file."""
    sftp.write_file(b"hello.txt", b"HI", FXF_WRITE | FXF_TRUNC)
    assert (tree / "hello.txt").read_bytes() == b"HI"
    f = sftp.wait(sftp.client.openFile(b"hello.txt", FXF_WRITE | FXF_APPEND, {}))
    sftp.wait(f.writeChunk(0, b"+more"))
    sftp.wait(f.close())
    assert (tree / "hello.txt").read_bytes() == b"HI+more"
    excl = FXF_WRITE | FXF_CREAT | FXF_EXCL
    assert sftp.code(sftp.client.openFile(b"hello.txt", excl, {})) == FX_FAILURE
    sftp.write_file(b"fresh", b"x", excl)
    assert (tree / "fresh").read_bytes() == b"x"
    assert sftp.code(sftp.client.openFile(b"absent", FXF_WRITE, {})) == FX_NO_SUCH_FILE


def test_exclusive_create_does_not_follow_a_dangling_link(sftp: Harness, tree: Path) -> None:
    """CREAT|EXCL on a dangling symlink fails, as open(2) does, and creates nothing."""
    os.symlink("target-missing", tree / "dangling")
    excl = FXF_WRITE | FXF_CREAT | FXF_EXCL
    assert sftp.code(sftp.client.openFile(b"dangling", excl, {})) == FX_FAILURE
    assert not (tree / "target-missing").exists()


def test_create_uses_requested_permissions(sftp: Harness, tree: Path) -> None:
    """Permissions given at creation become the file's mode (subject to umask)."""
    f = sftp.wait(sftp.client.openFile(b"p", FXF_WRITE | FXF_CREAT, {"permissions": 0o600}))
    sftp.wait(f.close())
    assert stat.S_IMODE(os.stat(tree / "p").st_mode) == 0o600


def test_read_only_handle_refuses_writes_and_directories_do_not_open(sftp: Harness) -> None:
    """Writing through a read-only handle fails; opening a directory as a file fails."""
    f = sftp.wait(sftp.client.openFile(b"hello.txt", FXF_READ, {}))
    assert isinstance(sftp.error(f.writeChunk(0, b"no")), SFTPError)
    sftp.wait(f.close())
    assert sftp.code(sftp.client.openFile(b"sub", FXF_READ, {})) == FX_FAILURE


def _fsetstat(sftp: Harness, f: ClientFile, attrs: dict[str, Any]) -> Deferred[Any]:
    # Conch's ClientFile.setAttrs sends FSTAT; send a real FSETSTAT.
    return sftp.raw(FXP_FSETSTAT, f.handle + sftp.client._packAttributes(attrs))


def test_fsetstat_truncates_chmods_and_sets_times(sftp: Harness, tree: Path) -> None:
    """FSETSTAT with size truncates; permissions and times apply to the open file."""
    f = sftp.wait(sftp.client.openFile(b"hello.txt", FXF_WRITE, {}))
    sftp.wait(_fsetstat(sftp, f, {"size": 5}))
    sftp.wait(_fsetstat(sftp, f, {"permissions": 0o640}))
    sftp.wait(_fsetstat(sftp, f, {"atime": 1_000_000, "mtime": 2_000_000}))
    attrs = sftp.wait(f.getAttrs())
    sftp.wait(f.close())
    assert (tree / "hello.txt").read_bytes() == b"hello"
    assert attrs["size"] == 5
    assert stat.S_IMODE(attrs["permissions"]) == 0o640
    assert (attrs["atime"], attrs["mtime"]) == (1_000_000, 2_000_000)


def test_setstat_on_a_path(sftp: Harness, tree: Path) -> None:
    """SETSTAT truncates, chmods and sets times by path."""
    sftp.wait(
        sftp.client.setAttrs(
            b"hello.txt", {"size": 3, "permissions": 0o604, "atime": 5, "mtime": 7}
        )
    )
    st = os.stat(tree / "hello.txt")
    assert (st.st_size, stat.S_IMODE(st.st_mode), int(st.st_mtime)) == (3, 0o604, 7)


def test_stat_follows_links_and_lstat_does_not(sftp: Harness, tree: Path) -> None:
    """STAT describes the target of a link, LSTAT the link; both report size and owner."""
    os.symlink("hello.txt", tree / "link")
    st = sftp.wait(sftp.client.getAttrs(b"link", 1))
    lst = sftp.wait(sftp.client.getAttrs(b"link", 0))
    assert stat.S_ISREG(st["permissions"]) and st["size"] == 12
    assert stat.S_ISLNK(lst["permissions"]) and lst["size"] == len("hello.txt")
    assert st["uid"] == os.getuid()
    assert sftp.code(sftp.client.getAttrs(b"missing")) == FX_NO_SUCH_FILE


def test_directory_listing_has_attrs_and_long_names(sftp: Harness, tree: Path) -> None:
    """READDIR returns every entry once, with lstat attrs and an `ls -l` style long name."""
    os.symlink("hello.txt", tree / "link")
    entries = {name: (long, attrs) for name, long, attrs in sftp.listdir(b"/tel_app_exports")}
    assert set(entries) == {b"hello.txt", b"sub", b"link"}
    long, attrs = entries[b"hello.txt"]
    assert attrs["size"] == 12
    assert long.startswith(b"-rw") and long.endswith(b" hello.txt")
    assert b" 12 " in long
    assert entries[b"sub"][0].startswith(b"d")
    assert entries[b"link"][0].startswith(b"l")
    assert sftp.code(sftp.client.openDirectory(b"hello.txt")) == FX_NO_SUCH_FILE


def test_large_directory_is_listed_in_several_replies(sftp: Harness, tree: Path) -> None:
    """A directory larger than one NAME packet comes back complete."""
    for i in range(600):
        (tree / "sub" / f"f{i:04}").write_bytes(b"")
    names = {n for n, _, _ in sftp.listdir(b"sub")}
    assert len(names) == 601 and b"f0599" in names


def test_remove_rename_mkdir_rmdir(sftp: Harness, tree: Path) -> None:
    """The namespace operations act on the export; RENAME does not overwrite."""
    sftp.wait(sftp.client.makeDirectory(b"d", {"permissions": 0o750}))
    assert stat.S_IMODE(os.stat(tree / "d").st_mode) == 0o750
    sftp.wait(sftp.client.renameFile(b"hello.txt", b"d/moved.txt"))
    assert (tree / "d" / "moved.txt").read_bytes() == b"hello world\n"
    assert sftp.code(sftp.client.renameFile(b"d/moved.txt", b"sub/inner.txt")) == FX_FAILURE
    assert sftp.code(sftp.client.removeDirectory(b"d")) == FX_FAILURE  # not empty
    sftp.wait(sftp.client.removeFile(b"d/moved.txt"))
    sftp.wait(sftp.client.removeDirectory(b"d"))
    assert not (tree / "d").exists()
    assert sftp.code(sftp.client.removeFile(b"d/moved.txt")) == FX_NO_SUCH_FILE


def test_remove_of_a_link_removes_the_link_only(sftp: Harness, tree: Path) -> None:
    """REMOVE on a symlink to the outside unlinks the link, never its target."""
    os.symlink(tree.parent / "outside" / "secret", tree / "abs-file")
    sftp.wait(sftp.client.removeFile(b"abs-file"))
    assert not os.path.lexists(tree / "abs-file")
    assert (tree.parent / "outside" / "secret").exists()


# -- extensions ------------------------------------------------------------------------------


def test_posix_rename_overwrites(sftp: Harness, tree: Path) -> None:
    """posix-rename@openssh.com replaces an existing target atomically."""
    body = NS(b"hello.txt") + NS(b"sub/inner.txt")
    sftp.wait(sftp.client.extendedRequest(b"posix-rename@openssh.com", body))
    assert (tree / "sub" / "inner.txt").read_bytes() == b"hello world\n"
    assert not (tree / "hello.txt").exists()


def test_statvfs_reports_the_export_filesystem(sftp: Harness, tree: Path) -> None:
    """statvfs@openssh.com answers eleven uint64s matching os.statvfs of the export."""
    reply = sftp.wait(sftp.client.extendedRequest(b"statvfs@openssh.com", NS(EXPORT)))
    fields = struct.unpack("!11Q", reply)
    st = os.statvfs(tree)
    assert fields[0] == st.f_bsize and fields[1] == st.f_frsize
    assert fields[2] == st.f_blocks and fields[10] == st.f_namemax
    assert fields[8] == st.f_fsid


def test_hardlink_and_fsync(sftp: Harness, tree: Path) -> None:
    """hardlink@openssh.com links two names to one inode; fsync@openssh.com succeeds."""
    body = NS(b"hello.txt") + NS(b"hard.txt")
    sftp.wait(sftp.client.extendedRequest(b"hardlink@openssh.com", body))
    assert os.stat(tree / "hard.txt").st_ino == os.stat(tree / "hello.txt").st_ino
    f = sftp.wait(sftp.client.openFile(b"hard.txt", FXF_WRITE, {}))
    sftp.wait(f.writeChunk(0, b"H"))
    sftp.wait(sftp.client.extendedRequest(b"fsync@openssh.com", f.handle))
    sftp.wait(f.close())
    assert (tree / "hello.txt").read_bytes() == b"Hello world\n"
    code = sftp.code(sftp.client.extendedRequest(b"fsync@openssh.com", NS(b"nope")))
    assert code == FX_FAILURE


def test_lsetstat_changes_a_symlink_not_its_target(sftp: Harness, tree: Path) -> None:
    """lsetstat@openssh.com sets a symlink's owner and times; its modes are EOPNOTSUPP."""
    os.symlink("hello.txt", tree / "link")
    before = os.stat(tree / "hello.txt")
    attrs = FileAttrs(uid=1234, gid=5678, atime=1_000_000_000, mtime=1_100_000_000)
    body = NS(b"link") + pack_attrs(attrs)
    sftp.wait(sftp.client.extendedRequest(b"lsetstat@openssh.com", body))
    link = os.lstat(tree / "link")
    assert (link.st_uid, link.st_gid, int(link.st_mtime)) == (1234, 5678, 1_100_000_000)
    after = os.stat(tree / "hello.txt")
    assert (after.st_uid, after.st_mtime) == (before.st_uid, before.st_mtime)
    body = NS(b"link") + pack_attrs(FileAttrs(permissions=0o600))
    # Conch's client raises FX_OP_UNSUPPORTED as NotImplementedError.
    err = sftp.error(sftp.client.extendedRequest(b"lsetstat@openssh.com", body))
    assert isinstance(err, NotImplementedError), err
    assert stat.S_IMODE(os.stat(tree / "hello.txt").st_mode) == stat.S_IMODE(before.st_mode)


def test_unknown_extension_is_unsupported(sftp: Harness) -> None:
    """An extension the agent does not know gets FX_OP_UNSUPPORTED."""
    err = sftp.error(sftp.client.extendedRequest(b"frobnicate@example.com", b""))
    assert isinstance(err, NotImplementedError)


# -- malformed input -------------------------------------------------------------------------


def test_truncated_and_padded_requests_get_bad_message(sftp: Harness) -> None:
    """A request with missing or extra bytes gets FX_BAD_MESSAGE and the session goes on."""
    assert sftp.code(sftp.raw(FXP_OPEN, NS(b"hello.txt"))) == FX_BAD_MESSAGE
    assert sftp.code(sftp.raw(FXP_OPEN, struct.pack("!L", 1000) + b"short")) == FX_BAD_MESSAGE
    f = sftp.wait(sftp.client.openFile(b"hello.txt", FXF_READ, {}))
    # Conch's own ClientFile.setAttrs sends FSTAT with attributes appended.
    assert sftp.code(f.setAttrs({"size": 0})) == FX_BAD_MESSAGE
    sftp.wait(f.close())
    assert sftp.read_file(b"hello.txt") == b"hello world\n"
    assert not sftp.client.lost


def test_unknown_packet_type_is_unsupported(sftp: Harness) -> None:
    """A packet type the server does not serve gets FX_OP_UNSUPPORTED, not a dead link."""
    # Conch's client turns FX_OP_UNSUPPORTED into NotImplementedError.
    assert isinstance(sftp.error(sftp.raw(99, b"whatever")), NotImplementedError)
    assert isinstance(sftp.error(sftp.raw(101, b"")), NotImplementedError)  # a reply type
    assert sftp.read_file(b"hello.txt") == b"hello world\n"


def test_unknown_handle_fails_cleanly(sftp: Harness) -> None:
    """Requests on a handle that was never opened (or is closed) fail with FX_FAILURE."""
    f = sftp.wait(sftp.client.openFile(b"hello.txt", FXF_READ, {}))
    sftp.wait(f.close())
    assert sftp.code(f.readChunk(0, 10)) == FX_FAILURE
    assert sftp.code(f.writeChunk(0, b"x")) == FX_FAILURE
    assert sftp.code(f.getAttrs()) == FX_FAILURE
    assert sftp.code(f.close()) == FX_FAILURE


def test_oversized_frame_drops_only_that_connection(sftp: Harness, tree: Path) -> None:
    """A frame longer than the agent will buffer ends that connection; another one works."""
    sftp.client.transport.write(struct.pack("!LB", 512 * 1024 * 1024, 3))
    sftp.pump.flush()
    assert sftp.client.lost
    other = Harness(tree)
    assert other.read_file(b"hello.txt") == b"hello world\n"


def test_request_without_an_id_drops_the_connection(sftp: Harness) -> None:
    """A frame too short to carry a request id cannot be answered, so the link is closed."""
    sftp.client.transport.write(struct.pack("!LB", 2, 3) + b"x")
    sftp.pump.flush()
    assert sftp.client.lost


# -- ordering, threads and flow control ------------------------------------------------------


class ManualRunner:
    """A BlockingCallRunner whose calls wait until the test runs them."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, f: Callable[[], _T], /) -> Deferred[_T]:
        d: Deferred[_T] = Deferred()
        self.queue.append((f, d))
        return d

    def run(self, index: int = 0) -> None:
        f, d = self.queue.pop(index)
        defer.maybeDeferred(f).chainDeferred(d)


def test_overlapping_read_waits_for_an_earlier_write(tree: Path) -> None:
    """A read of a range being written runs after the write; a disjoint read does not wait."""
    runner = ManualRunner()
    sftp = Harness(tree, runner)
    f = sftp.wait(sftp.client.openFile(b"hello.txt", FXF_READ | FXF_WRITE, {}))
    write = sftp.fire(f.writeChunk(0, b"HELLO"))
    overlapping = sftp.fire(f.readChunk(0, 5))
    disjoint = sftp.fire(f.readChunk(6, 5))
    assert len(runner.queue) == 2  # the write and the disjoint read
    runner.run(1)
    sftp.pump.flush()
    assert disjoint == [b"world"] and overlapping == []
    runner.run(0)
    sftp.pump.flush()
    assert write and not isinstance(write[0], Failure)
    runner.run(0)
    sftp.pump.flush()
    assert overlapping == [b"HELLO"]


def test_close_waits_for_pending_io(tree: Path) -> None:
    """CLOSE is answered only after earlier reads on the handle finished."""
    runner = ManualRunner()
    sftp = Harness(tree, runner)
    f = sftp.wait(sftp.client.openFile(b"hello.txt", FXF_READ, {}))
    read = sftp.fire(f.readChunk(0, 5))
    closed = sftp.fire(f.close())
    assert closed == []
    runner.run()
    sftp.pump.flush()
    assert read == [b"hello"] and len(closed) == 1


def test_too_many_requests_in_flight_stop_dispatch(tree: Path) -> None:
    """Past MAX_INFLIGHT pending I/O requests, further requests wait in the buffer."""
    runner = ManualRunner()
    sftp = Harness(tree, runner)
    f = sftp.wait(sftp.client.openFile(b"hello.txt", FXF_READ, {}))
    replies = [sftp.fire(f.readChunk(i % 12, 1)) for i in range(MAX_INFLIGHT + 5)]
    assert len(runner.queue) == MAX_INFLIGHT
    runner.run()
    sftp.pump.flush()
    assert len(runner.queue) == MAX_INFLIGHT
    while runner.queue:
        runner.run()
        sftp.pump.flush()
    assert all(len(r) == 1 and isinstance(r[0], bytes) for r in replies)


def test_full_transport_pauses_request_processing(sftp: Harness) -> None:
    """While the transport reports a full send buffer, requests wait; on resume they run."""
    sftp.server.pauseProducing()
    box = sftp.fire(sftp.client.getAttrs(b"hello.txt"))
    assert box == []
    sftp.server.resumeProducing()
    sftp.pump.flush()
    assert box and box[0]["size"] == 12


def test_disconnect_closes_files_after_their_io(tree: Path) -> None:
    """Losing the client closes its open files, but only once pending I/O is done."""
    runner = ManualRunner()
    sftp = Harness(tree, runner)
    f = sftp.wait(sftp.client.openFile(b"hello.txt", FXF_READ, {}))
    fd = next(iter(sftp.server.openFiles.values())).fd
    sftp.fire(f.readChunk(0, 5))
    sftp.client.transport.loseConnection()
    sftp.pump.flush()
    os.fstat(fd)  # still open: a read is pending on it
    runner.run()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_connections_are_logged_with_their_peer(tree: Path) -> None:
    """Opening and closing a connection each emit a structured log event naming the peer."""
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        sftp = Harness(tree)
        sftp.client.transport.loseConnection()
        sftp.pump.flush()
    finally:
        globalLogPublisher.removeObserver(observer)
    formats = [e.get("log_format", "") for e in events if "peer" in e]
    assert any("opened" in f for f in formats) and any("closed" in f for f in formats)


# -- the twistd app --------------------------------------------------------------------------


def test_options_require_an_existing_root(tmp_path: Path) -> None:
    """--root is required and must be a directory; --listen defaults to tcp:8022."""
    with pytest.raises(UsageError, match="required"):
        Options().parseOptions([])
    with pytest.raises(UsageError, match="not an existing directory"):
        Options().parseOptions(["--root", str(tmp_path / "missing")])
    options = Options()
    options.parseOptions(["--root", str(tmp_path)])
    assert options["listen"] == "tcp:8022"


def test_make_service_listens_and_owns_a_thread_pool(tmp_path: Path) -> None:
    """makeService listens on the endpoint given and starts/stops its pool with the app."""
    reactor = MemoryReactor()
    options = Options()
    options.parseOptions(["--root", str(tmp_path), "--listen", "tcp:9123"])
    app = makeService(options, reactor=reactor)
    app.startService()
    try:
        assert [port for port, *_ in reactor.tcpServers] == [9123]
        factory = reactor.tcpServers[0][1]
        assert isinstance(factory, AgentFactory)
        pools = [s.pool for s in app if isinstance(s, agent.ThreadPoolService)]
        assert pools and pools[0].started
    finally:
        app.stopService()
    assert not pools[0].started


# -- real sockets ----------------------------------------------------------------------------


class NetClient(Client):
    """A Conch client over TCP whose C{ready} fires on VERSION."""

    def __init__(self) -> None:
        super().__init__()
        self.ready: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        super().connectionMade()

    def gotServerVersion(self, serverVersion: int, extData: dict[bytes, bytes]) -> None:
        super().gotServerVersion(serverVersion, extData)
        self.ready.callback(None)


@pytest.fixture
def pool() -> Iterator[ThreadPool]:
    tp = ThreadPool(minthreads=0, maxthreads=4, name="test-agent-io")
    tp.start()
    yield tp
    tp.stop()


@pytest_twisted.async_yield_fixture
async def agent_port(tree: Path, pool: ThreadPool) -> Any:
    """The agent on a loopback port with a real thread pool; yields the port number."""
    from twisted.internet import reactor

    factory = AgentFactory(str(tree), threadpool_runner(cast(Any, reactor), pool))
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    yield port.getHost().port
    await port.stopListening()


async def connect(port: int) -> NetClient:
    from twisted.internet import reactor

    client = NetClient()
    ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await endpoints.connectProtocol(ep, client)
    await client.ready
    return client


async def pipelined_read(client: NetClient, path: bytes, chunk: int, depth: int) -> bytes:
    """Read a whole file with C{depth} reads of C{chunk} bytes outstanding."""
    f = await client.openFile(path, FXF_READ, {})
    size = (await f.getAttrs())["size"]
    parts: dict[int, bytes] = {}
    offsets = iter(range(0, size, chunk))

    async def worker() -> None:
        for offset in offsets:
            parts[offset] = await f.readChunk(offset, chunk)

    await defer.gatherResults(
        [Deferred.fromCoroutine(worker()) for _ in range(depth)], consumeErrors=True
    )
    await f.close()
    return b"".join(parts[o] for o in sorted(parts))


@pytest_twisted.ensureDeferred
async def test_tcp_agent_serves_a_multi_mib_file_intact(agent_port: int, tree: Path) -> None:
    """Over real TCP, pipelined writes then reads move 8 MiB intact through the thread pool."""
    data = os.urandom(8 * 1024 * 1024)
    client = await connect(agent_port)
    f = await client.openFile(b"big", FXF_WRITE | FXF_CREAT | FXF_TRUNC, {})
    step = 200 * 1024
    await defer.gatherResults(
        [f.writeChunk(o, data[o : o + step]) for o in range(0, len(data), step)],
        consumeErrors=True,
    )
    await f.close()
    assert hashlib.sha256((tree / "big").read_bytes()).digest() == hashlib.sha256(data).digest()
    back = await pipelined_read(client, b"/tel_app_exports/big", 255 * 1024, 16)
    assert back == data
    client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_large_read_does_not_freeze_other_clients(agent_port: int, tree: Path) -> None:
    """While one client streams a large file, another client's small requests keep answering."""
    (tree / "large").write_bytes(os.urandom(48 * 1024 * 1024))
    big = await connect(agent_port)
    small = await connect(agent_port)
    transfer = Deferred.fromCoroutine(pipelined_read(big, b"large", 255 * 1024, 16))
    answered_during_transfer = 0
    slowest = 0.0
    while not transfer.called:
        start = time.perf_counter()
        attrs = await small.getAttrs(b"hello.txt")
        slowest = max(slowest, time.perf_counter() - start)
        assert attrs["size"] == 12
        if not transfer.called:
            answered_during_transfer += 1
    assert len(await transfer) == 48 * 1024 * 1024
    assert answered_during_transfer >= 3, answered_during_transfer
    assert slowest < 0.5, slowest
    big.transport.loseConnection()
    small.transport.loseConnection()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_twistd_sftp_agent_serves_the_export(tree: Path, tmp_path: Path) -> None:
    """`twistd -n sftp-agent --root D --listen tcp:PORT` answers raw SFTP on that port."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    port = _free_port()
    log = open(tmp_path / "agent.log", "wb")
    proc = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "sftp-agent", "--root", str(tree)]
        + ["--listen", f"tcp:{port}:interface=127.0.0.1"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "agent.log").read_text()
                assert time.monotonic() < deadline, "sftp-agent did not listen"
                time.sleep(0.1)
        with sock:
            sock.sendall(struct.pack("!LBL", 5, 1, 3))  # INIT, version 3
            body = struct.pack("!L", 7) + NS(b"/tel_app_exports/sub")
            sock.sendall(struct.pack("!LB", 1 + len(body), 17) + body)  # STAT
            reply = b""
            while len(reply) < 4 or len(reply) < 4 + struct.unpack("!L", reply[:4])[0]:
                reply += sock.recv(65536)
            version_len = struct.unpack("!L", reply[:4])[0]
            assert reply[4] == 2 and b"statvfs@openssh.com" in reply[: 4 + version_len]
            rest = reply[4 + version_len :]
            while len(rest) < 9:
                rest += sock.recv(65536)
            assert rest[4] == 105 and rest[5:9] == struct.pack("!L", 7)  # ATTRS for id 7
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()
    assert b"SFTP connection opened" in (tmp_path / "agent.log").read_bytes()
