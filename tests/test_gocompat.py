"""Go-compatible helpers, and the CLI's configuration reading them without Twisted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from telenet import mountplugin
from telenet.core import gocompat


@pytest.mark.parametrize(
    "text, seconds",
    [("1h2m3.5s", 3723.5), (".5s", 0.5), ("1µs", 1e-6), ("10ns", 1e-8), (" 2m ", 120), ("0", 0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    """Go's units, fractions and sums, or a plain number of seconds."""
    assert gocompat.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1d", "1 s", "s1", "1s 2s", "m"])
def test_parse_duration_refuses_what_go_refuses(text: str) -> None:
    """No unknown units, no spaces inside, no unit without a number."""
    with pytest.raises(ValueError, match="not a duration"):
        gocompat.parse_duration(text)


def test_the_volume_plugin_shares_it() -> None:
    """mountplugin's parse_duration, which other code imports, is this one."""
    assert mountplugin.parse_duration is gocompat.parse_duration


def test_the_cli_configuration_needs_no_twisted_application() -> None:
    """Reading config.yml does not import the plug-ins' Twisted services (a fresh interpreter)."""
    modules = subprocess.run(
        [sys.executable, "-c", "import sys, telenet.cli.config; print(*sys.modules)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert "telenet.core.gocompat" in modules
    assert [m for m in modules if m.startswith(("twisted", "telenet.mountplugin"))] == []
