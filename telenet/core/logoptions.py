# -*- test-case-name: tests.test_logoptions -*-
"""
``--log-level`` and ``--log-format`` for every twistd app.

twistd builds its log observer before the app's ``makeService`` has run, and a tap cannot set
an ``ILogObserver`` on the application. What twistd does offer is ``--logger``: the dotted
name of a factory it calls, with no arguments, instead of building its own observer. So each
app's options, once parsed, record the chosen level and format here and fill twistd's
``logger`` slot with :func:`observer` (unless ``--logger`` was given on the command line).
The observer honours twistd's ``--logfile`` and ``--nodaemon`` the way twistd's own does.

``json`` writes one JSON object per line (twisted.logger's ``eventAsJSON``, so every
structured field the code logs is kept); ``text`` is twistd's classic format.

The events logged are also kept, as text, in a bounded ``RecentLog`` (``settings.recent``):
what a plug-in hands ``telenet gather-logs`` through its socket, wherever its output goes
(dockerd's log for a managed plug-in).
"""

from __future__ import annotations

import sys
from collections import deque
from typing import IO, Any

import attrs
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    InvalidLogLevelError,
    LogLevel,
    LogLevelFilterPredicate,
    formatEventAsClassicLogText,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python import usage
from zope.interface import provider

LEVELS = ("debug", "info", "warn", "error", "critical")
FORMATS = ("text", "json")
_FACTORY = f"{__name__}.observer"


class RecentLog:
    """The last ``size`` events logged, as (Unix time, classic text line)."""

    def __init__(self, size: int = 5000) -> None:
        self.lines: deque[tuple[float, str]] = deque(maxlen=size)

    def __call__(self, event: dict[str, Any]) -> None:
        text = formatEventAsClassicLogText(event)
        if text:
            self.lines.append((float(event.get("log_time") or 0.0), text.rstrip("\n")))

    def since(self, when: float = 0.0) -> list[str]:
        return [text for at, text in self.lines if at >= when]


@attrs.define
class LogSettings:
    level: LogLevel = LogLevel.info
    format: str = "text"
    logfile: str = ""
    nodaemon: bool = True
    # The filter in use, so a later control call can change the level at run time.
    predicate: LogLevelFilterPredicate = attrs.field(
        factory=lambda: LogLevelFilterPredicate(LogLevel.info)
    )
    recent: RecentLog = attrs.field(factory=RecentLog)


# Set by the app's options at parse time and read by twistd's call to observer(): the two
# are one process-wide logging set-up, as twistd's own observer is.
settings = LogSettings()


def parse_level(value: str) -> LogLevel:
    try:
        return LogLevel.levelWithName(value.strip().lower())
    except InvalidLogLevelError:
        raise usage.UsageError(f"--log-level {value!r} is not one of {', '.join(LEVELS)}") from None


def parse_format(value: str) -> str:
    fmt = value.strip().lower()
    if fmt not in FORMATS:
        raise usage.UsageError(f"--log-format {value!r} is not one of {', '.join(FORMATS)}")
    return fmt


def make_observer(
    out: IO[Any], level: LogLevel, fmt: str, recent: RecentLog | None = None
) -> tuple[ILogObserver, LogLevelFilterPredicate]:
    """
    An observer writing ``fmt`` to ``out`` (and keeping the events in ``recent``), dropping
    events below ``level``.
    """
    writer = (
        jsonFileLogObserver(out, recordSeparator="") if fmt == "json" else textFileLogObserver(out)
    )

    @provider(ILogObserver)
    def both(event: dict[str, Any]) -> None:
        writer(event)
        if recent is not None:
            recent(event)

    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    return FilteringLogObserver(both, [predicate]), predicate


def _open_output(logfile: str, nodaemon: bool) -> IO[Any]:
    # As twistd's own observer: stdout for "-" or a foreground run without --logfile.
    if logfile == "-" or (not logfile and nodaemon):
        return sys.stdout
    from twisted.python import logfile as _logfile

    return _logfile.LogFile.fromFullPath(logfile or "twistd.log")


def observer() -> ILogObserver:
    """twistd's ``--logger`` factory: the observer :data:`settings` describe."""
    out = _open_output(settings.logfile, settings.nodaemon)
    obs, settings.predicate = make_observer(out, settings.level, settings.format, settings.recent)
    return obs


class LogOptionsMixin:
    """Mixed into an app's ``usage.Options``; its ``postOptions`` must call ``super()``."""

    optParameters: list[list[Any]] = [
        ["log-level", None, "info", f"Lowest level logged: {'|'.join(LEVELS)}."],
        ["log-format", None, "text", f"Log format: {'|'.join(FORMATS)} (json: one object a line)."],
    ]

    def postOptions(self) -> None:
        opts: Any = self
        parent = getattr(opts, "parent", None)
        opts["log-level"] = settings.level = parse_level(str(opts["log-level"]))
        opts["log-format"] = settings.format = parse_format(str(opts["log-format"]))
        if parent is None:
            return
        settings.logfile = parent.get("logfile") or ""
        settings.nodaemon = bool(parent.get("nodaemon"))
        # --logger and --syslog are twistd's own choices of observer: left to it.
        if parent.get("logger") is None and not parent.get("syslog"):
            parent["logger"] = _FACTORY


__all__ = [
    "LEVELS",
    "FORMATS",
    "LogOptionsMixin",
    "LogSettings",
    "RecentLog",
    "make_observer",
    "observer",
]
