"""Small helpers shared by the tests."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

#: The tests' own fixtures (what real engines sent, captured by tests/capture_plugin_calls.py).
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
#: The engines whose plug-in calls were captured: Debian 12's docker.io and Debian 13's.
DOCKERD_CAPTURES = ("20.10", "26.1")


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


def dockerd_calls(version: str = "20.10") -> dict[str, Any]:
    """The calls dockerd ``version`` made to real plug-ins, captured verbatim."""
    with open(os.path.join(FIXTURES, f"dockerd-{version}-plugin-calls.json")) as f:
        return dict(json.load(f))
