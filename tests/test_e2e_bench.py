"""The benchmark suite still runs (correctness only: CI asserts no timings)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from .conftest import require

pytestmark = pytest.mark.e2e
BENCH = os.path.join(os.path.dirname(__file__), "..", "bench", "sftp_mounts.py")


def test_sftp_mount_bench_smoke(fuse_ready: None) -> None:
    """bench/sftp_mounts.py --smoke mounts both clients on both servers and prints ratios."""
    require(shutil.which("sshfs") is not None, "sshfs is not installed")
    result = subprocess.run([sys.executable, BENCH, "--smoke"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if " ratio " in line]
    cases = {(line.split()[0], " ".join(line.split()[1:3])) for line in rows}
    for server in ("openssh", "agent"):
        for case in ("seq read", "seq write", "metadata telemount", "tar telemount"):
            assert (server, case) in cases, result.stdout
    assert "peak RSS during read" in result.stdout
