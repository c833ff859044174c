"""
CPU seconds the mount clients spend on the metadata and tar workloads of ``sftp_mounts.py``.

    python bench/helper_cpu.py [--runs 5] [--servers openssh,agent] [--cases metadata,tar]
                               [--profile DIR] [--count]

Wall time on a shared machine moves by 2x between runs; the CPU a client process spends on
the same work moves much less, so this is the number to watch while tuning the helper. For
each server and case it runs the workload alternately on telemount and sshfs (page cache
dropped before each run, as ``sftp_mounts.py`` does) and prints the median wall time (for
metadata less the child's start-up), the
median CPU seconds (user + system, all threads) of each client process and of the SFTP
server, and the client's CPU per file.

``--baseline REV`` adds a third client, ``base``: the helper as of git revision REV (its
``telenet`` package from ``git archive``), so a change is compared with what it changes in
one run, under the same load. ``--count`` runs the helper through a wrapper that counts FUSE
operations and SFTP requests
by type (printed per run); ``--profile DIR`` writes a cProfile of the helper per case there
(both distort the CPU figures; use them to see where, not how much).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import drop_caches, median  # noqa: E402
from sftp_mounts import (  # noqa: E402
    METADATA,
    child_startup,
    control_request,
    make_fixture,
    sftp_server,
    sshfs,
)

FILES = {"metadata": 2000, "list": 2000, "tar": 5000}
# HELPER_WRAPPER: another wrapper script (with more instruments) in place of _helper_wrap.py.
WRAPPER = os.environ.get("HELPER_WRAPPER") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "_helper_wrap.py"
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_pids(port: int) -> list[int]:
    """The processes serving SFTP on ``port``: socat's forks and sftp-server, or the agent."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        text = b" ".join(cmd)
        if (
            b"sftp-server" in text
            or (f"tcp:{port}".encode() in text)
            or (f"TCP-LISTEN:{port}".encode() in text)
        ):
            found.append(int(entry))
    return found


@contextlib.contextmanager
def telemount(
    port: int, remote: str, work: str, wrap: list[str], name: str = "tm", code: str | None = None
) -> Iterator[tuple[str, int, str | None]]:
    mountpoint = os.path.join(work, name)
    control = os.path.join(work, f"{name}.sock")
    args = [sys.executable, *wrap, "--host", "127.0.0.1", "--port", str(port)]
    args += ["--mountpoint", mountpoint, "--control", control]
    args += ["--log-file", os.path.join(work, f"{name}.log")]
    env = dict(os.environ)
    if code is not None:  # another copy of the telenet package (``--baseline``)
        env["PYTHONPATH"] = code
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=code or os.getcwd()
    )
    assert proc.stdout is not None
    report = json.loads(proc.stdout.readline() or b'{"error": "helper exited"}')
    if not report.get("ready"):
        raise RuntimeError(f"telemount helper: {report}")
    try:
        answer = control_request(control, {"op": "add", "name": "vol", "path": remote})
        if not answer.get("ok"):
            raise RuntimeError(f"telemount add: {answer}")
        yield os.path.join(mountpoint, "vol"), int(report["pid"]), control
    finally:
        with contextlib.suppress(OSError):
            control_request(control, {"op": "shutdown"})
        proc.wait(30)


