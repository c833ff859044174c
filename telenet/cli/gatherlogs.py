# -*- test-case-name: tests.test_cli_gatherlogs -*-
"""
``telenet gather-logs [-o FILE.zip] [--since DURATION] [--anonymize]``: one zip with what a
bug report needs (docs/troubleshooting.md):

- ``cli/``: the files of the CLI's log directory (it writes none today: a note says so);
- ``daemon/tp-N.log``: each connection's daemon container output (``docker logs``);
- ``plugins/KIND-NAME.log`` and ``….health.json``: each plug-in's recent log lines and
  counters, asked on its socket (``/Telenet.Logs``, ``/Telenet.Health``): the same for a
  managed and a legacy plug-in, with no ``runc``; a plug-in that cannot be asked says why;
- ``helpers/*.log``: telemount's FUSE helpers' logs (in a managed plug-in's root file system,
  or the legacy plug-in's state directory);
- ``status.json``, ``doctor.txt``, ``config.json``, ``docker/version.json``,
  ``docker/plugins.json``.

``--anonymize`` replaces every IP address, the connection names, the host's name and the
plug-ins' names with stable placeholders (``ip-1``, ``name-1``), as Telepresence's does for
its own logs. Nothing fails the whole: a part that cannot be had is a note in its place.
"""

from __future__ import annotations

import glob
import ipaddress
import json
import os
import re
import socket
import time
import zipfile
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from telenet.cli.config import Config
from telenet.cli.connection import CLIError
from telenet.cli.dockerapi import DockerError
from telenet.cli.doctor import Doctor, as_data, format_findings
from telenet.cli.info import config_view, log_directory
from telenet.cli.interfaces import IDocker
from telenet.cli.naming import LABEL_NETWORK_PLUGIN, LABEL_VOLUME_PLUGIN, container_name, labels_of
from telenet.cli.pluginsocket import PluginCall, PluginCallError, call_plugin, socket_of
from telenet.cli.status import StatusReporter

#: Where telemount keeps its helpers' logs (its ``--state-dir`` and ``mounts``), in its root.
HELPER_LOGS = "var/lib/telenet/telemount/mounts"
DOCKER_ROOT = "/var/lib/docker"
Files = Callable[[str], list[tuple[str, bytes]]]


def read_files(pattern: str) -> list[tuple[str, bytes]]:
    """(path, content) of each file matching ``pattern`` on this machine."""
    found = []
    for path in sorted(glob.glob(pattern)):
        try:
            with open(path, "rb") as f:
                found.append((path, f.read()))
        except OSError:
            continue
    return found


