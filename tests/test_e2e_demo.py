"""End to end: ``telenet demo`` runs the telemount story and cleans up after itself."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from .conftest import fuse_mounts

pytestmark = pytest.mark.e2e


def test_demo_runs_the_story(docker_ready: None, fuse_ready: None) -> None:
    """The demo lists and reads the agent's files, writes one back, and leaves nothing."""
    name = f"tntest{uuid.uuid4().hex[:8]}"
    telenet = os.path.join(os.path.dirname(sys.executable), "telenet")
    result = subprocess.run([telenet, "demo", "--plugin-name", name], capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "token" in out and "namespace" in out
    assert "demo-token-123" in out
    assert "greeting: 'hello from a container'" in out
    assert "demo finished" in out
    volumes = subprocess.run(["docker", "volume", "ls", "-q"], capture_output=True, text=True)
    assert "telenet-demo-vol" not in volumes.stdout.split()
    assert not os.path.exists(f"/run/docker/plugins/{name}.sock")
    assert fuse_mounts("telenet-demo-") == []
