"""
The cost curves as PNG plots (matplotlib, in the dev extra), for docs/performance.md:

* ``listing.png``: time per entry of a cold directory listing against its size;
* ``volumes.png``: time to add a volume and RSS per volume against the volumes of one helper;
* ``joins.png``: time until all of N concurrent containers joined, teleroute and bridge;
* ``readers.png``: aggregate throughput against parallel readers.

``write`` is given what ``bench/curves.py`` and ``bench/teleroute.py`` measured; a curve that
was not measured (e.g. the joins without dockerd) is left out.
"""

from __future__ import annotations

import os
from typing import Any


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display
    import matplotlib.pyplot as plt

    return plt


def write(directory: str, curves: Any, joins: dict[str, dict[int, float]] | None) -> list[str]:
    """The PNG files written into ``directory`` (made if missing)."""
    plt = _figure()
    os.makedirs(directory, exist_ok=True)
    written = []

    def save(fig: Any, name: str) -> None:
        path = os.path.join(directory, name)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    def ticks(ax: Any, xs: list[int], log_x: bool) -> None:
        if log_x:
            ax.set_xscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()

    def lines(ax: Any, series: dict[str, dict[int, float]], log_x: bool = False) -> None:
        for label, points in series.items():
            xs = sorted(points)
            ax.plot(xs, [points[x] for x in xs], marker="o", label=label)
        ticks(ax, sorted({x for points in series.values() for x in points}), log_x)
        ax.grid(True, alpha=0.3)
        ax.legend()

    if curves is not None and curves.listing_us:
        fig, ax = plt.subplots(figsize=(6, 4))
        lines(ax, curves.listing_us, log_x=True)
        ax.set(title="Cold directory listing", xlabel="entries", ylabel="µs per entry")
        ax.set_ylim(bottom=0)
        save(fig, "listing.png")
    if curves is not None and curves.volume_add_ms:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = sorted(curves.volume_add_ms)
        ax.plot(xs, [curves.volume_add_ms[x] for x in xs], marker="o", label="ms per add")
        ticks(ax, xs, log_x=True)
        ax.set(title="Volumes of one telemount helper", xlabel="volumes", ylabel="ms per add")
        ax.set_ylim(bottom=0)
        right = ax.twinx()
        right.plot(
            xs,
            [curves.volume_rss_kib[x] / 1024 for x in xs],
            marker="s",
            color="tab:orange",
            label="RSS per volume",
        )
        right.set(ylabel="MiB of RSS per volume")
        right.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="lower left")
        save(fig, "volumes.png")
    if joins:
        fig, ax = plt.subplots(figsize=(6, 4))
        lines(ax, joins)
        ax.set(title="Concurrent joins", xlabel="containers at once", ylabel="s until all joined")
        ax.set_ylim(bottom=0)
        save(fig, "joins.png")
    if curves is not None and curves.readers_mib_s:
        fig, ax = plt.subplots(figsize=(6, 4))
        lines(ax, curves.readers_mib_s)
        ax.set(title="Parallel cold readers", xlabel="readers", ylabel="aggregate MiB/s")
        ax.set_ylim(bottom=0)
        save(fig, "readers.png")
    return written