@attrs.define
class LogGatherer:
    """I collect the parts of the zip, as (member name, text)."""

    docker: IDocker
    config: Config
    reporter: StatusReporter
    doctor: Doctor
    plugin_call: PluginCall = call_plugin
    files: Files = read_files
    environ: dict[str, str] = attrs.field(factory=lambda: dict(os.environ))

    def gather(self, since: float | None) -> dict[str, str]:
        parts: dict[str, str] = {}
        self._cli(parts)
        parts["config.json"] = _json(config_view(self.config, None, None, self.environ))
        parts["doctor.txt"] = format_findings(as_data(self.doctor.run()))
        try:
            names = self.reporter.lookup.connection_names()
            parts["docker/version.json"] = _json(self.docker.engine_info())
            parts["docker/plugins.json"] = _json(self.docker.plugin_list())
        except (CLIError, DockerError) as e:
            parts["docker/unreachable.txt"] = f"dockerd did not answer: {e}\n"
            return parts
        try:
            parts["status.json"] = _json(self.reporter.statuses())
        except CLIError as e:
            parts["status.json"] = _json({"error": str(e)})
        drivers: dict[str, str] = {}
        for name in names:
            daemon = self.docker.container(container_name(name))
            if daemon is not None:
                logs = self.docker.container_logs(daemon["Id"], 1_000_000, since)
                parts[f"daemon/{container_name(name)}.log"] = logs
            labels = labels_of(daemon)
            for kind, label in (
                ("teleroute", LABEL_NETWORK_PLUGIN),
                ("telemount", LABEL_VOLUME_PLUGIN),
            ):
                if labels.get(label):
                    drivers.setdefault(labels[label], kind)
        if not drivers:
            drivers = {
                self.config.teleroute.name: "teleroute",
                self.config.telemount.name: "telemount",
            }
        for driver, kind in drivers.items():
            self._plugin(parts, kind, driver, since)
        return parts

    def _cli(self, parts: dict[str, str]) -> None:
        directory = log_directory(self.environ)
        found = self.files(os.path.join(directory, "*"))
        for path, data in found:
            parts[f"cli/{os.path.basename(path)}"] = data.decode("utf-8", "replace")
        if not found:
            parts["cli/README.txt"] = (
                f"The CLI writes no log file ({directory} holds none): its messages are on "
                "stderr, and this zip has what it reports (status.json, doctor.txt).\n"
            )

    def _plugin(self, parts: dict[str, str], kind: str, driver: str, since: float | None) -> None:
        stem = f"plugins/{kind}-{_safe(driver)}"
        path = socket_of(self.docker, driver)
        if path is None:
            parts[f"{stem}.log"] = (
                "the engine runs elsewhere: the plug-in's socket is not on this machine; "
                "its output is in dockerd's log there\n"
            )
            return
        try:
            lines = self.plugin_call(path, "/Telenet.Logs", {"Since": since or 0}).get("Lines")
            parts[f"{stem}.log"] = "".join(f"{line}\n" for line in lines or [])
            health = self.plugin_call(path, "/Telenet.Health", {})
            parts[f"{stem}.health.json"] = _json(health)
        except PluginCallError as e:
            parts[f"{stem}.log"] = (
                f"could not ask the plug-in on {path}: {e}\n(a managed plug-in's output is also "
                "in dockerd's log: journalctl -u docker)\n"
            )
        info = self.docker.plugin(driver)
        if kind == "telemount":
            root = f"{DOCKER_ROOT}/plugins/{info.get('Id')}/rootfs/" if info else "/"
            for file, data in self.files(root + HELPER_LOGS + "/*.log"):
                parts[f"helpers/{os.path.basename(file)}"] = data.decode("utf-8", "replace")


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str) + "\n"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


# -- anonymizing

_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
#: Candidates only (hex digits and two colons or more): ``ipaddress`` decides.
_IPV6 = re.compile(r"(?<![\w:.])[0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{0,4}){2,7}(?![\w:])")


class Anonymizer:
    """Stable placeholders for addresses and the given names, the same in every part."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = sorted({n for n in names if n and len(n) > 2}, key=len, reverse=True)
        self.seen: dict[str, str] = {}

    def _placeholder(self, value: str, kind: str) -> str:
        if value not in self.seen:
            count = sum(1 for v in self.seen.values() if v.startswith(kind))
            self.seen[value] = f"{kind}-{count + 1}"
        return self.seen[value]

    def _address(self, match: re.Match[str], kind: str = "ip") -> str:
        text = match.group(0)
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return text
        if ip.is_loopback or ip.is_unspecified:
            return text
        return self._placeholder(text, kind)

    def __call__(self, text: str) -> str:
        for name in self.names:
            if name in text:
                text = text.replace(name, self._placeholder(name, "name"))
        text = _IPV4.sub(self._address, text)
        return _IPV6.sub(self._address, text)


def names_to_hide(docker: IDocker, connections: list[str]) -> list[str]:
    """The connection names, their containers, the host's name and the plug-ins' names."""
    names = [socket.gethostname()]
    for name in connections:
        names += [name, container_name(name)]
    try:
        names += [str(p.get("Name", "")).split(":")[0] for p in docker.plugin_list()]
    except DockerError:
        pass
    return names


def write_zip(path: str, parts: dict[str, str], clean: Callable[[str], str] | None) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, text in sorted(parts.items()):
            z.writestr(name, clean(text) if clean is not None else text)


def default_zip_name(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"telenet-logs-{stamp}.zip"
