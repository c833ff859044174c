# -*- test-case-name: tests.test_cli_connect -*-
"""
The connection's Docker plug-ins (teleroute for the network, telemount for the volumes):
found, enabled, installed from a registry or made from the project image when missing, and
their state for ``telenet status`` (managed or legacy socket, enabled or not).

Separate because connect, the runner (an engagement's volume driver) and status use them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from telenet.cli.config import Config, PluginConfig
from telenet.cli.connection import CLIError
from telenet.cli.dockerapi import DockerError
from telenet.cli.interfaces import IDocker
from telenet.cli.pluginsocket import PluginCall, PluginCallError, call_plugin, socket_of

#: The plug-in kinds a connection needs, in the order they are made.
PLUGIN_KINDS = ("teleroute", "telemount")


@attrs.define
class Plugins:
    """I make sure the plug-ins are there and enabled, and tell their state."""

    docker: IDocker
    config: Config
    say: Callable[[str], None] = print
    #: How ``/Telenet.Health`` is asked on a plug-in's socket (``pluginsocket.call_plugin``).
    plugin_call: PluginCall = call_plugin

    def ensure_plugins(self, kinds: tuple[str, ...] = PLUGIN_KINDS) -> dict[str, str]:
        """The driver name of each plug-in kind, installed or made when missing."""
        drivers: dict[str, str] = {}
        to_create: list[tuple[str, str]] = []
        for kind in kinds:
            cfg = self._plugin_config(kind)
            info = self.docker.plugin(cfg.name)
            if info is not None:
                if not info.get("Enabled"):
                    self.say(f"Enabling plug-in {cfg.name}")
                    self._enable(cfg.name)
                drivers[kind] = cfg.name
            elif self.docker.socket_answers(cfg.legacy_socket):
                drivers[kind] = cfg.repository
            elif cfg.registry:
                self.say(f"Installing plug-in {cfg.name}")
                try:
                    self.docker.install_plugin(cfg.name)
                except DockerError as e:
                    raise CLIError(f"plug-in install of {cfg.name} refused: {e}") from None
                drivers[kind] = cfg.name
            else:
                to_create.append((cfg.name, kind))
                drivers[kind] = cfg.name
        if to_create:
            image = self.config.daemon_image
            self.require_image(image)
            names = ", ".join(name for name, _ in to_create)
            self.say(
                f"Creating plug-in{'s' if len(to_create) > 1 else ''} {names} from image {image}"
            )
            try:
                self.docker.create_plugins(image, to_create)
            except DockerError as e:
                raise CLIError(f"could not create plug-in {names}: {e}") from None
            for name, _ in to_create:
                self._enable(name)
        return drivers

    def _plugin_config(self, kind: str) -> PluginConfig:
        return self.config.teleroute if kind == "teleroute" else self.config.telemount

    def _enable(self, name: str) -> None:
        try:
            self.docker.enable_plugin(name)
        except DockerError as e:
            raise CLIError(f"could not enable plug-in {name}: {e}") from None

    def require_image(self, image: str) -> None:
        if not self.docker.image_exists(image):
            raise CLIError(
                f"image {image} not found: build it with scripts/build-image (or set "
                "docker.daemonImage in the config)"
            )

    def plugin_status(self, driver: str | None, kind: str) -> dict[str, Any]:
        if not driver:
            return {"kind": kind, "name": None, "mode": None, "enabled": False}
        info = self.docker.plugin(driver)
        if info is not None:
            enabled = bool(info.get("Enabled"))
            mode = "managed"
        else:
            enabled = self.docker.socket_answers(f"/run/docker/plugins/{driver}.sock")
            mode = "legacy"
        return {
            "kind": kind,
            "name": driver,
            "mode": mode,
            "enabled": enabled,
            "health": self.health(driver) if enabled else None,
        }

    def health(self, driver: str) -> dict[str, Any]:
        """The plug-in's ``/Telenet.Health`` counters, or ``{"error": why not}``."""
        path = socket_of(self.docker, driver)
        if path is None:
            return {"error": "the engine runs elsewhere: the plug-in's socket is not here"}
        try:
            return self.plugin_call(path, "/Telenet.Health", {})
        except PluginCallError as e:
            return {"error": str(e)}
