"""
What the CLI's quick commands import (issue 19: a fast CLI): ``telenet --help`` only argparse and
the CLI's entry point; ``status`` and ``docker-run`` neither Twisted nor docker-py. Modules, not
time: each run is a fresh interpreter, whose ``sys.modules`` is the answer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from twisted.application.internet import backoffPolicy

from telenet.cli.workload import PROBE_BACKOFF

ROOT = Path(__file__).resolve().parent.parent

#: Never on the quick paths: the reactor, the apps' frameworks, docker-py and its HTTP stack.
HEAVY = (
    "twisted",
    "grpc",
    "google.protobuf",
    "docker",
    "requests",
    "urllib3",
    "telenet.teleroute",
    "telenet.netplugin",
    "telenet.volumes",
    "telenet.fuse",
    "telenet.sftp",
    "telenet.daemon",
)


def modules_after(code: str) -> list[str]:
    """The modules a fresh interpreter holds after ``code`` (which may exit)."""
    script = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))\n" + code
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.stderr.strip(), proc
    return list(json.loads(proc.stderr.strip().splitlines()[-1]))


def test_help_imports_only_the_entry_point() -> None:
    """``telenet --help``: of telenet, the entry point and the argument tables of compose and
    of doctor/gather-logs/loglevel; no YAML, no attrs, no Twisted, no gRPC, no docker-py."""
    modules = modules_after("from telenet.cli.main import main\nmain(['--help'])\n")
    assert "argparse" in modules
    ours = [m for m in modules if m == "telenet" or m.startswith("telenet.")]
    assert ours == [
        "telenet",
        "telenet.cli",
        "telenet.cli.compose",
        "telenet.cli.compose.arguments",
        "telenet.cli.diagnoseargs",
        "telenet.cli.main",
    ]
    others = ("yaml", "attr", "attrs", "zope", "http", "ssl") + HEAVY
    assert [m for m in modules if m.split(".")[0] in others or m.startswith(others)] == []


def test_status_and_docker_run_modules_import_no_twisted_nor_docker_py() -> None:
    """What ``status`` and ``docker-run`` import talks to Docker without docker-py."""
    modules = modules_after(
        "import telenet.cli.main, telenet.cli.config, telenet.cli.connector\n"
        "import telenet.cli.runner, telenet.cli.dockerhttp, telenet.cli.status\n"
    )
    assert "telenet.cli.runner" in modules
    assert [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)] == []


def test_probe_backoff_is_twisteds() -> None:
    """Written out to spare the import, the agent probe's delays are still Twisted's policy."""
    twisted = backoffPolicy(initialDelay=0.25, maxDelay=2.0, factor=1.6, jitter=lambda: 0)
    for failures in (0, 1, 2, 3, 4, 5, 6, 10, 1000):
        assert PROBE_BACKOFF(failures) == twisted(failures)
