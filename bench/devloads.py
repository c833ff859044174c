"""
What a developer feels on a mounted volume: telemount against sshfs (Telepresence's flags) on
OpenSSH's sftp-server, on a generated tree of a project's shape.

    python bench/devloads.py [--runs 5] [--sources 3000] [--reader-mib 256] [--smoke]

The tree: SOURCES small source files in nested packages, a few large files, and a ``.git`` made
by real ``git`` (init, add, commit) before it is served. Each workload runs on both mounts,
alternating which goes first, and the row is sshfs time / telemount time (above 1: telemount
faster):

* git status cold (page cache dropped, the program itself then loaded again) and warm
  (right after a run);
* ``grep -r`` of a word found in one file in ten, cold;
* ``find -newer`` a reference file, cold;
* untar: ``tar x`` of a tarball of UNTAR small files into the mount (create and write);
* re-read: 200 reads of an unchanged 64 KiB file within the attribute timeout (after one
  read: telemount serves it from the page cache);
* four readers: four processes each reading its own READER MiB file at once, cold (the time
  until the last is done), and the helper's peak RSS meanwhile.

Needs root, fuse3, sshfs, socat, git and openssh-sftp-server. ``--smoke`` runs every workload
tiny, once (no verdicts).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import drop_caches, median, spread  # noqa: E402
from sftp_mounts import (  # noqa: E402
    CLIENTS,
    peak_rss_kib,
    reset_peak_rss,
    run_checked,
    sftp_server,
    sshfs,
    telemount,
)

#: Each workload, and telemount's target against sshfs (issue 19).
TARGETS = {
    "git status cold": 2.0,
    "git status warm": 2.0,
    "grep -r": 2.0,
    "find -newer": 2.0,
    "untar": 1.5,
    "re-read": 5.0,
    "four readers": 1.5,
}
WORD = "telenet_needle"
GIT = ["git", "-c", "safe.directory=*", "-c", "core.untrackedCache=false"]


@dataclass
class Sizes:
    sources: int = 3000
    large: int = 4
    large_mib: int = 8
    untar: int = 5000
    reader_mib: int = 256
    rereads: int = 200

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(sources=60, large=1, large_mib=1, untar=50, reader_mib=2, rereads=10)


@dataclass
class DevResult:
    """Seconds per workload and client; the helpers' peak RSS (KiB) under the four readers."""

    times: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    rss_kib: dict[str, list[int]] = field(default_factory=dict)

    def ratio(self, case: str) -> float:
        t = self.times[case]
        return median(t["sshfs"]) / median(t["telemount"])


