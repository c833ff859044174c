"""The benchmark suite still runs (correctness only: CI asserts no timings)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from .conftest import require

pytestmark = pytest.mark.e2e
BENCH = os.path.join(os.path.dirname(__file__), "..", "bench", "run.py")


def test_bench_suite_smoke(fuse_ready: None) -> None:
    """bench/run.py --smoke runs every part and prints a row for every target."""
    require(shutil.which("sshfs") is not None, "sshfs is not installed")
    require(shutil.which("docker") is not None, "the docker CLI is not installed")
    result = subprocess.run(
        [sys.executable, BENCH, "--smoke"], capture_output=True, text=True, timeout=600
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
    assert "3/3" in table, "every concurrent join joined"
    details = result.stderr
    assert "peak RSS during read" in details and "round trip us" in details, details
