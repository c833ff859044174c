# -*- test-case-name: tests.test_cli_info -*-
"""
``telenet config view`` and ``telenet version``: what the CLI would use and what is running.

``config view`` shows every key telenet reads with its value and where that value came from
(``default``, the machine-wide file, the user's telenet file or Telepresence's, ``$ENV`` or a
command-line option), the configuration files looked for, and where the logs are. It reads
files and the environment only.

``version`` shows the CLI's version and, from Docker alone (labels, environment and image
references; no call to the daemon), the version of each connection's daemon and plug-ins.
It never fails on Docker's account: an engine that does not answer is reported as such.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import telenet
from telenet.cli.config import (
    DEFAULT_SOURCE,
    FIELDS,
    KEYS,
    Config,
    default_path,
    default_system_path,
    default_telepresence_path,
)
from telenet.cli.naming import (
    LABEL_NETWORK_PLUGIN,
    LABEL_VOLUME_PLUGIN,
    container_name,
    labels_of,
)

if TYPE_CHECKING:
    from telenet.cli.connector import Connector

NOT_RUNNING = "not running"
#: The OCI label scripts/build-image sets on the telenet image.
VERSION_LABEL = "org.opencontainers.image.version"
VERSION_ENV = "TELENET_VERSION"
#: Environment variables that change what the CLI reads or picks, and what for.
ENVIRONMENT = {
    "TELENET_CONFIG": "the user's configuration file",
    "TELENET_SYSTEM_CONFIG": "the machine-wide configuration file",
    "XDG_CONFIG_HOME": "the directory of the user's configuration files",
    "XDG_CACHE_HOME": "the directory of the log directory",
    "TELENET_CONNECTION": "the connection docker-run, curl and engage use",
    "DOCKER_HOST": "the Docker engine",
    "DOCKER_CONTEXT": "the Docker context",
}
TELEMOUNT_STATE_DIR = "/var/lib/telenet/telemount"


def config_value(config: Config, key: str) -> Any:
    """The value of a key path (``docker.teleroute.tag``) in ``config``."""
    if key in FIELDS:
        return getattr(config, FIELDS[key])
    if key == "intercept.useFtp":
        return False
    _, kind, field = key.split(".")
    plugin = config.teleroute if kind == "teleroute" else config.telemount
    return getattr(plugin, "registry_api" if field == "registryAPI" else field)


def log_directory(environ: Mapping[str, str]) -> str:
    """Where the CLI's logs go, after Telepresence's ``~/.cache/telepresence/logs``."""
    cache = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "telenet", "logs")


def config_view(
    config: Config,
    config_option: str | None,
    connection_option: str | None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``telenet config view`` as data."""
    env = os.environ if environ is None else environ
    settings: dict[str, dict[str, Any]] = {}
    for key in KEYS:
        source = config.sources.get(key, DEFAULT_SOURCE)
        settings[key] = {"value": config_value(config, key), "source": source}
    if connection_option:
        connection: dict[str, Any] = {"value": connection_option, "source": "--connection"}
    elif env.get("TELENET_CONNECTION"):
        connection = {"value": env["TELENET_CONNECTION"], "source": "$TELENET_CONNECTION"}
    else:
        connection = {"value": None, "source": DEFAULT_SOURCE}
    settings["connection"] = connection
    if config_option:
        user, user_source = config_option, "--config"
    elif env.get("TELENET_CONFIG"):
        user, user_source = env["TELENET_CONFIG"], "$TELENET_CONFIG"
    else:
        user, user_source = default_path(), DEFAULT_SOURCE
    system = default_system_path()
    read = set(config.files)
    files = [
        _file(
            "system",
            system,
            "$TELENET_SYSTEM_CONFIG" if env.get("TELENET_SYSTEM_CONFIG") else DEFAULT_SOURCE,
            read,
        ),
        _file("user", user, user_source, read),
    ]
    if config.path is None:
        files.append(_file("telepresence", default_telepresence_path(), DEFAULT_SOURCE, read))
    logs = log_directory(env)
    return {
        "settings": settings,
        "files": files,
        "environment": {name: env[name] for name in ENVIRONMENT if env.get(name)},
        "logs": {
            "directory": logs,
            "directory_exists": os.path.isdir(logs),
            "cli": "stderr only: the CLI writes no log file",
            "daemon": "docker logs " + container_name("NAME"),
            "plugins": "managed: dockerd's log (journalctl -u docker); legacy: their twistd "
            "output; both: their recent lines through telenet gather-logs",
            "telemount_helpers": f"{TELEMOUNT_STATE_DIR}/mounts/HOST-PORT.log in the telemount "
            "plug-in (one helper per SFTP server)",
        },
    }


def _file(role: str, path: str, source: str, read: set[str]) -> dict[str, Any]:
    return {"role": role, "path": path, "source": source, "read": path in read}