def workload(case: str, path: str) -> list[str]:
    if case == "metadata":
        return [sys.executable, "-S", "-c", METADATA, path + "/meta", "500"]
    if case == "list":  # the metadata case without its reads
        return [sys.executable, "-S", "-c", METADATA, path + "/meta", "0"]
    return ["sh", "-ec", f"tar cf - -C {path} tree | cat >/dev/null"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--servers", default="openssh,agent")
    parser.add_argument("--cases", default="metadata,tar")
    parser.add_argument("--clients", default="telemount,sshfs")
    parser.add_argument("--profile", help="write a cProfile of the helper per case here")
    parser.add_argument("--count", action="store_true", help="count FUSE and SFTP requests")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="add a client 'base': the helper as of git revision REV (A/B in one run)",
    )
    args = parser.parse_args(argv)
    clients = args.clients.split(",")
    work = tempfile.mkdtemp(prefix="tntest-bench-cpu-")
    if args.baseline:
        base = os.path.join(work, "base")
        os.makedirs(base)
        top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        archive = subprocess.run(
            ["git", "-C", top, "archive", args.baseline, "telenet"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", base], input=archive, check=True)
        args.baseline_code = base
        clients.insert(0, "base")
    try:
        export = os.path.join(work, "exports", "bench")
        make_fixture(export, 1, FILES["metadata"], FILES["tar"])
        for server in args.servers.split(","):
            for case in args.cases.split(","):
                run_case(server, case, export, work, args, clients)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run_case(
    server: str,
    case: str,
    export: str,
    work: str,
    args: argparse.Namespace,
    clients: list[str],
) -> None:
    wrap = ["-m", "telenet.fuse.helper"]
    if args.profile or args.count:
        wrap = [WRAPPER]
        if args.profile:
            os.makedirs(args.profile, exist_ok=True)
            wrap += ["--profile", os.path.join(args.profile, f"{server}-{case}.prof")]
        if args.count:
            wrap += ["--count"]
        wrap += ["--"]
    wall: dict[str, list[float]] = {c: [] for c in clients}
    cpu: dict[str, list[float]] = {c: [] for c in clients}
    srv: dict[str, list[float]] = {c: [] for c in clients}
    startup = child_startup(5) if case in ("metadata", "list") else 0.0
    with contextlib.ExitStack() as stack:
        port, remote = stack.enter_context(sftp_server(server, export))
        mounts: dict[str, tuple[str, int, str | None]] = {}
        if "telemount" in clients:
            mounts["telemount"] = stack.enter_context(telemount(port, remote, work, wrap))
        if "base" in clients:
            base = telemount(port, remote, work, wrap, "base", args.baseline_code)
            mounts["base"] = stack.enter_context(base)
        if "sshfs" in clients:
            path, pid = stack.enter_context(sshfs(port, remote, work))
            mounts["sshfs"] = (path, pid, None)
        time.sleep(0.2)
        for i in range(args.runs):
            for client in clients[i % len(clients) :] + clients[: i % len(clients)]:
                path, pid, control = mounts[client]
                command = workload(case, path)
                drop_caches()
                servers = server_pids(port)
                before = cpu_seconds(pid)
                sbefore = sum(_safe_cpu(p) for p in servers)
                started = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                wall[client].append(time.perf_counter() - started - startup)
                cpu[client].append(cpu_seconds(pid) - before)
                srv[client].append(sum(_safe_cpu(p) for p in server_pids(port)) - sbefore)
                if args.count and control is not None:
                    counts = control_request(control, {"op": "bench-counts"})
                    print(f"  {server} {case} counts: {counts}", file=sys.stderr)
    n = FILES[case]
    for client in clients:
        print(
            f"{server:8} {case:9} {client:9} wall {median(wall[client]):.3f}s "
            f"[{min(wall[client]):.3f}-{max(wall[client]):.3f}]  "
            f"cpu {median(cpu[client]):.3f}s [{min(cpu[client]):.3f}-{max(cpu[client]):.3f}] "
            f"= {median(cpu[client]) / n * 1e6:.0f} us/file  "
            f"server cpu {median(srv[client]):.3f}s"
        )
    if "sshfs" in clients and "telemount" in clients:
        ratio = median(wall["sshfs"]) / median(wall["telemount"])
        print(f"{server:8} {case:9} wall ratio sshfs/telemount {ratio:.2f}x", flush=True)
    if "base" in clients:
        ratio = median(cpu["base"]) / median(cpu["telemount"])
        print(f"{server:8} {case:9} cpu ratio base/telemount {ratio:.2f}x", flush=True)


def _safe_cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


if __name__ == "__main__":
    sys.exit(main())
