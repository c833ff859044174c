"""The daemon's control API in memory: ``MemoryControl``."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from zope.interface import implementer

from telenet.cli.daemoncontrol import DaemonControlError
from telenet.cli.interfaces import IControl


@implementer(IControl)
class MemoryControl:
    """
    The daemon's control API in memory: ``status`` as given, bridges kept by port.
    ``answering = False`` makes every call fail as a daemon that is not up yet.
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
        self._ports = itertools.count(33000)

    def _check(self) -> None:
        if not self.answering:
            raise DaemonControlError("GET /status: [Errno 111] Connection refused")

    def status(self) -> dict[str, Any]:
        self._check()
        bridges = [{"port": p, "agent": a} for p, a in sorted(self.bridges.items())]
        return {**copy.deepcopy(self.base_status), "bridges": bridges}

    def open_bridge(self, agent: str) -> int:
        self._check()
        if self.refuse_agent is not None:
            raise DaemonControlError(self.refuse_agent)
        port = next(self._ports)
        self.bridges[port] = agent
        self.calls.append(("open_bridge", agent, port))
        return port

    def close_bridge(self, port: int) -> None:
        self._check()
        if self.bridges.pop(port, None) is None:
            raise DaemonControlError(f"no bridge on port {port}")
        self.calls.append(("close_bridge", port))
