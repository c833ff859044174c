"""Small helpers shared by the tests."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures")


def result_of(d: defer.Deferred[Any]) -> Any:
    """The result a Deferred already has; fails the test if it has none or failed."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def failure_of(d: defer.Deferred[Any]) -> Failure:
    """The failure a Deferred already has; fails the test if it succeeded or is pending."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    assert isinstance(box[0], Failure), f"expected a failure, got {box[0]!r}"
    return box[0]


def dockerd_calls() -> dict[str, Any]:
    """The calls dockerd 20.10 made to real plug-ins, captured verbatim."""
    for base in (FIXTURES, "/work/shared/fixtures"):
        path = os.path.join(base, "dockerd-20.10-plugin-calls.json")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
    raise FileNotFoundError("dockerd-20.10-plugin-calls.json (shared/fixtures) not found")
