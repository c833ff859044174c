"""
The telenet-only calls on a plug-in's socket (telenet.core.pluginadmin), the daemon's
``/loglevel`` (telenet.network.control) and the recent-log ring (telenet.core.logoptions),
with task.Clock and treq's in-memory stub.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet import defer, task
from twisted.logger import Logger, LogLevel, LogPublisher

import telenet
from telenet.core import logoptions
from telenet.core.dockerplugin import PluginResource
from telenet.core.pluginadmin import LevelControl, admin_handlers
from telenet.network.control import Bridges, ControlResource
from tests.helpers import result_of


class Logged:
    """A publisher with telenet's observer on it, as twistd sets it up, and its settings."""

    def __init__(self, level: LogLevel = LogLevel.info) -> None:
        self.settings = logoptions.LogSettings(level=level)
        self.out = io.StringIO()
        obs, self.settings.predicate = logoptions.make_observer(
            self.out, level, "text", self.settings.recent
        )
        self.publisher = LogPublisher(obs)
        self.log = Logger(namespace="telenet.test", observer=self.publisher)
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.control = LevelControl(self.clock, self.settings)

    def emit(self, level: LogLevel, when: float, fmt: str, **fields: Any) -> None:
        """An event logged at Unix time ``when`` (a Logger stamps the real time)."""
        event = {"log_format": fmt, "log_level": level, "log_time": when, **fields}
        self.publisher({"log_namespace": "telenet.test", **event})


def post(stub: Any, path: str, body: Any) -> tuple[int, Any]:
    response = result_of(stub.post("http://p" + path, data=json.dumps(body).encode()))
    return response.code, json.loads(result_of(response.content()))


@pytest.fixture
def logged() -> Logged:
    return Logged()


def test_level_for_a_while_then_back(logged: Logged) -> None:
    logged.log.debug("hidden {n}", n=1)
    assert logged.control.set("debug", 30) == {
        "level": "debug",
        "configured": "info",
        "until": 1030.0,
    }
    logged.log.debug("shown {n}", n=2)
    logged.clock.advance(29)
    logged.log.debug("shown {n}", n=3)
    logged.clock.advance(1)
    logged.log.debug("hidden {n}", n=4)
    text = logged.out.getvalue()
    assert "shown 2" in text and "shown 3" in text
    assert "hidden" not in text
    assert logged.control.describe() == {"level": "info", "configured": "info", "until": None}


def test_a_new_call_replaces_the_pending_revert(logged: Logged) -> None:
    logged.control.set("debug", 10)
    logged.control.set("warn", 0)
    logged.clock.advance(60)
    assert logged.control.level == "warn"
    assert logged.clock.getDelayedCalls() == []
    logged.log.info("not now")
    assert "not now" not in logged.out.getvalue()


