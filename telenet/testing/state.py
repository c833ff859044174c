"""The state store in memory."""

from __future__ import annotations

import copy
from typing import Any

from zope.interface import implementer

from telenet.core.interfaces import IStateStore


@implementer(IStateStore)
class MemoryStateStore:
    """An ``IStateStore`` in memory; ``saves`` counts the writes."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self._data = copy.deepcopy(data or {})
        self.saves = 0

    def load(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)

    def save(self, data: dict[str, Any]) -> None:
        self._data = copy.deepcopy(data)
        self.saves += 1
