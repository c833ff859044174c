# -*- test-case-name: tests.test_pluginadmin -*-
"""
telenet's own calls on a plug-in's socket, beside Docker's (docs/troubleshooting.md):

- ``/Telenet.Health``: the plug-in's counters (its ``health()``), its pid, version, uptime and
  log level now;
- ``/Telenet.LogLevel`` with ``{"Level": "debug", "Duration": 60}``: the lowest level logged
  from now on, back to the configured one after ``Duration`` seconds (0 or absent: until the
  next call or a restart);
- ``/Telenet.Logs`` with ``{"Since": UNIX_TIME}``: the lines logged since then that the
  plug-in still keeps (``logoptions.RecentLog``), for ``telenet gather-logs``.

Docker never calls these paths; a managed plug-in answers them on its socket under
``/run/docker/plugins/<id>/``, a legacy one on its own, so they need neither ``runc`` nor a
restart. The daemon's control API has the same level change (``POST /loglevel``), through
``LevelControl``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import InvalidLogLevelError, Logger, LogLevel

import telenet
from telenet.core import logoptions
from telenet.core.dockerplugin import BadRequest, Handler, JSONObject

log = Logger()

Health = Callable[[], "JSONObject | defer.Deferred[JSONObject] | Awaitable[JSONObject]"]


class LevelControl:
    """I change the process's lowest logged level at run time, for a while or for good."""

    def __init__(self, clock: IReactorTime, settings: logoptions.LogSettings | None = None):
        self.clock = clock
        self.settings = settings or logoptions.settings
        self.until: float | None = None
        self._revert: IDelayedCall | None = None

    @property
    def level(self) -> str:
        return str(self.settings.predicate.logLevelForNamespace("").name)

    def set(self, level: Any, duration: Any = 0) -> dict[str, Any]:
        """Set ``level`` (a name) for ``duration`` seconds (0: for good); ValueError if bad."""
        if not isinstance(level, str):
            raise ValueError('"level" must be one of ' + ", ".join(logoptions.LEVELS))
        try:
            wanted = LogLevel.levelWithName(level.strip().lower())
        except InvalidLogLevelError:
            raise ValueError(
                f"level {level!r} is not one of {', '.join(logoptions.LEVELS)}"
            ) from None
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration < 0:
            raise ValueError('"duration" must be a number of seconds, 0 or more')
        if self._revert is not None and self._revert.active():
            self._revert.cancel()
        self._revert = None
        self.until = None
        self._apply(wanted)
        if duration > 0:
            self.until = self.clock.seconds() + duration
            self._revert = self.clock.callLater(duration, self.restore)
        log.info(
            "Log level now {new_level} ({how})",
            new_level=wanted.name,
            how=f"for {duration:g} s" if duration > 0 else "until changed",
        )
        return self.describe()

    def restore(self) -> None:
        """Back to the configured level."""
        self._revert = None
        self.until = None
        self._apply(self.settings.level)
        log.info("Log level back to {new_level}", new_level=self.settings.level.name)

    def _apply(self, level: LogLevel) -> None:
        self.settings.predicate.setLogLevelForNamespace("", level)

    def describe(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "configured": self.settings.level.name,
            "until": self.until,
        }


def admin_handlers(
    clock: IReactorTime, health: Health, control: LevelControl
) -> dict[str, Handler]:
    """The ``/Telenet.*`` handlers of a plug-in, for ``PluginResource``."""
    started = clock.seconds()

    async def health_call(body: JSONObject) -> JSONObject:
        result = health()
        counters = await result if isinstance(result, Awaitable) else result
        return {
            "Version": telenet.__version__,
            "Pid": os.getpid(),
            "Uptime": round(clock.seconds() - started, 3),
            "LogLevel": control.describe(),
            **dict(counters),
        }

    def level_call(body: JSONObject) -> JSONObject:
        try:
            return control.set(body.get("Level"), body.get("Duration", 0) or 0)
        except ValueError as e:
            raise BadRequest(str(e)) from None

    def logs_call(body: JSONObject) -> JSONObject:
        since = body.get("Since", 0) or 0
        if isinstance(since, bool) or not isinstance(since, (int, float)):
            raise BadRequest('"Since" must be a Unix time')
        return {"Lines": control.settings.recent.since(float(since))}

    return {
        "/Telenet.Health": health_call,
        "/Telenet.LogLevel": level_call,
        "/Telenet.Logs": logs_call,
    }