@pytest.mark.parametrize(
    "level, duration, message",
    [
        ("loud", 0, "level 'loud' is not one of debug, info, warn, error, critical"),
        (3, 0, '"level" must be one of'),
        ("debug", -1, '"duration" must be a number'),
        ("debug", "10", '"duration" must be a number'),
        ("debug", True, '"duration" must be a number'),
    ],
)
def test_bad_level_or_duration(logged: Logged, level: Any, duration: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        logged.control.set(level, duration)
    assert logged.control.level == "info"


def test_recent_log_keeps_what_was_logged_since(logged: Logged) -> None:
    logged.emit(LogLevel.info, 100.0, "first")
    logged.emit(LogLevel.info, 200.0, "second {x}", x="y")
    logged.emit(LogLevel.debug, 300.0, "filtered")
    lines = logged.settings.recent.since(150)
    assert len(lines) == 1 and lines[0].endswith("second y")
    assert len(logged.settings.recent.since()) == 2
    ring = logoptions.RecentLog(size=2)
    for n in range(3):
        ring({"log_format": "line {n}", "n": n, "log_time": float(n)})
    assert [t.split()[-1] for t in ring.since()] == ["1", "2"]


def test_plugin_admin_calls(logged: Logged) -> None:
    health_calls: list[int] = []

    async def health() -> dict[str, Any]:
        health_calls.append(1)
        return {"Volumes": 2}

    handlers = admin_handlers(logged.clock, health, logged.control)
    stub = StubTreq(PluginResource(["VolumeDriver"], handlers))
    logged.clock.advance(5)
    code, body = post(stub, "/Telenet.Health", {})
    assert code == 200
    assert body["Volumes"] == 2 and body["Version"] == telenet.__version__
    assert body["Uptime"] == 5.0 and body["LogLevel"]["level"] == "info"
    assert isinstance(body["Pid"], int)
    code, body = post(stub, "/Telenet.LogLevel", {"Level": "debug", "Duration": 5})
    assert (code, body["level"], body["until"]) == (200, "debug", 1010.0)
    code, body = post(stub, "/Telenet.LogLevel", {"Level": "nope"})
    assert code == 400 and "is not one of" in body["Err"]
    logged.emit(LogLevel.info, 2000.0, "for the logs")
    code, body = post(stub, "/Telenet.Logs", {"Since": 1999})
    assert code == 200 and [line.endswith("for the logs") for line in body["Lines"]] == [True]
    code, body = post(stub, "/Telenet.Logs", {"Since": "yesterday"})
    assert code == 400 and "Unix time" in body["Err"]
    # Docker's own paths are untouched.
    code, body = post(stub, "/Plugin.Activate", {})
    assert body == {"Implements": ["VolumeDriver"]}


def test_health_may_answer_plainly_or_with_a_deferred(logged: Logged) -> None:
    for health in (lambda: {"Networks": []}, lambda: defer.succeed({"Networks": []})):
        stub = StubTreq(
            PluginResource(["NetworkDriver"], admin_handlers(logged.clock, health, logged.control))
        )
        code, body = post(stub, "/Telenet.Health", {})
        assert code == 200 and body["Networks"] == []


def test_daemon_control_loglevel(logged: Logged) -> None:
    stub = StubTreq(
        ControlResource(lambda: {}, Bridges(lambda h, p: defer.Deferred()), levels=logged.control)
    )

    def call(method: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        response = result_of(stub.request(method, "http://d/loglevel", data=data))
        return response.code, json.loads(result_of(response.content()))

    assert call("GET") == (200, {"level": "info", "configured": "info", "until": None})
    assert call("POST", {"level": "debug", "duration": 2}) == (
        200,
        {"level": "debug", "configured": "info", "until": 1002.0},
    )
    logged.clock.advance(2)
    assert call("GET")[1]["level"] == "info"
    code, body = call("POST", {"level": "debug", "for": 2})
    assert code == 400 and "expected" in body["error"]
    code, body = call("POST", {"level": "shout"})
    assert code == 400 and "is not one of" in body["error"]
    assert call("PUT", {"level": "debug"})[0] == 405


def test_daemon_without_level_control_has_no_loglevel_path() -> None:
    stub = StubTreq(ControlResource(lambda: {}, Bridges(lambda h, p: defer.Deferred())))
    response = result_of(stub.get("http://d/loglevel"))
    assert response.code == 404


# -- the plug-ins' counters


def test_teleroute_health_counts_links_and_endpoints() -> None:
    from types import SimpleNamespace

    from twisted.internet.task import Clock

    from telenet.routeplugin import health

    clock = Clock()
    clock.advance(1000)
    address = SimpleNamespace(host="172.17.0.2", port=4039)
    up = SimpleNamespace(
        connected=True, connections=3, failures=0, last_error="", connected_at=990.0, lost_at=980
    )
    down = SimpleNamespace(
        connected=False,
        connections=1,
        failures=4,
        last_error="connection refused",
        connected_at=900.0,
        lost_at=950.0,
    )
    driver: Any = SimpleNamespace(
        networks={
            "b" * 64: SimpleNamespace(address=address, link=up),
            "a" * 64: SimpleNamespace(address=address, link=None),
            "c" * 64: SimpleNamespace(address=address, link=down),
        },
        endpoints={"e1": object(), "e2": object()},
        _clock=clock,
    )
    assert health(driver) == {
        "Networks": [
            {
                "Network": "a" * 12,
                "Daemon": "172.17.0.2:4039",
                "Connected": False,
                "Reconnects": 0,
                "Failures": 0,
                "LastError": "not linked",
                "ConnectedSince": None,
                "LastContact": None,
            },
            {
                "Network": "b" * 12,
                "Daemon": "172.17.0.2:4039",
                "Connected": True,
                "Reconnects": 2,
                "Failures": 0,
                "LastError": "",
                "ConnectedSince": 990.0,
                "LastContact": 1000.0,  # linked: in contact now
            },
            {
                "Network": "c" * 12,
                "Daemon": "172.17.0.2:4039",
                "Connected": False,
                "Reconnects": 0,
                "Failures": 4,
                "LastError": "connection refused",
                "ConnectedSince": 900.0,
                "LastContact": 950.0,  # when the link was lost
            },
        ],
        "Endpoints": 2,
    }


def test_telemount_health_per_server() -> None:
    from types import SimpleNamespace

    from telenet.mountplugin import health

    def volume(host: str, port: int) -> Any:
        return SimpleNamespace(options=SimpleNamespace(host=host, port=port))

    driver: Any = SimpleNamespace(
        volumes={"v1": volume("10.0.0.5", 22), "v2": volume("10.0.0.5", 22), "v3": volume("h", 2)}
    )

    class Mounter:
        def status(self, host: str, port: int) -> defer.Deferred[dict[str, Any]]:
            if host == "h":
                return defer.fail(RuntimeError("helper gone"))
            return defer.succeed(
                {
                    "mounted": True,
                    "connected": True,
                    "since": 5.0,
                    "pid": 42,
                    "read_bytes": 4096,
                    "written_bytes": 10,
                    "io_errors": 1,
                }
            )

    mounter: Any = Mounter()
    answer = result_of(defer.ensureDeferred(health(driver, mounter)))
    assert answer == {
        "Volumes": 3,
        "Mounts": [
            {
                "Server": "10.0.0.5:22",
                "Volumes": ["v1", "v2"],
                "Mounted": True,
                "Connected": True,
                "Since": 5.0,
                "HelperPid": 42,
                "BytesRead": 4096,
                "BytesWritten": 10,
                "IOErrors": 1,
            },
            {
                "Server": "h:2",
                "Volumes": ["v3"],
                "Mounted": False,
                "Connected": False,
                "Since": None,
                "HelperPid": None,
                "BytesRead": 0,
                "BytesWritten": 0,
                "IOErrors": 0,
                "Error": "helper gone",
            },
        ],
    }
