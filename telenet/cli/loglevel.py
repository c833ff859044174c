# -*- test-case-name: tests.test_cli_gatherlogs -*-
"""
``telenet loglevel LEVEL [--duration D] [--name N]``: the daemons' and plug-ins' lowest logged
level changed at run time, by a control call (no restart), back to their configured level
after the duration (none: until changed again or restarted).

The daemon through its control API (``POST /loglevel``), each plug-in on its socket
(``/Telenet.LogLevel``, ``telenet.core.pluginadmin``). One that cannot be reached is reported,
the others are still changed.
"""

from __future__ import annotations

from typing import Any

import attrs

from telenet.cli.config import Config
from telenet.cli.connection import CLIError
from telenet.cli.daemoncontrol import DaemonControlError
from telenet.cli.interfaces import IDocker
from telenet.cli.lookup import ConnectionLookup
from telenet.cli.naming import LABEL_NETWORK_PLUGIN, LABEL_VOLUME_PLUGIN
from telenet.cli.pluginsocket import PluginCall, PluginCallError, call_plugin, socket_of

LEVELS = ("debug", "info", "warn", "error", "critical")


def check_level(text: str) -> str:
    level = text.strip().lower()
    if level not in LEVELS:
        raise CLIError(f"LEVEL {text!r} is not one of {', '.join(LEVELS)}")
    return level


@attrs.define
class LevelSetter:
    """I set the level of each connection's daemon and of the plug-ins they use."""

    docker: IDocker
    config: Config
    lookup: ConnectionLookup
    plugin_call: PluginCall = call_plugin

    def set(self, level: str, duration: float, name: str | None = None) -> dict[str, Any]:
        self.lookup.check_docker()
        names = [name] if name is not None else self.lookup.connection_names()
        daemons = []
        drivers: dict[str, str] = {}
        for each in names:
            conn = self.lookup.find(each)
            for kind, label in (
                ("teleroute", LABEL_NETWORK_PLUGIN),
                ("telemount", LABEL_VOLUME_PLUGIN),
            ):
                if conn.label(label):
                    drivers.setdefault(str(conn.label(label)), kind)
            try:
                answer = self.lookup.control(conn).set_log_level(level, duration)
            except (DaemonControlError, CLIError) as e:
                daemons.append({"connection": each, "error": str(e)})
            else:
                daemons.append({"connection": each, **answer})
        if not names:
            for kind, cfg in (
                ("teleroute", self.config.teleroute),
                ("telemount", self.config.telemount),
            ):
                for driver in (cfg.name, cfg.repository):
                    if self.docker.plugin(driver) is not None or self.docker.socket_answers(
                        f"/run/docker/plugins/{driver}.sock"
                    ):
                        drivers.setdefault(driver, kind)
                        break
        plugins = [self._plugin(kind, driver, level, duration) for driver, kind in drivers.items()]
        ok = not any("error" in x for x in [*daemons, *plugins]) and bool(daemons or plugins)
        return {
            "ok": ok,
            "level": level,
            "duration": duration,
            "daemons": daemons,
            "plugins": plugins,
        }

    def _plugin(self, kind: str, driver: str, level: str, duration: float) -> dict[str, Any]:
        found: dict[str, Any] = {"kind": kind, "name": driver}
        path = socket_of(self.docker, driver)
        if path is None:
            return {**found, "error": "the engine runs elsewhere: its socket is not here"}
        try:
            answer = self.plugin_call(
                path, "/Telenet.LogLevel", {"Level": level, "Duration": duration}
            )
        except PluginCallError as e:
            return {**found, "error": str(e)}
        return {**found, **answer}


def format_levels(data: dict[str, Any]) -> str:
    how = f"for {data['duration']:g} s" if data["duration"] else "until changed"
    lines = [f"Log level {data['level']} {how}:"]
    if not data["daemons"] and not data["plugins"]:
        lines.append("  nothing to change: no connection and no plug-in")
    for d in data["daemons"]:
        lines.append(
            f"  daemon {d['connection']}: " + (f"failed: {d['error']}" if "error" in d else "ok")
        )
    for p in data["plugins"]:
        lines.append(
            f"  {p['kind']} plug-in {p['name']}: "
            + (f"failed: {p['error']}" if "error" in p else "ok")
        )
    return "\n".join(lines)
