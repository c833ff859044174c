"""
Telemount's FUSE client against sshfs, side by side, on the same SFTP server and files.

    .venv/bin/python bench/sftp_mounts.py [--runs 5] [--size-mib 256] [--servers openssh,agent]
                                          [--smoke]

For each SFTP server (OpenSSH's sftp-server behind socat, and telenet's sftp-agent) it mounts
the same export twice, with telemount's helper (``python -m telenet.sftpfs``, exactly what the
plug-in runs) and with sshfs using Telepresence's flags, then times, with the page cache
dropped before every run:

* seq read:  ``dd if=big of=/dev/null bs=1M`` of a SIZE MiB file;
* seq write: ``dd if=/dev/zero of=out bs=1M count=SIZE conv=fsync``;
* metadata:  readdir of 2 000 files, a stat of each, then 500 small-file reads;
* tar:       ``tar c`` of a tree of 5 000 small files to /dev/null;

and the helper's peak RSS during the read. It prints medians, min–max and the ratio
sshfs time / telemount time (above 1 means telemount is faster). These machines are noisy:
compare ratios from one run, not absolute times across runs. Needs root, fuse3, sshfs, socat
and openssh-sftp-server. ``--smoke`` is a quick correctness pass (tiny sizes, one run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

SFTP_SERVER = "/usr/lib/openssh/sftp-server"
SSHFS_FLAGS = ["-C", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5",
               "-o", "follow_symlinks", "-o", "allow_root"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


@contextlib.contextmanager
def process(args: list[str], **kw: object) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            **kw)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def sftp_server(kind: str, export: str) -> Iterator[tuple[int, str]]:
    """Serve ``export``; yields the port and the remote path of the export's content."""
    port = free_port()
    if kind == "openssh":
        args = ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,nodelay",
                f"EXEC:{SFTP_SERVER}"]
        remote = export
    else:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        args = [twistd, "-n", "--pidfile=", "sftp-agent", "--root", os.path.dirname(export),
                "--listen", f"tcp:{port}:interface=127.0.0.1"]
        remote = "/tel_app_exports/" + os.path.basename(export)
    with process(args):
        wait_port(port)
        yield port, remote


