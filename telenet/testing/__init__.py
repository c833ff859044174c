"""
Memory fakes of telenet's interfaces, for unit tests (ours and anyone building on telenet).

Each fake is checked against the real implementation by a contract test, so a test that passes
with a fake says something about the real thing.
"""

from __future__ import annotations

from telenet.testing.control import MemoryControl
from telenet.testing.docker import ExecHandler, MemoryDocker
from telenet.testing.mounter import MemoryMounter
from telenet.testing.netlink import MemoryNetlink
from telenet.testing.processes import FakeProcesses
from telenet.testing.state import MemoryStateStore

__all__ = [
    "MemoryStateStore",
    "MemoryMounter",
    "MemoryNetlink",
    "MemoryDocker",
    "ExecHandler",
    "MemoryControl",
    "FakeProcesses",
]
