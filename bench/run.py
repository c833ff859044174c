"""
telenet's benchmark suite: one command, one table of ratios against the targets of issues 5
and 19.

    python bench/run.py [--runs 5] [--only mounts,proxy,teleroute,devloads,curves] [--smoke]
                        [--plots DIR]

Parts (each also runs alone; see its docstring for the method):

* ``sftp_mounts.py``: telemount vs sshfs on OpenSSH's sftp-server and on sftp-agent (seq
  read, seq write, metadata, tar, peak RSS), and the agent against sftp-server (telemount's
  seq read on each);
* ``proxy.py``: the SFTP bridge vs socat (throughput, added latency);
* ``teleroute.py``: the teleroute data path vs a plain bridge, join latency, concurrent joins,
  and the joins cost curve (1, 10, 50 at once, against a plain bridge);
* ``devloads.py``: developer workloads (git status, grep -r, find -newer, untar, re-read, four
  readers) on a project-shaped tree, telemount vs sshfs on OpenSSH's sftp-server;
* ``curves.py``: cost curves (directory listing size, volumes per helper, parallel readers).

``--plots DIR`` writes the curves as PNG plots (``plots.py``, matplotlib).

Details go to stderr as each part finishes; the table goes to stdout. These machines are
noisy: each part alternates what it compares run by run, and only ratios from one run mean
anything. ``--smoke`` checks that everything runs (tiny sizes, one run; no verdicts). Exit
status 0 unless a part could not run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import curves  # noqa: E402
import devloads  # noqa: E402
import proxy  # noqa: E402
import sftp_mounts  # noqa: E402
import teleroute  # noqa: E402
from common import median  # noqa: E402

Row = tuple[str, str, str, bool]  # what, measured, target, met


def ratio_row(what: str, value: float, target: float, higher: bool = True) -> Row:
    met = value >= target if higher else value <= target
    return what, f"{value:.2f}x", f"{'>=' if higher else '<='} {target:g}x", met


def mounts_rows(results: dict[str, sftp_mounts.MountResult]) -> list[Row]:
    rows = []
    targets = {"seq read": 1.2, "seq write": 1.0, "metadata": 1.0, "tar": 1.0}
    # Issue 19 raised the streaming targets on OpenSSH's sftp-server, the realistic server.
    raised = {"seq read": 2.0, "seq write": 1.3}
    for server, result in results.items():
        for case, target in targets.items():
            if server == "openssh":
                target = raised.get(case, target)
            rows.append(ratio_row(f"telemount/sshfs {case} ({server})", result.ratio(case), target))
        peak = max(result.rss_kib["telemount"]) / 1024
        rows.append(
            (f"telemount peak RSS in read ({server})", f"{peak:.1f} MiB", "<= 64 MiB", peak <= 64)
        )
    if "openssh" in results and "agent" in results:
        on_openssh = median(results["openssh"].times["seq read"]["telemount"])
        on_agent = median(results["agent"].times["seq read"]["telemount"])
        rows.append(ratio_row("agent/sftp-server 256 MiB read", on_openssh / on_agent, 0.8))
    return rows


def proxy_rows(result: proxy.ProxyResult) -> list[Row]:
    s = {name: median(v) for name, v in result.seconds.items()}
    return [
        ratio_row("proxy/socat throughput", s["socat"] / s["proxy"], 0.8),
        ratio_row("proxy/socat added latency, one CPU", result.added_ratio(True), 2.0, False),
        ratio_row("proxy/socat added latency, anywhere", result.added_ratio(False), 2.0, False),
    ]


def devloads_rows(result: devloads.DevResult) -> list[Row]:
    rows = [
        ratio_row(f"telemount/sshfs {case} (openssh)", result.ratio(case), target)
        for case, target in devloads.TARGETS.items()
    ]
    peak = max(result.rss_kib["telemount"]) / 1024
    rows.append(("telemount peak RSS, four readers", f"{peak:.1f} MiB", "<= 64 MiB", peak <= 64))
    return rows


def curves_rows(result: curves.Curves) -> list[Row]:
    spread = result.listing_spread()
    return [ratio_row("listing time per entry, largest/smallest", spread, 2.0, False)]


def teleroute_rows(result: teleroute.TelerouteResult) -> list[Row]:
    added = result.join_added_ms()
    rows: list[Row] = []
    if result.join_curve:
        worst = result.join_curve_ratio()
        rows.append(ratio_row("concurrent joins teleroute/bridge, worst", worst, 1.2, False))
    return rows + [
        ratio_row("teleroute/bridge throughput", result.throughput_ratio(), 0.9),
        ("teleroute join p50 - bridge p50", f"{added:+.0f} ms", "<= +50 ms", added <= 50),
        (
            "concurrent joins on teleroute",
            f"{result.concurrent_ok}/{result.concurrent}",
            f"{result.concurrent}/{result.concurrent}",
            result.concurrent_ok == result.concurrent,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="mounts,proxy,teleroute,devloads,curves")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run, no verdicts")
    parser.add_argument("--plots", metavar="DIR", help="write the cost curves as PNG plots")
    sftp_mounts.add_arguments(parser)
    devloads.add_arguments(parser)
    args = parser.parse_args(argv)
    parts = args.only.split(",")
    runs = 1 if args.smoke else args.runs
    size = 4 if args.smoke else args.size_mib

    def log(lines: list[str]) -> None:
        print("\n".join(lines), file=sys.stderr, flush=True)

    jobs: dict[str, Callable[[], list[Row]]] = {}
    measured: dict[str, Any] = {}
    if "mounts" in parts:

        def mounts() -> list[Row]:
            files, reads, tree = (
                (50, 20, 100) if args.smoke else (args.files, args.reads, args.tree_files)
            )
            results = sftp_mounts.run(args.servers.split(","), runs, size, files, reads, tree)
            log(sftp_mounts.report(results, size))
            return mounts_rows(results)

        jobs["mounts"] = mounts
    if "proxy" in parts:

        def bridge() -> list[Row]:
            mib, pings = (8, 50) if args.smoke else (512, 2000)
            result = proxy.run(runs, mib, pings)
            log(proxy.report(result, mib))
            return proxy_rows(result)

        jobs["proxy"] = bridge
    if "teleroute" in parts:

        def route() -> list[Row]:
            mib, joins, parallel = (8, 2, 3) if args.smoke else (2048, 20, 50)
            curve = (1, 2) if args.smoke else (1, 10, 50)
            transfers = runs if args.smoke else max(runs, teleroute.TRANSFERS)
            result = teleroute.run(transfers, mib, joins, parallel, join_curve=curve)
            log(teleroute.report(result, mib))
            measured["joins"] = result.join_curve
            return teleroute_rows(result)

        jobs["teleroute"] = route
    if "devloads" in parts:

        def developer() -> list[Row]:
            sizes = devloads.sizes_of(args, args.smoke)
            result = devloads.run(runs, sizes)
            log(devloads.report(result, sizes))
            return devloads_rows(result)

        jobs["devloads"] = developer
    if "curves" in parts:

        def cost() -> list[Row]:
            points = curves.Points.smoke() if args.smoke else curves.Points()
            result = curves.run(1 if args.smoke else min(runs, 3), points)
            log(curves.report(result))
            measured["curves"] = result
            return curves_rows(result)

        jobs["curves"] = cost
    rows: list[Row] = []
    failed = []
    for name, job in jobs.items():
        try:
            rows += job()
        except Exception as e:
            failed.append(name)
            print(f"bench: {name} could not run: {e}", file=sys.stderr)
    if args.plots:
        try:
            import plots

            for path in plots.write(args.plots, measured.get("curves"), measured.get("joins")):
                print(f"bench: plot {path}", file=sys.stderr)
        except Exception as e:
            failed.append("plots")
            print(f"bench: plots could not be written: {e}", file=sys.stderr)
    print(
        f"telenet bench: median of {runs} runs each{' (smoke: no verdicts)' if args.smoke else ''}"
    )
    width = max((len(r[0]) for r in rows), default=10)
    for what, measured, target, met in rows:
        verdict = "" if args.smoke else ("ok" if met else "MISSED")
        print(f"{what:{width}}  {measured:>10}  target {target:<10} {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
