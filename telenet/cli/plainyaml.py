# -*- test-case-name: tests.test_cli_plainyaml -*-
"""
The plain subset of YAML that config.yml files are written in, read without PyYAML: importing
PyYAML costs every ``telenet`` run that has a config file about 10 ms (issue 19), and these
files are mostly a few nested keys with names, numbers and booleans.

``load`` answers what ``yaml.safe_load`` answers, or ``DEFER`` when the text holds anything
it does not read with certainty (lists, quotes, anchors, tags, block scalars, flow collections
but a one-level ``{k: v, …}``, tabs, odd indentation, a scalar PyYAML would resolve to a number
other than a decimal integer, or a timestamp): the caller then asks PyYAML, whose answers and
errors stay the reference. tests/test_cli_plainyaml.py compares the two.
"""

from __future__ import annotations

import re
from typing import Any

#: What ``load`` returns for a text it leaves to PyYAML.
DEFER: Any = object()

# A key: a letter, then letters, digits, _ and -; PyYAML resolves none of these but the
# boolean and null words.
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
# A plain string: starts with a letter or /, no character YAML gives a meaning to.
_STRING = re.compile(r"[A-Za-z/][A-Za-z0-9_./:@+-]*")
# A Go duration (10s, 1m30s, 1.5s, 500ms): starts with a digit, but has a unit, so PyYAML
# sees no number in it.
_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ns|us|ms|s|m|h))+")
_INT = re.compile(r"0|[1-9][0-9]*")
# An IPv4 address or subnet (docker.subnet): four parts, so no float either.
_ADDRESS = re.compile(r"[0-9]+(?:\.[0-9]+){3}(?:/[0-9]+)?")
# YAML 1.1's booleans and nulls, as PyYAML's resolver spells them.
_BOOLS = {
    **dict.fromkeys(("yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), True),
    **dict.fromkeys(("no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), False),
}
_NULLS = ("~", "null", "Null", "NULL")


class _Defer(Exception):
    pass


def load(text: str) -> Any:
    """``yaml.safe_load(text)``, or ``DEFER``."""
    try:
        return _load(text)
    except _Defer:
        return DEFER


def _load(text: str) -> Any:
    if not text.isascii():
        raise _Defer
    # Each level: its indentation and its mapping (the root has indentation -1).
    root: dict[str, Any] = {}
    levels: list[tuple[int, dict[str, Any]]] = [(-1, root)]
    # The key whose value is still open (``key:`` at the end of a line): its mapping, its
    # indentation.
    pending: tuple[dict[str, Any], str, int] | None = None
    for raw in text.split("\n"):
        if not raw.isprintable():
            # Tabs, carriage returns, control characters.
            raise _Defer
        line = _uncommented(raw)
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        body = line.strip()
        if pending is not None:
            mapping, key, at = pending
            pending = None
            if indent > at:
                child: dict[str, Any] = {}
                mapping[key] = child
                levels.append((indent, child))
            else:
                mapping[key] = None
        while levels[-1][0] > indent:
            levels.pop()
        if levels[-1][0] != indent and not (levels[-1][0] == -1 and indent == 0):
            raise _Defer
        mapping = levels[-1][1]
        if mapping is root and indent != 0:
            raise _Defer
        key, sep, rest = body.partition(":")
        if not sep or not _KEY.fullmatch(key) or key in _BOOLS or key in _NULLS:
            raise _Defer
        if rest and not rest.startswith(" "):
            raise _Defer
        value = rest.strip()
        if key in mapping:
            raise _Defer
        if value:
            mapping[key] = _flow(value) if value.startswith("{") else _scalar(value)
        else:
            mapping[key] = None
            pending = (mapping, key, indent)
    if not root:
        return None
    return root


def _uncommented(line: str) -> str:
    """The line without its comment (`` #`` or a ``#`` that starts it)."""
    if line.lstrip(" ").startswith("#"):
        return ""
    cut = line.find(" #")
    if cut >= 0:
        line = line[:cut]
    if "#" in line:
        raise _Defer
    return line.rstrip(" ")


def _flow(value: str) -> dict[str, Any]:
    """``{k: v, …}`` of keys and scalars."""
    if not value.endswith("}"):
        raise _Defer
    inner = value[1:-1].strip()
    found: dict[str, Any] = {}
    if not inner:
        return found
    for item in inner.split(","):
        key, sep, rest = item.strip().partition(":")
        if not sep or not rest.startswith(" ") or not _KEY.fullmatch(key):
            raise _Defer
        value = rest.strip()
        if key in _BOOLS or key in _NULLS or key in found or ":" in value:
            raise _Defer
        found[key] = _scalar(value)
    return found


def _scalar(value: str) -> Any:
    if ": " in value or value.endswith(":"):
        raise _Defer
    if value in _BOOLS:
        return _BOOLS[value]
    if value in _NULLS:
        return None
    if _INT.fullmatch(value):
        return int(value)
    if _STRING.fullmatch(value) or _DURATION.fullmatch(value) or _ADDRESS.fullmatch(value):
        return value
    raise _Defer