@contextlib.contextmanager
def telemount(port: int, remote: str, work: str) -> Iterator[tuple[str, int]]:
    """Mount with the plug-in's helper; yields the volume path and the helper's pid."""
    mountpoint = os.path.join(work, "tm")
    control = os.path.join(work, "tm.sock")
    args = [sys.executable, "-m", "telenet.sftpfs", "--host", "127.0.0.1", "--port", str(port),
            "--mountpoint", mountpoint, "--control", control,
            "--log-file", os.path.join(work, "tm.log")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    report = json.loads(proc.stdout.readline() or b'{"error": "helper exited"}')
    if not report.get("ready"):
        raise RuntimeError(f"telemount helper: {report}")
    try:
        answer = control_request(control, {"op": "add", "name": "vol", "path": remote,
                                           "ro": False})
        if not answer.get("ok"):
            raise RuntimeError(f"telemount add: {answer}")
        yield os.path.join(mountpoint, "vol"), int(report["pid"])
    finally:
        with contextlib.suppress(OSError):
            control_request(control, {"op": "shutdown"})
        proc.wait(15)


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
def sshfs(port: int, remote: str, work: str) -> Iterator[tuple[str, int]]:
    mountpoint = os.path.join(work, "sshfs")
    os.makedirs(mountpoint, exist_ok=True)
    proc = subprocess.Popen(["sshfs", "-f", *SSHFS_FLAGS, "-o", f"directport={port}",
                             f"127.0.0.1:{remote}", mountpoint],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def timed(action: Callable[[], object]) -> float:
    drop_caches()
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def seq_read(path: str) -> Callable[[], object]:
    return lambda: subprocess.run(["dd", f"if={path}/big", "of=/dev/null", "bs=1M"],
                                  check=True, capture_output=True)


def seq_write(path: str, size_mib: int) -> Callable[[], object]:
    def run() -> None:
        subprocess.run(["dd", "if=/dev/zero", f"of={path}/out", "bs=1M", f"count={size_mib}",
                        "conv=fsync"], check=True, capture_output=True)
        os.unlink(f"{path}/out")
    return run


def metadata(path: str, reads: int) -> Callable[[], object]:
    # In a child process: a FUSE mount must not be touched from a process that serves it,
    # and a fresh process has no Python-level caching of its own.
    code = f"""
import os
names = sorted(os.listdir({path + '/meta'!r}))
for n in names:
    os.stat({path + '/meta/'!r} + n)
for n in names[:{reads}]:
    with open({path + '/meta/'!r} + n, 'rb') as f:
        f.read()
"""
    return lambda: subprocess.run([sys.executable, "-c", code], check=True)


def tar_tree(path: str) -> Callable[[], object]:
    # Through a pipe: GNU tar writing to /dev/null itself skips reading the files' contents.
    command = f"tar cf - -C {shlex.quote(path)} tree | cat >/dev/null"
    return lambda: subprocess.run(["sh", "-ec", command], check=True)


@dataclass
class Result:
    times: dict[str, list[float]] = field(default_factory=dict)
    rss_kib: list[int] = field(default_factory=list)


def bench_mount(path: str, pid: int, runs: int, size_mib: int, reads: int) -> Result:
    result = Result()
    cases = {"seq read": seq_read(path), "seq write": seq_write(path, size_mib),
             "metadata": metadata(path, reads), "tar": tar_tree(path)}
    for name, action in cases.items():
        times = result.times.setdefault(name, [])
        for _ in range(runs):
            if name == "seq read":
                reset_peak_rss(pid)
            times.append(timed(action))
            if name == "seq read":
                result.rss_kib.append(peak_rss_kib(pid))
    return result


def report(server: str, tm: Result, ss: Result, size_mib: int) -> list[str]:
    lines = []
    for case, tm_times in tm.times.items():
        ss_times = ss.times[case]
        tm_med, ss_med = statistics.median(tm_times), statistics.median(ss_times)
        extra = ""
        if case in ("seq read", "seq write"):
            extra = f"  ({size_mib / tm_med:7.1f} vs {size_mib / ss_med:7.1f} MiB/s)"
        lines.append(
            f"{server:8} {case:10} telemount {tm_med:7.3f}s [{min(tm_times):.3f}–"
            f"{max(tm_times):.3f}]  sshfs {ss_med:7.3f}s [{min(ss_times):.3f}–"
            f"{max(ss_times):.3f}]  ratio {ss_med / tm_med:5.2f}x{extra}"
        )
    lines.append(f"{server:8} peak RSS during read: telemount "
                 f"{max(tm.rss_kib) / 1024:.1f} MiB, sshfs {max(ss.rss_kib) / 1024:.1f} MiB")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--reads", type=int, default=500)
    parser.add_argument("--tree-files", type=int, default=5000)
    parser.add_argument("--servers", default="openssh,agent")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run")
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs, args.size_mib, args.files, args.reads, args.tree_files = 1, 4, 50, 20, 100
    for tool in ("sshfs", "socat", "fusermount3"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not installed (scripts/dev setup installs it)",
                  file=sys.stderr)
            return 2
    work = tempfile.mkdtemp(prefix="tntest-bench-")
    lines: list[str] = []
    try:
        export = os.path.join(work, "exports", "bench")
        make_fixture(export, args.size_mib, args.files, args.tree_files)
        for server in args.servers.split(","):
            with sftp_server(server, export) as (port, remote):
                with telemount(port, remote, work) as (path, pid):
                    tm = bench_mount(path, pid, args.runs, args.size_mib, args.reads)
                with sshfs(port, remote, work) as (path, pid):
                    ss = bench_mount(path, pid, args.runs, args.size_mib, args.reads)
            lines += report(server, tm, ss, args.size_mib)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"telemount vs sshfs: median of {args.runs} runs, {args.size_mib} MiB files; "
          "ratio = sshfs time / telemount time (>1: telemount faster)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
