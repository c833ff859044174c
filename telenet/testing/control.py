"""The daemon's control API in memory: ``MemoryControl``."""

from __future__ import annotations

import copy
import itertools
import time
from typing import Any

from zope.interface import implementer

from telenet.cli.daemoncontrol import DaemonControlError
from telenet.cli.interfaces import IControl
from telenet.network.control import ControlError, parse_agent


@implementer(IControl)
class MemoryControl:
    """
    The daemon's control API in memory, answering as the daemon does
    (tests/test_control_contract.py): ``status`` as given, bridges kept by port, agents
    checked by the daemon's own parser. ``answering = False`` makes every call fail as a
    daemon that is not up yet; ``refuse_agent`` (a reason) makes opening a bridge fail as
    when the daemon cannot listen for one.
    """

    def __init__(self, status: dict[str, Any] | None = None) -> None:
        self.answering = True
        self.base_status = status or {
            "version": "0.1.0",
            "routes": [],
            "dns": {"local_address": None},
        }
        self.bridges: dict[int, str] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.refuse_agent: str | None = None
        self.level = "info"
        self._ports = itertools.count(33000)

    def _check(self, method: str, path: str) -> None:
        # HTTPControl's words for a port nothing listens on.
        if not self.answering:
            raise DaemonControlError(f"{method} {path}: [Errno 111] Connection refused")

    def status(self) -> dict[str, Any]:
        self._check("GET", "/status")
        # A fresh bridge has moved nothing yet; the daemon counts from 0.
        bridges = [
            {"port": p, "agent": a, "connections": 0, "bytes_in": 0, "bytes_out": 0}
            for p, a in sorted(self.bridges.items())
        ]
        return {**copy.deepcopy(self.base_status), "bridges": bridges}

    def open_bridge(self, agent: str) -> int:
        self._check("POST", "/bridges")
        try:
            parse_agent(agent)
        except ControlError as e:
            raise DaemonControlError(e.message) from None
        if self.refuse_agent is not None:
            raise DaemonControlError(f"cannot open a bridge to {agent}: {self.refuse_agent}")
        port = next(self._ports)
        self.bridges[port] = agent
        self.calls.append(("open_bridge", agent, port))
        return port

    def close_bridge(self, port: int) -> None:
        self._check("DELETE", f"/bridges/{port}")
        if port < 0:
            # The daemon's path parser takes digits only.
            raise DaemonControlError(f"bad bridge port {str(port)!r}")
        if self.bridges.pop(port, None) is None:
            raise DaemonControlError(f"no bridge on port {port}")
        self.calls.append(("close_bridge", port))

    def set_log_level(self, level: str, duration: float) -> dict[str, Any]:
        self._check("POST", "/loglevel")
        if level not in ("debug", "info", "warn", "error", "critical"):
            raise DaemonControlError(
                f"level {level!r} is not one of debug, info, warn, error, critical"
            )
        if duration < 0:
            raise DaemonControlError('"duration" must be a number of seconds, 0 or more')
        self.calls.append(("set_log_level", level, duration))
        self.level = level
        until = time.time() + duration if duration else None
        return {"level": level, "configured": "info", "until": until}
