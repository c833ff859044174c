# -*- test-case-name: tests.test_gocompat -*-
"""
Small Go-compatible helpers: values spelled the way Telepresence's Go code and its users spell
them, with no dependency on Twisted, so that the CLI and the plug-ins can share them.
"""

from __future__ import annotations

import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration ("1m30s", "500ms") or a plain number of seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(f"not a duration: {text!r}")
    return total


_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_bool(value: str) -> bool:
    """Go's ``strconv.ParseBool``, which users of the Go plug-ins are used to."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(value)


def safe_name(name: str) -> str:
    """
    A name usable for a file, a container or a network, as Telepresence makes it
    (``SafeContainerName``, telemount's ``safeName``): letters and digits stay; after the
    first character ``_ . -`` stay too; anything else becomes ``_``, or ``a`` in first place.
    """
    out = []
    for i, ch in enumerate(name):
        if ch.isascii() and ch.isalnum():
            out.append(ch)
        elif i > 0 and ch in "_.-":
            out.append(ch)
        else:
            out.append("_" if i > 0 else "a")
    return "".join(out)


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 literal in brackets (Go's ``net.JoinHostPort``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def is_namespace(name: str) -> bool:
    """Whether ``name`` can be a Kubernetes namespace (an RFC 1123 label, as its API checks)."""
    return bool(_DNS_LABEL.fullmatch(name))
