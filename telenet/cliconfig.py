# -*- test-case-name: tests.test_cli_config -*-
"""
The CLI's configuration: ``~/.config/telenet/config.yml`` (``$XDG_CONFIG_HOME`` is honoured,
``$TELENET_CONFIG`` or ``telenet --config FILE`` names another file).

Keys are Telepresence's (contracts §7), plus ``docker.daemonImage`` and ``docker.curlImage``
(the image of ``telenet curl``; unset, ``telenet/curl`` then ``curlimages/curl`` are tried).
An unknown key or a value of the wrong type is an error naming its path
(``docker.teleroute.tag``), so a typo is never silently ignored.

Plug-in names: with a registry, Telepresence's ``REGISTRY/NAMESPACE/REPOSITORY:ARCH-TAG`` (what
``docker plugin install`` fetches); without one, ``NAMESPACE/REPOSITORY:TAG``, a plug-in made
locally from the telenet image (``telenet/teleroute:latest`` by default).
"""

from __future__ import annotations

import os
import platform
from typing import Any

import attrs
import yaml

from telenet.mountplugin import parse_duration


class ConfigError(Exception):
    """The configuration file is unreadable or invalid; the message says where."""


@attrs.frozen
class PluginConfig:
    """Where a plug-in comes from: ``docker.teleroute`` or ``docker.telemount``."""

    registry: str
    namespace: str
    repository: str
    tag: str
    registry_api: str = ""

    @property
    def name(self) -> str:
        """The plug-in's Docker name (see the module docstring)."""
        if self.registry:
            return f"{self.registry}/{self.namespace}/{self.repository}:{go_arch()}-{self.tag}"
        return f"{self.namespace}/{self.repository}:{self.tag}"

    @property
    def legacy_socket(self) -> str:
        """Where a legacy plug-in of this repository listens (its driver name is the same)."""
        return f"/run/docker/plugins/{self.repository}.sock"


@attrs.frozen
class Config:
    daemon_port: int = 4038
    teleroute_port: int = 4039
    daemon_image: str = "telenet"
    curl_image: str = ""
    teleroute: PluginConfig = PluginConfig("", "telenet", "teleroute", "latest")
    telemount: PluginConfig = PluginConfig("", "telenet", "telemount", "latest")
    enable_ipv4: bool = True
    enable_ipv6: bool = True
    mount_completion_delay: float = 0.3
    path: str | None = None


def go_arch() -> str:
    """GOARCH of this machine, as Telepresence's plug-in tags spell it."""
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )


def default_path() -> str:
    explicit = os.environ.get("TELENET_CONFIG")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "telenet", "config.yml")


# The schema: nested dicts of key -> type name ("str", "int", "bool", "duration", "port").
_PLUGIN_KEYS = {
    "registryAPI": "str",
    "registry": "str",
    "namespace": "str",
    "repository": "str",
    "tag": "str",
}
SCHEMA: dict[str, Any] = {
    "grpc": {"daemonPort": "port", "teleroutePort": "port"},
    "docker": {
        "daemonImage": "str",
        "curlImage": "str",
        "teleroute": _PLUGIN_KEYS,
        "telemount": _PLUGIN_KEYS,
        "enableIPv4": "bool",
        "enableIPv6": "bool",
    },
    "intercept": {"mountCompletionDelay": "duration", "useFtp": "bool"},
}


def _check(value: Any, kind: str, path: str) -> Any:
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_describe(value)}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_describe(value)}")
        return value
    if kind == "port":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise ConfigError(f"{path}: expected a port number (1-65535), got {_describe(value)}")
        return value
    if kind == "duration":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{path}: expected a duration like 300ms, got {_describe(value)}")
        try:
            seconds = parse_duration(str(value))
        except ValueError:
            raise ConfigError(
                f"{path}: expected a duration like 300ms, got {_describe(value)}"
            ) from None
        if seconds < 0:
            raise ConfigError(f"{path}: must not be negative")
        return seconds
    raise AssertionError(kind)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _walk(data: Any, schema: dict[str, Any], prefix: str, out: dict[str, Any]) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'the file'}: expected a mapping, got {_describe(data)}")
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        kind = schema.get(key) if isinstance(key, str) else None
        if kind is None:
            raise ConfigError(f"unknown key {path}")
        if isinstance(kind, dict):
            _walk(value, kind, path, out)
        else:
            out[path] = _check(value, kind, path)


def parse_config(text: str, path: str = "config.yml") -> Config:
    """A Config from YAML text; errors read ``PATH: KEY: what is wrong``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    values: dict[str, Any] = {}
    if data is not None:
        try:
            _walk(data, SCHEMA, "", values)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    if values.get("intercept.useFtp"):
        raise ConfigError(
            f"{path}: intercept.useFtp: FTP is not supported with Docker; remove the key or set "
            "it to false"
        )
    default = Config()

    def plugin(kind: str, base: PluginConfig) -> PluginConfig:
        prefix = f"docker.{kind}."
        fields = {
            "registry": values.get(prefix + "registry", base.registry),
            "namespace": values.get(prefix + "namespace", base.namespace),
            "repository": values.get(prefix + "repository", base.repository),
            "tag": values.get(prefix + "tag", base.tag),
            "registry_api": values.get(prefix + "registryAPI", base.registry_api),
        }
        for key in ("namespace", "repository", "tag"):
            if not fields[key]:
                raise ConfigError(f"{path}: {prefix}{key} must not be empty")
        return PluginConfig(**fields)

    return Config(
        daemon_port=values.get("grpc.daemonPort", default.daemon_port),
        teleroute_port=values.get("grpc.teleroutePort", default.teleroute_port),
        daemon_image=values.get("docker.daemonImage", default.daemon_image),
        curl_image=values.get("docker.curlImage", default.curl_image),
        teleroute=plugin("teleroute", default.teleroute),
        telemount=plugin("telemount", default.telemount),
        enable_ipv4=values.get("docker.enableIPv4", default.enable_ipv4),
        enable_ipv6=values.get("docker.enableIPv6", default.enable_ipv6),
        mount_completion_delay=values.get(
            "intercept.mountCompletionDelay", default.mount_completion_delay
        ),
        path=path,
    )


def load_config(path: str | None = None) -> Config:
    """The configuration at ``path`` (default: see L{default_path}); a missing file is empty."""
    explicit = path is not None or bool(os.environ.get("TELENET_CONFIG"))
    path = path or default_path()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: no such file") from None
        return Config(path=None)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror}") from None
    return parse_config(text, path)