def make_project(root: str, sizes: Sizes) -> None:
    """A project-shaped tree with a real git repository, committed."""
    for i in range(sizes.sources):
        d = os.path.join(root, "src", f"pkg{i % 17:02d}", f"mod{i % 5}")
        os.makedirs(d, exist_ok=True)
        body = f"def f{i}(x):\n    return x + {i}\n" * (3 + i % 40)
        if i % 10 == 0:
            body += f"# {WORD}\n"
        with open(os.path.join(d, f"file{i:05d}.py"), "w") as f:
            f.write(body)
    os.makedirs(os.path.join(root, "assets"), exist_ok=True)
    block = os.urandom(1 << 20)
    for i in range(sizes.large):
        with open(os.path.join(root, "assets", f"blob{i}.bin"), "wb") as f:
            for _ in range(sizes.large_mib):
                f.write(block)
    with open(os.path.join(root, "assets", "page.html"), "wb") as f:
        f.write(os.urandom(64 * 1024))
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com"}
    env.update(GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.com")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "tree"]):
        subprocess.run([*GIT, "-C", root, *args], check=True, env=env, capture_output=True)
    # A checkout of yesterday: its files were last changed a day ago (the mounts trust what
    # has not changed lately for longer, as NFS does), then a few are edited today.
    yesterday = time.time() - 86400
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            os.utime(os.path.join(directory, name), (yesterday, yesterday), follow_symlinks=False)
    for client in CLIENTS:  # each mount's own index: git keeps the inode numbers it saw
        shutil.copy(
            os.path.join(root, ".git", "index"), os.path.join(root, ".git", f"index-{client}")
        )
    # The reference for find -newer, older than the files touched after it.
    reference = os.path.join(root, ".reference")
    with open(reference, "w"):
        pass
    os.utime(reference, (time.time() - 3600, time.time() - 3600))
    for i in range(0, sizes.sources, 50):
        path = os.path.join(root, "src", f"pkg{i % 17:02d}", f"mod{i % 5}", f"file{i:05d}.py")
        os.utime(path)
    readers = os.path.join(root, "readers")
    os.makedirs(readers)
    for r in range(4):
        with open(os.path.join(readers, f"r{r}"), "wb") as f:
            for _ in range(sizes.reader_mib):
                f.write(block)


def make_tarball(path: str, files: int) -> None:
    with tarfile.open(path, "w") as tar:
        for i in range(files):
            data = (f"// file {i}\n" * (4 + i % 60)).encode()
            info = tarfile.TarInfo(f"node_modules/p{i % 50:02d}/f{i:05d}.js")
            info.size = len(data)
            info.mtime = int(time.time())
            tar.addfile(info, _Bytes(data))


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.at + n
        chunk, self.at = self.data[self.at : end], min(end, len(self.data))
        return chunk


def parallel_reads(paths: list[str]) -> Callable[[], object]:
    def run() -> None:
        procs = [
            subprocess.Popen(
                ["dd", f"if={p}", "of=/dev/null", "bs=1M"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for p in paths
        ]
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"dd exited {proc.returncode}: {err.decode()}")

    return run


def workloads(
    path: str, tarball: str, sizes: Sizes, tag: str, client: str
) -> dict[str, Callable[[], object]]:
    """Each workload on ``client``'s mount at ``path`` (``tag``: a fresh untar target's name)."""
    page = os.path.join(path, "assets", "page.html")
    # A developer works through one mount: its index holds that mount's inode numbers.
    index = {**os.environ, "GIT_INDEX_FILE": os.path.join(path, ".git", f"index-{client}")}

    def git_status() -> None:
        run_checked([*GIT, "-C", path, "status", "--porcelain"], env=index)

    def grep() -> None:
        # 0: found; grep -r over the sources, as an editor's search does.
        run_checked(["grep", "-rlq", "--include=*.py", WORD, os.path.join(path, "src")])

    def find_newer() -> None:
        run_checked(
            [
                "find",
                path,
                "-path",
                f"{path}/.git",
                "-prune",
                "-o",
                "-newer",
                os.path.join(path, ".reference"),
                "-print",
            ]
        )

    def untar() -> None:
        target = os.path.join(path, f"untar-{tag}")
        os.mkdir(target)
        run_checked(["tar", "xf", tarball, "-C", target])

    def reread() -> None:
        for _ in range(sizes.rereads):
            with open(page, "rb") as f:
                f.read()

    readers = [os.path.join(path, "readers", f"r{r}") for r in range(4)]
    return {
        "git status cold": git_status,
        "git status warm": git_status,
        "grep -r": grep,
        "find -newer": find_newer,
        "untar": untar,
        "re-read": reread,
        "four readers": parallel_reads(readers),
    }


#: Each cold case's program, run once on an empty local directory after the caches are
#: dropped: "cold" is the mount's caches, not the program's own binary and libraries (a
#: developer's git and find are in memory), whose loading would add the same 10-16 ms to both.
TOOLS = {
    "git status cold": lambda empty: [*GIT, "-C", empty, "status"],
    "grep -r": lambda empty: ["grep", "-rlq", WORD, empty],
    "find -newer": lambda empty: ["find", empty, "-newer", empty],
    "four readers": lambda empty: ["dd", "if=/dev/null", "of=/dev/null", "bs=1M"],
    "untar": lambda empty: ["tar", "--version"],
}


def _prepare(case: str, action: Callable[[], object], empty: str) -> None:
    """What a case needs before its timed run: cold caches, or one run to warm them."""
    if case in TOOLS:
        drop_caches()
        subprocess.run(TOOLS[case](empty), capture_output=True)
    elif case in ("git status warm", "re-read"):
        action()


def run(runs: int, sizes: Sizes) -> DevResult:
    for tool in ("sshfs", "socat", "fusermount3", "git"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (scripts/dev setup installs it)")
    result = DevResult()
    work = tempfile.mkdtemp(prefix="tntest-devloads-")
    try:
        export = os.path.join(work, "exports", "project")
        make_project(export, sizes)
        tarball = os.path.join(work, "modules.tar")
        make_tarball(tarball, sizes.untar)
        empty = os.path.join(work, "empty")
        os.mkdir(empty)
        with contextlib.ExitStack() as stack:
            port, remote = stack.enter_context(sftp_server("openssh", export))
            mounts = {
                "telemount": stack.enter_context(telemount(port, remote, work)),
                "sshfs": stack.enter_context(sshfs(port, remote, work)),
            }
            for case in TARGETS:
                for i in range(runs):
                    for client in CLIENTS if i % 2 == 0 else CLIENTS[::-1]:
                        path, pid = mounts[client]
                        action = workloads(path, tarball, sizes, f"{client}{i}", client)[case]
                        _prepare(case, action, empty)
                        if case == "four readers":
                            reset_peak_rss(pid)
                        started = time.perf_counter()
                        action()
                        seconds = time.perf_counter() - started
                        result.times.setdefault(case, {}).setdefault(client, []).append(seconds)
                        if case == "four readers":
                            result.rss_kib.setdefault(client, []).append(peak_rss_kib(pid))
    finally:
        for leftover in ("tm", "sshfs"):
            subprocess.run(["fusermount3", "-u", os.path.join(work, leftover)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return result


def report(result: DevResult, sizes: Sizes) -> list[str]:
    lines = []
    for case, times in result.times.items():
        tm, ss = times["telemount"], times["sshfs"]
        extra = ""
        if case == "four readers":
            total = 4 * sizes.reader_mib
            extra = f"  ({total / median(tm):.0f} vs {total / median(ss):.0f} MiB/s aggregate)"
        lines.append(
            f"devloads {case:15} telemount {spread(tm)}s  sshfs {spread(ss)}s  "
            f"ratio {result.ratio(case):5.2f}x{extra}"
        )
    if result.rss_kib:
        lines.append(
            f"devloads peak RSS under four readers: telemount "
            f"{max(result.rss_kib['telemount']) / 1024:.1f} MiB, "
            f"sshfs {max(result.rss_kib['sshfs']) / 1024:.1f} MiB"
        )
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sources", type=int, default=3000)
    parser.add_argument("--reader-mib", type=int, default=256)


def sizes_of(args: argparse.Namespace, smoke: bool) -> Sizes:
    if smoke:
        return Sizes.smoke()
    return Sizes(sources=args.sources, reader_mib=args.reader_mib)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run")
    add_arguments(parser)
    args = parser.parse_args(argv)
    sizes = sizes_of(args, args.smoke)
    try:
        result = run(1 if args.smoke else args.runs, sizes)
    except RuntimeError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    print("\n".join(report(result, sizes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
