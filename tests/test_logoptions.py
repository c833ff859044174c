"""--log-level and --log-format for every twistd app (telenet.core.logoptions)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from twisted.logger import Logger, LogLevel
from twisted.python import usage
from twisted.python.reflect import namedAny

import telenet.agent
import telenet.daemon
import telenet.mountplugin
import telenet.routeplugin
from telenet.core import logoptions

APPS = [telenet.daemon, telenet.routeplugin, telenet.mountplugin, telenet.agent]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> logoptions.LogSettings:
    fresh = logoptions.LogSettings()
    monkeypatch.setattr(logoptions, "settings", fresh)
    return fresh


def _args(app: ModuleType, tmp_path: Path) -> list[str]:
    return ["--root", str(tmp_path)] if app is telenet.agent else []


def _parse(app: ModuleType, tmp_path: Path, extra: list[str], parent: Any = None) -> Any:
    opts = app.Options()
    if parent is not None:
        opts.parent = parent
    opts.parseOptions(_args(app, tmp_path) + extra)
    return opts


@pytest.mark.parametrize("app", APPS, ids=lambda m: m.__name__)
def test_every_app_takes_level_and_format(app: ModuleType, tmp_path: Path) -> None:
    opts = _parse(app, tmp_path, ["--log-level", "DEBUG", "--log-format", "json"])
    assert opts["log-level"] is LogLevel.debug
    assert opts["log-format"] == "json"
    assert logoptions.settings.level is LogLevel.debug
    assert logoptions.settings.format == "json"


@pytest.mark.parametrize("app", APPS, ids=lambda m: m.__name__)
def test_defaults_are_info_and_text(app: ModuleType, tmp_path: Path) -> None:
    opts = _parse(app, tmp_path, [])
    assert (opts["log-level"], opts["log-format"]) == (LogLevel.info, "text")


@pytest.mark.parametrize("app", APPS, ids=lambda m: m.__name__)
@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--log-level", "loud", "--log-level 'loud' is not one of debug, info, warn"),
        ("--log-format", "xml", "--log-format 'xml' is not one of text, json"),
    ],
)
def test_bad_values_are_usage_errors(
    app: ModuleType, tmp_path: Path, flag: str, value: str, message: str
) -> None:
    with pytest.raises(usage.UsageError, match=message):
        _parse(app, tmp_path, [flag, value])


def test_fills_twistds_logger_slot_with_an_importable_factory(tmp_path: Path) -> None:
    parent = {"logger": None, "logfile": "/x/app.log", "nodaemon": False}
    _parse(telenet.agent, tmp_path, ["--log-format", "json"], parent)
    assert namedAny(parent["logger"]) is logoptions.observer
    assert logoptions.settings.logfile == "/x/app.log"
    assert logoptions.settings.nodaemon is False


def test_leaves_an_explicit_logger_alone(tmp_path: Path) -> None:
    parent = {"logger": "my.own.observer", "logfile": None, "nodaemon": True}
    _parse(telenet.routeplugin, tmp_path, [], parent)
    assert parent["logger"] == "my.own.observer"


def test_leaves_syslog_to_twistd(tmp_path: Path) -> None:
    parent = {"logger": None, "logfile": None, "nodaemon": True, "syslog": True}
    _parse(telenet.mountplugin, tmp_path, [], parent)
    assert parent["logger"] is None


def test_json_observer_writes_one_object_a_line_with_the_fields() -> None:
    out = io.StringIO()
    obs, _ = logoptions.make_observer(out, LogLevel.info, "json")
    log = Logger(namespace="t", observer=obs)
    log.debug("hidden {x}", x=1)
    log.info("joined {network} {endpoint}", network="n1", endpoint="e1")
    log.warn("slow {seconds}", seconds=2.5)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert (first["network"], first["endpoint"]) == ("n1", "e1")
    assert first["log_level"]["name"] == "info"
    assert second["seconds"] == 2.5


def test_text_observer_filters_and_formats_classically() -> None:
    out = io.StringIO()
    obs, predicate = logoptions.make_observer(out, LogLevel.warn, "text")
    log = Logger(namespace="ns", observer=obs)
    log.info("quiet")
    log.error("broken {what}", what="pipe")
    assert "quiet" not in out.getvalue()
    assert "[ns#error] broken pipe" in out.getvalue()
    # The predicate is what a run-time level change adjusts.
    predicate.setLogLevelForNamespace("ns", LogLevel.info)
    log.info("now shown")
    assert "now shown" in out.getvalue()


def test_observer_honours_the_logfile(
    tmp_path: Path, fresh_settings: logoptions.LogSettings
) -> None:
    fresh_settings.logfile = str(tmp_path / "app.log")
    fresh_settings.format = "json"
    obs = logoptions.observer()
    Logger(namespace="t", observer=obs).info("to file {n}", n=7)
    lines = (tmp_path / "app.log").read_text().splitlines()
    assert json.loads(lines[0])["n"] == 7


def _run_twistd(tmp_path: Path, *flags: str, ready: str | None = "Starting factory") -> str:
    """
    Runs the real twistd sftp-agent in the foreground until ``ready`` is logged (or, with
    nothing to wait for, for a second while it must stay up), then stops it.
    """
    out_path = tmp_path / "out.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with out_path.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
            + ["-n", "--pidfile=", "sftp-agent", "--root", str(tmp_path), "--listen", "tcp:0"]
            + list(flags),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + (20 if ready else 1)
            while ready is None or ready not in out_path.read_text():
                assert proc.poll() is None, out_path.read_text()
                if time.monotonic() > deadline:
                    assert ready is None, out_path.read_text()
                    break
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    return out_path.read_text()


def test_twistd_logs_json_lines(tmp_path: Path) -> None:
    output = _run_twistd(tmp_path, "--log-format", "json", "--log-level", "info")
    events = [json.loads(line) for line in output.splitlines() if line.strip()]
    starting = [e for e in events if e.get("log_namespace") == "telenet.sftp.server.AgentFactory"]
    assert starting and starting[0]["log_level"]["name"] == "info"
    assert any(e.get("log_format", "").startswith("twistd {version}") for e in events)


def test_twistd_logs_text_and_filters_by_level(tmp_path: Path) -> None:
    output = _run_twistd(tmp_path, "--log-format", "text", "--log-level", "info")
    assert "[telenet.sftp.server.AgentFactory#info] Starting factory" in output
    assert not output.lstrip().startswith("{")
    # At error level the app ran (it stayed up for a second) and logged none of its info lines.
    quiet = _run_twistd(tmp_path, "--log-level", "error", ready=None)
    assert "Starting factory" not in quiet
    assert "starting up" not in quiet


def test_twistd_rejects_a_bad_level_with_its_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        + ["-n", "--pidfile=", "sftp-agent", "--root", str(tmp_path), "--log-format", "xml"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    assert "--log-format 'xml' is not one of text, json" in proc.stdout + proc.stderr
