"""
How the mounts' cost grows with the work (issue 19, cost curves), on OpenSSH's sftp-server:

    python bench/curves.py [--runs 3] [--smoke] [--plots DIR]

* listing: a cold ``ls -f`` of a directory of 1k, 10k and 100k entries, telemount and sshfs;
  the figure is the time per entry (flat is good; the target: within 2x across the range);
* volumes: 1, 10 and 100 volumes of one helper (one server): the time each ``add`` takes
  until the volume answers a ``stat``, and the helper's RSS per volume;
* readers: 1, 2, 4 and 8 processes each reading its own file at once, cold; the aggregate
  MiB/s, telemount and sshfs.

The joins curve (1, 10, 50 concurrent joins, teleroute against a plain bridge) needs dockerd
and is ``bench/teleroute.py``'s. ``bench/plots.py`` draws them all. ``--smoke`` makes every
curve tiny (no verdicts).
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
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import drop_caches, median  # noqa: E402
from sftp_mounts import (  # noqa: E402
    CLIENTS,
    control_request,
    sftp_server,
    sshfs,
    telemount,
    telemount_helper,
)


@dataclass
class Points:
    listing: tuple[int, ...] = (1000, 10000, 100000)
    volumes: tuple[int, ...] = (1, 10, 100)
    readers: tuple[int, ...] = (1, 2, 4, 8)
    reader_mib: int = 64

    @classmethod
    def smoke(cls) -> Points:
        return cls(listing=(100, 300, 1000), volumes=(1, 2, 4), readers=(1, 2), reader_mib=1)


@dataclass
class Curves:
    """Each curve's points: x -> the median of its runs."""

    listing_us: dict[str, dict[int, float]] = field(default_factory=dict)
    volume_add_ms: dict[int, float] = field(default_factory=dict)
    volume_rss_kib: dict[int, float] = field(default_factory=dict)
    readers_mib_s: dict[str, dict[int, float]] = field(default_factory=dict)

    def listing_spread(self, client: str = "telemount") -> float:
        """The largest time per entry over the smallest, across the range (target <= 2)."""
        values = list(self.listing_us[client].values())
        return max(values) / min(values)

    def as_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def make_tree(export: str, points: Points) -> None:
    for n in points.listing:
        d = os.path.join(export, f"list{n}")
        os.makedirs(d)
        for i in range(n):
            os.close(os.open(os.path.join(d, f"entry{i:06d}"), os.O_CREAT | os.O_WRONLY, 0o644))
    block = os.urandom(1 << 20)
    readers = os.path.join(export, "readers")
    os.makedirs(readers)
    for r in range(max(points.readers)):
        with open(os.path.join(readers, f"r{r}"), "wb") as f:
            for _ in range(points.reader_mib):
                f.write(block)
    for v in range(max(points.volumes)):
        os.makedirs(os.path.join(export, "vols", f"v{v:03d}"))


def listing(path: str, n: int) -> float:
    drop_caches()
    # ls itself loaded again (10 ms after the drop, the same for every size): the curve is the
    # mount's cost per entry, not the program's start.
    subprocess.run(["ls", "-f", "/"], capture_output=True)
    started = time.perf_counter()
    out = subprocess.run(["ls", "-f", os.path.join(path, f"list{n}")], capture_output=True)
    seconds = time.perf_counter() - started
    if out.returncode != 0 or out.stdout.count(b"\n") < n:
        raise RuntimeError(f"ls -f of {n} entries: {out.stderr.decode()[:200]}")
    return seconds


