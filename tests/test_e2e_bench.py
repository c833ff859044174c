"""The benchmark suite still runs (correctness only: CI asserts no timings)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import require

pytestmark = pytest.mark.e2e
BENCH = os.path.join(os.path.dirname(__file__), "..", "bench", "run.py")


def test_bench_suite_smoke(fuse_ready: None, tmp_path: Path) -> None:
    """bench/run.py --smoke runs every part, prints a row for every target, draws the plots."""
    require(shutil.which("sshfs") is not None, "sshfs is not installed")
    require(shutil.which("docker") is not None, "the docker CLI is not installed")
    require(shutil.which("git") is not None, "git is not installed")
    require(importlib.util.find_spec("matplotlib") is not None, "matplotlib (dev extra) is missing")
    plots = tmp_path / "plots"
    result = subprocess.run(
        [sys.executable, BENCH, "--smoke", "--plots", str(plots)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = result.stdout
    for server in ("openssh", "agent"):
        for case in ("seq read", "seq write", "metadata", "tar"):
            assert f"telemount/sshfs {case} ({server})" in table, table
        assert f"telemount peak RSS in read ({server})" in table, table
    for row in (
        "agent/sftp-server 256 MiB read",
        "proxy/socat throughput",
        "proxy/socat added latency, one CPU",
        "proxy/socat added latency, anywhere",
        "teleroute/bridge throughput",
        "teleroute join p50 - bridge p50",
        "concurrent joins on teleroute",
    ):
        assert row in table, table
    for case in (
        "git status cold",
        "git status warm",
        "grep -r",
        "find -newer",
        "untar",
        "re-read",
        "four readers",
    ):
        assert f"telemount/sshfs {case} (openssh)" in table, table
    for row in (
        "telemount peak RSS, four readers",
        "listing time per entry, largest/smallest",
        "concurrent joins teleroute/bridge, worst",
    ):
        assert row in table, table
    assert "3/3" in table, "every concurrent join joined"
    for name in ("listing", "volumes", "joins", "readers"):
        png = plots / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    details = result.stderr
    assert "peak RSS during read" in details and "round trip us" in details, details
    assert "join curve teleroute" in details and "curves   volumes" in details, details
