"""
Telemount's FUSE client against sshfs, side by side, on the same SFTP server and files.

    python bench/sftp_mounts.py [--runs 5] [--size-mib 256] [--servers openssh,agent] [--smoke]

For each SFTP server (OpenSSH's sftp-server behind socat, and telenet's sftp-agent) it mounts
the same export twice at once, with telemount's helper (``python -m telenet.fuse.helper``, exactly
what the plug-in runs) and with sshfs using Telepresence's flags, then times, alternating the
two clients run by run and with the page cache dropped before every run:

* seq read:  ``dd if=big of=/dev/null bs=1M`` of a SIZE MiB file;
* seq write: ``dd if=/dev/zero of=out bs=1M count=SIZE conv=fsync``;
* metadata:  readdir of 2 000 files, a stat of each, then 500 small-file reads, in a Python
  child (``python -S``); the child's own start-up, measured alike, is subtracted;
* tar:       ``tar c`` of a tree of 5 000 small files, piped to ``cat >/dev/null`` (GNU tar
  writing to /dev/null itself would skip reading the files);

and the helper's peak RSS during the read. It prints medians, min-max and the ratio
sshfs time / telemount time (above 1 means telemount is faster). Needs root, fuse3, sshfs,
socat and openssh-sftp-server. ``--smoke`` is a quick correctness pass (tiny sizes, one run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import drop_caches, free_port, median, process, spread, wait_port  # noqa: E402

SFTP_SERVER = "/usr/lib/openssh/sftp-server"
# Telepresence's sshfs flags (directport is added per mount).
SSHFS_FLAGS = ["-C", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5"]
SSHFS_FLAGS += ["-o", "follow_symlinks", "-o", "allow_root"]
CLIENTS = ("telemount", "sshfs")
CASES = ("seq read", "seq write", "metadata", "tar")
#: The block size socat relays OpenSSH's sftp-server with (the server's stand-in transport).
SOCAT_BLOCK = 256 * 1024


@contextlib.contextmanager
def sftp_server(kind: str, export: str) -> Iterator[tuple[int, str]]:
    """Serve ``export``; yields the port and the remote path of the export's content."""
    port = free_port()
    if kind == "openssh":
        # socat copies in 8 KiB blocks by default: about 600 MiB/s here, a ceiling that both
        # clients met by turns (the seq read swing). 256 KiB blocks lift it out of the way.
        args = ["socat", "-b", str(SOCAT_BLOCK)]
        args.append(f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,nodelay")
        args.append(f"EXEC:{SFTP_SERVER}")
        remote = export
    else:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        args = [twistd, "-n", "--pidfile=", "sftp-agent", "--root", os.path.dirname(export)]
        args += ["--listen", f"tcp:{port}:interface=127.0.0.1"]
        remote = "/tel_app_exports/" + os.path.basename(export)
    with process(args):
        wait_port(port)
        yield port, remote


def control_request(path: str, request: dict[str, object]) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(15)
        s.connect(path)
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return dict(json.loads(data))


@contextlib.contextmanager
def telemount_helper(port: int, work: str) -> Iterator[tuple[str, str, int]]:
    """The plug-in's helper with no volume yet: its mount point, control socket and pid."""
    mountpoint = os.path.join(work, "tm")
    control = os.path.join(work, "tm.sock")
    args = [sys.executable, "-m", "telenet.fuse.helper", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--mountpoint", mountpoint, "--control", control]
    args += ["--log-file", os.path.join(work, "tm.log")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    report = json.loads(proc.stdout.readline() or b'{"error": "helper exited"}')
    if not report.get("ready"):
        raise RuntimeError(f"telemount helper: {report}")
    try:
        yield mountpoint, control, int(report["pid"])
    finally:
        with contextlib.suppress(OSError):
            control_request(control, {"op": "shutdown"})
        proc.wait(15)


@contextlib.contextmanager
def telemount(port: int, remote: str, work: str) -> Iterator[tuple[str, int]]:
    """Mount with the plug-in's helper; yields the volume path and the helper's pid."""
    with telemount_helper(port, work) as (mountpoint, control, pid):
        request = {"op": "add", "name": "vol", "path": remote, "ro": False}
        answer = control_request(control, request)
        if not answer.get("ok"):
            raise RuntimeError(f"telemount add: {answer}")
        yield os.path.join(mountpoint, "vol"), pid


@contextlib.contextmanager
def sshfs(port: int, remote: str, work: str) -> Iterator[tuple[str, int]]:
    mountpoint = os.path.join(work, "sshfs")
    os.makedirs(mountpoint, exist_ok=True)
    args = ["sshfs", "-f", *SSHFS_FLAGS, "-o", f"directport={port}", f"127.0.0.1:{remote}"]
    proc = subprocess.Popen(
        [*args, mountpoint], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 15
    while not os.path.ismount(mountpoint):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("sshfs did not mount")
        time.sleep(0.05)
    try:
        yield mountpoint, proc.pid
    finally:
        subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True)
        proc.wait(15)


def make_fixture(export: str, size_mib: int, files: int, tree_files: int) -> None:
    os.makedirs(export, exist_ok=True)
    with open(os.path.join(export, "big"), "wb") as f:
        block = os.urandom(1024 * 1024)
        for _ in range(size_mib):
            f.write(block)
    meta = os.path.join(export, "meta")
    os.makedirs(meta)
    for i in range(files):
        with open(os.path.join(meta, f"f{i:05d}"), "wb") as f:
            f.write(b"x" * (100 + i % 900))
    tree = os.path.join(export, "tree")
    for i in range(tree_files):
        d = os.path.join(tree, f"d{i // 100:03d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
            f.write(b"y" * (200 + i % 1800))


def peak_rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def reset_peak_rss(pid: int) -> None:
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0).
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def run_checked(args: list[str], env: dict[str, str] | None = None) -> None:
    """Run a benchmark command; a failure says what the command said."""
    result = subprocess.run(args, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])}... exited {result.returncode}: {result.stderr}")


def timed(action: Callable[[], object]) -> float:
    drop_caches()
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def seq_read(path: str) -> Callable[[], object]:
    args = ["dd", f"if={path}/big", "of=/dev/null", "bs=1M"]
    return lambda: run_checked(args)


def seq_write(path: str, size_mib: int) -> Callable[[], object]:
    args = ["dd", "if=/dev/zero", f"of={path}/out", "bs=1M", f"count={size_mib}", "conv=fsync"]

    def run() -> None:
        run_checked(args)
        os.unlink(f"{path}/out")

    return run


METADATA = """
import os, sys
d = sys.argv[1]
names = sorted(os.listdir(d))
for n in names:
    os.stat(d + "/" + n)
for n in names[: int(sys.argv[2])]:
    with open(d + "/" + n, "rb") as f:
        f.read()
"""


def metadata(path: str, reads: int) -> Callable[[], object]:
    # In a child process: a FUSE mount must not be touched from a process that serves it,
    # and a fresh process has no Python-level caching of its own. -S: no site start-up.
    args = [sys.executable, "-S", "-c", METADATA, path + "/meta", str(reads)]
    return lambda: run_checked(args)


def child_startup(runs: int) -> float:
    """Median seconds the metadata child takes with nothing to do (subtracted, both sides)."""
    times = []
    for _ in range(max(runs, 5)):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-S", "-c", "import os, sys"], check=True)
        times.append(time.perf_counter() - started)
    return median(times)


def tar_tree(path: str) -> Callable[[], object]:
    # Through a pipe: GNU tar writing to /dev/null itself skips reading the files' contents.
    command = f"tar cf - -C {shlex.quote(path)} tree | cat >/dev/null"
    return lambda: run_checked(["sh", "-ec", command])


@dataclass
class MountResult:
    """Times per case and client, and the helpers' peak RSS (KiB) during the reads."""

    times: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    rss_kib: dict[str, list[int]] = field(default_factory=dict)

    def ratio(self, case: str) -> float:
        """sshfs time / telemount time (medians)."""
        t = self.times[case]
        return median(t["sshfs"]) / median(t["telemount"])


def bench_server(
    server: str, export: str, work: str, runs: int, size_mib: int, reads: int
) -> MountResult:
    result = MountResult()
    startup = child_startup(runs)
    with contextlib.ExitStack() as stack:
        port, remote = stack.enter_context(sftp_server(server, export))
        mounts = {
            "telemount": stack.enter_context(telemount(port, remote, work)),
            "sshfs": stack.enter_context(sshfs(port, remote, work)),
        }
        for case in CASES:
            for i in range(runs):
                for client in CLIENTS if i % 2 == 0 else CLIENTS[::-1]:
                    path, pid = mounts[client]
                    action = {
                        "seq read": seq_read,
                        "seq write": lambda p: seq_write(p, size_mib),
                        "metadata": lambda p: metadata(p, reads),
                        "tar": tar_tree,
                    }[case](path)
                    if case == "seq read":
                        reset_peak_rss(pid)
                    seconds = timed(action)
                    if case == "metadata":
                        seconds = max(seconds - startup, 1e-6)
                    result.times.setdefault(case, {}).setdefault(client, []).append(seconds)
                    if case == "seq read":
                        result.rss_kib.setdefault(client, []).append(peak_rss_kib(pid))
    return result


def run(
    servers: list[str], runs: int, size_mib: int, files: int, reads: int, tree_files: int
) -> dict[str, MountResult]:
    for tool in ("sshfs", "socat", "fusermount3"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (scripts/dev setup installs it)")
    work = tempfile.mkdtemp(prefix="tntest-bench-")
    try:
        export = os.path.join(work, "exports", "bench")
        make_fixture(export, size_mib, files, tree_files)
        return {
            server: bench_server(server, export, work, runs, size_mib, reads) for server in servers
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(results: dict[str, MountResult], size_mib: int) -> list[str]:
    lines = []
    for server, result in results.items():
        for case, times in result.times.items():
            tm, ss = times["telemount"], times["sshfs"]
            extra = ""
            if case in ("seq read", "seq write"):
                extra = f"  ({size_mib / median(tm):.0f} vs {size_mib / median(ss):.0f} MiB/s)"
            lines.append(
                f"{server:8} {case:10} telemount {spread(tm)}s  sshfs {spread(ss)}s  "
                f"ratio {result.ratio(case):5.2f}x{extra}"
            )
        lines.append(
            f"{server:8} peak RSS during read: telemount "
            f"{max(result.rss_kib['telemount']) / 1024:.1f} MiB, "
            f"sshfs {max(result.rss_kib['sshfs']) / 1024:.1f} MiB"
        )
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--reads", type=int, default=500)
    parser.add_argument("--tree-files", type=int, default=5000)
    parser.add_argument("--servers", default="openssh,agent")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs, args.size_mib, args.files, args.reads, args.tree_files = 1, 4, 50, 20, 100
    try:
        results = run(
            args.servers.split(","),
            args.runs,
            args.size_mib,
            args.files,
            args.reads,
            args.tree_files,
        )
    except RuntimeError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    print(
        f"telemount vs sshfs: median of {args.runs} runs, {args.size_mib} MiB files; "
        "ratio = sshfs time / telemount time (>1: telemount faster)"
    )
    print("\n".join(report(results, args.size_mib)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