def readers(path: str, count: int, mib: int) -> float:
    """Aggregate MiB/s of ``count`` cold readers at once."""
    drop_caches()
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["dd", f"if={path}/readers/r{r}", "of=/dev/null", "bs=1M"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for r in range(count)
    ]
    if any(p.wait() != 0 for p in procs):
        raise RuntimeError(f"a reader of {count} failed")
    return count * mib / (time.perf_counter() - started)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def volumes(port: int, remote: str, work: str, count: int) -> tuple[float, float]:
    """(ms per add until the volume answers, RSS KiB per volume) for ``count`` volumes."""
    os.makedirs(os.path.join(work, "volcurve"), exist_ok=True)
    with telemount_helper(port, os.path.join(work, "volcurve")) as (mountpoint, control, pid):
        before = _rss_kib(pid)
        started = time.perf_counter()
        for v in range(count):
            request = {"op": "add", "name": f"v{v:03d}", "path": f"{remote}/vols/v{v:03d}"}
            answer = control_request(control, {**request, "ro": False})
            if not answer.get("ok"):
                raise RuntimeError(f"telemount add: {answer}")
            os.stat(os.path.join(mountpoint, f"v{v:03d}"))
        added = time.perf_counter() - started
        # The first volume's RSS is the helper's own start: count what the others add too.
        per_volume = max(_rss_kib(pid) - before, 0) / count
        return added * 1000 / count, per_volume


def run(runs: int, points: Points) -> Curves:
    for tool in ("sshfs", "socat", "fusermount3"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (scripts/dev setup installs it)")
    curves = Curves()
    work = tempfile.mkdtemp(prefix="tntest-curves-")
    try:
        export = os.path.join(work, "exports", "curves")
        make_tree(export, points)
        with contextlib.ExitStack() as stack:
            port, remote = stack.enter_context(sftp_server("openssh", export))
            mounts = {
                "telemount": stack.enter_context(telemount(port, remote, work)),
                "sshfs": stack.enter_context(sshfs(port, remote, work)),
            }
            for n in points.listing:
                times: dict[str, list[float]] = {}
                for i in range(runs):
                    for client in CLIENTS if i % 2 == 0 else CLIENTS[::-1]:
                        times.setdefault(client, []).append(listing(mounts[client][0], n))
                for client, t in times.items():
                    curves.listing_us.setdefault(client, {})[n] = median(t) * 1e6 / n
            for count in points.readers:
                rates: dict[str, list[float]] = {}
                for i in range(runs):
                    for client in CLIENTS if i % 2 == 0 else CLIENTS[::-1]:
                        rate = readers(mounts[client][0], count, points.reader_mib)
                        rates.setdefault(client, []).append(rate)
                for client, r in rates.items():
                    curves.readers_mib_s.setdefault(client, {})[count] = median(r)
            for count in points.volumes:
                measured = [volumes(port, remote, work, count) for _ in range(runs)]
                curves.volume_add_ms[count] = median([m[0] for m in measured])
                curves.volume_rss_kib[count] = median([m[1] for m in measured])
    finally:
        for leftover in ("tm", "sshfs", "volcurve/tm"):
            # Unmounted already unless a run failed half-way.
            subprocess.run(["fusermount3", "-u", os.path.join(work, leftover)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return curves


def report(curves: Curves) -> list[str]:
    lines = []
    for client, points in curves.listing_us.items():
        shown = ", ".join(f"{n}: {us:.1f}" for n, us in points.items())
        lines.append(f"curves   listing us/entry {client:9} {shown}")
    for client, points in curves.readers_mib_s.items():
        shown = ", ".join(f"{n}: {rate:.0f}" for n, rate in points.items())
        lines.append(f"curves   readers MiB/s    {client:9} {shown}")
    shown = ", ".join(
        f"{n}: {curves.volume_add_ms[n]:.0f} ms, {curves.volume_rss_kib[n]:.0f} KiB"
        for n in curves.volume_add_ms
    )
    lines.append(f"curves   volumes (add, RSS per volume) {shown}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny curves, one run")
    parser.add_argument("--plots", metavar="DIR", help="write the curves as PNG plots")
    args = parser.parse_args(argv)
    try:
        curves = run(1 if args.smoke else args.runs, Points.smoke() if args.smoke else Points())
    except RuntimeError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    print("\n".join(report(curves)))
    if args.plots:
        import plots

        for path in plots.write(args.plots, curves, None):
            print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