def format_config_view(view: dict[str, Any]) -> str:
    lines = ["Settings:"]
    width = max(len(key) for key in view["settings"])
    for key, item in view["settings"].items():
        value = "" if item["value"] is None else item["value"]
        lines.append(f"  {key:<{width}}  {value!s:<24}  ({item['source']})")
    lines.append("Configuration files (lowest priority first):")
    for f in view["files"]:
        state = "read" if f["read"] else "not read"
        lines.append(f"  {f['role']:<12}  {f['path']}  ({state}; path from {f['source']})")
    lines.append("Environment:")
    for name, value in view["environment"].items() or [("(none set)", "")]:
        lines.append(f"  {name}={value}" if value else f"  {name}")
    logs = view["logs"]
    exists = "" if logs["directory_exists"] else " (does not exist)"
    lines.append(f"Log directory: {logs['directory']}{exists}")
    for what in ("cli", "daemon", "plugins", "telemount_helpers"):
        lines.append(f"  {what.replace('_', ' ')}: {logs[what]}")
    return "\n".join(lines)


# -- telenet version


def image_version(image: str) -> str | None:
    """The tag of an image or plug-in reference, without an ``ARCH-`` prefix; None if none."""
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return None
    tag = last.rsplit(":", 1)[1]
    arch, dash, rest = tag.partition("-")
    return rest if dash and arch in ("amd64", "arm64", "arm", "386") else tag


def _env_of(items: Any) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in items or ():
        if isinstance(item, str):
            key, _, value = item.partition("=")
            found[key] = value
        elif isinstance(item, dict):
            # A plug-in's Config.Env: {"Name", "Value", …} from the API, lower case in files.
            name = item.get("Name") or item.get("name")
            if name:
                found[str(name)] = str(item.get("Value") or item.get("value") or "")
    return found


def daemon_version(container: dict[str, Any]) -> dict[str, Any]:
    config = container.get("Config") or {}
    image = str(config.get("Image") or "")
    version = labels_of(container).get(VERSION_LABEL) or _env_of(config.get("Env")).get(VERSION_ENV)
    running = bool((container.get("State") or {}).get("Running"))
    return {
        "version": version or image_version(image) or "unknown",
        "image": image,
        "running": running,
    }


def plugin_version(docker: Any, kind: str, driver: str | None) -> dict[str, Any]:
    """A plug-in's version from its inspection (managed) or what can be said (legacy)."""
    if not driver:
        return {"kind": kind, "name": None, "version": NOT_RUNNING}
    info = docker.plugin(driver)
    if info is None:
        if docker.socket_answers(f"/run/docker/plugins/{driver}.sock"):
            return {"kind": kind, "name": driver, "mode": "legacy", "version": "unknown"}
        return {"kind": kind, "name": driver, "version": "not installed"}
    settings = info.get("Settings") or {}
    config = info.get("Config") or {}
    env = {**_env_of(config.get("Env")), **_env_of(settings.get("Env"))}
    reference = str(info.get("PluginReference") or info.get("Name") or driver)
    version = env.get(VERSION_ENV) or image_version(reference) or "unknown"
    return {
        "kind": kind,
        "name": driver,
        "mode": "managed",
        "enabled": bool(info.get("Enabled")),
        "version": version,
    }


def versions(connector: Connector) -> dict[str, Any]:
    """``telenet version`` as data; Docker's trouble is reported, never raised."""
    from telenet.cli.connection import CLIError
    from telenet.cli.dockerapi import DockerError

    data: dict[str, Any] = {"cli": telenet.__version__}
    try:
        connector.check_docker()
        docker = connector.docker
        data["docker"] = {"reachable": True, "api_version": docker.api_version()}
        connections = []
        for name in connector.connection_names():
            container = docker.container(container_name(name))
            labels = labels_of(container)
            connections.append(
                {
                    "connection": name,
                    "daemon": daemon_version(container) if container else NOT_RUNNING,
                    "plugins": [
                        plugin_version(docker, "teleroute", labels.get(LABEL_NETWORK_PLUGIN)),
                        plugin_version(docker, "telemount", labels.get(LABEL_VOLUME_PLUGIN)),
                    ],
                }
            )
    except (CLIError, DockerError) as e:
        data["docker"] = {"reachable": False, "error": str(e)}
        data["connections"] = NOT_RUNNING
        return data
    data["connections"] = connections or NOT_RUNNING
    return data


def format_versions(data: dict[str, Any]) -> str:
    lines = [f"Client: telenet {data['cli']}"]
    docker = data["docker"]
    if not docker["reachable"]:
        lines.append(f"Docker: unreachable ({docker['error']})")
    else:
        lines.append(f"Docker: API {docker['api_version']}")
    if isinstance(data["connections"], str):
        lines.append(f"Daemon: {data['connections']}")
        return "\n".join(lines)
    for conn in data["connections"]:
        daemon = conn["daemon"]
        if isinstance(daemon, str):
            lines.append(f"Daemon {conn['connection']}: {daemon}")
        else:
            state = "" if daemon["running"] else ", stopped"
            lines.append(
                f"Daemon {conn['connection']}: {daemon['version']} (image {daemon['image']}{state})"
            )
        for plugin in conn["plugins"]:
            where = f" ({plugin['name']}, {plugin['mode']})" if plugin.get("mode") else ""
            lines.append(f"  {plugin['kind']}: {plugin['version']}{where}")
    return "\n".join(lines)
