# -*- test-case-name: tests.test_state -*-
"""
Plug-in state on disk: one JSON document per plug-in, replaced atomically.

Docker remembers volumes and networks across a plug-in restart, so the plug-in must too. Each
save writes a temporary file, fsyncs it and renames it over the old one, so a crash (even
``kill -9`` in the middle of a save) leaves either the old or the new document, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from telenet.core.interfaces import IStateStore

log = Logger()


@implementer(IStateStore)
class JSONFileStore:
    """An ``IStateStore`` kept in one JSON file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            # Keep the unreadable file for a human, and start empty rather than not at all.
            aside = f"{self.path}.corrupt"
            log.error(
                "state file {path} is unreadable ({error}); moved to {aside}",
                path=self.path,
                error=e,
                aside=aside,
            )
            os.replace(self.path, aside)
            return {}
        if not isinstance(data, dict):
            log.error("state file {path} holds no JSON object; ignoring it", path=self.path)
            return {}
        return data

    def save(self, data: dict[str, Any]) -> None:
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
